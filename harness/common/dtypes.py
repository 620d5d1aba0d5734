"""The dtypes a configuration can name on the command line, and what each means numerically."""

from __future__ import annotations

import torch

from harness.common.errors import HarnessError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


# Quantized variants: weight-only (transforms/quantize.py: quantized weights dequantized in the graph,
# activations in fp32) and W8A8 (transforms/w8a8.py: 8-bit weights and activations). Both compute in, and
# are judged as, fp32.
WEIGHT_ONLY = ("q8_0", "q5_0", "q4_1", "q4_k", "int8", "fp8e4m3fn", "fp8e4m3fnuz",
               "mxfp8_e4m3", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8")
W8A8 = ("w8a8_int8", "w8a8_fp8e4m3fn", "w8a8_fp8e4m3fnuz")
QUANTIZED = (*WEIGHT_ONLY, *W8A8)


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
