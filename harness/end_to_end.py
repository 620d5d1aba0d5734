"""The end-to-end check: compiled logits against eager logits in the same dtype, both against the
fp64 oracle, judged by the tolerance policy."""

from __future__ import annotations

import time

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
    with p.stage("numerics") as st:
        verdict = judge(compiled, eager, oracle, p.dtype)
        st.status = "passed" if verdict.passed else "failed"
        st.error = "" if verdict.passed else verdict.reason
    return p.record(
        "end_to_end",
        inputs={"tokens": list(p.tokens.shape), "text": "wikitext-2 test, from the start" if p.spec.real_text
                else "random ids, seed 0"},
        verdict=verdict.to_dict(),
        metrics={"compiled_vs_eager": metrics.compare(compiled, eager),
                 "compiled_vs_oracle": metrics.compare(compiled, oracle),
                 "eager_vs_oracle": metrics.compare(eager, oracle)},
        timings={"iree_run_s": p.stages["run"].seconds, "eager_s": eager_s, "oracle_s": oracle_s},
    )
