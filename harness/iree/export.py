"""Export a torch module to MLIR with iree-turbine, parameters externalized to an .irpa archive.

Several entry points (e.g. the whole model, or its embedding, each layer and its head) go into one
program and share one parameter archive, so one compile serves them all.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from iree.turbine import aot

from harness.cache import cache_dir
from harness.iree.stages import StageFailure


@dataclasses.dataclass(frozen=True)
class Entry:
    """An entry point: `fn(module, *args)` traced with example `args`."""

    name: str
    fn: Callable
    args: tuple


@dataclasses.dataclass(frozen=True)
class Exported:
    mlir: Path
    irpa: Path
    seconds: float
    cached: bool


def export_program(module: torch.nn.Module, entries: list[Entry], key: str, reproducer: str) -> Exported:
    """Export `entries` of `module` (or reuse the export cached under `key`, which must identify the
    module's code, weights and dtype and the entries' shapes)."""
    final = cache_dir("exports") / key
    mlir, irpa = final / "program.mlir", final / "params.irpa"
    if mlir.exists() and irpa.exists():
        return Exported(mlir, irpa, 0.0, True)
    start = time.perf_counter()
    tmp = final.with_name(f"{key}.tmp{time.monotonic_ns()}")
    tmp.mkdir(parents=True)
    try:
        aot.externalize_module_parameters(module)
        builder = aot.FxProgramsBuilder(module)
        for entry in entries:
            builder.export_program(entry.fn, name=entry.name, args=entry.args, strict=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            output = aot.export(builder)
        output.save_mlir(tmp / "program.mlir")
        aot.save_module_parameters(tmp / "params.irpa", module)
    except Exception as e:  # noqa: BLE001 - any exporter error is this stage's failure
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageFailure("export", f"{type(e).__name__}: {e}", reproducer) from e
    if final.exists():  # another worker finished the same export first
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)
    return Exported(mlir, irpa, time.perf_counter() - start, False)
