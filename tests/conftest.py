"""Fixtures shared by the harness's own tests."""

import pytest

from harness.reference.registry import resolve
from harness.reference.weights.packaged import shipped_smollm2_gguf


@pytest.fixture(scope="session")
def hf_smollm2():
    """transformers' model and tokenizer on the shipped SmolLM2 GGUF (its own GGUF reader and dequantizer:
    the independent implementation the harness is checked against), loaded once: ~30 s."""
    from transformers import AutoTokenizer

    gguf = shipped_smollm2_gguf()
    return resolve("smollm2-135m").load_transformers(), AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
