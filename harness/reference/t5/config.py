"""T5 v1.1 encoder hyper-parameters and the named shapes the harness knows."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int
    dim: int  # d_model
    n_layers: int
    n_heads: int
    head_dim: int  # d_kv: T5's attention width n_heads * head_dim need not be dim
    ffn_dim: int  # d_ff
    num_buckets: int = 32  # relative_attention_num_buckets
    max_distance: int = 128  # relative_attention_max_distance
    norm_eps: float = 1e-6
    max_seq_len: int = 512  # what the harness feeds (relative positions have no limit; T5 was trained at 512)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "T5Config":
        return cls(**d)


# google/t5-v1_1-xxl's encoder: Flux's text encoder (text_encoder_2).
T5_V1_1_XXL = T5Config(vocab_size=32128, dim=4096, n_layers=24, n_heads=64, head_dim=64, ffn_dim=10240)
# A seeded random toy whose attention width (4 heads x 24 = 96) differs from dim (64), which T5's shapes allow.
TOY_T5 = T5Config(vocab_size=256, dim=64, n_layers=2, n_heads=4, head_dim=24, ffn_dim=160)
