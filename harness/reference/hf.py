"""Hugging Face transformers' implementation of a model: the independent implementation that the harness's
eager reference is checked against (tests/test_reference_vs_transformers.py, and before an eager fp32 golden
is written: checks/perplexity.py). It reads GGUF files with its own reader and dequantizer."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from harness.perplexity.protocol import Window


def load_gguf(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                local_files_only=True).eval()


def load_dir(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


@torch.no_grad()
def window_nll(model: torch.nn.Module, windows: Iterable[Window]) -> list[float]:
    """Each window's NLL sum of its scored targets, in fp64 from the model's fp32 logits (as the harness's
    statistics take them)."""
    sums = []
    for w in windows:
        logits = model(w.inputs[None]).logits[0, w.first:w.first + len(w.targets)]
        sums.append(float(-torch.log_softmax(logits.double(), -1).gather(1, w.targets[:, None]).sum()))
    return sums
