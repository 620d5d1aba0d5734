"""Score a protocol's windows with one engine, or with a reference and a candidate engine on the same tokens:
one prefill per window per engine (never per-token decode), each window's scored rows reduced to per-token
results (stats.WindowResult) and then dropped, so memory grows only by those; optionally journaled window by
window (journal.py: resume, shards)."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch
from tqdm import tqdm

from harness.candidates import Forward
from harness.common.errors import HarnessError
from harness.perplexity.eager_cache import CachedWindow, EagerCache, kld_over, measure_against
from harness.perplexity.journal import Journal
from harness.perplexity.protocol import Protocol, Window, Windows
from harness.perplexity.stats import Accumulator, Stats, WindowResult


@dataclasses.dataclass(frozen=True)
class Timing:
    engine: str
    seconds: float  # inside engine.logits
    prefill_tokens: int  # 0: every window's results were kept (the journal, the eager cache)

    @property
    def tokens_per_s(self) -> float:
        return self.prefill_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    protocol: Protocol
    stats: Stats
    timings: tuple[Timing, ...]
    wall_s: float

    def to_record(self) -> dict:
        return {"protocol": self.protocol.to_dict(), "stats": self.stats.to_record(), "wall_s": self.wall_s,
                "timings": [{**dataclasses.asdict(t), "tokens_per_s": t.tokens_per_s} for t in self.timings]}

    def summary(self) -> str:
        p = self.protocol
        lines = [f"{p.dataset} ({p.text_form}, sha256 {p.text_sha256[:12]}), tokenizer {p.tokenizer}, {p.scheme} "
                 f"n_ctx={p.n_ctx} stride={p.stride} bos {p.bos}: {p.n_windows}/{p.total_windows} windows, "
                 f"{p.n_tokens} scored tokens ({p.scored})",
                 self.stats.format(), ""]
        lines += [f"[{t.engine}] {t.seconds:.2f} s in prefill, {t.tokens_per_s:.0f} tokens/s" if t.prefill_tokens
                  else f"[{t.engine}] not run: its results of every window were kept (journal or eager cache)"
                  for t in self.timings]
        lines.append(f"wall {self.wall_s:.2f} s")
        return "\n".join(lines)


def score(engines: Sequence[Forward], windows: Windows, progress: bool = False) -> PerplexityResult:
    """Perplexity of `engines` (1, or 2 with the reference first) over `windows`."""
    return score_all([engines], windows, progress)[0]


def score_all(comparisons: Sequence[Sequence[Forward]], windows: Windows, progress: bool = False,
              journal: Journal | None = None, shard: tuple[int, int] | None = None,
              eager_cache: EagerCache | None = None) -> list[PerplexityResult]:
    """`score` for several comparisons on the same windows, each engine run once per window however many
    comparisons it is in (the same object: e.g. a dtype's eager reference vs IREE, and vs eager fp32). With a
    `journal`, each window's results are written as it finishes and a window already there is not scored
    again; `shard` (i - 1, N): only the windows i - 1, i - 1 + N, ... (`--ppl-shard i/N`); `eager_cache`: the
    engines it covers are run only for windows it does not hold yet (eager_cache.py)."""
    engines = list({id(e): e for c in comparisons for e in c}.values())
    stats = [Accumulator([e.name for e in c], kld_over(eager_cache, c)) for c in comparisons]
    logits = _Logits(engines)
    start = time.perf_counter()
    mine, count = shard or (0, 1)
    with tqdm(total=len(range(mine, len(windows), count)), unit="window", desc="perplexity",
              disable=not progress) as bar:
        for index, window in enumerate(windows):
            if index % count != mine:
                continue
            results = journal.load(index) if journal else None
            if results is None:
                results = _measure(window, comparisons, stats, logits, eager_cache and eager_cache.window(index))
                if journal:
                    journal.save(index, results)
            for acc, result in zip(stats, results):
                acc.add_result(result)
            bar.set_postfix(ppl=f"{stats[0].running_ppl():.4f}", refresh=False)
            bar.update()
    wall_s = time.perf_counter() - start
    return [PerplexityResult(windows.protocol, acc.result(), tuple(logits.timing(e) for e in comparison), wall_s)
            for acc, comparison in zip(stats, comparisons)]


class _Logits:
    """Each engine's logits of the current window, computed at most once, and the time and tokens they took."""

    def __init__(self, engines: Sequence[Forward]):
        self.seconds = {id(e): 0.0 for e in engines}
        self.tokens = {id(e): 0 for e in engines}
        self.rows: dict[int, torch.Tensor] = {}

    def of(self, engine: Forward, window: Window) -> torch.Tensor:
        if id(engine) not in self.rows:
            tokens = window.inputs[None]
            t0 = time.perf_counter()
            self.rows[id(engine)] = _scored_rows(engine, tokens, window)
            self.seconds[id(engine)] += time.perf_counter() - t0
            self.tokens[id(engine)] += tokens.shape[1]
        return self.rows[id(engine)]

    def timing(self, engine: Forward) -> Timing:
        return Timing(engine.name, self.seconds[id(engine)], self.tokens[id(engine)])


def _measure(window: Window, comparisons, stats, logits: _Logits, cached: CachedWindow | None) -> list[WindowResult]:
    """One window's results per comparison, from its engines' logits or, for the engines the eager cache covers,
    from what it keeps of them."""
    results = []
    try:
        for acc, comparison in zip(stats, comparisons):
            def rows():
                return _same_vocabulary([logits.of(e, window) for e in comparison], comparison)
            if cached and cached.cache.keeps_result(comparison):
                results.append(cached.result(comparison, lambda: acc.measure(window.targets, rows())))
            elif cached and cached.cache.keeps_summary(comparison):
                reference, candidate = comparison
                summary = cached.summary(reference, window.targets, lambda: logits.of(reference, window))
                results.append(measure_against(window.targets, summary, logits.of(candidate, window)))
            else:
                results.append(acc.measure(window.targets, rows()))
    finally:
        if cached:
            cached.close()
        logits.rows.clear()  # a window's rows are dropped as soon as it is measured
    return results


def _scored_rows(engine: Forward, tokens, window):
    logits = engine.logits(tokens, window.first)
    if logits.shape[:2] != (1, tokens.shape[1] - window.first):
        raise HarnessError(f"engine {engine.name}: logits of shape {tuple(logits.shape)} for tokens "
                           f"of shape {tuple(tokens.shape)} from position {window.first}")
    return logits[0, :len(window.targets)]


def _same_vocabulary(rows: list, comparison: Sequence[Forward]) -> list:
    if len({r.shape[-1] for r in rows}) > 1:
        raise HarnessError("engines disagree on the vocabulary size: " + ", ".join(
            f"{e.name} {r.shape[-1]}" for e, r in zip(comparison, rows)))
    return rows
