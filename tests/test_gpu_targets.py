"""The GPU targets' flags must compile, even where no GPU is lent: a one-op program compiled for each GPU target
device with the flags the harness would pass (iree-compile 3.9.0 rejects the CUDA architecture sm_90 itself, which
this test would have caught)."""

import pytest

from harness.iree.compiler import compile_module
from harness.iree.targets import Target

PROGRAM = "func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> {\n  %b = arith.addf %a, %a : tensor<4xf32>\n  return %b : tensor<4xf32>\n}\n"


@pytest.mark.parametrize("device", ["hip", "cuda"])
def test_gpu_target_flags_compile(device, tmp_path):
    mlir = tmp_path / "add.mlir"
    mlir.write_text(PROGRAM)
    vmfb, _, _ = compile_module(mlir, Target(hal_target_device=device).compile_flags())
    assert vmfb.stat().st_size > 0


def test_sm_90_is_rejected_by_this_compiler(tmp_path):
    """Why the CUDA default is sm_80; when a compiler pin knows sm_90, this fails: make sm_90 the default again."""
    from harness.common.errors import StageFailure

    mlir = tmp_path / "add.mlir"
    mlir.write_text(PROGRAM)
    with pytest.raises(StageFailure, match="missing GPU target"):
        compile_module(mlir, Target(hal_target_device="cuda", cuda_target="sm_90").compile_flags())
