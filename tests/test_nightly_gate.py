"""The nightly gate's tooling: `report diff` flips on a planted regression and not on clean reruns,
expected failures xfail and go stale loudly, records survive parallel writers and interruption, shards
partition the matrix and merge back into one report."""

import copy
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.checks import end_to_end
from harness.common.errors import STAGES, HarnessError
from harness.reporting import expected, merge, records, summary, trend
from harness.run import matrix
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.faults import weight_fault


def write_run(path, recs):
    for rec in recs:
        records.append(path / "records.jsonl", rec)
    return path


def harness_cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def toy_records():
    """Two clean end-to-end runs of the same configuration, and one with a weight planted in the
    compiled model only (a compiler regression, as far as the harness can tell)."""
    config = RunConfig("toy-gqa", "fp32")
    clean = [Case(config).run(end_to_end.check) for _ in range(2)]
    return clean, Case(config, fault=weight_fault(1, "v_proj")).run(end_to_end.check)


def test_clean_reruns_pass_the_gate(toy_records, tmp_path):
    (first, second), _ = toy_records
    old, new = write_run(tmp_path / "old", [first]), write_run(tmp_path / "new", [second])
    text, passed = trend.diff(old, new)
    assert passed and "no regression in 1 checks; 0 other change(s)" in text
    assert harness_cli("report", "diff", str(old), str(new)).returncode == 0


def test_planted_regression_flips_the_gate(toy_records, tmp_path):
    (first, _), faulty = toy_records
    assert not faulty["verdict"]["passed"]
    old, new = write_run(tmp_path / "run1", [first]), write_run(tmp_path / "run2", [faulty])
    text, passed = trend.diff(old, new)
    assert not passed
    assert "| end_to_end | toy-gqa-fp32-tp1 | passed -> failed |" in text
    proc = harness_cli("report", "diff", "--previous", str(new), "--out", str(tmp_path / "step-summary.md"))
    assert proc.returncode == 1 and "Regressions" in (tmp_path / "step-summary.md").read_text()


def ratio_record(ratio: float) -> dict:
    return {"kind": "end_to_end", "config": "m-fp16-tp1", "dtype": "fp16", "stages": {},
            "verdict": {"passed": ratio <= 1, "ratio": ratio}}


@pytest.mark.parametrize("old, new, regression", [
    (0.30, 0.31, False),  # within noise
    (0.30, 0.50, False),  # +0.2 of the budget: below the step
    (0.30, 0.60, True),   # +0.3 and 2x: a regression though it still passes
    (0.60, 0.20, False),  # better
])
def test_error_ratio_changes(old, new, regression):
    changes = trend.compare([ratio_record(old)], [ratio_record(new)])
    assert any(c.regression for c in changes) == regression, changes


def ppl_record(ppl_iree: float, n_tokens: int = 2040, window_se: float = 0.1) -> dict:
    engine = lambda name, ppl: {"name": name, "ppl": {"value": ppl, "se": 1.0}, "nll_window_se": window_se}
    return {"kind": "perplexity", "config": "m-fp16-tp1", "dtype": "fp16", "passed": True, "stages": {},
            "protocol": {"dataset_sha256": "x", "scheme": "llamacpp", "n_ctx": 512},
            "stats": {"n_tokens": n_tokens, "engines": [engine("eager", 20.0), engine("iree", ppl_iree)]}}


@pytest.mark.parametrize("new, regression", [
    (ppl_record(20.0 * (1 + 5e-4)), False),  # half the fp16 budget (1e-3 nats) on the same windows
    (ppl_record(20.0 * (1 + 3e-3)), True),   # 3 budgets on the same windows
    (ppl_record(20.0 * 1.05, n_tokens=4080), False),  # more windows: sampling moved it, within 3 SE
    (ppl_record(20.0 * 1.30, n_tokens=4080), True),   # beyond sampling
])
def test_perplexity_changes_use_the_records_uncertainty(new, regression):
    changes = trend.compare([ppl_record(20.0)], [new])
    assert any(c.regression for c in changes) == regression, changes


def test_a_known_failure_is_not_a_new_one():
    known = {"kind": "expected_failure", "config": "m-fp16-tp1", "check": "end_to_end", "stage": "numerics",
             "message": "x", "issue": "https://example.org/1"}
    changes = trend.compare([ratio_record(0.3)], [ratio_record(3.0), known])
    assert [(c.what, c.regression) for c in changes] == [("passed -> known failure", False)]


