"""Bisection finds faults planted in the compiled model only: a weight of layer k scaled in the
compiled module's parameter archive, or SiLU replaced by GELU in layer k's exported program. It must
name layer k and the sub-block, for the first, a middle and the last layer, and find nothing in a
clean model."""

import pytest

from harness.checks import bisect, layers
from harness.numerics.tolerance import Verdict
from harness.reference.llama.model import SUB_BLOCKS
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.faults import op_fault, row_fault, weight_fault

TOY_FAULTS = [weight_fault(0, "q_proj"), weight_fault(0, "attn_norm"), weight_fault(1, "v_proj"),
              weight_fault(1, "o_proj"), op_fault(1), weight_fault(2, "up_proj"), weight_fault(2, "down_proj")]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("fault", TOY_FAULTS, ids=[f.id for f in TOY_FAULTS])
def test_toy_fault_is_localised(fault, dtype, tmp_path):
    rec = Case(RunConfig("toy-tp8", dtype), fault=fault).run(bisect.bisect, artifacts=tmp_path)
    assert (rec["layer"], rec["sub_block"]) == (f"layer_{fault.layer}", fault.sub_block), bisect.format_bisect(rec)
    assert rec["fault"] == fault.id
    assert (tmp_path / f"layer_{fault.layer}_input.npy").exists()
    assert f"--function=layer_{fault.layer}" in rec["reproducer"]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("sub_block", ["q_proj", "up_proj", "down_proj"])
def test_toy_single_row_fault_is_localised(sub_block, dtype):
    """One output row of one projection x1.25 (one channel): fp16 / bf16 judge every sub-block's error per
    channel, so the layer check fails at that layer and bisection names the projection."""
    rec = Case(RunConfig("toy-tp8", dtype), fault=row_fault(1, sub_block, 5, 1.25)).run(bisect.bisect)
    assert (rec["layer"], rec["sub_block"]) == ("layer_1", sub_block), bisect.format_bisect(rec)


@pytest.mark.slow
@pytest.mark.nightly  # 46 s; the toys' single-row faults above run in the default tier
def test_smollm2_fp16_single_row_fault_is_caught_and_localised():
    """x1.25 on one output row of layer 15's down_proj drowns in the residual stream at the layer's output
    (0.1 of the aggregate budget there) and stands out at the projection's own output, per channel."""
    case = Case(RunConfig("smollm2-135m", "fp16"), fault=row_fault(15, "down_proj", 100, 1.25))
    rec = case.run(layers.compare)
    layer = next(r for r in rec["parts"] if r["part"] == "layer_15" and r["mode"] == "isolated")
    assert rec["first_failure"]["isolated"] == "layer_15" and not layer["passed"]
    assert layer["sub_block"] == "down_proj" and layer["measure"] in ("channel", "gain"), layer["reason"]
    assert "of channel 100 " in layer["reason"], layer["reason"]
    found = case.run(bisect.bisect)
    assert (found["layer"], found["sub_block"]) == ("layer_15", "down_proj"), bisect.format_bisect(found)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_clean_toy_has_no_divergence(dtype):
    rec = Case(RunConfig("toy-tp8", dtype)).run(bisect.bisect)
    assert not rec["diverged"] and rec["propagated_first_failure"] is None, bisect.format_bisect(rec)


@pytest.mark.slow
@pytest.mark.parametrize("fault", [pytest.param(weight_fault(0, "q_proj"), marks=pytest.mark.nightly),
                                   weight_fault(29, "down_proj")], ids=lambda f: f.id)
def test_smollm2_fault_is_localised(fault):
    rec = Case(RunConfig("smollm2-135m", "fp32"), fault=fault).run(bisect.bisect)
    assert (rec["layer"], rec["sub_block"]) == (f"layer_{fault.layer}", fault.sub_block), bisect.format_bisect(rec)
    # One isolated pass up to the faulty layer, then its sub-blocks: never a compile per layer.
    assert rec["compiles"] <= 1
    assert rec["invocations"] <= fault.layer + 3


def _parts(failing: set[str]) -> list[layers.Part]:
    return [layers.Part(name, "isolated", Verdict(name not in failing, "", 2.0 if name in failing else 0.5, {}, {}))
            for name in SUB_BLOCKS]


def test_an_absorbed_excess_is_not_the_culprit():
    # rope_q over budget but attention fine: the excess was absorbed, blame down_proj.
    culprit = bisect.first_propagating_failure(_parts({"rope_q", "down_proj", "mlp_residual"}))
    assert culprit.name == "down_proj"
    assert bisect.first_propagating_failure(_parts({"rope_q"})) is None
    assert bisect.first_propagating_failure(_parts({"mlp_residual"})).name == "mlp_residual"
