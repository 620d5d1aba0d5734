"""Model weights in one form, whatever file they come from: an fp32 state dict in the reference model's
naming (for llama, Hugging Face LlamaForCausalLM names without "model."), which the family's model loads strictly.

A state dict read from a file is lazy (`LazyTensors`): each tensor is read (from the memory-mapped file) and
dequantized when asked for, and not kept, so that a model can be built one part at a time (eager.py's
`Reference.parts`: a layer check holds one layer, not the model)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from harness.reference import families
from harness.reference.llama.config import LlamaConfig
from harness.reference.t5.config import T5Config


class LazyTensors(Mapping[str, torch.Tensor]):
    """A state dict whose tensors are made by their loaders on every access (fp32, fresh: never kept)."""

    def __init__(self, loaders: dict[str, Callable[[], torch.Tensor]]):
        self._loaders = loaders

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._loaders[name]()

    def __contains__(self, name: object) -> bool:  # without reading the tensor
        return name in self._loaders

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


@dataclasses.dataclass
class LoadedWeights:
    config: LlamaConfig | T5Config
    state_dict: Mapping[str, torch.Tensor]  # fp32; LazyTensors when read from a file
    tensor_types: dict[str, str]  # name -> type as stored: GGUF type ("Q4_1", "F32") or safetensors dtype
    source: str  # the file or directory read
    sha256: str  # of the file(s) read, so a result can pin the exact weights


def expected_shapes(config: LlamaConfig | T5Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of the family's model; built on the meta device, so it costs
    nothing even for a 405B shape and cannot drift from the model's definition."""
    with torch.device("meta"):
        model = families.build(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def sha256_files(paths: list[Path]) -> str:
    """One digest over the files' contents, in the order given, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
