"""Cold and warm durations of the llama suite: `pytest suites/llama` twice in one run, the first with an
empty compile cache, the second reusing it, and how much of each went to export and compile (from the
runs' records). A warm rerun that is still slow is spending its time in the checks themselves (eager and
compiled prefills, perplexity windows), which no cache removes.

    .venv/bin/python bench/suite.py [-- extra pytest arguments, e.g. --model toy-tp8]

The cache is a fresh temporary $HARNESS_CACHE_DIR, so the project's own .cache/ is neither used nor
touched; the runs' reports go to reports/bench-suite-{cold,warm}/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]


def run_suite(name: str, cache: str, extra: list[str]) -> tuple[float, int, dict[str, float]]:
    """(wall seconds, pytest's exit code, seconds per stage kind summed over the run's configurations)."""
    env = {**os.environ, "HARNESS_CACHE_DIR": cache}
    shutil.rmtree(ROOT / "reports" / name, ignore_errors=True)  # records.jsonl is appended to
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "pytest", "suites/llama", "-q", "-p", "no:cacheprovider",
                            "--run-name", name, *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    stages: dict[tuple[str, str], float] = {}  # each record repeats its candidate's stages: count each once
    records = ROOT / "reports" / name / "records.jsonl"
    for line in records.read_text().splitlines() if records.exists() else []:
        rec = json.loads(line)
        for key, stage in rec.get("stages", {}).items():
            stages[rec["config"], key] = stage.get("seconds") or 0.0
    per_kind: dict[str, float] = {}
    for (_, key), seconds in stages.items():
        kind = key.split(":")[0]
        per_kind[kind] = per_kind.get(kind, 0.0) + seconds
    return wall, code, per_kind


def main() -> int:
    extra = sys.argv[2:] if sys.argv[1:2] == ["--"] else sys.argv[1:]
    rows = []
    with tempfile.TemporaryDirectory(prefix="harness-cache-") as cache:
        for name in ("cold", "warm"):
            wall, code, kinds = run_suite(f"bench-suite-{name}", cache, extra)
            rows.append([name, wall, code, kinds.get("export", 0.0), kinds.get("compile", 0.0),
                         wall - kinds.get("export", 0.0) - kinds.get("compile", 0.0)])
    print(tabulate(rows, headers=["run", "wall s", "exit", "export s", "compile s", "rest s"], floatfmt=".0f"))
    print(f"warm / cold: {rows[1][1] / rows[0][1]:.0%}")
    return max(r[2] for r in rows)


if __name__ == "__main__":
    sys.exit(main())
