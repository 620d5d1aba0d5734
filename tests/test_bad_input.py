"""Bad input and failed stages: one line that names the option, file or stage, never a traceback; a failed
stage keeps a reproducer and the other configurations go on."""

import json
import subprocess
import sys

import pytest
import torch

from harness.checks import end_to_end
from harness.common.errors import HarnessError, StageFailure
from harness.iree.runtime import create_devices
from harness.iree.targets import Target
from harness.reference.weights.packaged import shipped_smollm2_gguf
from harness.run.case import Case
from harness.run.config import RunConfig


def harness_cli(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", "harness", *args, "--report-dir", str(tmp_path)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def truncated_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "truncated.gguf"
    path.write_bytes(shipped_smollm2_gguf().read_bytes()[:50_000_000])
    return path


@pytest.mark.parametrize("args, says", [
    (["--model", "nope"], "--model: unknown model 'nope'"),
    (["--model", "toy-gqa", "--dtype", "fp7"], "--dtype: unknown dtype 'fp7'"),
    (["--model", "/no/such/file.gguf"], "--model /no/such/file.gguf: no such GGUF file"),
    (["--model", "toy-gqa", "--tp", "two"], "--tp: 'two' is not a positive integer"),
    (["--model", "toy-gqa", "--iree-device", "hip://0"], "cannot run modules compiled for --iree-hal-target-device=local"),
])
def test_cli_bad_input_is_one_line(args, says, tmp_path):
    assert_bad_input(harness_cli("run", *args, tmp_path=tmp_path), says)


def assert_bad_input(proc, says):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("command, args, says", [
    ("run", ["--model", "TRUNCATED", "--dtype", "fp32"], "not a readable GGUF file (truncated or corrupt?)"),
    ("run", ["--model", "toy-gqa", "--dtype", "fp32", "--seq-len", "0"], "--seq-len 0: must be a positive number"),
    ("run", ["--model", "toy-gqa", "--dtype", "fp32", "--seq-len", "1000"],
     "--seq-len 1000: toy-gqa takes at most 512"),
    ("run", ["--model", "toy-gqa", "--dtype", "fp32", "--threads", "-1"], "--threads -1: must be a positive count"),
    ("run", ["--model", "toy-gqa", "--dtype", "fp32", "--iree-device", "local-task://999"], "cannot create device"),
    ("perplexity", ["--model", "smollm2-135m", "--dtype", "fp32", "--ppl-n-ctx", "9000"],
     "--ppl-n-ctx 9000: smollm2-135m takes at most 8192 tokens"),
    ("perplexity", ["--model", "smollm2-135m", "--dtype", "fp32", "--windows", "0"], "--ppl-windows 0: must be"),
])
def test_every_promised_exit_status_2(command, args, says, truncated_gguf, tmp_path):
    """The README promises exit status 2 and one line for bad input: a corrupt model file, an option value
    that cannot work, a device that cannot be created; before any export where the option alone says it."""
    args = [str(truncated_gguf) if a == "TRUNCATED" else a for a in args]
    proc = harness_cli(command, *args, tmp_path=tmp_path)
    assert_bad_input(proc, says)
    if "--seq-len" in args or "--threads" in args:  # refused before any export
        recs = [json.loads(line) for f in tmp_path.glob("*/records.jsonl") for line in f.read_text().splitlines()]
        assert not any(r.get("stages") for r in recs)


def test_suite_bad_model_fails_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/llama/test_end_to_end.py", "--model", "nope",
                           "--dtype", "fp32", "-q", "-p", "no:cacheprovider", "--report-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "--model: unknown model 'nope'" in proc.stdout and "Traceback" not in proc.stdout


def test_device_that_cannot_be_created():
    with pytest.raises(HarnessError, match=r"^--iree-device 'local-task://999': cannot create device"):
        create_devices("local-task://999", 1, threads=torch.get_num_threads())


def test_compile_failure_is_a_failed_stage_with_a_reproducer():
    p = Case(RunConfig("toy-gqa", "fp32", target=Target(extra_flags=("--no-such-iree-flag",))))
    with pytest.raises(StageFailure) as failure:
        p.run(end_to_end.check, baseline=p.tp1())
    assert failure.value.stage == "compile"
    assert "--no-such-iree-flag" in str(failure.value).splitlines()[0]
    assert failure.value.reproducer.split()[0].endswith("iree-compile")
    assert "--no-such-iree-flag" in failure.value.reproducer
    assert p.candidate.stages["export"].status == "passed" and p.candidate.stages["compile"].status == "failed"


def test_cli_goes_on_after_a_failed_configuration(tmp_path):
    proc = harness_cli("run", "--model", "toy-gqa", "--dtype", "fp32,fp16", "--iree-compile-flag=--no-such-iree-flag",
                       tmp_path=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.count("FAIL") == 2  # both configurations were tried
    summary = next(tmp_path.glob("*/summary.md")).read_text()
    assert "## Failures and reproducers" in summary and summary.count("iree-compile") >= 2
