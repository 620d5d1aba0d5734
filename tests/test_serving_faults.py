"""Each serving defect (reference/llama/paged.py's DEFECTS), planted in the compiled program only at one
layer, fails the check named for it, in the phase and step where it lives; eager and the oracle stay clean.
(The clean toy and SmolLM2 pass every serving check in suites/llama/test_serving.py.)"""

import pytest

from harness.candidates.eager import EagerCandidate
from harness.checks import SERVING_CHECKS as CHECKS
from harness.checks import serving
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.faults import paged_fault

LAYER = 1


def inputs(case: Case, check):
    plan = serving.QUICK
    if check is serving.decode_perplexity:
        return case.prompt_inputs(plan.prompts, plan.prompt_len)
    return case.token_inputs(plan.tokens)


def run(defect: str, check, tp: int = 1):
    case = Case(RunConfig("toy-tp8", "fp32", tp=tp), fault=paged_fault(LAYER, defect))
    return case.run(check, inputs=inputs(case, check))


def test_decode_writing_one_position_late_leaves_prefill_right_and_breaks_the_decoded_cache():
    decode = run("write_offset", serving.decode)
    assert decode["prefill_verdict"]["passed"] and not decode["passed"]
    assert not decode["steps"][0]["passed"]  # the first step already attends to a slot it never wrote
    cache = run("write_offset", serving.cache_state)
    prefill, after_decode = cache["phases"]
    assert all(r["passed"] for r in prefill["layers"])
    assert not any(r["passed"] for r in after_decode["layers"] if r["layer"] == LAYER)
    assert all(r["passed"] for r in after_decode["layers"] if r["layer"] < LAYER)


def test_at_tp2_decode_writing_one_position_late_fails_decode_and_the_joined_cache():
    """The sharded serving program (each device over its shard of the cache) carries the fault too."""
    decode = run("write_offset", serving.decode, tp=2)
    assert decode["prefill_verdict"]["passed"] and not decode["steps"][0]["passed"]
    cache = run("write_offset", serving.cache_state, tp=2)
    assert not any(r["passed"] for r in cache["phases"][1]["layers"] if r["layer"] == LAYER)


def test_a_wrong_page_index_writes_pages_no_sequence_owns():
    cache = run("page_index", serving.cache_state)
    assert not cache["passed"]
    assert cache["phases"][0]["touched_pages"], "the write to an unowned page went unseen"


def test_a_mask_that_lets_padding_in_fails_batching():
    rec = run("mask_offset", serving.batching)
    assert not rec["passed"] and all(not s["passed"] for s in rec["sequences"])


def test_a_mask_one_position_ahead_fails_chunked_prefill_against_eager():
    rec = run("mask_offset", serving.chunked_prefill)
    assert not rec["passed"] and not rec["verdict_vs_eager"]["passed"]


def test_a_stale_decode_fails_greedy_at_a_step_over_budget_not_as_a_near_tie():
    rec = run("stale_read", serving.greedy)
    assert not rec["passed"] and not rec["steps"][-1]["passed"]
    assert rec["split"] is None or not rec["split"]["near_tie"]


def test_decode_attending_to_the_stale_cache_fails_decode_at_its_first_step():
    rec = run("stale_read", serving.decode)
    assert rec["prefill_verdict"]["passed"]
    assert not rec["steps"][0]["passed"] and not rec["steps"][0]["consistency_passed"]
    assert rec["failures"][0].startswith("decode step 0 (position 24)")


@pytest.mark.parametrize("defect", ["write_offset", "stale_read"])
def test_a_decode_only_defect_fails_decode_mode_perplexity_against_its_own_prefill_mode(defect):
    """On text sampled from the toy, its mean KLD from its own prefill mode (and from eager) is over budget; the
    mean dNLL alone is too noisy on a random-weight toy to call it (it says "underpowered", not "pass")."""
    rec = run(defect, serving.decode_perplexity)
    assert not rec["passed"]
    assert rec["gates"]["decode_vs_prefill.kld"]["verdict"] == "fail"
    assert rec["gates"]["decode_vs_eager.kld"]["verdict"] == "fail"
    assert rec["gates"]["decode_vs_prefill.paired"]["verdict"] != "pass"


def test_unknown_defect_is_refused():
    with pytest.raises(ValueError, match="choose from"):
        paged_fault(0, "off_by_two")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_eager_judged_as_the_candidate_passes_every_serving_check(dtype):
    """The checks' own bookkeeping (page tables, padding, poisoning, positions) raises nothing on a candidate
    that computes exactly what the reference does."""
    case = Case(RunConfig("toy-tp8", dtype))
    candidate = EagerCandidate(case.reference.eager)
    for name in CHECKS:
        check = getattr(serving, name)
        rec = check(candidate, case.reference, inputs(case, check), case.policy)
        assert rec["passed"], (name, rec["failures"])
