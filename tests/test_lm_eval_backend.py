"""The lm-eval backends ("iree", "harness-eager") against direct computations from the engines' logits.

The toy model has no tokenizer and lm-eval's requests are text, so the toy tests give the backend a
byte-level tokenizer (the toy's vocabulary is 256). The real-model tests run SmolLM2-135M."""

from __future__ import annotations

import math
import re

import pytest
import torch
from lm_eval.api.instance import Instance

from harness.data.dataset import Text, load_text
from harness.lmeval.backend import PAD_ID, TASKS_DIR, HarnessEagerLM, HarnessLM
from harness.perplexity.protocol import make_windows
from harness.perplexity.runner import score

TOY_LENGTH = 64
REAL_LENGTH = 128
TEXT = ("Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role on "
        "the television series The Bill in 2000 .")


class ByteTokenizer:
    name, fingerprint, bos_id, eos_id, add_bos = "bytes", "00" * 32, 1, 2, False

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


def requests(kind, *args):
    return [Instance(kind, {}, a if isinstance(a, tuple) else (a,), i) for i, a in enumerate(args)]


def direct_log_probs(lm, tokens):
    """fp64 log-probs of each position's next token, from the engine on the tokens as the backend feeds
    them (a compiled engine takes its static length, right-padded)."""
    padded = tokens + [PAD_ID] * (lm.static_length - len(tokens)) if lm.static_length else tokens
    return torch.log_softmax(lm.engine.logits(torch.tensor([padded]))[0, :len(tokens)].double(), -1)


@pytest.fixture(scope="module", params=["eager", "iree"])
def toy(request):
    return HarnessLM(model="toy-gqa", engine=request.param, max_length=TOY_LENGTH, tokenizer=ByteTokenizer())


@pytest.mark.parametrize("context, continuation", [
    ("The quick brown fox", " jumps over the lazy dog"),
    ("", "Hello"),  # empty context: the prefix token (BOS) conditions the continuation
    ("x" * 100, " tail"),  # longer than max_length: truncated from the left
], ids=["context", "empty-context", "truncated"])
def test_loglikelihood_is_the_sum_of_continuation_log_probs(toy, context, continuation):
    (ll, greedy), = toy.loglikelihood(requests("loglikelihood", (context, continuation)))
    seq = ([ByteTokenizer.bos_id] if not context else list(context.encode())) + list(continuation.encode())
    seq = seq[-(TOY_LENGTH + 1):]
    n = len(continuation.encode())
    logp = direct_log_probs(toy, seq[:-1])[-n:]
    targets = torch.tensor(seq[-n:])
    assert ll == pytest.approx(logp.gather(1, targets[:, None]).sum().item(), rel=1e-12)
    assert greedy == bool((logp.argmax(-1) == targets).all())


def test_greedy_continuation_is_flagged_greedy(toy):
    context = list(b"abc")
    best = int(direct_log_probs(toy, context)[-1].argmax())
    (_, greedy), = toy._loglikelihood_tokens([(None, context, [best])])
    (_, other), = toy._loglikelihood_tokens([(None, context, [(best + 1) % 256])])
    assert greedy and not other


def test_loglikelihood_rolling_is_the_sum_of_per_token_log_probs(toy):
    """Every token once, each with as much context as fits max_length, the first after BOS."""
    ll, = toy.loglikelihood_rolling(requests("loglikelihood_rolling", TEXT))
    tokens = list(TEXT.encode())
    assert len(tokens) > 2 * TOY_LENGTH  # three windows, the last one partial
    ids = [ByteTokenizer.bos_id] + tokens  # tokens[i] is ids[i + 1]
    expected = 0.0
    for start in range(0, len(tokens), TOY_LENGTH):
        end = min(start + TOY_LENGTH, len(tokens))
        lo = max(0, end - TOY_LENGTH)
        logp = direct_log_probs(toy, ids[lo:end])
        expected += sum(logp[i - lo, ids[i + 1]].item() for i in range(start, end))
    assert ll == pytest.approx(expected, rel=1e-12)


def test_right_padding_leaves_the_real_positions_alone():
    lm = HarnessEagerLM(model="toy-gqa", max_length=TOY_LENGTH, tokenizer=ByteTokenizer())
    tokens = torch.tensor([list(TEXT.encode())[:40]])
    padded = torch.nn.functional.pad(tokens, (0, TOY_LENGTH - 40), value=PAD_ID)
    torch.testing.assert_close(lm.engine.logits(padded)[:, :40], lm.engine.logits(tokens), rtol=1e-5, atol=1e-5)


def test_generate_until_is_greedy_and_stops(toy):
    context, max_gen = "Once upon a time", 6
    tokens, generated = list(context.encode()), []
    while len(generated) < max_gen:
        token = int(direct_log_probs(toy, tokens + generated)[-1].argmax())
        if token == ByteTokenizer.eos_id:
            break
        generated.append(token)
    text = ByteTokenizer().decode(generated)
    stop = text[2]  # a stop string that the greedy output reaches before max_gen_toks
    out = toy.generate_until(requests("generate_until", (context, {"until": [], "max_gen_toks": max_gen}),
                                      (context, {"until": [stop], "max_gen_toks": max_gen})))
    assert out == [text, text.split(stop)[0]]


