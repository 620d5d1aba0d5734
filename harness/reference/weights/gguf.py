"""Llama weights from a GGUF file (llama.cpp's format), read with the `gguf` package.

`raw_tensors` gives each tensor as stored (quantized blocks still packed, a view of the memory-mapped file),
renamed to the reference model's names and with llama.cpp's attn_q/attn_k row order undone; `load_gguf`
dequantizes each to fp32 when it is asked for. Undoing the row order on packed data is exact because GGUF blocks never span rows.
"""

from __future__ import annotations

import dataclasses
import re
from functools import partial
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import torch

from harness.common.errors import HarnessError
from harness.reference.llama.config import LlamaConfig, RopeScaling
from harness.reference.llama.model import rope_inv_freq
from harness.reference.weights import LazyTensors, LoadedWeights, expected_shapes, sha256_files

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_1", "Q4_K")

_GLOBAL_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# llama.cpp writes Llama 3.1 RoPE scaling as this tensor of per-frequency divisors, not as metadata.
_ROPE_FREQS = "rope_freqs.weight"


@dataclasses.dataclass(frozen=True)
class RawTensor:
    type: str  # GGUF type name, one of SUPPORTED_TYPES
    shape: tuple[int, ...]  # logical shape in the reference layout: [out, in] for a matrix
    # As stored: quantized types as uint8 [rows, bytes per row], float types typed. Often a read-only
    # view of the memory-mapped file.
    stored: np.ndarray
    interleaved_heads: int = 0  # rows in llama.cpp's rotary order over this many heads (attn_q / attn_k)

    @property
    def data(self) -> np.ndarray:
        """The tensor as stored, in the reference's row order: for interleaved rows a copy made on every read and
        never kept (a 405B model's attn_q / attn_k alone are tens of GB)."""
        return unpermute_rows(self.stored, self.interleaved_heads) if self.interleaved_heads else self.stored


