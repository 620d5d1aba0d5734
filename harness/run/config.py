"""One configuration of the matrix: model x dtype x TP x target (and the eager reference's mode)."""

from __future__ import annotations

import dataclasses
import shlex

import torch

from harness.common.dtypes import torch_dtype
from harness.common.errors import HarnessError
from harness.iree.targets import Target


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: str
    dtype: str
    tp: int = 1
    seq_len: int = 128
    target: Target = Target()
    eager_mode: str = "emulated"

    def __post_init__(self):
        torch_dtype(self.dtype)  # an unknown --dtype is bad input, refused before any work
        if self.seq_len < 1:
            raise HarnessError(f"--seq-len {self.seq_len}: must be a positive number of tokens")

    @property
    def id(self) -> str:
        return f"{self.model}-{self.dtype}-tp{self.tp}"

    def command(self) -> str:
        """The command line that reruns this configuration on its own."""
        t = self.target
        return shlex.join(["python", "-m", "harness", "run", "--model", self.model, "--dtype", self.dtype,
                           "--tp", str(self.tp), "--seq-len", str(self.seq_len),
                           "--iree-hal-target-device", t.hal_target_device, "--iree-device", t.device(self.tp),
                           "--threads", str(torch.get_num_threads()),
                           *(["--attention", t.attention] if t.attention else []),
                           *(["--iree-compile", t.compiler] if t.compiler else [])])
