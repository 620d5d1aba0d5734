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
- q5_0: llama.cpp's blocks of 32: fp16 scale d, the codes' fifth bits packed in 4 bytes (element i in
  bit i % 8 of byte i // 8) and their low nibbles two per byte; quantized by `gguf`; d * (q - 16).
- q4_k: llama.cpp's super-blocks of 256 weights, 8 sub-blocks of 32 with 6-bit scales and mins under an
  fp16 d and dmin: w = d * sc_j * q - dmin * m_j. `gguf` dequantizes but does not quantize it; the
  encoder here is plain min/max (a valid Q4_K encoding; llama.cpp's quantizer searches each sub-block's
  scale for a lower error, so its weights are somewhat closer to fp32). A row whose length is not a
  multiple of 256 is stored as q5_0 instead, as llama.cpp does (SmolLM2's 576-wide inputs: all but
  down_proj); `layout()` counts what each projection got.
- int8: symmetric per output channel, scale = max|w| / 127 (fp32), codes round(w / scale).
- fp8e4m3fn, fp8e4m3fnuz: per output channel, scale = max|w| / the format's largest finite value, codes
  (w / scale) rounded to nearest-even by torch's cast and held as their bytes; dequantized as
  fp32(code) * scale, where fp32(code) is the cast (`fp8_decode="native"`: arith.extf, what GPUs run) or
  a lookup in the 256-entry table of every code's value (`"table"`): iree-compile 3.9's llvm-cpu backend
  cannot lower extf from f8 types ("failed to legalize operation 'arith.extf'"). Both give the same values
  (tests/test_quant.py).
- mxfp8_e4m3, mxfp6_e3m2, mxfp6_e2m3, mxfp4_e2m1, mxint8: OCP microscaling blocks of 32 under an E8M0 scale
  (transforms/mx.py).
"""

from __future__ import annotations

from typing import Callable

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.common.dtypes import WEIGHT_ONLY
from harness.common.errors import HarnessError
from harness.reference.hfauto.model import HFModel
from harness.reference.llama.model import Llama
from harness.transforms import mx

BLOCK = 32
SUPER_BLOCK = 256  # Q4_K
FP8 = {"fp8e4m3fn": torch.float8_e4m3fn, "fp8e4m3fnuz": torch.float8_e4m3fnuz}
GGUF_SCHEMES = ("q8_0", "q5_0", "q4_1", "q4_k")
SCHEMES = WEIGHT_ONLY  # GGUF_SCHEMES, int8, FP8, mx.FORMATS
# The format llama.cpp stores a tensor in when its rows do not fit the requested one's blocks.
FALLBACK = {"q4_k": "q5_0"}
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _gguf_blocks(w: torch.Tensor, kind: str) -> np.ndarray:
    """gguf's packed blocks of `w` [rows, cols]: uint8 [rows, cols / 32, bytes per block]."""
    qtype = gguf.GGMLQuantizationType[kind.upper()]
    packed = gguf.quants.quantize(w.detach().float().numpy(), qtype)
    return packed.reshape(w.shape[0], w.shape[1] // BLOCK, -1)


def q4_k_blocks(w: torch.Tensor) -> np.ndarray:
    """Q4_K super-blocks of `w` [rows, cols], cols a multiple of 256: uint8 [rows, cols / 256, 144] laid out
    as ggml's block_q4_K (fp16 d, fp16 dmin, 12 bytes of packed 6-bit scales and mins, 128 bytes of
    codes: byte k of group g holds sub-block 2g's code k in its low nibble, 2g+1's in its high one)."""
    x = w.detach().float().numpy().reshape(-1, 8, BLOCK)
    low = np.minimum(x.min(-1), 0)  # Q4_K's minimum is subtracted, so it is at most 0
    scale = (x.max(-1) - low) / 15
    d = (scale.max(-1) / 63).astype(np.float16)
    dmin = ((-low).max(-1) / 63).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Scales round up, so 16 levels always span the sub-block: rounding them down would clip its top.
        sc = np.nan_to_num(np.clip(np.ceil(scale / d[:, None].astype(np.float32)), 0, 63)).astype(np.uint8)
        m = np.nan_to_num(np.clip(np.round(-low / dmin[:, None].astype(np.float32)), 0, 63)).astype(np.uint8)
        step = (d.astype(np.float32)[:, None] * sc)[..., None]
        offset = (dmin.astype(np.float32)[:, None] * m)[..., None]
        q = np.nan_to_num(np.clip(np.round((x + offset) / step), 0, 15)).astype(np.uint8)
    scales = np.concatenate([sc[:, :4] | (sc[:, 4:] >> 4 << 6), m[:, :4] | (m[:, 4:] >> 4 << 6),
                             (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)], axis=-1)
    codes = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), scales, codes], axis=-1)
    return blocks.reshape(w.shape[0], w.shape[1] // SUPER_BLOCK, -1)


def effective_scheme(scheme: str, cols: int) -> str:
    """The format a weight with rows of `cols` is stored in when `scheme` is asked for."""
    return FALLBACK[scheme] if scheme in FALLBACK and cols % SUPER_BLOCK else scheme


def block_size(scheme: str) -> int:
    """How many input columns share a scale: the granularity at which a weight can be split."""
    return SUPER_BLOCK if scheme == "q4_k" else BLOCK if scheme in (*GGUF_SCHEMES, *mx.FORMATS) else 1


def fp8_table(dtype: torch.dtype) -> torch.Tensor:
    """The fp32 value of every code of an fp8 `dtype`, indexed by the code's byte."""
    return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()


def fp8_values(codes: torch.Tensor, dtype: torch.dtype, table: torch.Tensor | None) -> torch.Tensor:
    """The fp32 values of fp8 `codes` (bytes): looked up in `table` where given, else cast."""
    return table.float()[codes.long()] if table is not None else codes.view(dtype).float()


class QuantLinear(nn.Module):
    """A bias-free linear layer whose weight is stored quantized and dequantized on every call."""

    def __init__(self, weight: torch.Tensor, scheme: str, fp8_decode: str = "native"):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {scheme!r}; known: {', '.join(SCHEMES)}")
        scheme = effective_scheme(scheme, weight.shape[1])
        self.scheme, self.shape, self.fp8_decode = scheme, tuple(weight.shape), fp8_decode
        if scheme in GGUF_SCHEMES:
            blocks = q4_k_blocks(weight) if scheme == "q4_k" else _gguf_blocks(weight, scheme)
            plane = lambda start, stop, dtype=np.uint8: nn.Buffer(  # noqa: E731
                torch.from_numpy(blocks[..., start:stop].copy().view(dtype)))
            self.d = plane(0, 2, np.float16)  # [rows, blocks, 1]
            if scheme == "q8_0":
                self.codes = plane(2, None, np.int8)
            elif scheme == "q5_0":
                self.high_bits, self.codes = plane(2, 6), plane(6, None)
            elif scheme == "q4_1":
                self.m, self.codes = plane(2, 4, np.float16), plane(4, None)
            else:
                self.m, self.scales, self.codes = plane(2, 4, np.float16), plane(4, 16), plane(16, None)
        elif scheme == "int8":
            scale = weight.abs().amax(dim=1, keepdim=True) / 127
            self.scale = nn.Buffer(scale)
            self.codes = nn.Buffer(torch.round(weight / scale).to(torch.int8))
        elif scheme in mx.FORMATS:
            self.scales, self.codes = map(nn.Buffer, mx.encode(weight, scheme))
            self.table, self.scale_table = nn.Buffer(mx.element_table(scheme)), nn.Buffer(mx.scale_table())
        elif scheme in FP8:
            scale = weight.abs().amax(dim=1, keepdim=True) / torch.finfo(FP8[scheme]).max
            self.scale = nn.Buffer(scale)
            self.codes = nn.Buffer((weight / scale).to(FP8[scheme]).view(torch.uint8))
            if fp8_decode == "table":  # a parameter, so that each TP device loads its own copy
                self.table = nn.Buffer(fp8_table(FP8[scheme]))

    def dequantize(self) -> torch.Tensor:
        """The weight in fp32, always: the format defines its values by fp32 arithmetic, so the fp64
        oracle (whose scales are the same numbers cast up) dequantizes to exactly the same weights."""
        if self.scheme == "q8_0":
            return (self.d.float() * self.codes.float()).reshape(self.shape)
        if self.scheme == "q5_0":
            # Shifts by constants: torch-mlir cannot lower a shift by a tensor.
            fifth = torch.stack([(self.high_bits >> i) & 1 for i in range(8)], dim=-1).flatten(-2)  # [rows, blocks, 32]
            codes = torch.cat([self.codes & 0x0F, self.codes >> 4], dim=-1) | (fifth << 4)
            return (self.d.float() * (codes.float() - 16)).reshape(self.shape)
        if self.scheme == "q4_1":
            codes = torch.cat([self.codes & 0x0F, self.codes >> 4], dim=-1).float()
            return (self.d.float() * codes + self.m.float()).reshape(self.shape)
        if self.scheme == "q4_k":
            return self._q4_k_weight()
        if self.scheme == "int8":
            return self.codes.float() * self.scale.float()
        if self.scheme in mx.FORMATS:
            return mx.decode(self.scales, self.codes, self.table.float(), self.scale_table.float(), self.shape)
        return fp8_values(self.codes, FP8[self.scheme], self._buffers.get("table")) * self.scale.float()

    @property
    def block(self) -> int:
        return block_size(self.scheme)

    def sliced(self, rows: slice, cols: slice, name: str = "the projection") -> "QuantLinear":
        """The projection of weight[rows, cols] (tensor parallelism's split), its codes and scales those
        of this one (views, not copies): `cols` must fall on block boundaries."""
        start, stop, _ = cols.indices(self.shape[1])
        if start % self.block or stop % self.block:
            raise HarnessError(f"{name}: {self.scheme} keeps {self.block} input columns per scale, and the "
                               f"split takes columns {start}..{stop - 1}")
        n_rows = len(range(*rows.indices(self.shape[0])))
        part = QuantLinear.__new__(QuantLinear)
        nn.Module.__init__(part)
        part.scheme, part.shape, part.fp8_decode = self.scheme, (n_rows, stop - start), self.fp8_decode
        for key, buf in self._buffers.items():
            if key.endswith("table"):
                piece = buf
            elif key == "scale":
                piece = buf[rows]
            else:
                piece = buf[rows, start // self.block:stop // self.block]
            part.register_buffer(key, piece.detach())  # a tensor object of its own, for its device trait
        return part

    def _q4_k_weight(self) -> torch.Tensor:
        low, mid, high = self.scales[..., 0:4], self.scales[..., 4:8], self.scales[..., 8:12]
        sc = torch.cat([low & 63, (high & 0x0F) | ((low >> 2) & 48)], dim=-1).float()  # [rows, blocks, 8]
        m = torch.cat([mid & 63, (high >> 4) | ((mid >> 2) & 48)], dim=-1).float()
        groups = self.codes.unflatten(-1, (4, 1, BLOCK))  # sub-blocks 2g (low nibbles) and 2g + 1 (high)
        q = torch.cat([groups & 0x0F, groups >> 4], dim=-2).flatten(-3, -2).float()  # [rows, blocks, 8, 32]
        # gguf's order of fp32 operations: (d * sc) * q - (dmin * m).
        w = (self.d.float() * sc)[..., None] * q - (self.m.float() * m)[..., None]
        return w.reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype))


