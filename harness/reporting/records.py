"""Records: one JSON object per result, appended as one line to `records.jsonl`. Every report is a
view of these. Appends are whole lines under an exclusive lock, so parallel pytest-xdist workers never
interleave, and an interrupted run leaves every finished record readable."""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import platform
from functools import cache
from pathlib import Path

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


def read(path: Path) -> list[dict]:
    """Every complete record; a torn last line (the writer was killed mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
