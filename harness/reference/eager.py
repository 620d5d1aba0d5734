"""The eager side of every comparison, for one model in one dtype (and variant):

- `Variant`: the weights rounded to the dtype, projections quantized (weight-only or W8A8, with its
  calibration), attention formulated as asked: `build(compute_dtype)` makes the torch model.
- `EagerModel`: a built model and the precision it runs in, as a forward program (tokens -> logits) and
  as parts (embedding, each layer with its sub-blocks, head).
- `Reference`: the three eager models a check needs: `eager` in the same dtype (real torch low precision,
  or by default for fp16/bf16 fp32 arithmetic rounded at every op boundary: the same values on every CPU,
  and ~100x faster on CPUs without half-precision units), the fp64 `oracle` (the same dtype-rounded weights
  computed in fp64) and `fp32` (unquantized fp32: what a dtype or quantization costs).
"""

from __future__ import annotations

import contextlib
import dataclasses
from functools import cached_property
from typing import Callable

import torch

from harness.common.dtypes import quantization, torch_dtype
from harness.reference.llama.attention import ATTENTION
from harness.reference.llama.model import Llama
from harness.reference.llama.paged import ServingShape
from harness.reference.precision import emulate
from harness.reference.tokenizer import Tokenizer
from harness.reference.weights import LoadedWeights
from harness.transforms import w8a8
from harness.transforms.quantize import quantize

EAGER_MODES = ("emulated", "native")


@dataclasses.dataclass(frozen=True, eq=False)
class Variant:
    """A model as a configuration names it (`dtype`: fp32, fp16, bf16 or a quantized variant)."""

    weights: LoadedWeights
    dtype: str
    attention: str = "sdpa"  # attention.IMPLS
    calibration: dict[str, torch.Tensor] | None = None  # W8A8's activation ranges (w8a8.calibrate)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def quant(self) -> str | None:
        return quantization(self.dtype)

    def build(self, compute: torch.dtype | None = None, fp8_decode: str = "native", quantized: bool = True) -> Llama:
        """The model with weights rounded to the dtype and its projections quantized (unless not
        `quantized`), held and computed in `compute` (default: the dtype); fp8 codes decoded as
        `fp8_decode` says (transforms/quantize.py)."""
        with torch.device("meta"):  # no random init: the weights replace every parameter
            model = Llama(self.weights.config)
        # assign: a model in the weights' own dtype shares their storage instead of holding a second copy
        # (SmolLM2 fp32: 0.5 GB). Nothing mutates a parameter in place (faults replace theirs).
        dtype = self.torch_dtype
        model.load_state_dict({k: v.to(dtype) for k, v in self.weights.state_dict.items()}, assign=True)
        for layer in model.layers:
            layer.self_attn.attend = ATTENTION[self.attention]
        if quantized and self.quant in w8a8.SCHEMES:
            w8a8.quantize_w8a8(model, self.quant, self.calibration, fp8_decode)
        elif quantized and self.quant:
            quantize(model, self.quant, fp8_decode)
        return model.to(compute or dtype).eval()


def as_result(t: torch.Tensor) -> torch.Tensor:
    """An eager result as compared: fp32 (exact for fp16/bf16 values), fp64 kept for the oracle."""
    return t if t.dtype == torch.float64 else t.float()