def layout(model: Llama) -> dict[str, int]:
    """How many decoder-layer projections each format holds (a fallback shows here)."""
    schemes = [m.scheme for m in model.modules() if hasattr(m, "scheme")]
    return {s: schemes.count(s) for s in sorted(set(schemes))}


def projection_names(model: Llama | HFModel) -> list[str]:
    """Every decoder-layer projection's module path: "layers.<i>.<projection>", or in a transformers model every
    linear (and GPT-2's Conv1D) inside its blocks."""
    if getattr(model.config, "n_experts", 0) or "num_local_experts" in getattr(model.config, "options", {}):
        raise HarnessError("quantized variants of a mixture of experts are not supported yet (its experts are "
                           "stacked tensors, not projections)")
    if isinstance(model, HFModel):
        from transformers.pytorch_utils import Conv1D

        return [f"hf.{model.structure.blocks}.{i}.{name}" for i, block in enumerate(model.blocks)
                for name, m in block.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    return [f"layers.{i}.{path}" for i in range(len(model.layers)) for path in PROJECTIONS]


class Biased(nn.Module):
    """A bias-free projection and the bias it replaces (transformers' linears have them)."""

    def __init__(self, projection: nn.Module, bias: torch.Tensor):
        super().__init__()
        self.projection, self.bias = projection, nn.Parameter(bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x) + self.bias


def replace_projections(model: Llama, make: Callable[[str, torch.Tensor], nn.Module]) -> Llama:
    """`model` with each decoder-layer projection replaced by make(its path, its weight [out, in]), keeping its bias;
    a projection left on the meta device (a model built one part at a time: Variant.build) is not there to
    replace."""
    for path in projection_names(model):
        parent, name = path.rsplit(".", 1)
        block = model.get_submodule(parent)
        linear = getattr(block, name)
        if not linear.weight.is_meta:
            weight = linear.weight if isinstance(linear, nn.Linear) else linear.weight.t()  # Conv1D: [in, out]
            bias = getattr(linear, "bias", None)
            projection = make(path, weight)
            setattr(block, name, projection if bias is None else Biased(projection, bias))
    return model


def quantize(model: Llama, scheme: str, fp8_decode: str = "native") -> Llama:
    """`model` (fp32) with every decoder-layer projection replaced by its `scheme` QuantLinear."""
    return replace_projections(model, lambda _, weight: QuantLinear(weight, scheme, fp8_decode))
