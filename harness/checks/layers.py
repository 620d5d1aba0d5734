"""Layer by layer: the candidate's embedding, each decoder layer and the head against eager, in two modes
(bisect.py finds the first diverging layer and the sub-block inside it with the same parts).

- isolated: every compiled part gets the eager chain's input, so its error is its own;
- propagated: the compiled chain runs on its own outputs, so errors accumulate as in deployment.

Each part is judged by the same tolerance policy as the end-to-end check: its eager same-dtype output
and its compiled output against the fp64 oracle given the same input (isolated) or the oracle's own
chain (propagated). A W8A8 part, as its end-to-end check (transforms/w8a8.py), against eager under
rounding-sized noise at its quantizers (the same input, or the noisy eager chain) plus the fp32 rounding
budget of the same part unquantized. One compile ("layers" program) serves both modes and the bisection.
"""

from __future__ import annotations

import dataclasses
import time

from harness.candidates import Candidate, Layers
from harness.checks import Inputs
from harness.numerics.tolerance import Policy, Verdict
from harness.reference.eager import Reference
from harness.reference.families import sub_blocks
from harness.transforms import w8a8


@dataclasses.dataclass
class Part:
    name: str  # embed, layer_<i>, head
    mode: str  # isolated | propagated
    verdict: Verdict

    def row(self) -> dict:
        v = self.verdict
        return {"part": self.name, "mode": self.mode, "passed": v.passed, "ratio": v.ratio, "measure": v.measure,
                "sub_block": v.sub_block, "reason": v.reason,
                "rmse": v.errors.get("rmse"), "rmse_budget": v.budgets.get("rmse"),
                "max_abs": v.errors.get("max_abs"), "max_abs_budget": v.budgets.get("max_abs")}


