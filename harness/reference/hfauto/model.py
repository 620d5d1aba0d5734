"""A transformers causal LM as the harness's reference, as transformers writes it (no rewriting into the llama
reference): its own forward is the end-to-end program, and its repeated decoder-block list gives the parts the
layer check and bisection need.

- `embed(tokens)`: the first block's input: the base model run with every block replaced by a recorder that passes
  its input through and keeps the arguments the block would have been given (masks, position tables, ALiBi
  biases), and the final norm by the identity; so learned positions, embedding norms or scales are whatever the
  architecture does.
- `layers[i](h, calls, taps)`: block i on `h` with those arguments (`layer_args(seq_len)` records them for that
  length; in an exported program their computation is compiled with the layer).
- `head(h)`: the final norm, then the output embedding.
- Sub-blocks: the block's direct children (attention, MLP, norms; not dropout) in the order they run, each one's
  output tapped by a forward hook; the order is found once per architecture by a trial forward (`structure`).

The fp64 oracle runs the same modules in fp64, with every float dtype a function asks for (`x.float()`,
`softmax(dtype=torch.float32)`, `x.to(torch.float32)`) made fp64 (`keep_float64`): transformers computes norms,
softmax and rotary tables in fp32 on purpose, which would otherwise round the oracle there. Low precision runs
natively (real torch fp16 / bf16): emulation by rounding every op (precision.py) would round what transformers
computes in fp32 on purpose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from harness.common.errors import HarnessError
from harness.reference.hfauto.config import HFConfig

NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")  # the final norm, beside the blocks
_LOWER_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class _KeepFloat64(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        def widen(x):
            return torch.float64 if isinstance(x, torch.dtype) and x in _LOWER_FLOATS else x
        if func in (torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16):
            return args[0].to(torch.float64)
        if func is torch.Tensor.type_as:
            return args[0].to(torch.float64) if args[1].is_floating_point() else func(*args, **(kwargs or {}))
        return func(*tree_map(widen, args), **tree_map(widen, kwargs or {}))


def keep_float64():
    """Inside: every float dtype asked for (a cast, a factory, a softmax's dtype) is fp64."""
    return _KeepFloat64()


@dataclasses.dataclass(frozen=True)
class Structure:
    blocks: str  # the block list's path in the transformers model, e.g. "model.layers", "transformer.h"
    norm: str  # the final norm's
    sub_blocks: tuple[str, ...]  # the block's children in the order they run
    returns_tuple: bool  # whether a block returns (hidden, ...) rather than hidden


def _transformers_model(config: HFConfig) -> nn.Module:
    """The model on the current default device (meta: shapes alone), without a random initialisation: the weights
    replace every parameter."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    experts = {"experts_implementation": config.experts} if config.experts else {}
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config.hf_config(), attn_implementation=config.attention, **experts)
    model.tie_weights()  # which no_init_weights skips: a tied output embedding is the input one
    return model.eval()


@functools.cache
def structure(config: HFConfig) -> Structure:
    """Where the blocks and the final norm are, and what a block's sub-blocks are (a trial forward of 4 tokens of
    zero weights: only which modules run matters)."""
    with torch.device("cpu"):
        model = _transformers_model(config)
    for tensor in model.parameters():
        torch.nn.init.zeros_(tensor)
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == config.n_layers]
    if not lists:
        raise HarnessError(f"{config.arch}: {type(model).__name__} has no list of {config.n_layers} decoder blocks")
    blocks = min(lists, key=lambda name: name.count("."))
    parent = blocks.rpartition(".")[0]
    norms = [n for n in NORM_NAMES if isinstance(getattr(model.get_submodule(parent), n, None), nn.Module)]
    if not norms:
        raise HarnessError(f"{config.arch}: no final norm ({', '.join(NORM_NAMES)}) beside {blocks}")
    block = model.get_submodule(blocks)[0]
    fired, returned = [], []
    hooks = [child.register_forward_hook(lambda *_, name=name: fired.append(name))
             for name, child in block.named_children() if not isinstance(child, nn.Dropout)]
    hooks.append(block.register_forward_hook(lambda _m, _a, out: returned.append(isinstance(out, tuple))))
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 4, dtype=torch.int64), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return Structure(blocks, f"{parent}.{norms[0]}" if parent else norms[0], tuple(dict.fromkeys(fired)), returned[0])


class _Recorder(nn.Module):
    """Stands in for a block while the base model runs: keeps the arguments the block would get (besides its
    input) and passes its input through; what the base model reads of a block (Mistral's attention_type) is the
    block's."""

    def __init__(self, block: nn.Module, calls: list, returns_tuple: bool):
        super().__init__()
        self.__dict__.update(_block=block, _calls=calls, _tuple=returns_tuple)  # not submodules

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)

    def forward(self, *args, **kwargs):
        h = args[0] if args else kwargs.pop("hidden_states")
        self._calls.append((args[1:], kwargs))
        return (h,) if self._tuple else h


def _inputs(tokens: torch.Tensor) -> dict:
    """A model call's arguments: the tokens alone (every position is a token), so that transformers' masks are made
    from positions only, constants of the program. (With an attention mask argument, IREE 3.9's data tiling drops
    the mask made from it: README Findings.)"""
    return {"input_ids": tokens, "use_cache": False}


