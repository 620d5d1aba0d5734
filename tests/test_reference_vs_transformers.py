"""The harness's eager fp32 reference on the real SmolLM2 GGUF against transformers' LlamaForCausalLM
loading the same file: same tokens, same weights, same logits up to fp32 rounding."""

from __future__ import annotations

import pytest
import torch

from harness.reference.llama.model import Llama
from harness.reference.tokenizer import Tokenizer
from harness.reference.weights.gguf import load_gguf
from harness.reference.weights.packaged import shipped_smollm2_gguf

pytestmark = pytest.mark.slow

SENTENCE = ("The Eiffel Tower, completed in 1889 for the World's Fair, is one of the most visited "
            "monuments in Paris and was the tallest structure in the world for more than forty years.")

# Both models run the same fp32 computation, but may order reductions differently (attention kernels,
# matrix-product blocking). Each reordering costs a few ulps; allow a few hundred ulps of the logits'
# own scale through 30 layers.
ULPS_OF_LOGIT_SCALE = 256


@pytest.fixture(scope="module")
def models(hf_smollm2):
    hf_model, hf_tokenizer = hf_smollm2
    path = shipped_smollm2_gguf()
    weights = load_gguf(path)
    model = Llama(weights.config).eval()
    model.load_state_dict(weights.state_dict)
    return model, weights, Tokenizer.from_gguf(path), hf_model, hf_tokenizer


def test_same_token_ids(models):
    _, _, tokenizer, _, hf_tokenizer = models
    ids = tokenizer.encode(SENTENCE)
    assert ids == hf_tokenizer(SENTENCE, add_special_tokens=False).input_ids
    assert len(ids) > 30


def test_same_weights(models):
    """transformers dequantizes and un-permutes with its own code; both decode the same bytes with the
    same fp32 arithmetic, so the values agree exactly."""
    _, weights, _, hf_model, _ = models
    hf_state = hf_model.state_dict()
    differing = [name for name, tensor in weights.state_dict.items()
                 if not torch.equal(tensor, hf_state[f"model.{name}"])]
    assert not differing


def test_same_logits(models):
    model, _, tokenizer, hf_model, _ = models
    tokens = torch.tensor([tokenizer.encode(SENTENCE)])
    with torch.no_grad():
        ours, theirs = model(tokens), hf_model(tokens).logits
    scale = theirs.abs().max().item()
    bound = ULPS_OF_LOGIT_SCALE * torch.finfo(torch.float32).eps * scale
    diff = (ours - theirs).abs().max().item()
    print(f"\nharness vs transformers, {tokens.shape[1]} tokens: max |logit diff| {diff:.3g} "
          f"(bound {bound:.3g}, logit scale {scale:.1f})")
    assert diff <= bound
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
