"""Every cached artifact is keyed on everything that shapes it: a module on the compiler's own bytes (not its
version string), the resolved CPU name and features (not the word "host"); a failing call's inputs are kept
per module, parameters, function and inputs, never in one shared file."""

import numpy as np
import pytest

from harness.common.errors import StageFailure
from harness.iree import compiler
from harness.iree.targets import Target, host_cpu
from harness.run.case import Case
from harness.run.config import RunConfig

PROGRAM = "func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> {\n  return %a : tensor<4xf32>\n}\n"


def test_module_key_is_the_compilers_bytes(tmp_path, monkeypatch):
    mlir = tmp_path / "f.mlir"
    mlir.write_text(PROGRAM)
    flags = Target().compile_flags()
    first, _, _ = compiler.compile_module(mlir, flags)
    # Unique per run, so a rerun does not find the last run's module under the same fake identity.
    monkeypatch.setattr(compiler, "compiler_identity", lambda path="": f"another build, same version {tmp_path}")
    other, _, cached = compiler.compile_module(mlir, flags)
    assert other != first and not cached
    other.unlink()


def test_host_is_resolved_in_the_flags():
    name, features = host_cpu()
    flags = Target().compile_flags()
    assert f"--iree-llvmcpu-target-cpu={name}" in flags and f"--iree-llvmcpu-target-cpu-features={features}" in flags
    assert not any(f.endswith("=host") for f in flags) and name != "host"


def test_failure_inputs_are_kept_per_call():
    module = Case(RunConfig("toy-gqa", "fp32")).candidate.module("forward")
    paths = []
    for value in (1, 2):
        with pytest.raises(StageFailure) as failure:
            module("forward", np.full((1, 3), value, dtype=np.int64))  # the program takes [1, 128]
        paths.append(failure.value.reproducer.split("--input=@")[1])
        assert np.load(paths[-1])[0, 0] == value
    assert paths[0] != paths[1]
