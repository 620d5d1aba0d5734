"""The one tolerance policy: a result is judged against what eager execution achieves in the same
precision, both measured against an fp64 oracle (the idea of torch's accuracy check `same()`).

    error(result, oracle) <= MULTIPLE[dtype] * error(eager same-dtype, oracle) + FLOOR_ULPS * eps(dtype) * scale

for two errors: RMSE (scale = RMS of the oracle) and max abs (scale = max |oracle|). The multiple
admits a different but equally good order of rounding; the floor keeps a budget from collapsing to zero
where eager happens to be (near) exact. NaN or Inf anywhere fails. No test states an atol.
"""

from __future__ import annotations

import dataclasses

import torch

from harness.dtypes import eps
from harness.numerics import metrics

MULTIPLE: dict[torch.dtype, float] = {torch.float32: 2.0, torch.float16: 3.0, torch.bfloat16: 3.0}
FLOOR_ULPS = 1.0


@dataclasses.dataclass
class Verdict:
    passed: bool
    reason: str
    # error / budget for each judged error: <= 1 passes. The quantity plots and bisection rank by.
    ratio: float
    errors: dict[str, float]
    budgets: dict[str, float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def budget(eager_error: float, scale: float, dtype: torch.dtype) -> float:
    return MULTIPLE[dtype] * eager_error + FLOOR_ULPS * eps(dtype) * scale


def judge(result: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype) -> Verdict:
    """Judge `result` (e.g. the compiled output) for a model run in `dtype`."""
    if not metrics.all_finite(result):
        n_bad = int((~torch.isfinite(result)).sum())
        return Verdict(False, f"{n_bad} non-finite values (NaN/Inf)", float("inf"), {}, {})
    if not metrics.all_finite(eager):
        return Verdict(False, "the eager reference itself has NaN/Inf", float("inf"), {}, {})
    errors = {"rmse": metrics.rmse(result, oracle), "max_abs": metrics.max_abs(result, oracle)}
    budgets = {
        "rmse": budget(metrics.rmse(eager, oracle), metrics.rms(oracle), dtype),
        "max_abs": budget(metrics.max_abs(eager, oracle), float(oracle.abs().max()), dtype),
    }
    ratios = {k: errors[k] / budgets[k] for k in errors}
    worst = max(ratios, key=ratios.get)
    passed = ratios[worst] <= 1.0
    reason = (f"{worst} vs fp64 oracle {errors[worst]:.3g} {'<=' if passed else '>'} budget "
              f"{budgets[worst]:.3g} ({MULTIPLE[dtype]:g} x eager {str(dtype).removeprefix('torch.')} error + "
              f"{FLOOR_ULPS:g} ulp floor)")
    return Verdict(passed, reason, ratios[worst], errors, budgets)
