"""Where compiled artifacts are kept between runs, and the content hashes that key them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """`$HARNESS_CACHE_DIR/<kind>` (default `.cache/` in the current directory: the project's, where its
    commands run), created on demand."""
    root = Path(os.environ.get("HARNESS_CACHE_DIR", ".cache")).absolute()
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:24]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
