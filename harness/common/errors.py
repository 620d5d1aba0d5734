"""The harness's exceptions. Their message is a single line that names the file, option or stage and what
is wrong, and it is what users see (never a traceback)."""

from __future__ import annotations

# Where a check of a configuration can fail, in order; golden/expected_failures.toml names these.
STAGES = ("export", "compile", "run", "numerics", "perplexity")


class HarnessError(Exception):
    """Bad input, or a configuration that cannot be run."""


class StageFailure(HarnessError):
    """A failed stage: the stage, a one-line message and a command that reproduces it."""

    def __init__(self, stage: str, message: str, reproducer: str):
        assert stage in STAGES, stage
        first_line = message.strip().splitlines()[0] if message.strip() else "failed"
        super().__init__(f"{stage} failed: {first_line}")
        self.stage, self.detail, self.reproducer = stage, message, reproducer
