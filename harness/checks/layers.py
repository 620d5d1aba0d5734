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
from harness.numerics.tolerance import Policy, Verdict, rounding_budget
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

    def _judge(self, result, eager, oracle, isolated: bool = True, part=None, h=None) -> Verdict:
        """`part(parts, h)`: the part's output computed by `parts` on its input `h` (None for the embedding, which
        takes the tokens), which a W8A8 judgement runs again under noise, and unquantized in fp32 and fp64."""
        if not self.policy.noisy_reference:
            return self.policy.judge(result, eager, oracle, isolated=isolated)
        noisy = w8a8.noisy_reference(self.eager.model, lambda: part(self.eager, h), eager)
        rounding = rounding_budget(part(self.fp32, h), part(self.fp64, None if h is None else h.double()))
        return self.policy.judge(result, noisy, eager, "noisy eager", oracle_name="eager", rounding=rounding)

    def isolated(self, i: int) -> Part:
        """Layer i (-1: embedding, n_layers: head) on the eager input."""
        if i < 0:
            return Part("embed", "isolated", self._judge(self.compiled.embed(self.tokens), self.chain[0],
                                                         self.oracle.embed(self.tokens),
                                                         part=lambda parts, _: parts.embed(self.tokens)))
        if i == self.n_layers:
            h = self.chain[-1]
            return Part("head", "isolated", self._judge(self.compiled.head(h), self.eager_logits,
                                                        self.oracle.head(h.double()),
                                                        part=lambda parts, x: parts.head(x), h=h))
        h = self.chain[i]
        (c, c_taps), (o, o_taps) = self.compiled.layer(i, h), self.oracle.layer(i, h.double())
        verdict = self._judge(c, self.chain[i + 1], o, part=lambda parts, x: parts.layer(i, x)[0], h=h)
        if self.policy.structured:  # every sub-block's output too, where the error lives (Policy.structured)
            e_taps = self.eager.layer(i, h)[1]
            for name in self.sub_block_names:
                tap = self.policy.judge_structured(c_taps[name], e_taps[name], o_taps[name])
                if tap.ratio > verdict.ratio:
                    verdict = dataclasses.replace(tap, sub_block=name, reason=f"{name}: {tap.reason}")
        return Part(f"layer_{i}", "isolated", verdict)

    def propagated(self) -> list[Part]:
        if self.policy.noisy_reference:
            return self._propagated_w8a8()
        c, o = self.compiled.embed(self.tokens), self.oracle.embed(self.tokens)
        parts = [Part("embed", "propagated", self._judge(c, self.chain[0], o, isolated=False))]
        for i in range(self.n_layers):
            c, o = self.compiled.layer(i, c)[0], self.oracle.layer(i, o)[0]
            parts.append(Part(f"layer_{i}", "propagated", self._judge(c, self.chain[i + 1], o, isolated=False)))
        parts.append(Part("head", "propagated", self._judge(self.compiled.head(c), self.eager_logits,
                                                            self.oracle.head(o), isolated=False)))
        return parts

    @staticmethod
    def _chain(parts, tokens) -> list:
        """`parts`' outputs from the tokens on: embedding, every layer, head."""
        outs = [parts.embed(tokens)]
        for i in range(parts.n_layers):
            outs.append(parts.layer(i, outs[-1])[0])
        return outs + [parts.head(outs[-1])]

    def _propagated_w8a8(self) -> list[Part]:
        """The compiled chain against the eager chain, each part's budget from eager chains under noise at the
        quantizers (the farthest of their seeds at that part) and the unquantized fp32 chain's rounding."""
        exact = self.chain + [self.eager_logits]
        noisy = []
        for seed in range(w8a8.NOISE_SEEDS):
            with w8a8.activation_noise(self.eager.model, seed=seed):
                noisy.append(self._chain(self.eager, self.tokens))
        fp32, fp64 = self._chain(self.fp32, self.tokens), self._chain(self.fp64, self.tokens)
        compiled = self._chain(self.compiled, self.tokens)
        names = ["embed", *(f"layer_{i}" for i in range(self.n_layers)), "head"]
        return [Part(name, "propagated", self.policy.judge(
            compiled[k], w8a8.farthest([run[k] for run in noisy], exact[k]), exact[k], "noisy eager",
            oracle_name="eager", rounding=rounding_budget(fp32[k], fp64[k]))) for k, name in enumerate(names)]

    def sub_blocks(self, i: int) -> list[Part]:
        """Every sub-block of layer i on the eager input, in dataflow order."""
        h = self.chain[i]
        c_taps, e_taps, o_taps = (self.compiled.layer(i, h)[1], self.eager.layer(i, h)[1],
                                  self.oracle.layer(i, h.double())[1])
        return [Part(name, "isolated", self._judge(c_taps[name], e_taps[name], o_taps[name],
                                                   part=lambda parts, x, n=name: parts.layer(i, x)[1][n], h=h))
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
