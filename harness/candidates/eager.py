"""Eager PyTorch as a candidate, so that every check, perplexity and lm-eval take it like a compiled program
(e.g. eager native bf16 judged against the emulated reference, or lm-eval on the reference itself)."""

from __future__ import annotations

from harness.common.stages import Stages
from harness.reference.eager import EagerModel, EagerParts, EagerServing
from harness.reference.llama.paged import ServingShape


class EagerCandidate:
    programs = ("forward", "layers", "serving")

    def __init__(self, model: EagerModel):
        self.model, self.name, self.stages = model, model.name, Stages()

    def describe(self) -> dict:
        return {"candidate": "eager", "name": self.name,
                "emulated": str(self.model.emulated).removeprefix("torch.") if self.model.emulated else None}

    def unsupported(self, check: str) -> str | None:
        return None

    def forward(self, seq_len: int, first: int = 0) -> EagerModel:
        return self.model  # eager takes any length

    def layers(self, seq_len: int) -> EagerParts:
        return self.model.parts()

    def serving(self, shape: ServingShape) -> EagerServing:
        return self.model.serving(shape)
