"""The end-to-end check: compiled logits against eager logits in the same dtype, both against the
fp64 oracle, judged by the tolerance policy. A tensor-parallel configuration is also judged against
the compiled unsharded (TP 1) model, which isolates what sharding adds."""

from __future__ import annotations

import time

from harness.model import w8a8
from harness.numerics import metrics
from harness.numerics.tolerance import judge
from harness.pipeline import Pipeline


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def check(p: Pipeline) -> dict:
    """Run the configuration end to end; returns its record (raises StageFailure on a failed stage,
    after recording it in `p.stages`)."""
    engine = p.iree_engine()
    with p.stage("run") as st:
        compiled, st.seconds = timed(engine.logits, p.tokens)
    eager, eager_s = timed(p.eager.logits, p.tokens)
    oracle, oracle_s = timed(p.oracle.logits, p.tokens)
    tp1_verdict, tp1_metrics = None, {}
    if p.config.tp > 1:
        tp1 = p.iree_engine(tp=1).logits(p.tokens)
        tp1_metrics = {"compiled_vs_tp1": metrics.compare(compiled, tp1)}
        # Activation quantizers make any two fp32 computations differ by chance code flips: TP 1 is no
        # finer a reference than eager there (w8a8.py).
        if p.quant not in w8a8.SCHEMES:
            tp1_verdict = judge(compiled, tp1, oracle, p.dtype, "compiled TP 1")
    with p.stage("numerics") as st:
        if p.quant in w8a8.SCHEMES:
            noisy = w8a8.noisy_reference(lambda: p.eager.logits(p.tokens), eager)
            verdict = judge(compiled, noisy, eager, p.dtype, "noisy eager", oracle_name="eager", multiple=1.0,
                            measures=("rmse",))
        else:
            verdict = judge(compiled, eager, oracle, p.dtype)
        failed = [v.reason for v in (verdict, tp1_verdict) if v and not v.passed]
        st.status, st.error = ("failed", "; ".join(failed)) if failed else ("passed", "")
    return p.record(
        "end_to_end",
        inputs={"tokens": list(p.tokens.shape), "text": "wikitext-2 test, from the start" if p.spec.real_text
                else "random ids, seed 0"},
        verdict=verdict.to_dict(),
        verdict_vs_tp1=tp1_verdict and tp1_verdict.to_dict(),
        metrics={"compiled_vs_eager": metrics.compare(compiled, eager),
                 "compiled_vs_oracle": metrics.compare(compiled, oracle),
                 "eager_vs_oracle": metrics.compare(eager, oracle), **tp1_metrics},
        timings={"iree_run_s": p.stages["run"].seconds, "eager_s": eager_s, "oracle_s": oracle_s},
    )
