"""Command-line options shared by the pytest suites (conftest.py) and `python -m harness`, defined once.

The names follow sharktank's where users know them (`--iree-device`, `--iree-hal-target-device`,
`--iree-hip-target`, `--tensor-parallelism-size`).
"""

from __future__ import annotations

from typing import Callable

import torch

from harness import expected
from harness.errors import HarnessError
from harness.iree.targets import Target
from harness.models import DEFAULT_MODELS
from harness.perplexity.check import QUICK_WINDOWS
from harness.pipeline import RunConfig

DEFAULT_DTYPES = ("fp32", "fp16", "bf16")
# The matrix when --model, --dtype and --tp are all left out (the quick tier; --nightly runs every check
# of it). Entries: (model, dtypes, TP sizes, the checks run, None for all). Tensor parallelism on fp32:
# TP 2 and 8 on the toy whose 16 / 8 heads allow 8, every check; TP 3 on SmolLM2 (9 / 3 heads allow
# 1, 3, 9) end to end, because its sharded layer and 512-token programs cost ~4 min of export and compile
# on 2 cores. SmolLM2 bf16 runs end to end only: its layer check costs 3 min (IREE's bf16 matmuls run at
# ~1 GFLOP/s on CPUs without bf16 units), and the toy covers bf16 layer by layer. Options given alone
# cross with the defaults of the others.
DEFAULT_MATRIX = (
    ("toy-tp8", DEFAULT_DTYPES, (1,), None), ("toy-tp8", ("fp32",), (2, 8), None),
    ("smollm2-135m", ("fp32", "fp16"), (1,), None), ("smollm2-135m", ("bf16",), (1,), ("end_to_end",)),
    ("smollm2-135m", ("fp32",), (3,), ("end_to_end",)),
)

MATRIX_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--model",), dict(action="append", help="model name, .gguf path, HF dir or hf:<id>; repeatable or "
                        f"comma-separated (default: {','.join(DEFAULT_MODELS)})")),
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
]
TARGET_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--iree-device",), dict(default="", help="runtime device URI, or one per TP rank comma-separated "
                              "(default: local-task on CPU, local-sync for several CPU devices; hip or cuda "
                              "for GPU targets, meaning devices 0 .. TP-1)")),
    (("--iree-hal-target-device",), dict(default="local", help="local, hip or cuda (default local)")),
    (("--iree-hip-target", "--iree-rocm-target"), dict(dest="iree_hip_target", default="gfx942",
                                                       help="AMD GPU architecture (default gfx942)")),
    (("--iree-cuda-target",), dict(default="sm_90", help="NVIDIA GPU architecture (default sm_90)")),
    (("--iree-cpu",), dict(default="host", help="--iree-llvmcpu-target-cpu for local (default host)")),
    (("--attention",), dict(choices=("sdpa", "math"), default="", help="attention as torch's fused SDPA or "
                            "as matmul + softmax, in eager and compiled alike (default: math on local, sdpa on "
                            "GPUs)")),
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
    (("--update-golden",), dict(action="store_true", help="rewrite golden/ perplexity values from this run")),
]
SUITE_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--ppl-windows",), dict(type=int, default=QUICK_WINDOWS, help="perplexity windows scored per "
                              f"configuration (default {QUICK_WINDOWS}; --nightly: the whole file)")),
    (("--ppl-dtypes",), dict(default="fp32", help="dtypes whose perplexity the quick tier scores (default "
                             "fp32: 512-token fp16 / bf16 programs cost 1-2 min each on 2 cores, and IREE's bf16 "
                             "prefill runs at ~1 GFLOP/s without bf16 units); --nightly scores every dtype")),
    (("--nightly",), dict(action="store_true", help="nightly tier: whole-file perplexity for every dtype")),
    (("--expected-failures",), dict(default=str(expected.DEFAULT_FILE), help="the reviewed list of known "
                                    "failures (default golden/expected_failures.toml)")),
    (("--shard",), dict(default=None, help="i/N: run the i-th of N slices of the configuration matrix (CI "
                        "machines in parallel; join their runs with `python -m harness report merge`)")),
    (("--diff-previous",), dict(action="store_true", help="diff this run against the previous one in "
                                "--report-dir (diff.md) and fail the session on a regression")),
    (("--bisect-on-fail",), dict(action="store_true", help="bisect a configuration whose layer check fails "
                                 "to its first diverging layer and sub-block")),
]
REPORT_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--report-dir",), dict(default="reports", help="where runs write (default reports/)")),
    (("--run-name",), dict(default=None, help="run directory name (default: a timestamp)")),
]
ALL_OPTIONS = MATRIX_OPTIONS + TARGET_OPTIONS + REPORT_OPTIONS


def add_options(add: Callable, options=ALL_OPTIONS) -> None:
    """Register options with argparse's `add_argument` or pytest's `addoption`."""
    for flags, kwargs in options:
        add(*flags, **kwargs)


def _csv(values: list[str] | None, default: tuple[str, ...]) -> list[str]:
    return [v for value in (values or default) for v in value.split(",") if v]


def parse_shard(value: str) -> tuple[int, int]:
    """`--shard i/N` as (i - 1, N)."""
    i, _, n = value.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise HarnessError(f"--shard {value!r}: expected i/N with 1 <= i <= N, e.g. 2/4")
    return int(i) - 1, int(n)


def in_shard(config_ids: list[str | None], shard: tuple[int, int]) -> list[bool]:
    """Which items (by configuration id; None for a test without one) shard (i - 1, N) runs: the
    configurations dealt round-robin in order of first appearance, the other tests to shard 1."""
    index, count = shard
    order = list(dict.fromkeys(c for c in config_ids if c is not None))
    return [(order.index(c) if c is not None else 0) % count == index for c in config_ids]


def apply_threads(threads: int) -> None:
    """`--threads`: eager's thread count, which IREE's CPU devices then take as their worker count."""
    if threads < 0:
        raise HarnessError(f"--threads {threads}: must be a positive count (or 0 for one per core)")
    if threads:
        torch.set_num_threads(threads)


def target(get: Callable[[str], object]) -> Target:
    return Target(hal_target_device=get("iree_hal_target_device"), cpu=get("iree_cpu"),
                  hip_target=get("iree_hip_target"), cuda_target=get("iree_cuda_target"),
                  device_uri=get("iree_device"), extra_flags=tuple(get("iree_compile_flag")),
                  attention=get("attention"))


def run_configs(get: Callable[[str], object], check: str | None = None) -> list[RunConfig]:
    """The configuration matrix the options describe; `get(dest)` reads an option. With `check`
    ("end_to_end", "layers", "perplexity"), the default matrix's entries that do not run it are left out."""
    t = target(get)
    if get("model") is None and get("dtype") is None and get("tp") is None:
        matrix = [entry for entry in DEFAULT_MATRIX if check is None or entry[3] is None or check in entry[3]]
    else:
        tps = []
        for tp in _csv(get("tp"), ("1",)):
            if not tp.isdigit() or int(tp) < 1:
                raise HarnessError(f"--tp: {tp!r} is not a positive integer")
            tps.append(int(tp))
        matrix = [(model, _csv(get("dtype"), DEFAULT_DTYPES), tps, None)
                  for model in _csv(get("model"), DEFAULT_MODELS)]
    return [RunConfig(model, dtype, tp, get("seq_len"), t, get("eager_reference"))
            for model, dtypes, tps, _ in matrix for dtype in dtypes for tp in tps]
