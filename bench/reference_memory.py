"""Memory of the eager reference, the limit on model size (issue: a reference that fits a 405B model).

Computed, per model shape: the reference a layer check holds today (the weights in fp32, eager built from them
(sharing their storage in fp32, a second copy otherwise) and the fp64 oracle: 12 bytes a parameter in fp32, 16 in
fp16 / bf16), against a streaming reference that would materialise one part at a time (the embedding, one layer or
the head, in fp32 and fp64: 12 bytes a parameter of the largest part). Measured (--measure): the peak RSS of one
process running the layer check of a model, and of one that only imports the harness, on this machine.

    .venv/bin/python bench/reference_memory.py [--measure smollm2-135m] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from prefill import print_table  # noqa: E402 - bench/ is the script's directory

SHAPES = ("smollm2-135m", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b")
MEASURE = """
import json, resource, sys
from harness.run.case import Case
from harness.run.config import RunConfig
if sys.argv[1] != "-":
    from harness.checks import layers
    rec = Case(RunConfig(sys.argv[1], sys.argv[2])).run(layers.compare)
    assert rec["passed"], rec["first_failure"]
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def part_params(name: str) -> dict[str, int]:
    """Parameters of the embedding, the largest decoder layer, the head (with the final norm) and the whole."""
    from harness.reference.registry import REGISTRY
    from harness.reference.weights import expected_shapes

    shapes = expected_shapes(REGISTRY[name].config)
    count = {k: int(torch.Size(s).numel()) for k, s in shapes.items()}
    layer = max(sum(v for k, v in count.items() if k.startswith(f"layers.{i}."))
                for i in range(REGISTRY[name].config.n_layers))
    embedding = count["embed_tokens.weight"]
    head = count.get("lm_head.weight", embedding) + count["norm.weight"]
    return {"embedding": embedding, "layer": layer, "head": head, "total": sum(count.values())}


def computed() -> None:
    rows = []
    for name in SHAPES:
        p = part_params(name)
        largest = max(p["embedding"], p["layer"], p["head"])
        rows.append([name, f"{p['total'] / 1e9:.3g}", f"{p['embedding'] / 1e9:.3g}", f"{p['layer'] / 1e9:.3g}",
                     f"{12 * p['total'] / 2**30:,.1f}", f"{16 * p['total'] / 2**30:,.1f}",
                     f"{12 * largest / 2**30:,.2f}"])
    print_table(rows, "computed, GiB of parameters only (activations excluded)",
                ["model", "params (G)", "embedding (G)", "largest layer (G)", "today fp32 (GiB)",
                 "today fp16/bf16 (GiB)", "streaming, largest part (GiB)"])


def peak_rss(model: str, dtype: str) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, model, dtype], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(model: str, dtype: str) -> None:
    base, check = peak_rss("-", dtype), peak_rss(model, dtype)
    print_table([[model, dtype, f"{base / 2**30:.2f}", f"{check / 2**30:.2f}", f"{(check - base) / 2**30:.2f}"]],
                "peak RSS of one process (GiB)", ["model", "dtype", "imports only", "layer check", "difference"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", default="", help="a model whose layer check's peak RSS to measure")
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()
    computed()
    if args.measure:
        measured(args.measure, args.dtype)


if __name__ == "__main__":
    main()
