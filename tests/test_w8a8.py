"""W8A8 variants: calibration records what the projections see, the fp8 activation rounding that CPU
programs compute in integer arithmetic equals torch's cast (and ml_dtypes') on every kind of value, each
projection computes the formula of its scheme (checked against a separate numpy computation), and the
compiled int8 variant matches its eager reference, unsharded and at TP 2, end to end and part by part, where a
projection truncating its activation codes is caught and bisected."""

import ml_dtypes
import numpy as np
import pytest
import torch

from harness.checks import SERVING_CHECKS, bisect, end_to_end, layers
from harness.common.errors import StageFailure
from harness.reference.llama.config import TOY_GQA, TOY_TP8
from harness.reference.llama.model import Llama
from harness.run.case import Case
from harness.run.config import RunConfig, Target
from harness.transforms import w8a8
from harness.transforms.faults import code_fault
from harness.transforms.quantize import FP8, layout
from harness.transforms.shard import shard
from harness.transforms.w8a8 import (
    W8A8Linear,
    calibrate,
    calibration_batches,
    fp8_round,
    quantize_w8a8,
)

ML_DTYPES = {"fp8e4m3fn": ml_dtypes.float8_e4m3fn, "fp8e4m3fnuz": ml_dtypes.float8_e4m3fnuz}


def toy(config=TOY_GQA) -> Llama:
    torch.manual_seed(0)
    return Llama(config).eval()


