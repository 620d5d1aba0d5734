"""Full-file WikiText-2 perplexity with and without a warm eager cache (issue: perplexity that reuses eager).

Runs `python -m harness perplexity --all` as child processes, one after the other, each timed and its peak RSS read
from the kernel (wait4): without the cache (every window's eager and compiled prefill, as every nightly did), with a
cold cache (filling it), with the warm cache (the compiled side only), then the warm cache on fewer windows, so that
the peak RSS can be read against the window count. The cache starts empty in a scratch HARNESS_CACHE_DIR that lends
the project's compiled programs (.cache/ beside it) so no run pays a compile the others do not.

    .venv/bin/python bench/perplexity_full_file.py [--model smollm2-135m] [--dtype fp32] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefill import print_table  # noqa: E402 - bench/ is the script's directory

PROJECT = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace, name: str, windows: str, cache: bool, env: dict, report_dir: Path) -> list:
    command = [sys.executable, "-m", "harness", "perplexity", "--model", args.model, "--dtype", args.dtype,
               "--report-dir", str(report_dir), "--run-name", name,
               *(["--all"] if windows == "all" else ["--windows", windows]), *(["--eager-cache"] if cache else [])]
    start = time.perf_counter()
    with open(report_dir / f"{name}.log", "w") as log:
        proc = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    process_s = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: a gate failed, still a measurement
        raise SystemExit(f"{name}: exit {os.waitstatus_to_exitcode(status)}, see {report_dir / name}.log")
    (rec,) = [r for r in map(json.loads, (report_dir / name / "records.jsonl").read_text().splitlines())
              if r["kind"] == "perplexity"]
    seconds = {t["engine"]: t["seconds"] for t in rec["timings"]}
    kept = rec["eager_cache"]["windows_kept"] if rec.get("eager_cache") else "-"
    return [name, rec["stats"]["n_windows"], kept, f"{process_s / 60:.2f}", f"{rec['wall_s'] / 60:.2f}",
            *(f"{seconds.get(e, 0) / 60:.2f}" for e in ("eager", "iree")), f"{usage.ru_maxrss / 2**20:.2f}",
            f"{rec['stats']['engines'][-1]['ppl']['value']:.4f}",
            f"{rec['stats']['pair']['kld']['value']:.3g}" + (" (top 64 + rest)" if cache else "")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run without the cache")
    ap.add_argument("--fewer", default="16,64", help="window counts of the warm runs for peak RSS vs windows")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        cache = scratch / "cache"
        cache.mkdir()
        for kind in (PROJECT / ".cache").glob("*"):
            if kind.name != "eager":
                (cache / kind.name).symlink_to(kind)
        env = {**os.environ, "HARNESS_CACHE_DIR": str(cache)}
        plan = ([("no cache", "all", False)] if not args.no_baseline else []) + [
            ("cold cache", "all", True), ("warm cache", "all", True),
            *((f"warm cache {n}", n, True) for n in args.fewer.split(","))]
        rows = [run(args, name.replace(" ", "-"), windows, use, env, scratch) for name, windows, use in plan]
    print_table(rows, f"{args.model} {args.dtype}, llama.cpp protocol (512-token windows), minutes and GiB",
                ["run", "windows", "eager windows kept", "process (min)", "scoring (min)", "eager prefill (min)",
                 "iree prefill (min)", "peak RSS (GiB)", "PPL (iree)", "KLD iree vs eager"])


if __name__ == "__main__":
    main()
