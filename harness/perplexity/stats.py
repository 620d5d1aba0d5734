"""Perplexity statistics of one engine, or of a reference engine A ("base") and a candidate engine B ("Q")
scoring the same tokens, with llama.cpp's definitions (tools/perplexity/perplexity.cpp), per scored token i
with reference log-probs a and candidate log-probs b over the vocabulary:

- nll_i = -log p(true next token); PPL = exp(mean nll) +/- PPL * SE(mean nll) (the delta method);
- ln(PPL_B / PPL_A) = mean(nll_B - nll_A) +/- sqrt(SE_A^2 + SE_B^2 - 2 cov), which is the SE of the mean of
  the per-token differences; and the correlation of the two engines' per-token NLLs;
- KLD_i = sum_v exp(a_v) (a_v - b_v): mean +/- SE and percentiles;
- same top token: fraction of tokens where argmax a = argmax b, +/- sqrt(p (1 - p) / (N - 1));
- dp_i = p_B(true) - p_A(true): mean +/- SE, and RMS.

The SE of a mean is sqrt((<x^2> - <x>^2) / (N - 1)), tokens taken as independent; that understates the
error for neighbouring tokens, so each mean NLL and their difference also get a window-clustered SE
and the mean KLD also get a window-clustered SE (`window_se`), which the gates use.

Everything is computed in fp64 from the full log-softmax rows (llama.cpp keeps its base log-probs as
uint16 over the top 16 nats, so its KLD can come out slightly negative; here only by fp64 rounding), but for
the KLD against a reference kept by --eager-cache (eager_cache.py: over its top tokens). Rows
are reduced as they arrive, in blocks of bounded size whatever the vocabulary; what is kept is per-token
scalars (NLL per engine and KLD: 24 bytes a token, about 7 MB for the whole WikiText-2 test file) and
window sizes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

KLD_FULL = "the whole vocabulary"
PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
BLOCK_ELEMENTS = 1 << 23  # fp64 log-softmax elements reduced at a time: 64 MB per engine


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float
    se: float


def mean_se(x: np.ndarray) -> Estimate:
    """Mean and its standard error, the values taken as independent."""
    n = x.size
    return Estimate(float(x.mean()), math.sqrt(x.var() / (n - 1)) if n > 1 else math.nan)


def window_se(x: np.ndarray, window_sizes: Sequence[int]) -> float:
    """Standard error of the mean of `x`, clustered by window: windows independent, tokens within a
    window arbitrarily correlated (the cluster-robust variance of a ratio estimator:
    K/(K-1) sum_w (S_w - mean * n_w)^2 / N^2, with S_w the window's sum and n_w its size)."""
    sizes = np.asarray(window_sizes)
    k = sizes.size
    if k < 2:
        return math.nan
    sums = np.add.reduceat(x, np.concatenate(([0], np.cumsum(sizes)[:-1])))
    residuals = sums - x.mean() * sizes
    return math.sqrt(k / (k - 1) * np.sum(residuals ** 2)) / x.size


@dataclasses.dataclass(frozen=True)
class EngineStats:
    name: str
    nll: Estimate  # token SE (llama.cpp's)
    nll_window_se: float
    ppl: Estimate  # exp(nll) +/- PPL * SE: the delta method
    window_nll: tuple[float, ...] = ()  # each window's NLL sum, fp64: what goldens keep and gate on


def engine_stats(name: str, nll: np.ndarray, window_sizes: Sequence[int]) -> EngineStats:
    mean = mean_se(nll)
    ppl = math.exp(mean.value)
    sums = tuple(float(s) for s in np.add.reduceat(nll, np.cumsum([0, *window_sizes[:-1]])))
    return EngineStats(name, mean, window_se(nll, window_sizes), Estimate(ppl, ppl * mean.se), sums)


@dataclasses.dataclass(frozen=True)
class PairStats:
    ln_ratio: Estimate  # mean(nll_B - nll_A), token SE (llama.cpp's)
    ln_ratio_window_se: float  # the same mean's window-clustered SE
    nll_correlation: float
    kld: Estimate
    kld_window_se: float
    kld_percentiles: dict[str, float]  # "max", "99.9", ..., "0.1", "min"
    same_top: Estimate
    dp: Estimate
    dp_rms: Estimate


@dataclasses.dataclass(frozen=True)
class Stats:
    n_tokens: int
    n_windows: int
    engines: tuple[EngineStats, ...]  # the reference (A) first
    pair: PairStats | None
    window_tokens: tuple[int, ...] = ()  # scored tokens of each window
    kld_over: str = KLD_FULL  # the outcomes the KLD sums over (eager_cache.py keeps eager's top tokens)

    def to_record(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """llama.cpp's summary: `Final estimate` per engine, then its statistics blocks for a pair."""
        lines = [f"[{e.name}] Final estimate: PPL = {e.ppl.value:.4f} +/- {e.ppl.se:.5f}" for e in self.engines]
        p = self.pair
        if p is None:
            return "\n".join(lines)
        a, b = self.engines
        ratio = math.exp(p.ln_ratio.value)
        lines += [
            "", f"====== Perplexity statistics (Q = {b.name}, base = {a.name}, {self.n_tokens} tokens) ======",
            f"Mean PPL(Q)                   : {b.ppl.value:10.6f} ± {b.ppl.se:10.6f}",
            f"Mean PPL(base)                : {a.ppl.value:10.6f} ± {a.ppl.se:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * p.nll_correlation:6.2f}%",
            f"Mean ln(PPL(Q)/PPL(base))     : {p.ln_ratio.value:10.6f} ± {p.ln_ratio.se:10.6f} "
            f"(± {p.ln_ratio_window_se:.6f} by window)",
            f"Mean PPL(Q)/PPL(base)         : {ratio:10.6f} ± {ratio * p.ln_ratio.se:10.6f}",
            "", "====== KL divergence statistics ======",
            f"Mean    KLD: {p.kld.value:10.6f} ± {p.kld.se:10.6f}",
        ]
        if self.kld_over != KLD_FULL:
            lines.append(f"over {self.kld_over}")
        lines += [f"{_percentile_label(k)} KLD: {v:10.6f}" for k, v in p.kld_percentiles.items()]
        lines += [
            "", "====== Token probability statistics ======",
            f"Mean    Δp: {100 * p.dp.value:6.3f} ± {100 * p.dp.se:5.3f} %",
            f"RMS Δp    : {100 * p.dp_rms.value:6.3f} ± {100 * p.dp_rms.se:5.3f} %",
            f"Same top p: {100 * p.same_top.value:6.3f} ± {100 * p.same_top.se:5.3f} %",
        ]
        return "\n".join(lines)


def _percentile_label(key: str) -> str:
    labels = {"max": "Maximum", "min": "Minimum", "50.0": "Median "}
    return labels[key] if key in labels else f"{float(key):4.1f}%  "


def kld_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v exp(a_v) (a_v - b_v) per row of log-probs, as one batched dot product (the full-file run's
    statistics cost half of what elementwise products and a sum do)."""
    d = a - b
    p_a = a.exp_()
    kld = torch.bmm(p_a[:, None], d[:, :, None])[:, 0, 0]
    # A token impossible under a contributes 0, even where b is -inf too (0 * inf is nan in the product).
    nan = kld.isnan()
    if nan.any():
        kld[nan] = (p_a[nan] * d[nan]).masked_fill(p_a[nan] == 0, 0.0).sum(-1)
    return kld


def row_blocks(n: int, vocab: int):
    """Slices of n rows small enough that a block's fp64 log-softmax stays within BLOCK_ELEMENTS."""
    rows = max(1, BLOCK_ELEMENTS // vocab)
    return (slice(start, start + rows) for start in range(0, n, rows))


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1, dtype=torch.float64)


def token_nll(logp: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Each row's NLL of its target."""
    return -logp.gather(-1, targets[:, None])[:, 0].numpy()


@dataclasses.dataclass(frozen=True)
class WindowResult:
    """One window's per-token results, all the statistics keep of it: each engine's NLL and, for a pair, the KLD
    and how many tokens had the same top token. Adding a window's results gives, bit for bit, what adding its
    logits gives (the unit a resumed or sharded perplexity run stores: perplexity/journal.py)."""

    nll: tuple[np.ndarray, ...]
    kld: np.ndarray | None
    same_top: int

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Its arrays under names that start with `prefix` (for one .npz holding several results)."""
        arrays = {f"{prefix}engines": np.array(len(self.nll)), f"{prefix}same_top": np.array(self.same_top),
                  **{f"{prefix}nll{e}": nll for e, nll in enumerate(self.nll)}}
        return arrays | ({f"{prefix}kld": self.kld} if self.kld is not None else {})

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "WindowResult":
        return cls(tuple(arrays[f"{prefix}nll{e}"] for e in range(int(arrays[f"{prefix}engines"]))),
                   arrays[f"{prefix}kld"] if f"{prefix}kld" in arrays else None, int(arrays[f"{prefix}same_top"]))


class Accumulator:
    """Streaming statistics: `add` each window's scored rows as they come (or `add_result` its stored results),
    `result` at the end."""

    def __init__(self, names: Sequence[str], kld_over: str = KLD_FULL):
        if len(names) not in (1, 2):
            raise ValueError(f"statistics of 1 or 2 engines, not {len(names)}")
        self.names, self.kld_over = tuple(names), kld_over
        self._nll: list[list[np.ndarray]] = [[] for _ in names]
        self._kld: list[np.ndarray] = []
        self._window_sizes: list[int] = []
        self._same_top = 0
        self._sum_nll_a = 0.0

    @property
    def paired(self) -> bool:
        return len(self.names) == 2

    @property
    def n_tokens(self) -> int:
        return sum(self._window_sizes)

    def add(self, targets: torch.Tensor, logits: Sequence[torch.Tensor]) -> WindowResult:
        """One window: `targets` [n] and, per engine, the logits [n, vocab] that predict them."""
        result = self.measure(targets, logits)
        self.add_result(result)
        return result

    def measure(self, targets: torch.Tensor, logits: Sequence[torch.Tensor]) -> WindowResult:
        n = targets.shape[0]
        if len(logits) != len(self.names) or any(t.shape[0] != n for t in logits):
            raise ValueError(f"expected {len(self.names)} logit tensors of {n} rows")
        nll = [np.empty(n) for _ in logits]
        kld = np.empty(n)
        same_top = 0
        for block in row_blocks(n, logits[0].shape[-1]):
            logp = [log_probs(t[block]) for t in logits]
            for out, lp in zip(nll, logp):
                out[block] = token_nll(lp, targets[block])
            if self.paired:
                a, b = logp
                same_top += int((a.argmax(-1) == b.argmax(-1)).sum())
                kld[block] = kld_rows(a, b).numpy()
        return WindowResult(tuple(nll), kld if self.paired else None, same_top)

    def add_result(self, result: WindowResult) -> None:
        if len(result.nll) != len(self.names) or (result.kld is None) == self.paired:
            raise ValueError(f"a window's results of {len(result.nll)} engines for statistics of {len(self.names)}")
        for kept, values in zip(self._nll, result.nll):
            kept.append(values)
        if self.paired:
            self._kld.append(result.kld)
            self._same_top += result.same_top
        self._window_sizes.append(result.nll[0].size)
        self._sum_nll_a += float(result.nll[0].sum())

    def running_ppl(self) -> float:
        """The reference engine's PPL so far (for progress display)."""
        return math.exp(self._sum_nll_a / self.n_tokens) if self.n_tokens else math.nan

    def result(self) -> Stats:
        if self.n_tokens < 2:
            raise ValueError("statistics need at least 2 scored tokens")
        nlls = [np.concatenate(chunks) for chunks in self._nll]
        engines = tuple(engine_stats(name, nll, self._window_sizes) for name, nll in zip(self.names, nlls))
        pair = self._pair(*nlls, np.concatenate(self._kld)) if self.paired else None
        return Stats(self.n_tokens, len(self._window_sizes), engines, pair, tuple(self._window_sizes),
                     self.kld_over if pair else KLD_FULL)

    def _pair(self, nll_a: np.ndarray, nll_b: np.ndarray, kld: np.ndarray) -> PairStats:
        n = nll_a.size
        d = nll_b - nll_a
        with np.errstate(invalid="ignore", divide="ignore"):  # constant NLLs have no correlation
            correlation = float(np.corrcoef(nll_a, nll_b)[0, 1])
        percentiles = dict(zip(map(str, PERCENTILES), map(float, np.percentile(kld, PERCENTILES))))
        p_top = self._same_top / n
        dp = np.exp(-nll_b) - np.exp(-nll_a)
        mse = mean_se(dp ** 2)
        rms = math.sqrt(mse.value)
        return PairStats(
            ln_ratio=mean_se(d),
            ln_ratio_window_se=window_se(d, self._window_sizes),
            nll_correlation=correlation,
            kld=mean_se(kld),
            kld_window_se=window_se(kld, self._window_sizes),
            kld_percentiles={"max": float(kld.max()), **percentiles, "min": float(kld.min())},
            same_top=Estimate(p_top, math.sqrt(p_top * (1 - p_top) / (n - 1))),
            dp=mean_se(dp),
            dp_rms=Estimate(rms, 0.5 / rms * mse.se if rms > 0 else 0.0),  # the delta method, as llama.cpp
        )
