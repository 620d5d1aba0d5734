"""The fp64 oracle is fp64 end to end: no op of its forward pass produces a tensor in a narrower float type
(its norm statistics and softmax were once computed in fp32, as the fp32/fp16/bf16 models' are, which made
the oracle share eager fp32's rounding there). Every op's output dtype is recorded while it runs."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from harness.reference.eager import Reference
from harness.reference.registry import resolve


class FloatDtypes(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.seen |= {t.dtype for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()}
        return out


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "q8_0"])
def test_oracle_computes_in_fp64_only(dtype, attention):
    weights = resolve("toy-gqa").load_weights()
    oracle = Reference("toy-gqa", weights, dtype, attention).oracle
    tokens = torch.randint(0, weights.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with FloatDtypes() as mode:
        logits = oracle.logits(tokens)
    assert logits.dtype == torch.float64
    # Q8_0 dequantizes its blocks in fp32 by the format's definition (then casts exactly): allowed there only.
    allowed = {torch.float64, torch.float32} if dtype == "q8_0" else {torch.float64}
    assert mode.seen <= allowed, mode.seen
