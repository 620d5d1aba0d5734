"""The one tolerance policy: a result is judged against what eager execution achieves in the same
precision, both measured against an fp64 oracle (the idea of torch's accuracy check `same()`; the oracle is
the same dtype-rounded weights computed in fp64 end to end, tests/test_oracle.py):

    error(result, oracle) <= MULTIPLES[dtype][measure] * error(eager same-dtype, oracle) + 1 ulp(dtype) * scale

for each measure: RMSE (scale: the oracle's RMS) and max abs (scale: max |oracle|) in aggregate, and, for
fp16/bf16, where the error lives (`structured`): the worst output channel's and the worst position's RMSE
(scale: the larger of that slice's RMS and the tensor's) and the worst channel gain error (the fitted share
of its values that a channel is off by: the signature of a scaled row or lane). Structured measures also
judge every sub-block of an isolated fp16/bf16 decoder layer (Policy.structured). The multiple admits a
different but legitimate order of rounding; the floor keeps a budget from collapsing where eager happens to
be (near) exact. NaN or Inf anywhere fails. No test states an atol.

Calibration (bench/policy_calibration.py, Intel Xeon 2026-12-05): compiled / eager error at multiple 1 over
every part (embedding, each layer, head; isolated, propagated; every sub-block of every isolated layer) and
the end-to-end logits, toy-tp8 and SmolLM2-135M, 32 / 128 / 512 tokens, 3 input seeds (WikiText stretches
for SmolLM2): 45 + 405 parts per toy dtype, 288 + 4,050 per SmolLM2 dtype. Largest clean value, where, and
the multiple set from it (margin = multiple / largest):

    dtype  measure   largest clean   where                           multiple  margin
    fp32   rmse       7.83           SmolLM2 propagated layer 12        16       2.0
    fp32   max_abs   13.82           SmolLM2 propagated layer 29        21       1.5
    fp16   rmse       0.89           SmolLM2 propagated head             3       3.4 (1.8 over AMD's 1.7)
    fp16   max_abs    1.54           SmolLM2 propagated layer 10         3       1.9
    fp16   channel    1.81           SmolLM2 layer 4 swiglu              4       2.2
    fp16   position   5.02           SmolLM2 propagated layer 10         8       1.6
    fp16   gain       2.15           SmolLM2 propagated layer 29         4       1.9
    bf16   rmse       0.77           SmolLM2 propagated head             3       3.9
    bf16   max_abs    1.36           SmolLM2 layer 10 mlp_residual       3       2.2
    bf16   channel    2.24           SmolLM2 propagated layer 28         4       1.8
    bf16   position   5.02           SmolLM2 propagated layer 10         8       1.6
    bf16   gain       2.29           SmolLM2 propagated layer 22         4       1.7

- fp16/bf16: the rounding of every stored activation dominates; IREE, which keeps fused intermediates in
  fp32, lands at 0.1-0.9x the emulated eager's RMSE. The position measure peaks where SmolLM2's massive
  activations form (layer 10, position 0). fp32 judges no structured measure: its errors are accumulation
  order, scattered by IREE's data-tiled reductions (largest clean channel ratio 21, position 25).
- fp32: along the propagated chain compiled/eager reaches 7.8x (RMSE) and 13.8x (max abs) where the state
  nearly cancels before the massive activations form; 16 was set on one observation (12.5, with an oracle
  that rounded its norms and softmax in fp32) and is now 16 (RMSE) and 21 (max abs) from the distribution.
What a pass means (the smallest planted fault each check catches) is bench/sensitivity.py's table in the
README. Real defects sit far beyond: a weight off by 12.5 % or a wrong activation function is 10-1000x over
budget; fp16 accumulators rounded at every step (IREE without data tiling) 2x over on SmolLM2.
"""

from __future__ import annotations

import dataclasses

import torch

from harness.common.dtypes import QUANTIZED, W8A8, eps, torch_dtype
from harness.common.errors import HarnessError
from harness.numerics import metrics

# Each measure's multiple per dtype (the docstring's table says where each comes from). fp32 records its
# structured measures without judging them (MEASURES): accumulation order scatters its errors, so its
# structured multiples are only 1.5x its largest clean values, for the records.
MULTIPLES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rmse": 16.0, "max_abs": 21.0, "channel": 32.0, "position": 40.0, "gain": 32.0},
    torch.float16: {"rmse": 3.0, "max_abs": 3.0, "channel": 4.0, "position": 8.0, "gain": 4.0},
    torch.bfloat16: {"rmse": 3.0, "max_abs": 3.0, "channel": 4.0, "position": 8.0, "gain": 4.0},
}
STRUCTURED = ("channel", "position", "gain")
MEASURES: dict[torch.dtype, tuple[str, ...]] = {
    torch.float32: ("rmse", "max_abs"), torch.float16: ("rmse", "max_abs", *STRUCTURED),
    torch.bfloat16: ("rmse", "max_abs", *STRUCTURED)}
