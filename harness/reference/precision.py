"""Low-precision eager execution emulated in fp32, rounding at every op boundary.

On this CPU, eager fp16/bf16 matrix products run ~100x slower than fp32, which makes a real
same-dtype eager reference for a 135M model impractical. `emulate(dtype)` runs an fp32 model and rounds
the output of every torch op to `dtype` (round-to-nearest-even through a real cast), which is what a
low-precision kernel that accumulates in fp32 and stores its result in `dtype` produces.

Code that a real low-precision model computes in fp32 on purpose (RMSNorm's statistics, the RoPE
tables) is marked with `@full_precision`: inside it nothing is rounded, and only its result is.
tests/test_precision.py shows that the emulation tracks real torch fp16/bf16 eager on a toy model.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

# A plain module global rather than a ContextVar: torch.export (dynamo) must be able to trace through
# `full_precision`, and it cannot trace ContextVar methods. Emulation is single-threaded anyway.
_rounding_dtype: torch.dtype | None = None


@contextlib.contextmanager
def _rounding(dtype: torch.dtype | None):
    global _rounding_dtype
    previous, _rounding_dtype = _rounding_dtype, dtype
    try:
        yield
    finally:
        _rounding_dtype = previous


def _round(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        return value.to(dtype).to(torch.float32)
    return value


class _RoundOpOutputs(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dtype = _rounding_dtype
        if dtype is None:
            return out
        # A view or an in-place result holds values already rounded, and must stay what it is: rounding makes a
        # copy, and a write through it (the paged cache's index_put_ on a view) would never reach the tensor.
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        return tree_map(lambda v: v if isinstance(v, torch.Tensor) and (v._is_view() or id(v) in inputs)
                        else _round(v, dtype), out)


@contextlib.contextmanager
def emulate(dtype: torch.dtype):
    """Round every fp32 op output inside the block to `dtype`."""
    with _rounding(dtype), _RoundOpOutputs():
        yield


def full_precision(fn):
    """Mark `fn` as computed in fp32 by the real low-precision model: under `emulate`, its inner ops
    are not rounded, only its result is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dtype = _rounding_dtype
        if dtype is None:
            return fn(*args, **kwargs)
        with _rounding(None):
            out = fn(*args, **kwargs)
        return tree_map(lambda v: _round(v, dtype), out)

    return wrapper
