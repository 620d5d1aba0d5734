"""One configuration of the matrix: model x dtype x TP x target (and the eager reference's mode), or a user's
sharktank export (`artifact`, a directory) in its dtype on the target."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import torch

from harness.common.dtypes import torch_dtype
from harness.common.errors import HarnessError
from harness.iree.targets import Target
from harness.reference.eager import EAGER_MEMORY
from harness.reference.registry import slug


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: str
    dtype: str
    tp: int = 1
    seq_len: int = 128
    target: Target = Target()
    eager_mode: str = "emulated"
    artifact: str = ""  # a sharktank export's directory; `model` then only lends its tokenizer ("" for none)
    eager_memory: str = "auto"  # reference/eager.py EAGER_MEMORY: how eager holds the model (not its values)

    def __post_init__(self):
        torch_dtype(self.dtype)  # an unknown --dtype is bad input, refused before any work
        if self.eager_memory not in EAGER_MEMORY:
            raise HarnessError(f"--eager-memory {self.eager_memory!r}: choose from {', '.join(EAGER_MEMORY)}")
        if self.seq_len < 1:
            raise HarnessError(f"--seq-len {self.seq_len}: must be a positive number of tokens")

    @property
    def name(self) -> str:
        """The model's name, or the export directory's for an artifact."""
        return slug(Path(self.artifact).resolve().name) if self.artifact else self.model

    @property
    def id(self) -> str:
        return f"{self.name}-{self.dtype}-tp{self.tp}"

    def command(self, subcommand: str = "run") -> str:
        """The command line that reruns this configuration on its own (`python -m harness <subcommand>`)."""
        t = self.target
        return shlex.join(["python", "-m", "harness", subcommand,
                           *(["--artifact", self.artifact] if self.artifact else []),
                           *(["--model", self.model] if self.model else []), "--dtype", self.dtype,
                           "--tp", str(self.tp), "--seq-len", str(self.seq_len),
                           "--iree-hal-target-device", t.hal_target_device, "--iree-device", t.device(self.tp),
                           "--threads", str(torch.get_num_threads()),
                           *(["--attention", t.attention] if t.attention else []),
                           *(["--eager-memory", self.eager_memory] if self.eager_memory != "auto" else []),
                           *(["--iree-compile", t.compiler] if t.compiler else [])])
