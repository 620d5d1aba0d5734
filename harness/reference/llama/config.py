"""Llama architecture hyper-parameters and the named shapes the harness knows."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's frequency-dependent RoPE scaling ("rope_type": "llama3" in Hugging Face configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    rope_scaling: RopeScaling | None = None
    n_experts: int = 0  # Mixtral's mixture of experts in place of the MLP (0: a dense MLP); ffn_dim is each expert's
    experts_per_token: int = 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.n_experts and not 0 < self.experts_per_token <= self.n_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} of {self.n_experts} experts")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        d = dict(d)
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return cls(**d)


# Shapes of the public checkpoints (their Hugging Face config.json values). Only the shape lives here;
# where the weights come from is the model registry's business.
SMOLLM2_135M = LlamaConfig(
    vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
    rope_theta=100000.0, norm_eps=1e-5, max_seq_len=8192, tie_embeddings=True,
)
LLAMA31_8B = LlamaConfig(
    vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
    rope_theta=500000.0, norm_eps=1e-5, max_seq_len=131072, rope_scaling=RopeScaling(),
)
LLAMA31_70B = dataclasses.replace(LLAMA31_8B, dim=8192, n_layers=80, n_heads=64, ffn_dim=28672)
LLAMA31_405B = dataclasses.replace(
    LLAMA31_8B, dim=16384, n_layers=126, n_heads=128, ffn_dim=53248)

# Seeded random toys that run in seconds. toy-gqa has 2 query heads per KV head; toy-tp8 has head
# counts that divide by 8 (for TP 8) and Llama 3.1 RoPE scaling, so that code path runs in tests.
TOY_GQA = LlamaConfig(
    vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160,
    rope_theta=10000.0, max_seq_len=512, tie_embeddings=True,
)
# Mixtral's shape in miniature: 4 experts, 2 chosen per token.
TOY_MOE = LlamaConfig(
    vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
    rope_theta=1000000.0, max_seq_len=512, n_experts=4, experts_per_token=2,
)
TOY_TP8 = LlamaConfig(
    vocab_size=512, dim=256, n_layers=3, n_heads=16, n_kv_heads=8, ffn_dim=512,
    rope_theta=500000.0, max_seq_len=1024,
    rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64),
)
