"""The serving path: the prefill_bs{N} / decode_bs{N} programs over a paged KV cache, driven as a server
drives them (harness/suites.py; harness/checks/serving.py says what each check does), judged by the same tolerance
policy as the end-to-end check; --nightly runs longer decodes, batches and generations; with --bisect-on-fail a
failing decode is bisected to its step, layer and sub-block."""

from harness.suites import (  # noqa: F401 - collected here, over the llama family's configurations
    test_batching, test_cache_state, test_chunked_prefill, test_decode, test_decode_perplexity, test_greedy)
