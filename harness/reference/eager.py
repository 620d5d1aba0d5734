"""The eager side of every comparison, for one model in one dtype (and variant):

- `Variant`: the weights rounded to the dtype, projections quantized (weight-only or W8A8, with its
  calibration), attention formulated as asked: `build(compute_dtype)` makes the torch model.
- `EagerModel`: a built model and the precision it runs in, as a forward program (tokens -> logits) and
  as parts (embedding, each layer with its sub-blocks, head); `StreamingParts`: the same parts built one at a
  time from the weights, for the layer check and bisection, which then never hold the whole model.
- `Reference`: the three eager models a check needs: `eager` in the same dtype (real torch low precision,
  or by default for fp16/bf16 fp32 arithmetic rounded at every op boundary: the same values on every CPU,
  and ~100x faster on CPUs without half-precision units), the fp64 `oracle` (the same dtype-rounded weights
  computed in fp64) and `fp32` (unquantized fp32: what a dtype or quantization costs).
"""

from __future__ import annotations

import contextlib
import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from harness.common.dtypes import quantization, torch_dtype
from harness.common.errors import HarnessError
from harness.reference import families
from harness.reference.llama.paged import ServingShape
from harness.reference.precision import emulate
from harness.reference.tokenizer import Tokenizer
from harness.reference.weights import LoadedWeights, expected_shapes
from harness.transforms import w8a8
from harness.transforms.quantize import quantize

EAGER_MODES = ("emulated", "native")
EAGER_MEMORY = ("auto", "resident", "streaming")
RESIDENT_SHARE = 0.5  # "auto" streams a reference that would take more of the machine's memory (checks need more)


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

    def build(self, compute: torch.dtype | None = None, fp8_decode: str = "native", quantized: bool = True,
              part: str | None = None) -> torch.nn.Module:
        """The model with weights rounded to the dtype and its projections quantized (unless not
        `quantized`), held and computed in `compute` (default: the dtype); fp8 codes decoded as
        `fp8_decode` says (transforms/quantize.py). `part` ("embed", "layer_<i>" or "head"): only that part's
        parameters are read, the rest of the model is left on the meta device (no memory)."""
        # On the meta device, no random init: the weights replace every parameter. A transformers model is built on
        # the CPU, where its buffers (rotary tables) are computed, uninitialised (hfauto/model.py).
        streams = families.model_class(self.weights.config).streams_parts
        with torch.device("meta") if streams else contextlib.nullcontext():
            model = families.build(self.weights.config)
        # assign: a model in the weights' own dtype takes their tensors instead of a second copy (SmolLM2 fp32:
        # 0.5 GB). Nothing mutates a parameter in place (faults replace theirs).
        dtype, names = self.torch_dtype, part_names(self.weights.config, part)
        model.load_state_dict({k: self.weights.state_dict[k].to(dtype) for k in names}, assign=True,
                              strict=part is None)
        if hasattr(model, "use_attention"):  # llama's formulations; T5's and transformers' attention is as written
            model.use_attention(self.attention)
        if quantized and self.quant in w8a8.SCHEMES:
            w8a8.quantize_w8a8(model, self.quant, self.calibration, fp8_decode)
        elif quantized and self.quant:
            quantize(model, self.quant, fp8_decode)
        return model.to(compute or dtype).eval()


def part_names(config, part: str | None) -> list[str]:
    """The parameters of a model part: the embedding, a layer ("layer_<i>", with what every layer reads, such as
    T5's position bias table), or the head (for llama the final norm and the output projection, which is the
    embedding when tied); every parameter for None."""
    names = list(expected_shapes(config))
    if part is None:
        return names
    part_params = families.model_class(config).part_params
    if part in ("embed", "head"):
        return part_params(config, part)
    layer = int(part.removeprefix("layer_"))
    if not 0 <= layer < config.n_layers:
        raise ValueError(f"part {part!r}: the model has layers 0 .. {config.n_layers - 1}")
    return [n for n in names if n.startswith(f"layers.{layer}.")] + part_params(config, "layer")


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

    def __init__(self, eager: EagerModel, dtype: torch.dtype | None = None):
        self.model, self.eager = eager.model, eager
        self.dtype = dtype or self.model.embed_tokens.weight.dtype
        self.n_layers = len(self.model.layers)

    def _model(self, part: str) -> torch.nn.Module:
        """A model that holds `part` ("embed", "layer_<i>" or "head")."""
        return self.model

    @torch.no_grad()
    def embed(self, tokens):
        with self.eager.precision():
            return as_result(self._model("embed").embed(tokens))

    @torch.no_grad()
    def layer(self, i: int, h) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps, model = {}, self._model(f"layer_{i}")
        with self.eager.precision():
            out = model.layers[i](h.to(self.dtype), *model.layer_args(h.shape[1]), taps)
        return as_result(out), {k: as_result(v) for k, v in taps.items()}

    @torch.no_grad()
    def head(self, h):
        with self.eager.precision():
            return as_result(self._model("head").head(h.to(self.dtype)))


