"""The reference model families, by their config type: each family's model class says what the rest of the harness
needs of its architecture (the interface `embed`, `layers[i](h, *layer_args(seq_len), taps)`, `head`, `forward`;
its sub-blocks and where they flow; the parameters each part reads; the checks, dtypes and TP sizes it takes).
A family is a folder of reference/ (llama/, t5/, hfauto/: any transformers causal LM), a line here and its suite
(suites/<family>/); Mixtral is the llama folder's decoder with a mixture of experts, in its own suite."""

from __future__ import annotations

from torch import nn

from harness.reference.hfauto.config import HFConfig
from harness.reference.hfauto.model import HFModel
from harness.reference.llama.config import LlamaConfig
from harness.reference.llama.model import Llama
from harness.reference.t5.config import T5Config
from harness.reference.t5.model import T5Encoder

MODELS: dict[type, type[nn.Module]] = {LlamaConfig: Llama, T5Config: T5Encoder, HFConfig: HFModel}
FAMILIES = ("llama", "mixtral", "t5", "hf")  # each model class's `family(config)`, each a suite: suites/<family>


def model_class(config) -> type[nn.Module]:
    return MODELS[type(config)]


def family(config) -> str:
    """The family of a model: its suite (a Llama with experts is Mixtral)."""
    return model_class(config).family(config)


def build(config) -> nn.Module:
    return model_class(config)(config)


def sub_blocks(config) -> tuple[str, ...]:
    """A layer's sub-blocks in dataflow order (the layer programs' outputs after the layer's own)."""
    return model_class(config).sub_blocks(config)


def sub_block_consumers(config) -> dict[str, tuple[str, ...]]:
    """Where each of `sub_blocks(config)` flows inside the layer."""
    return model_class(config).sub_block_consumers(config)
