"""--iree-compile: a compiler of the user's own build judges the model. Stood in for by a wrapper script that
logs each call and runs the pip compiler (a real second build is out of reach here): the harness must run the
given executable, key its cache on that file's bytes, name it in reproducers and in the record, and refuse a
path that cannot run in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.checks import end_to_end
from harness.common.errors import HarnessError, StageFailure
from harness.iree import compiler
from harness.iree.targets import Target
from harness.run.case import Case
from harness.run.config import RunConfig

MLIR = "func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> {\n  return %a : tensor<4xf32>\n}\n"


def wrapper(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "my-build" / "iree-compile"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def logging_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "calls.log"
    real = compiler.compiler_path()
    return wrapper(tmp_path, f'echo "$@" >> {log}\nexec {sys.executable} {real} "$@"'), log


def test_the_users_compiler_runs_keys_the_cache_and_is_named_in_the_record(tmp_path):
    script, log = logging_wrapper(tmp_path)
    case = Case(RunConfig("toy-tp8", "fp32", target=Target(compiler=str(script))))
    rec = case.run(end_to_end.check)
    assert rec["verdict"]["passed"], rec["verdict"]["reason"]
    assert ".mlir" in log.read_text(), "the wrapper compiled the program"
    assert rec["compiler"]["path"] == str(script.resolve())
    assert rec["compiler"]["sha256"] == compiler.compiler_identity(str(script)) != compiler.compiler_identity()
    assert "--iree-compile" in rec["command"] and str(script) in rec["command"]


def test_two_compilers_never_share_a_cached_module(tmp_path):
    script, _ = logging_wrapper(tmp_path)
    mlir = tmp_path / "m.mlir"
    mlir.write_text(MLIR)
    flags = Target().compile_flags()
    theirs, _, _ = compiler.compile_module(mlir, flags, str(script))
    ours, _, _ = compiler.compile_module(mlir, flags)
    assert theirs != ours


def test_a_failing_compile_names_the_users_binary_in_its_reproducer(tmp_path):
    script = wrapper(tmp_path, 'echo "m.mlir:1:1: error: boom" >&2\nexit 1')
    mlir = tmp_path / "m.mlir"
    mlir.write_text(MLIR)
    with pytest.raises(StageFailure) as failure:
        compiler.compile_module(mlir, Target().compile_flags(), str(script))
    assert "error: boom" in str(failure.value)
    assert failure.value.reproducer.startswith(str(script.resolve()))


@pytest.mark.parametrize("make", [lambda p: p / "absent", lambda p: p])
def test_a_compiler_that_cannot_run_is_refused_in_one_line(make, tmp_path):
    with pytest.raises(HarnessError, match=r"^--iree-compile .*: not an executable file$"):
        Target(compiler=str(make(tmp_path)))


def test_the_cli_refuses_a_bad_compiler_with_exit_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--model", "toy-tp8", "--dtype", "fp32",
                           "--iree-compile", str(tmp_path / "absent")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("not an executable file"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
