"""OCP Microscaling (MX) block formats (OCP MX specification v1.0): 32 consecutive elements of a row share one scale
X = 2^(E - 127), an E8M0 byte; each element is a narrow float (FP8 E4M3, FP6 E3M2 or E2M3, FP4 E2M1) or an 8-bit
integer with an implied 2^-6 (MXINT8), and stands for X times its value.

Encoding, as the specification's reference conversion: the shared exponent is floor(log2(max |v|)) of the block
minus the element format's largest exponent (emax), kept within E8M0's normal range; each v / X is rounded to the
nearest element value, ties to even, saturating at the format's largest magnitude (the elements are cast by
`ml_dtypes`; MXINT8's by numpy's rint). Elements are held one code per byte (the values, not the storage density,
are what is judged) and decoded in the graph by lookup in the format's table of code values and E8M0's table of
scales (both read from `ml_dtypes`), so a weight is the exact fp32 product of a power of two and an element value.

MX6 (Qualcomm Cloud AI 100, AMD AIE-ML v2: Rouhani et al., "With Shared Microexponents", ISCA 2023) is another
family: blocks of 16 under an 8-bit exponent, one shift bit per pair of elements lowering it by one, and a sign +
4-bit magnitude per element (6 bits an element on average). Neither it nor its MX9 / MX4 siblings are OCP formats;
MXFP6 E2M3 (1 + 2 + 3 bits, blocks of 32) is the OCP format nearest to it in bits.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

BLOCK = 32
# --dtype name -> (element type, or None for MXINT8; the element format's largest exponent, emax)
FORMATS = {
    "mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 8),
    "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 4),
    "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 2),
    "mxfp4_e2m1": (ml_dtypes.float4_e2m1fn, 2),
    "mxint8": (None, 0),
}
_BITS = {ml_dtypes.float8_e4m3fn: 8, ml_dtypes.float6_e3m2fn: 6, ml_dtypes.float6_e2m3fn: 6,
         ml_dtypes.float4_e2m1fn: 4}
_INT8_UNIT = 2.0 ** -6  # MXINT8's implied scale of its two's complement codes


def element_table(scheme: str) -> torch.Tensor:
    """The fp32 value of every element code of the format, indexed by the code (its byte)."""
    element, _ = FORMATS[scheme]
    if element is None:
        return torch.from_numpy(np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32) * _INT8_UNIT)
    codes = np.arange(2 ** _BITS[element], dtype=np.uint8)
    return torch.from_numpy(codes.view(element).astype(np.float32))


def scale_table() -> torch.Tensor:
    """The fp32 value of every E8M0 scale byte (255 is NaN)."""
    return torch.from_numpy(np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32))


def encode(weight: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` [rows, cols] (cols a multiple of BLOCK) as MX: the E8M0 scale bytes [rows, blocks, 1] and the
    element codes [rows, blocks, BLOCK], both uint8."""
    element, emax = FORMATS[scheme]
    rows, cols = weight.shape
    blocks = weight.detach().float().numpy().reshape(rows, cols // BLOCK, BLOCK)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    # floor(log2(amax)) exactly: amax = m 2^e with m in [0.5, 1). An all-zero block takes the smallest scale.
    exponent = np.where(amax > 0, np.frexp(amax)[1] - 1, -127) - emax
    exponent = np.clip(exponent, -126, 127)  # E8M0's normal range: no subnormal scale, never the NaN byte
    scaled = blocks / np.ldexp(np.float32(1), exponent).astype(np.float32)  # exact: a power of two
    if element is None:
        codes = np.clip(np.rint(scaled / _INT8_UNIT), -127, 127).astype(np.int8).view(np.uint8)
    else:
        top = float(ml_dtypes.finfo(element).max)
        codes = np.clip(scaled, -top, top).astype(element).view(np.uint8)
    return torch.from_numpy((exponent + 127).astype(np.uint8)), torch.from_numpy(np.ascontiguousarray(codes))


def decode(scales: torch.Tensor, codes: torch.Tensor, elements: torch.Tensor, scale_values: torch.Tensor,
           shape: tuple[int, int]) -> torch.Tensor:
    """The fp32 weight of scale bytes and element codes, by lookup in the tables (element_table, scale_table)."""
    return (elements[codes.long()] * scale_values[scales.long()]).reshape(shape)
