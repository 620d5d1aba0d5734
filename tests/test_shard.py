"""Tensor parallelism (harness/transforms/shard.py) on toy models: the sharded model computes the unsharded
model's function in eager torch, its layout is the documented one, impossible TP sizes are refused in
one line, and a compiled 2-device program matches the unsharded eager model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from iree.turbine.aot import DeviceTensorTrait

from harness.candidates.programs import forward_entries
from harness.common.errors import HarnessError, StageFailure
from harness.iree.compiler import compile_module
from harness.iree.export import export_program
from harness.iree.runtime import CompiledModule
from harness.iree.targets import Target
from harness.reference.llama.attention import ATTENTION
from harness.reference.llama.config import SMOLLM2_135M, TOY_TP8
from harness.reference.llama.model import SUB_BLOCKS, Llama
from harness.reference.llama.paged import ServingShape
from harness.reference.registry import random_weights
from harness.transforms.faults import op_fault, plant_fault, weight_fault
from harness.transforms.shard import (
    HeadCopies,
    attention_on_device,
    check_tp,
    shard,
    join_caches,
    split_cache,
    split_sizes,
)

# SmolLM2's head layout (9 query heads, 3 KV heads, tied embeddings) at toy size: 16-wide heads, and an
# FFN width (384) that 9 does not divide, so TP 9 exercises the uneven FFN split.
SMOL_LAYOUT = dataclasses.replace(SMOLLM2_135M, vocab_size=512, dim=144, n_layers=2, ffn_dim=384, max_seq_len=256)
CASES = [(TOY_TP8, 2), (TOY_TP8, 8), (SMOL_LAYOUT, 3), (SMOL_LAYOUT, 9)]
CASE_IDS = ["toy-tp8-tp2", "toy-tp8-tp8", "smol-layout-tp3", "smol-layout-tp9"]
# Sharding changes the order in which o_proj's and down_proj's products are added (tp partial sums),
# nothing else. Observed: <= 5 fp32 eps times the largest |value|; a layout mistake is O(scale).
BOUND_EPS = 64
EPS32 = torch.finfo(torch.float32).eps


def reference(config, impl="math") -> Llama:
    model = Llama(config)
    model.load_state_dict(random_weights(config, seed=0).state_dict)
    for layer in model.layers:
        layer.self_attn.attend = ATTENTION[impl]
    return model.eval()


def tokens(config, n=48) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (1, n), generator=torch.Generator().manual_seed(1))


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    bound = BOUND_EPS * EPS32 * want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_tp1_is_the_unsharded_model_exactly(impl):
    model = reference(TOY_TP8, impl)
    x = tokens(TOY_TP8)
    with torch.no_grad():
        assert torch.equal(shard(model, 1)(x), model(x))


@pytest.mark.parametrize("impl", ["math", "sdpa"])
@pytest.mark.parametrize("config,tp", CASES, ids=CASE_IDS)
def test_logits_match_unsharded(config, tp, impl):
    model = reference(config, impl)
    x = tokens(config)
    with torch.no_grad():
        assert_close(shard(model, tp)(x), model(x), f"logits tp{tp} {impl}")


@pytest.mark.parametrize("config,tp", CASES, ids=CASE_IDS)
def test_every_sub_block_matches_unsharded(config, tp):
    """Taps come back in the unsharded layout (gathered split values, one copy per KV head), so layer
    checks and bisection compare them with the unsharded eager model as they are."""
    model = reference(config)
    sharded = shard(model, tp)
    x = tokens(config)
    with torch.no_grad():
        h = model.embed(x)
        assert torch.equal(sharded.embed(x), h)
        for i in range(config.n_layers):
            want, got = {}, {}
            out = model.layers[i](h, *model.layer_args(x.shape[1]), want)
            assert_close(sharded.layers[i](h, *sharded.layer_args(x.shape[1]), got), out, f"layer {i} output")
            assert list(got) == list(SUB_BLOCKS)
            for name in SUB_BLOCKS:
                assert_close(got[name], want[name], f"layer {i} {name}")
            h = out
        assert_close(sharded.head(h), model.head(h), "head")


@pytest.mark.parametrize("fault", [op_fault(1), weight_fault(0, "v_proj"), weight_fault(1, "down_proj")],
                         ids=lambda f: f.id)
def test_faults_planted_before_sharding_carry_over(fault):
    """The exported candidate plants a fault in the model it exports, then shards it: the shards must carry it."""
    clean, faulty = reference(TOY_TP8), reference(TOY_TP8)
    plant_fault(faulty, fault)
    x = tokens(TOY_TP8)
    with torch.no_grad():
        want, got = faulty(x), shard(faulty, 8)(x)
        assert_close(got, want, fault.id)
        assert (got - clean(x)).abs().max() > 1e3 * BOUND_EPS * EPS32 * want.abs().max()


def test_layout_smollm2_heads():
    """9 query / 3 KV heads: TP 3 gives each device 3 query heads and its own KV head; TP 9 one query
    head and a replica of KV head d // 3. Every parameter is placed on its device."""
    model = reference(SMOL_LAYOUT)
    hd, src = SMOL_LAYOUT.head_dim, model.layers[0].self_attn
    for tp, q_heads in ((3, 3), (9, 1)):
        layer = shard(model, tp).layers[0]
        for d in range(tp):
            attn = layer.self_attn[d]
            kv = d // (tp // 3)
            assert torch.equal(attn.q_proj.weight, src.q_proj.weight[d * q_heads * hd:(d + 1) * q_heads * hd])
            k_proj, v_proj = (p.projection if isinstance(p, HeadCopies) else p for p in (attn.k_proj, attn.v_proj))
            assert torch.equal(k_proj.weight, src.k_proj.weight[kv * hd:(kv + 1) * hd])
            assert torch.equal(v_proj.weight, src.v_proj.weight[kv * hd:(kv + 1) * hd])
            assert torch.equal(attn.o_proj.weight, src.o_proj.weight[:, d * q_heads * hd:(d + 1) * q_heads * hd])
            assert isinstance(attn.k_proj, HeadCopies) == (q_heads > 1)
        for name, param in layer.named_parameters():  # e.g. "self_attn.4.q_proj.weight": device 4
            assert DeviceTensorTrait.get(param).ordinal == int(name.split(".")[1]), name
        widths = [m.gate_proj.weight.shape[0] for m in layer.mlp]
        assert widths == split_sizes(SMOL_LAYOUT.ffn_dim, tp) and sum(widths) == SMOL_LAYOUT.ffn_dim


