"""Weight-quantized variants of the reference model: every decoder-layer projection keeps its weight
quantized (GGUF blocks, or int8 / fp8 codes with per-channel scales) and dequantizes it inside the
forward pass, so the exported program carries the quantized weights and the dequantization, and the
eager model computes exactly the values a deployment computes. Activations, norms, embedding and head
stay fp32 (weight-only quantization, llama.cpp's and IREE's common deployment of these formats).

Schemes, by --dtype name:
- q8_0, q4_1: llama.cpp's blocks of 32 weights along a row, quantized by the `gguf` package (the
  reference implementation's numpy port) and held as its planes: fp16 scale d (and fp16 min m) per block,
  the codes as int8 (Q8_0) or two 4-bit codes per byte (Q4_1, low nibbles first). Dequantized as gguf does
  it, in fp32: d * q (+ m). On weights that came from a file in that format the round trip reproduces the
  stored blocks byte for byte (tests/test_quant.py on SmolLM2's shipped Q4_1), so the variant runs the
  real shipped weights.
- int8: symmetric per output channel, scale = max|w| / 127 (fp32), codes round(w / scale).
- fp8e4m3fn, fp8e4m3fnuz: per output channel, scale = max|w| / the format's largest finite value, codes
  (w / scale) rounded to nearest-even by torch's cast and held as their bytes; dequantized as
  fp32(code) * scale, where fp32(code) is the cast (`fp8_decode="native"`: arith.extf, what GPUs run) or
  a lookup in the 256-entry table of every code's value (`"table"`): iree-compile 3.9's llvm-cpu backend
  cannot lower extf from f8 types ("failed to legalize operation 'arith.extf'"). Both give the same values
  (tests/test_quant.py).
"""

from __future__ import annotations

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.model.llama import Llama

BLOCK = 32
FP8 = {"fp8e4m3fn": torch.float8_e4m3fn, "fp8e4m3fnuz": torch.float8_e4m3fnuz}
SCHEMES = ("q8_0", "q4_1", "int8", *FP8)
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _gguf_blocks(w: torch.Tensor, kind: str) -> np.ndarray:
    """gguf's packed blocks of `w` [rows, cols]: uint8 [rows, cols / 32, bytes per block]."""
    qtype = gguf.GGMLQuantizationType[kind.upper()]
    packed = gguf.quants.quantize(w.detach().float().numpy(), qtype)
    return packed.reshape(w.shape[0], w.shape[1] // BLOCK, -1)


def fp8_table(dtype: torch.dtype) -> torch.Tensor:
    """The fp32 value of every code of an fp8 `dtype`, indexed by the code's byte."""
    return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()


class QuantLinear(nn.Module):
    """A bias-free linear layer whose weight is stored quantized and dequantized on every call."""

    def __init__(self, weight: torch.Tensor, scheme: str, fp8_decode: str = "native"):
        super().__init__()
        self.scheme, self.shape, self.fp8_decode = scheme, tuple(weight.shape), fp8_decode
        if scheme in ("q8_0", "q4_1"):
            blocks = _gguf_blocks(weight, scheme)
            self.d = nn.Buffer(torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)))  # [rows, nb, 1]
            codes = blocks[..., 4:] if scheme == "q4_1" else blocks[..., 2:]
            if scheme == "q4_1":
                self.m = nn.Buffer(torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)))
            self.codes = nn.Buffer(torch.from_numpy(codes.copy().view(np.int8 if scheme == "q8_0" else np.uint8)))
        elif scheme == "int8":
            scale = weight.abs().amax(dim=1, keepdim=True) / 127
            self.scale = nn.Buffer(scale)
            self.codes = nn.Buffer(torch.round(weight / scale).to(torch.int8))
        elif scheme in FP8:
            scale = weight.abs().amax(dim=1, keepdim=True) / torch.finfo(FP8[scheme]).max
            self.scale = nn.Buffer(scale)
            self.codes = nn.Buffer((weight / scale).to(FP8[scheme]).view(torch.uint8))
            if fp8_decode == "table":  # a constant of the program, not a parameter
                self.table = nn.Buffer(fp8_table(FP8[scheme]), persistent=False)
        else:
            raise ValueError(f"unknown quantization scheme {scheme!r}; known: {', '.join(SCHEMES)}")

    def dequantize(self) -> torch.Tensor:
        """The weight in fp32, always: the format defines its values by fp32 arithmetic, so the fp64
        oracle (whose scales are the same numbers cast up) dequantizes to exactly the same weights."""
        if self.scheme == "q8_0":
            return (self.d.float() * self.codes.float()).reshape(self.shape)
        if self.scheme == "q4_1":
            codes = torch.cat([self.codes & 0x0F, self.codes >> 4], dim=-1).float()
            return (self.d.float() * codes + self.m.float()).reshape(self.shape)
        if self.scheme == "int8":
            return self.codes.float() * self.scale.float()
        if self.fp8_decode == "table":
            return self.table.float()[self.codes.long()] * self.scale.float()
        return self.codes.view(FP8[self.scheme]).float() * self.scale.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype))


def quantize(model: Llama, scheme: str, fp8_decode: str = "native") -> Llama:
    """`model` (fp32) with every decoder-layer projection replaced by its `scheme` QuantLinear."""
    for layer in model.layers:
        for path in PROJECTIONS:
            parent, name = path.split(".")
            block = getattr(layer, parent)
            setattr(block, name, QuantLinear(getattr(block, name).weight, scheme, fp8_decode))
    return model
