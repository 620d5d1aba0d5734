"""Memory of the eager reference, the limit on model size (issue: a reference that fits a 405B model).

Computed, per model shape: the reference a layer check would hold resident (the weights in fp32, eager built from
them (sharing their storage in fp32, a second copy otherwise) and the fp64 oracle: 12 bytes a parameter in fp32, 16
in fp16 / bf16), against the streaming reference it holds (reference/eager.py StreamingParts: one eager part, fp32,
held while one oracle part is built from fp32 into fp64: 16 bytes a parameter of the largest part). Measured
(--measure): the peak RSS of one process running the layer check, or the bisection, of a model with the streaming
reference and with the resident one (the weights read whole and kept, the parts those of whole built models, as the
harness did before), and of one that only imports the harness, on this machine.

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
model, dtype, check, reference = sys.argv[1:]
if reference == "resident":  # the harness before the streaming reference: weights kept, whole models' parts
    from harness.reference import eager, registry
    from harness.reference.weights import gguf
    def load_whole(path):
        weights = gguf.load_gguf(path)
        weights.state_dict = dict(weights.state_dict)
        return weights
    registry.load_gguf = load_whole
    eager.Reference.parts = lambda self, which: (self.eager if which == "eager" else self.oracle).parts()
if check != "imports":
    from harness.checks import bisect, layers
    from harness.run.case import Case
    from harness.run.config import RunConfig
    rec = Case(RunConfig(model, dtype)).run(layers.compare if check == "layers" else bisect.bisect)
    assert rec["passed"] if check == "layers" else not rec["diverged"], rec
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
                     f"{16 * largest / 2**30:,.2f}"])
    print_table(rows, "computed, GiB of parameters only (activations excluded)",
                ["model", "params (G)", "embedding (G)", "largest layer (G)", "resident fp32 (GiB)",
                 "resident fp16/bf16 (GiB)", "streaming, largest part (GiB)"])


def peak_rss(model: str, dtype: str, check: str, reference: str) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, model, dtype, check, reference], capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"{check} ({reference}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(model: str, dtype: str) -> None:
    base = peak_rss(model, dtype, "imports", "streaming")
    rows = [["imports only", "-", f"{base / 2**30:.2f}", "-"]]
    for check in ("layers", "bisect"):
        for reference in ("resident", "streaming"):
            peak = peak_rss(model, dtype, check, reference)
            rows.append([check, reference, f"{peak / 2**30:.2f}", f"{(peak - base) / 2**30:.2f}"])
    print_table(rows, f"peak RSS of one process, {model} {dtype} (GiB; the compiled program's parameters included)",
                ["check", "reference", "peak RSS", "above imports"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", default="", help="a model whose layer check's and bisection's peak RSS to measure")
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()
    computed()
    if args.measure:
        measured(args.measure, args.dtype)


if __name__ == "__main__":
    main()