class StreamingParts(EagerParts):
    """EagerParts that never hold the model: each part is built from the (memory-mapped) weights when asked for
    and dropped when another is, so a layer check or a bisection holds one part plus activations (the largest
    part: a decoder layer, or the embedding for small models) instead of the model. The same parameters and
    ops as the built model's parts, so the same values to the bit."""

    def __init__(self, variant: Variant, compute: torch.dtype | None, name: str, emulated: torch.dtype | None):
        with torch.device("meta"):
            skeleton = families.build(variant.weights.config)
        super().__init__(EagerModel(skeleton, name, emulated), compute or variant.torch_dtype)
        self.variant, self.compute = variant, compute
        self._built: tuple[str, torch.nn.Module] | None = None

    def _model(self, part: str) -> torch.nn.Module:
        if self._built is None or self._built[0] != part:
            self._built = None  # the previous part is freed before the next is read
            self._built = part, self.variant.build(self.compute, part=part)
        return self._built[1]


class StreamingModel(EagerModel):
    """An eager model run one part at a time (StreamingParts), each part read from the weights on every call
    (`--eager-memory streaming`: a layer's memory instead of the model's, for a reference that does not fit this
    machine; every call reads every layer). The same values as the built model's, to the bit. Its `model` is the
    skeleton on the meta device: what needs the whole model's parameters (serving) is refused."""

    def __init__(self, parts: StreamingParts):
        super().__init__(parts.model, parts.eager.name, parts.eager.emulated)
        self._parts = parts

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        h = self._parts.embed(tokens)
        for i in range(self._parts.n_layers):
            h = self._parts.layer(i, h)[0]
        return self._parts.head(h[:, first:])

    def parts(self) -> StreamingParts:
        return self._parts

    def serving(self, shape: ServingShape):
        raise HarnessError("--eager-memory streaming: the serving checks need the resident eager model (its paged "
                           "cache spans every layer); run them with --eager-memory resident on a larger machine")


def resident_bytes(config) -> int:
    """The resident reference of a layer check or end-to-end check: eager in fp32 and the oracle in fp64."""
    return 12 * sum(torch.Size(s).numel() for s in expected_shapes(config).values())


def machine_bytes() -> int:
    """This machine's memory, or its container's limit where lower (cgroup v2): fixed for a run, so that "auto" decides
    the same way for every configuration, unlike what happens to be free (Linux; elsewhere assume enough)."""
    sizes = [1 << 62]
    meminfo, limit = Path("/proc/meminfo"), Path("/sys/fs/cgroup/memory.max")
    if meminfo.exists():
        sizes += [int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()
                  if line.startswith("MemTotal:")]
    if limit.exists() and limit.read_text().strip().isdigit():
        sizes.append(int(limit.read_text()))
    return min(sizes)


