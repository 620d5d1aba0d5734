"""Megatron-style tensor parallelism of the reference Llama: `shard(model, tp)` is a model that
computes the same function on `tp` logical devices. It runs in eager torch (where a transfer between
devices is a copy) and exports with iree-turbine for `tp` IREE devices: compile it with
`--iree-hal-target-device=<target>[0]` .. `[tp-1]` and run it with tp devices.

Layout, device d of tp:
- attention: query heads d*H/tp .. (d+1)*H/tp - 1: the matching column slices (output rows) of
  q_proj, k_proj and v_proj and row slice (input columns) of o_proj, whose partial outputs are
  all-reduced. KV heads are split the same way when tp divides their count; when tp is a multiple of
  it, each device holds a replica of the one KV head its query heads share (SmolLM2, 9 query / 3 KV
  heads: TP 3 gives each device 3 query heads and 1 KV head, TP 9 one query head and a replica of its
  KV head). `check_tp` says which sizes fit.
- feed-forward: column slices of gate_proj and up_proj, the matching row slice of down_proj, whose
  partial outputs are all-reduced. The FFN width need not divide by tp: the first ffn_dim % tp
  devices take one column more (any split of a sum is exact), so SmolLM2 (1536) runs at TP 9.
- mixture of experts: the same column split of every expert, the router replicated, so every device picks the
  same experts and weights its partial outputs by the same probabilities before the all-reduce.
- embedding: replicated, a copy on every device, each device looking up its own copy of the token
  ids, so the residual stream starts replicated without a transfer of activations. Not split over
  the vocabulary: that needs a masked lookup plus an all-reduce and only saves memory.
- norms: replicated; each device normalizes its own copy of the (replicated) residual stream.
- final norm and lm head: on device 0 only, not split (every device holds the same residual stream,
  so the other devices have nothing to add); the logits are device 0's. With tied embeddings the
  head is device 0's embedding copy.

All-reduce: the partials are transferred to device 0 and summed there in device order, and the sum is
broadcast, so every device continues from bitwise the same values. Transfers are iree-turbine's
`transfer_to_logical_device` (`flow.tensor.transfer` in the program). Every parameter carries a
`DeviceTensorTrait`: its global gets `stream.affinity = #hal.device.promise<@__device_d>` and is loaded
from the parameter archive straight onto device d. Program inputs and results live on device 0, except the
paged cache of a serving program: one argument per device, device d's shard on device d (`split_cache`:
device d's KV heads, its one KV head repeated per query head where HeadCopies copies it), each updated in
place there, as sharktank passes one cache per shard.

The math is model.py's: each device's shard is a model.py `Attention` / `FeedForward` with fewer heads
or columns (same forward, same activation, so a planted op fault carries over) and model.py's
`RMSNorm` and `rope_tables`; only the decoder layer's composition is new, because it all-reduces
between a block and its residual add. Sharded and unsharded models differ by float reassociation
only: o_proj and down_proj add tp partial products.

Interface: `Llama`'s, where the harness uses it (`config`, `embed`, `layer_args`, `layers[i](h, cos, sin,
taps)`, `head`, `forward`, `embed_tokens.weight.dtype`); a layer takes and returns device 0's copy.
Taps hold the unsharded model's values in its layout, so every sub-block compares element by element
with the unsharded eager model: split values (q/k/v projections, RoPE outputs, attention, gate/up,
SwiGLU) are gathered on device 0 and concatenated in head / column order (one replica per KV head);
all-reduced (o_proj, down_proj) and replicated ones (norms, residuals) are device 0's.

iree-compile 3.9 needs five things of a multi-device program, each found on the toy models (the
messages are in the docstrings of the code that avoids them): every constant used on a device reaches
it through a transfer (`replicate`, `replicate_rope`, `attention_on_device`); a program result is not
also transferred (`fresh`); a single KV head shared by several query heads is not broadcast
(`HeadCopies`). Do not switch const-expr hoisting off instead: `--iree-opt-const-expr-hoisting=false`
with `--iree-opt-data-tiling` miscompiles even the unsharded fp32 toy (logit error 3.2).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable

import torch
from iree.turbine.aot import DeviceTensorTrait
from iree.turbine.ops.iree import transfer_to_logical_device
from torch import nn

from harness.common.errors import HarnessError
from harness.reference.llama.attention import causal_mask
from harness.reference.llama.config import LlamaConfig
from harness.reference.llama.model import (
    Attention,
    DecoderLayer,
    FeedForward,
    Llama,
    RMSNorm,
    SparseMoE,
    rope_at,
    rope_tables,
    sub_blocks,
)
from harness.reference.llama.paged import PagedKV, PagedLayout
from harness.transforms.quantize import block_size, effective_scheme

# --- which sizes fit, and who holds what ---------------------------------------------------------------


class UnfitTP(HarnessError):
    """A tensor-parallel size the model's heads cannot be split into: the suites skip that
    configuration (a --tp crossed with the default models), naming the constraint."""


def check_tp(config: LlamaConfig, tp: int, model: str = "the model", quant: str | None = None) -> None:
    """Raise HarnessError, one line naming the constraint, unless `config` (quantized by `quant`) shards
    `tp` ways.

    Query heads must split evenly (n_heads % tp == 0). KV heads must split evenly (n_kv_heads % tp
    == 0) or be replicated whole (tp % n_kv_heads == 0), vLLM's and Megatron's rule: given the first
    condition these are exactly the sizes at which each device's query heads use whole KV heads of
    their own. The FFN width is split unevenly where needed. A quantized o_proj and down_proj, split
    along their input columns, must split between blocks (32 weights; Q4_K 256)."""
    if tp < 1:
        raise HarnessError(f"--tp {tp}: the tensor-parallel size must be a positive integer")
    if config.n_heads % tp:
        raise UnfitTP(f"--tp {tp}: {model} has {config.n_heads} query heads, not divisible by {tp}")
    if config.n_kv_heads % tp and tp % config.n_kv_heads:
        raise UnfitTP(
            f"--tp {tp}: {model} has {config.n_kv_heads} KV heads; the TP size must divide them or be a "
            f"multiple of them (whole KV heads are replicated), and {tp} is neither")
    row_split = {"o_proj": [config.n_heads // tp * config.head_dim] * tp,
                 "down_proj": split_sizes(config.ffn_dim, tp)}
    for name, sizes in row_split.items() if quant else ():
        block = block_size(effective_scheme(quant, sum(sizes)))
        if any(end % block for end in itertools.accumulate(sizes)):
            raise UnfitTP(f"--tp {tp}: {model}'s {name} would split its {sum(sizes)} input columns "
                          f"{'/'.join(map(str, sizes))}, not on the {block}-weight blocks of {quant}")


def kv_heads(config: LlamaConfig, tp: int, device: int) -> range:
    """The KV heads device `device` holds (one replicated head when tp > n_kv_heads)."""
    if config.n_kv_heads >= tp:
        per = config.n_kv_heads // tp
        return range(device * per, (device + 1) * per)
    head = device // (tp // config.n_kv_heads)
    return range(head, head + 1)


def kv_owners(config: LlamaConfig, tp: int) -> list[int]:
    """One device per distinct KV shard: the first holder of each replica."""
    return list(range(0, tp, max(1, tp // config.n_kv_heads)))


def cache_heads(config: LlamaConfig, tp: int, device: int) -> list[int]:
    """The KV head of each head in device `device`'s shard of the paged cache: its KV heads, or its one KV
    head as many times as HeadCopies copies it (the shard's attention writes and reads every copy)."""
    heads, n_q = list(kv_heads(config, tp, device)), config.n_heads // tp
    return heads * n_q if len(heads) == 1 and n_q > 1 else heads


def split_cache(cache: torch.Tensor, layout: PagedLayout, config: LlamaConfig, tp: int) -> list[torch.Tensor]:
    """An unsharded paged cache [pages, page_elems] as the tp devices' shards (each [pages, its page_elems])."""
    heads = cache.reshape(layout.n_pages, layout.n_layers, 2, layout.kv_heads, -1)
    return [heads[:, :, :, cache_heads(config, tp, d)].reshape(layout.n_pages, -1) for d in range(tp)]


def join_caches(caches: list[torch.Tensor], layout: PagedLayout, config: LlamaConfig, tp: int) -> torch.Tensor:
    """The devices' shards of a paged cache as the unsharded cache: each KV head from its first holder."""
    parts = []
    for d in kv_owners(config, tp):
        heads = cache_heads(config, tp, d)
        shard = caches[d].reshape(layout.n_pages, layout.n_layers, 2, len(heads), -1)
        parts.append(shard[:, :, :, [heads.index(h) for h in dict.fromkeys(heads)]])
    return torch.cat(parts, dim=3).reshape(layout.n_pages, -1)


def split_sizes(n: int, tp: int) -> list[int]:
    """A split of n into tp parts, the first n % tp of them one larger (torch.tensor_split's)."""
    return [n // tp + (d < n % tp) for d in range(tp)]


# --- transfers and collectives ---------------------------------------------------------------------------


def to_device(t: torch.Tensor, device: int) -> torch.Tensor:
    """`t` on logical device `device`: a flow.tensor.transfer in the program, a copy in eager."""
    return transfer_to_logical_device(str(device), t)


def replicate(t: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """A program input or constant (a value no device computed) on every device, device 0 included:
    without the transfer to device 0, such a value used there and transferred elsewhere fails
    iree-compile 3.9 ("'stream.tensor.sizeof' op illegal for this phase of lowering")."""
    return [to_device(t, d) for d in range(tp)]


def replicate_rope(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype, tp: int):
    """The RoPE tables cast to the model's dtype, then replicated (Attention's own cast is then a
    no-op). Cast after the transfer, fp16/bf16 tables crash iree-compile 3.9 (a segfault in the
    const-eval JIT, or "'stream.tensor.sizeof' op illegal" with const-eval off)."""
    return replicate(cos.to(dtype), tp), replicate(sin.to(dtype), tp)


def broadcast(t: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """Device 0's `t`, computed there, on every device."""
    return [t] + [to_device(t, d) for d in range(1, tp)]


def reduce(partials: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the devices' partials, added on device 0 in device order."""
    total = partials[0]
    for p in partials[1:]:
        total = total + to_device(p, 0)
    return total


def all_reduce(partials: list[torch.Tensor]) -> list[torch.Tensor]:
    """The sum of the devices' partials, added on device 0 in device order, on every device."""
    return broadcast(reduce(partials), len(partials))


def gather(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Parts of the devices in `parts` (device 0's first) concatenated on device 0 along `dim`."""
    return torch.cat([parts[0]] + [to_device(p, 0) for p in parts[1:]], dim=dim)


def fresh(t: torch.Tensor) -> torch.Tensor:
    """`t` as a new value, for a program result that is also transferred to another device: returning
    the transferred value itself fails iree-compile 3.9 ("op affinity #hal.device.affinity<@__device_1>
    is not compatible with the partition affinity #hal.device.affinity<@__device_0>"). `t + 0.0` is
    not folded away (it maps -0.0 to +0.0, which compares equal), `t * 1.0` or a clone would be."""
    return t + 0.0


# --- the shards ---------------------------------------------------------------------------------------------


def _param(t: torch.Tensor, device: int) -> nn.Parameter:
    """A parameter on logical device `device`: a tensor object of its own (which carries the device
    trait) over storage that may be shared with the source model or other replicas."""
    p = nn.Parameter(t.detach(), requires_grad=False)
    DeviceTensorTrait(device).set(p)
    return p


def _linear(weight: torch.Tensor, device: int) -> nn.Linear:
    with torch.device("meta"):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = _param(weight.contiguous(), device)
    return linear


def _projection(src: nn.Module, device: int, rows: slice = slice(None), cols: slice = slice(None),
                name: str = "") -> nn.Module:
    """Device `device`'s part weight[rows, cols] of a projection, plain or quantized (its blocks kept)."""
    if hasattr(src, "sliced"):  # quantized: quant.QuantLinear, w8a8.W8A8Linear
        part = src.sliced(rows, cols, name)
        for buf in part.buffers():
            DeviceTensorTrait(device).set(buf)
        return part
    return _linear(src.weight[rows, cols], device)


def _norm(src: RMSNorm, device: int) -> RMSNorm:
    with torch.device("meta"):
        norm = RMSNorm(src.weight.shape[0], src.eps)
    norm.weight = _param(src.weight, device)
    return norm


class HeadCopies(nn.Module):
    """The projection of a device's single KV head, output `copies` times side by side.

    model.py's `repeat_interleave` broadcasts a single KV head to the query heads that share it, and
    iree-compile 3.9 with --iree-opt-data-tiling segfaults on that broadcast (in HoistEncodingOps;
    also for an unsharded model with one KV head and "math" attention). Concatenated copies compile,
    are bitwise the same values, and leave `repeat_interleave` a factor of 1."""

    def __init__(self, projection: nn.Module, copies: int):
        super().__init__()
        self.projection, self.copies = projection, copies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.projection(x)] * self.copies, dim=-1)


def attention_on_device(attend: Callable, device: int) -> Callable:
    """The attention function `attend` (attention.ATTENTION's "math" or "sdpa") with its causal mask made
    whole and then transferred to `device`.

    iree-compile 3.9 hoists a constant that no transfer places into one global for all the devices
    that use it, and compiling that fails ("'stream.tensor.sizeof' op illegal for this phase of
    lowering": "math" in fp16/bf16, "sdpa" always, since torch-mlir materializes `is_causal=True`'s
    mask). A transferred `torch.full` splat crashes the compiler's const-eval JIT, hence the transfer of
    the complete mask. tests/test_shard.py checks that both equal the unsharded functions bitwise in eager
    (fp32, fp16, bf16)."""
    return functools.partial(attend, mask_fn=lambda seq_len, dtype: to_device(causal_mask(seq_len, dtype), device))


def _attention_shard(src: Attention, config: LlamaConfig, tp: int, device: int) -> Attention:
    """model.py's Attention over device `device`'s query heads and their KV heads; its output (o_proj's)
    is a partial sum."""
    hd, n_q = config.head_dim, config.n_heads // tp
    q = slice(device * n_q * hd, (device + 1) * n_q * hd)
    kv_range = kv_heads(config, tp, device)
    kv = slice(kv_range.start * hd, kv_range.stop * hd)
    with torch.device("meta"):
        shard = Attention(config)
    shard.attend, shard.n_heads, shard.n_kv_heads = attention_on_device(src.attend, device), n_q, len(kv_range)
    shard.q_proj = _projection(src.q_proj, device, rows=q)
    shard.k_proj = _projection(src.k_proj, device, rows=kv)
    shard.v_proj = _projection(src.v_proj, device, rows=kv)
    if len(kv_range) == 1 and n_q > 1:
        shard.n_kv_heads = n_q
        shard.k_proj, shard.v_proj = HeadCopies(shard.k_proj, n_q), HeadCopies(shard.v_proj, n_q)
    shard.o_proj = _projection(src.o_proj, device, cols=q, name=f"o_proj at TP {tp}")
    return shard


def _ffn_shard(src: FeedForward, config: LlamaConfig, tp: int, device: int) -> FeedForward:
    """model.py's FeedForward over device `device`'s columns; its output (down_proj's) is a partial sum."""
    sizes = split_sizes(config.ffn_dim, tp)
    cols = slice(sum(sizes[:device]), sum(sizes[: device + 1]))
    with torch.device("meta"):
        shard = FeedForward(config)
    shard.act = src.act
    shard.gate_proj = _projection(src.gate_proj, device, rows=cols)
    shard.up_proj = _projection(src.up_proj, device, rows=cols)
    shard.down_proj = _projection(src.down_proj, device, cols=cols, name=f"down_proj at TP {tp}")
    return shard


def _moe_shard(src: SparseMoE, config: LlamaConfig, tp: int, device: int) -> SparseMoE:
    """model.py's SparseMoE over device `device`'s columns of every expert (gate and up rows, down columns), the
    router replicated so that every device picks the same experts; its output is a partial sum."""
    sizes, f = split_sizes(config.ffn_dim, tp), config.ffn_dim
    cols = slice(sum(sizes[:device]), sum(sizes[: device + 1]))
    with torch.device("meta"):
        shard = SparseMoE(config)
    shard.gate = _linear(src.gate.weight, device)
    gate_up = src.experts.gate_up_proj
    shard.experts.gate_up_proj = _param(torch.cat([gate_up[:, :f][:, cols], gate_up[:, f:][:, cols]], dim=1), device)
    shard.experts.down_proj = _param(src.experts.down_proj[:, :, cols].contiguous(), device)
    shard.experts.act = src.experts.act
    return shard


# --- the sharded model ------------------------------------------------------------------------------------

# How the devices' values of a split sub-block make the unsharded value: concatenated along `dim` over
# all devices ("all") or one device per KV shard ("kv"). Other sub-blocks: device 0's value.
_GATHER = {"q_proj": (-1, "all"), "k_proj": (-1, "kv"), "v_proj": (-1, "kv"), "rope_q": (1, "all"),
           "rope_k": (1, "kv"), "attention": (-1, "all"), "gate_proj": (-1, "all"), "up_proj": (-1, "all"),
           "swiglu": (-1, "all")}


def _copies(projection: nn.Module) -> int:
    return projection.copies if isinstance(projection, HeadCopies) else 1


class ShardedDecoderLayer(nn.Module):
    def __init__(self, src: DecoderLayer, config: LlamaConfig, tp: int):
        super().__init__()
        self.config, self.tp = config, tp
        self.input_layernorm = nn.ModuleList(_norm(src.input_layernorm, d) for d in range(tp))
        self.self_attn = nn.ModuleList(_attention_shard(src.self_attn, config, tp, d) for d in range(tp))
        self.post_attention_layernorm = nn.ModuleList(_norm(src.post_attention_layernorm, d) for d in range(tp))
        mlp_shard = _moe_shard if config.n_experts else _ffn_shard
        self.mlp = nn.ModuleList(mlp_shard(src.mlp, config, tp, d) for d in range(tp))

    def forward_replicated(self, hs: list[torch.Tensor], coss: list[torch.Tensor], sins: list[torch.Tensor],
                           taps: dict | None = None, kvs: list[PagedKV] | None = None) -> list[torch.Tensor]:
        """The layer on every device's copy of the residual stream (and RoPE tables), each device's attention
        over its shard of the paged cache when `kvs` are given; returns every device's copy of its output."""
        shard_taps = [None if taps is None else {} for _ in range(self.tp)]
        xs = [norm(h) for norm, h in zip(self.input_layernorm, hs)]
        attn = all_reduce([a(x, c, s, t, kv) for a, x, c, s, t, kv in
                           zip(self.self_attn, xs, coss, sins, shard_taps, kvs or [None] * self.tp)])
        hs2 = [h + a for h, a in zip(hs, attn)]
        xs2 = [norm(h) for norm, h in zip(self.post_attention_layernorm, hs2)]
        down = all_reduce([m(x, t) for m, x, t in zip(self.mlp, xs2, shard_taps)])
        out = [h + m for h, m in zip(hs2, down)]
        if taps is not None:
            own = {"attn_norm": xs[0], "o_proj": fresh(attn[0]), "attn_residual": hs2[0], "mlp_norm": xs2[0],
                   "moe" if self.config.n_experts else "down_proj": fresh(down[0]), "mlp_residual": out[0]}
            for name in sub_blocks(self.config):
                if name.startswith("expert_"):  # each device's partial sum of the expert's output
                    taps[name] = reduce([shard_taps[d][name] for d in range(self.tp)])
                    continue
                if name not in _GATHER:  # the router's logits are replicated: device 0's, like a norm's
                    taps[name] = own.get(name, shard_taps[0].get(name))
                    continue
                dim, which = _GATHER[name]
                if which == "all":
                    parts = [shard_taps[d][name] for d in range(self.tp)]
                else:  # one part per KV shard, HeadCopies' copies left out
                    parts = [shard_taps[d][name].tensor_split(_copies(self.self_attn[d].k_proj), dim)[0]
                             for d in kv_owners(self.config, self.tp)]
                taps[name] = gather(parts, dim)
        return out

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, taps: dict | None = None):
        """model.py's DecoderLayer interface: device 0's input in, device 0's output out."""
        coss, sins = replicate_rope(cos, sin, h.dtype, self.tp)
        return self.forward_replicated(replicate(h, self.tp), coss, sins, taps)[0]


class ShardedLlama(nn.Module):
    def __init__(self, model: Llama, tp: int, name: str = "the model"):
        super().__init__()
        check_tp(model.config, tp, name)
        self.config, self.tp = model.config, tp
        self.embed_replicas = nn.ModuleList(self._embedding(model.embed_tokens, d) for d in range(tp))
        self.layers = nn.ModuleList(ShardedDecoderLayer(layer, self.config, tp) for layer in model.layers)
        self.norm = _norm(model.norm, 0)
        self.lm_head = None if model.lm_head is None else _linear(model.lm_head.weight, 0)
        self.paged_defects = dict(model.paged_defects)

    @staticmethod
    def _embedding(src: nn.Embedding, device: int) -> nn.Embedding:
        with torch.device("meta"):
            embedding = nn.Embedding(*src.weight.shape)
        embedding.weight = _param(src.weight, device)
        return embedding

    @property
    def embed_tokens(self) -> nn.Embedding:
        """Device 0's embedding (model.py's head and the harness's dtype lookups use it)."""
        return self.embed_replicas[0]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(tokens)

    def layer_args(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(self.config, seq_len, self.embed_tokens.weight.dtype)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return Llama.head(self, h)  # device 0's norm and head weight

    def forward(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Logits, on device 0 and in the model's dtype, for positions `first`.. of `tokens`."""
        hs = [embed(t) for embed, t in zip(self.embed_replicas, replicate(tokens, self.tp))]
        coss, sins = replicate_rope(*self.layer_args(tokens.shape[1]), hs[0].dtype, self.tp)
        for layer in self.layers:
            hs = layer.forward_replicated(hs, coss, sins)
        return self.head(hs[0][:, first:])

    def paged(self, tokens: torch.Tensor, start_positions: torch.Tensor, seq_lens: torch.Tensor,
              page_table: torch.Tensor, *caches: torch.Tensor, layout: PagedLayout) -> torch.Tensor:
        """Llama.paged on tp devices: `caches` are the devices' shards of the unsharded `layout`'s cache
        (`split_cache`), device d's on device d, each updated in place; the call's positions, lengths and
        page table replicated."""
        tp, dtype = self.tp, self.embed_tokens.weight.dtype
        hs = [embed(t) for embed, t in zip(self.embed_replicas, replicate(tokens, tp))]
        positions = start_positions[:, None] + torch.arange(tokens.shape[1])
        cos, sin = rope_at(self.config, positions, dtype)
        coss, sins = replicate_rope(cos[:, None], sin[:, None], dtype, tp)
        per_device = list(zip(*(replicate(x, tp) for x in (positions, seq_lens, page_table))))
        layouts = [dataclasses.replace(layout, kv_heads=len(cache_heads(self.config, tp, d))) for d in range(tp)]
        for i, layer in enumerate(self.layers):
            kvs = [PagedKV(caches[d], layouts[d], i, *per_device[d], self.paged_defects.get(i),
                           functools.partial(to_device, device=d)) for d in range(tp)]
            hs = layer.forward_replicated(hs, coss, sins, kvs=kvs)
        return self.head(hs[0])


def shard(model: Llama, tp: int, name: str = "the model") -> ShardedLlama:
    """`model` split `tp` ways; HarnessError (naming `name`) when it cannot be (see `check_tp`).

    Set the model's attention impl, dtype and any fault before sharding: the shards copy them. Shards
    and replicas share storage with `model`'s weights, except o_proj's and down_proj's column slices
    (copies: 2 * dim * (n_heads * head_dim + ffn_dim) elements per layer, ~22% of SmolLM2's)."""
    return ShardedLlama(model, tp, name).train(model.training)
