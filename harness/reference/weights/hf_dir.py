"""Weights from a Hugging Face model directory: config.json plus model.safetensors, or shards listed in
model.safetensors.index.json, each tensor read (memory-mapped) when it is asked for. Llama and Mixtral checkpoints
load into the llama reference, T5's encoder into the t5 family's, any other model type into the hf family (the
transformers model itself, its tensors named as its state dict names them)."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import huggingface_hub
import torch
from safetensors import safe_open

from harness.common.errors import HarnessError
from harness.reference.hfauto.config import HFConfig
from harness.reference.llama.config import LlamaConfig, RopeScaling
from harness.reference.t5 import checkpoint as t5_checkpoint
from harness.reference.t5.config import T5Config
from harness.reference.weights import LazyTensors, LoadedWeights, expected_shapes, sha256_files

# Model types with a reference of their own (llama, mixtral: reference/llama; t5: its encoder); any other type is the
# hf family's, transformers' model as it is.
REFERENCE_MODEL_TYPES = ("llama", "mixtral", "t5")
# Seconds to wait for the Hub's first answer, so that a machine without network fails promptly.
_HUB_TIMEOUT_S = 10


def resolve_hf(id_or_dir: str | Path) -> Path:
    """A local model directory as-is; otherwise a Hub model id, downloaded (config, tokenizer and
    safetensors files only) into the Hugging Face cache, or taken from it when offline."""
    if Path(id_or_dir).is_dir():
        return Path(id_or_dir)
    # The hub reads HF_HUB_OFFLINE once, at import; honour it when it is set later too.
    offline = (huggingface_hub.constants.HF_HUB_OFFLINE
               or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"))
    try:
        return Path(huggingface_hub.snapshot_download(
            str(id_or_dir), allow_patterns=["*.json", "*.safetensors"], etag_timeout=_HUB_TIMEOUT_S,
            local_files_only=offline))
    except Exception as e:  # no network, no such repo, gated repo, not in the cache offline...
        why = " ".join(str(e).split())
        raise HarnessError(f"{id_or_dir}: not a local directory and not obtainable from the Hugging Face "
                           f"Hub{' (offline)' if offline else ''}: {type(e).__name__}: {why}")


def load_hf_dir(path: str | Path) -> LoadedWeights:
    path = Path(path)
    if not path.is_dir():
        raise HarnessError(f"{path}: not a directory")
    config = _config(path / "config.json")
    files = _weight_files(path)
    parts = _checkpoint_parts(config)
    shapes = {key: shape for pieces in parts.values() for key, shape in pieces}

    found, tensor_types = {}, {}
    for file in files:
        with safe_open(file, framework="pt") as st:
            for key in st.keys():
                name = _checkpoint_name(key, config)
                if name is None:
                    continue
                if name not in shapes:
                    raise HarnessError(f"{file}: unexpected tensor {key} for a {config_type(config)} model")
                stored = st.get_slice(key)
                if stored.get_dtype() not in ("F32", "F16", "BF16"):
                    raise HarnessError(f"{file}: tensor {key} has dtype {stored.get_dtype()} (supported: F32, F16, "
                                       "BF16)")
                if tuple(stored.get_shape()) != shapes[name]:
                    raise HarnessError(f"{file}: tensor {key} has shape {tuple(stored.get_shape())}, config.json "
                                       f"implies {shapes[name]}")
                found[name] = (file, key)
                tensor_types[name] = stored.get_dtype()
    missing = sorted(set(shapes) - set(found))
    if missing:
        raise HarnessError(f"{path}: missing tensor(s) {', '.join(missing[:5])}"
                           f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}")
    loaders = {name: partial(_assembled, [found[key] for key, _ in pieces], name) for name, pieces in parts.items()}
    types = {name: tensor_types[pieces[0][0]] for name, pieces in parts.items()}
    return LoadedWeights(config=config, state_dict=LazyTensors(loaders), tensor_types=types, source=str(path),
                         sha256=sha256_files([path / "config.json", *files]))


def config_type(config: LlamaConfig | T5Config | HFConfig) -> str:
    if isinstance(config, HFConfig):
        return f"transformers {config.model_type}"
    return "T5 encoder" if isinstance(config, T5Config) else "Mixtral" if config.n_experts else "Llama"


def _checkpoint_name(key: str, config: LlamaConfig | T5Config) -> str | None:
    """The name a checkpoint tensor goes by in `_checkpoint_parts`; None for one that is not a parameter of the
    model (a tied head, which is the embedding; RoPE frequencies, derived from the config; T5's decoder)."""
    if isinstance(config, T5Config):
        return t5_checkpoint.parameter_name(key)
    if isinstance(config, HFConfig):
        return f"hf.{key}"  # the transformers model's own names, under HFModel's `hf`
    name = key.removeprefix("model.")
    if (name == "lm_head.weight" and config.tie_embeddings) or name.endswith("rotary_emb.inv_freq"):
        return None
    return name


def _checkpoint_parts(config: LlamaConfig | T5Config) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Each parameter's checkpoint tensors (names without "model.", with their shapes): itself, or for a Mixtral's
    stacked experts each expert's w1 and w3 (gate_up_proj: gate rows, then up rows) or w2 (down_proj), and its
    router under block_sparse_moe, as Mixtral checkpoints store them."""
    if isinstance(config, HFConfig):
        return _tied_parts(config)
    parts = {}
    for name, shape in expected_shapes(config).items():
        layer, _, what = name.partition(".mlp.")
        if isinstance(config, T5Config) or not config.n_experts or not what:
            parts[name] = [(name, shape)]
        elif what == "gate.weight":
            parts[name] = [(f"{layer}.block_sparse_moe.gate.weight", shape)]
        else:
            experts = f"{layer}.block_sparse_moe.experts"
            f, dim = config.ffn_dim, config.dim
            each = range(config.n_experts)
            if what == "experts.gate_up_proj":
                parts[name] = [(f"{experts}.{e}.{w}.weight", (f, dim)) for e in each for w in ("w1", "w3")]
            else:
                parts[name] = [(f"{experts}.{e}.w2.weight", (dim, f)) for e in each]
    return parts


def _tied_parts(config: HFConfig) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """A transformers model's parameters, each its own checkpoint tensor, except one tied to another (the output
    embedding to the input one), which a checkpoint stores once: read from the first name."""
    from harness.reference import families

    first: dict[int, str] = {}
    parts = {}
    with torch.device("meta"):
        model = families.build(config)
    for name, tensor in model.state_dict(keep_vars=True).items():
        source = first.setdefault(id(tensor), name)
        parts[name] = [(source, tuple(tensor.shape))]
    return parts


def _assembled(pieces: list[tuple[Path, str]], name: str) -> torch.Tensor:
    tensors = [_tensor(file, key) for file, key in pieces]
    if len(tensors) == 1:
        return tensors[0]
    if name.endswith("gate_up_proj"):  # w1, w3 of each expert in turn
        return torch.stack([torch.cat(tensors[i:i + 2]) for i in range(0, len(tensors), 2)])
    return torch.stack(tensors)


def _tensor(file: Path, key: str) -> torch.Tensor:
    try:
        with safe_open(file, framework="pt") as st:  # memory-mapped: only this tensor's pages are read
            return st.get_tensor(key).float()
    except Exception as e:  # the file changed or went since it was loaded and checked
        raise HarnessError(f"{file}: tensor {key}: {type(e).__name__}: {' '.join(str(e).split())}") from None


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = [path / f for f in sorted(set(_json(index)["weight_map"].values()))]
    else:
        files = [path / "model.safetensors"]
    for f in files:
        if not f.is_file():
            raise HarnessError(f"{f}: no such weights file")
    return files


def _json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{file}: no such file")
    except (OSError, ValueError) as e:
        raise HarnessError(f"{file}: unreadable JSON: {' '.join(str(e).split())}")


def _config(file: Path) -> LlamaConfig | T5Config | HFConfig:
    c = _json(file)
    if c.get("model_type") == "t5":
        return t5_checkpoint.config_from_hf(c, file)
    if c.get("model_type") not in REFERENCE_MODEL_TYPES:  # transformers' own model, as it is (reference/hfauto)
        if "model_type" not in c:
            raise HarnessError(f"{file}: missing model_type")
        # Not the stored dtype: the harness holds weights in fp32 and casts them to the configuration's dtype.
        ignored = ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype")
        options = {k: v for k, v in c.items() if k not in ignored}
        config = HFConfig.of(c["model_type"], c["model_type"], **options)
        try:
            config.hf_config()
        except (ValueError, TypeError, KeyError) as e:  # a model type or option transformers does not know
            raise HarnessError(f"{file}: model_type {c['model_type']!r}: {' '.join(str(e).split())[:200]}") from None
        return config

    def need(key: str):
        if key not in c:
            raise HarnessError(f"{file}: missing {key}")
        return c[key]

    if c.get("sliding_window"):
        raise HarnessError(f"{file}: sliding_window {c['sliding_window']} (sliding-window attention is not supported)")
    for key, value in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if c.get(key, value) != value:
            raise HarnessError(f"{file}: {key} is {c[key]!r}, the harness's Llama supports only {value!r}")
    # transformers 5 writes rope_parameters; older files have rope_theta and rope_scaling at top level.
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise HarnessError(f"{file}: unsupported RoPE scaling {rope_type!r}")
    scaling_keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if rope_type == "llama3" and not set(scaling_keys) <= set(rope):
        raise HarnessError(f"{file}: llama3 RoPE scaling needs {', '.join(scaling_keys)}")
    try:
        config = LlamaConfig(
            vocab_size=need("vocab_size"),
            dim=need("hidden_size"),
            n_layers=need("num_hidden_layers"),
            n_heads=need("num_attention_heads"),
            n_kv_heads=c.get("num_key_value_heads") or need("num_attention_heads"),
            ffn_dim=need("intermediate_size"),
            rope_theta=rope.get("rope_theta", c.get("rope_theta", 10000.0)),
            norm_eps=need("rms_norm_eps"),
            max_seq_len=need("max_position_embeddings"),
            tie_embeddings=c.get("tie_word_embeddings", False),
            rope_scaling=RopeScaling(**{k: rope[k] for k in scaling_keys}) if rope_type == "llama3" else None,
            n_experts=c.get("num_local_experts", 0) if c["model_type"] == "mixtral" else 0,
            experts_per_token=c.get("num_experts_per_tok", 2),
        )
    except ValueError as e:
        raise HarnessError(f"{file}: inconsistent config: {e}")
    if (c.get("head_dim") or config.head_dim) != config.head_dim:
        raise HarnessError(f"{file}: head_dim {c['head_dim']} differs from hidden_size / num_attention_heads "
                           f"= {config.head_dim}, which the harness's Llama requires")
    return config
