"""`report merge`: one run from several (the shards of a matrix split over machines)."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.checks import perplexity
from harness.common.errors import HarnessError
from harness.reporting import records
from harness.reporting.summary import write_summary


def _check_shards(runs: dict[Path, list[dict]]) -> None:
    """Shards of one matrix (`--shard i/N`) must all be there, each once: a dead shard's configurations
    would otherwise vanish from the merged run instead of failing it. Runs whose plans name no shard (the
    nightly's sharktank export, say) join as they are."""
    shards = {d: {r["shard"] for r in recs if r["kind"] == "plan" and r.get("shard")} for d, recs in runs.items()}
    shards = {d: s for d, s in shards.items() if s}
    if not shards:
        return  # not shards of a matrix
    for d, s in shards.items():
        if len(s) != 1:
            raise HarnessError(f"report merge: {d} is not one shard of a matrix (its plans name {sorted(s) or 'none'})")
    named = [next(iter(s)) for s in shards.values()]
    counts = {n.split("/")[1] for n in named}
    if len(counts) != 1:
        raise HarnessError(f"report merge: shards of different splits: {', '.join(sorted(named))}")
    total = int(counts.pop())
    absent = [f"{i}/{total}" for i in range(1, total + 1) if f"{i}/{total}" not in named]
    if absent or len(named) != len(set(named)):
        raise HarnessError(f"report merge: shard(s) {', '.join(absent) or 'repeated'} of {total}: "
                           f"{'missing' if absent else ', '.join(sorted(named))}")


def merge(out_dir: Path, run_dirs: list[Path], golden_dir: Path = Path("golden")) -> Path:
    """One run from several (the shards of a matrix split over machines): their records and plots in
    `out_dir`, and its summary. Every shard of the matrix must be given (`_check_shards`); a configuration's
    perplexity scored in `--ppl-shard`s becomes one record, its statistics computed from all the shards' windows
    (checks/perplexity.py join_shards), gated against the goldens in `golden_dir`."""
    runs = {}
    for run_dir in run_dirs:
        if not (run_dir / "records.jsonl").exists():
            raise HarnessError(f"{run_dir}: no records.jsonl (not a harness run directory)")
        runs[run_dir] = records.read(run_dir / "records.jsonl")
    _check_shards(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    ppl_shards: dict[str, list[tuple[Path, dict]]] = {}  # config -> its --ppl-shard records
    for run_dir, recs in runs.items():
        for rec in recs:
            if rec["kind"] == "perplexity" and rec.get("ppl_shard"):
                ppl_shards.setdefault(rec["config"], []).append((run_dir, rec))
            else:
                records.append(out_dir / "records.jsonl", rec)
        for plot in run_dir.glob("*.png"):
            shutil.copy2(plot, out_dir / plot.name)
    for shards in ppl_shards.values():
        records.append(out_dir / "records.jsonl", perplexity.join_shards(shards, golden_dir))
    return write_summary(out_dir)
