"""Records: one JSON object per result, appended as one line to `records.jsonl`. Every report is a
view of these. Appends are whole lines under an exclusive lock, so parallel pytest-xdist workers never
interleave, and an interrupted run leaves every finished record readable."""

from __future__ import annotations

import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
from functools import cache
from pathlib import Path

from harness.common.errors import HarnessError

PACKAGES = ("torch", "iree-base-compiler", "iree-base-runtime", "iree-turbine", "numpy", "gguf",
            "transformers", "iree-llm-harness")


@cache
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def new_run_dir(report_dir: Path, name: str | None, resume: bool = False) -> Path:
    """The directory of a new run: `name` (default: a timestamp) under `report_dir`. A run's records are
    its own: a name that already holds records is refused, not appended to; with `resume`, its records are set
    aside (records.interrupted-<k>.jsonl) and the run starts again, keeping what it had journaled (perplexity's
    finished windows)."""
    if resume and not name:
        raise HarnessError("--resume: name the run to resume (--run-name)")
    if not name:  # a timestamp, made unique within the second
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = next(n for n in (stamp, *(f"{stamp}-{i}" for i in range(2, 1000))) if not (report_dir / n).exists())
    run_dir = report_dir / name
    if (run_dir / "records.jsonl").exists() and resume:
        k = next(k for k in range(1, 10000) if not (run_dir / f"records.interrupted-{k}.jsonl").exists())
        (run_dir / "records.jsonl").rename(run_dir / f"records.interrupted-{k}.jsonl")
    elif (run_dir / "records.jsonl").exists():
        raise HarnessError(f"--run-name {run_dir.name}: {run_dir} already holds a run's records; choose another "
                           "name, --resume it (or join runs with `python -m harness report merge`)")
    return run_dir


def append(path: Path, record: dict) -> None:
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _parse(path: Path) -> tuple[list[dict], str | None]:
    if not path.exists():
        return [], None
    text = path.read_text()
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines) and not text.endswith("\n"):
                return records, f"{path}:{number}: a truncated last record (an interrupted write) was ignored"
            raise HarnessError(f"{path}:{number}: not a JSON record ({e.msg}); the run's records are corrupt") from None
    return records, None


def read(path: Path) -> list[dict]:
    """Every record of `path`. A line that does not parse fails, named by file and line (a gate must not
    pass what it could not read), except a torn last line: the writer was killed mid-write, the line has
    no newline, and `torn_line` reports it."""
    return _parse(path)[0]


def torn_line(path: Path) -> str | None:
    """A line saying that `path` ends in a torn record (tolerated by `read`), or None."""
    return _parse(path)[1]


def plan(checks: list[tuple[str, str]], shard: str | None = None) -> dict:
    """The record of what a run sets out to check, (check, configuration id) pairs, written before it
    starts: a pair left with no record at the end crashed or was killed, and fails the gate."""
    return {"kind": "plan", "checks": sorted(set(checks)), "shard": shard}


def missing(recs: list[dict]) -> list[tuple[str, str]]:
    """The planned (check, configuration) pairs that no record accounts for: no result of the check, no
    skip of the configuration (of all its checks, or of this one) and no expected failure."""
    planned = {tuple(p) for r in recs if r["kind"] == "plan" for p in r["checks"]}
    done = {(r[key], r["config"]) for r in recs if "config" in r for key in ("kind", "test") if key in r}
    done |= {(r["check"], r["config"]) for r in recs if r["kind"] == "expected_failure"}
    skipped = {(r.get("check"), r["config"]) for r in recs if r["kind"] == "skipped"}
    return sorted((check, config) for check, config in planned - done
                  if (None, config) not in skipped and (check, config) not in skipped)
