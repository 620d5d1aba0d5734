"""The dtypes a configuration can name on the command line, and what each means numerically."""

from __future__ import annotations

import torch

from harness.errors import HarnessError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


# Weight-quantized variants (harness/model/quant.py): quantized weights dequantized in the graph,
# activations in fp32, so they compute in (and are judged as) fp32.
# harness/model/quant.py (weight-only), harness/model/w8a8.py
QUANTIZED = ("q8_0", "q5_0", "q4_1", "q4_k", "int8", "fp8e4m3fn", "fp8e4m3fnuz", "w8a8_int8", "w8a8_fp8e4m3fn",
             "w8a8_fp8e4m3fnuz")


def torch_dtype(name: str) -> torch.dtype:
    """The dtype a configuration computes in."""
    if name in QUANTIZED:
        return torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise HarnessError(f"--dtype: unknown dtype {name!r}; known: {', '.join([*DTYPES, *QUANTIZED])}") from None


def quantization(name: str) -> str | None:
    """The weight quantization scheme a --dtype names, if any."""
    return name if name in QUANTIZED else None


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon: the spacing of the dtype's numbers just above 1."""
    return torch.finfo(dtype).eps
