"""`python -m harness <command>`: the suites' checks from the command line, for one configuration or a
matrix. Exit status: 0 all passed, 1 a check failed, 2 bad input (one line on stderr)."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from harness import end_to_end, options, records, report
from harness.errors import HarnessError
from harness.pipeline import Pipeline


def _run_dir(args) -> Path:
    return Path(args.report_dir) / (args.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def cmd_run(args) -> int:
    """End-to-end check of every configuration in the matrix; failures don't stop the others."""
    run_dir, failed = _run_dir(args), 0
    for config in options.run_configs(lambda dest: getattr(args, dest)):
        p = Pipeline(config)
        try:
            rec = end_to_end.check(p)
        except HarnessError as e:  # a failed stage (already in p.stages) or bad input for this config
            rec = p.record("end_to_end", failure={"message": str(e)})
            print(f"{config.id}: {e}", file=sys.stderr)
        records.append(run_dir / "records.jsonl", rec)
        ok = bool(rec.get("verdict", {}).get("passed"))
        failed += not ok
        print(f"{config.id}: {'PASS' if ok else 'FAIL'}"
              + (f" ({rec['verdict']['reason']})" if rec.get("verdict") else ""))
    summary = report.write_summary(run_dir)
    print(f"report: {summary}")
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compiled vs eager end to end, per configuration")
    options.add_options(run.add_argument)
    run.set_defaults(func=cmd_run)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
