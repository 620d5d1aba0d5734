"""Causal attention in its two formulations, the one list of them (IMPLS) that options, targets and the
models share. Both take the causal mask from `mask_fn(seq_len, dtype)`, so that tensor parallelism can
place the mask on each device (transforms/shard.py) with the same arithmetic, and the paged cache can give
its own ([batch, 1, seq, keys], paged.py).

- "sdpa": torch's fused scaled_dot_product_attention (IREE's fused attention op; the fast path on GPUs).
- "math": matmuls and a softmax, Hugging Face's "eager" attention; IREE 3.9 on CPU runs it ~10x faster than
  its fused op at 512 tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPLS = ("sdpa", "math")


def full_dtype(dtype: torch.dtype) -> torch.dtype:
    """What a model of `dtype` computes its softmax, norm statistics and RoPE tables in: fp32, as Hugging
    Face's Llama does for fp32/fp16/bf16, and fp64 for the fp64 oracle, which must round nowhere in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def causal_mask(seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive causal mask: 0 on and below the diagonal, -inf above."""
    return torch.full((seq_len, seq_len), float("-inf"), dtype=dtype).triu(1)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_fn=None) -> torch.Tensor:
    if mask_fn is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = mask_fn(q.shape[-2], q.dtype)
    mask = mask.reshape((1,) * (4 - mask.dim()) + mask.shape)  # torch-mlir rejects a 2-d mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_fn=causal_mask) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5) + mask_fn(q.shape[-2], q.dtype)
    return torch.softmax(scores, dim=-1, dtype=full_dtype(q.dtype)).to(q.dtype) @ v


ATTENTION = {"sdpa": sdpa_attention, "math": math_attention}
assert tuple(ATTENTION) == IMPLS
