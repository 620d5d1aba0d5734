"""Prefill speed of eager and IREE side by side, in one run: tokens/s of each, their ratio, and the
share of this machine's fp32 FLOP limit (a GEMM peak measured in the same run), with export and compile
time and the process's peak RSS, per model / dtype / TP. Ratios from one run are the figures that hold
on a noisy shared machine. For fp16 / bf16 eager runs twice: emulated (the harness's default reference:
fp32 arithmetic rounded at op boundaries) and native (torch's own half-precision kernels, fast on CPUs
with AVX512-FP16 / AVX512-BF16 / AMX, ~100x slower without). It prints the CPU, its features, the threads
eager uses and IREE's CPU workers (`--threads` sets both).

    .venv/bin/python bench/prefill.py [--model smollm2-135m] [--dtype fp32,fp16,bf16] [--tp 1] [--seq-len 512]

The GEMM peak is the best of torch's (oneDNN/MKL) fp32 square matmuls on all threads: what this
machine reaches, not a datasheet number. Model FLOPs count the matmuls (2 per multiply-add: projections,
FFN, lm head, and the full QK^T and PV products that the math attention computes).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import warnings

import torch
from tabulate import tabulate


def gemm_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def model_gflop(config, seq_len: int) -> float:
    kv = config.n_kv_heads * config.head_dim
    per_token_layer = 2 * config.dim * (2 * config.dim + 2 * kv) + 2 * 3 * config.dim * config.ffn_dim
    attention = 2 * 2 * seq_len * config.dim  # QK^T and PV rows for one query, all heads
    per_token = config.n_layers * (per_token_layer + attention) + 2 * config.dim * config.vocab_size
    return per_token * seq_len / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def print_table(rows: list[list], limit: str, headers: list[str]) -> None:
    """The machine the figures were measured on, the limit they are measured against, then the table."""
    from harness.common.host import machine

    m = machine()
    print(f"\n{m['cpu']} (LLVM {m['llvm_cpu']}; {' '.join(m['cpu_features'])}), {m['threads']} threads eager, "
          f"{m['iree_workers']} IREE CPU workers; {limit}")
    print(tabulate(rows, tablefmt="github", headers=headers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32,fp16,bf16")
    ap.add_argument("--tp", default="1")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed prefills per engine (median)")
    ap.add_argument("--threads", type=int, default=0, help="eager threads and IREE CPU workers (default: one per core)")
    ap.add_argument("--no-native", action="store_true", help="skip native fp16 / bf16 eager (~100x slower on CPUs "
                    "without half-precision units)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    from harness.reference.eager import EagerModel
    from harness.run import options
    from harness.run.case import Case
    from harness.run.config import RunConfig

    options.apply_threads(args.threads)
    peak = gemm_peak_gflops()
    print(f"fp32 GEMM peak (torch, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for dtype in args.dtype.split(","):
        for tp in (int(t) for t in args.tp.split(",")):
            p = Case(RunConfig(args.model, dtype, tp, args.seq_len))
            engine = p.candidate.forward()
            tokens = p.inputs.tokens
            gflop = model_gflop(p.weights.config, tokens.shape[1])
            engines = {"eager": p.reference.eager.logits, "iree": engine.logits}
            variant = p.reference.variant
            if variant.torch_dtype != torch.float32 and not args.no_native:
                engines["native"] = EagerModel(variant.build(), "eager-native").logits
            times = {}
            for name, fn in engines.items():
                fn(tokens)  # warm up
                times[name] = statistics.median(_timed(lambda: fn(tokens)) for _ in range(args.repeats))
            n, stages = tokens.shape[1], p.candidate.stages
            native = times.get("native")
            rows.append([args.model, dtype, tp, n, f"{n / times['eager']:.0f}", f"{n / native:.0f}" if native else "",
                         f"{n / times['iree']:.0f}", f"{times['eager'] / times['iree']:.2f}x",
                         f"{native / times['iree']:.2f}x" if native else "", f"{gflop / times['iree'] / peak:.0%}",
                         *(f"{stages[s].seconds:.1f}" + (" (cached)" if stages[s].cached else "")
                           for s in ("export", "compile")),
                         f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}"])
            print(rows[-1], flush=True)
    print_table(rows, f"fp32 GEMM peak {peak:.1f} GFLOP/s", [
        "model", "dtype", "TP", "tokens", "eager tok/s (fp32; fp16/bf16 emulated)", "eager native tok/s",
        "IREE tok/s", "IREE / eager", "IREE / eager native", "IREE % of fp32 peak", "export s", "compile s",
        "peak RSS GiB (process so far)"])


if __name__ == "__main__":
    main()
