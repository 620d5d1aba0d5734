"""The harness's eager perplexity (default protocol: llama.cpp's, n_ctx 512) on SmolLM2-135M fp32 against an
independent computation: transformers' LlamaForCausalLM on the same GGUF and the same window tokens, with
the cross-entropy taken here on the same scored positions."""

from __future__ import annotations

import math

import pytest
import torch

from harness.data.dataset import load_text
from harness.perplexity.protocol import make_windows
from harness.perplexity.runner import score
from harness.run.case import Case
from harness.run.config import RunConfig

pytestmark = pytest.mark.slow

N_WINDOWS = 2
# Both run the same fp32 model and differ only in reduction order: logits agree to ~1e-5 (see
# test_reference_vs_transformers), so a token's NLL does to about as much and the mean NLL to far less.
PPL_RTOL = 1e-5
NLL_ATOL = 1e-4


class Recording:
    """An engine wrapper that keeps the logits it returned, to read per-token NLLs from what was scored."""

    def __init__(self, engine):
        self.engine, self.name, self.logits_seen = engine, engine.name, []

    def logits(self, tokens, first=0):
        out = self.engine.logits(tokens, first)
        self.logits_seen.append(out)
        return out


def token_nll(logits: torch.Tensor, window) -> torch.Tensor:
    """fp64 NLL of each scored target from `logits` of positions window.first..:
    -log_softmax(logits)[position, target]."""
    rows = logits[0, :len(window.targets)].double()
    return -torch.log_softmax(rows, -1).gather(1, window.targets[:, None])[:, 0]


def test_eager_perplexity_matches_transformers(hf_smollm2):
    case = Case(RunConfig("smollm2-135m", "fp32"))
    windows = make_windows(load_text(), case.spec.load_tokenizer(), max_windows=N_WINDOWS)
    harness = Recording(case.reference.eager)
    ppl = score([harness], windows).stats.engines[0].ppl.value
    ours = torch.cat([token_nll(logits, w) for logits, w in zip(harness.logits_seen, windows)])

    hf_model, _ = hf_smollm2
    with torch.no_grad():
        theirs = torch.cat([token_nll(hf_model(w.inputs[None]).logits[:, w.first:], w) for w in windows])
    hf_ppl = math.exp(theirs.mean().item())

    diff = (ours - theirs).abs().max().item()
    print(f"\n{windows.protocol.scheme} n_ctx={windows.protocol.n_ctx}, {N_WINDOWS} windows, {theirs.numel()} tokens: "
          f"harness PPL {ppl:.8f}, transformers PPL {hf_ppl:.8f}, relative diff {ppl / hf_ppl - 1:+.2e}, "
          f"max |dNLL| {diff:.2e}")
    assert theirs.numel() == windows.protocol.n_tokens == N_WINDOWS * 255
    assert ppl == pytest.approx(hf_ppl, rel=PPL_RTOL)
    assert ppl == pytest.approx(math.exp(ours.mean().item()), rel=1e-12)  # the runner scored what was recorded
    assert diff <= NLL_ATOL
