"""Our candidate: the harness exports its own reference model (the variant, a planted fault if any, sharded
to TP devices), compiles it for the target and runs it with IREE. Programs are built on first use and
cached on disk (harness/iree/: the program by code, shapes and dtype; the parameter archive by the weights
as well; the module by program, flags and compiler), so every check of a configuration shares them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from harness.candidates.programs import forward_entries, layer_entries, serving_entries, serving_layer_entries
from harness.common.cache import digest
from harness.common.errors import HarnessError
from harness.common.stages import Stages
from harness.iree.compiler import compile_module
from harness.iree.export import export_program
from harness.iree.runtime import CompiledModule
from harness.iree.targets import FP8_DECODE, Target
from harness.reference.eager import Variant
from harness.reference.families import model_class, sub_blocks
from harness.reference.llama.config import LlamaConfig
from harness.reference.llama.paged import ServingShape, cache_dtype
from harness.reporting.records import versions
from harness.transforms.faults import Fault, plant_fault
from harness.transforms.shard import join_caches, shard, split_cache

PACKAGE = Path(__file__).resolve().parents[1]
# Everything whose text can change an exported program or its parameters: the reference (model, weight
# loaders, the registry's random toys), the transforms, the candidates, the exporter, the dtype table.
EXPORT_SOURCES = ("reference/**/*.py", "transforms/*.py", "candidates/*.py", "iree/export.py", "common/dtypes.py")


@functools.cache
def source_digest() -> str:
    return digest(*(p.read_bytes() for pattern in EXPORT_SOURCES for p in sorted(PACKAGE.glob(pattern))))


class CompiledForward:
    """A compiled module's entry point that maps tokens to the logits of positions `first`.. (the program
    was compiled for that `first`: it can only drop further leading positions)."""

    def __init__(self, module: CompiledModule, function: str = "forward", name: str = "iree", first: int = 0):
        self.module, self.function, self.name, self.first = module, function, name, first

    def logits(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        if first < self.first:
            raise HarnessError(f"engine {self.name}: asked for logits from position {first}, but its program "
                               f"returns them from position {self.first}")
        (out,) = self.module(self.function, tokens.numpy())
        return torch.from_numpy(out)[:, first - self.first:]


class CompiledParts:
    """The entry points of a compiled "layers" program (programs.py), counting invocations."""

    def __init__(self, module: CompiledModule, config):
        self.module, self.n_layers, self.invocations = module, config.n_layers, 0
        self.sub_blocks = sub_blocks(config)

    def _call(self, function: str, x: torch.Tensor) -> list[torch.Tensor]:
        self.invocations += 1
        return [torch.from_numpy(o) for o in self.module(function, x.numpy())]

    def embed(self, tokens):
        return self._call("embed", tokens)[0]

    def layer(self, i: int, h):
        out, *taps = self._call(f"layer_{i}", h.float())
        return out, dict(zip(self.sub_blocks, taps))

    def head(self, h):
        return self._call("head", h.float())[0]

    def reproducer(self, function: str, inputs: list[np.ndarray], directory: Path) -> str:
        return save_reproducer(self.module, function, inputs, directory)


def save_reproducer(module: CompiledModule, function: str, inputs: list[np.ndarray], directory: Path) -> str:
    """An iree-run-module command running `function` on `inputs`, saved as .npy files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{function}_input{i if len(inputs) > 1 else ''}.npy" for i in range(len(inputs))]
    for path, array in zip(paths, inputs):
        np.save(path, array)
    return module.reproducer(function, paths)


class CompiledServing:
    """A compiled "serving" program's entry points over one cache, which lives on the device between calls; at
    TP > 1 as one shard per device (transforms/shard.py split_cache), read and written whole."""

    def __init__(self, module: CompiledModule, shape: ServingShape, config: LlamaConfig, dtype: torch.dtype,
                 tp: int = 1):
        self.module, self.shape, self.name, self.config, self.tp = module, shape, "iree", config, tp
        self.layout = shape.layout(config)
        self.flags = module.source[1] if module.source else None
        self.cache_dtype = cache_dtype(dtype)
        self.write_cache(self.layout.allocate(self.cache_dtype))

    def _call(self, function: str, *args: torch.Tensor) -> torch.Tensor:
        (out,) = self.module(function, *(a.numpy() for a in args), *self.caches)
        return torch.from_numpy(out)

    def prefill(self, tokens, start_positions, seq_lens, page_table):
        return self._call(f"prefill_bs{tokens.shape[0]}", tokens, start_positions, seq_lens, page_table)

    def decode(self, tokens, seq_lens, start_positions, page_table):
        return self._call(f"decode_bs{tokens.shape[0]}", tokens, seq_lens, start_positions, page_table)

    def decode_layer(self, i: int, h, seq_lens, start_positions, page_table):
        """Layer i of a decode step ("serving_layers" program): its output and sub-blocks' outputs."""
        inputs = [h.float().numpy(), seq_lens.numpy(), start_positions.numpy(), page_table.numpy()]
        self.last_call = (f"decode_layer_{i}", [*inputs, self.written])  # the cache as the call found it
        out, *taps = (torch.from_numpy(o) for o in self.module(self.last_call[0], *inputs, *self.caches))
        return out, dict(zip(sub_blocks(self.config), taps))

    def reproducer(self, directory: Path) -> str:
        """iree-run-module on the last decode_layer call's inputs (bisection writes the cache before each call)."""
        return save_reproducer(self.module, *self.last_call, directory)

    def read_cache(self) -> torch.Tensor:
        return self.join([torch.from_numpy(c.to_host().copy()) for c in self.caches])

    def write_cache(self, cache: torch.Tensor) -> None:
        cache = cache.to(self.cache_dtype)
        self.written = cache.numpy()
        self.caches = [self.module.device_array(s.contiguous().numpy(), d) for d, s in enumerate(self.split(cache))]

    def split(self, cache: torch.Tensor) -> list[torch.Tensor]:
        """The whole cache as the program's per-device caches."""
        return [cache] if self.tp == 1 else split_cache(cache, self.layout, self.config, self.tp)

    def join(self, shards: list[torch.Tensor]) -> torch.Tensor:
        return shards[0] if self.tp == 1 else join_caches(shards, self.layout, self.config, self.tp)


