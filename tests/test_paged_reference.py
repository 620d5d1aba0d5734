"""The eager paged path (reference/llama/paged.py, Llama.paged) against the dense reference, which
test_reference_vs_transformers.py ties to Hugging Face's Llama: a prefill and the decode steps after it
give the dense model's logits at every position, in every precision the checks use; the cache holds the
dense model's K/V at the offsets sharktank's layout [layers, 2, kv_heads, stride, head_dim] puts them."""

import pytest
import torch

from harness.checks.serving import allocate, pad
from harness.numerics import metrics
from harness.reference.eager import Reference
from harness.reference.llama.paged import ServingShape
from harness.reference.registry import resolve

SHAPE = ServingShape(prefill_len=64, columns=4, n_pages=12, stride=16)
PREFILL, STEPS = 21, 19  # decode crosses a page boundary at 32


def paged_logits(serving, tokens, table):
    n = PREFILL + STEPS
    out = [serving.prefill(pad(tokens[:, :PREFILL], SHAPE.prefill_len, vocab=2), torch.tensor([0]), torch.tensor([PREFILL]),
                           table)[0, :PREFILL]]
    for q in range(PREFILL, n):
        out.append(serving.decode(tokens[:, q:q + 1], torch.tensor([q + 1]), torch.tensor([q]), table)[0])
    return torch.cat(out)


@pytest.fixture(scope="module")
def toy():
    weights = resolve("toy-tp8").load_weights()
    tokens = torch.randint(0, weights.config.vocab_size, (1, PREFILL + STEPS), generator=torch.Generator().manual_seed(3))
    return weights, tokens


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_prefill_then_decode_equals_the_dense_model(toy, dtype):
    weights, tokens = toy
    reference = Reference("toy-tp8", weights, dtype, attention="math")
    layout = SHAPE.layout(weights.config)
    table, cache = allocate(layout, [tokens.shape[1]], SHAPE.columns)
    for engine in (reference.eager, reference.oracle):
        serving = engine.serving(SHAPE)
        serving.write_cache(cache)
        paged, dense = paged_logits(serving, tokens, table), engine.logits(tokens)[0]
        assert metrics.all_finite(paged)
        # Same arithmetic, bar the decode attention's reduction length: fp32 rounding (or fp64's).
        bound = 1e-12 if engine is reference.oracle else 1e-5 if dtype == "fp32" else 4 * float(
            (dense - reference.oracle.logits(tokens)[0]).abs().max())
        assert metrics.max_abs(paged, dense) <= bound, (engine.name, dtype)
    # A cache that was never written (or written to a copy) makes decode attend to zeros: far off.
    assert metrics.max_abs(paged_logits(engine.serving(SHAPE), tokens, torch.zeros_like(table)), dense) > 1e-3


def test_cache_holds_each_layers_k_and_v_where_sharktank_puts_them(toy):
    weights, tokens = toy
    reference = Reference("toy-tp8", weights, "fp32", attention="math")
    layout, config = SHAPE.layout(weights.config), weights.config
    table, cache = allocate(layout, [tokens.shape[1]], SHAPE.columns)
    serving = reference.oracle.serving(SHAPE)
    serving.write_cache(cache)
    paged_logits(serving, tokens, table)
    written = serving.read_cache()
    # The dense oracle's K (after RoPE) and V of every layer, from its taps.
    parts, h = reference.oracle.parts(), reference.oracle.parts().embed(tokens)
    kv_heads, head_dim, stride = config.n_kv_heads, config.head_dim, SHAPE.stride
    for layer in range(config.n_layers):
        h, taps = parts.layer(layer, h)
        k = taps["rope_k"][0]  # [kv_heads, seq, head_dim]
        v = taps["v_proj"][0].view(-1, kv_heads, head_dim).transpose(0, 1)
        for position in (0, PREFILL - 1, PREFILL, 32, tokens.shape[1] - 1):
            page = table[0, position // stride]
            for kv, expected in ((0, k), (1, v)):
                for head in (0, kv_heads - 1):
                    offset = (((layer * 2 + kv) * kv_heads + head) * stride + position % stride) * head_dim
                    got = written[page, offset:offset + head_dim]
                    torch.testing.assert_close(got, expected[head, position], rtol=1e-12, atol=1e-12)
    unused = sorted(set(range(1, layout.n_pages)) - set(table.flatten().tolist()))
    assert written[unused].isnan().all()
