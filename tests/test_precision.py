"""The fp32 emulation of fp16/bf16 eager (harness/reference/precision.py) against real torch low precision.

Two low-precision runs that round in a different order differ pointwise by about as much as either
differs from the exact result, so the emulation is held to the statistic that matters: its error
against the fp64 oracle is the same as real low-precision eager's error, within 10%.
"""

import pytest
import torch

from harness.numerics import metrics
from harness.reference.eager import EagerModel, Reference
from harness.reference.llama.model import rms_normalize
from harness.reference.precision import emulate, full_precision
from harness.reference.registry import resolve


@pytest.mark.parametrize("model", ["toy-gqa", "toy-tp8"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_emulation_matches_real_low_precision(model, dtype):
    weights = resolve(model).load_weights()
    tokens = torch.randint(0, weights.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
    reference = Reference(model, weights, dtype)
    oracle = reference.oracle.logits(tokens)
    emulated = reference.eager.logits(tokens)
    native = Reference(model, weights, dtype, mode="native").eager.logits(tokens)
    fp32 = EagerModel(reference.variant.build(torch.float32)).logits(tokens)
    native_err, emulated_err = metrics.rmse(native, oracle), metrics.rmse(emulated, oracle)
    assert emulated_err == pytest.approx(native_err, rel=0.1)
    # ... and the emulation really rounds: fp32 arithmetic on the same rounded weights is far closer.
    assert metrics.rmse(fp32, oracle) < emulated_err / 100


def test_emulate_rounds_op_outputs_but_not_inside_full_precision():
    x = torch.tensor([1.0 + 2**-12])  # not representable in bf16 (8 significand bits)
    with emulate(torch.bfloat16):
        assert (x * 1.0).item() == 1.0
        assert full_precision(lambda t: t * 1.0 - 1.0)(x).item() == pytest.approx(2**-12)
    assert (x * 1.0).item() == 1.0 + 2**-12


def test_rms_normalize_stays_fp32_in_emulation():
    x = torch.randn(4, 64)
    with emulate(torch.bfloat16):
        emulated = rms_normalize(x, 1e-5)
    exact = rms_normalize(x, 1e-5)
    assert torch.equal(emulated, exact.to(torch.bfloat16).float())
