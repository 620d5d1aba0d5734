"""Perplexity of one configuration: eager and/or compiled on the same windows, the paired gate between
them, and each engine against the golden value in golden/ (written only when asked)."""

from __future__ import annotations

from harness.data.dataset import load_text
from harness.errors import HarnessError
from harness.perplexity import gate
from harness.perplexity.protocol import DEFAULT_N_CTX, make_windows
from harness.perplexity.runner import score_all
from harness.pipeline import Pipeline

ENGINES = ("both", "eager", "iree")
# The quick tier's subset: enough windows for the paired gate's power on fp32/fp16 (gate.py decides and
# says "underpowered" otherwise), few enough for minutes on a 2-core CPU.
QUICK_WINDOWS = 8


def evaluate(p: Pipeline, engine: str = "both", n_windows: int | None = QUICK_WINDOWS, n_ctx: int = DEFAULT_N_CTX,
             scheme: str = "llamacpp", dataset: str = "wikitext2", form: str = "raw", progress: bool = False,
             update_golden: bool = False, command: str = "", vs_fp32: bool = True) -> dict:
    """Score the first `n_windows` windows (all when None); returns the record, with a "gates" list.
    `vs_fp32`: also score eager fp32 on the same windows, for what a non-fp32 dtype costs."""
    if engine not in ENGINES:
        raise HarnessError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    if p.spec.load_tokenizer is None:
        raise HarnessError(f"--model {p.config.model}: has no tokenizer (a random toy); perplexity needs a "
                           "real model")
    windows = make_windows(load_text(dataset, form), p.spec.load_tokenizer(), scheme, n_ctx,
                           max_windows=n_windows)
    engines = {"eager": [p.eager], "iree": [p.iree_engine(n_ctx, first=windows.first)]}
    comparisons = [engines["eager"] + engines["iree"] if engine == "both" else engines[engine]]
    # What the dtype or quantization itself costs: its eager reference against eager fp32, same windows.
    if vs_fp32 and p.config.dtype != "fp32":
        comparisons.append([p.fp32_reference, p.eager])
    result, *cost = score_all(comparisons, windows, progress)
    gates = [gate.check_pair(result.stats, p.config.dtype)] if engine == "both" else []
    golden_file = gate.golden_path(p.config.model, p.config.dtype, windows.protocol)
    if update_golden:  # from the reference engine where there is one
        gate.write_golden(golden_file, gate.make_golden(result.stats.engines[0], windows.protocol,
                                                        p.weights.sha256, command), update=True)
    if golden_file.exists():
        golden = gate.read_golden(golden_file)
        rtol = gate.budget(p.config.dtype).golden_rtol
        gates += [gate.golden_gate(e, windows.protocol, golden, p.weights.sha256, rtol)
                  for e in result.stats.engines]
    return p.record("perplexity", **result.to_record(), summary=result.summary(), vs_fp32=cost[0].stats.to_record() if cost else None,
                    gates=[g.to_record() for g in gates],
                    golden=str(golden_file.relative_to(gate.GOLDEN_DIR.parent)) if golden_file.exists() else None,
                    passed=all(g.passed for g in gates))
