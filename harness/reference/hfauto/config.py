"""A transformers architecture as the harness names it: the model type and the options of its config class (a
tiny seeded toy's, or a checkpoint's config.json)."""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property


@dataclasses.dataclass(frozen=True)
class HFConfig:
    arch: str  # the harness's name for it, e.g. "bloom"
    model_type: str  # transformers' (AutoConfig.for_model)
    options_json: str  # the config class's options, JSON (hashable, and what the cache keys digest)
    # attn_implementation: "eager" (matmuls and a softmax; IREE 3.9 mislowers transformers' "sdpa": README Findings)
    attention: str = "eager"
    experts: str | None = None  # experts_implementation of a mixture of experts

    @classmethod
    def of(cls, arch: str, model_type: str, attention: str = "eager", experts: str | None = None,
           **options) -> "HFConfig":
        return cls(arch, model_type, json.dumps(options, sort_keys=True), attention, experts)

    @cached_property
    def options(self) -> dict:
        return json.loads(self.options_json)

    def hf_config(self):
        from transformers import AutoConfig

        return AutoConfig.for_model(self.model_type, **self.options)

    @cached_property
    def _hf(self):
        return self.hf_config()

    # What the harness reads of any family's config.
    @property
    def vocab_size(self) -> int:
        return self._hf.vocab_size

    @property
    def dim(self) -> int:
        return self._hf.hidden_size

    @property
    def n_layers(self) -> int:
        return self._hf.num_hidden_layers

    @property
    def max_seq_len(self) -> int:
        return next((getattr(self._hf, k) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                     if getattr(self._hf, k, None)), 2048)  # 2048: ALiBi models without a limit

    def to_dict(self) -> dict:
        return {"arch": self.arch, "model_type": self.model_type, "options": self.options, "attention": self.attention,
                "experts": self.experts}