def gguf_name(name: str) -> str:
    """The GGUF tensor name of a reference parameter name."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    layer, module = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", name).groups()
    return f"blk.{layer}.{_LAYER_NAMES[module]}.weight"


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of attn_q/attn_k rows (its rotary layout), giving the
    Hugging Face row order. Works on dequantized values and on packed rows alike."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def raw_tensors(path: str | Path) -> dict[str, RawTensor]:
    """Every parameter of the model in `path`, still in its stored type, by reference name."""
    return _read(Path(path))[1]


def load_gguf(path: str | Path) -> LoadedWeights:
    path = Path(path)
    config, raw = _read(path)
    return LoadedWeights(config=config,
                         state_dict=LazyTensors({name: partial(_dequantized, t) for name, t in raw.items()}),
                         tensor_types={name: t.type for name, t in raw.items()},
                         source=str(path), sha256=sha256_files([path]))


def _dequantized(t: RawTensor) -> torch.Tensor:
    values = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType[t.type])
    # np.require copies F32 data, which is a read-only view of the memory-mapped file.
    return torch.from_numpy(np.require(values, np.float32, ("C", "W")).reshape(t.shape))


def _fail(path: Path, what: str) -> HarnessError:
    return HarnessError(f"{path}: {' '.join(what.split())}")


def _read(path: Path) -> tuple[LlamaConfig, dict[str, RawTensor]]:
    if not path.is_file():
        raise _fail(path, "no such GGUF file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader fails on bad input with assorted exception types
        raise _fail(path, f"not a readable GGUF file (truncated or corrupt?): {type(e).__name__}: {e}")
    tensors = {t.name: t for t in reader.tensors}
    config = _config(path, reader, tensors)
    tensors.pop(_ROPE_FREQS, None)  # already checked against the config in _config
    stored = {name: RawTensor(t.tensor_type.name, tuple(reversed(t.shape.tolist())), t.data)  # innermost first
              for name, t in tensors.items()}
    return config, llama_tensors(path, config, stored, interleaved_rope=True)


def llama_tensors(path: Path, config: LlamaConfig, stored: dict[str, RawTensor],
                  interleaved_rope: bool) -> dict[str, RawTensor]:
    """The reference model's parameters from tensors stored under GGUF names (a GGUF file, or sharktank's
    IRPA), each checked against the config's shape; `interleaved_rope`: attn_q/attn_k rows are in the
    interleaved rotary layout (llama.cpp's), which is undone."""
    stored, raw = dict(stored), {}
    for name, shape in expected_shapes(config).items():
        key = gguf_name(name)
        if key not in stored:
            raise _fail(path, f"missing tensor {key} ({name})")
        t = stored.pop(key)
        if t.type not in SUPPORTED_TYPES:
            raise _fail(path, f"tensor {key} has unsupported type {t.type} "
                              f"(supported: {', '.join(SUPPORTED_TYPES)})")
        if t.shape != shape:
            raise _fail(path, f"tensor {key} has shape {t.shape}, the config implies {shape}")
        heads = 0
        if interleaved_rope and key.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.n_heads if "attn_q" in key else config.n_kv_heads
        raw[name] = RawTensor(type=t.type, shape=shape, stored=t.stored, interleaved_heads=heads)
    if stored:
        # An unknown tensor (a bias, say) would be silently dropped and the model computed wrongly.
        raise _fail(path, f"unexpected tensor(s) for a Llama model: {', '.join(sorted(stored))}")
    return raw


def _config(path: Path, reader: gguf.GGUFReader, tensors: dict) -> LlamaConfig:
    def value(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    config = llama_config(path, value, tie_embeddings="output.weight" not in tensors,
                          vocab_size=len(tokens.data) if tokens is not None else None)
    if _ROPE_FREQS in tensors:
        config = _with_llama3_scaling(path, config, gguf.quants.dequantize(
            tensors[_ROPE_FREQS].data, tensors[_ROPE_FREQS].tensor_type),
            value("llama.rope.scaling.original_context_length") or 8192)
    return config


def llama_config(path: Path, value: Callable[[str], object], tie_embeddings: bool,
                 vocab_size: int | None = None) -> LlamaConfig:
    """The config that GGUF's llama metadata keys describe (a GGUF file's, or sharktank's IRPA properties);
    `value(key)` reads a key (None where absent)."""
    def field(key: str, default=None):
        v = value(key)
        if v is None:
            if default is None:
                raise _fail(path, f"missing metadata {key}")
            return default
        # GGUF stores floats as float32: take the shortest decimal that rounds to it (1e-05, not
        # 9.99999974e-06), which is the value the model was configured with.
        return float(str(np.float32(v))) if isinstance(v, float) else v

    arch = field("general.architecture")
    if arch != "llama":
        raise _fail(path, f"architecture is {arch!r}, only 'llama' is supported")
    try:
        config = LlamaConfig(
            vocab_size=vocab_size or field("llama.vocab_size"),
            dim=field("llama.embedding_length"),
            n_layers=field("llama.block_count"),
            n_heads=field("llama.attention.head_count"),
            n_kv_heads=field("llama.attention.head_count_kv"),
            ffn_dim=field("llama.feed_forward_length"),
            rope_theta=field("llama.rope.freq_base", 10000.0),
            norm_eps=field("llama.attention.layer_norm_rms_epsilon"),
            max_seq_len=field("llama.context_length"),
            tie_embeddings=tie_embeddings,
        )
    except ValueError as e:
        raise _fail(path, f"inconsistent metadata: {e}")
    for key in ("llama.attention.key_length", "llama.attention.value_length", "llama.rope.dimension_count",
                "llama.attention.head_dim"):
        if field(key, config.head_dim) != config.head_dim:
            raise _fail(path, f"{key} is {field(key)}, the harness supports only embedding_length / "
                              f"head_count = {config.head_dim}")
    scaling_type = field("llama.rope.scaling.type", "none")
    if scaling_type != "none":
        raise _fail(path, f"unsupported RoPE scaling {scaling_type!r}")
    return config


def _with_llama3_scaling(path: Path, config: LlamaConfig, factors: np.ndarray,
                         original_context: int) -> LlamaConfig:
    """The config with the Llama 3.1 RoPE scaling that llama.cpp's rope_freqs tensor encodes. Its
    divisors run from 1 (high frequencies) to the scaling factor (low ones); the low/high frequency
    factors are Llama 3.1's, and the result is checked against every stored divisor."""
    scaled = dataclasses.replace(config, rope_scaling=RopeScaling(
        factor=float(factors.max()), original_max_position_embeddings=int(original_context)))
    expected = (rope_inv_freq(config, torch.float64) / rope_inv_freq(scaled, torch.float64)).numpy()
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-5):
        raise _fail(path, f"{_ROPE_FREQS} is not Llama 3.1 RoPE scaling ({scaled.rope_scaling})")
    return scaled
