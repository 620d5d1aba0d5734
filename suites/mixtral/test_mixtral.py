"""The mixture-of-experts family (Mixtral: the llama decoder with a sparse mixture of SwiGLU experts in place of
its MLP; harness/reference/llama/model.py SparseMoE): every check of the llama suite over its configurations, layer
by layer down to the router and each expert, and with --tp N the experts sharded over the devices."""

from harness.suites import (  # noqa: F401 - collected here, over the mixtral family's configurations
    test_batching, test_cache_state, test_chunked_prefill, test_decode, test_decode_perplexity, test_end_to_end,
    test_greedy, test_layers, test_perplexity)
