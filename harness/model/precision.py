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
import contextvars
import functools

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

_rounding_dtype: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar(
    "_rounding_dtype", default=None)


def _round(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        return value.to(dtype).to(torch.float32)
    return value


class _RoundOpOutputs(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dtype = _rounding_dtype.get()
        return out if dtype is None else tree_map(lambda v: _round(v, dtype), out)


@contextlib.contextmanager
def emulate(dtype: torch.dtype):
    """Round every fp32 op output inside the block to `dtype`."""
    token = _rounding_dtype.set(dtype)
    try:
        with _RoundOpOutputs():
            yield
    finally:
        _rounding_dtype.reset(token)


def full_precision(fn):
    """Mark `fn` as computed in fp32 by the real low-precision model: under `emulate`, its inner ops
    are not rounded, only its result is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dtype = _rounding_dtype.get()
        if dtype is None:
            return fn(*args, **kwargs)
        token = _rounding_dtype.set(None)
        try:
            out = fn(*args, **kwargs)
        finally:
            _rounding_dtype.reset(token)
        return tree_map(lambda v: _round(v, dtype), out)

    return wrapper
