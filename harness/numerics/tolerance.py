"""The one tolerance policy: a result is judged against what eager execution achieves in the same
precision, both measured against an fp64 oracle (the idea of torch's accuracy check `same()`; the oracle is
the same dtype-rounded weights computed in fp64 end to end, tests/test_oracle.py):

    error(result, oracle) <= MULTIPLES[dtype][measure] * error(eager same-dtype, oracle)
                             + FLOOR_ULPS[measure] * ulp(dtype) * scale

for each measure: RMSE (scale: the oracle's RMS) and max abs (scale: max |oracle|) in aggregate, and, for
fp16/bf16 parts run on a shared input (the layer check's isolated mode), where the error lives: the worst
output channel's and the worst position's RMSE (scale: the larger of that slice's RMS and the tensor's) and
the worst channel gain error (the fitted share of its values that a channel is off by: the signature of a
scaled row or lane); these also judge every sub-block of an isolated decoder layer (Policy.structured). The
multiple admits a different but legitimate order of rounding; the floor keeps a budget from collapsing where
eager happens to be (near) exact. NaN or Inf anywhere fails. No test states an atol.

Calibration (bench/policy_calibration.py, Intel Xeon 2026-12-05): each measure's error / budget under this
policy over every part (embedding, each layer, head; isolated, propagated; every sub-block of every isolated
layer) and the end-to-end logits, toy-tp8 and SmolLM2-135M, 32 / 128 / 512 tokens, 3 input seeds (WikiText
stretches for SmolLM2): 45 + 405 parts per toy dtype, 288 + 4,050 per SmolLM2 dtype. The largest clean
ratio where the measure decides (always SmolLM2; the toys stay under 0.42), and the margin (1 / largest):

    dtype  measure   multiple  floor  largest clean  where                                   margin
    fp32   rmse         48     1 ulp     0.46        propagated layer 12, 32 tokens            2.2
    fp32   max_abs     144     1 ulp     0.50        propagated layer 17, 32 tokens            2.0
    fp16   rmse          3     1 ulp     0.54        propagated layer 21, 32 tokens            1.9
    fp16   max_abs       3     1 ulp     0.77        propagated layer 1, 32 tokens             1.3
    fp16   channel       4     4 ulp     0.45        layer 4 swiglu, 32 tokens                 2.2
    fp16   position      8     4 ulp     0.40        layer 5 attention, 512 tokens             2.5
    fp16   gain          4     4 ulp     0.49        layer 5 swiglu, 32 tokens                 2.0
    bf16   rmse          3     1 ulp     0.37        propagated layer 2, 128 tokens            2.7
    bf16   max_abs       3     1 ulp     0.57        isolated layer 10, 32 tokens              1.8
    bf16   channel       4     4 ulp     0.49        layer 10 swiglu, 32 tokens                2.0
    bf16   position      8     4 ulp     0.55        layer 7 o_proj, 512 tokens                1.8
    bf16   gain          4     4 ulp     0.53        layer 10 swiglu, 32 tokens                1.9

The earlier calibration read ratios at multiple 1 as the multiples needed; that holds only where eager's
error dominates the budget. Where the floor does (eager exact by chance), no multiple helps: clean SmolLM2
fp16 failed its layer 1 swiglu gain at 1.08x a 1-ulp floor (a channel whose energy sits in one or two
positions: its gain error is their relative error, several ulps after a few roundings), and fp32 at seeds 1
and 2 went to 2.8x the old max-abs multiple (21): IREE's fp32 reductions carry up to ~60x MKL's max error in layer 28's
down_proj and along the propagated chain at 32 tokens. Structured measures do not judge propagated parts:
there compiled and eager states drift apart and a slice's error is that drift amplified (position 0.90,
recorded only). fp32 records its structured measures only: its errors are accumulation order, scattered by
IREE's data-tiled reductions (clean gain ratios to 3.6).
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
# structured measures without judging them (STRUCTURED_DTYPES): accumulation order scatters its errors.
MULTIPLES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rmse": 48.0, "max_abs": 144.0, "channel": 32.0, "position": 40.0, "gain": 32.0},
    torch.float16: {"rmse": 3.0, "max_abs": 3.0, "channel": 4.0, "position": 8.0, "gain": 4.0},
    torch.bfloat16: {"rmse": 3.0, "max_abs": 3.0, "channel": 4.0, "position": 8.0, "gain": 4.0},
}
AGGREGATE = ("rmse", "max_abs")
STRUCTURED = ("channel", "position", "gain")
STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
# Floors in ulps of the scale. A slice is a small sample: one position can carry a channel's energy (its gain
# error is then that one value's relative error, which a few roundings put at several ulps).
FLOOR_ULPS = {"rmse": 1.0, "max_abs": 1.0, "channel": 4.0, "position": 4.0, "gain": 4.0}


def measures(dtype: torch.dtype, isolated: bool) -> tuple[str, ...]:
    """What decides a verdict: the aggregate measures, and for fp16 / bf16 parts run on a shared input
    (isolated) the structured ones. Along a propagated chain (and so end to end) the compiled and eager states
    drift apart and a slice's error is that drift, amplified (clean SmolLM2 fp16: 0.90 of the position budget,
    recorded only; 1.6x it with a 1-ulp floor)."""
    return AGGREGATE + (STRUCTURED if isolated and dtype in STRUCTURED_DTYPES else ())


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


def budget(eager_error: float, scale: float, dtype: torch.dtype, multiple: float, measure: str) -> float:
    return multiple * eager_error + FLOOR_ULPS[measure] * eps(dtype) * scale


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
    # positions), the signature of a scaled row or lane. Rounding noise averages out of it. Its floor is scaled
    # up for a channel smaller than the tensor, whose error is the absolute error of larger terms.
    rms_c, rms_t = _rms(o, 0), _rms(o.flatten(), 0)
    energy = o.pow(2).sum(0).clamp_min(torch.finfo(torch.float64).tiny)
    g_r, g_e = ((d * o).sum(0) / energy for d in (d_r, d_e))
    scale = torch.maximum(rms_c, rms_t) / rms_c.clamp_min(torch.finfo(torch.float64).tiny)
    budgets = multiples["gain"] * g_e.abs() + FLOOR_ULPS["gain"] * eps(dtype) * scale
    i = int((g_r.abs() / budgets).argmax())
    out["gain"] = (float(g_r[i].abs()), float(budgets[i]), float(g_e[i].abs()), i)
    for name, dim in (("channel", 0), ("position", 1)):
        e_r, e_e = _rms(d_r, dim), _rms(d_e, dim)
        # The floor is in ulps of the larger of the slice's scale and the tensor's: a channel of small values can
        # carry the absolute error of the larger terms it was summed from (SmolLM2 bf16, layer 18, attention
        # channel 551: values ~1.5e-3, compiled error 5e-4, eager's by chance 1e-5).
        floor = FLOOR_ULPS[name] * eps(dtype) * torch.maximum(_rms(o, dim), _rms(o.flatten(), 0))
        budgets = multiples[name] * e_e + floor
        i = int((e_r / budgets).argmax())
        out[name] = (float(e_r[i]), float(budgets[i]), float(e_e[i]), i)
    return out


def judge(result: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype,
          reference: str = "eager", oracle_name: str = "fp64 oracle", multiple: float | None = None,
          measures: tuple[str, ...] | None = None, floor: float | None = None) -> Verdict:
    """Judge `result` (e.g. the compiled output) for a model run in `dtype`, against the error of
    `eager` (or of another `reference`, so named in the reason: e.g. the compiled TP 1 model), both
    measured against `oracle` (the fp64 oracle, unless `oracle_name` says otherwise), with the dtype's
    multiples unless `multiple` is given, on the `measures` named (default: the aggregate ones; every
    measure is recorded, only these decide). `floor`: an absolute floor of the RMSE budget in place of its
    ulp floor (W8A8's fp32 rounding budget, `rounding_budget`)."""
    if not metrics.all_finite(result):
        n_bad = int((~torch.isfinite(result)).sum())
        return Verdict(False, f"{n_bad} non-finite values (NaN/Inf)", float("inf"), {}, {})
    if not metrics.all_finite(eager):
        return Verdict(False, f"the {reference} reference itself has NaN/Inf", float("inf"), {}, {})
    measures = AGGREGATE if measures is None else measures
    multiples = MULTIPLES[dtype] if multiple is None else dict.fromkeys(MULTIPLES[dtype], multiple)
    errors = {"rmse": metrics.rmse(result, oracle), "max_abs": metrics.max_abs(result, oracle)}
    reference_errors = {"rmse": metrics.rmse(eager, oracle), "max_abs": metrics.max_abs(eager, oracle)}
    budgets = {"rmse": budget(reference_errors["rmse"], metrics.rms(oracle), dtype, multiples["rmse"], "rmse")
               if floor is None else multiples["rmse"] * reference_errors["rmse"] + floor,
               "max_abs": budget(reference_errors["max_abs"], float(oracle.abs().max()), dtype, multiples["max_abs"],
                                 "max_abs")}
    where = {}
    for name, (error, bound, ref_error, index) in structured(result, eager, oracle, dtype, multiples).items():
        errors[name], budgets[name], reference_errors[name], where[name] = error, bound, ref_error, index
    ratios = {k: errors[k] / budgets[k] for k in measures}
    worst = max(ratios, key=ratios.get)
    passed = ratios[worst] <= 1.0
    label = {"channel": "rmse of channel", "position": "rmse of position", "gain": "gain error of channel"}
    what = f"{label[worst]} {where[worst]}" if worst in where else worst
    used = multiples[worst]
    floor_name = f"fp32 rounding budget {floor:.3g}" if floor is not None and worst == "rmse" else \
        f"{FLOOR_ULPS[worst]:g} ulp floor"
    reason = (f"{what} vs {oracle_name} {errors[worst]:.3g} "
              f"{'<=' if passed else '>'} budget {budgets[worst]:.3g} ({used:g} x {reference} "
              f"{str(dtype).removeprefix('torch.')} error + {floor_name})")
    return Verdict(passed, reason, ratios[worst], errors, budgets, reference_errors, where, worst)


def rounding_budget(fp32: torch.Tensor, fp32_oracle: torch.Tensor) -> float:
    """How far fp32 rounding alone may move an output of this model: the fp32 policy's RMSE budget for the
    unquantized model's eager error against its fp64 oracle. A W8A8 budget's share for the arithmetic between
    the quantizers, which moves compiled and eager apart without flipping a code."""
    return budget(metrics.rmse(fp32, fp32_oracle), metrics.rms(fp32_oracle), torch.float32,
                  MULTIPLES[torch.float32]["rmse"], "rmse")


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
    quantizers, with eager as the oracle, on RMSE alone, multiple 1, plus the unquantized model's fp32 rounding
    budget (transforms/w8a8.py says why)."""

    dtype: str
    noisy_reference: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def perplexity(self) -> PerplexityBudget:
        return perplexity_budget(self.dtype)

    def judge(self, result: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor,
              reference: str = "eager", oracle_name: str = "fp64 oracle", isolated: bool = False) -> Verdict:
        """`isolated`: the result and eager ran on the same input (a part of the layer check's isolated mode),
        so the structured measures judge too (`measures`)."""
        if self.noisy_reference:
            raise ValueError(f"{self.dtype} is judged against a noisy eager (Policy.judge_noisy)")
        return judge(result, eager, oracle, self.torch_dtype, reference, oracle_name,
                     measures=measures(self.torch_dtype, isolated))

    def judge_noisy(self, result: torch.Tensor, eager: torch.Tensor, noisy: list[torch.Tensor],
                    fp32: torch.Tensor, fp64: torch.Tensor) -> Verdict:
        """W8A8: `result` against `eager`, within the farthest (RMSE) of `noisy`, eager's own runs under noise at
        its quantizers (one may by chance flip no code), plus the fp32 rounding budget of the same output computed
        unquantized in `fp32` and `fp64` (`rounding_budget`)."""
        farthest = max(noisy, key=lambda run: metrics.rmse(run, eager))
        return judge(result, farthest, eager, self.torch_dtype, "noisy eager", "eager", multiple=1.0,
                     measures=("rmse",), floor=rounding_budget(fp32, fp64))

    @property
    def structured(self) -> tuple[str, ...]:
        """The structured measures this dtype judges on isolated parts, which also judge every sub-block of
        an isolated decoder layer: a miscompiled row of one projection drowns in the residual stream at the
        layer's output and stands out at the projection's own (SmolLM2 fp16, layer 15, down_proj row x1.25:
        23x the gain budget there)."""
        return () if self.noisy_reference else tuple(m for m in measures(self.torch_dtype, True) if m in STRUCTURED)

    def judge_structured(self, result: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor) -> Verdict:
        return judge(result, eager, oracle, self.torch_dtype, measures=self.structured)


def policy(dtype: str) -> Policy:
    return Policy(dtype, noisy_reference=dtype in W8A8)