class ExportedCandidate:
    """`variant` (with `fault` planted) exported, compiled for `target` and run on `tp` devices; programs
    default to `seq_len` tokens. `name` names the model in messages, `command` reruns the configuration."""

    programs = ("forward", "layers", "serving")

    def __init__(self, variant: Variant, target: Target, tp: int = 1, seq_len: int = 128, fault: Fault | None = None,
                 name: str = "the model", command: str = ""):
        self.variant, self.target, self.tp, self.seq_len, self.fault = variant, target, tp, seq_len, fault
        self.name, self.command = "iree", command
        self.model_name = name
        self.stages = Stages()
        self._modules: dict[str, CompiledModule] = {}

    def describe(self) -> dict:
        return {"candidate": "exported", "target": self.target.name, "device": self.target.device(self.tp),
                "attention": self.variant.attention, "fault": self.fault.id if self.fault else None,
                **self.target.compiler_key()}

    def unsupported(self, check: str) -> str | None:
        return None  # it builds every program each check needs

    def model(self, tp: int) -> torch.nn.Module:
        """The model this candidate compiles, on `tp` devices."""
        model = plant_fault(self.variant.build(fp8_decode=FP8_DECODE[self.target.hal_target_device]), self.fault)
        return shard(model, tp, self.model_name) if tp > 1 else model

    def module(self, program: str = "forward", seq_len: int | None = None, tp: int | None = None,
               first: int = 0, serving: ServingShape | None = None) -> CompiledModule:
        """The compiled module of `program` for `seq_len` tokens on `tp` devices (default: the
        candidate's), returning the logits of positions `first`.. ("forward" only), exported and compiled
        on first use (or taken from the cache). Its stages are "export", "compile", "run" for the default
        forward program and "<stage>:<label>" for others, e.g. "compile:layers", "run:forward@512[256:]",
        "export:forward@tp1"."""
        seq_len, tp = seq_len or self.seq_len, tp or self.tp
        label = program + (f"@{seq_len}" if seq_len != self.seq_len else "") + (
            f"[{first}:]" if first else "") + (f"@tp{tp}" if tp != self.tp else "")
        stage_label = "" if label == "forward" else label
        if label not in self._modules:
            fp8_decode = FP8_DECODE[self.target.hal_target_device]
            model, config = functools.cache(lambda: self.model(tp)), self.variant.weights.config  # built if exported
            tokens = torch.zeros(1, seq_len, dtype=torch.int64)
            entries = (forward_entries(tokens, first) if program == "forward"
                       else serving_entries(model(), serving) if program == "serving"
                       else serving_layer_entries(model(), serving) if program == "serving_layers"
                       else layer_entries(tokens, config.n_layers, config.dim))
            code = source_digest()
            fault = self.fault
            op_fault = fault.id if fault and fault.kind != "weight" else ""
            weight_fault = fault.id if fault and fault.kind == "weight" else ""
            dtype = self.variant.dtype
            program_key = digest(code, str(config.to_dict()), dtype, str(tp), program, str(first),
                                 self.variant.attention, fp8_decode, op_fault, str(versions()),
                                 *(str(tuple(a.shape)) for e in entries for a in e.args))
            params_key = digest(code, self.variant.weights.sha256, dtype, str(tp), weight_fault, str(versions()))
            with self.stages.timed("export", stage_label) as st:
                exported = export_program(model, entries, program_key, params_key, self.command,
                                          mutates_inputs=program.startswith("serving"),
                                          decompositions=model_class(config).EXPORT_DECOMPOSITIONS)
                st.seconds, st.cached = exported.seconds, exported.cached
            flags = self.target.compile_flags(tp, program, model_class(config).COMPILE_FLAGS)
            with self.stages.timed("compile", stage_label) as st:
                vmfb, st.seconds, st.cached = compile_module(exported.mlir, flags, self.target.compiler)
            with self.stages.timed("run", stage_label):
                self._modules[label] = CompiledModule(vmfb, exported.irpa, self.target.device(tp), tp,
                                                      source=(exported.mlir, flags))
        return self._modules[label]

    def forward(self, seq_len: int | None = None, first: int = 0, tp: int | None = None) -> CompiledForward:
        return CompiledForward(self.module("forward", seq_len, tp, first), first=first)

    def layers(self, seq_len: int | None = None) -> CompiledParts:
        return CompiledParts(self.module("layers", seq_len), self.variant.weights.config)

    def serving(self, shape: ServingShape, program: str = "serving") -> CompiledServing:
        """The "serving" program (prefill_bs{N}, decode_bs{N}) or "serving_layers" (decode_layer_<i>)."""
        if self.tp > 1 and program == "serving_layers":
            raise HarnessError(f"--tp {self.tp}: bisection through decode runs at TP 1 (its one-layer program is "
                               "not sharded)")
        return CompiledServing(self.module(program, serving=shape), shape, self.variant.weights.config,
                               self.variant.torch_dtype, self.tp)
