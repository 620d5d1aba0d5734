"""The T5 v1.1 encoder judged two ways, per dtype: the tolerance policy (compiled vs eager in the same dtype, both
against the fp64 oracle) and the fixed atol 1e-4 / rtol 1.5e-3 of sharktank's T5 tests, the compiled output against
eager in the same dtype and against eager fp32, and eager's own output against eager fp32 and against the fp64
oracle (what a correct implementation of that dtype scores under the fixed tolerance).

    .venv/bin/python bench/t5_fixed_tolerance.py [--shape toy|small] [--seq-len 128]

`small` is google/t5-v1_1-small's shape (8 layers, d_model 512, 6 heads of 64, d_ff 1024) with seeded random
weights (the real checkpoint is not available offline); export and compile take a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from tabulate import tabulate

from harness.candidates.exported import ExportedCandidate
from harness.checks import Inputs, end_to_end
from harness.common.host import machine
from harness.iree.targets import Target
from harness.numerics import metrics
from harness.numerics.tolerance import policy
from harness.reference.eager import Reference
from harness.reference.registry import random_weights
from harness.reference.t5.config import TOY_T5, T5Config

SHAPES = {"toy": TOY_T5, "small": T5Config(vocab_size=32128, dim=512, n_layers=8, n_heads=6, head_dim=64, ffn_dim=1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="toy")
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    config = SHAPES[args.shape]
    weights = random_weights(config, seed=4)
    tokens = torch.randint(0, config.vocab_size, (1, args.seq_len), generator=torch.Generator().manual_seed(0))
    inputs = Inputs(tokens, "random ids, seed 0")
    rows = []
    for dtype in ("fp32", "fp16", "bf16"):
        reference = Reference(f"t5-{args.shape}", weights, dtype)
        candidate = ExportedCandidate(reference.variant, Target(), seq_len=args.seq_len)
        rec = end_to_end.check(candidate, reference, inputs, policy(dtype))
        eager = reference.eager.logits(tokens)
        own = [metrics.allclose(eager, ref, end_to_end.FIXED_ATOL, end_to_end.FIXED_RTOL)
               for ref in (reference.fp32.logits(tokens), reference.oracle.logits(tokens))]
        fixed = rec["fixed_tolerance"]

        def cell(v: dict) -> str:
            return "pass" if v["passed"] else f"FAIL {v['worst']:.3g}x, {100 * v['over']:.3g}% of elements over"
        verdict = rec["verdict"]
        rows.append([dtype, f"{'pass' if verdict['passed'] else 'FAIL'} {verdict['ratio']:.2f} of budget",
                     cell(fixed["vs_eager"]), cell(fixed["vs_eager_fp32"]), *map(cell, own)])
    print(f"T5 v1.1 encoder, {args.shape} shape ({dataclasses.asdict(config)}), {args.seq_len} tokens; "
          f"{machine()['cpu']} (LLVM {machine()['llvm_cpu']})")
    print(tabulate(rows, headers=["dtype", "policy (compiled vs eager, fp64 oracle)",
                                  "fixed: compiled vs eager same dtype", "fixed: compiled vs eager fp32",
                                  "fixed: eager vs eager fp32", "fixed: eager vs fp64 oracle"], tablefmt="github"))


if __name__ == "__main__":
    main()