@pytest.mark.parametrize("impl", ["math", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_on_device_is_llamas_attention(impl, dtype):
    """The per-device attention (its causal mask explicit and placed) computes model.py's bitwise."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 40, 16, generator=gen).to(dtype) for _ in range(3))
    assert torch.equal(attention_on_device(ATTENTION[impl], 3)(q, k, v), ATTENTION[impl](q, k, v))


@pytest.mark.parametrize("config,name,tp,message", [
    (SMOLLM2_135M, "smollm2-135m", 2, "--tp 2: smollm2-135m has 9 query heads, not divisible by 2"),
    (SMOLLM2_135M, "smollm2-135m", 6, "--tp 6: smollm2-135m has 9 query heads, not divisible by 6"),
    (TOY_TP8, "toy-tp8", 3, "--tp 3: toy-tp8 has 16 query heads, not divisible by 3"),
    (dataclasses.replace(TOY_TP8, n_heads=12, n_kv_heads=4, dim=192), "x", 6,
     "--tp 6: x has 4 KV heads; the TP size must divide them or be a multiple of them (whole KV heads are "
     "replicated), and 6 is neither"),
    (TOY_TP8, "toy-tp8", 0, "--tp 0: the tensor-parallel size must be a positive integer"),
])
def test_check_tp_refuses_in_one_line(config, name, tp, message):
    with pytest.raises(HarnessError) as e:
        check_tp(config, tp, name)
    assert str(e.value) == message


@pytest.mark.parametrize("config,tp", [(SMOLLM2_135M, 1), (SMOLLM2_135M, 3), (SMOLLM2_135M, 9), (TOY_TP8, 4),
                                       (TOY_TP8, 16), (dataclasses.replace(TOY_TP8, n_heads=12, n_kv_heads=4,
                                                                            dim=192), 12)])
def test_check_tp_accepts(config, tp):
    check_tp(config, tp)


def test_shard_refuses_an_impossible_size():
    with pytest.raises(HarnessError, match="not divisible by 2"):
        shard(reference(SMOL_LAYOUT), 2)


def test_compiled_tp2_matches_unsharded_eager(tmp_path, monkeypatch):
    """Export (parameters per device in one archive), compile for local[0], local[1], run on two
    devices: the logits are the unsharded eager fp32 model's. Loaded with one device, the module
    refuses with the missing device's name."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    config = dataclasses.replace(TOY_TP8, n_layers=1)
    model = reference(config)
    x = tokens(config, 32)
    with torch.no_grad():
        want = model(x)
    exported = export_program(lambda: shard(model, 2), forward_entries(torch.zeros_like(x)),
                              "tp2", "tp2-params", "test_shard")
    vmfb, _, _ = compile_module(exported.mlir, Target().compile_flags(2))
    for driver in ("local-sync", "local-task"):
        (got,) = CompiledModule(vmfb, exported.irpa, driver, 2)("forward", x.numpy())
        assert_close(torch.from_numpy(np.asarray(got)), want, f"compiled tp2 logits on {driver}")
    with pytest.raises(StageFailure, match="HAL device `__device_1` not found"):
        CompiledModule(vmfb, exported.irpa, "local-task", 1)


@pytest.mark.parametrize("config,tp", CASES, ids=CASE_IDS)
def test_sharded_paged_prefill_and_decode_match_unsharded_and_fill_the_same_cache(config, tp):
    """The serving call on tp devices, each over its shard of the paged cache (one KV head copied per query
    head where HeadCopies copies it), against the unsharded call: logits and, joined, the cache."""
    model = reference(config)
    layout = ServingShape().layout(config)
    table = torch.tensor([[5, 2, 0, 0]])
    cache = torch.randn(layout.n_pages, layout.page_elems, generator=torch.Generator().manual_seed(2))
    shards = split_cache(cache, layout, config, tp)
    assert torch.equal(join_caches(shards, layout, config, tp), cache)
    sharded, x = shard(model, tp), tokens(config, 64)
    one = torch.ones(1, dtype=torch.int64)
    with torch.no_grad():
        for start, n, length in ((0, 64, 40), (40, 1, 41)):  # prefill 40 (padded to 64), decode one
            want = model.paged(x[:, :n], start * one, length * one, table, cache, layout=layout)
            got = sharded.paged(x[:, :n], start * one, length * one, table, *shards, layout=layout)
            valid = min(n, length - start)
            assert_close(got[:, :valid], want[:, :valid], f"logits from position {start}")
    assert_close(join_caches(shards, layout, config, tp), cache, "cache after prefill and decode")
