"""The harness as a pytest plugin (registered under the `pytest11` entry point: installing the package makes
it available to any repository's tests): its options, the configuration matrix, fixtures and the run's
report.

Every test that takes a `run_config` argument is parametrized over --model x --dtype x --tp (or, with none
of them given, the default matrix of harness/run/matrix.py, whose entries name the checks they run:
`test_<check>`, and whose models' family is the suite's: suites/<family>/, llama for a test elsewhere); its id
names the configuration (e.g. `smollm2-135m-bf16-tp1`). Fixtures: `case` (the
configuration's reference, candidate, inputs and policy, run/case.py), `write_record`, `run_dir`,
`conclude` (how a check ends under the expected failures), `golden_dir` and `nightly`. Records go to
`<report-dir>/<run>/records.jsonl`, and `summary.md` is written when the session ends (by the controller
alone under pytest-xdist).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.common.errors import HarnessError, StageFailure
from harness.reference.families import FAMILIES
from harness.reporting import expected, records, summary, trend
from harness.run import matrix, options
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.shard import UnfitTP


def pytest_addoption(parser):
    options.add_options(parser.getgroup("harness", "IREE LLM numerics harness").addoption, options.PLUGIN_OPTIONS)


def _project_path(config, value: str) -> Path:
    """A path option, relative to pytest's rootdir (the project) unless absolute."""
    return config.rootpath / value


@pytest.hookimpl(tryfirst=True)  # before junitxml reads its path
def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker writes into its controller's run directory
        run_dir = config.workerinput["harness_run_dir"]
    else:
        try:
            run_dir = str(records.new_run_dir(Path(config.getoption("report_dir")), config.getoption("run_name"),
                                              config.getoption("resume")))
        except HarnessError as e:
            raise pytest.UsageError(str(e)) from None
        if not config.option.xmlpath:
            config.option.xmlpath = str(Path(run_dir) / "junit.xml")
        # The run exists from its start, whatever check writes first (a layer check writes its plot
        # before its record); xdist workers receive the made directory.
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    config.harness_run_dir = Path(run_dir)
    config.addinivalue_line("markers", "nightly: the heavy tier's test, skipped (visibly) without --nightly")
    config.harness_cases = {}
    try:
        options.apply_threads(config.getoption("threads"))
        config.harness_expected = expected.load(_project_path(config, config.getoption("expected_failures")))
        config.harness_shard = config.getoption("shard") and matrix.parse_shard(config.getoption("shard"))
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_configure_node(node):
    node.workerinput["harness_run_dir"] = str(node.config.harness_run_dir)


def pytest_generate_tests(metafunc):
    if "run_config" not in metafunc.fixturenames:
        return
    get = metafunc.config.getoption
    check = None if get("nightly") else metafunc.function.__name__.removeprefix("test_")  # e.g. "layers"
    suite = metafunc.definition.path.parent.name  # suites/<family>/test_*.py
    if metafunc.definition.path.parent.parent.name == "suites" and suite not in FAMILIES:
        raise pytest.UsageError(f"suites/{suite}: not a model family's suite ({', '.join(FAMILIES)}): "
                                "add the family to harness/reference/families.py")
    # A test outside a family's suite (a user's) takes the llama family's default matrix, and any model named.
    family = suite if suite in FAMILIES else "llama" if matrix.uses_default_matrix(get) else None
    try:
        configs = matrix.run_configs(get, check, family, get("nightly"))
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None
    metafunc.parametrize("run_config", configs, ids=[c.id for c in configs], scope="session")


def _run_config(item) -> RunConfig | None:
    """The item's configuration; None for a test without one, or a check the matrix gives none (an empty
    parameter set, which pytest skips: suites/hf's layer check outside the nightly tier)."""
    config = getattr(item, "callspec", None) and item.callspec.params.get("run_config")
    return config if isinstance(config, RunConfig) else None


def _outside_tier(item) -> bool:
    """Whether the item is marked `nightly` and this run is not the nightly tier."""
    return item.get_closest_marker("nightly") is not None and not item.config.getoption("nightly")


def pytest_collection_modifyitems(config, items):
    """`--shard i/N` keeps the i-th of N interleaved slices of the configurations (tests without one go
    to shard 1). Under `pytest -n N --dist loadgroup`, a configuration's tests stay on one worker: they
    share its loaded weights and compiled modules. A test marked `nightly` is skipped without --nightly."""
    tier = pytest.mark.skip(reason="nightly tier: run with --nightly")
    for item in items:
        if _outside_tier(item):
            item.add_marker(tier)
    if config.harness_shard:
        keep = matrix.in_shard([c and c.id for c in map(_run_config, items)], config.harness_shard)
        config.hook.pytest_deselected(items=[item for item, k in zip(items, keep) if not k])
        items[:] = [item for item, k in zip(items, keep) if k]
    for item in items:
        run_config = _run_config(item)
        if run_config is not None:
            item.add_marker(pytest.mark.xdist_group(run_config.id))


def pytest_collection_finish(session):
    """The run's plan: every (check, configuration) it sets out to check, a nightly-tier test outside that tier
    not (under xdist each worker writes the same plan; a reader takes their union)."""
    if session.config.option.collectonly:
        return
    checks = [(item.function.__name__.removeprefix("test_"), rc.id) for item in session.items
              if (rc := _run_config(item)) is not None and not _outside_tier(item)]
    if checks:
        records.append(session.config.harness_run_dir / "records.jsonl",
                       records.plan(checks, session.config.getoption("shard")))


@pytest.fixture(scope="session")
def run_dir(pytestconfig) -> Path:
    return pytestconfig.harness_run_dir


@pytest.fixture(scope="session")
def nightly(pytestconfig) -> bool:
    """Whether this is the nightly tier (--nightly): longer decodes, batches and generations, every check."""
    return pytestconfig.getoption("nightly")


