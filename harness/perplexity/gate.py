"""Gates that turn perplexity statistics into a nightly's pass or fail, and the golden files they read.

Paired gate: compiled vs eager in the same dtype, on the same tokens
--------------------------------------------------------------------
The statistic is the mean per-token dNLL = ln(PPL_compiled / PPL_eager). Pairing removes the text's own
variance (per-token NLLs spread by nats; their differences between two implementations of one model by
orders of magnitude less), so a small subset resolves a small budget.

- Its SE is clustered by window (windows independent, tokens inside one window arbitrarily correlated),
  with Student's t on K - 1 degrees of freedom. The token-level SE llama.cpp prints treats neighbouring
  tokens as independent and would understate the noise, and so raise the false-alarm rate.
- Hypotheses: "within budget", |mu| <= budget, against |mu| > budget. The gate fails only when the
  one-sided (1 - ALPHA) lower confidence bound of |mu|, |mean| - t * SE, exceeds the budget.
  Noise alone then fails at most ALPHA of runs: exactly ALPHA for an engine sitting right on the budget,
  and far less for the usual clean engine (mu ~ 0), which fails only if |mean| > budget + t * SE.
  The textbook alternative, testing mu = 0, would flag differences far too small to matter (any reordering
  of a reduction has a nonzero mean) once the subset is large, and its verdict would depend on the subset.
- The price of never failing on noise is that a regression is caught only once it exceeds the budget
  by about (t + z_POWER) * SE. So power is checked, not assumed: each run computes its probability of
  catching a regression of DETECT_FACTOR budgets, and when that is below POWER it says "underpowered"
  (not a pass) with the number of windows it would need. A pass therefore always means: had the compiled
  engine been off by twice the budget, this run would have failed with probability >= 90 %.
- ALPHA = 0.01 because a nightly gates many (model, dtype) pairs; POWER = 0.9 at 2x the budget. Fewer than
  MIN_WINDOWS windows is "underpowered" too: a clustered SE from so few windows is itself too noisy.
- A non-finite mean (NaN or inf logits anywhere) always fails.

Budgets (numerics/tolerance.py: `PERPLEXITY_BUDGETS[dtype].paired`, nats per token, ~ the relative PPL
change) bound a systematic shift.
fp32 implementations differ by ~1e-5 in their logits, so 1e-4 (0.01 % PPL) is far above rounding and far
below any change in quality; fp16 and bf16 carry 11 and 8 significant bits, and their budgets grow with
their rounding: 1e-3 and 4e-3. For scale: 4-bit quantization (llama.cpp's q4_K_M) moves LLaMA-3-8B's
ln PPL by 0.027; a compiled-vs-eager difference within one dtype should be far below that.

Golden gate: each engine's PPL against its golden on the same windows
--------------------------------------------------------------------
- A golden keeps each engine's NLL sum of every window of the whole file (per-window results, written
  only from a whole-file run), so a run of any prefix of the windows (the quick tier's 8, 16, the nightly's
  all) is compared with the golden's PPL over exactly the same windows: no sampling noise between them,
  only numerics. The first golden kept one PPL for one window count, so any other count went ungated.
- Only a golden from the same model file (sha256) and the same window sequence (text, form, tokenizer,
  scheme, BOS, n_ctx, stride: `Protocol.STREAM_FIELDS`) is comparable; anything else is an error, not a
  verdict.
- Fail when |PPL - golden| exceeds `PERPLEXITY_BUDGETS[dtype].golden_rtol` * golden (5 paired budgets: the
  golden may come from another machine, thread count or library version, reductions reordered, and the
  nightly should fail on drift, not on such differences). A non-finite PPL fails.
- No golden: the nightly fails ("no golden ...: run ... --update-golden"), the quick tier says "ungated",
  as does an engine the golden has no results of. A run that writes the golden is not gated against it;
  an eager fp32 golden is written only after the independent check against Hugging Face transformers
  (checks/perplexity.py) agrees.

Golden files: golden/<model>.<dtype>.<protocol stream key>.json, written only when asked (`update=True`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from statistics import NormalDist

from harness.common.errors import HarnessError
from harness.numerics.tolerance import perplexity_budget
from harness.perplexity.protocol import Protocol
from harness.perplexity.stats import EngineStats, Stats
from harness.reporting.records import versions

ALPHA = 0.01
POWER = 0.90
DETECT_FACTOR = 2.0
MIN_WINDOWS = 6


@dataclasses.dataclass(frozen=True)
class GateResult:
    gate: str  # "paired" or "golden"
    verdict: str  # "pass", "fail" or "underpowered"
    message: str  # one line
    details: dict

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_record(self) -> dict:
        return dataclasses.asdict(self)


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile by its Cornish-Fisher expansion in 1/df (Abramowitz & Stegun 26.7.5):
    within 1e-3 relative for df >= 5 at p <= 0.995 (the project does not depend on scipy)."""
    z = NormalDist().inv_cdf(p)
    g = ((z ** 3 + z) / 4,
         (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
         (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
         (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


def paired_gate(mean: float, se: float, n_windows: int, budget: float, alpha: float = ALPHA,
                power: float = POWER, detect_factor: float = DETECT_FACTOR, name: str = "paired",
                statistic: str = "dNLL") -> GateResult:
    """Decide on the mean dNLL (candidate minus reference) and its window-clustered SE over n_windows (or on
    another per-token statistic in nats: `name` the gate, `statistic` what its messages call the mean)."""
    details = dict(mean=mean, se=se, n_windows=n_windows, budget=budget, alpha=alpha, power_required=power,
                   detect_factor=detect_factor)
    if not math.isfinite(mean):
        return GateResult(name, "fail", f"{name} gate fail: mean {statistic} is {mean} (non-finite logits)", details)
    if n_windows < MIN_WINDOWS or not math.isfinite(se):
        return GateResult(name, "underpowered", f"{name} gate underpowered: {n_windows} windows, at least "
                          f"{MIN_WINDOWS} are needed for a window-clustered SE", details)
    t = t_quantile(1 - alpha, n_windows - 1)
    lower = abs(mean) - t * se
    se_needed = (detect_factor - 1) * budget / (t + NormalDist().inv_cdf(power))
    achieved = 1.0 if se == 0 else NormalDist().cdf((detect_factor - 1) * budget / se - t)
    details.update(lower_bound=lower, power=achieved)
    summary = (f"mean {statistic} {mean:+.3e} +/- {se:.2e} ({n_windows} windows); {100 * (1 - alpha):g}% lower "
               f"bound of |{statistic}| {lower:.3e} vs budget {budget:.1e}")
    if lower > budget:
        return GateResult(name, "fail", f"{name} gate fail: {summary}", details)
    if achieved < power:
        needed = math.ceil(n_windows * (se / se_needed) ** 2)
        return GateResult(name, "underpowered", f"{name} gate underpowered: {summary}; power {achieved:.2f} "
                          f"< {power:g} to catch {detect_factor:g}x the budget: score about {needed} windows",
                          details)
    return GateResult(name, "pass", f"{name} gate pass: {summary}; power {achieved:.2f} to catch "
                      f"{detect_factor:g}x the budget", details)


def check_pair(stats: Stats, dtype: str) -> GateResult:
    """The paired gate on a two-engine result (reference first), with the dtype's budget."""
    if stats.pair is None:
        raise HarnessError("the paired gate needs a two-engine result (eager and compiled)")
    return paired_gate(stats.pair.ln_ratio.value, stats.pair.ln_ratio_window_se, stats.n_windows,
                       perplexity_budget(dtype).paired)


def check_kld(stats: Stats, dtype: str) -> GateResult:
    """The paired gate's decision on the mean KLD(reference || candidate), with the same budget. On text drawn
    from the reference's own distribution the candidate's expected dNLL is exactly that KLD, so this is the
    paired gate on the text the reference would write; and a KLD cannot cancel, where a dNLL on fixed text
    can: a corrupted random-weight toy scores random ids no worse than a right one."""
    if stats.pair is None:
        raise HarnessError("the KLD gate needs a two-engine result (reference and candidate)")
    return paired_gate(stats.pair.kld.value, stats.pair.kld_window_se, stats.n_windows,
                       perplexity_budget(dtype).paired, name="kld", statistic="KLD")


@dataclasses.dataclass(frozen=True)
class Golden:
    """Each engine's per-window NLL sums over the whole file, so that a run of any prefix of the windows is
    gated against exactly the same windows (no sampling noise between them: only numerics)."""

    protocol: Protocol  # the whole file's
    model_sha256: str
    window_tokens: tuple[int, ...]
    engines: dict[str, tuple[float, ...]]  # engine name -> per-window NLL sums
    checked: str  # the independent check its reference engine passed when written, or why there is none
    command: str  # the exact command that produced it
    date: str
    versions: dict[str, str]

    def ppl(self, engine: str, n_windows: int) -> float:
        return math.exp(sum(self.engines[engine][:n_windows]) / sum(self.window_tokens[:n_windows]))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Golden":
        return cls(**{**d, "protocol": Protocol.from_dict(d["protocol"]), "window_tokens": tuple(d["window_tokens"]),
                      "engines": {k: tuple(v) for k, v in d["engines"].items()}})


def make_golden(stats: Stats, protocol: Protocol, model_sha256: str, command: str, checked: str) -> Golden:
    """The golden of a whole-file run (HarnessError for a subset: later runs of more windows could not be
    gated against it)."""
    if protocol.n_windows != protocol.total_windows:
        raise HarnessError(f"--update-golden: a golden keeps every window of the file, and this run scored "
                           f"{protocol.n_windows} of {protocol.total_windows} (score them all: --all, or --nightly)")
    return Golden(protocol=protocol, model_sha256=model_sha256, window_tokens=stats.window_tokens,
                  engines={e.name: e.window_nll for e in stats.engines}, checked=checked, command=command,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), versions=versions())


def golden_path(root: Path, model: str, dtype: str, protocol: Protocol) -> Path:
    return root / f"{model}.{dtype}.{protocol.stream_key()}.json"


def read_golden(path: Path) -> Golden:
    if not path.is_file():
        raise HarnessError(f"{path}: no golden file; create it with update=True (--update-golden)")
    try:
        return Golden.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as e:
        raise HarnessError(f"{path}: not a golden file: {type(e).__name__}: {' '.join(str(e).split())}")


def write_golden(path: Path, golden: Golden, update: bool = False) -> None:
    if not update:
        raise HarnessError(f"{path}: golden files are written only when asked (update=True, --update-golden)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(golden.to_dict(), indent=1, sort_keys=True) + "\n")


def no_golden(path: Path, required: bool, update_command: str) -> GateResult:
    """The verdict of a configuration without a golden: a failure where one is required (the nightly), else
    a visible "ungated" (the quick tier)."""
    message = f"no golden {path.name}: run `{update_command}`"
    return GateResult("golden", "fail" if required else "ungated", message, {"path": str(path)})


def golden_gate(engine: EngineStats, stats: Stats, protocol: Protocol, golden: Golden, model_sha256: str,
                rtol: float) -> GateResult:
    """`engine`'s PPL over the run's windows against the golden's over the same windows: fail beyond `rtol`."""
    mismatch = protocol.stream_mismatch(golden.protocol)
    if mismatch:
        raise HarnessError(f"golden ({golden.command}) is not comparable: {'; '.join(mismatch)}")
    if model_sha256 != golden.model_sha256:
        raise HarnessError(f"golden is for model sha256 {golden.model_sha256}, this run's is {model_sha256}")
    k = stats.n_windows
    if tuple(stats.window_tokens) != golden.window_tokens[:k]:
        raise HarnessError(f"golden ({golden.command}) is not comparable: its first {k} windows score other tokens")
    if engine.name not in golden.engines:
        return GateResult("golden", "ungated", f"golden has no {engine.name} results ({golden.command})",
                          {"engine": engine.name})
    ppl, reference = engine.ppl.value, golden.ppl(engine.name, k)
    diff = ppl - reference
    worst = max(abs(a - b) / n for a, b, n in zip(engine.window_nll, golden.engines[engine.name], stats.window_tokens))
    details = dict(engine=engine.name, ppl=ppl, golden=reference, diff=diff, rtol=rtol, n_windows=k,
                   worst_window_dnll=worst)
    summary = (f"{engine.name} PPL {ppl:.4f} vs golden {reference:.4f} on the same {k} windows: "
               f"{100 * diff / reference:+.4f}% (floor {100 * rtol:.3f}%), worst window |dNLL| {worst:.2e}/token")
    verdict = "fail" if not math.isfinite(ppl) or abs(diff) > rtol * reference else "pass"
    return GateResult("golden", verdict, f"golden gate {verdict}: {summary}", details)
