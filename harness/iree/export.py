"""Export a torch module to MLIR with iree-turbine, parameters externalized to an .irpa archive.

Several entry points (e.g. the whole model, or its embedding, each layer and its head) go into one
program and share one parameter archive, so one compile serves them all.

The program and its parameters are cached apart: the MLIR depends on the code, the shapes and the
dtype, the archive on the weights. New weights for the same architecture (another checkpoint, or a
fault planted in one tensor) need a new archive, not a new trace and compile.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from iree.turbine import aot
from iree.turbine.aot import DeviceAffinity
from iree.turbine.aot.decompositions import extend_aot_decompositions

from harness.common.cache import cache_dir
from harness.common.errors import StageFailure


@dataclasses.dataclass(frozen=True)
class Entry:
    """An entry point: `fn(module, *args)` traced with example `args`; `arg_device` places arguments on other
    devices than the first (argument index -> device ordinal)."""

    name: str
    fn: Callable
    args: tuple
    arg_device: dict[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Exported:
    mlir: Path
    irpa: Path
    seconds: float
    cached: bool


def _tmp(path: Path) -> Path:
    # Same suffix: the archive writer appends ".irpa" to a name without it.
    return path.with_name(f"{path.stem}.tmp{time.monotonic_ns()}{path.suffix}")


def _linear_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """aten.linear on the rows of x, batch dimensions folded: IREE 3.9 lowers a linear of a [N, S, K] input
    with N > 1 to a batched matmul over the weight broadcast to [N, K, M], materialized (SmolLM2 decode_bs4: a
    step 8x decode_bs1's, where the weights read per step are the same)."""
    out = torch.mm(x.reshape(-1, x.shape[-1]), weight.t())  # not F.linear: this decomposes it
    out = out if bias is None else out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def export_program(build: Callable[[], torch.nn.Module], entries: list[Entry], program_key: str, params_key: str,
                   reproducer: str, mutates_inputs: bool = False, decompositions: dict | None = None) -> Exported:
    """Export `entries` of the module `build()` makes (only when something is not cached: the model is not built
    for a cached program), reusing the cached program (`program_key`: code, shapes, dtype)
    and parameter archive (`params_key`: the weights as well). `mutates_inputs`: an entry updates an
    argument in place (the paged cache), which only torch.export's decomposition pass functionalizes (into
    an overwrite of the argument that IREE performs in place). `decompositions`: ops the model's family needs
    rewritten before IREE sees them (then every program is re-traced through them)."""
    mlir = cache_dir("exports") / f"{program_key}.mlir"
    irpa = cache_dir("params") / f"{params_key}.irpa"
    if mlir.exists() and irpa.exists():
        return Exported(mlir, irpa, 0.0, True)
    start = time.perf_counter()
    module = build()
    try:
        if not mlir.exists():
            aot.externalize_module_parameters(module)
            builder = aot.FxProgramsBuilder(module)
            # Without turbine's default AOT decompositions (61 ops), torch.export skips re-tracing every
            # program through run_decompositions: half the export time (SmolLM2 forward 18 s -> 9 s), and
            # the compiler lowers these models' ops itself (the same logits to the last bit). A program that
            # mutates its inputs needs that pass, and gets its linears folded to 2-d on the way (_linear_2d).
            # Traced without grad: transformers' models switch it off inside (their rotary tables), which in a
            # trace with grad on becomes a higher-order op the importer lacks (wrap_with_set_grad_enabled).
            with extend_aot_decompositions(from_current=mutates_inputs) as table, torch.no_grad():
                if mutates_inputs:
                    table[torch.ops.aten.linear.default] = _linear_2d
                table.update(decompositions or {})
                for entry in entries:
                    arg_device = {i: DeviceAffinity(d) for i, d in (entry.arg_device or {}).items()} or None
                    builder.export_program(entry.fn, name=entry.name, args=entry.args, strict=False,
                                           arg_device=arg_device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                output = aot.export(builder)
            tmp = _tmp(mlir)
            output.save_mlir(tmp)
            tmp.replace(mlir)  # atomic: parallel workers never see half a file
        if not irpa.exists():
            tmp = _tmp(irpa)
            aot.save_module_parameters(tmp, module)
            tmp.replace(irpa)
    except Exception as e:  # noqa: BLE001 - any exporter error is this stage's failure
        raise StageFailure("export", f"{type(e).__name__}: {e}", reproducer) from e
    return Exported(mlir, irpa, time.perf_counter() - start, False)