@pytest.fixture(scope="session")
def golden_dir(pytestconfig) -> Path:
    return _project_path(pytestconfig, pytestconfig.getoption("golden_dir"))


@pytest.fixture
def case(run_config, pytestconfig, write_record) -> Case:
    """The configuration's case, shared by the suites in this process (they run one configuration at a
    time; only the current one is kept, which bounds memory). Bad input (unknown model or dtype,
    unreadable weights) fails the test with its one-line message; a TP size the model's heads cannot take
    (e.g. --tp 8 crossed with a model of 9 heads) skips it, recorded."""
    cases = pytestconfig.harness_cases
    if run_config not in cases:
        cases.clear()
        cases[run_config] = _open(run_config, write_record)
    c = cases[run_config]
    if isinstance(c, UnfitTP):
        pytest.skip(str(c))
    if isinstance(c, HarnessError):
        pytest.fail(str(c), pytrace=False)
    return c


def _open(config, write_record) -> Case | HarnessError:
    """The configuration's case with its weights loaded (so that a bad model file fails with its own
    message), or the error that stops it."""
    try:
        c = Case(config)
        c.weights
        return c
    except UnfitTP as e:
        write_record({"kind": "skipped", "config": config.id, "reason": str(e)})
        return e
    except HarnessError as e:
        return e


@pytest.fixture
def write_record(run_dir, request):
    """Appends a record, stamped with the test that wrote it: the plan names tests, and a user's
    `test_my_model` that records an end_to_end check accounts for its planned ("my_model", config)."""
    test = request.node.function.__name__.removeprefix("test_")

    def write(record: dict) -> None:
        records.append(run_dir / "records.jsonl", {**record, "test": test})
    return write


class Conclusion:
    """How a suite's check of a configuration ends, under golden/expected_failures.toml
    (reporting/expected.py): failures that entries cover xfail (recorded with their issue), others fail, and
    a pass that an entry covers fails as an unexpected pass."""

    def __init__(self, entries: list[expected.Expected], case: Case, check: str, write_record):
        self.entries, self.case, self.check, self.write = entries, case, check, write_record

    def attempt(self, check):
        """`check()`'s record; a failed stage is recorded and concluded (xfailed if expected, else failed),
        bad input recorded and failed with its one line."""
        try:
            return check()
        except StageFailure as e:
            self.write(self.case.record(self.check, failure={"stage": e.stage, "message": str(e)}))
            self([(e.stage, f"{e}\nreproducer: {e.reproducer}")])
        except HarnessError as e:
            self.write(self.case.record(self.check, failure={"message": str(e)}))
            pytest.fail(f"{self.case.config.id}: {e}", pytrace=False)

    def __call__(self, failures: list[tuple[str, str]]) -> None:
        """`failures`: (stage, message) pairs; none means the check passed."""
        cid = self.case.config.id
        if failures:
            target = self.case.config.target.name
            hits = [expected.match(self.entries, cid, self.check, target, stage, msg) for stage, msg in failures]
            uncovered = [msg for (_, msg), hit in zip(failures, hits) if hit is None]
            if uncovered:
                pytest.fail(f"{cid}: " + "\n".join(uncovered), pytrace=False)
            for (stage, msg), hit in zip(failures, hits):
                self.write({"kind": "expected_failure", "config": cid, "check": self.check, "stage": stage,
                            "message": msg.splitlines()[0], "issue": hit.issue})
            pytest.xfail(f"expected failure ({hits[0].issue}): {failures[0][1].splitlines()[0]}")
        stale = expected.covering(self.entries, cid, self.check, self.case.config.target.name)
        if stale:
            self.write({"kind": "unexpected_pass", "config": cid, "check": self.check, "issue": stale[0].issue})
            pytest.fail(f"{cid}: {self.check} passed, but {self.check} of {stale[0].config} is listed as an "
                        f"expected {stale[0].stage} failure ({stale[0].issue}): remove the entry", pytrace=False)


@pytest.fixture
def conclude(request, case, write_record) -> Conclusion:
    """The check's conclusion; a check the candidate cannot take (a sharktank export has no per-layer program)
    is skipped, recorded with the reason."""
    check = request.function.__name__.removeprefix("test_")
    reason = case.unsupported(check)
    if reason:
        write_record({"kind": "skipped", "config": case.config.id, "check": check, "reason": f"{check}: {reason}"})
        pytest.skip(f"{check}: {reason}")
    return Conclusion(request.config.harness_expected, case, check, write_record)


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):
        return
    run_dir = session.config.harness_run_dir
    if not (run_dir / "records.jsonl").exists():
        return
    try:
        summary.write_summary(run_dir)
        failed = bool(records.missing(records.read(run_dir / "records.jsonl")))
    except HarnessError as e:  # corrupt records: nothing can be said of this run
        (run_dir / "summary.md").write_text(f"# Harness run `{run_dir.name}`\n\n❌ {e}\n")
        failed = True
    if session.config.getoption("diff_previous"):
        try:
            text, passed = trend.diff(trend.previous_run(run_dir), run_dir)
        except HarnessError as e:  # no previous run, unreadable records: the gate did not run, so it fails
            text, passed = f"❌ report diff could not run: {e}", False
        (run_dir / "diff.md").write_text(text)
        failed |= not passed
    if failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    run_dir = config.harness_run_dir
    if (run_dir / "diff.md").exists():
        terminalreporter.write_sep("-", "harness: diff against the previous run")
        terminalreporter.write_line((run_dir / "diff.md").read_text())
    if (run_dir / "summary.md").exists():
        terminalreporter.write_sep("-", f"harness report: {run_dir / 'summary.md'} (and summary.html)")
