"""IRPA parameter archives as sharktank writes them, read with IREE's runtime alone (no sharktank import):
each tensor entry carries `PYTORCH:{"dtype": ..., "shape": ...}` metadata, and two JSON entries hold the
dataset's properties (GGUF-style llama hyper-parameters plus sharktank's own) and the inference tensors'
types (a quantized or sharded tensor is several raw entries under one name)."""

from __future__ import annotations

import json
from pathlib import Path

import iree.runtime as rt
import numpy as np
import torch

from harness.common.errors import HarnessError

PROPERTIES, INFERENCE_TENSORS = "__AMD_SHARK_DATASET__", "__AMD_SHARK_INFERENCE_TENSORS__"
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32,
                "int64": torch.int64}
# The harness's GGUF type names for the float dtypes it reads (weights/gguf.py SUPPORTED_TYPES).
GGUF_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def read_irpa(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(properties, {name: tensor}) of a sharktank IRPA file; tensors are copies, in their stored dtype."""
    if not path.is_file():
        raise HarnessError(f"{path}: no such IRPA file")
    index = rt.ParameterIndex()
    try:
        index.load(str(path))
    except Exception as e:  # noqa: BLE001 - the runtime raises bare RuntimeError/ValueError
        raise HarnessError(f"{path}: not a readable IRPA archive: {str(e).splitlines()[0]}") from e
    entries = dict(index.items())
    if PROPERTIES not in entries or INFERENCE_TENSORS not in entries:
        raise HarnessError(f"{path}: no {PROPERTIES} / {INFERENCE_TENSORS} entries: not written by sharktank")
    properties = json.loads(bytes(entries.pop(PROPERTIES).file_view))
    kinds = json.loads(bytes(entries.pop(INFERENCE_TENSORS).file_view))
    odd = sorted(f"{name} ({k['type_name']})" for name, k in kinds.items() if k["type_name"] != "PrimitiveTensor")
    if odd:
        raise HarnessError(f"{path}: quantized or sharded sharktank tensors are not read yet: {', '.join(odd[:4])}")
    return properties, {name: _tensor(path, name, entry) for name, entry in entries.items()}


def _tensor(path: Path, name: str, entry) -> torch.Tensor:
    meta = bytes(entry.metadata or b"")
    if not meta.startswith(b"PYTORCH:"):
        raise HarnessError(f"{path}: tensor {name} has no PYTORCH dtype/shape metadata")
    meta = json.loads(meta.removeprefix(b"PYTORCH:"))
    if meta["dtype"] not in TORCH_DTYPES:
        raise HarnessError(f"{path}: tensor {name} has dtype {meta['dtype']}, not one of {', '.join(TORCH_DTYPES)}")
    data = np.frombuffer(entry.file_view, np.uint8).copy()
    return torch.from_numpy(data).view(TORCH_DTYPES[meta["dtype"]]).reshape(meta["shape"])