class EagerModel:
    """Eager PyTorch: a model, run natively or (`emulated` set to a dtype) in fp32 under `emulate(dtype)`."""

    def __init__(self, model: torch.nn.Module, name: str = "eager", emulated: torch.dtype | None = None):
        self.model, self.name, self.emulated = model.eval(), name, emulated

    def precision(self):
        """The context the model runs in: emulated rounding, or nothing for a native dtype."""
        return emulate(self.emulated) if self.emulated is not None else contextlib.nullcontext()

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """[batch, seq] int64 token ids -> [batch, seq - first, vocab] logits of positions `first`..,
        float32 (float64 for an fp64 model)."""
        with self.precision():
            return as_result(self.model(tokens, first))

    @torch.no_grad()
    def sample(self, prompts: int, length: int, seed: int = 0) -> torch.Tensor:
        """[prompts, length] token ids drawn from the model's own distribution (temperature 1, each prompt
        from a random first token): text on which a random-weight toy's perplexity means something, because
        any corruption of the model raises its expected NLL (by the KL divergence from the model)."""
        generator = torch.Generator().manual_seed(seed)
        vocab = self.model.config.vocab_size
        tokens = torch.randint(0, vocab, (prompts, 1), generator=generator)
        for _ in range(length - 1):
            probs = torch.softmax(self.logits(tokens, tokens.shape[1] - 1)[:, -1].double(), dim=-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return tokens

    def parts(self) -> "EagerParts":
        return EagerParts(self)

    def serving(self, shape: ServingShape) -> "EagerServing":
        return EagerServing(self, shape)


class EagerServing:
    """An eager model's serving calls over its own paged cache (reference/llama/paged.py), held in the
    model's compute dtype."""

    def __init__(self, eager: EagerModel, shape: ServingShape):
        self.eager, self.shape, self.name, self.flags = eager, shape, eager.name, None
        self.layout = shape.layout(eager.model.config)
        self.cache = self.layout.allocate(eager.model.embed_tokens.weight.dtype)

    @torch.no_grad()
    def prefill(self, tokens, start_positions, seq_lens, page_table):
        with self.eager.precision():
            return as_result(self.eager.model.paged(tokens, start_positions, seq_lens, page_table, self.cache,
                                                    self.layout))

    def decode(self, tokens, seq_lens, start_positions, page_table):
        return self.prefill(tokens, start_positions, seq_lens, page_table)

    @torch.no_grad()
    def embed(self, tokens):
        with self.eager.precision():
            return as_result(self.eager.model.embed(tokens))

    @torch.no_grad()
    def decode_layer(self, i: int, h, seq_lens, start_positions, page_table):
        """Layer i of a decode step on input `h` [N, 1, dim]: its output and its sub-blocks' outputs."""
        taps, model = {}, self.eager.model
        with self.eager.precision():
            out = model.paged_layer(i, h.to(model.embed_tokens.weight.dtype), start_positions, seq_lens, page_table,
                                    self.cache, self.layout, taps)
        return as_result(out), {k: as_result(v) for k, v in taps.items()}

    def read_cache(self) -> torch.Tensor:
        return self.cache.clone()

    def write_cache(self, cache: torch.Tensor) -> None:
        self.cache = cache.to(self.cache.dtype, copy=True)  # never the caller's tensor: this cache is written


class EagerParts:
    """An eager model's embedding, decoder layers (with their sub-blocks' outputs) and head, each run on
    its own in the model's precision."""

    def __init__(self, eager: EagerModel):
        self.model, self.eager = eager.model, eager
        self.dtype = self.model.embed_tokens.weight.dtype
        self.n_layers = len(self.model.layers)

    @torch.no_grad()
    def embed(self, tokens):
        with self.eager.precision():
            return as_result(self.model.embed(tokens))

    @torch.no_grad()
    def layer(self, i: int, h) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps = {}
        with self.eager.precision():
            out = self.model.layers[i](h.to(self.dtype), *self.model.rope(h.shape[1]), taps)
        return as_result(out), {k: as_result(v) for k, v in taps.items()}

    @torch.no_grad()
    def head(self, h):
        with self.eager.precision():
            return as_result(self.model.head(h.to(self.dtype)))


class Reference:
    """The eager models of one model (`name`, `weights`, and its tokenizer if it has one) in one dtype (or
    variant)."""

    def __init__(self, name: str, weights: LoadedWeights, dtype: str, attention: str = "sdpa",
                 mode: str = "emulated", tokenizer: Callable[[], Tokenizer] | None = None,
                 calibration_batches: Callable[[], list[torch.Tensor]] | None = None,
                 transformers: Callable[[], torch.nn.Module] | None = None):
        """`tokenizer`: loads it (None for a random toy); `calibration_batches`: token ids that calibrate a
        W8A8 variant's activation scales; `transformers`: loads Hugging Face's implementation of the same
        weights, the independent check of the fp32 reference (None where there is none)."""
        self.name, self.weights, self.dtype, self.attention, self.mode = name, weights, dtype, attention, mode
        self.tokenizer, self.calibration_batches, self.transformers = tokenizer, calibration_batches, transformers

    @cached_property
    def variant(self) -> Variant:
        plain = Variant(self.weights, self.dtype, self.attention)
        if plain.quant not in w8a8.SCHEMES:
            return plain
        return dataclasses.replace(plain, calibration=w8a8.calibrate(self.fp32.model, self.calibration_batches()))

    @cached_property
    def eager(self) -> EagerModel:
        v = self.variant
        if v.torch_dtype == torch.float32:
            return EagerModel(v.build(), "eager")
        if self.mode == "native":
            return EagerModel(v.build(), "eager-native")
        return EagerModel(v.build(torch.float32), "eager-emulated", emulated=v.torch_dtype)

    @cached_property
    def oracle(self) -> EagerModel:
        return EagerModel(self.variant.build(torch.float64), "oracle-fp64")

    @cached_property
    def fp32(self) -> EagerModel:
        """Eager fp32 without quantization: what a lower precision or a quantization is measured against."""
        return EagerModel(Variant(self.weights, "fp32", self.attention).build(), "eager-fp32")
