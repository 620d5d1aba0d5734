"""Load a compiled module with its parameter archive on one or more IREE devices and call it."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import iree.runtime as rt

from harness.errors import HarnessError
from harness.iree.compiler import tool
from harness.iree.stages import StageFailure


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


def create_devices(uri: str, count: int) -> list[rt.HalDevice]:
    """`count` devices for `uri` (see `device_uris`)."""
    uris = device_uris(uri, count)
    try:
        if len(set(uris)) == len(uris):
            return [rt.get_device(u) for u in uris]
        driver = rt.get_driver(uris[0].split("://")[0])  # one CPU URI, repeated: a new device for each
        return [driver.create_default_device() for _ in uris]
    except Exception as e:  # noqa: BLE001 - the runtime raises bare RuntimeError/ValueError
        raise HarnessError(f"--iree-device {uri!r}: cannot create device: {e}".splitlines()[0]) from e


class CompiledModule:
    def __init__(self, vmfb: Path, irpa: Path, device_uri: str, n_devices: int = 1):
        self.vmfb, self.irpa, self.device_uri, self.n_devices = vmfb, irpa, device_uri, n_devices
        try:
            self.devices = create_devices(device_uri, n_devices)
        except HarnessError as e:
            raise StageFailure("run", str(e), self.reproducer("forward", [])) from e
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

    def __call__(self, function: str, *inputs: np.ndarray, input_dir: Path | None = None) -> list[np.ndarray]:
        try:
            invoker = rt.FunctionInvoker(self.context, self.devices[0], self.vm_module.lookup_function(function))
            out = invoker(*inputs)
        except Exception as e:  # noqa: BLE001
            raise StageFailure("run", f"calling {function} failed: {e}",
                               self.reproducer(function, self._save_inputs(inputs, input_dir))) from e
        outputs = out if isinstance(out, (tuple, list)) else [out]
        return [o.to_host() if hasattr(o, "to_host") else np.asarray(o) for o in outputs]

    def _save_inputs(self, inputs, input_dir: Path | None) -> list[Path]:
        directory = input_dir or self.vmfb.parent
        paths = [directory / f"input{i}.npy" for i in range(len(inputs))]
        for path, array in zip(paths, inputs):
            np.save(path, array)
        return paths

    def reproducer(self, function: str, input_files: list[Path]) -> str:
        devices = [f"--device={u}" for u in device_uris(self.device_uri, self.n_devices)]
        return shlex.join([
            tool("iree-run-module"), f"--module={self.vmfb}",
            f"--parameters=model={self.irpa}", *devices, f"--function={function}",
            *[f"--input=@{p}" for p in input_files]])
