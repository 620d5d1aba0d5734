"""Compile targets: the iree-compile flags for each HAL target device, in one table.

CPU flags were checked on the project machines. GPU flags follow the pinned 3.9 compiler's spelling
(`--iree-hip-target`; 3.13 renamed it `--iree-rocm-target`): the table moves with the compiler pin.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess

from harness.common.errors import HarnessError
from harness.iree.compiler import compiler_identity, compiler_path
from harness.reference.llama.attention import IMPLS

TARGET_FLAGS: dict[str, list[str]] = {
    # Data tiling is a numerics flag on CPU, not just a speed one: without it the 3.9 llvm-cpu backend
    # rounds f16/bf16 matmul accumulators to the storage type at every step (27x / 7x the error of
    # fp32 accumulation on a K=1536 product); with it, results equal fp32-accumulate-then-round.
    "local": ["--iree-hal-local-target-device-backends=llvm-cpu", "--iree-llvmcpu-target-cpu={cpu_name}",
              "--iree-llvmcpu-target-cpu-features={cpu_features}", "--iree-opt-data-tiling"],
    "hip": ["--iree-hip-target={hip_target}"],
    "cuda": ["--iree-cuda-target={cuda_target}"],
}
# llvm-cpu speed flags by CPU family (`cpu_family`), the fastest set that passes every numerics check in
# bench/cpu_flags.py's sweep on a machine of the family (SmolLM2-135M, 512-token prefill; the README has the
# tables). AVX-512 (Xeon with AVX512-FP16/BF16 and AMX, 2026-12-05): 1 MiB matmul tiles 1.15x fp32, 1.03x
# fp16 and bf16; ukernels "all", O2, O3 and a distribution size of 32 were no faster; ukernels "none" was
# 2.5x faster in fp16 and failed it (2.0 of the budget), as did data tiling off (2.0). AVX2 (AMD znver3):
# data tiling only, which the flags above already have; nothing else was swept there.
CPU_SPEED_FLAGS = {
    "avx512": ["--iree-llvmcpu-general-matmul-tile-bytes=1048576"],
    "other": [],
}
# Added for the serving program (prefill / decode over the paged cache): llvm-cpu rejects the decode
# gather's stack allocation under its default 32 KiB limit.
SERVING_FLAGS = {"local": ["--iree-llvmcpu-stack-allocation-limit=262144"], "hip": [], "cuda": []}
# Added for a serving program on several devices: iree-compile 3.9's const-eval JIT segfaults (in
# HAL::DeviceAnalysis::gatherDeviceTargets) on the paged cache's index constants transferred to each device, and
# without the transfers compiling fails ("'stream.tensor.sizeof' op illegal for this phase of lowering").
# Const-eval only moves constant expressions from compile time to load time.
SHARDED_SERVING_FLAGS = ["--iree-opt-const-eval=false"]
# Added for the one-layer decode program that bisection runs (decode_layer_<i>): IREE 3.9's llvm-cpu data
# tiling drops that program's attention mask (a clean layer attends to every slot of its pages; the same layer
# inside decode_bs1 is right; tests/test_bisect_decode.py keeps it as an expected failure), which would pin
# every decode failure on layer 0. The programs under test keep the target's flags.
BISECT_DECODE_FLAGS = {"local": ["--iree-opt-data-tiling=false"], "hip": [], "cuda": []}
# The runtime driver each target device's modules run on (for checking --iree-device against it).
TARGET_DRIVERS = {"local": ("local-task", "local-sync"), "hip": ("hip",), "cuda": ("cuda",)}
# How attention is formulated for each target unless --attention says otherwise: IREE 3.9's fused
# attention op is the fast path on GPUs but ~12x slower than matmul + softmax on CPU at 512 tokens
# (SmolLM2 fp32 prefill: 27 s vs 2.2 s).
DEFAULT_ATTENTION = {"local": "math", "hip": "sdpa", "cuda": "sdpa"}
# How the compiled program turns fp8 codes into fp32 (harness/transforms/quantize.py): llvm-cpu 3.9 cannot lower
# arith.extf from f8 types, so CPU programs look the values up in a table; GPUs convert natively.
FP8_DECODE = {"local": "table", "hip": "native", "cuda": "native"}
# CPU devices are local-task (one executor's workers shared by all of them, runtime.set_workers) up to
# this many; beyond, local-sync (no workers: the calling thread runs each device in turn). IREE 3.9's
# runtime segfaults in its "iree-poller" thread calling the sharded layers program on 8 local-task
# devices, whatever the worker count or stack size; 2, 3 and 4 work and are faster (SmolLM2 TP 3 prefill
# of 128 tokens: 0.90 s local-task, 1.36 s local-sync).
LOCAL_TASK_MAX_DEVICES = 4


@functools.cache
def host_cpu(compiler: str = "") -> tuple[str, str]:
    """The CPU name and feature string that iree-compile (`compiler`, default the pip one) resolves `host` to
    (LLVM's: e.g. "znver3"; a VM may report an older model than its features, as this project's Xeons with
    AMX report "rocketlake", so the features, not the name, say what code runs)."""
    probe = "func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> {\n  return %a : tensor<4xf32>\n}\n"
    proc = subprocess.run([compiler_path(compiler), "-", "--compile-to=executable-targets",
                           "--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
                           "--iree-llvmcpu-target-cpu=host"], input=probe, capture_output=True, text=True)
    name, features = (re.search(rf'\b{key} = "([^"]*)"', proc.stdout) for key in ("cpu", "cpu_features"))
    if proc.returncode or not name or not features:
        raise HarnessError(f"iree-compile could not resolve --iree-cpu host: {(proc.stderr or '?').splitlines()[0]}")
    return name.group(1), features.group(1)


@dataclasses.dataclass(frozen=True)
class Target:
    hal_target_device: str = "local"
    cpu: str = "host"
    hip_target: str = "gfx942"
    # iree-compile 3.9.0's CUDA backend knows architectures up to sm_86: sm_89 and sm_90 fail ("missing GPU target
    # in #hal.executable.target"). It emits PTX, which the driver JIT-compiles for newer GPUs: sm_80 runs on H100.
    cuda_target: str = "sm_80"
    device_uri: str = ""  # empty: the target's default (`device`)
    extra_flags: tuple[str, ...] = ()
    attention: str = ""  # one of attention.IMPLS; empty: DEFAULT_ATTENTION of the target
    compiler: str = ""  # the iree-compile executable (a user's build, --iree-compile); empty: the pip one

    @property
    def cpu_name(self) -> str:
        return host_cpu(self.compiler)[0] if self.cpu == "host" else self.cpu

    @property
    def cpu_family(self) -> str:
        """The CPU_SPEED_FLAGS row: "avx512" where the target has AVX-512, else "other"."""
        return "avx512" if "+avx512f" in self.cpu_features.split(",") else "other"

    @property
    def cpu_features(self) -> str:
        """`host`'s features when compiling for this machine; else those the CPU name implies."""
        return host_cpu(self.compiler)[1] if self.cpu == "host" else ""

    @property
    def attention_impl(self) -> str:
        return self.attention or DEFAULT_ATTENTION[self.hal_target_device]

    def device(self, n_devices: int = 1) -> str:
        """The --iree-device URI(s) to run on `n_devices` devices. A GPU driver's URI without an index
        means its devices 0 .. N-1 (runtime.device_uris)."""
        if self.device_uri:
            return self.device_uri
        if self.hal_target_device == "local":
            return "local-task" if n_devices <= LOCAL_TASK_MAX_DEVICES else "local-sync"
        return self.hal_target_device

    def __post_init__(self):
        if self.hal_target_device not in TARGET_FLAGS:
            raise HarnessError(f"--iree-hal-target-device: unknown target {self.hal_target_device!r}; "
                               f"known: {', '.join(TARGET_FLAGS)}")
        compiler_path(self.compiler)  # a --iree-compile that cannot run is bad input, refused up front
        if self.attention not in ("", *IMPLS):
            raise HarnessError(f"--attention: unknown formulation {self.attention!r}; known: {', '.join(IMPLS)}")
        drivers = {u.split("://")[0] for u in self.device().split(",") if u}
        if not drivers or not drivers <= set(TARGET_DRIVERS[self.hal_target_device]):
            raise HarnessError(
                f"--iree-device {self.device_uri!r} cannot run modules compiled for "
                f"--iree-hal-target-device={self.hal_target_device} (expected a "
                f"{' or '.join(TARGET_DRIVERS[self.hal_target_device])} device)")

    def compile_flags(self, n_devices: int = 1, program: str = "forward", family: dict | None = None) -> list[str]:
        """`family`: flags a model family adds for each target device (its model class's COMPILE_FLAGS)."""
        if n_devices == 1:
            devices = [f"--iree-hal-target-device={self.hal_target_device}"]
        else:
            devices = [f"--iree-hal-target-device={self.hal_target_device}[{i}]" for i in range(n_devices)]
        fields = {**dataclasses.asdict(self), "cpu_name": self.cpu_name, "cpu_features": self.cpu_features}
        flags = [f.format(**fields) for f in TARGET_FLAGS[self.hal_target_device]]
        if self.hal_target_device == "local":
            flags += CPU_SPEED_FLAGS[self.cpu_family]
        if program.startswith("serving"):
            flags += SERVING_FLAGS[self.hal_target_device] + (SHARDED_SERVING_FLAGS if n_devices > 1 else [])
        if program == "serving_layers":
            flags += BISECT_DECODE_FLAGS[self.hal_target_device]
        flags += (family or {}).get(self.hal_target_device, [])
        return devices + [f for f in flags if not f.endswith("=")] + list(self.extra_flags)

    def compiler_key(self) -> dict:
        """The compiler's content hash and the extra flags: what, besides the program, decides a module."""
        return {"compiler_sha256": compiler_identity(self.compiler), "extra_flags": list(self.extra_flags)}

    @property
    def name(self) -> str:
        arch = {"local": self.cpu_name, "hip": self.hip_target, "cuda": self.cuda_target}[self.hal_target_device]
        return f"{self.hal_target_device}-{arch}"
