"""Where a compiled prefill spends its time, dispatch by dispatch: IREE's own per-dispatch benchmarks
(`--iree-hal-dump-executable-benchmarks-to`) of the harness's forward program, each compiled and timed
alone with iree-benchmark-module on this machine's workers, weighted by how often the program dispatches
it (`--compile-to=flow`), beside the whole program timed by the same tool. Matmuls show their GFLOP/s;
the gap between the sum of isolated dispatches and the whole program is what they lose to each other
(caches, first touch of transient memory). Every line is a command a compiler engineer can rerun: the
files stay in --out.

    .venv/bin/python bench/dispatches.py [--model smollm2-135m] [--dtype fp32] [--seq-len 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import tempfile
import warnings
from pathlib import Path

from tabulate import tabulate


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-2000:]}")
    return proc.stdout


def benchmark_ms(tool: str, args: list[str]) -> float:
    """Real time per call of the one function iree-benchmark-module runs, in ms."""
    out = run([tool, *args, "--benchmark_min_time=0.5s"])
    line = next(ln for ln in out.splitlines() if ln.startswith("BM_"))
    value, unit = line.split()[1:3]
    return float(value) * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def gflop(name: str) -> float | None:
    """FLOPs of a (batch_)matmul dispatch from the shape in its name, BxMxNxK or MxNxK."""
    m = re.search(r"matmul(?:_transpose_b)?_((?:\d+x)+\d+)_", name)
    if not m:
        return None
    dims = [int(d) for d in m.group(1).split("x")]
    prod = 2.0
    for d in dims:
        prod *= d
    return prod / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--out", default="", help="where the benchmark files go (default: a temporary directory)")
    ap.add_argument("--extra-flag", action="append", default=[], help="extra iree-compile flag (repeatable)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    import torch

    from harness.common.host import machine
    from harness.iree.compiler import tool
    from harness.iree.targets import Target
    from harness.run.case import Case
    from harness.run.config import RunConfig

    p = Case(RunConfig(args.model, args.dtype, seq_len=args.seq_len, target=Target(extra_flags=tuple(args.extra_flag))))
    module = p.candidate.module("forward")
    mlir, flags = module.source
    out = Path(args.out or tempfile.mkdtemp(prefix="dispatches-"))
    out.mkdir(parents=True, exist_ok=True)
    compile_, bench = tool("iree-compile"), tool("iree-benchmark-module")
    workers = ["--device=local-task", f"--task_topology_group_count={torch.get_num_threads()}"]

    run([compile_, str(mlir), *flags, f"--iree-hal-dump-executable-benchmarks-to={out}",
         "-o", str(out / "program.vmfb")])
    flow = run([compile_, str(mlir), *flags, "--compile-to=flow"])
    counts: dict[int, list] = {}  # dispatch index -> [name, how often the program dispatches it]
    for name in re.findall(r"flow\.dispatch @[\w$]+::@(forward\$async_dispatch_\d+_[\w$]+)", flow):
        entry = counts.setdefault(int(name.split("_dispatch_")[1].split("_")[0]), [name, 0])
        entry[1] += 1

    rows, total = [], 0.0
    for source in sorted(out.glob("module_forward*_benchmark.mlir")):
        vmfb = source.with_suffix(".vmfb")
        run([compile_, str(source), *flags, "-o", str(vmfb)])
        ms = benchmark_ms(bench, [f"--module={vmfb}", *workers])
        name, count = counts.get(int(source.name.split("_dispatch_")[1].split("_")[0]), [source.stem, 1])
        total += ms * count
        work = gflop(name)
        rows.append([name, count, f"{ms:.3f}", f"{ms * count:.1f}",
                     f"{work / ms * 1e3:.0f}" if work else "", shlex.join([bench, f"--module={vmfb}", *workers])])
    # (the last column, a reproducer, is printed below the table for the costliest dispatches)
    whole = benchmark_ms(bench, [f"--module={out / 'program.vmfb'}", f"--parameters=model={module.irpa}", *workers,
                                 "--function=forward", f"--input=1x{args.seq_len}xi64=1"])
    rows.sort(key=lambda r: -float(r[3]))
    for r in rows:
        r.insert(4, f"{float(r[3]) / total:.1%}")
    m = machine()
    print(f"{m['cpu']} (LLVM {m['llvm_cpu']}; {' '.join(m['cpu_features'])}), {torch.get_num_threads()} workers; "
          f"{args.model} {args.dtype} forward, {args.seq_len} tokens")
    print(tabulate([r[:-1] for r in rows], tablefmt="github", headers=[
        "dispatch", "per call", "isolated ms", "ms per prefill", "share", "GFLOP/s"]))
    for r in rows[:3]:
        print(f"{r[0]}: {r[-1]}")
    print(f"\nsum of isolated dispatches {total:.0f} ms; the whole program {whole:.0f} ms "
          f"({whole / total:.2f}x the sum)")
    print("whole program: " + shlex.join([bench, f"--module={out / 'program.vmfb'}",
                                          f"--parameters=model={module.irpa}", *workers, "--function=forward",
                                          f"--input=1x{args.seq_len}xi64=1"]))
    print("compiled with: " + shlex.join([compile_, str(mlir), *flags]))


if __name__ == "__main__":
    main()
