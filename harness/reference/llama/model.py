"""A compact Llama reference model (grouped-query attention, RoPE with Llama 3.1 scaling, RMSNorm,
SwiGLU or Mixtral's mixture of SwiGLU experts, tied or untied embeddings), written for prefill: tokens in,
logits out.

Parameter names follow Hugging Face's LlamaForCausalLM without the "model." prefix, so safetensors
checkpoints load directly and GGUF tensors map onto them one to one. The computation follows the
Hugging Face implementation op for op (RMSNorm and RoPE tables in fp32, everything else in the model's
dtype), so that the harness's reference agrees with transformers' to fp32 rounding.

The model is split into `embed`, `layers[i]` and `head` so that each part can be exported, compiled and
compared on its own; `forward` is just their composition. A decoder layer given a `taps` dict also
records its sub-blocks' outputs there, in dataflow order (SUB_BLOCKS), for bisection inside a layer.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.reference.llama.attention import ATTENTION, full_dtype
from harness.reference.llama.config import LlamaConfig, RopeScaling
from harness.reference.llama.paged import PagedKV, PagedLayout
from harness.reference.precision import full_precision


def rope_inv_freq(config: LlamaConfig, dtype: torch.dtype) -> torch.Tensor:
    """Inverse RoPE frequencies, with Llama 3.1's scaling of the low frequencies where configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype) / dim))
    s: RopeScaling | None = config.rope_scaling
    if s is None:
        return inv_freq
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    # Nested where rather than `&` of two masks: IREE cannot legalize aten.__and__ on i1 tensors.
    is_high_or_low = torch.where(wavelen < high_freq_wavelen, True, wavelen > low_freq_wavelen)
    return torch.where(is_high_or_low, scaled, smoothed)


