"""Bisection: the first part (embedding, decoder layer, head) whose isolated error exceeds its budget and,
for a decoder layer, the first sub-block inside it whose excess propagates. One compiled "layers" program
serves every step: the parts are called on eager inputs, never recompiled per layer."""

from __future__ import annotations

import time
from pathlib import Path

from harness.candidates import Candidate
from harness.checks import Inputs
from harness.checks.layers import LayerCheck, Part
from harness.numerics.tolerance import STRUCTURED, Policy
from harness.reference.eager import Reference
from harness.reference.families import sub_block_consumers
from harness.reference.llama.model import SUB_BLOCK_CONSUMERS


def first_propagating_failure(sub_blocks: list[Part], consumers: dict = SUB_BLOCK_CONSUMERS) -> Part | None:
    """The first sub-block over budget whose excess reaches a consumer (or is the layer's output), or that
    fails a structured measure.

    An aggregate excess that the next op absorbs did not make the layer fail (IREE's fp32 RoPE carries ~4x
    eager's error on clean toy models while everything downstream is fine), and must not take the blame for
    a fault further on. An excess concentrated in one channel or position is no rounding: clean sub-blocks
    stay within the structured budget (bench/policy_calibration.py), and such a fault may well drown in the
    residual stream downstream."""
    failed = {s.name for s in sub_blocks if not s.verdict.passed}
    return next((s for s in sub_blocks if s.name in failed and (
        s.verdict.measure in STRUCTURED or not consumers[s.name]
        or failed.intersection(consumers[s.name]))), None)


def bisect(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy,
           artifacts: Path | None = None) -> dict:
    """The record's kind and fields. Writes the failing layer's eager input into `artifacts`, for the
    reproducer, where the candidate can make one."""
    start = time.perf_counter()
    check = LayerCheck(candidate, reference, inputs, policy)
    compile_stage = candidate.stages.get("compile:layers")
    first, sub_blocks, reproducer = None, [], None
    for i in range(-1, check.n_layers + 1):
        part = check.isolated(i)
        if not part.verdict.passed:
            first = part
            break
    if first is not None and first.name.startswith("layer_"):
        i = int(first.name.removeprefix("layer_"))
        sub_blocks = check.sub_blocks(i)
        if artifacts is not None and hasattr(check.compiled, "reproducer"):
            reproducer = check.compiled.reproducer(first.name, [check.chain[i].numpy()], artifacts)
    culprit = first_propagating_failure(sub_blocks, sub_block_consumers(reference.weights.config))
    # Errors accumulate without any part failing on its own: name where the chain first fails.
    propagated = None if first else next((q.name for q in check.propagated() if not q.verdict.passed), None)
    return dict(
        kind="bisect", diverged=first is not None, layer=first.name if first else None,
        sub_block=culprit.name if culprit else None, layer_row=first.row() if first else None,
        sub_blocks=[s.row() for s in sub_blocks], propagated_first_failure=propagated,
        compiles=int(compile_stage is not None and not compile_stage.cached), invocations=check.invocations,
        reproducer=reproducer, timings={"wall_s": time.perf_counter() - start})


def format_bisect(rec: dict) -> str:
    """The short table bisection prints."""
    from tabulate import tabulate

    head = (f"{rec['config']}: " + (f"first diverging part {rec['layer']}, sub-block {rec['sub_block']}"
                                    if rec["diverged"] else "no part diverges in isolation"
                                    + (f"; propagated error first exceeds its budget at {rec['propagated_first_failure']}"
                                       if rec["propagated_first_failure"] else "")))
    rows = ([rec["layer_row"]] if rec["layer_row"] else []) + rec["sub_blocks"]
    table = tabulate([[r["part"], "ok" if r["passed"] else "FAIL", f"{r['ratio']:.3g}", f"{r['rmse']:.3g}",
                       f"{r['rmse_budget']:.3g}", f"{r['max_abs']:.3g}", f"{r['max_abs_budget']:.3g}"]
                      for r in rows],
                     headers=["part", "verdict", "error/budget", "rmse", "budget", "max abs", "budget"])
    tail = (f"compiles: {rec['compiles']}, invocations: {rec['invocations']}, "
            f"wall: {rec['timings']['wall_s']:.1f}s")
    return "\n".join([head, table, tail] + ([f"reproducer: {rec['reproducer']}"] if rec["reproducer"] else []))
