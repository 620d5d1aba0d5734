"""The end-to-end check: the candidate's logits against eager logits in the same dtype, both against the
fp64 oracle, judged by the tolerance policy. Given a `baseline` (for a tensor-parallel configuration, the
same model compiled unsharded), the candidate is also judged against it, which isolates what sharding
adds. Beside the policy's verdict the record carries what a fixed tolerance would say (FIXED_ATOL / FIXED_RTOL:
sharktank's T5 encoder tests, which mark bf16 failing), against eager in the same dtype and against eager fp32;
it never gates."""

from __future__ import annotations

import time

from harness.candidates import Candidate, Forward
from harness.checks import Inputs
from harness.numerics import metrics
from harness.numerics.tolerance import Policy
from harness.reference.eager import Reference
from harness.transforms import w8a8

FIXED_ATOL, FIXED_RTOL = 1e-4, 1.5e-3


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def check(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy,
          baseline: Forward | None = None) -> dict:
    """The record's kind and fields (raises StageFailure on a failed stage, after recording it in
    `candidate.stages`)."""
    tokens, logits = inputs.tokens, reference.outputs_logits
    forward = candidate.forward(tokens.shape[1])
    with candidate.stages.timed("run") as st:
        compiled, st.seconds = timed(forward.logits, tokens)
    eager, eager_s = timed(reference.eager.logits, tokens)
    oracle, oracle_s = timed(reference.oracle.logits, tokens)
    # A second whole eager pass, except where the model is streamed (a layer's memory, every layer re-read).
    fp32 = eager if reference.dtype == "fp32" else None if reference.streaming else reference.fp32.logits(tokens)
    baseline_verdict, baseline_metrics = None, {}
    if baseline is not None:
        base = baseline.logits(tokens)
        baseline_metrics = {"compiled_vs_tp1": metrics.compare(compiled, base, logits)}
        # Activation quantizers make any two fp32 computations differ by chance code flips: TP 1 is no
        # finer a reference than eager there (transforms/w8a8.py).
        if not policy.noisy_reference:
            baseline_verdict = policy.judge(compiled, base, oracle, "compiled TP 1")
    with candidate.stages.timed("numerics") as st:
        if policy.noisy_reference:
            noisy = w8a8.noisy_runs(reference.eager.model, lambda: reference.eager.logits(tokens))
            verdict = policy.judge_noisy(compiled, eager, noisy, fp32, reference.fp32_oracle.logits(tokens))
        else:
            verdict = policy.judge(compiled, eager, oracle)
        failed = [v.reason for v in (verdict, baseline_verdict) if v and not v.passed]
        st.status, st.error = ("failed", "; ".join(failed)) if failed else ("passed", "")
    return dict(
        kind="end_to_end", inputs=inputs.to_record(), verdict=verdict.to_dict(),
        verdict_vs_tp1=baseline_verdict and baseline_verdict.to_dict(),
        metrics={"compiled_vs_eager": metrics.compare(compiled, eager, logits),
                 "compiled_vs_oracle": metrics.compare(compiled, oracle, logits),
                 "eager_vs_oracle": metrics.compare(eager, oracle, logits), **baseline_metrics},
        fixed_tolerance={"vs_eager": metrics.allclose(compiled, eager, FIXED_ATOL, FIXED_RTOL),
                         "vs_eager_fp32": None if fp32 is None else metrics.allclose(compiled, fp32, FIXED_ATOL,
                                                                                     FIXED_RTOL)},
        timings={"iree_run_s": candidate.stages["run"].seconds, "eager_s": eager_s, "oracle_s": oracle_s},
    )