def test_expected_failures_file_is_validated(tmp_path):
    path = tmp_path / "expected.toml"
    path.write_text('[[expected]]\nconfig = "a*"\nstage = "link"\nerror = "x"\nissue = "u"\n')
    with pytest.raises(HarnessError, match=r"expected.toml: \[\[expected\]\] entry 1: stage 'link' is not one of"):
        expected.load(path)
    path.write_text('[[expected]]\nconfig = "a*"\nstage = "compile"\nerror = "x"\n')
    with pytest.raises(HarnessError, match="entry 1: .*missing 1 required positional argument: 'issue'"):
        expected.load(path)
    reviewed = expected.load(Path(__file__).parents[1] / "golden/expected_failures.toml")
    assert reviewed and all(e.issue and e.stage in STAGES for e in reviewed)


def run_suite(tmp_path, entries: str, *args):
    (tmp_path / "expected.toml").write_text(entries)
    return subprocess.run([sys.executable, "-m", "pytest", "suites/llama/test_end_to_end.py", "--model", "toy-gqa",
                           "--dtype", "fp32", "-q", "-rxX", "-p", "no:cacheprovider", "--report-dir", str(tmp_path),
                           "--run-name", "r", "--expected-failures", str(tmp_path / "expected.toml"), *args],
                          capture_output=True, text=True)


def test_expected_failure_xfails_and_is_reported(tmp_path):
    proc = run_suite(tmp_path, '[[expected]]\nconfig = "toy-gqa-*"\nstage = "compile"\n'
                     'error = "no-such-iree-flag"\nissue = "https://example.org/7"\n',
                     "--iree-compile-flag=--no-such-iree-flag")
    assert proc.returncode == 0 and "1 xfailed" in proc.stdout, proc.stdout
    assert "https://example.org/7" in (tmp_path / "r" / "summary.md").read_text()
    assert 'failures="0"' in (tmp_path / "r" / "junit.xml").read_text()


def test_unexpected_pass_fails(tmp_path):
    proc = run_suite(tmp_path, '[[expected]]\nconfig = "toy-gqa-fp32-tp1"\nstage = "numerics"\nerror = "."\n'
                     'issue = "https://example.org/8"\n')
    assert proc.returncode == 1 and "listed as an expected numerics failure" in proc.stdout, proc.stdout
    assert "unexpected pass" in (tmp_path / "r" / "summary.md").read_text()


def _append_many(path, worker):
    for i in range(200):
        records.append(path, {"kind": "x", "worker": worker, "i": i, "pad": "y" * 5000})


def test_a_planned_check_without_a_record_fails_the_gate(toy_records, tmp_path):
    """A configuration that crashed (or a killed worker) leaves its plan and no record: the diff fails on it,
    and so does a check the old run had that the new run lost without a plan saying why."""
    (first, second), _ = toy_records
    lost = copy.deepcopy(second) | {"config": "toy-gqa-fp16-tp1"}
    old = write_run(tmp_path / "old", [first, lost])
    planned = records.plan([("end_to_end", "toy-gqa-fp32-tp1"), ("end_to_end", "toy-gqa-fp16-tp1")])
    new = write_run(tmp_path / "new", [planned, second])
    text, passed = trend.diff(old, new)
    assert not passed and "| end_to_end | toy-gqa-fp16-tp1 | missing: planned, no record (crashed or killed?), " \
        "was passed |" in text
    unplanned = write_run(tmp_path / "unplanned", [second])
    text, passed = trend.diff(old, unplanned)
    assert not passed and "missing: no record, was passed" in text
    summary.write_summary(new)
    assert "❌ missing: end_to_end toy-gqa-fp16-tp1: planned, no record" in (new / "summary.md").read_text()


