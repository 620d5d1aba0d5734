"""--tp through the harness: the configuration matrix, runtime device lists, sizes a model cannot take
(skipped with the constraint named), and bisection of a sharded model. tests/test_shard.py covers the
sharded model itself; the suites' default matrix runs toy-tp8 at TP 1, 2, 8, the nightly one SmolLM2 at TP 3 too."""

import subprocess
import sys

import pytest

from harness import cli
from harness.checks import bisect
from harness.common.errors import HarnessError
from harness.iree.runtime import device_uris
from harness.iree.targets import Target
from harness.run import matrix
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.faults import op_fault, weight_fault
from harness.transforms.shard import UnfitTP


def matrix_ids(**given) -> list[str]:
    defaults = vars(cli.parser().parse_args(["run"]))  # every option's default
    return [c.id for c in matrix.run_configs(lambda dest: {**defaults, **given}[dest])]


def test_default_matrix_has_the_tp_configurations():
    ids = matrix_ids()
    assert {"toy-tp8-fp32-tp2", "toy-tp8-fp32-tp8"} <= set(ids)
    assert "smollm2-135m-fp32-tp3" in {c.id for c in matrix.run_configs(vars(cli.parser().parse_args(["run"])).get,
                                                                      nightly=True)}
    assert {f"{m}-{d}-tp1" for m in ("toy-tp8", "smollm2-135m") for d in ("fp32", "fp16", "bf16")} <= set(ids)


def test_tp_alone_crosses_with_the_default_models_and_dtypes():
    assert matrix_ids(tp=["8"]) == [f"{m}-{d}-tp8" for m in ("toy-tp8", "smollm2-135m") for d in ("fp32", "fp16", "bf16")]
    assert matrix_ids(model=["toy-tp8"], dtype=["bf16"], tp=["1,2", "8"]) == [
        "toy-tp8-bf16-tp1", "toy-tp8-bf16-tp2", "toy-tp8-bf16-tp8"]


@pytest.mark.parametrize("uri, count, want", [
    ("local-task", 1, ["local-task"]),
    ("local-sync", 3, ["local-sync"] * 3),
    ("hip", 8, [f"hip://{i}" for i in range(8)]),
    ("cuda", 2, ["cuda://0", "cuda://1"]),
    ("hip://4,hip://5", 2, ["hip://4", "hip://5"]),
])
def test_device_uris(uri, count, want):
    assert device_uris(uri, count) == want


def test_device_list_of_the_wrong_length_is_one_line():
    with pytest.raises(HarnessError, match=r"^--iree-device 'hip://0,hip://1': 2 devices listed, the module "
                                           r"needs 8 \(--tp 8\)$"):
        device_uris("hip://0,hip://1", 8)


def test_default_devices():
    assert [Target().device(n) for n in (1, 2, 4, 8)] == ["local-task"] * 3 + ["local-sync"]
    assert Target(hal_target_device="hip").device(8) == "hip"
    assert Target(device_uri="local-task").device(2) == "local-task"
    with pytest.raises(HarnessError, match="cannot run modules compiled for --iree-hal-target-device=hip"):
        Target(hal_target_device="hip", device_uri="hip://0,local-task")


def test_a_size_the_heads_cannot_take_names_the_constraint():
    with pytest.raises(UnfitTP, match=r"^--tp 8: toy-gqa has 4 query heads, not divisible by 8$"):
        Case(RunConfig("toy-gqa", "fp32", tp=8)).weights


def test_suite_skips_an_unfit_size_and_reports_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/llama/test_end_to_end.py", "--model", "toy-gqa",
                           "--dtype", "fp32", "--tp", "3", "-q", "-rs", "-p", "no:cacheprovider", "--report-dir",
                           str(tmp_path), "--run-name", "r"], capture_output=True, text=True)
    assert proc.returncode == 5 or "1 skipped" in proc.stdout, proc.stdout
    assert "--tp 3: toy-gqa has 4 query heads, not divisible by 3" in proc.stdout
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "## Skipped configurations" in summary and "toy-gqa-fp32-tp3" in summary


@pytest.mark.parametrize("fault", [weight_fault(1, "k_proj"), weight_fault(2, "down_proj"), op_fault(1)],
                         ids=lambda f: f.id)
def test_bisection_localises_a_fault_in_a_sharded_model(fault, tmp_path):
    """Planted before sharding, the fault reaches every rank's slice of the weight (or every rank's
    activation); bisection must still name the unsharded layer and sub-block, whose taps gather the
    ranks' values."""
    rec = Case(RunConfig("toy-tp8", "fp32", tp=2), fault=fault).run(bisect.bisect, artifacts=tmp_path)
    assert (rec["layer"], rec["sub_block"]) == (f"layer_{fault.layer}", fault.sub_block), bisect.format_bisect(rec)
    assert rec["tp"] == 2 and rec["reproducer"].count("--device=local-task") == 2


def collected(*args) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "suites/llama", "--collect-only", "-q", "-p",
                          "no:cacheprovider", *args], capture_output=True, text=True).stdout
    return {line.split("::")[1] for line in out.splitlines() if "::" in line}


def test_nightly_matrix_is_the_quick_one_plus_every_check_at_tp():
    quick, nightly = collected(), collected("--nightly")
    assert quick < nightly
    assert {f"test_{check}[{config}]" for check in ("end_to_end", "layers", "perplexity")
            for config in ("smollm2-135m-fp32-tp3", "toy-tp8-fp32-tp8", "smollm2-135m-bf16-tp1")} <= nightly


def test_ppl_dtypes_bf16_makes_its_test():
    assert "test_perplexity[smollm2-135m-bf16-tp1]" in collected("--ppl-dtypes", "fp32,bf16")
