"""The tolerance policy on synthetic results whose error is known by construction."""

import torch

from harness.numerics import tolerance
from harness.numerics.tolerance import AGGREGATE, MULTIPLES, STRUCTURED, Policy, judge

DTYPE = torch.float16


def _case(eager_noise: float, result_noise: float):
    gen = torch.Generator().manual_seed(0)
    oracle = torch.randn(4, 64, 100, generator=gen, dtype=torch.float64) * 5
    eager = oracle + eager_noise * torch.randn(oracle.shape, generator=gen, dtype=torch.float64)
    result = oracle + result_noise * torch.randn(oracle.shape, generator=gen, dtype=torch.float64)
    return result, eager, oracle


def test_as_good_as_eager_passes():
    verdict = judge(*_case(eager_noise=1e-2, result_noise=1e-2), DTYPE)
    assert verdict.passed, verdict.reason
    assert 0.2 < verdict.ratio < 0.6  # ~1/MULTIPLES[...]["rmse"] of the budget


def test_several_times_worse_than_eager_fails():
    verdict = judge(*_case(eager_noise=1e-2, result_noise=1e-2 * MULTIPLES[DTYPE]["rmse"] * 1.5), DTYPE)
    assert not verdict.passed
    assert verdict.ratio > 1
    assert "budget" in verdict.reason


def test_one_bad_position_fails_on_max_abs():
    result, eager, oracle = _case(eager_noise=1e-2, result_noise=1e-2)
    result[0, 3, 7] += 1.0  # RMSE barely moves; max abs must catch it
    verdict = judge(result, eager, oracle, DTYPE)
    assert not verdict.passed
    assert verdict.reason.startswith("max_abs")


def test_nan_or_inf_never_passes():
    result, eager, oracle = _case(eager_noise=1e-2, result_noise=0.0)
    for bad in (float("nan"), float("inf")):
        r = result.clone()
        r[0, 0, 0] = bad
        verdict = judge(r, eager, oracle, DTYPE)
        assert not verdict.passed and "non-finite" in verdict.reason


def test_exact_eager_still_has_a_floor():
    # Eager equal to the oracle must not turn the budget into zero: one ulp of the output scale remains.
    result, eager, oracle = _case(eager_noise=0.0, result_noise=1e-5)
    assert judge(result, eager, oracle, DTYPE).passed


def test_structured_measures_judge_isolated_parts_only():
    """A row-scaled channel (one output channel x1.05) hides in the aggregate of a tensor with a massive
    channel (as SmolLM2's residual stream has); on an isolated part the channel and gain measures catch it,
    along a propagated chain only the aggregate judges."""
    result, eager, oracle = _case(eager_noise=1e-3, result_noise=1e-3)
    for t in (result, eager, oracle):
        t[..., 0] *= 100
    result[..., 17] = oracle[..., 17] * 1.05
    policy = Policy("fp16")
    isolated, propagated = (policy.judge(result, eager, oracle, isolated=flag) for flag in (True, False))
    assert not isolated.passed and isolated.measure in ("channel", "gain") and isolated.where[isolated.measure] == 17
    assert propagated.passed and propagated.measure in AGGREGATE, propagated.reason
    assert set(propagated.errors) >= set(STRUCTURED)  # recorded all the same
    assert Policy("fp32").structured == () and Policy("bf16").structured == STRUCTURED


def test_a_channel_carried_by_one_position_gets_its_floor(monkeypatch):
    """One position carries channel 3's energy (at the tensor's scale; a massive channel 0 sets max |x|, as in
    SmolLM2); compiled is 2 ulps off there, eager exact by chance: within the structured floor (4 ulps), where
    a 1-ulp floor fails it. 8 ulps off still fails."""
    result, eager, oracle = _case(eager_noise=1e-3, result_noise=1e-3)
    for t in (result, eager, oracle):
        t[..., 0] *= 100
    eager[..., 3], oracle[..., 3] = 0.0, 0.0
    oracle[0, 0, 3] = eager[0, 0, 3] = 800.0
    u = torch.finfo(DTYPE).eps

    def passes(ulps: float) -> bool:
        result[..., 3] = oracle[..., 3] * (1 + ulps * u)
        return Policy("fp16").judge(result, eager, oracle, isolated=True).passed

    assert passes(2) and not passes(8)
    monkeypatch.setitem(tolerance.FLOOR_ULPS, "gain", 1.0)
    monkeypatch.setitem(tolerance.FLOOR_ULPS, "channel", 1.0)
    assert not passes(2)
