"""What is judged, behind one small protocol, whatever it is: a program the harness exports and compiles
from its own reference (exported.py), eager itself (eager.py), and later a user's artifact.

A candidate says what it is (`describe`, for the report and the cache), which programs it offers and runs
them: `forward(seq_len, first)` maps tokens to logits (the end-to-end check, perplexity, lm-eval), and
`layers(seq_len)` runs the embedding, each decoder layer with its sub-blocks' outputs and the head on
inputs given from outside (the layer check and bisection). Its `stages` hold what building and running it
took (export, compile, run), and a check adds its own ("numerics").
"""

from __future__ import annotations

from typing import Protocol

import torch

from harness.common.stages import Stages


class Forward(Protocol):
    name: str

    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """[batch, seq] int64 token ids -> [batch, seq - first, vocab] logits of positions `first`..,
        float32 (float64 for an fp64 model)."""


class Layers(Protocol):
    n_layers: int

    def embed(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def layer(self, i: int, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Layer i's output and its sub-blocks' outputs (llama.model.SUB_BLOCKS) on input `h`."""

    def head(self, h: torch.Tensor) -> torch.Tensor: ...


class Candidate(Protocol):
    name: str
    programs: tuple[str, ...]  # of "forward", "layers"
    stages: Stages

    def describe(self) -> dict:
        """What it is, for the report and the cache."""

    def forward(self, seq_len: int, first: int = 0) -> Forward: ...

    def layers(self, seq_len: int) -> Layers: ...
