"""Views of a run's records: `summary.md`, one row per configuration, in the columns users know from
model-support tracking pages."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from harness import records

MARK = {"passed": "✅", "failed": "❌", "skipped": "➖"}


def _stage_cell(stage: dict | None) -> str:
    if stage is None:
        return MARK["skipped"]
    cell = MARK.get(stage["status"], stage["status"])
    if stage["status"] == "failed":
        return f"{cell} {stage['error']}"
    return f"{cell} {stage['seconds']:.1f}s" + (" (cached)" if stage.get("cached") else "")


def _numerics_cell(rec: dict) -> str:
    verdict, m = rec.get("verdict"), rec.get("metrics", {}).get("compiled_vs_eager")
    if not verdict or not m:
        return MARK["skipped"]
    mark = MARK["passed"] if verdict["passed"] else MARK["failed"]
    return (f"{mark} max abs {m['max_abs']:.2g}, top-1 {m['top1']:.1%}, KLD {m['kld_mean']:.2g}, "
            f"{verdict['ratio']:.2f} of budget")


def _tp1_cell(rec: dict) -> str:
    verdict, m = rec.get("verdict_vs_tp1"), rec.get("metrics", {}).get("compiled_vs_tp1")
    if not verdict or not m:
        return ""
    mark = MARK["passed"] if verdict["passed"] else MARK["failed"]
    return f"{mark} max abs {m['max_abs']:.2g}, top-1 {m['top1']:.1%}, {verdict['ratio']:.2f} of budget"


def end_to_end_table(recs: list[dict]) -> str:
    rows = []
    for rec in recs:
        if rec["kind"] != "end_to_end":
            continue
        stages = rec["stages"]
        total = sum(s["seconds"] for s in stages.values())
        rows.append([rec["config"], rec["tp"], _stage_cell(stages.get("export")),
                     _stage_cell(stages.get("compile")), _stage_cell(stages.get("run")), _numerics_cell(rec),
                     _tp1_cell(rec), f"{total:.1f}s"])
    rows.sort(key=lambda r: r[0])
    return tabulate(rows, headers=["Configuration", "TP", "Export", "Compile", "Run", "Numerics vs eager",
                                   "Compiled TP N vs compiled TP 1", "Time"], tablefmt="github")


def _worst(parts: list[dict], mode: str) -> str:
    rows = [r for r in parts if r["mode"] == mode]
    worst = max(rows, key=lambda r: r["ratio"])
    return f"{MARK['passed' if worst['passed'] else 'failed']} {worst['part']} {worst['ratio']:.2f}"


def layers_table(recs: list[dict]) -> str:
    rows = [[rec["config"], _worst(rec["parts"], "isolated"), _worst(rec["parts"], "propagated"),
             ", ".join(f"{m}: {p}" for m, p in rec["first_failure"].items() if p) or "none",
             f"![plot]({rec['plot']})" if rec.get("plot") else ""]
            for rec in recs if rec["kind"] == "layers" and "parts" in rec]
    return tabulate(sorted(rows), tablefmt="github", headers=[
        "Configuration", "Isolated: worst part, error/budget", "Propagated: worst part, error/budget",
        "First over budget", "Plot"])


def layer_details(recs: list[dict]) -> list[str]:
    out = []
    for rec in sorted((r for r in recs if r["kind"] == "layers" and "parts" in r), key=lambda r: r["config"]):
        by_part: dict[str, dict] = {}
        for row in rec["parts"]:
            by_part.setdefault(row["part"], {})[row["mode"]] = row
        rows = [[part, *(f"{MARK['passed' if m[k]['passed'] else 'failed']} {m[k]['ratio']:.3f} "
                         f"(rmse {m[k]['rmse']:.2g})" for k in ("isolated", "propagated"))]
                for part, m in by_part.items()]
        out += [f"<details><summary>{rec['config']}: every part</summary>", "",
                tabulate(rows, headers=["Part", "Isolated error/budget", "Propagated error/budget"],
                         tablefmt="github"), "", "</details>", ""]
    return out


def bisect_table(recs: list[dict]) -> str:
    rows = [[rec["config"], rec.get("fault") or "", rec["layer"] or "none", rec["sub_block"] or "",
             rec["compiles"], rec["invocations"], f"{rec['timings']['wall_s']:.1f}s"]
            for rec in recs if rec["kind"] == "bisect" and "compiles" in rec]
    return tabulate(rows, headers=["Configuration", "Planted fault", "First diverging part", "Sub-block",
                                   "Compiles", "Invocations", "Wall"], tablefmt="github")


def reproducers(recs: list[dict]) -> list[str]:
    lines = []
    for rec in recs:
        for name, stage in rec.get("stages", {}).items():
            if stage["status"] == "failed":
                lines.append(f"- `{rec['config']}` {name}: {stage['error']}\n\n  ```\n  "
                             f"{stage['reproducer'] or rec['command']}\n  ```")
    return lines


def write_summary(run_dir: Path) -> Path:
    recs = records.read(run_dir / "records.jsonl")
    versions = next((r["versions"] for r in recs if "versions" in r), {})
    parts = [f"# Harness run `{run_dir.name}`", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), "",
             "## End to end: IREE-compiled vs eager PyTorch (same dtype), judged against an fp64 oracle", "",
             end_to_end_table(recs), ""]
    if any(r["kind"] == "layers" for r in recs):
        parts += ["## Layer by layer (error / budget; isolated: eager inputs, propagated: compiled chain)", "",
                  layers_table(recs), "", *layer_details(recs)]
    if any(r["kind"] == "bisect" for r in recs):
        parts += ["## Bisection", "", bisect_table(recs), ""]
    skipped = sorted({f"- `{r['config']}`: {r['reason']}" for r in recs if r["kind"] == "skipped"})
    if skipped:
        parts += ["## Skipped configurations", "", *skipped, ""]
    failures = reproducers(recs)
    if failures:
        parts += ["## Failures and reproducers", "", *failures, ""]
    path = run_dir / "summary.md"
    path.write_text("\n".join(parts))
    return path