class Reference:
    """The eager models of one model (`name`, `weights`, and its tokenizer if it has one) in one dtype (or
    variant)."""

    def __init__(self, name: str, weights: LoadedWeights, dtype: str, attention: str = "sdpa",
                 mode: str = "emulated", tokenizer: Callable[[], Tokenizer] | None = None,
                 calibration_batches: Callable[[], list[torch.Tensor]] | None = None,
                 transformers: Callable[[], torch.nn.Module] | None = None, memory: str = "auto"):
        """`tokenizer`: loads it (None for a random toy); `calibration_batches`: token ids that calibrate a
        W8A8 variant's activation scales; `transformers`: loads Hugging Face's implementation of the same
        weights, the independent check of the fp32 reference (None where there is none); `memory` (EAGER_MEMORY):
        whether the eager models are built whole ("resident") or run one part at a time ("streaming"), "auto":
        streaming when the resident reference would take more than RESIDENT_SHARE of the machine's memory."""
        self.name, self.weights, self.dtype, self.attention, self.mode = name, weights, dtype, attention, mode
        self.tokenizer, self.calibration_batches, self.transformers = tokenizer, calibration_batches, transformers
        self.memory = memory

    @property
    def family(self) -> type[torch.nn.Module]:
        """The model's class (reference/families.py): what its architecture takes and how it runs."""
        return families.model_class(self.weights.config)

    @property
    def outputs_logits(self) -> bool:
        """Whether the model's output is next-token logits (an encoder's is hidden states)."""
        return self.family.outputs_logits

    @cached_property
    def streaming(self) -> bool:
        if not self.family.streams_parts:  # the whole model, or one line saying why it cannot be
            if self.memory == "streaming":
                raise HarnessError(f"--eager-memory streaming: {self.name}'s family builds the whole model (its parts "
                                   "are not built one at a time)")
            if resident_bytes(self.weights.config) > RESIDENT_SHARE * machine_bytes():
                raise HarnessError(f"{self.name}: its family holds the whole model, eager and the fp64 oracle "
                                   f"({resident_bytes(self.weights.config) / 2**30:.1f} GiB), over half of this "
                                   f"machine's {machine_bytes() / 2**30:.1f} GiB")
            return False
        return self.memory == "streaming" or (
            self.memory == "auto" and resident_bytes(self.weights.config) > RESIDENT_SHARE * machine_bytes())

    @cached_property
    def variant(self) -> Variant:
        plain = Variant(self.weights, self.dtype, self.attention)
        if plain.quant not in w8a8.SCHEMES:
            return plain
        # Its end-to-end judgement holds four whole models: eager W8A8, its fp64 oracle, and the unquantized pair
        # that sizes the budget's fp32 rounding share (fp32, fp32_oracle): twice the resident reference.
        resident = 2 * resident_bytes(self.weights.config)
        if self.streaming or resident > RESIDENT_SHARE * machine_bytes():
            raise HarnessError(f"--dtype {self.dtype}: W8A8 calibration and judgement run whole models (quantized and "
                               f"not, eager and fp64: {resident / 2**30:.1f} GiB), over half of this machine's "
                               f"{machine_bytes() / 2**30:.1f} GiB or streamed (--eager-memory {self.memory})")
        return dataclasses.replace(plain, calibration=w8a8.calibrate(self.fp32.model, self.calibration_batches()))

    def _spec(self, which: str) -> tuple[torch.dtype | None, str, torch.dtype | None]:
        """How `which` ("eager" or "oracle") runs the variant: its compute dtype (None: the dtype's own), name and
        emulated dtype."""
        v = self.variant
        if which == "oracle":
            return torch.float64, "oracle-fp64", None
        if v.torch_dtype == torch.float32:
            return None, "eager", None
        if self.mode == "native" or not self.family.emulatable:
            return None, "eager-native", None
        return torch.float32, "eager-emulated", v.torch_dtype

    def _model(self, variant: Variant, compute: torch.dtype | None, name: str,
               emulated: torch.dtype | None = None) -> EagerModel:
        if self.streaming:
            return StreamingModel(StreamingParts(variant, compute, name, emulated))
        return EagerModel(variant.build(compute), name, emulated=emulated)

    @cached_property
    def eager(self) -> EagerModel:
        return self._model(self.variant, *self._spec("eager"))

    @cached_property
    def oracle(self) -> EagerModel:
        return self._model(self.variant, *self._spec("oracle"))

    def parts(self, which: str) -> EagerParts:
        """The parts of `which` ("eager" or "oracle") built one at a time from the weights (StreamingParts: what
        the layer check and bisection use, so they never hold the whole model), or for a family whose parts are
        not built alone (a transformers model) or for a W8A8 variant (its judgement puts noise into the resident
        model's quantizers), the resident model's."""
        if not self.family.streams_parts or self.variant.quant in w8a8.SCHEMES:
            return (self.eager if which == "eager" else self.oracle).parts()
        return StreamingParts(self.variant, *self._spec(which))

    @cached_property
    def fp32(self) -> EagerModel:
        """Eager fp32 without quantization: what a lower precision or a quantization is measured against."""
        return self._model(Variant(self.weights, "fp32", self.attention), None, "eager-fp32")

    @cached_property
    def fp32_oracle(self) -> EagerModel:
        """The fp64 oracle without quantization: against it, `fp32` shows what fp32 rounding alone does to this
        model (a share of a W8A8 budget, numerics/tolerance.py)."""
        return self._model(Variant(self.weights, "fp32", self.attention), torch.float64, "oracle-fp64-unquantized")
