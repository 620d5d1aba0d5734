"""Expected failures: one reviewed file (golden/expected_failures.toml) of known breakages, each tied
to an issue, so a nightly gate fails only on what is new.

An entry matches a failing check when its configuration pattern (fnmatch on the configuration id; or a list of
them, any matching),
its target pattern (fnmatch on the target's name, e.g. "local-*" for llvm-cpu; absent: any),
its check (end_to_end, layers, perplexity; absent: any), its stage (export, compile, run, numerics,
perplexity) and its error regex (searched in the one-line message) all match. Entries are strict: a
check that an entry covers and that passes is an error ("unexpected pass"), so fixed entries get
removed instead of hiding the next regression.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from pathlib import Path

from harness.checks import CHECKS
from harness.common.errors import STAGES, HarnessError


@dataclasses.dataclass(frozen=True)
class Expected:
    config: str | tuple[str, ...]
    stage: str
    error: str
    issue: str
    check: str = ""
    target: str = ""

    def covers(self, config_id: str, check: str, target: str) -> bool:
        patterns = (self.config,) if isinstance(self.config, str) else self.config
        return (any(fnmatch.fnmatchcase(config_id, p) for p in patterns) and self.check in ("", check)
                and fnmatch.fnmatchcase(target, self.target or "*"))

    def matches(self, config_id: str, check: str, target: str, stage: str, message: str) -> bool:
        return (self.covers(config_id, check, target) and self.stage == stage
                and re.search(self.error, message) is not None)


def load(path: Path) -> list[Expected]:
    """The entries of `path` (none if it does not exist); HarnessError naming the file and entry if
    one is malformed."""
    if not path.exists():
        return []
    try:
        entries = tomllib.loads(path.read_text()).get("expected", [])
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{path}: not valid TOML: {e}") from None
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: [[expected]] entry {i + 1}"
        if isinstance(entry.get("config"), list):
            entry = {**entry, "config": tuple(entry["config"])}
        try:
            item = Expected(**entry)
        except TypeError as e:
            raise HarnessError(f"{where}: {e} (fields: config, stage, error, issue, check, target)") from None
        if item.stage not in STAGES:
            raise HarnessError(f"{where}: stage {item.stage!r} is not one of {', '.join(STAGES)}")
        if item.check not in ("", *CHECKS):
            raise HarnessError(f"{where}: check {item.check!r} is not one of {', '.join(CHECKS)}")
        if not item.issue:
            raise HarnessError(f"{where}: an expected failure needs an issue link")
        try:
            re.compile(item.error)
        except re.error as e:
            raise HarnessError(f"{where}: error regex {item.error!r}: {e}") from None
        out.append(item)
    return out


def match(entries: list[Expected], config_id: str, check: str, target: str, stage: str,
          message: str) -> Expected | None:
    return next((e for e in entries if e.matches(config_id, check, target, stage, message.splitlines()[0])), None)


def covering(entries: list[Expected], config_id: str, check: str, target: str) -> list[Expected]:
    return [e for e in entries if e.covers(config_id, check, target)]
