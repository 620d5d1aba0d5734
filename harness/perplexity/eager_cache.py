"""Eager's per-window results kept between runs (`--eager-cache`), so that a nightly computes only the compiled side.

Eager's logits of a window depend on the model bytes, the dtype and variant, the window (its index in the
protocol's window sequence), the versions of python, torch, numpy, gguf (which dequantizes GGUF weights) and
transformers (the hf family's model code), torch's
thread count, the CPU's kernels and the harness code that builds and scores the reference (checks/perplexity.py
open_eager_cache): the cache directory is named by the digest of all of that (written out in its key.json), so a
change to any of it is a new directory.

What is kept, per window (~200 KB for 255 scored tokens at TOP_K = 64):
- for a comparison of eager engines only (eager fp32 against the dtype's eager: what the dtype costs), its results,
  exactly as scored;
- for eager as the reference of the compiled engine, a `Summary` of its log-probs: each token's NLL and top token,
  and its TOP_K most likely tokens' log-probs with the log of the rest's mass. Measured against a summary, dNLL,
  PPL, dp and same-top are bit for bit what the full rows give; the KLD is that of both distributions coarsened to
  eager's TOP_K tokens plus "the rest" (the data-processing inequality makes it a lower bound of the full KLD: about
  80 % of it on SmolLM2, eager fp32 against bf16 or against fp32 + 1e-5 noise: bench/kld_top_k.py). A run that
  fills the cache measures against the summary too, so a cold and a warm run give the same statistics. No gate
  reads the perplexity KLD: the paired and golden gates read NLLs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from harness.candidates import Forward
from harness.common.errors import HarnessError
from harness.perplexity.journal import WindowStore
from harness.perplexity.stats import KLD_FULL, WindowResult, kld_rows, log_probs, row_blocks, token_nll

TOP_K = 64
KLD_OVER = f"eager's top {TOP_K} tokens and the rest (--eager-cache: a lower bound of the full-vocabulary KLD)"


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a window's reference log-probs are kept as: per scored token its NLL, its top token, the TOP_K most
    likely tokens' ids and log-probs, and the log of the other tokens' total probability."""

    vocab: int
    nll: np.ndarray  # [n] fp64
    top: np.ndarray  # [n] int64: argmax
    ids: np.ndarray  # [n, k] int32
    logp: np.ndarray  # [n, k] fp64
    rest: np.ndarray  # [n] fp64

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}{f.name}": np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "Summary":
        values = {f.name: arrays[f"{prefix}{f.name}"] for f in dataclasses.fields(cls)}
        return cls(**{**values, "vocab": int(values["vocab"])})


