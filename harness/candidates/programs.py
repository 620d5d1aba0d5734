"""The programs exported from a reference model, as lists of entry points.

- "forward": tokens -> logits (of positions `first`.., all by default), the program the end-to-end
  check and perplexity run.
- "layers": `embed` (tokens -> h), `layer_<i>` (h -> h and every sub-block's output, SUB_BLOCKS order)
  and `head` (h -> logits), sharing one parameter archive, so that each part can be fed the eager
  input (isolated) or the compiled chain's own output (propagated) from one compile.

Activations cross the program boundary in fp32 and are cast to the model's dtype inside: the cast of a
dtype-valued fp32 tensor is exact, and the runtime cannot hand bf16 buffers to numpy.
"""

from __future__ import annotations

import torch

from harness.iree.export import Entry
from harness.reference.llama.model import SUB_BLOCKS, Llama


def _dtype(model: Llama) -> torch.dtype:
    return model.embed_tokens.weight.dtype


def _forward_from(first: int):
    def forward(model: Llama, tokens):
        return model(tokens, first).float()
    return forward


def _embed(model: Llama, tokens):
    return model.embed(tokens).float()


def _head(model: Llama, h):
    return model.head(h.to(_dtype(model))).float()


def _layer(index: int):
    def layer(model: Llama, h):
        taps = {}
        out = model.layers[index](h.to(_dtype(model)), *model.rope(h.shape[1]), taps)
        return (out.float(), *(taps[name].float() for name in SUB_BLOCKS))
    return layer


def forward_entries(tokens: torch.Tensor, first: int = 0) -> list[Entry]:
    return [Entry("forward", _forward_from(first), (tokens,))]


def layer_entries(tokens: torch.Tensor, n_layers: int, dim: int) -> list[Entry]:
    h = torch.zeros(*tokens.shape, dim)
    return ([Entry("embed", _embed, (tokens,))]
            + [Entry(f"layer_{i}", _layer(i), (h,)) for i in range(n_layers)]
            + [Entry("head", _head, (h,))])

