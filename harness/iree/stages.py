"""A failed export, compile or run: the stage, a one-line message and a command that reproduces it."""

from __future__ import annotations

from harness.errors import HarnessError

STAGES = ("export", "compile", "run", "numerics")


class StageFailure(HarnessError):
    def __init__(self, stage: str, message: str, reproducer: str):
        assert stage in STAGES, stage
        first_line = message.strip().splitlines()[0] if message.strip() else "failed"
        super().__init__(f"{stage} failed: {first_line}")
        self.stage, self.detail, self.reproducer = stage, message, reproducer
