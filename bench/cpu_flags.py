"""Sweep of llvm-cpu compile flags on this machine: for each dtype and flag set, the IREE prefill speed
and whether the program still passes the end-to-end numerics check on the same tokens (compiled vs eager
against the fp64 oracle, the tolerance policy). The flag sets are those IREE's own CPU benchmarks and docs
use (data tiling, ukernels, optimisation levels, distribution tile size, matmul tile bytes); each is added
to the harness's flags for the CPU, or turns data tiling off where it says so. The variants of a dtype are
timed in interleaved rounds (A B C ... A B C ...), so a machine that drifts during the run favours none;
the figure is each variant's median. harness/iree/targets.py keeps, per CPU family, the fastest set that
passes.

    .venv/bin/python bench/cpu_flags.py [--model smollm2-135m] [--dtype fp32,fp16,bf16] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from tabulate import tabulate

VARIANTS = {
    "harness default": (),
    "no data tiling": ("--iree-opt-data-tiling=false",),
    "ukernels all": ("--iree-llvmcpu-enable-ukernels=all",),
    "ukernels none": ("--iree-llvmcpu-enable-ukernels=none",),
    "O2": ("--iree-opt-level=O2",),
    "O3": ("--iree-opt-level=O3",),
    "distribution 32": ("--iree-llvmcpu-distribution-size=32",),
    "matmul tiles 1 MiB": ("--iree-llvmcpu-general-matmul-tile-bytes=1048576",),
    "matmul tiles 1 MiB + ukernels none": ("--iree-llvmcpu-general-matmul-tile-bytes=1048576",
                                          "--iree-llvmcpu-enable-ukernels=none"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32,fp16,bf16")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    ap.add_argument("--threads", type=int, default=0, help="eager threads and IREE CPU workers (default: one per core)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    from harness.checks import end_to_end
    from harness.common.errors import HarnessError
    from harness.common.host import machine
    from harness.iree.targets import Target
    from harness.run import options
    from harness.run.case import Case
    from harness.run.config import RunConfig

    options.apply_threads(args.threads)
    rows = []
    for dtype in args.dtype.split(","):
        judged = {}  # variant -> (engine, case, verdict)
        reference = None
        for name in args.variants.split(","):
            p = Case(RunConfig(args.model, dtype, seq_len=args.seq_len, target=Target(extra_flags=VARIANTS[name])))
            if reference is not None:  # the reference does not depend on the flags: build it once per dtype
                p.reference = reference
            try:
                rec = p.run(end_to_end.check, baseline=p.tp1())  # compiles, and judges these tokens
            except HarnessError as e:
                rows.append([dtype, name, "", "", str(e).splitlines()[0][:90], ""])
                continue
            reference = p.reference
            judged[name] = (p.candidate.forward(), p, rec["verdict"])
        times = {name: [] for name in judged}
        for _ in range(args.rounds):
            for name, (engine, p, _) in judged.items():
                start = time.perf_counter()
                engine.logits(p.inputs.tokens)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["harness default"]) if "harness default" in times else None
        for name, (engine, p, verdict) in judged.items():
            t = statistics.median(times[name])
            compile_s = p.candidate.stages["compile"].seconds
            rows.append([dtype, name, f"{args.seq_len / t:.0f}", f"{base / t:.2f}x" if base else "",
                         f"{'pass' if verdict['passed'] else 'FAIL'} {verdict['ratio']:.2f}",
                         f"{compile_s:.0f}" + (" (cached)" if p.candidate.stages["compile"].cached else "")])
            print(rows[-1], flush=True)
    m = machine()
    print(f"\n{m['cpu']} (LLVM {m['llvm_cpu']}; {' '.join(m['cpu_features'])}), {m['threads']} threads, "
          f"{m['iree_workers']} IREE workers; {args.model}, {args.seq_len}-token prefill, median of {args.rounds} "
          "interleaved rounds")
    print(tabulate(rows, tablefmt="github", headers=["dtype", "flags", "IREE tok/s", "vs harness default",
                                                      "numerics (error/budget)", "compile s"]))


if __name__ == "__main__":
    main()
