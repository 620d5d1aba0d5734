"""Command-line options shared by the pytest plugin and `python -m harness`, defined once.

The names follow sharktank's where users know them (`--iree-device`, `--iree-hal-target-device`,
`--iree-hip-target`, `--tensor-parallelism-size`).
"""

from __future__ import annotations

from typing import Callable

import torch

from harness.checks.perplexity import QUICK_WINDOWS
from harness.common.errors import HarnessError
from harness.reference.eager import EAGER_MEMORY
from harness.reference.llama.attention import IMPLS
from harness.reference.registry import DEFAULT_MODELS
from harness.run.matrix import DEFAULT_DTYPES

MATRIX_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--model",), dict(action="append", help="model name, .gguf path, HF dir or hf:<id>; repeatable or "
                        f"comma-separated (default: {','.join(DEFAULT_MODELS)})")),
    (("--artifact",), dict(action="append", help="a sharktank export's directory (config *.json, *.irpa, and "
                           "*.mlir and/or *.vmfb) to judge instead of the harness's own export; repeatable. --model "
                           "then names the tokenizer's model (real text); the dtype is the export's")),
    (("--dtype",), dict(action="append", help=f"repeatable or comma-separated (default: {','.join(DEFAULT_DTYPES)})")),
    (("--tp", "--tensor-parallelism-size"), dict(dest="tp", action="append",
                                                 help="tensor-parallel sizes; repeatable or comma-separated "
                                                 "(default: 1, and the TP configurations of the default "
                                                 "matrix; a size a model's heads cannot take is skipped)")),
    (("--seq-len",), dict(type=int, default=128, help="tokens per end-to-end check (default 128)")),
    (("--eager-reference",), dict(choices=("emulated", "native"), default="emulated",
                                  help="fp16/bf16 eager reference: fp32 emulation rounding at op boundaries "
                                  "(default) or real torch low precision (~100x slower on CPUs without "
                                  "fp16/bf16 units)")),
    (("--eager-memory",), dict(choices=EAGER_MEMORY, default="auto",
                               help="how eager holds the model: built whole (resident) or one layer at a time from "
                               "the memory-mapped weights (streaming: a layer's memory, every forward reads every "
                               "layer; no serving checks); auto (default): streaming when the resident reference "
                               "(12 bytes a parameter) would take over half the available memory. The layer check "
                               "and bisection always stream")),
]
TARGET_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--iree-device",), dict(default="", help="runtime device URI, or one per TP rank comma-separated "
                              "(default: local-task on CPU, local-sync for several CPU devices; hip or cuda "
                              "for GPU targets, meaning devices 0 .. TP-1)")),
    (("--iree-hal-target-device",), dict(default="local", help="local, hip or cuda (default local)")),
    (("--iree-hip-target", "--iree-rocm-target"), dict(dest="iree_hip_target", default="gfx942",
                                                       help="AMD GPU architecture (default gfx942)")),
    (("--iree-cuda-target",), dict(default="sm_80", help="NVIDIA GPU architecture (default sm_80, whose PTX also "
                                   "runs on H100: iree-compile 3.9 does not know sm_89 / sm_90)")),
    (("--iree-cpu",), dict(default="host", help="--iree-llvmcpu-target-cpu for local (default host)")),
    (("--attention",), dict(choices=IMPLS, default="", help="attention as torch's fused SDPA or "
                            "as matmul + softmax, in eager and compiled alike (default: math on local, sdpa on "
                            "GPUs)")),
    (("--iree-compile",), dict(default="", help="the iree-compile executable to judge (a build of your own; "
                               "default: the pip iree-base-compiler's); its content hash keys the compile cache")),
    (("--iree-compile-flag",), dict(action="append", default=[], help="extra iree-compile flag; repeatable")),
    (("--threads",), dict(type=int, default=0, help="CPU threads of eager torch and of IREE's local-task workers "
                          "alike (default: torch's count, one per core)")),
]
PERPLEXITY_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--ppl-n-ctx",), dict(type=int, default=512, help="perplexity window length (default 512, llama.cpp's)")),
    (("--ppl-scheme",), dict(choices=("llamacpp", "rolling"), default="llamacpp",
                             help="llama.cpp's windows (default) or lm-eval's rolling windows")),
    (("--dataset",), dict(default="wikitext2", help="the bundled WikiText-2 raw test split (default), a local "
                          "text file, or a Hugging Face dataset id name[:config[:split]]")),
    (("--text-form",), dict(choices=("raw", "joined"), default="raw",
                            help="raw file as llama.cpp reads it (default) or HF rows joined by blank lines")),
    (("--ppl-shard",), dict(default=None, help="i/N: score only windows i-1, i-1+N, ... (machines in parallel; "
                            "`python -m harness report merge` joins them into one run's statistics and gates)")),
    (("--eager-cache",), dict(action="store_true", help="keep eager's per-window perplexity results in "
                              "$HARNESS_CACHE_DIR/eager (default .cache/eager) and reuse them, so that a rerun "
                              "computes only the compiled side; the KLD against it is then over eager's top 64 tokens "
                              "and the rest (a lower bound), PPL, dNLL and same-top exact")),
    (("--update-golden",), dict(action="store_true", help="rewrite golden/ perplexity values from this run")),
    (("--golden-dir",), dict(default="golden", help="where golden perplexity files are read and written "
                             "(default golden/, relative to the project: pytest's rootdir, or the current directory)")),
]
SUITE_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--ppl-windows",), dict(type=int, default=QUICK_WINDOWS, help="perplexity windows scored per "
                              f"configuration (default {QUICK_WINDOWS}; --nightly: the whole file)")),
    (("--ppl-dtypes",), dict(default="fp32", help="dtypes whose perplexity the quick tier scores (default "
                             "fp32: 512-token fp16 / bf16 programs cost 1-2 min each on 2 cores, and IREE's bf16 "
                             "prefill runs at ~1 GFLOP/s without bf16 units); --nightly scores every dtype")),
    (("--nightly",), dict(action="store_true", help="nightly tier: whole-file perplexity for every dtype")),
    (("--expected-failures",), dict(default="golden/expected_failures.toml", help="the reviewed list of known "
                                    "failures (default golden/expected_failures.toml, relative to pytest's rootdir)")),
    (("--shard",), dict(default=None, help="i/N: run the i-th of N slices of the configuration matrix (CI "
                        "machines in parallel; join their runs with `python -m harness report merge`)")),
    (("--diff-previous",), dict(action="store_true", help="diff this run against the previous one in "
                                "--report-dir (diff.md) and fail the session on a regression")),
    (("--bisect-on-fail",), dict(action="store_true", help="bisect a configuration whose layer check "
                                 "(or serving decode check) fails to its first diverging layer and sub-block")),
]
REPORT_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--report-dir",), dict(default="reports", help="where runs write (default reports/)")),
    (("--run-name",), dict(default=None, help="run directory name (default: a timestamp)")),
    (("--resume",), dict(action="store_true", help="rerun --run-name, which holds an interrupted run: its records are "
                         "set aside and perplexity scores only the windows it had not finished")),
]
ALL_OPTIONS = MATRIX_OPTIONS + TARGET_OPTIONS + REPORT_OPTIONS
PLUGIN_OPTIONS = ALL_OPTIONS + PERPLEXITY_OPTIONS + SUITE_OPTIONS


def add_options(add: Callable, options=ALL_OPTIONS) -> None:
    """Register options with argparse's `add_argument` or pytest's `addoption`."""
    for flags, kwargs in options:
        add(*flags, **kwargs)


def apply_threads(threads: int) -> None:
    """`--threads`: eager's thread count, which IREE's CPU devices then take as their worker count."""
    if threads < 0:
        raise HarnessError(f"--threads {threads}: must be a positive count (or 0 for one per core)")
    if threads:
        torch.set_num_threads(threads)
