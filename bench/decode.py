"""Decode speed of eager and IREE side by side, in one run: tokens/s at each batch size (teacher-forced
steps after a prefill, over the paged KV cache of harness/checks/serving.py), and each as a share of this
machine's memory-bandwidth limit. Decode reads every weight and the cache pages of each sequence once per
step, so bytes per step / bandwidth is the fastest a step can be; the bandwidth is the best of large
array copies (read + write bytes) measured in the same run.

    .venv/bin/python bench/decode.py [--model smollm2-135m] [--dtype fp32] [--batch 1,4] [--steps 16]

Eager here is the harness's reference (fp16 / bf16 emulated in fp32), not a tuned server.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from prefill import _timed, print_table  # bench/ is the script's directory, so on sys.path


def bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    src = torch.empty(mib << 18, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm up
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--prefill", type=int, default=24)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="eager threads and IREE CPU workers (default: one per core)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    from harness.checks.serving import QUICK, allocate, pad
    from harness.reference.llama.paged import cache_dtype
    from harness.reference.weights import expected_shapes
    from harness.run import options
    from harness.run.case import Case
    from harness.run.config import RunConfig

    options.apply_threads(args.threads)
    bandwidth = bandwidth_gbs()
    print(f"memory bandwidth (copy, {torch.get_num_threads()} threads): {bandwidth:.1f} GB/s", flush=True)
    shape, rows = QUICK.shape, []
    for dtype in args.dtype.split(","):
        case = Case(RunConfig(args.model, dtype))
        config = case.weights.config
        layout = shape.layout(config)
        itemsize = case.reference.variant.torch_dtype.itemsize
        weight_bytes = sum(math.prod(s) for s in expected_shapes(config).values()) * itemsize
        engines = {"eager": case.reference.eager.serving(shape), "iree": case.candidate.serving(shape)}
        for batch in (int(b) for b in args.batch.split(",")):
            total = args.prefill + args.steps
            table, cache = allocate(layout, [total] * batch, shape.columns)
            tokens = case.token_inputs(total + batch).tokens[0]
            seqs = torch.stack([tokens[b:b + total] for b in range(batch)])
            per_seq_cache = total * layout.page_elems // layout.stride * cache_dtype(
                case.reference.variant.torch_dtype).itemsize
            step_bytes = weight_bytes + batch * per_seq_cache
            rates = {}
            for name, engine in engines.items():
                engine.write_cache(cache)
                engine.prefill(pad(seqs[:, :args.prefill], shape.prefill_len, config.vocab_size),
                               torch.zeros(batch, dtype=torch.int64), torch.full((batch,), args.prefill), table)
                start = time.perf_counter()
                for q in range(args.prefill, total):
                    position = torch.full((batch,), q)
                    engine.decode(seqs[:, q:q + 1], position + 1, position, table)
                rates[name] = args.steps / (time.perf_counter() - start)
            limit = bandwidth * 1e9 / step_bytes
            rows.append([args.model, dtype, batch, f"{step_bytes / 2**20:.0f}", f"{limit * batch:.0f}",
                         *(f"{rates[n] * batch:.1f} ({rates[n] / limit:.0%})" for n in ("eager", "iree")),
                         f"{rates['iree'] / rates['eager']:.2f}x"])
            print(rows[-1], flush=True)
    print_table(rows, f"copy bandwidth {bandwidth:.1f} GB/s", [
        "model", "dtype", "batch", "MiB read per step", "bandwidth limit tok/s", "eager tok/s (% of limit)",
        "IREE tok/s (% of limit)", "IREE / eager"])


if __name__ == "__main__":
    main()
