"""`python -m harness <command>`: the suites' checks from the command line, for one configuration or a
matrix. Exit status: 0 all passed, 1 a check failed, 2 bad input (one line on stderr: an option, a model
file or a device that cannot work). The other configurations go on after a failed stage or a
configuration's bad input; the status is the worst."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from harness.checks import bisect, end_to_end, perplexity
from harness.common.errors import HarnessError, StageFailure
from harness.reporting import merge, records, summary, trend
from harness.reporting.records import new_run_dir
from harness.run import matrix, options
from harness.run.matrix import parse_shard
from harness.run.case import Case
from harness.transforms.shard import UnfitTP


def _run_dir(args) -> Path:
    return new_run_dir(Path(args.report_dir), args.run_name, args.resume)


def _each_config(args, check, kind: str) -> int:
    """Run `check(case, run_dir) -> (record, passed, text)` for every configuration of the matrix; a failed
    stage is recorded and the others go on. Writes the records and the summary."""
    run_dir, failed, bad_input = _run_dir(args), 0, []
    configs = matrix.run_configs(lambda dest: getattr(args, dest))
    records.append(run_dir / "records.jsonl", records.plan([(kind, c.id) for c in configs]))
    for config in configs:
        case = Case(config)  # builds nothing yet: an unknown model or an unreadable --artifact fails in `check`
        try:
            reason = case.unsupported(kind)
            if reason:  # a check the model's family cannot take (an encoder's perplexity)
                raise UnfitTP(f"{kind}: {reason}")
            rec, passed, text = check(case, run_dir)
        except UnfitTP as e:  # a --tp the model's heads cannot take: not a failure of this model
            records.append(run_dir / "records.jsonl", {"kind": "skipped", "config": config.id, "reason": str(e)})
            print(f"{config.id}: SKIP {e}")
            continue
        except StageFailure as e:  # already in the candidate's stages, with its reproducer
            rec, passed, text = case.record(kind, failure={"stage": e.stage, "message": str(e)}), False, str(e)
        except HarnessError as e:  # this configuration's bad input: a model file, an option, a device
            rec, passed, text = case.record(kind, failure={"message": str(e)}), False, str(e)
            bad_input.append(f"{config.id}: {e}")
        records.append(run_dir / "records.jsonl", rec)
        failed += not passed
        print(f"{config.id}: {'PASS' if passed else 'FAIL'} {text}")
    print(f"report: {summary.write_summary(run_dir)}")
    if bad_input:
        print(f"error: {bad_input[0]}" + (f" (and {len(bad_input) - 1} more)" if len(bad_input) > 1 else ""),
              file=sys.stderr)
        return 2
    return 1 if failed else 0


def _end_to_end(case: Case, run_dir: Path):
    rec = case.run(end_to_end.check, baseline=case.tp1())
    return rec, rec["verdict"]["passed"], rec["verdict"]["reason"]


def _bisect(case: Case, run_dir: Path):
    rec = case.run(bisect.bisect, artifacts=run_dir / f"bisect-{case.config.id}")
    return rec, not rec["diverged"] and not rec["propagated_first_failure"], "\n" + bisect.format_bisect(rec)


def _perplexity(args):
    def check(case: Case, run_dir: Path):
        windows = perplexity.windows(case.reference, None if args.all else args.windows, args.ppl_n_ctx,
                                     args.ppl_scheme, args.dataset, args.text_form)
        rec = case.run(perplexity.evaluate, inputs=windows, golden_dir=Path(args.golden_dir), engine=args.engine,
                       progress=True, update_golden=args.update_golden,
                       journal=perplexity.journal_dir(run_dir, case.config.id),
                       shard=args.ppl_shard and parse_shard(args.ppl_shard, "--ppl-shard"),
                       command=shlex.join(["python", "-m", "harness", *sys.argv[1:]]), vs_fp32=not args.no_vs_fp32,
                       golden_command=case.config.command("perplexity"), eager_cache=args.eager_cache)
        gates = "\n".join(g["message"] for g in rec["gates"]) or "no gate applies (one engine, no golden)"
        return rec, rec["passed"], "\n" + rec["summary"] + "\n" + gates
    return _each_config(args, check, "perplexity")


def _report_diff(args) -> int:
    new = Path(args.runs[-1])
    old = Path(args.runs[0]) if len(args.runs) == 2 else trend.previous_run(new) if args.previous else None
    if old is None or len(args.runs) > 2:
        raise HarnessError("report diff: give OLD NEW, or --previous NEW")
    text, passed = trend.diff(old, new)
    print(text)
    if args.out:
        with open(args.out, "a") as f:  # e.g. $GITHUB_STEP_SUMMARY, which other steps also append to
            f.write(text + "\n")
    return 0 if passed else 1


def _report_parser(sub) -> None:
    rep = sub.add_parser("report", help="views of runs: diff (the nightly gate), merge, summary")
    rsub = rep.add_subparsers(dest="report_command", required=True)
    diff = rsub.add_parser("diff", help="new failures, fixes and changes beyond noise; exit 1 on a regression")
    diff.add_argument("runs", nargs="+", metavar="RUN", help="OLD NEW run directories, or NEW with --previous")
    diff.add_argument("--previous", action="store_true", help="diff NEW against the newest older run beside it")
    diff.add_argument("--out", help="also append the markdown to this file (e.g. $GITHUB_STEP_SUMMARY)")
    diff.set_defaults(func=_report_diff)
    merge_cmd = rsub.add_parser("merge", help="join the runs of matrix shards (--shard i/N) into one")
    merge_cmd.add_argument("out", help="the merged run directory")
    merge_cmd.add_argument("runs", nargs="+", metavar="RUN")
    merge_cmd.add_argument("--golden-dir", default="golden", help="goldens that gate perplexity joined from "
                           "--ppl-shard runs (default golden/)")
    merge_cmd.set_defaults(func=lambda args: print(merge.merge(Path(args.out), [Path(r) for r in args.runs],
                                                               Path(args.golden_dir))) or 0)
    summary_cmd = rsub.add_parser("summary", help="rewrite summary.md and summary.html of a run")
    summary_cmd.add_argument("run")
    summary_cmd.set_defaults(func=lambda args: print(summary.write_summary(Path(args.run))) or 0)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compiled vs eager end to end, per configuration")
    options.add_options(run.add_argument)
    run.set_defaults(func=lambda args: _each_config(args, _end_to_end, "end_to_end"))
    bisect_cmd = sub.add_parser("bisect", help="first diverging layer and sub-block, per configuration")
    options.add_options(bisect_cmd.add_argument)
    bisect_cmd.set_defaults(func=lambda args: _each_config(args, _bisect, "bisect"))
    ppl = sub.add_parser("perplexity", help="WikiText-2 perplexity, eager and/or compiled, with gates")
    options.add_options(ppl.add_argument, options.ALL_OPTIONS + options.PERPLEXITY_OPTIONS)
    ppl.add_argument("--engine", choices=perplexity.ENGINES, default="both", help="default: both")
    windows = ppl.add_mutually_exclusive_group()
    windows.add_argument("--windows", type=int, default=perplexity.QUICK_WINDOWS,
                         help=f"first K windows (default {perplexity.QUICK_WINDOWS})")
    windows.add_argument("--all", action="store_true", help="the whole file")
    ppl.add_argument("--no-vs-fp32", action="store_true",
                     help="skip eager fp32 on the same windows (the dtype's own cost; one more prefill a window)")
    ppl.set_defaults(func=_perplexity)
    export = sub.add_parser("sharktank-export", help="export a model with sharktank (its environment: .ci/setup) "
                            "and print the directory, for --artifact")
    export.add_argument("model", help="toy (sharktank's toy llama), toy-pp2 (on 2 devices), smollm2-135m, or a "
                        "llama .gguf file")
    export.set_defaults(func=_sharktank_export)
    _report_parser(sub)
    return ap


def _sharktank_export(args) -> int:
    from harness.artifacts.exports import sharktank_export
    from harness.reference.weights.packaged import shipped_smollm2_gguf

    if args.model in ("toy", "toy-pp2"):
        print(sharktank_export(args.model, "12345"))
    else:
        print(sharktank_export("gguf", str(shipped_smollm2_gguf() if args.model == "smollm2-135m" else args.model)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        options.apply_threads(getattr(args, "threads", 0))
        return args.func(args)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
