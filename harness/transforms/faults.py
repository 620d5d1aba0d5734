"""Numeric faults planted in the compiled model only (eager and the oracle stay clean), to prove that
per-layer checks and bisection find what they claim to find."""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F

from torch import nn

from harness.reference.hfauto.model import HFModel
from harness.reference.llama.model import Llama
from harness.reference.llama.paged import DEFECTS
from harness.transforms.w8a8 import W8A8Linear

# Which parameter of a decoder layer feeds each sub-block that has one.
SUB_BLOCK_PARAMS = {
    "attn_norm": "input_layernorm.weight", "q_proj": "self_attn.q_proj.weight",
    "k_proj": "self_attn.k_proj.weight", "v_proj": "self_attn.v_proj.weight",
    "o_proj": "self_attn.o_proj.weight", "mlp_norm": "post_attention_layernorm.weight",
    "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight", "down_proj": "mlp.down_proj.weight",
}


@dataclasses.dataclass(frozen=True)
class Fault:
    """`kind` "weight": a parameter of the sub-block perturbed in the archive (scaled by `scale`; only its
    output `row` where given; only element [`row`, `col`] where both are, or that element replaced by
    `value`); "op": a wrong op in the program; "paged": a serving defect (reference/llama/paged.py's
    DEFECTS, named by `sub_block`) in the layer's cache traffic; "codes": a W8A8 int8 projection of the
    sub-block truncating its activation codes instead of rounding them."""

    layer: int
    sub_block: str  # where bisection must find it
    kind: str
    scale: float = 1.125  # 1 + 2^-3: well outside bf16's rounding noise, small against the weights' spread
    row: int | None = None
    col: int | None = None
    value: float | None = None

    @property
    def id(self) -> str:
        where = "".join(f"-{k}{v}" for k, v in (("row", self.row), ("col", self.col)) if v is not None)
        change = f"={self.value:g}" if self.value is not None else f"x{self.scale:g}" if self.scale != 1.125 else ""
        return f"{self.kind}-layer{self.layer}-{self.sub_block}{where}{change}"



def fault_param(sub_block: str) -> str:
    """The decoder-layer parameter that feeds `sub_block`: SUB_BLOCK_PARAMS, a mixture of experts' router, or an
    expert's stacked down projection (the fault's `row` is then the expert)."""
    if sub_block == "router":
        return "mlp.gate.weight"
    if sub_block.startswith("expert_"):
        return "mlp.experts.down_proj"
    if sub_block not in SUB_BLOCK_PARAMS:
        raise ValueError(f"sub-block {sub_block!r} has no parameter; choose from {', '.join(SUB_BLOCK_PARAMS)}, "
                         "router, expert_<e>")
    return SUB_BLOCK_PARAMS[sub_block]


def fault_parameter(model: nn.Module, fault: Fault) -> nn.Parameter:
    """The parameter a weight fault perturbs: for a transformers model (HFModel), the first matrix of the block's
    child named by the sub-block; otherwise fault_param's."""
    if isinstance(model, HFModel):
        child = model.blocks[fault.layer].get_submodule(fault.sub_block)
        return next(p for p in child.parameters() if p.dim() == 2)
    return model.layers[fault.layer].get_parameter(fault_param(fault.sub_block))


def fault_projection(model: nn.Module, fault: Fault) -> W8A8Linear:
    """The W8A8 projection a code fault truncates: the sub-block's (for a transformers model, the first in the
    block's child named by the sub-block)."""
    root = (model.blocks[fault.layer].get_submodule(fault.sub_block) if isinstance(model, HFModel) else
            model.layers[fault.layer].get_submodule(fault_param(fault.sub_block).removesuffix(".weight")))
    found = [m for m in root.modules() if isinstance(m, W8A8Linear) and m.fmt == "int8"]
    if not found:
        raise ValueError(f"a code fault truncates an int8 W8A8 projection's activation codes: layer {fault.layer}'s "
                         f"{fault.sub_block} has none (--dtype w8a8_int8)")
    return found[0]


def plant_fault(model: Llama, fault: Fault | None) -> Llama:
    """`model` with `fault` planted (none: as it is)."""
    if fault is None:
        return model
    layer = model.layers[fault.layer]
    if fault.kind == "weight":
        param = fault_parameter(model, fault)
        data = param.data.clone()  # a new tensor: the parameter may share the loaded weights' storage
        where = (slice(None) if fault.row is None else fault.row,) + (() if fault.col is None else (fault.col,))
        data[where] = data[where] * fault.scale if fault.value is None else fault.value
        param.data = data
    elif fault.kind == "paged":
        model.paged_defects = {fault.layer: fault.sub_block}
    elif fault.kind == "codes":
        fault_projection(model, fault).truncate = True  # kept by the projection's slices at TP N
    elif not isinstance(model, Llama):
        raise ValueError(f"an op fault swaps the llama family's SwiGLU activation: {type(model).__name__} has none")
    else:  # SwiGLU computed with GELU instead of SiLU (every expert's, in a mixture of experts)
        getattr(layer.mlp, "experts", layer.mlp).act = F.gelu
    return model


def weight_fault(layer: int, sub_block: str) -> Fault:
    fault_param(sub_block)
    return Fault(layer, sub_block, "weight")


def expert_fault(layer: int, expert: int) -> Fault:
    """One expert's down projection (all of it) scaled: a mixture of experts' fault that bisection must pin on the
    expert, where the others and the router are right."""
    return dataclasses.replace(weight_fault(layer, f"expert_{expert}"), row=expert)


def row_fault(layer: int, sub_block: str, row: int, scale: float) -> Fault:
    """One output row of a projection (one output channel) scaled by `scale`: what a miscompiled tile or
    lane does, where rounding noise is spread over every channel."""
    return dataclasses.replace(weight_fault(layer, sub_block), row=row, scale=scale)


def code_fault(layer: int, sub_block: str) -> Fault:
    return Fault(layer, sub_block, "codes")


def op_fault(layer: int) -> Fault:
    return Fault(layer, "swiglu", "op")


def paged_fault(layer: int, defect: str) -> Fault:
    if defect not in DEFECTS:
        raise ValueError(f"serving defect {defect!r}: choose from {', '.join(DEFECTS)}")
    return Fault(layer, defect, "paged")
