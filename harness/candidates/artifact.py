"""A user's sharktank export as the candidate (artifacts/sharktank.py reads and checks it): its vmfb as given, or
its MLIR compiled for the target by the compiler being judged (--iree-compile, cached by that binary's hash),
run with its IRPA. It offers sharktank's serving entry points and, through prefill, a forward pass (the
end-to-end check and perplexity); it has no per-layer program.
"""

from __future__ import annotations

from functools import cached_property

import torch

from harness.artifacts.sharktank import Artifact
from harness.candidates.exported import CompiledServing
from harness.common.errors import HarnessError
from harness.common.stages import Stages
from harness.iree.compiler import compile_module
from harness.iree.runtime import CompiledModule
from harness.iree.targets import Target
from harness.reference.llama.config import LlamaConfig
from harness.reference.llama.paged import ServingShape


class ArtifactServing(CompiledServing):
    """sharktank's prefill_bs{N} takes a whole number of pages of tokens: with --has-prefill-position any number
    (a chunk), without it exactly the page table's width (torch.export ties the two dimensions). Prefill pads the
    tokens to that and returns the logits of the tokens given. Padding past the page table is written past it:
    out of bounds, a segfault on CPU, so the chunk's width stays the least whole number of pages."""

    def __init__(self, module: CompiledModule, shape: ServingShape, config: LlamaConfig, dtype: torch.dtype,
                 artifact: Artifact):
        self.export = artifact.export
        super().__init__(module, shape, config, dtype)

    def split(self, cache: torch.Tensor) -> list[torch.Tensor]:
        """Pipeline-parallel: device d's cache holds its consecutive layers' part of every page."""
        pages = cache.view(cache.shape[0], self.config.n_layers, -1)
        return [part.reshape(cache.shape[0], -1) for part in pages.split(self.export.layer_groups, dim=1)]

    def join(self, shards: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(shards, dim=1)

    def prefill(self, tokens, start_positions, seq_lens, page_table):
        n, stride = tokens.shape[0], self.export.stride
        if n not in self.export.prefill_batch_sizes:
            raise HarnessError(f"the export has no prefill_bs{n} "
                               f"(prefill batch sizes {list(self.export.prefill_batch_sizes)})")
        if self.export.has_prefill_position:
            width = -(-tokens.shape[1] // stride) * stride
            args = (start_positions, seq_lens, page_table)
        elif start_positions.any():
            raise HarnessError("the export has no prefill start position (export with --has-prefill-position)")
        else:
            width, args = page_table.shape[1] * stride, (seq_lens, page_table)
        padded = torch.cat([tokens, tokens.new_zeros(n, width - tokens.shape[1])], dim=1)
        return self._call(f"prefill_bs{n}", padded, *args)[:, :tokens.shape[1]]

    def decode(self, tokens, seq_lens, start_positions, page_table):
        if tokens.shape[0] not in self.export.decode_batch_sizes:
            raise HarnessError(f"the export has no decode_bs{tokens.shape[0]} "
                               f"(decode batch sizes {list(self.export.decode_batch_sizes)})")
        return super().decode(tokens, seq_lens, start_positions, page_table)


class PrefillForward:
    """The forward pass as one batch-1 prefill per sequence, into a fresh cache of just enough pages."""

    def __init__(self, candidate: "ArtifactCandidate"):
        self.candidate, self.name = candidate, "iree"

    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        n = tokens.shape[1]
        stride = self.candidate.artifact.export.stride
        columns = -(-n // stride)
        serving = self.candidate.serving(ServingShape(prefill_len=n, columns=columns, n_pages=columns + 1,
                                                      stride=stride, batches=(1,)))
        table = torch.arange(1, columns + 1)[None]
        rows = [serving.prefill(row[None], torch.zeros(1, dtype=torch.int64), torch.tensor([n]), table)
                for row in tokens]
        return torch.cat(rows)[:, first:]


class ArtifactCandidate:
    programs = ("forward", "serving")

    def __init__(self, artifact: Artifact, target: Target, config: LlamaConfig, dtype: torch.dtype):
        self.artifact, self.target, self.config, self.dtype = artifact, target, config, dtype
        self.name, self.stages = "iree", Stages()

    def describe(self) -> dict:
        return {"candidate": "sharktank", **self.artifact.describe(), "target": self.target.name,
                "device": self.target.device(self.artifact.export.devices), **self.target.compiler_key()}

    @cached_property
    def module(self) -> CompiledModule:
        """The export's vmfb, or its MLIR compiled with the target's serving flags; every entry point the
        config lists must be in it."""
        a = self.artifact
        devices = a.export.devices
        flags = self.target.compile_flags(devices, "serving")
        if a.vmfb:  # compiled by the user, with flags the harness does not know
            vmfb, source = a.vmfb, None
        else:
            with self.stages.timed("compile") as st:
                vmfb, st.seconds, st.cached = compile_module(a.mlir, flags, self.target.compiler)
            source = (a.mlir, flags)
        with self.stages.timed("run"):
            module = CompiledModule(vmfb, a.irpa, self.target.device(devices), devices, source=source)
        wanted = [f"prefill_bs{n}" for n in a.export.prefill_batch_sizes] + [
            f"decode_bs{n}" for n in a.export.decode_batch_sizes]
        missing = [name for name in wanted if module.vm_module.lookup_function(name) is None]
        if missing:
            raise HarnessError(f"{vmfb}: has no {', '.join(missing)}, which {a.config_path.name} lists")
        return module

    def unsupported(self, check: str) -> str | None:
        return self.artifact.unsupported(check)

    def forward(self, seq_len: int | None = None, first: int = 0, tp: int | None = None) -> PrefillForward:
        return PrefillForward(self)

    def layers(self, seq_len: int | None = None):
        raise HarnessError(self.artifact.unsupported("layers"))

    def serving(self, shape: ServingShape, program: str = "serving") -> ArtifactServing:
        if program != "serving":
            raise HarnessError(f"bisection through decode: {self.artifact.unsupported('layers')}")
        if shape.stride != self.artifact.export.stride:
            raise HarnessError(f"a serving shape of stride {shape.stride} for an export of block_seq_stride "
                               f"{self.artifact.export.stride} (Case.serving_plan adapts it)")
        return ArtifactServing(self.module, shape, self.config, self.dtype, self.artifact)
