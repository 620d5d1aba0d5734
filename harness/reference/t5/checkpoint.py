"""T5 v1.1 encoder weights in a Hugging Face directory (T5EncoderModel, or T5ForConditionalGeneration whose decoder
is left unread): its config.json read into T5Config, and each checkpoint tensor's parameter in the reference's
naming (weights/hf_dir.py reads the files)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.common.errors import HarnessError
from harness.reference.t5.config import T5Config

# Checkpoint name (after encoder.block.<i>.) -> the reference's (after layers.<i>.).
_LAYER_NAMES = {
    "layer.0.layer_norm.weight": "input_layernorm.weight",
    **{f"layer.0.SelfAttention.{p}.weight": f"self_attn.{p}_proj.weight" for p in "qkvo"},
    "layer.1.layer_norm.weight": "post_attention_layernorm.weight",
    "layer.1.DenseReluDense.wi_0.weight": "mlp.gate_proj.weight",
    "layer.1.DenseReluDense.wi_1.weight": "mlp.up_proj.weight",
    "layer.1.DenseReluDense.wo.weight": "mlp.down_proj.weight",
}
_OTHER_NAMES = {
    "shared.weight": "embed_tokens.weight",
    "encoder.embed_tokens.weight": "embed_tokens.weight",  # the same tensor, tied to shared: stored under either
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "relative_attention_bias.weight",
    "encoder.final_layer_norm.weight": "norm.weight",
}
_LAYER_KEY = re.compile(r"encoder\.block\.(\d+)\.(.+)")


def parameter_name(key: str) -> str | None:
    """The reference parameter a checkpoint tensor holds; None for one the encoder does not read (the decoder's,
    the language-model head's)."""
    if key.startswith(("decoder.", "lm_head.")):
        return None
    if key in _OTHER_NAMES:
        return _OTHER_NAMES[key]
    match = _LAYER_KEY.fullmatch(key)
    if match and match[2] in _LAYER_NAMES:
        return f"layers.{match[1]}.{_LAYER_NAMES[match[2]]}"
    return key  # not one of ours: the loader reports it as unexpected


def config_from_hf(c: dict, file: Path) -> T5Config:
    """config.json of a T5 v1.1 checkpoint (gated GELU, untied head); the original T5's ReLU feed-forward is not
    the v1.1 architecture and is refused."""
    act = c.get("feed_forward_proj", "relu")
    if act != "gated-gelu":
        raise HarnessError(f"{file}: feed_forward_proj is {act!r}; the harness's T5 is the v1.1 encoder ('gated-gelu')")
    try:
        return T5Config(vocab_size=c["vocab_size"], dim=c["d_model"], n_layers=c["num_layers"],
                        n_heads=c["num_heads"], head_dim=c["d_kv"], ffn_dim=c["d_ff"],
                        num_buckets=c.get("relative_attention_num_buckets", 32),
                        max_distance=c.get("relative_attention_max_distance", 128),
                        norm_eps=c.get("layer_norm_epsilon", 1e-6))
    except KeyError as e:
        raise HarnessError(f"{file}: missing {e.args[0]}") from None
