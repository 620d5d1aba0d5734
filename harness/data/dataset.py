"""Evaluation text, loaded through `datasets`, from one of three sources:

- "wikitext2": the bundled WikiText-2 raw test file, checked against its sha256 on every load;
- a local text file (its sha256 is recorded, not checked);
- a Hugging Face dataset id `name[:config[:split]]` (split defaults to "test"), for users with the network.
  Offline, this fails at once with a one-line error rather than after datasets' ~23 s of retries.

and in one of two text forms (wikitext2/README.md has the numbers):

- "raw": the rows concatenated, which for a file is the file byte for byte, as llama.cpp's
  `llama-perplexity -f wiki.test.raw` reads it;
- "joined": "\\n\\n".join(rows) with whitespace-only rows emptied, which is what the transformers
  documentation and GPTQ-style scripts score from the Hugging Face `wikitext` rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import datasets

from harness.common.errors import HarnessError

BUNDLED = "wikitext2"
BUNDLED_PATH = Path(__file__).parent / "wikitext2" / "wiki.test.raw"
BUNDLED_SHA256 = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"
FORMS = ("raw", "joined")
_PROBE_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class Text:
    dataset: str  # as the user named it: "wikitext2", a path, or a Hugging Face id
    dataset_sha256: str  # of the file; for a Hugging Face dataset, of its rows concatenated
    form: str
    text: str = dataclasses.field(repr=False)

    @property
    def sha256(self) -> str:
        """Of the text in its form: what the tokenizer actually saw."""
        return _sha256(self.text.encode())


def load_text(source: str = BUNDLED, form: str = "raw") -> Text:
    if form not in FORMS:
        raise HarnessError(f"text form {form!r} is unknown; known: {', '.join(FORMS)}")
    if source == BUNDLED:
        rows, sha = _file_rows(BUNDLED_PATH, expected_sha256=BUNDLED_SHA256)
    elif _is_path(source):
        rows, sha = _file_rows(Path(source).expanduser())
    else:
        rows = _hub_rows(source)
        sha = _sha256("".join(rows).encode())
    return Text(source, sha, form, _in_form(rows, form))


def _in_form(rows: list[str], form: str) -> str:
    if form == "raw":
        return "".join(rows)
    # The Hugging Face wikitext rows are the file's lines with whitespace-only lines made "".
    return "\n\n".join(row if row.strip() else "" for row in rows)


def _file_rows(path: Path, expected_sha256: str | None = None) -> tuple[list[str], str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HarnessError(f"{path}: cannot read: {e.strerror}")
    sha = _sha256(data)
    if expected_sha256 is not None and sha != expected_sha256:
        raise HarnessError(f"{path}: sha256 {sha} does not match the expected {expected_sha256}: "
                           f"the file is corrupted or was replaced")
    try:
        with _no_progress_bars():  # splitting a local file is not a download worth a bar on stderr
            rows = datasets.load_dataset("text", data_files=str(path), keep_linebreaks=True, split="train")["text"]
    except Exception as e:  # not UTF-8, unreadable
        raise HarnessError(f"{path}: datasets cannot read it as text: {_one_line(e)}")
    rows = list(rows)
    # "raw" promises the file byte for byte; hold datasets' line splitting to that.
    if "".join(rows).encode() != data:
        raise HarnessError(f"{path}: datasets' text rows do not reassemble to the file byte for byte")
    return rows, sha


@contextlib.contextmanager
def _no_progress_bars():
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _hub_rows(spec: str) -> list[str]:
    where = f"dataset {spec!r} (no local file of that name; read as a Hugging Face id name[:config[:split]])"
    parts = spec.split(":")
    if len(parts) > 3:
        raise HarnessError(f"{where}: too many ':'-separated parts")
    name, config, split = parts + [None] * (3 - len(parts))
    if _offline():
        raise HarnessError(f"{where}: Hugging Face access is off (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE); "
                           f"use {BUNDLED!r} or a local text file")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not _reachable(endpoint):
        raise HarnessError(f"{where}: {endpoint} is unreachable; use {BUNDLED!r} or a local text file")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "test")
    except Exception as e:
        raise HarnessError(f"{where}: {_one_line(e)}")
    text_columns = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if not text_columns:
        raise HarnessError(f"{where}: no text column among {', '.join(ds.column_names)}")
    return list(ds["text" if "text" in text_columns else text_columns[0]])


def _is_path(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith(("/", ".", "~"))


def _offline() -> bool:
    # Read at call time: datasets reads these once, at import.
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _reachable(endpoint: str) -> bool:
    """A TCP connection to the endpoint within a few seconds. Behind a proxy the endpoint itself is not
    reachable directly, so the probe is skipped and datasets goes through the proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"
