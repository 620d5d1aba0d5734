"""Where the tolerance multiples and floors come from: the distribution, over clean configurations, of each
measure's ratio error / budget under the policy in force (harness/numerics/tolerance.py: multiples and floors),
the compiled model against eager in the same dtype, both against the fp64 oracle. For every part of the layer
check (embedding, each decoder layer, head; isolated and propagated), every sub-block of every isolated
decoder layer (mode "sub-block") and the end-to-end logits, per model, dtype, sequence length and input seed,
it records the ratio of every measure: RMSE and max abs, the worst output channel's and position's RMSE and
the worst channel gain error, judged or only recorded (tolerance.measures says which decide where). A clean
ratio must sit below 1 with a margin (1 / the largest); tolerance.py and the README carry the table this
prints. Ratios at the policy, not at multiple 1: where the floor dominates a budget, no multiple helps.

    .venv/bin/python bench/policy_calibration.py [--models toy-tp8,smollm2-135m] [--dtypes fp32,fp16,bf16]
        [--seq-lens 32,128,512] [--seeds 0,1,2] [--out calibration.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings

import numpy as np
from tabulate import tabulate

MEASURES = ("rmse", "max_abs", "channel", "position", "gain")


def write_rows(rows: list, path: str) -> None:
    """Every measurement as JSON at `path` (none given: nothing written)."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f)


def seeded_inputs(case, seq_len: int, seed: int):
    """[1, seq_len] token ids for `case`'s model: a different stretch of the WikiText test file per seed for a
    model with a tokenizer, seeded random ids for a toy."""
    import torch

    from harness.checks import Inputs
    from harness.data.dataset import BUNDLED_PATH

    if case.spec.real_text:
        text = BUNDLED_PATH.read_text(encoding="utf-8")[20000 * seed:][: 8 * seq_len]
        ids = case.spec.load_tokenizer().encode(text)[:seq_len]
        return Inputs(torch.tensor([ids], dtype=torch.int64), f"wikitext from char {20000 * seed}")
    gen = torch.Generator().manual_seed(seed)
    return Inputs(torch.randint(0, case.weights.config.vocab_size, (1, seq_len), generator=gen), f"seed {seed}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("--models", "toy-tp8,smollm2-135m"), ("--dtypes", "fp32,fp16,bf16"),
                          ("--seq-lens", "32,128,512"), ("--seeds", "0,1,2"), ("--out", "")):
        ap.add_argument(flag, default=default, help=f"comma-separated (default {default})" if default else
                        "also write every ratio as JSON here")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    import torch

    from harness.checks.layers import LayerCheck
    from harness.common.host import machine
    from harness.numerics.tolerance import judge
    from harness.run.case import Case
    from harness.run.config import RunConfig

    class EveryMeasure:
        """The policy's multiples and floors on every measure. (Its layers' verdicts are their outputs'; the
        sub-blocks are recorded apart, mode "sub-block".)"""

        structured = ()

        def __init__(self, dtype: torch.dtype):
            self.dtype = dtype

        def judge(self, result, eager, oracle, *_, **__):
            return judge(result, eager, oracle, self.dtype, measures=MEASURES)

    rows = []  # model, dtype, seq, seed, mode, part, {measure: ratio}
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            for seq_len in (int(n) for n in args.seq_lens.split(",")):
                case = Case(RunConfig(model, dtype, seq_len=seq_len))
                policy = EveryMeasure(case.reference.variant.torch_dtype)
                forward = case.candidate.forward(seq_len)
                for seed in (int(s) for s in args.seeds.split(",")):
                    x = seeded_inputs(case, seq_len, seed)
                    check = LayerCheck(case.candidate, case.reference, x, policy)
                    parts = [check.isolated(i) for i in range(-1, check.n_layers + 1)] + check.propagated()
                    parts += [dataclasses.replace(s, name=f"layer_{i}/{s.name}", mode="sub-block")
                              for i in range(check.n_layers) for s in check.sub_blocks(i)]
                    tokens = x.tokens
                    e2e = policy.judge(forward.logits(tokens), case.reference.eager.logits(tokens),
                                       case.reference.oracle.logits(tokens))
                    judged = [(p.mode, p.name, p.verdict) for p in parts] + [("end_to_end", "logits", e2e)]
                    for mode, name, verdict in judged:
                        ratios = {m: verdict.errors[m] / verdict.budgets[m] for m in MEASURES}
                        rows.append([model, dtype, seq_len, seed, mode, name, ratios])
                    worst = {m: max(r[6][m] for r in rows if r[:4] == [model, dtype, seq_len, seed]) for m in MEASURES}
                    print(model, dtype, seq_len, seed, {m: round(v, 2) for m, v in worst.items()}, flush=True)
    write_rows(rows, args.out)
    m = machine()
    print(f"\n{m['cpu']} (LLVM {m['llvm_cpu']}), {m['threads']} threads; compiled / eager error against the fp64 "
          f"oracle, error / budget under the policy in force, over every part and end to end; sequence lengths "
          f"{args.seq_lens}, seeds {args.seeds}")
    table = []
    for dtype in args.dtypes.split(","):
        for model in args.models.split(","):
            for mode in ("isolated", "sub-block", "propagated", "end_to_end"):
                sel = [r for r in rows if r[0] == model and r[1] == dtype and r[4] == mode]
                if not sel:
                    continue
                cells = []
                for measure in MEASURES:
                    values = np.array([r[6][measure] for r in sel])
                    top = sel[int(values.argmax())]
                    cells.append(f"{np.median(values):.2f} / {np.percentile(values, 99):.2f} / {values.max():.2f} "
                                 f"({top[5]}, {top[2]} tok)")
                table.append([dtype, model, mode, len(sel), *cells])
    print(tabulate(table, tablefmt="github", headers=["dtype", "model", "mode", "parts", *(
        f"{m}: median / p99 / max (where)" for m in MEASURES)]))


if __name__ == "__main__":
    main()
