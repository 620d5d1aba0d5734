"""Facts about the machine a figure was measured on, for every record and report header."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

import torch

from harness.iree import runtime
from harness.iree.targets import host_cpu

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


