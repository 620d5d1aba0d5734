"""OCP microscaling variants (transforms/mx.py): the encoding follows the specification's conversion (worked examples;
every block against a scalar re-derivation with ml_dtypes' element casts), the in-graph decode by tables gives those
values bit for bit, the formats' costs order as their bits, and the compiled variants match their eager references."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from harness.checks import end_to_end
from harness.numerics import metrics
from harness.reference.llama.config import TOY_TP8
from harness.reference.llama.model import Llama
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms import mx
from harness.transforms.quantize import QuantLinear, layout, quantize
from harness.transforms.shard import shard

SCHEMES = list(mx.FORMATS)


def weight(rows=24, cols=128, seed=0) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05
    w[3, 40] = 1.7  # one block with an outlier, as real weights have
    w[5, 64:96] = 0  # an all-zero block
    return w


def values(scheme: str, block: list[float]) -> list[float]:
    """The dequantized values of one 32-element block (padded with zeros)."""
    row = torch.tensor([block + [0.0] * (32 - len(block))])
    return QuantLinear(row, scheme).dequantize()[0, :len(block)].tolist()


def test_worked_examples_of_the_conversion():
    # FP4 E2M1 {0, .5, 1, 1.5, 2, 3, 4, 6}: amax 5 -> X = 2^(2 - 2) = 1; 5 ties between 4 and 6 -> 4 (even),
    # 2.5 between 2 and 3 -> 2, 0.25 between 0 and 0.5 -> 0.
    assert values("mxfp4_e2m1", [5.0, 2.5, -0.25, 0.75]) == [4.0, 2.0, -0.0, 1.0]
    # FP8 E4M3: amax 1000 -> X = 2^(9 - 8) = 2; 1000 / 2 = 500 saturates at 448 -> 896.
    assert values("mxfp8_e4m3", [1000.0, 3.0]) == [896.0, 3.0]
    # MXINT8: amax 1 -> X = 1; codes rint(v * 64): -0.3 -> -19 -> -0.296875; 1.0 -> 64.
    assert values("mxint8", [1.0, -0.3]) == [1.0, -19 / 64]
    # FP6 E3M2 (max 28 = 1.75 * 2^4): amax 0.1 = 1.6 * 2^-4 -> X = 2^(-4 - 4); 0.1 / X = 25.6 -> 24 (spacing 4).
    assert values("mxfp6_e3m2", [0.1]) == [24 * 2.0 ** -8]
    assert values("mxfp6_e2m3", [0.0, 0.0]) == [0.0, 0.0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_block_is_the_specifications_conversion(scheme):
    """Each block re-derived on its own in Python floats: X = 2^(floor(log2 amax) - emax) and each element the
    element type's rounding of v / X, saturated (ml_dtypes' cast, or rint for MXINT8)."""
    element, emax = mx.FORMATS[scheme]
    w = weight()
    got = QuantLinear(w, scheme).dequantize().numpy()
    for r, c in np.ndindex(w.shape[0], w.shape[1] // 32):
        block = w[r, 32 * c:32 * (c + 1)].numpy()
        amax = float(np.abs(block).max())
        x = 2.0 ** max(math.floor(math.log2(amax)) - emax, -126) if amax else 2.0 ** -126
        if element is None:
            want = [x * max(-127, min(127, round(float(v) / x * 64))) / 64 for v in block]
        else:
            top = float(ml_dtypes.finfo(element).max)
            want = [x * float(np.float32(max(-top, min(top, float(v) / x))).astype(element)) for v in block]
        assert got[r, 32 * c:32 * (c + 1)].tolist() == want, (r, c)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_decode_tables_are_ml_dtypes_values(scheme):
    table, scales = mx.element_table(scheme), mx.scale_table()
    element, _ = mx.FORMATS[scheme]
    if element is None:
        assert table.tolist() == [((c + 128) % 256 - 128) / 64 for c in range(256)]
    else:
        assert len(table) == 2 ** ml_dtypes.finfo(element).bits
        finite = table[table.isfinite()]  # E4M3's two NaN codes are never written (saturation)
        assert float(finite.abs().max()) == float(ml_dtypes.finfo(element).max)
    assert scales[:255].tolist() == [2.0 ** (e - 127) for e in range(255)] and math.isnan(scales[255])
    q = QuantLinear(weight(), scheme)
    assert q.scales.dtype == q.codes.dtype == torch.uint8 and int(q.scales.max()) < 255


def test_costs_order_as_the_formats_mantissa_bits():
    """Weight error on Gaussian blocks orders as the element's significand: MXINT8's 7 bits < the 3 of E4M3 and
    E2M3, alike (under a block scale E4M3's wider exponent buys little) < E3M2's 2 < E2M1's 1."""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    error = {s: metrics.rmse(QuantLinear(w, s).dequantize(), w) for s in SCHEMES}
    three_bits = error["mxfp8_e4m3"], error["mxfp6_e2m3"]
    assert error["mxint8"] < min(three_bits) and max(three_bits) < error["mxfp6_e3m2"] < error["mxfp4_e2m1"], error
    assert max(three_bits) < 1.1 * min(three_bits), error


@pytest.mark.parametrize("scheme, tp", [("mxfp4_e2m1", 2), ("mxint8", 8)])
def test_sharded_mx_variant_computes_the_unsharded_one(scheme, tp):
    torch.manual_seed(0)
    model = quantize(Llama(TOY_TP8), scheme)
    tokens = torch.randint(TOY_TP8.vocab_size, (1, 32))
    with torch.no_grad():
        want, got = model(tokens), shard(model, tp)(tokens)
    torch.testing.assert_close(got, want, rtol=0, atol=5 * torch.finfo(torch.float32).eps * want.abs().max())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_compiled_mx_variant_matches_its_eager_reference(scheme):
    case = Case(RunConfig("toy-gqa", scheme))
    rec = case.run(end_to_end.check)
    assert rec["verdict"]["passed"], rec["verdict"]["reason"]
    assert set(layout(case.reference.eager.model)) == {scheme}