@pytest.mark.parametrize("fmt", list(FP8))
def test_fp8_round_is_the_cast(fmt):
    """Every finite fp8 value, every midpoint between neighbours (ties go to even), values just either
    side of the midpoints, subnormals, zero and random values across the range."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8[fmt]).float()
    grid = values[torch.isfinite(values)].unique()
    mid = (grid[1:] + grid[:-1]) / 2
    g = torch.Generator().manual_seed(0)
    spread = (2 * torch.rand(100_000, generator=g) - 1) * torch.rand(100_000, generator=g) ** 8 * grid.max()
    x = torch.cat([grid, mid, torch.nextafter(mid, torch.tensor(np.inf)), torch.nextafter(mid, torch.tensor(-np.inf)),
                   spread])
    want = x.to(FP8[fmt]).float()
    assert torch.equal(fp8_round(x, fmt), want)
    assert np.array_equal(want.numpy(), x.numpy().astype(ML_DTYPES[fmt]).astype(np.float32))


def test_calibration_records_each_projections_input_range():
    model = toy()
    batches = calibration_batches(None, TOY_GQA.vocab_size)
    stats = calibrate(model, batches)
    assert len(stats) == TOY_GQA.n_layers * 7
    with torch.no_grad():
        x = torch.cat([model.layers[0].input_layernorm(model.embed(t))[0] for t in batches])
    assert torch.equal(stats["layers.0.self_attn.q_proj"], x.abs().amax(0))
    assert stats["layers.1.mlp.down_proj"].shape == (TOY_GQA.ffn_dim,)
    assert not model.layers[0].self_attn.q_proj._forward_pre_hooks  # hooks removed


def numpy_smoothquant(w, amax, x):
    """SmoothQuant int8 W8A8 written out in numpy (fp64 where it does not matter, int64 accumulation)."""
    s = np.sqrt(np.maximum(amax, 1e-5) / np.maximum(np.abs(w).max(0), 1e-5))
    ws, xs = w * s, x / s
    w_scale = np.abs(ws).max(1) / 127
    x_scale = (amax / s).max() / 127
    wq = np.round(ws / w_scale[:, None]).astype(np.int64)
    xq = np.clip(np.round(xs / x_scale), -127, 127).astype(np.int64)
    return (xq @ wq.T) * x_scale * w_scale, xq, wq


def test_int8_projection_is_smoothquant():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g) * 0.05
    x = torch.randn(10, 64, generator=g) * torch.linspace(0.1, 20, 64)  # outlier channels, as SmoothQuant's
    amax = x.abs().amax(0) * 0.9  # some activations beyond the calibrated range: they saturate
    lin = W8A8Linear(w, amax, "w8a8_int8")
    want, xq, wq = numpy_smoothquant(w.double().numpy(), amax.double().numpy(), x.double().numpy())
    # fp32 (torch) and fp64 (numpy) may round a value on a code boundary apart: by one code, rarely.
    for got, ref in ((lin.codes.numpy(), wq), (lin._activation_codes(x).numpy(), xq)):
        diff = np.abs(got.astype(np.int64) - ref)
        assert diff.max() <= 1 and diff.mean() < 1e-2
    assert np.abs(xq).max() == 127
    np.testing.assert_allclose(lin(x).numpy(), want, rtol=0, atol=2e-2 * np.abs(want).max())


@pytest.mark.parametrize("fmt", list(FP8))
@pytest.mark.parametrize("decode", ["native", "table"])
def test_fp8_projection_multiplies_fp8_values(fmt, decode):
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(48, 64, generator=g), torch.randn(10, 64, generator=g) * 3
    amax = x.abs().amax(0) * 0.8
    lin = W8A8Linear(w, amax, f"w8a8_{fmt}", decode)
    fmax, dtype = float(ml_dtypes.finfo(ML_DTYPES[fmt]).max), ML_DTYPES[fmt]
    x_scale, w_scale = amax.max().numpy() / np.float32(fmax), np.abs(w.numpy()).max(1) / np.float32(fmax)
    xq = np.clip(x.numpy() / x_scale, -fmax, fmax).astype(dtype).astype(np.float32)
    wq = (w.numpy() / w_scale[:, None]).astype(dtype).astype(np.float32)
    want = (xq @ wq.T) * (x_scale * w_scale)
    np.testing.assert_allclose(lin(x).numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("tp", [1, 2])
def test_compiled_int8_variant_matches_its_eager_reference(tp):
    """Static scales from calibration on eager fp32, the i32 matmul of int8 codes in the program; at TP 2
    each device quantizes its columns with the whole input's scale. Judged against eager's own
    sensitivity to rounding noise at its quantizers (w8a8.py), which a wrong scale or a wrongly rounded
    code would exceed by far (test_noisy_eager_budget_passes_the_program_and_catches_a_wrong_rounding)."""
    p = Case(RunConfig("toy-tp8", "w8a8_int8", tp=tp))
    rec = p.run(end_to_end.check, baseline=p.tp1())
    assert rec["verdict"]["passed"], rec["verdict"]["reason"]
    assert "vs eager" in rec["verdict"]["reason"] and rec["verdict"]["ratio"] > 0
    assert layout(p.reference.eager.model) == {"w8a8_int8": TOY_TP8.n_layers * 7}


@pytest.mark.parametrize("scheme", ["w8a8_int8", "w8a8_fp8e4m3fn"])
def test_sharded_w8a8_computes_the_unsharded_one(scheme):
    model = toy(TOY_TP8)
    stats = calibrate(model, calibration_batches(None, TOY_TP8.vocab_size))
    model = quantize_w8a8(model, scheme, stats)
    tokens = torch.randint(TOY_TP8.vocab_size, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = model(tokens), shard(model, 2)(tokens)
    # The all-reduce reassociates the sum; an activation code may then flip by one step downstream.
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()
    assert layout(shard(model, 2)) == {scheme: 2 * TOY_TP8.n_layers * 7}


@pytest.mark.parametrize("model", ["toy-tp8", "hf-phi3"])
def test_noisy_eager_budget_passes_the_program_and_catches_a_wrong_rounding(model):
    """The W8A8 end-to-end budget (eager against itself with rounding-sized noise at the quantizers, plus the
    unquantized model's fp32 rounding budget) passes the compiled program and eager with smaller noise, and
    fails activation codes truncated instead of rounded in the model's middle projection (toy 1.5x, phi3 830x
    the budget on these inputs: the calibration's weakest was 1.02x, transforms/w8a8.py). hf-phi3: its noise
    flips no code, and the compiled program's fp32 rounding alone (1.3e-7) exceeded the 1-ulp floor that the
    rounding budget replaces."""
    p = Case(RunConfig(model, "w8a8_int8"))
    rec = p.run(end_to_end.check)
    assert rec["verdict"]["passed"] and "fp32 rounding budget" in rec["verdict"]["reason"], rec["verdict"]["reason"]
    reference, tokens = p.reference, p.inputs.tokens
    eager = reference.eager.logits(tokens)
    noisy = w8a8.noisy_runs(reference.eager.model, lambda: reference.eager.logits(tokens))
    fp32, fp64 = reference.fp32.logits(tokens), reference.fp32_oracle.logits(tokens)

    def verdict(result):
        return p.policy.judge_noisy(result, eager, noisy, fp32, fp64)

    with w8a8.activation_noise(reference.eager.model, 2.0 ** -22, seed=5):  # a few ulp
        assert verdict(reference.eager.logits(tokens)).passed
    with w8a8.truncated_codes(reference.eager.model):
        wrong = verdict(reference.eager.logits(tokens))
    assert not wrong.passed, wrong.reason


def test_serving_checks_are_recorded_skips():
    """W8A8 is judged against a noisy eager with its fp32 rounding budget, end to end and part by part; the serving
    checks, which judge each call without it, are skips naming why, and the plain judgement is refused."""
    case = Case(RunConfig("toy-tp8", "w8a8_int8"))
    for check in SERVING_CHECKS:
        assert "a judgement per serving call is not built" in case.unsupported(check), check
    assert case.unsupported("layers") is None and case.unsupported("end_to_end") is None
    x = torch.zeros(4)
    with pytest.raises(ValueError, match=r"judged against a noisy eager \(Policy.judge_noisy\)"):
        case.policy.judge(x, x, x)


# iree-compile 3.9 with data tiling crashes (exit 245) on the W8A8 layers program at TP 2
# (test_iree_compiles_the_sharded_w8a8_layers_program).
NO_DATA_TILING = Target(extra_flags=("--iree-opt-data-tiling=false",))


@pytest.mark.parametrize("model, sub_block, tp", [
    ("toy-tp8", "down_proj", 1),
    pytest.param("hf-qwen2", "mlp", 1, marks=pytest.mark.nightly),  # 14 s each; the toy at TP 1 in the default tier
    pytest.param("toy-tp8", "down_proj", 2, marks=pytest.mark.nightly)])
def test_layer_check_passes_the_program_and_bisects_truncated_codes(model, sub_block, tp):
    """Part by part, each part's budget is eager's under noise at its quantizers plus the part's fp32 rounding
    budget: the clean program passes every part in both modes, and one projection truncating its codes in the
    compiled layer 1 (at TP 2, in both devices' slices) is pinned on its sub-block, far over budget (toy 9.2x,
    qwen2 3.8x; end to end the same fault in the toy is 1.9x)."""
    config = RunConfig(model, "w8a8_int8", tp=tp, target=NO_DATA_TILING if tp > 1 else Target())
    clean = Case(config).run(layers.compare)
    assert clean["passed"], [p["reason"] for p in clean["parts"] if not p["passed"]]
    assert {p["mode"] for p in clean["parts"]} == {"isolated", "propagated"}
    rec = Case(config, fault=code_fault(1, sub_block)).run(bisect.bisect)
    assert (rec["layer"], rec["sub_block"]) == ("layer_1", sub_block), bisect.format_bisect(rec)
    assert rec["layer_row"]["ratio"] > 2, bisect.format_bisect(rec)


@pytest.mark.nightly  # a reproducer of a known IREE defect (13 s)
@pytest.mark.xfail(strict=True, raises=StageFailure, reason="iree-compile 3.9 llvm-cpu with data tiling crashes "
                   "(exit 245) on the W8A8 layers program at TP 2; it compiles without data tiling, and at TP 1")
def test_iree_compiles_the_sharded_w8a8_layers_program():
    Case(RunConfig("toy-tp8", "w8a8_int8", tp=2)).candidate.layers(64)
