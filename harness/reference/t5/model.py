"""A compact T5 v1.1 encoder (google/t5-v1_1-*, Flux's text encoder): tokens in, the final norm's hidden states
out. What sets it apart from the llama reference, each a path that IREE must compile right:

- relative position bias instead of RoPE: one learned table [num_buckets, n_heads] (Hugging Face keeps it in
  the first block) indexed by the bucket of each key's offset from the query, added to every layer's attention
  scores, which are not scaled by 1/sqrt(head_dim) (T5 folds that into its initialisation);
- bidirectional attention (no causal mask; every position is a token, so no padding mask);
- gated GELU feed-forward (tanh approximation, "gated-gelu"): down(gelu(gate x) * up x);
- RMS norm without mean subtraction or bias (T5LayerNorm), its statistics in fp32.

Parameter names follow the llama reference's where the part is the same (input_layernorm, self_attn.q_proj,
mlp.down_proj, ...; t5/checkpoint.py maps Hugging Face's), so faults and the layer check address both alike.
The computation follows transformers' T5 op for op (softmax in fp32, bias in the model's dtype). Hugging Face's
fp16 clamp of infinite activations is left out: it changes nothing unless fp16 has already overflowed, which
the checks report as non-finite.

There is no language-model head: the output is hidden states, so perplexity and serving do not apply (CHECKS).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.reference.llama.attention import full_dtype
from harness.reference.llama.model import RMSNorm, tap
from harness.reference.precision import full_precision
from harness.reference.t5.config import T5Config

SUB_BLOCKS = ("position_bias", "attn_norm", "q_proj", "k_proj", "v_proj", "attention", "o_proj", "attn_residual",
              "mlp_norm", "gate_proj", "up_proj", "geglu", "down_proj", "mlp_residual")
SUB_BLOCK_CONSUMERS = {
    "position_bias": ("attention",), "attn_norm": ("q_proj", "k_proj", "v_proj"), "q_proj": ("attention",),
    "k_proj": ("attention",), "v_proj": ("attention",), "attention": ("o_proj",), "o_proj": ("attn_residual",),
    "attn_residual": ("mlp_norm", "mlp_residual"), "mlp_norm": ("gate_proj", "up_proj"), "gate_proj": ("geglu",),
    "up_proj": ("geglu",), "geglu": ("down_proj",), "down_proj": ("mlp_residual",), "mlp_residual": (),
}


@full_precision  # integer buckets; the log runs in fp32 whatever the model's dtype, as in transformers
def relative_buckets(seq_len: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """[seq, seq] bucket of key j's offset j - i from query i (bidirectional): half the buckets for keys after
    the query; within each half, offsets below a quarter of the buckets have one bucket each, larger ones
    share logarithmically wider buckets up to `max_distance`, beyond which all share the last."""
    positions = torch.arange(seq_len)
    offset = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = offset.abs()
    log_ratio = torch.log(distance.float() / exact) / math.log(max_distance / exact)
    wide = torch.clamp(exact + (log_ratio * (half - exact)).to(torch.int64), max=half - 1)
    return (offset > 0).to(torch.int64) * half + torch.where(distance < exact, distance, wide)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation written out, as transformers' "gelu_new" computes it (rounded at every op in a
    low-precision model). Not F.gelu(approximate="tanh"): IREE 3.9 (torch-mlir) lowers that with 0.797724 for
    sqrt(2 / pi) = 0.7978846, 5e-5 off at x = 1.35, 120x torch's fp32 error (tests/test_t5.py, README Findings)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Attention(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        inner = config.n_heads * config.head_dim
        self.q_proj = nn.Linear(config.dim, inner, bias=False)
        self.k_proj = nn.Linear(config.dim, inner, bias=False)
        self.v_proj = nn.Linear(config.dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, config.dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        bsz, seq_len, _ = x.shape

        def heads(name: str, proj: nn.Linear) -> torch.Tensor:
            return tap(taps, name, proj(x)).view(bsz, seq_len, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads("q_proj", self.q_proj), heads("k_proj", self.k_proj), heads("v_proj", self.v_proj)
        scores = torch.matmul(q, k.transpose(2, 3)) + bias
        weights = torch.softmax(scores.to(full_dtype(scores.dtype)), dim=-1).to(scores.dtype)
        out = tap(taps, "attention", torch.matmul(weights, v).transpose(1, 2).reshape(bsz, seq_len, -1))
        return tap(taps, "o_proj", self.o_proj(out))


class GatedGelu(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)  # wi_0
        self.up_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)  # wi_1
        self.down_proj = nn.Linear(config.ffn_dim, config.dim, bias=False)  # wo

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        gate = tap(taps, "gate_proj", self.gate_proj(x))
        up = tap(taps, "up_proj", self.up_proj(x))
        return tap(taps, "down_proj", self.down_proj(tap(taps, "geglu", gelu_tanh(gate) * up)))


class EncoderLayer(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = GatedGelu(config)

    def forward(self, h: torch.Tensor, bias: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        bias = tap(taps, "position_bias", bias)
        x = tap(taps, "attn_norm", self.input_layernorm(h))
        h = tap(taps, "attn_residual", h + self.self_attn(x, bias, taps))
        x = tap(taps, "mlp_norm", self.post_attention_layernorm(h))
        return tap(taps, "mlp_residual", h + self.mlp(x, taps))


class T5Encoder(nn.Module):
    """The family's model: `embed`, `layers[i](h, *layer_args(seq_len), taps)` and `head` (the final norm)."""

    CHECKS = ("end_to_end", "layers", "bisect")
    WHY_NOT = "an encoder outputs hidden states, not next-token logits: no perplexity, and no KV cache to serve"
    outputs_logits = False
    emulatable = True  # fp16 / bf16 emulated by rounding every op (its fp32 norm statistics marked)
    streams_parts = True  # a part is built from its own parameters (eager.StreamingParts)
    shardable = False  # tensor parallelism is not built for it
    DTYPES = ("fp32", "fp16", "bf16")  # its quantized variants are not built
    EXPORT_DECOMPOSITIONS = None  # written as IREE lowers it
    COMPILE_FLAGS = None  # the target's

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)  # T5 does not scale its embeddings
        self.relative_attention_bias = nn.Embedding(config.num_buckets, config.n_heads)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)

    @staticmethod
    def family(config: T5Config) -> str:
        return "t5"

    @staticmethod
    def sub_blocks(config: T5Config) -> tuple[str, ...]:
        return SUB_BLOCKS

    @staticmethod
    def sub_block_consumers(config: T5Config) -> dict[str, tuple[str, ...]]:
        return SUB_BLOCK_CONSUMERS

    @staticmethod
    def part_params(config: T5Config, part: str) -> list[str]:
        """Parameters outside `layers.<i>.` that part "embed", "head" or "layer" (every layer) reads."""
        return {"embed": ["embed_tokens.weight"], "head": ["norm.weight"],
                "layer": ["relative_attention_bias.weight"]}[part]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(tokens)

    def layer_args(self, seq_len: int) -> tuple[torch.Tensor]:
        """What every layer takes besides its input: the position bias [1, n_heads, seq, seq], in the model's
        dtype."""
        c = self.config
        buckets = relative_buckets(seq_len, c.num_buckets, c.max_distance)
        return (self.relative_attention_bias(buckets).permute(2, 0, 1)[None],)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h)

    def forward(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Hidden states [batch, seq - first, dim], in the model's dtype, of `tokens` ([batch, seq] int64)."""
        h = self.embed(tokens)
        args = self.layer_args(tokens.shape[1])
        for layer in self.layers:
            h = layer(h, *args)
        return self.head(h[:, first:])