def _and(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`&` as logical_and on boolean masks (which IREE lowers), bitwise on integers (block codes)."""
    return torch.logical_and(a, b) if a.dtype == torch.bool else torch.bitwise_and(a, b)


def _diff(x: torch.Tensor, n: int = 1, dim: int = -1, prepend=None, append=None) -> torch.Tensor:
    """aten.diff (transformers' packed-sequence detection), which IREE 3.9 does not lower, as slices."""
    x = torch.cat([t for t in (prepend, x, append) if t is not None], dim)
    for _ in range(n):
        x = x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)
    return x


def _first_tensor(out):
    return out[0] if isinstance(out, tuple) else out


class _Layer:
    """Block i of `model` on an input, with the arguments `layer_args` recorded (`calls`), tapping its sub-blocks."""

    def __init__(self, model: "HFModel", i: int):
        self.model, self.i = model, i

    def __call__(self, h: torch.Tensor, calls: list, taps: dict | None = None) -> torch.Tensor:
        block, (args, kwargs) = self.model.blocks[self.i], calls[self.i]
        hooks = [] if taps is None else [
            block.get_submodule(name).register_forward_hook(
                lambda _m, _a, out, name=name: taps.__setitem__(name, _first_tensor(out)))
            for name in self.model.structure.sub_blocks]
        try:
            with self.model.precision():
                return _first_tensor(block(h, *args, **kwargs))
        finally:
            for hook in hooks:
                hook.remove()


class HFModel(nn.Module):
    """The family's model: a transformers causal LM (`hf`) behind the interface `embed`, `layers[i](h,
    *layer_args(seq_len), taps)`, `head`, `forward`."""

    CHECKS = ("end_to_end", "layers", "bisect", "perplexity")
    WHY_NOT = "a transformers model is exported as transformers writes it, without paged-cache serving entry points"
    outputs_logits = True
    shardable = False  # tensor parallelism is not built for it
    emulatable = False  # runs fp16 / bf16 natively (module docstring)
    streams_parts = False  # transformers builds the whole model: the layer check uses the resident one
    DTYPES = ("fp32", "fp16", "bf16", "int8", "q4_1", "w8a8_int8")  # IPEX's columns
    # What transformers' masks use and IREE 3.9 does not lower: `&` of boolean masks, aten.diff (README Findings).
    EXPORT_DECOMPOSITIONS = {torch.ops.aten.__and__.Tensor: _and, torch.ops.aten.diff.default: _diff}
    COMPILE_FLAGS = None  # the target's

    def __init__(self, config: HFConfig):
        """Built on the current default device: meta for shapes (weights.expected_shapes), the CPU for a model
        (its buffers, such as rotary tables, are computed here, not loaded)."""
        super().__init__()
        self.config, self.structure = config, structure(config)
        self.hf = _transformers_model(config)

    @staticmethod
    def family(config: HFConfig) -> str:
        return "hf"

    @staticmethod
    def sub_blocks(config: HFConfig) -> tuple[str, ...]:
        return structure(config).sub_blocks

    @staticmethod
    def sub_block_consumers(config: HFConfig) -> dict[str, tuple[str, ...]]:
        """Unknown in general: every later sub-block is taken to consume each one."""
        names = structure(config).sub_blocks
        return {name: names[i + 1:] for i, name in enumerate(names)}

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.get_submodule(self.structure.blocks)

    @property
    def layers(self) -> list[_Layer]:
        return [_Layer(self, i) for i in range(len(self.blocks))]

    @property
    def embed_tokens(self) -> nn.Module:
        return self.hf.get_input_embeddings()

    def to(self, *args, **kwargs) -> "HFModel":
        """Parameters in the dtype, buffers as built (transformers' rotary tables in fp32), as from_pretrained(dtype=)
        leaves them; an fp64 model's buffers in fp64 (the oracle)."""
        buffers = dict(self.hf.named_buffers())
        super().to(*args, **kwargs)
        if self.embed_tokens.weight.dtype != torch.float64:
            for name, buffer in buffers.items():
                parent, _, leaf = name.rpartition(".")
                setattr(self.hf.get_submodule(parent) if parent else self.hf, leaf, buffer)
        return self

    def precision(self):
        return keep_float64() if self.embed_tokens.weight.dtype == torch.float64 else contextlib.nullcontext()

    def _prelude(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list]:
        """The first block's input and every block's other arguments."""
        calls: list = []
        parent, _, name = self.structure.blocks.rpartition(".")
        holder = self.hf.get_submodule(parent) if parent else self.hf
        norm_parent, _, norm_name = self.structure.norm.rpartition(".")
        norm_holder = self.hf.get_submodule(norm_parent) if norm_parent else self.hf
        blocks, norm = getattr(holder, name), getattr(norm_holder, norm_name)
        setattr(holder, name, nn.ModuleList(_Recorder(b, calls, self.structure.returns_tuple) for b in blocks))
        setattr(norm_holder, norm_name, nn.Identity())
        try:
            with self.precision():
                h = self.hf.base_model(**_inputs(tokens)).last_hidden_state
        finally:
            setattr(holder, name, blocks)
            setattr(norm_holder, norm_name, norm)
        return h, calls

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._prelude(tokens)[0]

    def layer_args(self, seq_len: int) -> tuple[list]:
        """What every layer takes besides its input: the arguments each block gets at `seq_len` tokens."""
        return (self._prelude(torch.zeros(1, seq_len, dtype=torch.int64))[1],)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        with self.precision():
            return self.hf.get_output_embeddings()(self.hf.get_submodule(self.structure.norm)(h))

    def forward(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        with self.precision():
            return self.hf(**_inputs(tokens)).logits[:, first:]
