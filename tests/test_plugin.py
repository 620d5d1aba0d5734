"""The harness as an installed pytest plugin, used from a repository of a user's own: a ten-line test file
in a temporary directory outside the project, with no conftest, gets the options, the configuration
matrix and the fixtures from the `pytest11` entry point alone; and a wheel (a non-editable install)
carries the data the harness needs."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from harness.reporting import records

PROJECT = Path(__file__).resolve().parents[1]

USER_TEST = """
import pytest

from harness.checks import end_to_end


def test_my_model(case, write_record, golden_dir):
    rec = case.run(end_to_end.check)
    write_record(rec)
    assert rec["verdict"]["passed"], rec["verdict"]["reason"]
    assert case.config.id == "toy-gqa-fp32-tp1" and golden_dir.name == "golden"


@pytest.mark.nightly
def test_heavy(case, write_record):
    write_record(case.run(end_to_end.check))
"""


def test_plugin_in_a_users_repository(pytester, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(PROJECT / ".cache"))  # the project's compiled toys
    pytester.makepyfile(test_mine=USER_TEST)
    assert not list(pytester.path.glob("conftest.py"))
    result = pytester.runpytest_subprocess("--model", "toy-gqa", "--dtype", "fp32", "--report-dir", "out",
                                           "--run-name", "r", "-p", "no:cacheprovider", "-rs")
    # Outside its tier a nightly test is skipped, visibly, and left out of the plan; with --nightly it runs.
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*harness report: out/r/summary.md*", "SKIPPED*nightly tier: run with --nightly"])
    recs = [json.loads(line) for line in (pytester.path / "out/r/records.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in recs] == ["plan", "end_to_end"] and recs[1]["config"] == "toy-gqa-fp32-tp1"
    assert recs[0]["checks"] == [["my_model", "toy-gqa-fp32-tp1"]] and not records.missing(recs)
    pytester.runpytest_subprocess("--nightly", "-k", "heavy", "--model", "toy-gqa", "--dtype", "fp32",
                                  "--report-dir", "out").assert_outcomes(passed=1)
    assert "--iree-hal-target-device" in pytester.runpytest_subprocess("--help").stdout.str()


def test_wheel_carries_its_data(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ next to pyproject.toml
    shutil.copytree(PROJECT / "harness", source / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "pyproject.toml", source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"harness/data/wikitext2/wiki.test.raw", "harness/data/wikitext2/README.md",
            "harness/lmeval/tasks/wikitext_local.yaml", "harness/lmeval/tasks/wikitext_local.py"} <= names
    assert "[pytest11]" in entry_points and "harness.pytest_plugin" in entry_points
