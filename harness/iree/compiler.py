"""iree-compile behind one function, with a cache keyed by (program, flags, the compiler's bytes)."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.common.cache import cache_dir, digest, file_sha256
from harness.common.errors import HarnessError, StageFailure


def compiler_path(compiler: str = "") -> str:
    """The iree-compile that runs: `compiler` (a user's build, --iree-compile), else the pip one."""
    if not compiler:
        return tool("iree-compile")
    path = Path(compiler)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise HarnessError(f"--iree-compile {compiler}: not an executable file")
    return str(path.resolve())


@functools.cache
def compiler_identity(compiler: str = "") -> str:
    """sha256 over the compiler that runs: the iree-compile executable and, next to it, the compiler library
    it loads. A pip `iree-compile` is a Python script that runs the package's binary: that binary is hashed
    (a user's --iree-compile is hashed as given). Two builds with one version string are two compilers; the
    cache must not mix their modules."""
    path = Path(compiler_path(compiler))
    if not compiler and path.is_file() and path.read_bytes()[:2] == b"#!":
        from iree.compiler.tools import binaries

        path = Path(binaries.find_tool("iree-compile"))
    if not path.is_file():
        raise HarnessError(f"iree-compile: {path} is not a file (install iree-base-compiler)")
    libraries = sorted(path.resolve().parent.glob("libIREECompiler*"))
    return digest(*(file_sha256(p) for p in [path, *libraries]))


@functools.cache
def compiler_record(compiler: str = "") -> dict:
    """What a report says of the compiler that judged it: its path, version line and content hash."""
    path = compiler_path(compiler)
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        out = f"? ({e})"
    version = next((ln.strip() for ln in out.splitlines() if "version" in ln.lower()), out.strip()[:80] or "?")
    return {"path": path, "version": version, "sha256": compiler_identity(compiler)}


def tool(name: str) -> str:
    """An IREE command-line tool: the one next to this Python interpreter (a virtual environment need not
    be activated), else the first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=path) or name


def compile_command(mlir: Path, vmfb: Path, flags: list[str], compiler: str = "") -> list[str]:
    return [compiler_path(compiler), str(mlir), "-o", str(vmfb), *flags]


def compile_module(mlir: Path, flags: list[str], compiler: str = "") -> tuple[Path, float, bool]:
    """Compile `mlir` with `compiler` (default: the pip iree-compile), or reuse the cached result. Returns
    (vmfb path, seconds, cache hit)."""
    key = digest(mlir.read_bytes(), *flags, compiler_identity(compiler))
    vmfb = cache_dir("vmfb") / f"{key}.vmfb"
    if vmfb.exists():
        return vmfb, 0.0, True
    tmp = vmfb.with_suffix(f".tmp{time.monotonic_ns()}")
    start = time.perf_counter()
    try:
        proc = subprocess.run(compile_command(mlir, tmp, flags, compiler), capture_output=True, text=True)
    except OSError as e:  # no iree-compile to run
        raise StageFailure("compile", f"cannot run iree-compile: {e}",
                           shlex.join(compile_command(mlir, vmfb, flags, compiler)))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln] or proc.stderr.splitlines() or ["?"]
        raise StageFailure("compile", f"iree-compile exited {proc.returncode}: {errors[0]}",
                           shlex.join(compile_command(mlir, vmfb, flags, compiler)))
    tmp.replace(vmfb)  # atomic: parallel workers never see half a file
    return vmfb, seconds, False
