"""Score a protocol's windows with one engine, or with a reference and a candidate engine on the same tokens:
one prefill per window per engine (never per-token decode), each window's scored rows streamed into the
statistics and then dropped, so memory does not grow with the number of windows."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from tqdm import tqdm

from harness.engines import Engine
from harness.errors import HarnessError
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


def score(engines: Sequence[Engine], windows: Windows, progress: bool = False) -> PerplexityResult:
    """Perplexity of `engines` (1, or 2 with the reference first) over `windows`."""
    stats = Accumulator([e.name for e in engines])
    seconds = [0.0] * len(engines)
    prefill_tokens = 0
    start = time.perf_counter()
    with tqdm(total=len(windows), unit="window", desc="perplexity", disable=not progress) as bar:
        for window in windows:
            tokens = window.inputs[None]
            scored = slice(window.first, window.first + len(window.targets))
            rows = []
            for i, engine in enumerate(engines):
                t0 = time.perf_counter()
                logits = engine.logits(tokens)
                seconds[i] += time.perf_counter() - t0
                if logits.shape[:2] != tokens.shape:
                    raise HarnessError(f"engine {engine.name}: logits of shape {tuple(logits.shape)} for tokens "
                                       f"of shape {tuple(tokens.shape)}")
                if rows and logits.shape[-1] != rows[0].shape[-1]:
                    raise HarnessError(f"engine {engine.name}: vocabulary of {logits.shape[-1]}, but "
                                       f"{engines[0].name}'s is {rows[0].shape[-1]}")
                rows.append(logits[0, scored])
            stats.add(window.targets, rows)
            prefill_tokens += tokens.shape[1]
            bar.set_postfix(ppl=f"{stats.running_ppl():.4f}", refresh=False)
            bar.update()
    wall_s = time.perf_counter() - start
    timings = tuple(Timing(e.name, s, prefill_tokens) for e, s in zip(engines, seconds))
    return PerplexityResult(windows.protocol, stats.result(), timings, wall_s)
