"""What a pass means: the smallest fault each check catches. A fault of decreasing size is planted in the
compiled model only (eager and the oracle stay clean): one output row of one projection of one layer scaled
by 1 + eps (a miscompiled tile or lane: one output channel), eps from 0.25 down; and one weight element
replaced (by 0, and by 10x the tensor's largest magnitude). Per dtype it runs every check as the suites do:
end to end, the layer check (isolated, propagated), bisection (does it name the layer and sub-block?) and
the perplexity paired gate at the quick tier (8 windows). Eager is built once per dtype and shared.

    .venv/bin/python bench/sensitivity.py [--model smollm2-135m] [--dtype fp32,fp16,bf16] [--layer 15]
        [--sub-block down_proj] [--row 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import warnings
from pathlib import Path

from tabulate import tabulate

EPS = (0.25, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6)
CHECKS = ("end to end", "layers isolated", "layers propagated", "bisection", "perplexity paired")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32,fp16,bf16")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--sub-block", default="down_proj")
    ap.add_argument("--row", type=int, default=100)
    ap.add_argument("--no-perplexity", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    import torch

    from harness.checks import bisect, end_to_end, layers, perplexity
    from harness.common.host import machine
    from harness.run.case import Case
    from harness.run.config import RunConfig
    from harness.transforms.faults import SUB_BLOCK_PARAMS, row_fault, weight_fault

    def caught(case: Case, windows) -> dict[str, bool]:
        """Which checks fail with the case's fault planted."""
        e2e = case.run(end_to_end.check)["verdict"]
        rec = case.run(layers.compare)
        found = case.run(bisect.bisect)
        out = {"end to end": not e2e["passed"], "layers isolated": rec["first_failure"]["isolated"] is not None,
               "layers propagated": rec["first_failure"]["propagated"] is not None,
               "bisection": (found["layer"], found["sub_block"]) == (f"layer_{args.layer}", args.sub_block)}
        if windows is not None:
            ppl = case.run(perplexity.evaluate, inputs=windows, golden_dir=Path(tempfile.mkdtemp()), vs_fp32=False)
            out["perplexity paired"] = next(g for g in ppl["gates"] if g["gate"] == "paired")["verdict"] == "fail"
        print(case.fault.id if case.fault else "clean", out, flush=True)
        return out

    rows = []
    for dtype in args.dtype.split(","):
        clean = Case(RunConfig(args.model, dtype))
        reference = clean.reference
        windows = None if args.no_perplexity or not clean.spec.real_text else perplexity.windows(reference)

        def case(fault) -> Case:
            c = Case(RunConfig(args.model, dtype), fault=fault)
            c.reference = reference
            return c

        base = caught(case(None), windows)
        smallest = {check: None for check in base}
        quiet = 0
        for eps in EPS:
            result = caught(case(row_fault(args.layer, args.sub_block, args.row, 1 + eps)), windows)
            for check, hit in result.items():
                if hit and (smallest[check] is None or eps < smallest[check]):
                    smallest[check] = eps
            quiet = quiet + 1 if not any(result.values()) else 0
            if quiet == 2:  # nothing caught twice in a row: smaller faults are quieter still
                break
        weight = reference.weights.state_dict[f"layers.{args.layer}.{SUB_BLOCK_PARAMS[args.sub_block]}"]
        big = 10 * float(weight.abs().max())
        element = {name: caught(case(dataclasses.replace(weight_fault(args.layer, args.sub_block), row=args.row,
                                                         col=0, value=value)), windows)
                   for name, value in (("element = 0", 0.0), ("element = 10 max|w|", big))}
        for check in base:
            rows.append([dtype, check, "FAILS (false alarm)" if base[check] else "passes",
                         "none caught" if smallest[check] is None else f"{smallest[check]:g}",
                         *("caught" if element[name][check] else "missed" for name in element)])
    m = machine()
    print(f"\n{m['cpu']} (LLVM {m['llvm_cpu']}), {m['threads']} threads; {args.model}, layer {args.layer} "
          f"{args.sub_block}, output row {args.row}; torch {torch.__version__}")
    print(tabulate(rows, tablefmt="github", headers=[
        "dtype", "check", "clean", "smallest eps caught (row x (1 + eps))", "one element = 0",
        "one element = 10 max|w|"]))


if __name__ == "__main__":
    main()