def _rest(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability outside `ids`, per row."""
    return logp.scatter(-1, ids, -torch.inf).logsumexp(-1)


def summarize(targets: torch.Tensor, logits: torch.Tensor, k: int = TOP_K) -> Summary:
    """The summary of a window's reference rows, `logits` [n, vocab] predicting `targets` [n]."""
    n, vocab = logits.shape
    k = min(k, vocab)
    parts = {name: [] for name in ("nll", "top", "ids", "logp", "rest")}
    for block in row_blocks(n, vocab):
        logp = log_probs(logits[block])
        top = logp.topk(k, dim=-1)
        parts["nll"].append(token_nll(logp, targets[block]))
        for name, value in (("top", logp.argmax(-1)), ("ids", top.indices.int()), ("logp", top.values),
                            ("rest", _rest(logp, top.indices))):
            parts[name].append(value.numpy())
    return Summary(vocab, **{name: np.concatenate(values) for name, values in parts.items()})


def measure_against(targets: torch.Tensor, reference: Summary, logits: torch.Tensor) -> WindowResult:
    """A candidate's rows against the reference's summary (what Accumulator.measure gives from both rows, the KLD
    coarsened to the summary's tokens and the rest)."""
    n, vocab = logits.shape
    if vocab != reference.vocab or n != reference.nll.size:
        raise HarnessError(f"a candidate's logits of shape {tuple(logits.shape)} against an eager summary of "
                           f"{reference.nll.size} tokens over a vocabulary of {reference.vocab}")
    nll, kld, same_top = np.empty(n), np.empty(n), 0
    for block in row_blocks(n, vocab):
        logp = log_probs(logits[block])
        ids = torch.from_numpy(reference.ids[block]).long()
        nll[block] = token_nll(logp, targets[block])
        same_top += int((torch.from_numpy(reference.top[block]) == logp.argmax(-1)).sum())
        a = torch.cat([torch.from_numpy(reference.logp[block]), torch.from_numpy(reference.rest[block])[:, None]], -1)
        b = torch.cat([logp.gather(-1, ids), _rest(logp, ids)[:, None]], -1)
        kld[block] = kld_rows(a, b).numpy()
    return WindowResult((reference.nll, nll), kld, same_top)


def kld_over(cache: "EagerCache | None", comparison: Sequence[Forward]) -> str:
    """What the comparison's KLD sums over, with this cache (or none)."""
    return KLD_OVER if cache and cache.keeps_summary(comparison) else KLD_FULL


class EagerCache:
    """The kept results of the eager engines `engines` (which the cache's key describes) for one window sequence."""

    def __init__(self, store: WindowStore, engines: Sequence[Forward]):
        if len({e.name for e in engines}) < len(engines):
            raise ValueError(f"eager engines of one name would share kept results: {[e.name for e in engines]}")
        self.store, self._names = store, {id(e): e.name for e in engines}
        self.hits = 0  # windows whose eager side was all kept
        self.misses = 0  # windows whose eager side was computed (and kept)

    def covers(self, engine: Forward) -> bool:
        return id(engine) in self._names

    def keeps_result(self, comparison: Sequence[Forward]) -> bool:
        """Whether the comparison's results are kept whole (its engines are all eager)."""
        return all(map(self.covers, comparison))

    def keeps_summary(self, comparison: Sequence[Forward]) -> bool:
        """Whether the comparison's reference is kept as a summary (the candidate is computed anew)."""
        return len(comparison) == 2 and self.covers(comparison[0]) and not self.covers(comparison[1])

    def name(self, engines: Sequence[Forward]) -> str:
        return ".".join(self._names[id(e)] for e in engines)

    def window(self, index: int) -> "CachedWindow":
        return CachedWindow(self, index, self.store.arrays(index) or {})


class CachedWindow:
    """One window's kept eager results, read once; what is computed anew is added and written back by `close`."""

    def __init__(self, cache: EagerCache, index: int, arrays: dict):
        self.cache, self.index, self.arrays, self.added, self.read = cache, index, arrays, {}, False

    def _prefix(self, kind: str, engines: Sequence[Forward]) -> str:
        return f"{kind}.{self.cache.name(engines)}."

    def result(self, comparison: Sequence[Forward], compute) -> WindowResult:
        """The comparison's result (eager engines only), kept or `compute()`d and kept."""
        prefix, self.read = self._prefix("result", comparison), True
        if f"{prefix}engines" in self.arrays:
            return WindowResult.from_arrays(self.arrays, prefix)
        result = compute()
        self.added |= result.to_arrays(prefix)
        return result

    def summary(self, engine: Forward, targets: torch.Tensor, compute_logits) -> Summary:
        """`engine`'s summary of this window, kept or computed from `compute_logits()` and kept."""
        prefix, self.read = self._prefix("summary", [engine]), True
        if f"{prefix}vocab" in self.arrays:
            return Summary.from_arrays(self.arrays, prefix)
        summary = summarize(targets, compute_logits())
        self.added |= summary.to_arrays(prefix)
        return summary

    def close(self) -> None:
        """Keep what was computed (also when the candidate failed after eager's side was done)."""
        if self.added:
            self.cache.misses += 1
            self.cache.store.write(self.index, self.arrays | self.added)
        elif self.read:
            self.cache.hits += 1
