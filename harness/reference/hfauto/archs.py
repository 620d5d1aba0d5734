"""Tiny seeded configurations of transformers architectures (IPEX's verified list where transformers has the
model), each with what sets its family apart turned on: made offline from the config classes, `hf-<arch>` in the
registry (seeded random weights). All have 2 layers, hidden size 64, 4 heads, an FFN of 128, vocab 256, an
untied head and room for 256 positions.

Not here: Baichuan, ChatGLM and Yuan (remote code, not in transformers 5.23), Dolly (a GPT-NeoX: `gpt_neox`), and
the encoder-decoder and multimodal models (T5: the `t5` family's encoder; Whisper, GIT, LLaVA: not causal LMs)."""

from __future__ import annotations

from harness.reference.hfauto.config import HFConfig

_IDS = dict(vocab_size=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_LLAMA_LIKE = dict(_IDS, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=256)
_GPT_LIKE = dict(_IDS, n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=256)


def _rope(partial: float) -> dict:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial}}


ARCHS: dict[str, HFConfig] = {c.arch: c for c in [
    HFConfig.of("llama", "llama", **_LLAMA_LIKE, num_key_value_heads=2),  # grouped-query attention
    HFConfig.of("mistral", "mistral", **_LLAMA_LIKE, num_key_value_heads=2, head_dim=16,
                sliding_window=16),  # sliding-window attention (16 of 128 positions)
    HFConfig.of("mixtral", "mixtral", **_LLAMA_LIKE, num_key_value_heads=2, num_local_experts=4,
                num_experts_per_tok=2, experts="batched_mm"),  # mixture of experts
    HFConfig.of("qwen2", "qwen2", **_LLAMA_LIKE, num_key_value_heads=2),  # QKV bias
    HFConfig.of("phi", "phi", **_LLAMA_LIKE, **_rope(0.5)),  # parallel attention + MLP, partial rotary, GELU (tanh)
    HFConfig.of("phi3", "phi3", **_LLAMA_LIKE, num_key_value_heads=2,
                original_max_position_embeddings=256),  # fused qkv and gate_up projections
    HFConfig.of("stablelm", "stablelm", **_LLAMA_LIKE, num_key_value_heads=4,
                **_rope(0.25)),  # partial rotary, LayerNorm
    HFConfig.of("gemma", "gemma", **_LLAMA_LIKE, num_key_value_heads=1, head_dim=16),  # MQA, F.gelu(tanh), scaled embed
    HFConfig.of("gpt_neox", "gpt_neox", **_LLAMA_LIKE, **_rope(0.25), use_parallel_residual=True),  # Pythia, Dolly
    HFConfig.of("gptj", "gptj", **_GPT_LIKE, rotary_dim=8),  # parallel attention + MLP, partial rotary
    HFConfig.of("codegen", "codegen", **_GPT_LIKE, n_ctx=256, rotary_dim=8),
    HFConfig.of("gpt2", "gpt2", **_GPT_LIKE),  # learned positions, LayerNorm with bias, GELU (tanh)
    HFConfig.of("gpt_bigcode", "gpt_bigcode", **_GPT_LIKE, multi_query=True),  # multi-query attention, F.gelu(tanh)
    HFConfig.of("opt", "opt", **{**_IDS, "pad_token_id": 1}, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64),  # learned positions, ReLU
    HFConfig.of("falcon", "falcon", **_IDS, hidden_size=64, ffn_hidden_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=256, multi_query=True, parallel_attn=True,
                alibi=False),  # Falcon-7B: multi-query, parallel attention + MLP
    HFConfig.of("falcon_alibi", "falcon", **_IDS, hidden_size=64, ffn_hidden_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=256, multi_query=False, parallel_attn=False,
                alibi=True, bias=True),  # Falcon-RW: ALiBi, sequential, biases
    HFConfig.of("bloom", "bloom", **_IDS, hidden_size=64, n_layer=2, n_head=4),  # ALiBi, embedding LayerNorm
    HFConfig.of("mpt", "mpt", **_IDS, d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=256,
                attn_config={"alibi": True, "alibi_bias_max": 8}),  # ALiBi
]}
