"""The dtypes a configuration can name on the command line, and what each means numerically."""

from __future__ import annotations

import torch

from harness.errors import HarnessError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise HarnessError(f"--dtype: unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon: the spacing of the dtype's numbers just above 1."""
    return torch.finfo(dtype).eps