FLOOR_ULPS = 1.0


@dataclasses.dataclass
class Verdict:
    passed: bool
    reason: str
    # error / budget for each judged error: <= 1 passes. The quantity plots and bisection rank by.
    ratio: float
    errors: dict[str, float]  # the result's, against the oracle (structured: at the worst channel / position)
    budgets: dict[str, float]
    reference_errors: dict[str, float] = dataclasses.field(default_factory=dict)  # eager's, where the budget is
    where: dict[str, int] = dataclasses.field(default_factory=dict)  # structured: the worst channel / position
    measure: str = ""  # the measure that decided (the worst ratio)
    sub_block: str = ""  # for a decoder layer judged with its sub-blocks: the one that decided, if not the output

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def budget(eager_error: float, scale: float, dtype: torch.dtype, multiple: float) -> float:
    return multiple * eager_error + FLOOR_ULPS * eps(dtype) * scale


def _rms(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.pow(2).mean(dim).sqrt()


def structured(result: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype,
               multiples: dict[str, float]) -> dict[str, tuple[float, float, float, int]]:
    """The error where it lives: for each output channel (the last dimension; RMS over every position) and
    each position (RMS over the channels), the result's error against the oracle over its budget there,
    the multiple x eager's error there + 1 ulp of the oracle's RMS there (or the whole tensor's, if larger).
    Rounding noise spreads over every channel and position; a miscompiled row, head or position range
    concentrates where an aggregate dilutes it. And each channel's gain error (below). Returns, per measure
    ("gain", "channel", "position"), (error, budget, eager error, index) at the worst one."""
    o = oracle.detach().to(torch.float64).reshape(-1, oracle.shape[-1])
    d_r = result.detach().to(torch.float64).reshape(o.shape) - o
    d_e = eager.detach().to(torch.float64).reshape(o.shape) - o
    out = {}
    # A channel's gain: the share of its oracle values that its error is (a least-squares fit over the
    # positions), the signature of a scaled row or lane. Rounding noise averages out of it. Its floor is 1 ulp,
    # scaled up for a channel smaller than the tensor, whose error is the absolute error of larger terms.
    rms_c, rms_t = _rms(o, 0), _rms(o.flatten(), 0)
    energy = o.pow(2).sum(0).clamp_min(torch.finfo(torch.float64).tiny)
    g_r, g_e = ((d * o).sum(0) / energy for d in (d_r, d_e))
    scale = torch.maximum(rms_c, rms_t) / rms_c.clamp_min(torch.finfo(torch.float64).tiny)
    budgets = multiples["gain"] * g_e.abs() + FLOOR_ULPS * eps(dtype) * scale
    i = int((g_r.abs() / budgets).argmax())
    out["gain"] = (float(g_r[i].abs()), float(budgets[i]), float(g_e[i].abs()), i)
    for name, dim in (("channel", 0), ("position", 1)):
        e_r, e_e = _rms(d_r, dim), _rms(d_e, dim)
        # The floor is 1 ulp of the larger of the slice's scale and the tensor's: a channel of small values can
        # carry the absolute error of the larger terms it was summed from (SmolLM2 bf16, layer 18, attention
        # channel 551: values ~1.5e-3, compiled error 5e-4, eager's by chance 1e-5).
        floor = FLOOR_ULPS * eps(dtype) * torch.maximum(_rms(o, dim), _rms(o.flatten(), 0))
        budgets = multiples[name] * e_e + floor
        i = int((e_r / budgets).argmax())
        out[name] = (float(e_r[i]), float(budgets[i]), float(e_e[i]), i)
    return out


def judge(result: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype,
          reference: str = "eager", oracle_name: str = "fp64 oracle", multiple: float | None = None,
          measures: tuple[str, ...] | None = None) -> Verdict:
    """Judge `result` (e.g. the compiled output) for a model run in `dtype`, against the error of
    `eager` (or of another `reference`, so named in the reason: e.g. the compiled TP 1 model), both
    measured against `oracle` (the fp64 oracle, unless `oracle_name` says otherwise), with the dtype's
    multiples unless `multiple` is given, on the `measures` named (default: the dtype's MEASURES; every
    measure is recorded, only these decide)."""
    if not metrics.all_finite(result):
        n_bad = int((~torch.isfinite(result)).sum())
        return Verdict(False, f"{n_bad} non-finite values (NaN/Inf)", float("inf"), {}, {})
    if not metrics.all_finite(eager):
        return Verdict(False, f"the {reference} reference itself has NaN/Inf", float("inf"), {}, {})
    measures = MEASURES[dtype] if measures is None else measures
    multiples = MULTIPLES[dtype] if multiple is None else dict.fromkeys(MULTIPLES[dtype], multiple)
    errors = {"rmse": metrics.rmse(result, oracle), "max_abs": metrics.max_abs(result, oracle)}
    reference_errors = {"rmse": metrics.rmse(eager, oracle), "max_abs": metrics.max_abs(eager, oracle)}
    budgets = {"rmse": budget(reference_errors["rmse"], metrics.rms(oracle), dtype, multiples["rmse"]),
               "max_abs": budget(reference_errors["max_abs"], float(oracle.abs().max()), dtype, multiples["max_abs"])}
    where = {}
    for name, (error, bound, ref_error, index) in structured(result, eager, oracle, dtype, multiples).items():
        errors[name], budgets[name], reference_errors[name], where[name] = error, bound, ref_error, index
    ratios = {k: errors[k] / budgets[k] for k in measures}
    worst = max(ratios, key=ratios.get)
    passed = ratios[worst] <= 1.0
    label = {"channel": "rmse of channel", "position": "rmse of position", "gain": "gain error of channel"}
    what = f"{label[worst]} {where[worst]}" if worst in where else worst
    used = multiples[worst]
    reason = (f"{what} vs {oracle_name} {errors[worst]:.3g} "
              f"{'<=' if passed else '>'} budget {budgets[worst]:.3g} ({used:g} x {reference} "
              f"{str(dtype).removeprefix('torch.')} error + {FLOOR_ULPS:g} ulp floor)")
    return Verdict(passed, reason, ratios[worst], errors, budgets, reference_errors, where, worst)


@dataclasses.dataclass(frozen=True)
class PerplexityBudget:
    """perplexity/gate.py says how its gates use these."""

    paired: float  # |mean dNLL| allowed between compiled and eager, nats per token
    golden_rtol: float  # relative PPL difference from a golden value that is tolerated


PERPLEXITY_BUDGETS = {
    "fp32": PerplexityBudget(paired=1e-4, golden_rtol=5e-4),
    "fp16": PerplexityBudget(paired=1e-3, golden_rtol=5e-3),
    "bf16": PerplexityBudget(paired=4e-3, golden_rtol=2e-2),
}


def perplexity_budget(dtype: str) -> PerplexityBudget:
    """A weight-quantized variant computes in fp32 against its own eager reference: fp32's budget."""
    try:
        return PERPLEXITY_BUDGETS["fp32" if dtype in QUANTIZED else dtype]
    except KeyError:
        raise HarnessError(f"no perplexity budget for dtype {dtype!r}; known: "
                           f"{', '.join(PERPLEXITY_BUDGETS)}") from None


@dataclasses.dataclass(frozen=True)
class Policy:
    """How one configuration (`dtype`, a --dtype name) is judged: its multiple and measures, and its
    perplexity budgets. W8A8 variants are judged against eager under rounding-sized noise at their
    quantizers, with eager as the oracle, on RMSE alone, multiple 1 (transforms/w8a8.py says why)."""

    dtype: str
    noisy_reference: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def perplexity(self) -> PerplexityBudget:
        return perplexity_budget(self.dtype)

    def judge(self, result: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor,
              reference: str = "eager", oracle_name: str = "fp64 oracle") -> Verdict:
        if self.noisy_reference:
            return judge(result, eager, oracle, self.torch_dtype, reference, oracle_name, multiple=1.0,
                         measures=("rmse",))
        return judge(result, eager, oracle, self.torch_dtype, reference, oracle_name)

    @property
    def structured(self) -> tuple[str, ...]:
        """The structured measures this dtype judges (tolerance.MEASURES), which also judge every sub-block of
        an isolated decoder layer: a miscompiled row of one projection drowns in the residual stream at the
        layer's output (SmolLM2 bf16, layer 15, down_proj row x1.25: 0.5 of the channel budget there, 12x it
        at down_proj's own output)."""
        return () if self.noisy_reference else tuple(m for m in MEASURES[self.torch_dtype] if m in STRUCTURED)

    def judge_structured(self, result: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor) -> Verdict:
        return judge(result, eager, oracle, self.torch_dtype, measures=self.structured)


def policy(dtype: str) -> Policy:
    return Policy(dtype, noisy_reference=dtype in W8A8)
