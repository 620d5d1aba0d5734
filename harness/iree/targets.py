"""Compile targets: the iree-compile flags for each HAL target device, in one table.

CPU flags were checked on the project machines. GPU flags follow the pinned 3.9 compiler's spelling
(`--iree-hip-target`; 3.13 renamed it `--iree-rocm-target`): the table moves with the compiler pin.
"""

from __future__ import annotations

import dataclasses

from harness.errors import HarnessError

TARGET_FLAGS: dict[str, list[str]] = {
    # Data tiling is a numerics flag on CPU, not just a speed one: without it the 3.9 llvm-cpu backend
    # rounds f16/bf16 matmul accumulators to the storage type at every step (27x / 7x the error of
    # fp32 accumulation on a K=1536 product); with it, results equal fp32-accumulate-then-round.
    "local": ["--iree-hal-local-target-device-backends=llvm-cpu", "--iree-llvmcpu-target-cpu={cpu}",
              "--iree-opt-data-tiling"],
    "hip": ["--iree-hip-target={hip_target}"],
    "cuda": ["--iree-cuda-target={cuda_target}"],
}
# The runtime driver each target device's modules run on (for checking --iree-device against it).
TARGET_DRIVERS = {"local": ("local-task", "local-sync"), "hip": ("hip",), "cuda": ("cuda",)}
# How attention is formulated for each target unless --attention says otherwise: IREE 3.9's fused
# attention op is the fast path on GPUs but ~12x slower than matmul + softmax on CPU at 512 tokens
# (SmolLM2 fp32 prefill: 27 s vs 2.2 s).
DEFAULT_ATTENTION = {"local": "math", "hip": "sdpa", "cuda": "sdpa"}
# How the compiled program turns fp8 codes into fp32 (harness/model/quant.py): llvm-cpu 3.9 cannot lower
# arith.extf from f8 types, so CPU programs look the values up in a table; GPUs convert natively.
FP8_DECODE = {"local": "table", "hip": "native", "cuda": "native"}
# The runtime device (for one device, and for several) unless --iree-device says otherwise. Several
# CPU devices are local-sync: IREE 3.9's runtime segfaults calling the layers program (TP's many
# cross-device transfers) on 8 local-task devices; 2 and 4 work, and are faster (SmolLM2 TP 3 prefill
# of 128 tokens: 0.90 s local-task, 1.36 s local-sync). A GPU driver's URI without an index means
# its devices 0 .. N-1 (runtime.device_uris).
DEFAULT_DEVICE = {"local": ("local-task", "local-sync"), "hip": ("hip", "hip"), "cuda": ("cuda", "cuda")}


@dataclasses.dataclass(frozen=True)
class Target:
    hal_target_device: str = "local"
    cpu: str = "host"
    hip_target: str = "gfx942"
    cuda_target: str = "sm_90"
    device_uri: str = ""  # empty: DEFAULT_DEVICE of the target
    extra_flags: tuple[str, ...] = ()
    attention: str = ""  # "sdpa" or "math"; empty: DEFAULT_ATTENTION of the target

    @property
    def attention_impl(self) -> str:
        return self.attention or DEFAULT_ATTENTION[self.hal_target_device]

    def device(self, n_devices: int = 1) -> str:
        """The --iree-device URI(s) to run on `n_devices` devices."""
        return self.device_uri or DEFAULT_DEVICE[self.hal_target_device][n_devices > 1]

    def __post_init__(self):
        if self.hal_target_device not in TARGET_FLAGS:
            raise HarnessError(f"--iree-hal-target-device: unknown target {self.hal_target_device!r}; "
                               f"known: {', '.join(TARGET_FLAGS)}")
        if self.attention not in ("", "sdpa", "math"):
            raise HarnessError(f"--attention: unknown formulation {self.attention!r}; known: sdpa, math")
        drivers = {u.split("://")[0] for u in self.device().split(",") if u}
        if not drivers or not drivers <= set(TARGET_DRIVERS[self.hal_target_device]):
            raise HarnessError(
                f"--iree-device {self.device_uri!r} cannot run modules compiled for "
                f"--iree-hal-target-device={self.hal_target_device} (expected a "
                f"{' or '.join(TARGET_DRIVERS[self.hal_target_device])} device)")

    def compile_flags(self, n_devices: int = 1) -> list[str]:
        if n_devices == 1:
            devices = [f"--iree-hal-target-device={self.hal_target_device}"]
        else:
            devices = [f"--iree-hal-target-device={self.hal_target_device}[{i}]" for i in range(n_devices)]
        fields = dataclasses.asdict(self)
        return devices + [f.format(**fields) for f in TARGET_FLAGS[self.hal_target_device]] + list(self.extra_flags)

    @property
    def name(self) -> str:
        arch = {"local": self.cpu, "hip": self.hip_target, "cuda": self.cuda_target}[self.hal_target_device]
        return f"{self.hal_target_device}-{arch}"
