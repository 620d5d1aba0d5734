"""Real sharktank exports for the harness's own tests and nightly: sharktank_export.py run in sharktank's
environment (a subprocess: its pins clash with ours), cached by the script, the source and sharktank's version."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from harness.common.cache import cache_dir, digest, file_sha256
from harness.common.errors import HarnessError
from harness.reference.registry import slug

SCRIPT = Path(__file__).with_name("sharktank_export.py")
PROJECT = Path(__file__).resolve().parents[2]


def sharktank_python() -> Path:
    """$HARNESS_SHARKTANK_PYTHON, else the project's .venv-sharktank (made by .ci/setup)."""
    python = Path(os.environ.get("HARNESS_SHARKTANK_PYTHON", PROJECT / ".venv-sharktank/bin/python"))
    if not python.is_file():
        raise HarnessError(f"no sharktank environment: {python} does not exist (bash .ci/setup makes it, or set "
                           "HARNESS_SHARKTANK_PYTHON to a Python with amdsharktank 3.9)")
    return python


def sharktank_version(python: Path) -> str:
    out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('amdsharktank'))"],
                         capture_output=True, text=True)
    if out.returncode:
        raise HarnessError(f"{python}: amdsharktank is not installed there ({out.stderr.strip().splitlines()[-1:]})")
    return out.stdout.strip()


def sharktank_export(kind: str, source: str) -> Path:
    """The directory of sharktank's export of `kind` "toy" or "toy-pp2" (source: the seed) or "gguf" (source: the
    file), made on first use (toy: ~20 s; SmolLM2: 1-4 min on 2 cores)."""
    if kind == "gguf" and not Path(source).is_file():
        raise HarnessError(f"{source}: no such GGUF file")
    python = sharktank_python()
    source_id = file_sha256(Path(source)) if kind == "gguf" else source
    # The directory's name is the configuration's name in test ids and reports: stable, without the key.
    name = "sharktank-" + (slug(Path(source).stem) if kind == "gguf" else kind)
    out = cache_dir("sharktank") / digest(SCRIPT.read_bytes(), kind, source_id, sharktank_version(python)) / name
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_name(f"{name}.tmp{time.monotonic_ns()}")
    proc = subprocess.run([python, SCRIPT, kind, source, tmp], capture_output=True, text=True)
    if proc.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise HarnessError(f"sharktank export of {kind} {source} failed: {last}")
    try:
        tmp.replace(out)  # atomic: a parallel worker sees the whole export or none
    except OSError:  # another worker finished the same export first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out