@full_precision
def rope_at(config: LlamaConfig, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of `positions` (int64, any shape) -> [*positions.shape, head_dim], computed in fp32 (fp64
    for an fp64 model) whatever the model's dtype."""
    dtype = full_dtype(dtype)
    freqs = positions.to(dtype)[..., None] * rope_inv_freq(config, dtype)  # not torch.outer: IREE lacks it
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rope_tables(config: LlamaConfig, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of positions 0..seq_len-1."""
    return rope_at(config, torch.arange(seq_len), dtype)


SUB_BLOCKS = ("attn_norm", "q_proj", "k_proj", "v_proj", "rope_q", "rope_k", "attention", "o_proj",
              "attn_residual", "mlp_norm", "gate_proj", "up_proj", "swiglu", "down_proj", "mlp_residual")
# Where each sub-block's output flows inside the layer (mlp_residual is the layer's output).
SUB_BLOCK_CONSUMERS = {
    "attn_norm": ("q_proj", "k_proj", "v_proj"), "q_proj": ("rope_q",), "k_proj": ("rope_k",),
    "v_proj": ("attention",), "rope_q": ("attention",), "rope_k": ("attention",), "attention": ("o_proj",),
    "o_proj": ("attn_residual",), "attn_residual": ("mlp_norm", "mlp_residual"),
    "mlp_norm": ("gate_proj", "up_proj"), "gate_proj": ("swiglu",), "up_proj": ("swiglu",),
    "swiglu": ("down_proj",), "down_proj": ("mlp_residual",), "mlp_residual": (),
}


def sub_blocks(config: LlamaConfig) -> tuple[str, ...]:
    """A decoder layer's sub-blocks in dataflow order: SUB_BLOCKS, or for a mixture of experts the router's
    logits, each expert's output and their weighted sum in place of the MLP's."""
    if not config.n_experts:
        return SUB_BLOCKS
    attention = SUB_BLOCKS[:SUB_BLOCKS.index("mlp_norm") + 1]
    return (*attention, "router", *(f"expert_{e}" for e in range(config.n_experts)), "moe", "mlp_residual")


def sub_block_consumers(config: LlamaConfig) -> dict[str, tuple[str, ...]]:
    """Where each of `sub_blocks(config)` flows inside the layer."""
    if not config.n_experts:
        return SUB_BLOCK_CONSUMERS
    experts = tuple(f"expert_{e}" for e in range(config.n_experts))
    attention = {k: v for k, v in SUB_BLOCK_CONSUMERS.items() if k in sub_blocks(config)}
    return {**attention, "mlp_norm": ("router", *experts), "router": ("moe",),
            **{e: ("moe",) for e in experts}, "moe": ("mlp_residual",)}


def tap(taps: dict | None, name: str, value: torch.Tensor) -> torch.Tensor:
    if taps is not None:
        taps[name] = value
    return value


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


@full_precision
def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.to(full_dtype(x.dtype))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * rms_normalize(x, self.eps).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        # An execution choice, not part of the checkpoint: attention.ATTENTION's "sdpa" or "math" (or the
        # same with the mask placed on a device, transforms/shard.py).
        self.attend = ATTENTION["sdpa"]
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, taps: dict | None = None,
                kv: PagedKV | None = None):
        """`kv`: the paged cache this call writes its K/V to and attends over (default: the call's own K/V,
        causally)."""
        bsz, seq_len, _ = x.shape
        q = tap(taps, "q_proj", self.q_proj(x)).view(bsz, seq_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = tap(taps, "k_proj", self.k_proj(x)).view(bsz, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = tap(taps, "v_proj", self.v_proj(x)).view(bsz, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        q = tap(taps, "rope_q", apply_rope(q, cos, sin))
        k = tap(taps, "rope_k", apply_rope(k, cos, sin))
        mask = None
        if kv is not None:
            k, v, mask = kv(k, v)
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        out = self.attend(q, k, v) if mask is None else self.attend(q, k, v, mask_fn=lambda *_: mask)
        out = tap(taps, "attention", out.transpose(1, 2).reshape(bsz, seq_len, -1))
        return tap(taps, "o_proj", self.o_proj(out))


class FeedForward(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.dim, bias=False)
        self.act = F.silu

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        gate = tap(taps, "gate_proj", self.gate_proj(x))
        up = tap(taps, "up_proj", self.up_proj(x))
        return tap(taps, "down_proj", self.down_proj(tap(taps, "swiglu", self.act(gate) * up)))


class Experts(nn.Module):
    """The experts' SwiGLU weights stacked, as transformers' MixtralExperts holds them: gate_up_proj [experts,
    2 * ffn_dim, dim] (gate rows, then up rows), down_proj [experts, dim, ffn_dim]."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(config.n_experts, 2 * config.ffn_dim, config.dim))
        self.down_proj = nn.Parameter(torch.empty(config.n_experts, config.dim, config.ffn_dim))
        self.act = F.silu

    def forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(self.act(gate) * up, self.down_proj[e])


class SparseMoE(nn.Module):
    """Mixtral's mixture of experts: the router's softmax (fp32) picks each token's `experts_per_token` experts and
    renormalises their probabilities; the output is their experts' outputs weighted by those. Every expert runs on
    every token, weighted by zero where it was not picked: the values transformers computes by running each expert
    on its own tokens (a zero weight adds an exact zero, in the same expert order as its index_add_), with the static
    shapes an exported program needs."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.top_k, self.n_experts = config.experts_per_token, config.n_experts
        self.gate = nn.Linear(config.dim, config.n_experts, bias=False)
        self.experts = Experts(config)

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        logits = tap(taps, "router", self.gate(x))
        probs = torch.softmax(logits.float(), dim=-1)
        # The top k by a threshold at the k-th largest probability (an exact tie there would pick both, where
        # transformers' top-k picks one), each weight renormalised over them; expert e's weight is column e, zero
        # where it was not picked. Not torch.topk and a scatter: iree-compile 3.9 crashes lowering the scatter, and
        # fails the top-k's indices in a program sharded over devices (README, Findings). The terms are summed in
        # expert order from the first, not from zeros (a constant each device would need transferred: shard.py).
        kth = probs.sort(dim=-1, descending=True).values[..., self.top_k - 1:self.top_k]
        picked = probs * (probs >= kth).to(probs.dtype)
        weights = picked / picked.sum(dim=-1, keepdim=True)
        terms = ((tap(taps, f"expert_{e}", self.experts(e, x)) * weights[..., e:e + 1]).to(x.dtype)
                 for e in range(self.n_experts))
        return tap(taps, "moe", functools.reduce(torch.add, terms))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SparseMoE(config) if config.n_experts else FeedForward(config)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, taps: dict | None = None,
                kv: PagedKV | None = None):
        x = tap(taps, "attn_norm", self.input_layernorm(h))
        h = tap(taps, "attn_residual", h + self.self_attn(x, cos, sin, taps, kv))
        x = tap(taps, "mlp_norm", self.post_attention_layernorm(h))
        return tap(taps, "mlp_residual", h + self.mlp(x, taps))


class Llama(nn.Module):
    """The family's model (reference/families.py): `embed`, `layers[i](h, *layer_args(seq_len), taps)`, `head`."""

    CHECKS = None  # every check
    WHY_NOT = ""
    outputs_logits = True
    emulatable = True  # fp16 / bf16 emulated by rounding every op (precision.py; its fp32 parts marked)
    streams_parts = True  # a part is built from its own parameters (eager.StreamingParts)
    shardable = True  # at the TP sizes transforms/shard.py's check_tp allows
    DTYPES = None  # every dtype and quantized variant
    EXPORT_DECOMPOSITIONS = None  # written as IREE lowers it
    COMPILE_FLAGS = None  # the target's
    sub_blocks = staticmethod(sub_blocks)
    sub_block_consumers = staticmethod(sub_block_consumers)

    @staticmethod
    def family(config: LlamaConfig) -> str:
        return "mixtral" if config.n_experts else "llama"

    @staticmethod
    def part_params(config: LlamaConfig, part: str) -> list[str]:
        """Parameters outside `layers.<i>.` that part "embed", "head" or "layer" (every layer) reads: the head's
        final norm and output projection (the embedding when tied)."""
        head = ["norm.weight", "embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"]
        return {"embed": ["embed_tokens.weight"], "head": head, "layer": []}[part]

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.paged_defects: dict[int, str] = {}  # layer -> paged.DEFECTS entry planted there (faults.py)

    def use_attention(self, impl: str) -> None:
        """Every layer's attention formulation (attention.IMPLS)."""
        for layer in self.layers:
            layer.self_attn.attend = ATTENTION[impl]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(tokens)

    def layer_args(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What every layer takes besides its input (the family interface, reference/families.py): the RoPE
        tables cos, sin."""
        return rope_tables(self.config, seq_len, self.embed_tokens.weight.dtype)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def forward(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Logits, in the model's dtype, for positions `first`.. of `tokens` ([batch, seq] int64).
        Perplexity scores only a window's later positions: the head (a fifth of SmolLM2's FLOPs at 512
        tokens) runs on those alone."""
        h = self.embed(tokens)
        cos, sin = self.layer_args(tokens.shape[1])
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.head(h[:, first:])

    def paged(self, tokens: torch.Tensor, start_positions: torch.Tensor, seq_lens: torch.Tensor,
              page_table: torch.Tensor, cache: torch.Tensor, layout: PagedLayout) -> torch.Tensor:
        """One serving call over the paged cache (paged.py), updated in place: `tokens` [batch, seq] at
        positions start_positions[b].., each sequence `seq_lens[b]` long after the call (the rest of its row
        is padding) -> logits [batch, seq, vocab]. Prefill (start 0), chunked prefill and decode (seq 1)."""
        h = self.embed(tokens)
        for i in range(len(self.layers)):
            h = self.paged_layer(i, h, start_positions, seq_lens, page_table, cache, layout)
        return self.head(h)

    def paged_layer(self, i: int, h: torch.Tensor, start_positions: torch.Tensor, seq_lens: torch.Tensor,
                    page_table: torch.Tensor, cache: torch.Tensor, layout: PagedLayout,
                    taps: dict | None = None) -> torch.Tensor:
        """Decoder layer i of a serving call (`paged`), on its input `h` [batch, seq, dim]."""
        positions = start_positions[:, None] + torch.arange(h.shape[1])
        cos, sin = rope_at(self.config, positions, self.embed_tokens.weight.dtype)
        kv = PagedKV(cache, layout, i, positions, seq_lens, page_table, self.paged_defects.get(i))
        return self.layers[i](h, cos[:, None], sin[:, None], taps, kv)  # cos, sin broadcast over the heads
