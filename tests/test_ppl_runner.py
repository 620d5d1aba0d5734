"""The runner on a tiny seeded Llama through EagerModel, over the bundled WikiText-2 text with a byte-level
fake tokenizer (the toy's vocabulary is 256)."""

import copy
import json
import math

import pytest
import torch

from harness.common.errors import HarnessError
from harness.data.dataset import load_text
from harness.perplexity.protocol import make_windows
from harness.perplexity.runner import score, score_all
from harness.reference.eager import EagerModel
from harness.reference.llama.config import TOY_GQA
from harness.reference.llama.model import Llama


class ByteTokenizer:
    name, fingerprint, bos_id, eos_id, add_bos = "bytes", "00" * 32, 1, 2, True

    def encode(self, text):
        return list(text.encode())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = Llama(TOY_GQA)
    with torch.no_grad():  # default N(0, 1) tied embeddings give near one-hot predictions; soften them
        model.embed_tokens.weight.mul_(0.1)
    return model


@pytest.fixture(scope="module")
def windows():
    return make_windows(load_text(), ByteTokenizer(), n_ctx=64, max_windows=4)


class Counting:
    """An engine wrapper that records each call's input shape."""

    def __init__(self, engine):
        self.engine, self.name, self.calls = engine, engine.name, []

    def logits(self, tokens, first=0):
        self.calls.append((tuple(tokens.shape), first))
        return self.engine.logits(tokens, first)


def test_same_model_twice_gives_identical_perplexity_and_zero_divergence(model, windows):
    a, b = Counting(EagerModel(model, "eager")), Counting(EagerModel(model, "again"))
    result = score([a, b], windows)
    # One prefill per window, never per-token decode, asking only for the scored positions' logits.
    assert a.calls == b.calls == [((1, 64), 32)] * 4
    s = result.stats
    assert s.n_tokens == 4 * 31 == result.protocol.n_tokens
    assert s.engines[0].ppl == s.engines[1].ppl
    assert s.pair.kld.value == 0 and s.pair.kld_percentiles["max"] == 0
    assert s.pair.ln_ratio.value == 0 and s.pair.same_top.value == 1


def test_perturbed_copy_diverges(model, windows):
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    result = score([EagerModel(model, "eager"), EagerModel(perturbed, "perturbed")], windows)
    p = result.stats.pair
    assert p.kld.value > 1e-4 and p.kld_percentiles["min"] > -1e-15  # fp64 rounding only
    assert p.ln_ratio.value != 0 and p.dp_rms.value > 0 and p.same_top.value < 1


def test_perplexity_is_that_of_the_scored_positions(model, windows):
    """One engine: the PPL equals exp(mean NLL) recomputed from the model on each window directly."""
    result = score([EagerModel(model, "eager")], windows)
    nll = []
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(w.inputs[None])[0].double(), -1)
            nll += [-logp[w.first + j, t].item() for j, t in enumerate(w.targets.tolist())]
    assert result.stats.pair is None
    assert result.stats.engines[0].ppl.value == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-9)


def test_result_record_summary_and_timings(model, windows):
    result = score([EagerModel(model, "eager"), EagerModel(model, "again")], windows, progress=True)
    record = json.loads(json.dumps(result.to_record()))
    assert record["protocol"]["n_windows"] == 4 and record["protocol"]["bos"] == "slot0=bos:1"
    assert record["stats"]["pair"]["kld"]["value"] == 0
    assert [t["engine"] for t in record["timings"]] == ["eager", "again"]
    assert all(t["prefill_tokens"] == 4 * 64 and t["tokens_per_s"] > 0 for t in record["timings"])
    assert result.wall_s >= sum(t.seconds for t in result.timings)
    text = result.summary()
    assert "Final estimate: PPL = " in text and "Mean    KLD:" in text and "4/" in text


def test_engine_with_the_wrong_vocabulary_is_a_one_line_error(model, windows):
    class Truncated:
        name = "truncated"

        def logits(self, tokens, first=0):
            return model(tokens, first)[..., :100]

    with pytest.raises(HarnessError, match="vocabulary") as e:
        score([EagerModel(model), Truncated()], windows)
    assert "\n" not in str(e.value)


def test_engines_shared_by_comparisons_run_once_per_window(model, windows):
    """A dtype's eager reference is compared with IREE and with eager fp32: it runs once, and each
    comparison's numbers are those of scoring it alone."""
    shared, other = Counting(EagerModel(model, "eager")), Counting(EagerModel(model, "again"))
    third = Counting(EagerModel(model, "third"))
    pair, cost = score_all([[shared, other], [third, shared]], windows)
    assert len(shared.calls) == len(other.calls) == len(third.calls) == 4
    alone = score([EagerModel(model, "eager"), EagerModel(model, "again")], windows).stats
    assert pair.stats.engines == alone.engines
    assert [e.name for e in cost.stats.engines] == ["third", "eager"]
    assert cost.stats.engines[1].ppl == pair.stats.engines[0].ppl
