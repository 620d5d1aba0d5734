"""`report merge`: one run from several (the shards of a matrix split over machines)."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.common.errors import HarnessError
from harness.reporting import records
from harness.reporting.summary import write_summary


def merge(out_dir: Path, run_dirs: list[Path]) -> Path:
    """One run from several (the shards of a matrix split over machines): their records and plots in
    `out_dir`, and its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for run_dir in run_dirs:
        if not (run_dir / "records.jsonl").exists():
            raise HarnessError(f"{run_dir}: no records.jsonl (not a harness run directory)")
        for rec in records.read(run_dir / "records.jsonl"):
            records.append(out_dir / "records.jsonl", rec)
        for plot in run_dir.glob("*.png"):
            shutil.copy2(plot, out_dir / plot.name)
    return write_summary(out_dir)
