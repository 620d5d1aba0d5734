"""Tiny seeded configurations of transformers architectures, each with what distinguishes its family turned on:
made offline from the config classes (`hf-<arch>` in the registry, seeded random weights)."""

from __future__ import annotations

from harness.reference.hfauto.config import HFConfig

# Shared by all: 2 layers, hidden 32, 4 heads of 8, untied head, positions for 256 tokens.
_BASE = dict(vocab_size=128, tie_word_embeddings=False)

ARCHS: dict[str, HFConfig] = {c.arch: c for c in [
    HFConfig.of("llama", "llama", **_BASE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256),
]}