class LayerCheck:
    """The candidate's, eager's and the oracle's parts of one configuration, and the eager chain they share."""

    def __init__(self, candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy):
        self.tokens, self.policy = inputs.tokens, policy
        self.compiled: Layers = candidate.layers(self.tokens.shape[1])
        self.eager, self.oracle = reference.parts("eager"), reference.parts("oracle")
        self.n_layers = self.eager.n_layers
        self.sub_block_names = sub_blocks(reference.weights.config)
        self.chain = [self.eager.embed(self.tokens)]  # eager input of layer i is chain[i]
        for i in range(self.n_layers):
            self.chain.append(self.eager.layer(i, self.chain[-1])[0])
        self.eager_logits = self.eager.head(self.chain[-1])
        if policy.noisy_reference:  # W8A8: the same parts unquantized, fp32 and fp64, for the rounding budgets
            self.fp32, self.fp64 = reference.fp32.parts(), reference.fp32_oracle.parts()

    def _judge(self, result, eager, oracle, isolated: bool = True) -> Verdict:
        return self.policy.judge(result, eager, oracle, isolated=isolated)

    def _judge_w8a8(self, results: dict, exact: dict, outputs) -> dict[str, Verdict]:
        """W8A8 (transforms/w8a8.py): each of `results` against eager's (`exact`), within eager's own distance under
        noise at its quantizers (the farthest of the seeds) plus the fp32 rounding budget of the same output
        unquantized. `outputs(parts)`: the outputs (keyed as `results`) that `parts` compute from the same input."""
        noisy = w8a8.noisy_runs(self.eager.model, lambda: outputs(self.eager))
        fp32, fp64 = outputs(self.fp32), outputs(self.fp64)  # fp64 parts cast their input
        return {k: self.policy.judge_noisy(results[k], exact[k], [run[k] for run in noisy], fp32[k], fp64[k])
                for k in results}

    def _part(self, i: int):
        """Part i (-1: embedding, n_layers: head): its name, eager input (None: the tokens), eager output, and
        `run(parts, h)` -> (output, sub-block outputs)."""
        if i < 0:
            return "embed", None, self.chain[0], lambda parts, _: (parts.embed(self.tokens), {})
        if i == self.n_layers:
            return "head", self.chain[-1], self.eager_logits, lambda parts, h: (parts.head(h), {})
        return f"layer_{i}", self.chain[i], self.chain[i + 1], lambda parts, h: parts.layer(i, h)

    def isolated(self, i: int) -> Part:
        """Layer i (-1: embedding, n_layers: head) on the eager input."""
        name, h, exact, run = self._part(i)
        c, c_taps = run(self.compiled, h)
        if self.policy.noisy_reference:
            verdict = self._judge_w8a8({name: c}, {name: exact}, lambda parts: {name: run(parts, h)[0]})[name]
            return Part(name, "isolated", verdict)
        o, o_taps = run(self.oracle, None if h is None else h.double())
        verdict = self._judge(c, exact, o)
        if self.policy.structured and c_taps:  # every sub-block's output too, where the error lives
            e_taps = run(self.eager, h)[1]
            for sub in self.sub_block_names:
                tap = self.policy.judge_structured(c_taps[sub], e_taps[sub], o_taps[sub])
                if tap.ratio > verdict.ratio:
                    verdict = dataclasses.replace(tap, sub_block=sub, reason=f"{sub}: {tap.reason}")
        return Part(name, "isolated", verdict)

    def propagated(self) -> list[Part]:
        if self.policy.noisy_reference:  # the compiled chain against eager's, within eager chains under noise
            names = ["embed", *(f"layer_{i}" for i in range(self.n_layers)), "head"]
            verdicts = self._judge_w8a8(dict(zip(names, self._chain(self.compiled))),
                                        dict(zip(names, self.chain + [self.eager_logits])),
                                        lambda parts: dict(zip(names, self._chain(parts))))
            return [Part(name, "propagated", verdicts[name]) for name in names]
        c, o = self.compiled.embed(self.tokens), self.oracle.embed(self.tokens)
        parts = [Part("embed", "propagated", self._judge(c, self.chain[0], o, isolated=False))]
        for i in range(self.n_layers):
            c, o = self.compiled.layer(i, c)[0], self.oracle.layer(i, o)[0]
            parts.append(Part(f"layer_{i}", "propagated", self._judge(c, self.chain[i + 1], o, isolated=False)))
        parts.append(Part("head", "propagated", self._judge(self.compiled.head(c), self.eager_logits,
                                                            self.oracle.head(o), isolated=False)))
        return parts

    def _chain(self, parts) -> list:
        """`parts`' outputs from the tokens on, each part on the previous one's output: embedding, layers, head."""
        outs = [parts.embed(self.tokens)]
        for i in range(parts.n_layers):
            outs.append(parts.layer(i, outs[-1])[0])
        return outs + [parts.head(outs[-1])]

    def sub_blocks(self, i: int) -> list[Part]:
        """Every sub-block of layer i on the eager input, in dataflow order."""
        h = self.chain[i]
        c_taps, e_taps = self.compiled.layer(i, h)[1], self.eager.layer(i, h)[1]
        if self.policy.noisy_reference:
            verdicts = self._judge_w8a8({n: c_taps[n] for n in self.sub_block_names}, e_taps,
                                        lambda parts: parts.layer(i, h)[1])
            return [Part(name, "isolated", verdicts[name]) for name in self.sub_block_names]
        o_taps = self.oracle.layer(i, h.double())[1]
        return [Part(name, "isolated", self._judge(c_taps[name], e_taps[name], o_taps[name]))
                for name in self.sub_block_names]

    @property
    def invocations(self) -> int:
        """Calls of the candidate's programs so far (0 for a candidate that does not count them)."""
        return getattr(self.compiled, "invocations", 0)


def compare(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy) -> dict:
    """Both modes over every part: the record's kind and fields."""
    start = time.perf_counter()
    check = LayerCheck(candidate, reference, inputs, policy)
    parts = [check.isolated(i) for i in range(-1, check.n_layers + 1)] + check.propagated()
    failed = [part for part in parts if not part.verdict.passed]
    return dict(kind="layers", parts=[part.row() for part in parts],
                first_failure={m: next((f.name for f in failed if f.mode == m), None)
                               for m in ("isolated", "propagated")},
                passed=not failed, invocations=check.invocations, timings={"wall_s": time.perf_counter() - start})
