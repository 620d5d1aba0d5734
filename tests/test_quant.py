"""Weight-quantized variants: the eager dequantization reproduces each format bit for bit (checked against
gguf's dequantizer and ml_dtypes' fp8 rounding, which the harness does not use at run time), the shipped
SmolLM2 Q4_1 blocks survive the round trip byte for byte, and the compiled variant matches its eager
reference while the variant's own cost against fp32 shows."""

import gguf
import ml_dtypes
import numpy as np
import pytest
import torch

from harness import end_to_end
from harness.model.quant import FP8, QuantLinear, _gguf_blocks, fp8_table
from harness.numerics import metrics
from harness.pipeline import Pipeline, RunConfig
from harness.weights.gguf import raw_tensors
from harness.weights.packaged import shipped_smollm2_gguf


def weight(rows=48, cols=128, seed=0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1"])
def test_gguf_blocks_dequantize_as_gguf_does(scheme):
    w = weight()
    qtype = gguf.GGMLQuantizationType[scheme.upper()]
    want = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype)
    got = QuantLinear(w, scheme).dequantize()
    assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want)))


@pytest.mark.parametrize("name", ["layers.0.self_attn.q_proj.weight", "layers.29.mlp.down_proj.weight"])
def test_shipped_q4_1_blocks_round_trip_byte_for_byte(name):
    stored = raw_tensors(shipped_smollm2_gguf())[name]
    assert stored.type == "Q4_1"
    values = gguf.quants.dequantize(stored.data, gguf.GGMLQuantizationType.Q4_1).reshape(stored.shape)
    packed = _gguf_blocks(torch.from_numpy(np.ascontiguousarray(values)), "q4_1")
    assert np.array_equal(packed.reshape(stored.data.shape), stored.data)


def test_int8_per_channel():
    w = weight()
    q = QuantLinear(w, "int8")
    scale = np.abs(w.numpy()).max(axis=1, keepdims=True) / np.float32(127)
    codes = np.round(w.numpy() / scale).astype(np.int8)
    assert np.array_equal(q.codes.numpy(), codes) and np.abs(codes).max() == 127
    assert torch.equal(q.dequantize(), torch.from_numpy(codes.astype(np.float32) * scale))


@pytest.mark.parametrize("scheme, ml_type, fmax", [("fp8e4m3fn", ml_dtypes.float8_e4m3fn, 448.0),
                                                   ("fp8e4m3fnuz", ml_dtypes.float8_e4m3fnuz, 240.0)])
def test_fp8_per_channel_rounds_as_ml_dtypes(scheme, ml_type, fmax):
    w = weight()
    q = QuantLinear(w, scheme)
    scale = np.abs(w.numpy()).max(axis=1, keepdims=True) / np.float32(fmax)
    codes = (w.numpy() / scale).astype(ml_type)
    assert np.array_equal(q.codes.numpy(), codes.view(np.uint8))
    assert torch.equal(q.dequantize(), torch.from_numpy(codes.astype(np.float32) * scale))
    assert torch.finfo(FP8[scheme]).max == fmax


@pytest.mark.parametrize("scheme", list(FP8))
def test_fp8_table_decode_is_the_native_cast(scheme):
    """The table CPU programs look fp8 codes up in holds exactly what the native cast gives, NaN codes
    included, and decodes a layer's codes to the same weight."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    native = codes.view(FP8[scheme]).float()
    assert torch.allclose(fp8_table(FP8[scheme]), native, rtol=0, atol=0, equal_nan=True)
    assert native.isnan().sum() == (2 if scheme == "fp8e4m3fn" else 1)  # the format's NaN codes, looked up too
    w = weight()
    assert torch.equal(QuantLinear(w, scheme, "table").dequantize(), QuantLinear(w, scheme, "native").dequantize())


@pytest.fixture(scope="module")
def fp32_logits():
    p = Pipeline(RunConfig("toy-gqa", "fp32"))
    return p.eager.logits(p.tokens)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1", "int8", "fp8e4m3fn", "fp8e4m3fnuz"])
def test_compiled_variant_matches_its_eager_reference(scheme, fp32_logits):
    """Compiled vs eager isolates the compiler (within the fp32 policy); the variant vs fp32 is the
    format's own cost, far larger."""
    p = Pipeline(RunConfig("toy-gqa", scheme))
    rec = end_to_end.check(p)
    assert rec["verdict"]["passed"], rec["verdict"]["reason"]
    cost = metrics.rmse(p.eager.logits(p.tokens), fp32_logits)
    assert cost > 100 * rec["metrics"]["compiled_vs_eager"]["rmse"]


def test_format_costs_order_as_their_precision(fp32_logits):
    """Per-weight rounding error: 8-bit codes (Q8_0 per 32-block, int8 per row) < fp8's 3 mantissa bits
    (~3.6 % relative) < Q4_1's 16 levels per block."""
    cost = {}
    for scheme in ("q8_0", "int8", "fp8e4m3fn", "fp8e4m3fnuz", "q4_1"):
        p = Pipeline(RunConfig("toy-gqa", scheme))
        cost[scheme] = metrics.rmse(p.eager.logits(p.tokens), fp32_logits)
    assert max(cost["q8_0"], cost["int8"]) < min(cost["fp8e4m3fn"], cost["fp8e4m3fnuz"]), cost
    assert max(cost["fp8e4m3fn"], cost["fp8e4m3fnuz"]) < cost["q4_1"], cost
