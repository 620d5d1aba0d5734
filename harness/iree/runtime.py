"""Load a compiled module with its parameter archive on one or more IREE devices and call it."""

from __future__ import annotations

import shlex
from pathlib import Path

import iree.runtime as rt
import numpy as np
import torch

from harness.common.cache import cache_dir, digest
from harness.common.errors import HarnessError, StageFailure
from harness.iree.compiler import tool


def device_uris(uri: str, count: int) -> list[str]:
    """The `count` device URIs that `--iree-device` names: a comma-separated list of exactly `count`
    ("hip://0,hip://1"), or one URI standing for all of them: a CPU driver ("local-task") gives that
    many CPU devices, a GPU driver ("hip") its devices 0 .. count-1 ("hip://0" ...)."""
    uris = [u for u in uri.split(",") if u]
    if len(uris) > 1 and len(uris) != count:
        raise HarnessError(f"--iree-device {uri!r}: {len(uris)} devices listed, the module needs {count} "
                           f"(--tp {count})")
    if len(uris) == 1 and count > 1 and not uri.startswith("local"):
        return [f"{uri.split('://')[0]}://{i}" for i in range(count)]
    return uris * (count // len(uris))


WORKER_STACK = 1 << 20
# The worker count this process's local-task executor was made with: IREE reads it from flags once, when
# the driver is first made, and every local-task device of the process shares that executor.
_workers: int | None = None


def set_workers(count: int) -> None:
    """Make IREE's local-task executor with `count` workers (one per thread eager uses). Left to itself
    the runtime picks its topology from the caches it sees, which on a 2-core VM with private L2s is one
    worker: IREE then ran on half the machine that eager ran on. TP N on CPU devices shares the one
    executor: its N devices split `count` workers between them as their work interleaves."""
    global _workers
    if _workers is None:
        # Decode's gather outgrows the default 128 KiB worker stack (toolchain-facts).
        rt.flags.parse_flags(f"--task_topology_group_count={count}", f"--task_worker_stack_size={WORKER_STACK}")
        rt.get_driver("local-task")  # made now, with that count
        _workers = count
    elif _workers != count:
        raise HarnessError(f"--threads {count}: IREE's local-task executor of this process already has {_workers} "
                           "workers (IREE makes it once per process)")


def workers() -> int | None:
    """The local-task worker count of this process, None before any local-task device."""
    return _workers


def create_devices(uri: str, count: int, threads: int) -> list[rt.HalDevice]:
    """`count` devices for `uri` (see `device_uris`); CPU devices get `threads` workers between them."""
    uris = device_uris(uri, count)
    if any(u.startswith("local-task") for u in uris):
        set_workers(threads)
    try:
        if len(set(uris)) == len(uris):
            return [rt.get_device(u) for u in uris]
        driver = rt.get_driver(uris[0].split("://")[0])  # one CPU URI, repeated: a new device for each
        return [driver.create_default_device() for _ in uris]
    except Exception as e:  # noqa: BLE001 - the runtime raises bare RuntimeError/ValueError
        raise HarnessError(f"--iree-device {uri!r}: cannot create device: {e}".splitlines()[0]) from e


class CompiledModule:
    def __init__(self, vmfb: Path, irpa: Path, device_uri: str, n_devices: int = 1, threads: int | None = None,
                 source: tuple[Path, list[str]] | None = None):
        """`threads`: CPU workers, by default as many as eager torch uses (`--threads` sets both). `source`:
        the MLIR and iree-compile flags the module was compiled from, for tools that recompile it."""
        self.vmfb, self.irpa, self.device_uri, self.n_devices, self.source = vmfb, irpa, device_uri, n_devices, source
        # A device that cannot be created is bad input (--iree-device), not a failed run: HarnessError.
        self.devices = create_devices(device_uri, n_devices, threads or torch.get_num_threads())
        try:
            instance = rt.VmInstance()
            index = rt.ParameterIndex()
            index.load(str(irpa))
            modules = [
                rt.create_hal_module(instance, devices=self.devices),
                rt.create_io_parameters_module(instance, index.create_provider(scope="model")),
            ]
            self.vm_module = rt.VmModule.mmap(instance, str(vmfb))
            self.context = rt.VmContext(instance, modules=[*modules, self.vm_module])
        except Exception as e:  # noqa: BLE001
            raise StageFailure("run", f"loading the module failed: {e}", self.reproducer("main", [])) from e

    def device_array(self, array: np.ndarray, device: int = 0) -> rt.DeviceArray:
        """`array` on device `device`: an argument that calls update in place, such as the paged cache (one
        shard per device at TP > 1)."""
        return rt.asdevicearray(self.devices[device], array)

    def __call__(self, function: str, *inputs: np.ndarray | rt.DeviceArray) -> list[np.ndarray]:
        try:
            invoker = rt.FunctionInvoker(self.context, self.devices[0], self.vm_module.lookup_function(function))
            out = invoker(*inputs)
        except Exception as e:  # noqa: BLE001
            raise StageFailure("run", f"calling {function} failed: {e}",
                               self.reproducer(function, self._save_inputs(function, inputs))) from e
        outputs = out if isinstance(out, (tuple, list)) else [out]
        return [o.to_host() if hasattr(o, "to_host") else np.asarray(o) for o in outputs]

    def _save_inputs(self, function: str, inputs) -> list[Path]:
        """The failing call's inputs, in a directory of their own: named by the module, its parameters, the
        function and the inputs' bytes, so no other configuration's failure overwrites them."""
        inputs = [a.to_host() if hasattr(a, "to_host") else a for a in inputs]  # device arrays: the cache
        directory = cache_dir("failures") / digest(self.vmfb.name, self.irpa.name, function,
                                                   *(a.tobytes() for a in inputs))
        directory.mkdir(exist_ok=True)
        paths = [directory / f"input{i}.npy" for i in range(len(inputs))]
        for path, array in zip(paths, inputs):
            np.save(path, array)
        return paths

    def reproducer(self, function: str, input_files: list[Path]) -> str:
        devices = [f"--device={u}" for u in device_uris(self.device_uri, self.n_devices)]
        topology = ([f"--task_topology_group_count={_workers}", f"--task_worker_stack_size={WORKER_STACK}"]
                    if _workers else [])
        return shlex.join([
            tool("iree-run-module"), f"--module={self.vmfb}", *topology,
            f"--parameters=model={self.irpa}", *devices, f"--function={function}",
            *[f"--input=@{p}" for p in input_files]])
