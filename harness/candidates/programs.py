"""The programs exported from a reference model, as lists of entry points.

- "forward": tokens -> logits (of positions `first`.., all by default), the program the end-to-end
  check and perplexity run.
- "layers": `embed` (tokens -> h), `layer_<i>` (h -> h and every sub-block's output, families.sub_blocks order)
  and `head` (h -> logits), sharing one parameter archive, so that each part can be fed the eager
  input (isolated) or the compiled chain's own output (propagated) from one compile.
- "serving": sharktank's `export_paged_llm_v1` entry points for each batch size N (with its
  --has-prefill-position, so that prefill can be chunked):
  `prefill_bs{N}(tokens[N,S], start_pos[N], seq_lens[N], seq_block_ids[N,C], cache[P,E]) -> logits[N,S,V]`,
  `decode_bs{N}(tokens[N,1], seq_lens[N], start_positions[N], seq_block_ids[N,C], cache) -> logits[N,1,V]`,
  the cache updated in place (reference/llama/paged.py); at TP > 1 one cache argument per device, its shard.
- "serving_layers": `decode_layer_<i>(h[1,1,D], seq_lens, start_positions, seq_block_ids, cache)` -> h and
  every sub-block's output: one decoder layer of a decode step, for bisection through decode.

Activations cross the program boundary in fp32 and are cast to the model's dtype inside: the cast of a
dtype-valued fp32 tensor is exact, and the runtime cannot hand bf16 buffers to numpy.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.iree.export import Entry
from harness.reference.families import sub_blocks
from harness.reference.llama.model import Llama
from harness.reference.llama.paged import ServingShape, cache_dtype
from harness.transforms.shard import ShardedLlama, split_cache


def _dtype(model: nn.Module) -> torch.dtype:
    return model.embed_tokens.weight.dtype


def _forward_from(first: int):
    def forward(model: nn.Module, tokens):
        return model(tokens, first).float()
    return forward


def _embed(model: nn.Module, tokens):
    return model.embed(tokens).float()


def _head(model: nn.Module, h):
    return model.head(h.to(_dtype(model))).float()


def _with_taps(out: torch.Tensor, taps: dict, config) -> tuple[torch.Tensor, ...]:
    """A layer entry's results: its output, then every sub-block's (families.sub_blocks order), in fp32."""
    return (out.float(), *(taps[name].float() for name in sub_blocks(config)))


def _layer(index: int):
    def layer(model: nn.Module, h):
        taps = {}
        out = model.layers[index](h.to(_dtype(model)), *model.layer_args(h.shape[1]), taps)
        return _with_taps(out, taps, model.config)
    return layer


def forward_entries(tokens: torch.Tensor, first: int = 0) -> list[Entry]:
    return [Entry("forward", _forward_from(first), (tokens,))]


def layer_entries(tokens: torch.Tensor, n_layers: int, dim: int) -> list[Entry]:
    h = torch.zeros(*tokens.shape, dim)
    return ([Entry("embed", _embed, (tokens,))]
            + [Entry(f"layer_{i}", _layer(i), (h,)) for i in range(n_layers)]
            + [Entry("head", _head, (h,))])


def _serving(shape: ServingShape, decode: bool):
    def prefill(model: Llama | ShardedLlama, tokens, start_positions, seq_lens, page_table, *caches):
        layout = shape.layout(model.config)
        return model.paged(tokens, start_positions, seq_lens, page_table, *caches, layout=layout).float()

    def decode_step(model: Llama | ShardedLlama, tokens, seq_lens, start_positions, page_table, *caches):
        return prefill(model, tokens, start_positions, seq_lens, page_table, *caches)
    return decode_step if decode else prefill


def serving_entries(model: Llama | ShardedLlama, shape: ServingShape) -> list[Entry]:
    """At TP > 1 the cache is one argument per device, device d's shard (shard.split_cache) on device d."""
    layout = shape.layout(model.config)
    cache = torch.zeros(layout.n_pages, layout.page_elems, dtype=cache_dtype(_dtype(model)))
    tp = model.tp if isinstance(model, ShardedLlama) else 1
    caches = tuple(split_cache(cache, layout, model.config, tp)) if tp > 1 else (cache,)
    on_devices = {4 + d: d for d in range(1, tp)} or None
    entries = []
    for n in shape.batches:
        # Distinct tensors: torch.export binds one tensor passed twice to one argument.
        starts, lens = torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)
        table, tokens = torch.zeros(n, shape.columns, dtype=torch.int64), torch.zeros(n, shape.prefill_len, dtype=torch.int64)
        entries += [Entry(f"prefill_bs{n}", _serving(shape, False), (tokens, starts, lens, table, *caches),
                          on_devices),
                    Entry(f"decode_bs{n}", _serving(shape, True), (tokens[:, :1], lens, starts, table, *caches),
                          on_devices)]
    return entries


def _decode_layer(index: int, shape: ServingShape):
    def layer(model: Llama, h, seq_lens, start_positions, page_table, cache):
        taps = {}
        out = model.paged_layer(index, h.to(_dtype(model)), start_positions, seq_lens, page_table, cache,
                                shape.layout(model.config), taps)
        return _with_taps(out, taps, model.config)
    return layer


def serving_layer_entries(model: Llama, shape: ServingShape) -> list[Entry]:
    layout = shape.layout(model.config)
    cache = torch.zeros(layout.n_pages, layout.page_elems, dtype=cache_dtype(_dtype(model)))
    h = torch.zeros(1, 1, model.config.dim)
    args = (h, torch.ones(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
            torch.zeros(1, shape.columns, dtype=torch.int64), cache)
    return [Entry(f"decode_layer_{i}", _decode_layer(i, shape), args) for i in range(model.config.n_layers)]
