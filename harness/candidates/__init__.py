"""What is judged, behind one small protocol, whatever it is: a program the harness exports and compiles
from its own reference (exported.py), eager itself (eager.py), and a user's sharktank export (artifact.py).

A candidate says what it is (`describe`, for the report and the cache), which programs it offers and runs
them: `forward(seq_len, first)` maps tokens to logits (the end-to-end check, perplexity, lm-eval), and
`layers(seq_len)` runs the embedding, each decoder layer with its sub-blocks' outputs and the head on
inputs given from outside (the layer check and bisection), and `serving(shape)` the prefill_bs{N} /
decode_bs{N} entry points over a paged KV cache (the serving checks). Its `stages` hold what building and running it
took (export, compile, run), and a check adds its own ("numerics").
"""

from __future__ import annotations

from typing import Protocol

import torch

from harness.common.stages import Stages
from harness.reference.llama.paged import ServingShape


class Forward(Protocol):
    name: str

    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """[batch, seq] int64 token ids -> [batch, seq - first, vocab] logits of positions `first`..,
        float32 (float64 for an fp64 model)."""


class Layers(Protocol):
    n_layers: int

    def embed(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def layer(self, i: int, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Layer i's output and its sub-blocks' outputs (reference/families.py sub_blocks) on input `h`."""

    def head(self, h: torch.Tensor) -> torch.Tensor: ...


class Serving(Protocol):
    """sharktank's serving convention (reference/llama/paged.py): every argument already at the program's
    static shape (`shape`); the cache lives with the program and each call updates it in place."""

    name: str
    shape: ServingShape
    flags: list[str] | None  # the compile flags of a compiled program

    def prefill(self, tokens: torch.Tensor, start_positions: torch.Tensor, seq_lens: torch.Tensor,
                page_table: torch.Tensor) -> torch.Tensor:
        """tokens [N, prefill_len] -> logits [N, prefill_len, vocab], float32 (float64 for an fp64 model)."""

    def decode(self, tokens: torch.Tensor, seq_lens: torch.Tensor, start_positions: torch.Tensor,
               page_table: torch.Tensor) -> torch.Tensor:
        """tokens [N, 1] -> logits [N, 1, vocab]."""

    def read_cache(self) -> torch.Tensor:
        """A copy of the cache [n_pages, page_elems]."""

    def write_cache(self, cache: torch.Tensor) -> None: ...


class Candidate(Protocol):
    name: str
    programs: tuple[str, ...]  # of "forward", "layers", "serving"
    stages: Stages

    def describe(self) -> dict:
        """What it is, for the report and the cache."""

    def unsupported(self, check: str) -> str | None:
        """Why it cannot take `check` ("layers", "batching", ...), or None: the check is then a recorded skip."""

    def forward(self, seq_len: int, first: int = 0) -> Forward: ...

    def layers(self, seq_len: int) -> Layers: ...

    def serving(self, shape: ServingShape) -> Serving: ...
