"""Fixtures shared by the harness's own tests."""

import pytest
import torch

from harness.reference.weights.packaged import shipped_smollm2_gguf


@pytest.fixture(scope="session")
def hf_smollm2():
    """transformers' LlamaForCausalLM and tokenizer on the shipped SmolLM2 GGUF (its own GGUF reader and
    dequantizer: the independent implementation the harness is checked against), loaded once: ~30 s."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = shipped_smollm2_gguf()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer
