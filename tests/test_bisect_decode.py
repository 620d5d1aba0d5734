"""Bisection through decode (checks/serving.py bisect_decode) on a decode-only defect planted at layer 1.

Known failure, IREE 3.9.0 llvm-cpu (Xeon, 2026-12-05): with data tiling (`--iree-opt-data-tiling`, on in the
llvm-cpu target's flags) the "serving_layers" program, one decoder layer of a decode step per entry point (h an
argument, the cache updated in place), drops its attention mask: a clean layer attends to every slot of the
pages in its table (toy-tp8 fp32 layer 0: attention max abs 0.76 off eager, and within 5e-7 of eager with the
mask removed; q/k/v/RoPE and the cache writes right). With `--iree-opt-data-tiling=false` the same MLIR is right
to 5e-7, and the same layer inside the whole decode_bs1 program is right with data tiling on; torch.export's
program of the entry point is exact in torch. So bisection compiles that program without data tiling
(iree/targets.py BISECT_DECODE_FLAGS) and localises; with it, it would name layer 0. Reproducer:
`bisect_decode(..., artifacts=DIR)` writes the iree-run-module command and its inputs (the cache as it was before
the call); recompile the module's MLIR with and without `--iree-opt-data-tiling=false` and compare output 7
(the attention sub-block). The expected failure is strict: it fails when IREE is fixed.
"""

import dataclasses

import pytest

from harness.checks import serving
from harness.iree.targets import Target
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.faults import paged_fault

KNOWN = "IREE 3.9 llvm-cpu data tiling drops the one-layer decode program's attention mask (module docstring)"


def bisect(defect: str, tmp_path, target: Target = Target()):
    case = Case(RunConfig("toy-tp8", "fp32", target=target), fault=paged_fault(1, defect))
    return case.run(serving.bisect_decode, inputs=case.token_inputs(serving.QUICK.tokens), artifacts=tmp_path)


@pytest.mark.parametrize("defect", ["write_offset", "stale_read"])
def test_decode_only_defect_is_localised_to_step_layer_and_sub_block(defect, tmp_path):
    rec = bisect(defect, tmp_path)
    assert (rec["step"], rec["layer"], rec["sub_block"]) == (0, "layer_1", "attention")
    assert [row["passed"] for row in rec["layers"]][:1] == [True], "layer 0, clean, passes"
    assert "step 0 (position 24), layer_1, sub-block attention; reproducer: " in serving.format_bisect_decode(rec)


@pytest.mark.nightly  # a reproducer of a known IREE defect (13 s)
@pytest.mark.xfail(strict=True, reason=KNOWN)
def test_with_data_tiling_the_one_layer_decode_program_localises_too(tmp_path):
    rec = bisect("stale_read", tmp_path, Target(extra_flags=("--iree-opt-data-tiling",)))
    assert rec["layer"] == "layer_1"


def test_bisection_finds_the_failing_step_and_writes_a_reproducer(tmp_path):
    rec = bisect("stale_read", tmp_path)
    assert rec["diverged"] and rec["step"] == 0 and rec["decode_failure"].startswith("decode step 0")
    assert "iree-run-module" in rec["reproducer"] and "decode_layer_1" in rec["reproducer"]
    assert list(tmp_path.glob("decode_layer_1_input4.npy")), "the cache input of the reproducer"
