"""How much of the KLD the eager cache's summary keeps (perplexity/eager_cache.py): the KLD of two distributions
coarsened to the reference's top k tokens and "the rest", against the full-vocabulary KLD, per k, for two kinds of
disagreement on SmolLM2's first WikiText-2 windows: eager fp32 against eager bf16 (emulated), and eager fp32 against
itself plus 1e-5 logit noise (the size of an fp32 compiler's differences).

    .venv/bin/python bench/kld_top_k.py [--windows 3] [--k 16,32,64,128]
"""

from __future__ import annotations

import argparse

import torch

from prefill import print_table  # noqa: E402 - bench/ is the script's directory


def main() -> None:
    from harness.checks import perplexity
    from harness.perplexity.eager_cache import measure_against, summarize
    from harness.perplexity.stats import Accumulator
    from harness.reference.eager import Reference
    from harness.reference.registry import resolve

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--k", default="16,32,64,128")
    args = ap.parse_args()
    spec = resolve("smollm2-135m")
    weights = spec.load_weights()
    fp32, bf16 = (Reference("smollm2-135m", weights, d, tokenizer=spec.load_tokenizer) for d in ("fp32", "bf16"))
    noise = torch.Generator().manual_seed(0)
    ks = [int(k) for k in args.k.split(",")]
    sums = {(name, k): [0.0, 0.0] for name in ("bf16", "fp32 + 1e-5 noise") for k in ks}
    for window in perplexity.windows(fp32, args.windows):
        tokens, n = window.inputs[None], len(window.targets)
        a = fp32.eager.logits(tokens, window.first)[0, :n]
        others = {"bf16": bf16.eager.logits(tokens, window.first)[0, :n],
                  "fp32 + 1e-5 noise": a + 1e-5 * torch.randn(a.shape, generator=noise)}
        for name, b in others.items():
            full = Accumulator(["a", "b"]).measure(window.targets, [a, b]).kld.sum()
            for k in ks:
                sums[name, k][0] += measure_against(window.targets, summarize(window.targets, a, k), b).kld.sum()
                sums[name, k][1] += full
    rows = [[name, k, f"{kept / full:.1%}"] for (name, k), (kept, full) in sums.items()]
    print_table(rows, f"SmolLM2, the first {args.windows} windows of 512",
                ["eager fp32 against", "top k", "KLD kept (coarsened / full)"])


if __name__ == "__main__":
    main()
