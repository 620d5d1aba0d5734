"""Layer by layer: the compiled embedding, each decoder layer and the head against eager, in two modes,
and bisection to the first diverging layer and the sub-block inside it.

- isolated: every compiled part gets the eager chain's input, so its error is its own;
- propagated: the compiled chain runs on its own outputs, so errors accumulate as in deployment.

Each part is judged by the same tolerance policy as the end-to-end check: its eager same-dtype output
and its compiled output against the fp64 oracle given the same input (isolated) or the oracle's own
chain (propagated). One compile ("layers" program) serves both modes and the bisection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from harness.engines import EagerEngine, as_result
from harness.iree.runtime import CompiledModule
from harness.model.llama import SUB_BLOCK_CONSUMERS, SUB_BLOCKS
from harness.numerics.tolerance import Verdict, judge
from harness.pipeline import Pipeline


class EagerParts:
    """Runs the parts of an eager engine's model (emulated precision included)."""

    def __init__(self, engine: EagerEngine):
        self.model, self.engine = engine.model, engine
        self.dtype = self.model.embed_tokens.weight.dtype

    @torch.no_grad()
    def embed(self, tokens):
        with self.engine.precision():
            return as_result(self.model.embed(tokens))

    @torch.no_grad()
    def layer(self, i: int, h) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps = {}
        with self.engine.precision():
            out = self.model.layers[i](h.to(self.dtype), *self.model.rope(h.shape[1]), taps)
        return as_result(out), {k: as_result(v) for k, v in taps.items()}

    @torch.no_grad()
    def head(self, h):
        with self.engine.precision():
            return as_result(self.model.head(h.to(self.dtype)))


class CompiledParts:
    """Calls the entry points of a compiled "layers" program, counting invocations."""

    def __init__(self, module: CompiledModule):
        self.module, self.invocations = module, 0

    def _call(self, function: str, x: torch.Tensor) -> list[torch.Tensor]:
        self.invocations += 1
        return [torch.from_numpy(o) for o in self.module(function, x.numpy())]

    def embed(self, tokens):
        return self._call("embed", tokens)[0]

    def layer(self, i: int, h):
        out, *taps = self._call(f"layer_{i}", h.float())
        return out, dict(zip(SUB_BLOCKS, taps))

    def head(self, h):
        return self._call("head", h.float())[0]


@dataclasses.dataclass
class Part:
    name: str  # embed, layer_<i>, head
    mode: str  # isolated | propagated
    verdict: Verdict

    def row(self) -> dict:
        v = self.verdict
        return {"part": self.name, "mode": self.mode, "passed": v.passed, "ratio": v.ratio,
                "rmse": v.errors.get("rmse"), "rmse_budget": v.budgets.get("rmse"),
                "max_abs": v.errors.get("max_abs"), "max_abs_budget": v.budgets.get("max_abs")}


class LayerCheck:
    """The three executions of one configuration, split into parts, and the eager chain they share."""

    def __init__(self, p: Pipeline):
        self.p = p
        self.compiled = CompiledParts(p.compiled("layers"))
        self.eager, self.oracle = EagerParts(p.eager), EagerParts(p.oracle)
        self.n_layers = p.weights.config.n_layers
        tokens = p.tokens
        self.chain = [self.eager.embed(tokens)]  # eager input of layer i is chain[i]
        for i in range(self.n_layers):
            self.chain.append(self.eager.layer(i, self.chain[-1])[0])
        self.eager_logits = self.eager.head(self.chain[-1])

    def _judge(self, result, eager, oracle) -> Verdict:
        return judge(result, eager, oracle, self.p.dtype)

    def isolated(self, i: int) -> Part:
        """Layer i (-1: embedding, n_layers: head) on the eager input."""
        if i < 0:
            tokens = self.p.tokens
            return Part("embed", "isolated", self._judge(self.compiled.embed(tokens), self.chain[0],
                                                         self.oracle.embed(tokens)))
        if i == self.n_layers:
            h = self.chain[-1]
            return Part("head", "isolated", self._judge(self.compiled.head(h), self.eager_logits,
                                                        self.oracle.head(h.double())))
        h = self.chain[i]
        return Part(f"layer_{i}", "isolated", self._judge(self.compiled.layer(i, h)[0], self.chain[i + 1],
                                                          self.oracle.layer(i, h.double())[0]))

    def propagated(self) -> list[Part]:
        tokens = self.p.tokens
        c, o = self.compiled.embed(tokens), self.oracle.embed(tokens)
        parts = [Part("embed", "propagated", self._judge(c, self.chain[0], o))]
        for i in range(self.n_layers):
            c, o = self.compiled.layer(i, c)[0], self.oracle.layer(i, o)[0]
            parts.append(Part(f"layer_{i}", "propagated", self._judge(c, self.chain[i + 1], o)))
        parts.append(Part("head", "propagated", self._judge(self.compiled.head(c), self.eager_logits,
                                                            self.oracle.head(o))))
        return parts

    def sub_blocks(self, i: int) -> list[Part]:
        """Every sub-block of layer i on the eager input, in dataflow order."""
        h = self.chain[i]
        c_taps, e_taps, o_taps = (self.compiled.layer(i, h)[1], self.eager.layer(i, h)[1],
                                  self.oracle.layer(i, h.double())[1])
        return [Part(name, "isolated", self._judge(c_taps[name], e_taps[name], o_taps[name]))
                for name in SUB_BLOCKS]


