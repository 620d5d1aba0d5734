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
from harness.model.quant import quantize
from harness.model.w8a8 import SCHEMES as W8A8, quantize_w8a8
from harness.weights import LoadedWeights

EAGER_MODES = ("emulated", "native")


def build_model(weights: LoadedWeights, dtype: torch.dtype, compute_dtype: torch.dtype | None = None,
                attention: str = "sdpa", quant: str | None = None, fp8_decode: str = "native",
                calibration: dict | None = None) -> Llama:
    """The model with weights rounded to `dtype` (and its projections quantized by `quant`,
    harness/model/quant.py and w8a8.py, the latter scaled by `calibration`), held (and computed) in
    `compute_dtype` (default: dtype), its attention formulated as `attention`
    (harness.model.llama.ATTENTION)."""
    with torch.device("meta"):  # no random init: the weights replace every parameter
        model = Llama(weights.config)
    # assign: a model in the weights' own dtype shares their storage instead of holding a second copy
    # (SmolLM2 fp32: 0.5 GB). Nothing mutates a parameter in place (faults replace theirs).
    model.load_state_dict({k: v.to(dtype) for k, v in weights.state_dict.items()}, assign=True)
    for layer in model.layers:
        layer.self_attn.impl = attention
    if quant in W8A8:
        quantize_w8a8(model, quant, calibration, fp8_decode)
    elif quant:
        quantize(model, quant, fp8_decode)
    return model.to(compute_dtype or dtype).eval()


def eager_reference(weights: LoadedWeights, dtype: torch.dtype, mode: str = "emulated",
                    attention: str = "sdpa", quant: str | None = None, calibration: dict | None = None) -> EagerEngine:
    if dtype == torch.float32:
        return EagerEngine(build_model(weights, dtype, attention=attention, quant=quant, calibration=calibration),
                           name="eager")
    if mode == "native":
        return EagerEngine(build_model(weights, dtype, attention=attention), name="eager-native")
    return EagerEngine(build_model(weights, dtype, torch.float32, attention), name="eager-emulated", emulated=dtype)


def oracle(weights: LoadedWeights, dtype: torch.dtype, attention: str = "sdpa", quant: str | None = None,
           calibration: dict | None = None) -> EagerEngine:
    return EagerEngine(build_model(weights, dtype, torch.float64, attention, quant, calibration=calibration),
                       name="oracle-fp64")
