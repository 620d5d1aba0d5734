"""Goldens end to end on a short text whose whole file is 6 windows (SmolLM2 fp32): --update-golden checks
eager against transformers before writing, is never gated against what it wrote, and refuses a golden that
transformers contradicts; a later run of a prefix is gated against the same windows, and a weight planted
in the compiled model fails that gate while eager's still passes."""

import pytest

from harness.checks import perplexity
from harness.common.errors import HarnessError
from harness.data.dataset import BUNDLED_PATH
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.faults import weight_fault


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text(BUNDLED_PATH.read_text(encoding="utf-8")[:14000])
    return path


def evaluate(case, short_text, golden_dir, n_windows=None, **kwargs):
    windows = perplexity.windows(case.reference, n_windows, dataset=str(short_text))
    return case.run(perplexity.evaluate, inputs=windows, golden_dir=golden_dir, **kwargs)


def golden_gates(rec):
    return {g["details"].get("engine", ""): g for g in rec["gates"] if g["gate"] == "golden"}


@pytest.mark.slow
def test_golden_written_checked_then_gating(short_text, tmp_path, hf_smollm2):
    case = Case(RunConfig("smollm2-135m", "fp32"))
    case.reference.transformers = lambda: hf_smollm2[0]  # loaded once for the session
    written = evaluate(case, short_text, tmp_path, update_golden=True, command="test")
    assert written["stats"]["n_windows"] == 6 == written["protocol"]["total_windows"]
    (only,) = golden_gates(written).values()
    assert only["verdict"] == "ungated" and "not gated against itself" in only["message"]
    assert "transformers" in only["message"] and written["golden"]

    again = evaluate(case, short_text, tmp_path, n_windows=3)
    assert {e: g["verdict"] for e, g in golden_gates(again).items()} == {"eager": "pass", "iree": "pass"}

    faulty = Case(RunConfig("smollm2-135m", "fp32"), fault=weight_fault(15, "down_proj"))
    planted = golden_gates(evaluate(faulty, short_text, tmp_path, n_windows=3))
    assert (planted["eager"]["verdict"], planted["iree"]["verdict"]) == ("pass", "fail"), planted


@pytest.mark.slow
def test_update_golden_refuses_what_transformers_contradicts(short_text, tmp_path, hf_smollm2):
    case = Case(RunConfig("smollm2-135m", "fp32"))
    model = hf_smollm2[0]
    original = model.model.norm.weight.data.clone()
    case.reference.transformers = lambda: model
    model.model.norm.weight.data *= 1.01  # an implementation that disagrees by ~1 %
    try:
        with pytest.raises(HarnessError, match="refusing to write smollm2-135m's fp32 golden"):
            evaluate(case, short_text, tmp_path, update_golden=True)
    finally:
        model.model.norm.weight.data = original
    assert not list(tmp_path.glob("*.json"))
