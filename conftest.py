"""pytest options, the configuration matrix and the run's report directory.

Every test that takes a `run_config` argument is parametrized over --model x --dtype x --tp (or, with
none of them given, the default matrix of harness/options.py, whose entries name the checks they run:
`test_<check>`); its id names the configuration (e.g. `smollm2-135m-bf16-tp1`). Records go to `<report-dir>/<run>/records.jsonl`
and `summary.md` is written when the session ends (by the controller alone under pytest-xdist).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from harness import options, records, report
from harness.errors import HarnessError
from harness.model.shard import UnfitTP
from harness.pipeline import Pipeline


def pytest_addoption(parser):
    options.add_options(parser.getgroup("harness", "IREE LLM numerics harness").addoption,
                        options.ALL_OPTIONS + options.PERPLEXITY_OPTIONS + options.SUITE_OPTIONS)


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker writes into its controller's run directory
        run_dir = config.workerinput["harness_run_dir"]
    else:
        name = config.getoption("run_name") or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = str(Path(config.getoption("report_dir")) / name)
    config.harness_run_dir = Path(run_dir)
    config.harness_pipelines = {}


def pytest_configure_node(node):
    node.workerinput["harness_run_dir"] = str(node.config.harness_run_dir)


def pytest_generate_tests(metafunc):
    if "run_config" not in metafunc.fixturenames:
        return
    get = metafunc.config.getoption
    check = None if get("nightly") else metafunc.function.__name__.removeprefix("test_")  # e.g. "layers"
    try:
        configs = options.run_configs(get, check)
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None
    metafunc.parametrize("run_config", configs, ids=[c.id for c in configs], scope="session")


def pytest_collection_modifyitems(items):
    """Under `pytest -n N --dist loadgroup`, keep a configuration's tests on one worker: they share its
    loaded weights and compiled modules."""
    for item in items:
        config = getattr(item, "callspec", None) and item.callspec.params.get("run_config")
        if config is not None:
            item.add_marker(pytest.mark.xdist_group(config.id))


@pytest.fixture(scope="session")
def run_dir(pytestconfig) -> Path:
    return pytestconfig.harness_run_dir


@pytest.fixture
def pipeline(run_config, pytestconfig) -> Pipeline:
    """The configuration's pipeline, shared by the suites in this process (they run one configuration at
    a time; only the current one is kept, which bounds memory). Bad input (unknown model or dtype,
    unreadable weights) fails the test with its one-line message."""
    cache = pytestconfig.harness_pipelines
    if run_config not in cache:
        cache.clear()
        cache[run_config] = _open(run_config, pytestconfig.harness_run_dir)
    p = cache[run_config]
    if isinstance(p, UnfitTP):
        pytest.skip(str(p))
    if isinstance(p, HarnessError):
        pytest.fail(str(p), pytrace=False)
    return p


def _open(config, run_dir: Path) -> Pipeline | HarnessError:
    """The configuration's pipeline with its weights loaded (so that a bad model file fails with its own
    message), or the error that stops it. A TP size the model cannot take (e.g. --tp 8 crossed with a
    model of 9 heads) is recorded as a skipped configuration."""
    try:
        p = Pipeline(config)
        p.weights
        return p
    except UnfitTP as e:
        records.append(run_dir / "records.jsonl", {"kind": "skipped", "config": config.id, "reason": str(e)})
        return e
    except HarnessError as e:
        return e


@pytest.fixture
def write_record(run_dir):
    def write(record: dict) -> None:
        records.append(run_dir / "records.jsonl", record)
    return write


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):
        return
    run_dir = session.config.harness_run_dir
    if (run_dir / "records.jsonl").exists():
        report.write_summary(run_dir)


def pytest_terminal_summary(terminalreporter, config):
    summary = config.harness_run_dir / "summary.md"
    if summary.exists():
        terminalreporter.write_sep("-", f"harness report: {summary}")
