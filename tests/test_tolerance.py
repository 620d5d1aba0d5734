"""The tolerance policy on synthetic results whose error is known by construction."""

import torch

from harness.numerics.tolerance import MULTIPLES, judge

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
