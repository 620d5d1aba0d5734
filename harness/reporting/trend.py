"""`report diff`: what changed between two runs, as markdown for a CI step summary, and a gate.

Each check of a configuration (end_to_end, layers, perplexity) is compared by status and metric:
- New failures (passed or absent -> failed) and regressions beyond noise fail the gate; fixes, known
  failures (golden/expected_failures.toml) and changes within noise do not.
- A check with no record fails it too: one the new run planned (its "plan" record) and never recorded
  crashed or was killed; one the old run had and the new run neither planned nor skipped went missing.
  Records that cannot be read fail it (records.read names the line).
- End to end and layer by layer: the error / budget ratio (harness/numerics/tolerance.py). Compiled
  numerics are deterministic on one machine (reruns give the same ratio to the last digit), so the noise
  is what another machine of the same kind or an unrelated dependency bump moves; a change counts when
  the ratio grows by more than RATIO_STEP of the budget and by more than RATIO_FACTOR.
- Perplexity: each engine's ln PPL, on the same protocol. The runs score prefixes of one window sequence,
  so sampling noise cancels on the windows both scored (gate.py's golden gate reasons the same way): the
  SE of the difference is se_small * sqrt(1 - n_small / n_large), from the records' window-clustered SEs.
  A change counts when it exceeds NOISE_Z such SEs and the dtype's paired budget
  (numerics/tolerance.py's PERPLEXITY_BUDGETS).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from harness.checks import CHECKS
from harness.common.errors import HarnessError
from harness.numerics.tolerance import perplexity_budget as ppl_budget
from harness.perplexity.protocol import Protocol
from harness.reporting import records

RATIO_STEP, RATIO_FACTOR = 0.25, 1.5
NOISE_Z = 3.0


def status(rec: dict) -> str:
    if "failure" in rec:
        return "failed"
    if rec["kind"] == "end_to_end":
        verdicts = [rec["verdict"], rec.get("verdict_vs_tp1")]
        return "passed" if all(v is None or v["passed"] for v in verdicts) else "failed"
    return "passed" if rec.get("passed") else "failed"


def _ratio(rec: dict) -> float | None:
    if rec["kind"] == "end_to_end" and rec.get("verdict"):
        return rec["verdict"]["ratio"]
    if rec["kind"] == "layers" and rec.get("parts"):
        return max(p["ratio"] for p in rec["parts"])
    return None


@dataclasses.dataclass
class Change:
    key: str  # "<check> <config>"
    what: str
    regression: bool


def _latest(recs: list[dict]) -> dict[str, dict]:
    """The last record of each check of each configuration, with known failures marked."""
    known = {(r["check"], r["config"]) for r in recs if r["kind"] == "expected_failure"}
    out = {}
    for rec in recs:
        if rec["kind"] in CHECKS:
            out[f"{rec['kind']} {rec['config']}"] = {**rec, "_status": "known failure" if (
                rec["kind"], rec["config"]) in known else status(rec)}
    return out


def _ppl_changes(key: str, old: dict, new: dict) -> list[Change]:
    if "stats" not in old or "stats" not in new:
        return []
    if any(old["protocol"].get(f) != new["protocol"].get(f) for f in Protocol.STREAM_FIELDS):
        return [Change(key, "perplexity protocol changed: not comparable", False)]
    limit = ppl_budget(new["dtype"]).paired
    old_engines = {e["name"]: e for e in old["stats"]["engines"]}
    changes = []
    for e in new["stats"]["engines"]:
        o = old_engines.get(e["name"])
        if o is None:
            continue
        (small, n_small), (_, n_large) = sorted([(o, old["stats"]["n_tokens"]), (e, new["stats"]["n_tokens"])],
                                               key=lambda x: x[1])
        se = small["nll_window_se"] * math.sqrt(max(0.0, 1 - n_small / n_large))
        delta = math.log(e["ppl"]["value"] / o["ppl"]["value"])
        if abs(delta) > max(NOISE_Z * se, limit):
            changes.append(Change(key, f"{e['name']} PPL {o['ppl']['value']:.4f} -> {e['ppl']['value']:.4f} "
                                  f"(ln ratio {delta:+.2e}; noise {NOISE_Z:g} x SE {se:.1e}, budget {limit:.0e})",
                                  regression=delta > 0))
    return changes


def _absent(key: str, o: dict | None, new_recs: list[dict], missing: set[str]) -> Change:
    """What it means that check `key` has no record in the new run: a planned check with none crashed (or
    was killed), and so did one the old run had unless the new run says why (a skip, another matrix)."""
    was = f", was {o['_status']}" if o else ""
    if key in missing:
        return Change(key, f"missing: planned, no record (crashed or killed?){was}", True)
    check, config = key.split(" ")
    skip = next((r for r in new_recs if r["kind"] == "skipped" and r["config"] == config
                 and r.get("check") in (None, check)), None)
    if skip:
        return Change(key, f"skipped: {skip['reason']}{was}", False)
    if any(r["kind"] == "plan" for r in new_recs):
        return Change(key, f"not in this run's matrix{was}", False)
    return Change(key, f"missing: no record{was}", True)


def compare(old_recs: list[dict], new_recs: list[dict]) -> list[Change]:
    old, new = _latest(old_recs), _latest(new_recs)
    missing = {f"{check} {config}" for check, config in records.missing(new_recs)}
    changes = []
    for key in sorted(new.keys() | old.keys() | missing):
        o, n = old.get(key), new.get(key)
        if n is None:
            changes.append(_absent(key, o, new_recs, missing))
            continue
        before = o["_status"] if o else "absent"
        if n["_status"] != before:
            changes.append(Change(key, f"{before} -> {n['_status']}", n["_status"] == "failed"))
        if o is None or n["_status"] == "known failure":  # its issue tracks it
            continue
        r_old, r_new = _ratio(o), _ratio(n)
        if r_old is not None and r_new is not None:
            if r_new > r_old + RATIO_STEP and r_new > RATIO_FACTOR * r_old:
                changes.append(Change(key, f"error/budget {r_old:.3f} -> {r_new:.3f}", True))
            elif r_old > r_new + RATIO_STEP and r_old > RATIO_FACTOR * r_new:
                changes.append(Change(key, f"error/budget {r_old:.3f} -> {r_new:.3f} (better)", False))
        if key.startswith("perplexity"):
            changes += _ppl_changes(key, o, n)
    return changes


def markdown(old_name: str, new_name: str, changes: list[Change], n_checks: int) -> str:
    bad = [c for c in changes if c.regression]
    other = [c for c in changes if not c.regression]
    lines = [f"## Harness: `{new_name}` vs `{old_name}`", "",
             f"{'❌ ' + str(len(bad)) + ' regression(s)' if bad else '✅ no regression'} in {n_checks} checks; "
             f"{len(other)} other change(s).", ""]
    for title, group in (("Regressions", bad), ("Other changes", other)):
        if group:
            lines += [f"### {title}", "", "| Check | Configuration | Change |", "| --- | --- | --- |",
                      *(f"| {c.key.split(' ')[0]} | {c.key.split(' ')[1]} | {c.what} |" for c in group), ""]
    return "\n".join(lines)


def previous_run(run_dir: Path) -> Path:
    """The newest run beside `run_dir` (by name: timestamps sort) with records, older than it."""
    older = sorted(d for d in run_dir.parent.iterdir()
                   if d.name < run_dir.name and (d / "records.jsonl").exists())
    if not older:
        raise HarnessError(f"{run_dir}: no earlier run with records in {run_dir.parent} to diff against")
    return older[-1]


def diff(old_dir: Path, new_dir: Path) -> tuple[str, bool]:
    """(markdown, gate passed) for the runs in two report directories."""
    for d in (old_dir, new_dir):
        if not (d / "records.jsonl").exists():
            raise HarnessError(f"{d}: no records.jsonl (not a harness run directory)")
    new_recs = records.read(new_dir / "records.jsonl")
    changes = compare(records.read(old_dir / "records.jsonl"), new_recs)
    text = markdown(old_dir.name, new_dir.name, changes, len(_latest(new_recs)))
    torn = [t for d in (old_dir, new_dir) if (t := records.torn_line(d / "records.jsonl"))]
    return "\n".join([text, *(f"⚠️ {t}" for t in torn)]), not any(c.regression for c in changes)