def compare(p: Pipeline) -> dict:
    """Both modes over every part; returns the record."""
    start = time.perf_counter()
    check = LayerCheck(p)
    parts = [check.isolated(i) for i in range(-1, check.n_layers + 1)] + check.propagated()
    failed = [part for part in parts if not part.verdict.passed]
    return p.record("layers", parts=[part.row() for part in parts],
                    first_failure={m: next((f.name for f in failed if f.mode == m), None)
                                   for m in ("isolated", "propagated")},
                    passed=not failed, invocations=check.compiled.invocations,
                    timings={"wall_s": time.perf_counter() - start})


def first_propagating_failure(sub_blocks: list[Part]) -> Part | None:
    """The first sub-block over budget whose excess reaches a consumer (or is the layer's output).

    An excess that the next op absorbs did not make the layer fail (IREE's fp32 RoPE carries ~4x eager's
    error on clean toy models while everything downstream is fine), and must not take the blame for a
    fault further on."""
    failed = {s.name for s in sub_blocks if not s.verdict.passed}
    return next((s for s in sub_blocks if s.name in failed and
                 (not SUB_BLOCK_CONSUMERS[s.name] or failed.intersection(SUB_BLOCK_CONSUMERS[s.name]))), None)


def bisect(p: Pipeline, artifacts: Path | None = None) -> dict:
    """The first part whose isolated error exceeds its budget and, for a decoder layer, the first
    sub-block inside it. Writes the failing layer's eager input next to the record for the reproducer."""
    start = time.perf_counter()
    check = LayerCheck(p)
    compile_cached = p.stages["compile:layers"].cached
    first, sub_blocks, reproducer = None, [], None
    for i in range(-1, check.n_layers + 1):
        part = check.isolated(i)
        if not part.verdict.passed:
            first = part
            break
    if first is not None and first.name.startswith("layer_"):
        i = int(first.name.removeprefix("layer_"))
        sub_blocks = check.sub_blocks(i)
        if artifacts is not None:
            artifacts.mkdir(parents=True, exist_ok=True)
            np.save(artifacts / f"{first.name}_input.npy", check.chain[i].numpy())
            reproducer = check.compiled.module.reproducer(first.name, [artifacts / f"{first.name}_input.npy"])
    culprit = first_propagating_failure(sub_blocks)
    # Errors accumulate without any part failing on its own: name where the chain first fails.
    propagated = None if first else next((q.name for q in check.propagated() if not q.verdict.passed), None)
    return p.record(
        "bisect", diverged=first is not None, layer=first.name if first else None,
        sub_block=culprit.name if culprit else None, layer_row=first.row() if first else None,
        sub_blocks=[s.row() for s in sub_blocks], propagated_first_failure=propagated,
        compiles=0 if compile_cached else 1, invocations=check.compiled.invocations,
        reproducer=reproducer, timings={"wall_s": time.perf_counter() - start})


def format_bisect(rec: dict) -> str:
    """The short table bisection prints."""
    from tabulate import tabulate

    head = (f"{rec['config']}: " + (f"first diverging part {rec['layer']}, sub-block {rec['sub_block']}"
                                    if rec["diverged"] else "no part diverges in isolation"
                                    + (f"; propagated error first exceeds its budget at {rec['propagated_first_failure']}"
                                       if rec["propagated_first_failure"] else "")))
    rows = ([rec["layer_row"]] if rec["layer_row"] else []) + rec["sub_blocks"]
    table = tabulate([[r["part"], "ok" if r["passed"] else "FAIL", f"{r['ratio']:.3g}", f"{r['rmse']:.3g}",
                       f"{r['rmse_budget']:.3g}", f"{r['max_abs']:.3g}", f"{r['max_abs_budget']:.3g}"]
                      for r in rows],
                     headers=["part", "verdict", "error/budget", "rmse", "budget", "max abs", "budget"])
    tail = (f"compiles: {rec['compiles']}, invocations: {rec['invocations']}, "
            f"wall: {rec['timings']['wall_s']:.1f}s")
    return "\n".join([head, table, tail] + ([f"reproducer: {rec['reproducer']}"] if rec["reproducer"] else []))
