"""The configuration matrix: which (model, dtype, TP) configurations a run checks, from the options or the
default matrix, and how `--shard i/N` splits them over machines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from harness.common.errors import HarnessError
from harness.iree.targets import Target
from harness.reference import families
from harness.reference.hfauto.archs import ARCHS
from harness.reference.registry import DEFAULT_MODELS, REGISTRY
from harness.reference.weights.hf_dir import REFERENCE_MODEL_TYPES
from harness.run.config import RunConfig

DEFAULT_DTYPES = ("fp32", "fp16", "bf16")
# The matrix when --model, --dtype and --tp are all left out: the quick tier runs each entry's checks, the
# nightly tier (--nightly) every check of every entry and NIGHTLY_MATRIX's, so its matrix is the quick one with
# toy-tp8 TP 8 layer by layer and in perplexity too, and more. Entries: (model, dtypes, TP sizes, the checks run in
# the quick tier, None for all). Tensor parallelism on fp32: TP 2 and 8 on the toy whose 16 / 8 heads allow
# 8, every check; TP 3 on SmolLM2 (9 / 3 heads allow 1, 3, 9) nightly: its end-to-end program alone costs 43 s
# cold on 2 cores, its sharded layer and 512-token programs ~4 min. SmolLM2 bf16 runs end to end (and
# perplexity, which --ppl-dtypes bf16 turns on): its layer check costs 3 min where IREE's bf16 matmuls run at
# ~1 GFLOP/s (CPUs without bf16 units), and the toy covers bf16 layer by layer. Options given alone cross with
# the defaults of the others.
# The serving checks (checks/serving.py) run on the toy in every dtype at TP 1 and in fp32 at TP 2; SmolLM2's
# serving program costs 2.2 min of export and compile (Xeon, cold cache) and its checks another 1.5, the toy's
# at TP 8 ~1.5 min: nightly (or `--model smollm2-135m --dtype fp32`).
CORE = ("end_to_end", "layers", "perplexity")
HF_VARIANTS = ("falcon_alibi",)  # a second configuration of a family the default run already has
DEFAULT_MATRIX = (
    ("toy-tp8", DEFAULT_DTYPES, (1,), None), ("toy-tp8", ("fp32",), (2,), None), ("toy-tp8", ("fp32",), (8,), CORE),
    ("smollm2-135m", ("fp32",), (1,), CORE), ("smollm2-135m", ("fp16",), (1,), CORE),
    ("smollm2-135m", ("bf16",), (1,), ("end_to_end", "perplexity")),
    ("toy-moe", ("fp32",), (1,), None),
    ("toy-t5", DEFAULT_DTYPES, (1,), ("end_to_end", "layers")),  # suites/t5: an encoder takes these two
    # suites/hf: every transformers family in fp32 and bf16 end to end (~6 s a check on 2 cores, cold); the
    # nightly tier runs them layer by layer too.
    *((f"hf-{arch}", ("fp32", "bf16"), (1,), ("end_to_end",)) for arch in ARCHS if arch not in HF_VARIANTS),
)
# What the nightly tier adds: SmolLM2 at TP 3 and the mixture of experts at TP 2 (every check), the architectures'
# variants, and the rest of their dtype matrix (IPEX's columns: fp16, weight-only int8 and int4 as Q4_1 blocks,
# static W8A8 int8; a mixture of experts' quantization is not built).
NIGHTLY_MATRIX = (
    ("smollm2-135m", ("fp32",), (3,), None), ("toy-moe", ("fp32",), (2,), None),
    *((f"hf-{arch}", ("fp32", "bf16"), (1,), None) for arch in HF_VARIANTS),
    *((f"hf-{arch}", ("fp16",) + (("int8", "q4_1", "w8a8_int8") if not c.experts else ()), (1,), None)
      for arch, c in ARCHS.items()),
)


def _csv(values: list[str] | None, default: tuple[str, ...]) -> list[str]:
    return [v for value in (values or default) for v in value.split(",") if v]


def parse_shard(value: str, option: str = "--shard") -> tuple[int, int]:
    """`--shard i/N` (or `--ppl-shard`) as (i - 1, N)."""
    i, _, n = value.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise HarnessError(f"{option} {value!r}: expected i/N with 1 <= i <= N, e.g. 2/4")
    return int(i) - 1, int(n)


def in_shard(config_ids: list[str | None], shard: tuple[int, int]) -> list[bool]:
    """Which items (by configuration id; None for a test without one) shard (i - 1, N) runs: the
    configurations dealt round-robin in order of first appearance, the other tests to shard 1."""
    index, count = shard
    order = list(dict.fromkeys(c for c in config_ids if c is not None))
    return [(order.index(c) if c is not None else 0) % count == index for c in config_ids]


def target(get: Callable[[str], object]) -> Target:
    return Target(hal_target_device=get("iree_hal_target_device"), cpu=get("iree_cpu"),
                  hip_target=get("iree_hip_target"), cuda_target=get("iree_cuda_target"),
                  device_uri=get("iree_device"), extra_flags=tuple(get("iree_compile_flag")),
                  attention=get("attention"), compiler=get("iree_compile"))


def family(model: str) -> str | None:
    """The family of a model --model names (reference/families.py), known before it is loaded: a registered
    model's, a GGUF file's (llama), a Hugging Face directory's (by its config.json's model_type); None where it is not
    (a hub id, an unreadable directory: that model's suite is not known, and it runs in every suite asked for)."""
    if model in REGISTRY:
        return families.family(REGISTRY[model].config)
    path = Path(model)
    if path.suffix == ".gguf":
        return "llama"
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if model_type in REFERENCE_MODEL_TYPES else "hf"


def uses_default_matrix(get: Callable[[str], object]) -> bool:
    return not get("artifact") and get("model") is None and get("dtype") is None and get("tp") is None


def run_configs(get: Callable[[str], object], check: str | None = None, family_name: str | None = None,
                nightly: bool = False) -> list[RunConfig]:
    """The configuration matrix the options describe; `get(dest)` reads an option. With `check`
    ("end_to_end", "layers", "perplexity"), the default matrix's entries that do not run it are left out; with
    `family_name` (a family's suite, suites/<family>), its entries of other families; `nightly` adds
    NIGHTLY_MATRIX. A model named by --model (or a sharktank export, a llama) runs in its family's suite alone
    (in every suite where its family is not known before loading it)."""
    t = target(get)
    if get("artifact"):
        return artifact_configs(get, t) if family_name in (None, "llama") else []
    if uses_default_matrix(get):
        entries = DEFAULT_MATRIX + (NIGHTLY_MATRIX if nightly else ())
        matrix = [entry for entry in entries if (check is None or entry[3] is None or check in entry[3])
                  and family_name in (None, family(entry[0]))]
    else:
        tps = []
        for tp in _csv(get("tp"), ("1",)):
            if not tp.isdigit() or int(tp) < 1:
                raise HarnessError(f"--tp: {tp!r} is not a positive integer")
            tps.append(int(tp))
        matrix = [(model, _csv(get("dtype"), DEFAULT_DTYPES), tps, None)
                  for model in _csv(get("model"), DEFAULT_MODELS)
                  if family_name is None or family(model) in (None, family_name)]
    return [RunConfig(model, dtype, tp, get("seq_len"), t, get("eager_reference"),
                      eager_memory=get("eager_memory"))
            for model, dtypes, tps, _ in matrix for dtype in dtypes for tp in tps]


def artifact_configs(get: Callable[[str], object], t: Target) -> list[RunConfig]:
    """One configuration per --artifact, in --dtype or the export's own (read here from its config; an
    unreadable export keeps fp32 and fails in its own tests, so the other exports go on)."""
    from harness.artifacts.sharktank import Artifact

    models = _csv(get("model"), ("",)) or [""]
    if len(models) > 1:
        raise HarnessError(f"--model with --artifact names the tokenizer's model: give one, not {len(models)}")
    if _csv(get("tp"), ("1",)) != ["1"]:
        raise HarnessError("--tp with --artifact: an export's tensor parallelism is its own (read from its config)")
    paths = [p for value in get("artifact") for p in value.split(",")]
    if not all(paths):
        raise HarnessError("--artifact: an empty path (did the command that names the export fail?)")
    configs = []
    for path in paths:
        try:
            dtypes = _csv(get("dtype"), (Artifact(path).dtype,))
        except HarnessError:
            dtypes = _csv(get("dtype"), ("fp32",))
        configs += [RunConfig(models[0], dtype, 1, get("seq_len"), t, get("eager_reference"), artifact=path,
                              eager_memory=get("eager_memory"))
                    for dtype in dtypes]
    ids = [c.id for c in configs]
    if len(set(ids)) < len(ids):
        raise HarnessError(f"--artifact: two exports make one configuration id ({', '.join(ids)}): their directories "
                           "need different names")
    return configs
