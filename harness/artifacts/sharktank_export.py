"""Make a sharktank export the way a sharktank user does, to test the harness on real ones. Runs in sharktank's own
environment (it pins transformers 4.52.1; .ci/setup makes .venv-sharktank), so it imports nothing of the harness:

    python sharktank_export.py toy SEED OUT_DIR        sharktank's toy llama (fp32, random, block_seq_stride 16)
    python sharktank_export.py toy-pp2 SEED OUT_DIR    the same on 2 devices (--pipeline-parallelism-size=2)
    python sharktank_export.py gguf FILE.gguf OUT_DIR  a llama GGUF dequantized to an fp32 IRPA (block_seq_stride 32)

OUT_DIR gets model.irpa, model.mlir and config.json from `amdsharktank.examples.export_paged_llm_v1`, with batch
sizes 1 and 4 and --has-prefill-position.
"""

import subprocess
import sys
from pathlib import Path

import torch


def toy_irpa(seed: int, path: Path) -> int:
    from amdsharktank.models.llama import toy_llama
    from amdsharktank.types import Dataset

    theta, config = toy_llama.generate(seed, dtype_rest=torch.float32, dtype_norm=torch.float32)
    Dataset(config.to_properties(), theta).save(path)
    return config.block_seq_stride


def gguf_irpa(gguf_path: Path, path: Path) -> int:
    """Every tensor dequantized to fp32 under its GGUF name (rows in llama.cpp's interleaved rotary layout, which
    `llama.rope.interleave_emb` tells sharktank), and `output.weight` added where the embedding is tied."""
    import gguf
    import numpy as np
    from amdsharktank.types import Dataset, DefaultPrimitiveTensor, Theta
    from amdsharktank.types.gguf_interop.base import _load_properties

    reader = gguf.GGUFReader(gguf_path)
    properties = _load_properties(reader)  # what sharktank's own GGUF import reads
    properties["llama.rope.interleave_emb"] = True
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        tensors[t.name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    tensors.setdefault("output.weight", tensors["token_embd.weight"].clone())
    Dataset(properties, Theta({k: DefaultPrimitiveTensor(name=k, data=v) for k, v in tensors.items()})).save(path)
    return 32


def main(kind: str, source: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    irpa = out_dir / "model.irpa"
    stride = toy_irpa(int(source), irpa) if kind.startswith("toy") else gguf_irpa(Path(source), irpa)
    subprocess.run([sys.executable, "-m", "amdsharktank.examples.export_paged_llm_v1", f"--irpa-file={irpa}",
                    f"--output-mlir={out_dir / 'model.mlir'}", f"--output-config={out_dir / 'config.json'}",
                    "--bs-prefill=1,4", "--bs-decode=1,4", "--has-prefill-position", f"--block-seq-stride={stride}",
                    "--activation-dtype=float32", "--attention-dtype=float32", "--kv-cache-dtype=float32",
                    f"--pipeline-parallelism-size={2 if kind == 'toy-pp2' else 1}"],
                   check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main(*sys.argv[1:])
