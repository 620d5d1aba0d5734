"""iree-compile behind one function, with a cache keyed by (program, flags, compiler version)."""

from __future__ import annotations

import importlib.metadata
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from harness.cache import cache_dir, digest
from harness.iree.stages import StageFailure


def compiler_version() -> str:
    return importlib.metadata.version("iree-base-compiler")


def iree_compile_binary() -> str:
    return shutil.which("iree-compile") or "iree-compile"


def compile_command(mlir: Path, vmfb: Path, flags: list[str]) -> list[str]:
    return [iree_compile_binary(), str(mlir), "-o", str(vmfb), *flags]


def compile_module(mlir: Path, flags: list[str]) -> tuple[Path, float, bool]:
    """Compile `mlir` (or reuse the cached result). Returns (vmfb path, seconds, cache hit)."""
    key = digest(mlir.read_bytes(), *flags, compiler_version())
    vmfb = cache_dir("vmfb") / f"{key}.vmfb"
    if vmfb.exists():
        return vmfb, 0.0, True
    tmp = vmfb.with_suffix(f".tmp{time.monotonic_ns()}")
    start = time.perf_counter()
    proc = subprocess.run(compile_command(mlir, tmp, flags), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln] or proc.stderr.splitlines() or ["?"]
        raise StageFailure("compile", f"iree-compile exited {proc.returncode}: {errors[0]}",
                           shlex.join(compile_command(mlir, vmfb, flags)))
    tmp.replace(vmfb)  # atomic: parallel workers never see half a file
    return vmfb, seconds, False
