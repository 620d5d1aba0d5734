"""Engines: one interface for eager and compiled execution. Give an engine token ids, get fp32 logits."""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch

from harness.errors import HarnessError
from harness.model.precision import emulate


class Engine(Protocol):
    name: str

    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """[batch, seq] int64 token ids -> [batch, seq - first, vocab] logits of positions `first`..,
        float32 (float64 for an fp64 oracle)."""


class EagerEngine:
    """Eager PyTorch. `emulated` set to a dtype runs the (fp32) model under `emulate(dtype)`."""

    def __init__(self, model: torch.nn.Module, name: str = "eager", emulated: torch.dtype | None = None):
        self.model, self.name, self.emulated = model.eval(), name, emulated

    def precision(self):
        """The context the model runs in: emulated rounding, or nothing for a native dtype."""
        return emulate(self.emulated) if self.emulated is not None else contextlib.nullcontext()

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        with self.precision():
            return as_result(self.model(tokens, first))


def as_result(t: torch.Tensor) -> torch.Tensor:
    """An eager result as compared: fp32 (exact for fp16/bf16 values), fp64 kept for the oracle."""
    return t if t.dtype == torch.float64 else t.float()


class IreeEngine:
    """A compiled module's entry point that maps tokens to the logits of positions `first`.. (the
    program was compiled for that `first`: it can only drop further leading positions)."""

    def __init__(self, module, function: str = "forward", name: str = "iree", first: int = 0):
        self.module, self.function, self.name, self.first = module, function, name, first

    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        if first < self.first:
            raise HarnessError(f"engine {self.name}: asked for logits from position {first}, but its program "
                               f"returns them from position {self.first}")
        (out,) = self.module(self.function, tokens.numpy())
        return torch.from_numpy(out)[:, first - self.first:]
