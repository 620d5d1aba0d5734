"""Score a protocol's windows with one engine, or with a reference and a candidate engine on the same tokens:
one prefill per window per engine (never per-token decode), each window's scored rows streamed into the
statistics and then dropped, so memory does not grow with the number of windows."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from tqdm import tqdm

from harness.candidates import Forward
from harness.common.errors import HarnessError
from harness.perplexity.protocol import Protocol, Windows
from harness.perplexity.stats import Accumulator, Stats


@dataclasses.dataclass(frozen=True)
class Timing:
    engine: str
    seconds: float  # inside engine.logits
    prefill_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.prefill_tokens / self.seconds if self.seconds > 0 else float("inf")


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
        lines += [f"[{t.engine}] {t.seconds:.2f} s in prefill, {t.tokens_per_s:.0f} tokens/s" for t in self.timings]
        lines.append(f"wall {self.wall_s:.2f} s")
        return "\n".join(lines)


def score(engines: Sequence[Forward], windows: Windows, progress: bool = False) -> PerplexityResult:
    """Perplexity of `engines` (1, or 2 with the reference first) over `windows`."""
    return score_all([engines], windows, progress)[0]


def score_all(comparisons: Sequence[Sequence[Forward]], windows: Windows,
              progress: bool = False) -> list[PerplexityResult]:
    """`score` for several comparisons on the same windows, each engine run once per window however many
    comparisons it is in (the same object: e.g. a dtype's eager reference vs IREE, and vs eager fp32)."""
    engines = list({id(e): e for c in comparisons for e in c}.values())
    stats = [Accumulator([e.name for e in c]) for c in comparisons]
    seconds = {id(e): 0.0 for e in engines}
    prefill_tokens = 0
    start = time.perf_counter()
    with tqdm(total=len(windows), unit="window", desc="perplexity", disable=not progress) as bar:
        for window in windows:
            tokens = window.inputs[None]
            n = len(window.targets)
            rows = {}
            for engine in engines:
                t0 = time.perf_counter()
                logits = engine.logits(tokens, window.first)
                seconds[id(engine)] += time.perf_counter() - t0
                if logits.shape[:2] != (1, tokens.shape[1] - window.first):
                    raise HarnessError(f"engine {engine.name}: logits of shape {tuple(logits.shape)} for tokens "
                                       f"of shape {tuple(tokens.shape)} from position {window.first}")
                rows[id(engine)] = logits[0, :n]
            for acc, comparison in zip(stats, comparisons):
                if len({rows[id(e)].shape[-1] for e in comparison}) > 1:
                    raise HarnessError("engines disagree on the vocabulary size: " + ", ".join(
                        f"{e.name} {rows[id(e)].shape[-1]}" for e in comparison))
                acc.add(window.targets, [rows[id(e)] for e in comparison])
            prefill_tokens += tokens.shape[1]
            bar.set_postfix(ppl=f"{stats[0].running_ppl():.4f}", refresh=False)
            bar.update()
    wall_s = time.perf_counter() - start
    return [PerplexityResult(windows.protocol, acc.result(),
                             tuple(Timing(e.name, seconds[id(e)], prefill_tokens) for e in comparison), wall_s)
            for acc, comparison in zip(stats, comparisons)]
