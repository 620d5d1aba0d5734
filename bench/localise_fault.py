"""Time a bisection that localises a fault planted in SmolLM2-135M, cold (export and compile of the
layers program included, in a fresh cache directory) and warm (cached program, new parameter archive).

    .venv/bin/python bench/localise_fault.py [--model smollm2-135m] [--dtype fp32,fp16] [--layers 0,15,29]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

from tabulate import tabulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32,fp16")
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--sub-block", default="down_proj")
    args = ap.parse_args()
    os.environ["HARNESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-bisect-")  # cold first run
    warnings.simplefilter("ignore", FutureWarning)
    from harness.checks import bisect
    from harness.run.case import Case
    from harness.run.config import RunConfig
    from harness.transforms.faults import weight_fault

    rows = []
    for dtype in args.dtype.split(","):
        for i, layer in enumerate(int(x) for x in args.layers.split(",")):
            fault = weight_fault(layer, args.sub_block)
            start = time.perf_counter()
            rec = Case(RunConfig(args.model, dtype), fault=fault).run(bisect.bisect)
            wall = time.perf_counter() - start
            found = (rec["layer"], rec["sub_block"]) == (f"layer_{layer}", fault.sub_block)
            rows.append([args.model, dtype, fault.id, "cold" if i == 0 else "warm",
                         f"{rec['layer']}/{rec['sub_block']}", "yes" if found else "NO", rec["compiles"],
                         rec["invocations"], f"{wall:.1f}"])
            print(rows[-1], flush=True)
    print(tabulate(rows, headers=["model", "dtype", "planted fault", "cache", "found", "correct", "compiles",
                                  "invocations", "wall s (load + bisect)"], tablefmt="github"))


if __name__ == "__main__":
    main()
