"""The stages of a configuration's checks (export, compile, run, numerics, perplexity: errors.STAGES),
each timed and its outcome kept for the record; a failure keeps its message and reproducer."""

from __future__ import annotations

import contextlib
import dataclasses
import time

from harness.common.errors import StageFailure


@dataclasses.dataclass
class StageResult:
    status: str  # passed | failed | skipped
    seconds: float = 0.0
    cached: bool = False
    error: str = ""
    reproducer: str = ""


class Stages(dict[str, StageResult]):
    """Stage results by key: the stage's name for the configuration's own program ("compile"), else
    "<stage>:<label>" ("compile:layers", "run:forward@512[256:]")."""

    @contextlib.contextmanager
    def timed(self, name: str, label: str = ""):
        """Time a stage and record its outcome; a StageFailure is recorded and re-raised."""
        start = time.perf_counter()
        result = self[f"{name}:{label}" if label else name] = StageResult("passed")
        try:
            yield result
        except StageFailure as e:
            result.status, result.error, result.reproducer = "failed", str(e), e.reproducer
            raise
        finally:
            result.seconds = result.seconds or time.perf_counter() - start

    def to_record(self) -> dict:
        return {k: dataclasses.asdict(v) for k, v in self.items()}
