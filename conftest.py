"""pytest options, the configuration matrix and the run's report directory.

Every test that takes a `run_config` argument is parametrized over --model x --dtype x --tp; its id
names the configuration (e.g. `smollm2-135m-bf16-tp1`). Records go to `<report-dir>/<run>/records.jsonl`
and `summary.md` is written when the session ends (by the controller alone under pytest-xdist).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from harness import records, report
from harness.errors import HarnessError
from harness.iree.targets import Target
from harness.models import DEFAULT_MODELS
from harness.pipeline import Pipeline, RunConfig


def _csv(values: list[str] | None, default: tuple[str, ...]) -> list[str]:
    return [v for value in (values or default) for v in value.split(",") if v]


def pytest_addoption(parser):
    g = parser.getgroup("harness", "IREE LLM numerics harness")
    g.addoption("--model", action="append", help=f"model name, .gguf path, HF dir or hf:<id>; repeatable or "
                f"comma-separated (default: {','.join(DEFAULT_MODELS)})")
    g.addoption("--dtype", action="append", help="fp32, fp16, bf16; repeatable (default: all three)")
    g.addoption("--tp", action="append", help="tensor-parallel sizes; repeatable (default: 1)")
    g.addoption("--tensor-parallelism-size", dest="tp", action="append", help="alias of --tp (sharktank's name)")
    g.addoption("--seq-len", type=int, default=128, help="tokens per end-to-end check (default 128)")
    g.addoption("--iree-device", default="local-task", help="runtime device URI (default local-task; "
                "e.g. hip://0, cuda)")
    g.addoption("--iree-hal-target-device", default="local", help="local, hip or cuda (default local)")
    g.addoption("--iree-rocm-target", "--iree-hip-target", dest="iree_rocm_target", default="gfx942",
                help="AMD GPU architecture for hip (default gfx942)")
    g.addoption("--iree-cuda-target", default="sm_90", help="NVIDIA architecture for cuda (default sm_90)")
    g.addoption("--iree-cpu", default="host", help="--iree-llvmcpu-target-cpu for local (default host)")
    g.addoption("--iree-compile-flag", action="append", default=[], help="extra iree-compile flag; repeatable")
    g.addoption("--eager-reference", choices=("emulated", "native"), default="emulated",
                help="fp16/bf16 eager reference: fp32 emulation rounding at op boundaries (default) or "
                "real torch low precision (~100x slower on CPUs without fp16/bf16 units)")
    g.addoption("--report-dir", default="reports", help="where runs write (default reports/)")
    g.addoption("--run-name", default=None, help="run directory name (default: a timestamp)")


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


def _target(config) -> Target:
    return Target(
        hal_target_device=config.getoption("iree_hal_target_device"), cpu=config.getoption("iree_cpu"),
        rocm_target=config.getoption("iree_rocm_target"), cuda_target=config.getoption("iree_cuda_target"),
        device_uri=config.getoption("iree_device"), extra_flags=tuple(config.getoption("iree_compile_flag")))


def pytest_generate_tests(metafunc):
    if "run_config" not in metafunc.fixturenames:
        return
    opt = metafunc.config.getoption
    try:
        target = _target(metafunc.config)
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None
    configs = []
    for model in _csv(opt("model"), DEFAULT_MODELS):
        for dtype in _csv(opt("dtype"), ("fp32", "fp16", "bf16")):
            for tp in _csv(opt("tp"), ("1",)):
                if not tp.isdigit() or int(tp) < 1:
                    raise pytest.UsageError(f"--tp: {tp!r} is not a positive integer")
                configs.append(RunConfig(model, dtype, int(tp), opt("seq_len"), target, opt("eager_reference")))
    metafunc.parametrize("run_config", configs, ids=[c.id for c in configs], scope="session")


@pytest.fixture(scope="session")
def run_dir(pytestconfig) -> Path:
    return pytestconfig.harness_run_dir


@pytest.fixture
def pipeline(run_config, pytestconfig) -> Pipeline:
    """The configuration's pipeline, shared by every suite in this process. Bad input (unknown model or
    dtype, unreadable weights) fails the test with its one-line message."""
    cache = pytestconfig.harness_pipelines
    if run_config not in cache:
        try:
            p = Pipeline(run_config)
            p.weights  # load now, so a bad model file fails here with its own message
        except HarnessError as e:
            pytest.fail(str(e), pytrace=False)
        cache[run_config] = p
    return cache[run_config]


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