def test_merge_fails_on_a_missing_shard(toy_records, tmp_path):
    (first, second), _ = toy_records
    shard = lambda i: records.plan([("end_to_end", "toy-gqa-fp32-tp1")], f"{i}/3")  # noqa: E731
    runs = [write_run(tmp_path / f"s{i}", [shard(i), first]) for i in (1, 3)]
    with pytest.raises(HarnessError, match=r"^report merge: shard\(s\) 2/3 of 3: missing$"):
        merge.merge(tmp_path / "merged", runs)
    proc = harness_cli("report", "merge", str(tmp_path / "m"), *map(str, runs))
    assert proc.returncode == 2 and "shard(s) 2/3 of 3: missing" in proc.stderr
    # A run that is no shard (the nightly's sharktank export) joins complete shards, and does not stand in for one.
    extra = write_run(tmp_path / "extra", [records.plan([("decode", "sharktank-toy-fp32-tp1")]), second])
    with pytest.raises(HarnessError, match=r"shard\(s\) 2/3 of 3: missing"):
        merge.merge(tmp_path / "merged", [*runs, extra])
    whole = [*runs, write_run(tmp_path / "s2", [shard(2), first])]
    merge.merge(tmp_path / "merged", [*whole, extra])
    assert len(records.read(tmp_path / "merged" / "records.jsonl")) == 8


def test_diff_previous_fails_when_it_cannot_diff(tmp_path):
    proc = run_suite(tmp_path, "", "--diff-previous")  # the first run: nothing to diff against
    assert proc.returncode == 1, proc.stdout
    assert "report diff could not run" in (tmp_path / "r" / "diff.md").read_text()


def test_a_corrupt_record_is_named_and_a_torn_one_reported(tmp_path):
    path = tmp_path / "records.jsonl"
    records.append(path, {"kind": "x"})
    with open(path, "a") as f:
        f.write("{not json}\n")
    records.append(path, {"kind": "y"})
    with pytest.raises(HarnessError, match=rf"^{path}:2: not a JSON record"):
        records.read(path)
    assert harness_cli("report", "summary", str(tmp_path)).returncode == 2
    torn = tmp_path / "torn" / "records.jsonl"
    records.append(torn, {"kind": "x"})
    with open(torn, "a") as f:
        f.write('{"kind": "y", "con')
    assert records.read(torn) == [{"kind": "x"}]
    summary.write_summary(torn.parent)
    assert f"{torn}:2: a truncated last record" in (torn.parent / "summary.md").read_text()


def test_a_run_name_is_never_appended_to(tmp_path):
    write_run(tmp_path / "r", [{"kind": "x"}])
    proc = harness_cli("run", "--model", "toy-gqa", "--dtype", "fp32", "--report-dir", str(tmp_path), "--run-name", "r")
    assert proc.returncode == 2 and "already holds a run's records" in proc.stderr


def test_parallel_writers_and_a_torn_line(tmp_path):
    path = tmp_path / "records.jsonl"
    procs = [multiprocessing.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    with open(path, "a") as f:
        f.write('{"kind": "x", "worker": 9, "i"')  # a writer killed mid-line
    recs = records.read(path)
    assert sorted((r["worker"], r["i"]) for r in recs) == [(w, i) for w in range(4) for i in range(200)]


def test_shards_partition_the_matrix():
    ids = ["a", "a", None, "b", "c", "b", "d", None]
    shards = [matrix.in_shard(ids, (i, 3)) for i in range(3)]
    assert all(sum(column) == 1 for column in zip(*shards))  # every item in exactly one shard
    assert [x for x, k in zip(ids, shards[1]) if k] == ["b", "b"]
    assert [x for x, k in zip(ids, shards[0]) if k] == ["a", "a", None, "d", None]


def test_suite_runs_its_shard():
    out = subprocess.run([sys.executable, "-m", "pytest", "suites/llama/test_end_to_end.py", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "--shard", "2/2"], capture_output=True, text=True).stdout
    defaults = cli.parser().parse_args(["run"])
    configs = [c.id for c in matrix.run_configs(lambda dest: getattr(defaults, dest), "end_to_end", "llama")]
    assert [line.split("[")[1].rstrip("]") for line in out.splitlines() if "::" in line] == configs[1::2]


def test_merge_joins_shard_runs(toy_records, tmp_path):
    (first, _), _ = toy_records
    second = copy.deepcopy(first) | {"config": "toy-gqa-fp16-tp1"}
    merged = merge.merge(tmp_path / "merged", [write_run(tmp_path / "a", [first]), write_run(tmp_path / "b", [second])])
    text = merged.read_text()
    assert "toy-gqa-fp32-tp1" in text and "toy-gqa-fp16-tp1" in text
    assert "<table>" in (tmp_path / "merged" / "summary.html").read_text()
    assert len(records.read(tmp_path / "merged" / "records.jsonl")) == 2
    assert json.dumps(first, sort_keys=True, default=str) in (tmp_path / "merged" / "records.jsonl").read_text()
