"""Perplexity's unit of work is the window. Each window's results (stats.WindowResult, per comparison) are written
as it finishes, one .npz per window, atomically; so a killed run resumes from the windows it finished
(`--resume`), and shards of the windows (`--ppl-shard i/N`) merge into exactly the statistics of one run
(`report merge`): the statistics are computed from the windows' stored fp64 arrays in window order, whoever
scored them.

A journal belongs to one scoring: its key (the configuration, the weights, the protocol, the engines, the code
and the versions) is written beside the windows, and a journal with another key is refused, not mixed in.
`WindowStore` is that directory of per-window arrays under a key; the eager cache (eager_cache.py) is one too.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Self

import numpy as np

from harness.common.errors import HarnessError
from harness.perplexity.stats import WindowResult


class WindowStore:
    """A directory of per-window .npz files and key.json, the key of what they hold, each written atomically."""

    remedy = "delete it"  # what to do about a directory that holds another key's windows

    def __init__(self, directory: Path, key: dict):
        self.directory, self.key = directory, key

    @classmethod
    def open(cls, directory: Path, key: dict) -> Self:
        """The store of `key` in `directory`, made or reopened for writing."""
        directory.mkdir(parents=True, exist_ok=True)
        key_file = directory / "key.json"
        text = json.dumps(key, sort_keys=True, indent=1, default=str)
        if not key_file.exists():
            tmp = directory / f".key.{os.getpid()}.json"
            tmp.write_text(text)
            os.replace(tmp, key_file)
        if key_file.read_text() != text:
            raise HarnessError(f"{directory}: holds the windows of another perplexity scoring (its key.json differs: "
                               f"another model, protocol, engine set or code); {cls.remedy}")
        return cls(directory, key)

    @classmethod
    def read(cls, directory: Path) -> Self:
        """An existing store, to read only (`report merge` reads other runs' journals, never writes them)."""
        key_file = directory / "key.json"
        if not key_file.is_file():
            raise HarnessError(f"{directory}: no perplexity journal (key.json) here")
        return cls(directory, json.loads(key_file.read_text()))

    def _path(self, index: int) -> Path:
        return self.directory / f"window-{index:06d}.npz"

    def indices(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("window-*.npz"))

    def arrays(self, index: int) -> dict[str, np.ndarray] | None:
        """Window `index`'s arrays, or None if it was not written."""
        path = self._path(index)
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                return dict(data)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise HarnessError(f"{path}: unreadable ({type(e).__name__}: {e}); delete it") from None

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        tmp = self.directory / f".window-{index:06d}.{os.getpid()}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self._path(index))  # atomic: a kill leaves the window whole or absent


class Journal(WindowStore):
    """One run's scoring: each window's results per comparison."""

    remedy = "use another --run-name"

    def load(self, index: int) -> list[WindowResult] | None:
        """Window `index`'s results per comparison, or None if it was not finished."""
        data = self.arrays(index)
        if data is None:
            return None
        return [WindowResult.from_arrays(data, f"c{c}_") for c in range(int(data["comparisons"]))]

    def save(self, index: int, results: list[WindowResult]) -> None:
        arrays = {"comparisons": np.array(len(results))}
        for c, r in enumerate(results):
            arrays |= r.to_arrays(f"c{c}_")
        self.write(index, arrays)
