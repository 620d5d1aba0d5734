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

import torch

from harness.iree import runtime
from harness.iree.targets import host_cpu

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


# CPU features that decide which kernels eager and IREE can use (x86: vector width, half-precision
# and matrix units; Arm: SVE, bf16, int8 matmul), as /proc/cpuinfo names them.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_int8", "asimd", "sve", "bf16", "i8mm")


@cache
def _cpu() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"cpu": fields.get("model name") or platform.processor() or platform.machine(), "llvm_cpu": host_cpu()[0],
            "cpu_features": [f for f in CPU_FEATURES if f in flags]}


def machine() -> dict:
    """Where a figure was measured: the CPU, its features, the threads eager uses and IREE's CPU workers."""
    return {**_cpu(), "threads": torch.get_num_threads(), "iree_workers": runtime.workers()}


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
