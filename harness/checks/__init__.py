"""The checks. Each is a function of (candidate, reference, inputs, policy) that returns a record's kind and
fields; it asks the candidate and the reference for their programs and never builds engines of its own.

- end_to_end.check: the candidate's logits against eager's, both against the fp64 oracle;
- layers.compare: every part (embedding, each decoder layer, head), isolated and propagated;
- bisect.bisect: the first diverging part and the sub-block inside it;
- perplexity.evaluate: WikiText-2 perplexity of both on the same windows, with its gates;
- serving.decode, cache_state, batching, chunked_prefill, greedy, decode_perplexity: the prefill / decode
  programs over the paged KV cache.
"""

from __future__ import annotations

import dataclasses

import torch

# The checks a configuration is gated on (the report's rows, expected failures, the run-to-run diff).
SERVING_CHECKS = ("decode", "cache_state", "batching", "chunked_prefill", "greedy", "decode_perplexity")  # serving.py
CHECKS = ("end_to_end", "layers", "perplexity", *SERVING_CHECKS)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the end-to-end and layer checks feed: [1, seq] token ids, and what they are."""

    tokens: torch.Tensor
    text: str

    def to_record(self) -> dict:
        return {"tokens": list(self.tokens.shape), "text": self.text}