def test_model_args_ignore_lm_evals_device_and_batch_size():
    """lm-eval passes its --device (cuda:0 by default) and --batch_size along with model_args."""
    lm = HarnessEagerLM.create_from_arg_obj({"model": "toy-gqa", "max_length": 32, "tokenizer": ByteTokenizer()},
                                            {"device": "cuda:0", "batch_size": 8})
    assert lm.max_length == 32 and lm.engine.name == "eager" and lm.static_length is None


def test_wikitext_local_documents_are_the_articles():
    from harness.lmeval.tasks.wikitext_local import load_docs, pages

    text = load_text().text
    docs = load_docs(model="ignored")["test"]["page"]
    assert docs == pages(text) and len(docs) == 62  # the bundled data README's count of top-level headings
    assert "\n".join(docs) == text.removeprefix(" \n")
    assert all(re.match(r" = [^=].* = \n", doc) for doc in docs)


# SmolLM2-135M: the wikitext_local task end to end, and the compiled engine against eager.

@pytest.fixture(scope="module")
def smollm2_eager():
    from lm_eval.api.registry import get_model

    # The path lm-eval takes for `--model harness-eager --model_args ...`, with its own --device along.
    return get_model("harness-eager").create_from_arg_string(
        f"model=smollm2-135m,dtype=fp32,max_length={REAL_LENGTH}", {"device": "cuda:0", "batch_size": 1})


@pytest.mark.slow
def test_wikitext_local_word_perplexity_end_to_end(smollm2_eager):
    """lm-eval's metrics on the first article equal exp(-LL / words) etc., with LL recomputed by the harness's
    own perplexity runner (rolling protocol, n_ctx = max_length) on lm-eval's detokenized text.
    max_length 128 keeps it fast (the article takes 12 windows)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness.lmeval.tasks.wikitext_local import pages, wikitext_detokenizer

    out = lm_eval.simple_evaluate(model=smollm2_eager, tasks=["wikitext_local"], limit=1,
                                  task_manager=TaskManager(include_path=str(TASKS_DIR)))
    metrics = out["results"]["wikitext_local"]

    page = pages(load_text().text)[0]
    assert page.startswith(" = Robert Boulter = \n")
    text = Text("wikitext_local[0]", "", "raw", wikitext_detokenizer({"page": page}))
    windows = make_windows(text, smollm2_eager.tokenizer, scheme="rolling", n_ctx=REAL_LENGTH)
    result = score([smollm2_eager.engine], windows)
    ll = -math.log(result.stats.engines[0].ppl.value) * result.protocol.n_tokens
    words, n_bytes = len(re.split(r"\s+", page)), len(page.encode())
    print(f"\nwikitext_local doc 0: {result.protocol.n_tokens} tokens, {words} words, {n_bytes} bytes, LL {ll:.4f}, "
          f"word_perplexity {metrics['word_perplexity,none']:.6f}")
    assert math.isfinite(metrics["word_perplexity,none"])
    assert metrics["word_perplexity,none"] == pytest.approx(math.exp(-ll / words), rel=1e-9)
    assert metrics["byte_perplexity,none"] == pytest.approx(math.exp(-ll / n_bytes), rel=1e-9)
    assert metrics["bits_per_byte,none"] == pytest.approx(-ll / n_bytes / math.log(2), rel=1e-9)


@pytest.mark.slow
def test_iree_scores_as_eager_fp32(smollm2_eager):
    """Compiled vs eager, fp32: the same log-likelihoods to 1e-4 relative (the fp32 perplexity budget is
    1e-4 nats per token), and the same greedy text."""
    iree = HarnessLM(model="smollm2-135m", dtype="fp32", engine="iree", max_length=REAL_LENGTH)
    pairs = [("The capital of France is", " Paris"), ("", TEXT[:60]), (TEXT * 4, " The Bill")]
    lls = [lm.loglikelihood(requests("loglikelihood", *pairs)) for lm in (smollm2_eager, iree)]
    rolling = [lm.loglikelihood_rolling(requests("loglikelihood_rolling", TEXT * 4)) for lm in (smollm2_eager, iree)]
    gen = {"until": ["\n"], "max_gen_toks": 6}
    texts = [lm.generate_until(requests("generate_until", ("The capital of France is", gen))) for lm in
             (smollm2_eager, iree)]
    print(f"\neager vs iree loglikelihood {lls}\nrolling {rolling}\ngenerated {texts}")
    for (eager_ll, eager_greedy), (iree_ll, iree_greedy) in zip(*lls):
        assert iree_ll == pytest.approx(eager_ll, rel=1e-4) and iree_greedy == eager_greedy
    assert rolling[1][0] == pytest.approx(rolling[0][0], rel=1e-4)
    assert texts[0] == texts[1] and texts[0] and "\n" not in texts[0]
