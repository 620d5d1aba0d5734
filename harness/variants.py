"""From loaded weights and a dtype to the three models every comparison needs:

- the model that is exported and compiled, in the dtype itself;
- the eager reference in the same dtype: real torch low precision, or (default for fp16/bf16, ~100x
  faster on CPUs without native support) fp32 emulation rounding at every op boundary;
- the fp64 oracle: the same dtype-rounded weights, computed in fp64.
"""

from __future__ import annotations

import torch

from harness.engines import EagerEngine
from harness.model.llama import Llama
from harness.weights import LoadedWeights

EAGER_MODES = ("emulated", "native")


def build_model(weights: LoadedWeights, dtype: torch.dtype, compute_dtype: torch.dtype | None = None) -> Llama:
    """The model with weights rounded to `dtype`, held (and computed) in `compute_dtype` (default: dtype)."""
    model = Llama(weights.config)
    model.load_state_dict({k: v.to(dtype) for k, v in weights.state_dict.items()})
    return model.to(compute_dtype or dtype).eval()


def eager_reference(weights: LoadedWeights, dtype: torch.dtype, mode: str = "emulated") -> EagerEngine:
    if dtype == torch.float32 or mode == "native":
        return EagerEngine(build_model(weights, dtype), name=f"eager-{mode}")
    return EagerEngine(build_model(weights, dtype, torch.float32), name="eager-emulated", emulated=dtype)


def oracle(weights: LoadedWeights, dtype: torch.dtype) -> EagerEngine:
    return EagerEngine(build_model(weights, dtype, torch.float64), name="oracle-fp64")
