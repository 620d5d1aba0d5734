"""Views of a run's records: `summary.md` (for CI step summaries and reviews) and `summary.html` (one
self-contained page, plots embedded), built from the same tables: one row per configuration, in the
columns users know from model-support tracking pages."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tabulate import tabulate

from harness.checks import SERVING_CHECKS
from harness.perplexity.stats import KLD_FULL
from harness.reporting import records

MARK = {"passed": "✅", "failed": "❌", "skipped": "➖", "expected": "⚠️"}


def _stage_cell(stage: dict | None) -> str:
    if stage is None:
        return MARK["skipped"]
    cell = MARK.get(stage["status"], stage["status"])
    if stage["status"] == "failed":
        return f"{cell} {stage['error']}"
    return f"{cell} {stage['seconds']:.1f}s" + (" (cached)" if stage.get("cached") else "")


def _verdict_cell(verdict: dict | None, m: dict | None, kld: bool = True) -> str:
    if not verdict or not m:
        return ""
    mark = MARK["passed"] if verdict["passed"] else MARK["failed"]
    distribution = "top1" in m  # logits (an encoder's hidden states have no next-token distribution)
    return (f"{mark} max abs {m['max_abs']:.2g}, " + (f"top-1 {m['top1']:.1%}, " if distribution else "")
            + (f"KLD {m['kld_mean']:.2g}, " if kld and distribution else "") + f"{verdict['ratio']:.2f} of budget")


def _fixed_cell(fixed: dict | None) -> str:
    """A fixed tolerance's verdicts (end_to_end.FIXED_ATOL / FIXED_RTOL) against eager and eager fp32."""
    if not fixed:
        return ""

    def one(v: dict | None) -> str:
        if v is None:
            return "not run"
        return MARK["passed"] if v["passed"] else f"{MARK['failed']} {v['worst']:.3g}x, {100 * v['over']:.3g}% over"
    return f"{one(fixed['vs_eager'])} · {one(fixed['vs_eager_fp32'])}"


def end_to_end_table(recs: list[dict]) -> tuple[list[str], list[list]]:
    rows = []
    for rec in recs:
        if rec["kind"] != "end_to_end":
            continue
        stages, m = rec["stages"], rec.get("metrics", {})
        rows.append([rec["config"], rec["tp"], _stage_cell(stages.get("export")), _stage_cell(stages.get("compile")),
                     _stage_cell(stages.get("run")),
                     _verdict_cell(rec.get("verdict"), m.get("compiled_vs_eager")) or MARK["skipped"],
                     _verdict_cell(rec.get("verdict_vs_tp1"), m.get("compiled_vs_tp1"), kld=False),
                     _fixed_cell(rec.get("fixed_tolerance")),
                     f"{sum(s['seconds'] for s in stages.values()):.1f}s"])
    return (["Configuration", "TP", "Export", "Compile", "Run", "Numerics vs eager", "Compiled TP N vs compiled TP 1",
             "Fixed atol 1e-4, rtol 1.5e-3 (not gating): vs eager · vs eager fp32", "Time"], sorted(rows))


def _engine(stats: dict, name: str) -> dict:
    return next(e for e in stats["engines"] if e["name"] == name)


def _serving_cell(rec: dict | None) -> str:
    if rec is None:
        return MARK["skipped"]
    if "failure" in rec:
        return f"{MARK['failed']} {rec['failure']['message'].splitlines()[0]}"
    mark = MARK["passed" if rec["passed"] else "failed"]
    kind = rec["kind"]
    if kind == "decode":
        return f"{mark} {len(rec['steps'])} steps, worst {max(r['ratio'] for r in rec['steps']):.2f} of budget"
    if kind == "cache_state":
        worst = max(r["ratio"] for p in rec["phases"] for r in p["layers"])
        touched = sum(len(p["touched_pages"]) for p in rec["phases"])
        return f"{mark} K/V worst {worst:.2f}, {touched} unowned pages written"
    if kind == "batching":
        seqs = rec["sequences"]
        exact = "bitwise" if all(r["bitwise_equal_batch1"] for r in seqs) else \
            f"max abs {max(r['max_abs_vs_batch1'] for r in seqs):.2g}"
        return f"{mark} vs batch 1: {exact}, worst {max(r['ratio_vs_batch1'] for r in seqs):.2f} of budget"
    if kind == "chunked_prefill":
        return f"{mark} {rec['chunks']}: {rec['verdict']['ratio']:.2f} of budget"
    if kind == "decode_perplexity":
        gates = {name: g["details"] for name, g in rec["gates"].items()}
        return (f"{mark} dNLL / KLD vs own prefill {gates['decode_vs_prefill.paired']['mean']:+.1e} / "
                f"{gates['decode_vs_prefill.kld']['mean']:.1e}, vs eager {gates['decode_vs_eager.paired']['mean']:+.1e}"
                f" / {gates['decode_vs_eager.kld']['mean']:.1e} (budget {gates['decode_vs_eager.kld']['budget']:.0e});"
                f" PPL {rec['per_prompt_ppl']['iree decode mode']:.4g} (mean of per-prompt PPLs, sharktank's; "
                f"{_engine(rec['stats']['decode_vs_eager'], 'iree decode mode')['ppl']['value']:.4g} over all tokens)")
    split = rec["split"]
    return (f"{mark} {len(rec['generated'])} tokens agree" if split is None else
            f"{mark} split at step {split['step']} (eager margin {split['eager_margin']:.2g}"
            f"{', near-tie' if split['near_tie'] else ''})")


def serving_table(recs: list[dict]) -> tuple[list[str], list[list]]:
    by_config: dict[str, dict] = {}
    for rec in recs:
        if rec["kind"] in SERVING_CHECKS:
            by_config.setdefault(rec["config"], {})[rec["kind"]] = rec
    rows = [[config, *(_serving_cell(checks.get(c)) for c in SERVING_CHECKS)] for config, checks in by_config.items()]
    return ["Configuration", *SERVING_CHECKS], sorted(rows)


def _worst(parts: list[dict], mode: str) -> str:
    worst = max((r for r in parts if r["mode"] == mode), key=lambda r: r["ratio"])
    return f"{MARK['passed' if worst['passed'] else 'failed']} {worst['part']} {worst['ratio']:.2f}"


def layers_table(recs: list[dict]) -> tuple[list[str], list[list]]:
    rows = [[rec["config"], _worst(rec["parts"], "isolated"), _worst(rec["parts"], "propagated"),
             ", ".join(f"{m}: {p}" for m, p in rec["first_failure"].items() if p) or "none", rec.get("plot", "")]
            for rec in recs if rec["kind"] == "layers" and "parts" in rec]
    return (["Configuration", "Isolated: worst part, error/budget", "Propagated: worst part, error/budget",
             "First over budget", "Plot"], sorted(rows))


def layer_details(rec: dict) -> tuple[list[str], list[list]]:
    by_part: dict[str, dict] = {}
    for row in rec["parts"]:
        by_part.setdefault(row["part"], {})[row["mode"]] = row
    rows = [[part, *(f"{MARK['passed' if m[k]['passed'] else 'failed']} {m[k]['ratio']:.3f} (rmse {m[k]['rmse']:.2g})"
                     for k in ("isolated", "propagated"))] for part, m in by_part.items()]
    return ["Part", "Isolated error/budget", "Propagated error/budget"], rows


def _pm(stat: dict, fmt: str = ".4f") -> str:
    return f"{stat['value']:{fmt}} ± {stat['se']:{fmt}}"


def perplexity_table(recs: list[dict]) -> tuple[list[str], list[list]]:
    rows = []
    for rec in recs:
        if rec["kind"] != "perplexity" or "stats" not in rec:
            continue
        stats, pair = rec["stats"], rec["stats"].get("pair")
        ppl = {e["name"]: _pm(e["ppl"]) for e in stats["engines"]}
        gates = " ".join(f"{MARK['passed' if g['verdict'] == 'pass' else 'failed']} {g['gate']}" for g in rec["gates"])
        rows.append([rec["config"], stats["n_windows"], stats["n_tokens"], ppl.get("eager", ""), ppl.get("iree", ""),
                     _pm(pair["ln_ratio"], ".2e") if pair else "", _kld_cell(stats) if pair else "",
                     f"{pair['same_top']['value']:.2%}" if pair else "", gates or "none"])
    return (["Configuration", "Windows", "Tokens", "PPL eager", "PPL IREE", "ln(PPL IREE / PPL eager)", "KLD",
             "Same top-1", "Gates"], sorted(rows))


def _kld_cell(stats: dict) -> str:
    """The mean KLD; "≥" where it is over eager's top tokens only (--eager-cache: a lower bound)."""
    bound = "≥ " if stats.get("kld_over", KLD_FULL) != KLD_FULL else ""
    return f"{bound}{stats['pair']['kld']['value']:.2g}"


def _vs_fp32_cells(vs: dict | None) -> list[str]:
    """dPPL, KLD and top-1 of a dtype's or quantization's eager reference against eager fp32, with the
    green / yellow marker of model-support tables: dPPL under / over 1 %."""
    if not vs:
        return ["", "", ""]
    reference, candidate = (e["ppl"]["value"] for e in vs["engines"])  # eager fp32 first
    dppl = candidate / reference - 1
    return [f"{'🟢' if abs(dppl) < 0.01 else '🟡'} {dppl:+.2%}", f"{vs['pair']['kld']['value']:.2g}",
            f"{vs['pair']['same_top']['value']:.1%}"]


def model_matrix(recs: list[dict]) -> tuple[list[str], list[list]]:
    """One row per configuration across the checks: the stages, numerics, perplexity and the cost of the
    dtype / quantization itself against fp32."""
    by_config: dict[str, dict[str, dict]] = {}
    for rec in recs:
        if rec["kind"] in ("end_to_end", "perplexity"):
            by_config.setdefault(rec["config"], {})[rec["kind"]] = rec
    rows = []
    for config, kinds in by_config.items():
        e2e, ppl = kinds.get("end_to_end", {}), kinds.get("perplexity", {})
        stages, engines = e2e.get("stages", {}), {e["name"]: e for e in ppl.get("stats", {}).get("engines", [])}
        iree = engines.get("iree", {}).get("ppl")
        rows.append([config, *(_stage_cell(stages.get(s)).split(" ")[0] for s in ("export", "compile", "run")),
                     _verdict_cell(e2e.get("verdict"), e2e.get("metrics", {}).get("compiled_vs_eager"), kld=False),
                     _pm(iree) if iree else "", *_vs_fp32_cells(ppl.get("vs_fp32"))])
    return (["Configuration", "Export", "Compile", "Run", "Numerics vs eager", "PPL (IREE)", "dPPL vs fp32",
             "KLD vs fp32", "Top-1 vs fp32"], sorted(rows))


def _check_cell(rec: dict | None, expected: set) -> str:
    """One check of one configuration in the model x dtype matrix: its ratio to the budget (the worst part's for
    layers), or the failed stage and its first line; marked where an expected-failure entry covers it."""
    if rec is None:
        return "-"
    if rec.get("failure"):
        cell = rec["failure"]["message"].splitlines()[0][:72]  # "<stage> failed: <first error line>"
        passed = False
    elif rec["kind"] == "layers":
        cell, passed = f"{max(p['ratio'] for p in rec['parts']):.2f}", rec["passed"]
    else:
        cell, passed = f"{rec['verdict']['ratio']:.2f}", rec["verdict"]["passed"]
    mark = (MARK["passed"] if passed else MARK["expected"] if (rec["config"], rec["kind"]) in expected
            else MARK["failed"])
    return f"{mark} {cell}"


def dtype_matrix(recs: list[dict]) -> tuple[list[str], list[list]]:
    """Model by dtype at TP 1, as model-support tables show it: each cell the end-to-end and the worst layer's
    error / budget, or the stage that failed."""
    checks = {(r["config"], r["kind"]): r for r in recs if r["kind"] in ("end_to_end", "layers") and r.get("tp") == 1}
    expected = {(r["config"], r["check"]) for r in recs if r["kind"] == "expected_failure"}
    cells = {(r["model"], r["dtype"]): r["config"] for r in checks.values()}
    plain = ("fp32", "fp16", "bf16")
    dtypes = sorted({d for _, d in cells}, key=lambda d: (plain.index(d) if d in plain else len(plain), d))
    rows = [[model, *(" / ".join(_check_cell(checks.get((cells[model, d], k)), expected)
                                 for k in ("end_to_end", "layers")) if (model, d) in cells else ""
                      for d in dtypes)]
            for model in sorted({m for m, _ in cells})]
    return ["Model", *dtypes], rows if len(rows) > 1 else []


def bisect_table(recs: list[dict]) -> tuple[list[str], list[list]]:
    rows = [[rec["config"], rec.get("fault") or "", rec["layer"] or "none", rec["sub_block"] or "",
             rec["compiles"], rec["invocations"], f"{rec['timings']['wall_s']:.1f}s"]
            for rec in recs if rec["kind"] == "bisect" and "compiles" in rec]
    rows += [[rec["config"], rec.get("fault") or "", f"decode step {rec['step']}: {rec['layer'] or 'none'}",
              rec["sub_block"] or "", "", "", ""]
             for rec in recs if rec["kind"] == "bisect_decode" and rec.get("diverged")]
    return ["Configuration", "Planted fault", "First diverging part", "Sub-block", "Compiles", "Invocations",
            "Wall"], rows


def known_failures_table(recs: list[dict]) -> tuple[list[str], list[list]]:
    rows = [[r["config"], r["check"], f"{MARK['expected']} expected {r['stage']} failure: {r['message']}", r["issue"]]
            for r in recs if r["kind"] == "expected_failure"]
    rows += [[r["config"], r["check"], f"{MARK['failed']} unexpected pass: remove the entry", r["issue"]]
             for r in recs if r["kind"] == "unexpected_pass"]
    return ["Configuration", "Check", "golden/expected_failures.toml", "Issue"], sorted(rows)


def failures(recs: list[dict]) -> list[tuple[str, str]]:
    """(what failed, reproducer) for every failed stage."""
    return [(f"{rec['config']} {name}: {stage['error']}", stage["reproducer"] or rec["command"])
            for rec in recs for name, stage in rec.get("stages", {}).items() if stage["status"] == "failed"]


def not_checked(recs: list[dict], torn: str | None = None) -> list[str]:
    """Every way this run did not check what it meant to: planned checks with no record (crashed, killed),
    checks whose gate had nothing to compare with (ungated), and a torn last record."""
    lines = [f"❌ missing: {check} {config}: planned, no record (crashed or killed?)"
             for check, config in records.missing(recs)]
    lines += [f"⚠️ ungated: {r['config']} {g['gate']}: {g['message']}" for r in recs if r["kind"] == "perplexity"
              for g in r.get("gates", []) if g["verdict"] == "ungated"]
    return lines + ([f"⚠️ {torn}"] if torn else [])


def skipped(recs: list[dict]) -> list[str]:
    return sorted({f"{r['config']}: {r['reason']}" for r in recs if r["kind"] == "skipped"})


def sections(recs: list[dict]) -> list[tuple[str, tuple[list[str], list[list]]]]:
    """The tables of a run that have rows, titled."""
    out = [("Model matrix (dPPL, KLD, top-1: the dtype's or quantization's own cost, eager vs eager fp32, "
            "same windows)", model_matrix(recs)),
           ("Model x dtype (end to end / worst layer, error / budget; or the failed stage)", dtype_matrix(recs)),
           ("End to end: IREE-compiled vs eager PyTorch (same dtype), judged against an fp64 oracle",
            end_to_end_table(recs)),
           ("Layer by layer (error / budget; isolated: eager inputs, propagated: compiled chain)", layers_table(recs)),
           ("Serving: prefill / decode over the paged KV cache (error / budget; checks/serving.py)",
            serving_table(recs)),
           ("WikiText-2 perplexity (PPL ± standard error; eager and IREE on the same windows)", perplexity_table(recs)),
           ("Bisection", bisect_table(recs)),
           ("Known failures", known_failures_table(recs))]
    return [(title, table) for title, table in out if table[1]]


def _versions(recs: list[dict]) -> str:
    versions = next((r["versions"] for r in recs if "versions" in r), {})
    compilers = {json.dumps(r["compiler"], sort_keys=True): r["compiler"] for r in recs if r.get("compiler")}
    return "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "".join(
        f"; iree-compile {c['path']} ({c['version']}, sha256 {c['sha256'][:12]})" for c in compilers.values())


def _machine(recs: list[dict]) -> str:
    """The machines the records were measured on (several after a merge of shards)."""
    seen = {json.dumps(r["machine"], sort_keys=True): r["machine"] for r in recs if "machine" in r}
    return "Machine: " + ("; ".join(
        f"{m['cpu']} (LLVM {m['llvm_cpu']}; {' '.join(m['cpu_features']) or 'no notable features'}), "
        f"{m['threads']} threads eager, {m['iree_workers'] or 'no'} IREE CPU workers" for m in seen.values())
        or "not recorded")


def markdown(run_dir: Path, recs: list[dict], gaps: list[str]) -> str:
    parts = [f"# Harness run `{run_dir.name}`", "", _machine(recs), "", _versions(recs), ""]
    if gaps:
        parts += ["## Not checked", "", *(f"- {g}" for g in gaps), ""]
    for title, (headers, rows) in sections(recs):
        if headers[-1] == "Plot":
            rows = [[*r[:-1], f"![plot]({r[-1]})" if r[-1] else ""] for r in rows]
        parts += [f"## {title}", "", tabulate(rows, headers=headers, tablefmt="github"), ""]
    for rec in sorted((r for r in recs if r["kind"] == "layers" and "parts" in r), key=lambda r: r["config"]):
        headers, rows = layer_details(rec)
        parts += [f"<details><summary>{rec['config']}: every part</summary>", "",
                  tabulate(rows, headers=headers, tablefmt="github"), "", "</details>", ""]
    if skipped(recs):
        parts += ["## Skipped configurations", "", *(f"- {s}" for s in skipped(recs)), ""]
    if failures(recs):
        parts += ["## Failures and reproducers", "",
                  *(f"- `{what}`\n\n  ```\n  {repro}\n  ```" for what, repro in failures(recs)), ""]
    return "\n".join(parts)


def _html_table(headers: list[str], rows: list[list], run_dir: Path) -> str:
    def cell(header: str, value) -> str:
        path = run_dir / str(value)
        if header == "Plot" and value and path.exists():
            data = base64.b64encode(path.read_bytes()).decode()
            return f'<img width="480" src="data:image/png;base64,{data}">'
        return html.escape(str(value))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(h, v)}</td>" for h, v in zip(headers, row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:110em}table{border-collapse:collapse;"
         "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;font-size:.9em;vertical-align:top}"
         "th{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}")


def page(run_dir: Path, recs: list[dict], gaps: list[str]) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>Harness run {html.escape(run_dir.name)}</title>",
             f"<style>{STYLE}</style><h1>Harness run <code>{html.escape(run_dir.name)}</code></h1>",
             f"<p>{html.escape(_machine(recs))}</p><p>{html.escape(_versions(recs))}</p>"]
    if gaps:
        parts += ["<h2>Not checked</h2><ul>", *(f"<li>{html.escape(g)}</li>" for g in gaps), "</ul>"]
    for title, (headers, rows) in sections(recs):
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(headers, rows, run_dir)]
    for rec in sorted((r for r in recs if r["kind"] == "layers" and "parts" in r), key=lambda r: r["config"]):
        parts += [f"<details><summary>{html.escape(rec['config'])}: every part</summary>",
                  _html_table(*layer_details(rec), run_dir), "</details>"]
    if skipped(recs):
        parts += ["<h2>Skipped configurations</h2><ul>", *(f"<li>{html.escape(s)}</li>" for s in skipped(recs)), "</ul>"]
    if failures(recs):
        parts += ["<h2>Failures and reproducers</h2>",
                  *(f"<p><code>{html.escape(what)}</code></p><pre>{html.escape(repro)}</pre>"
                    for what, repro in failures(recs))]
    return "\n".join(parts)


def write_summary(run_dir: Path) -> Path:
    """Write summary.md and summary.html of the run's records; returns summary.md's path."""
    recs = records.read(run_dir / "records.jsonl")
    gaps = not_checked(recs, records.torn_line(run_dir / "records.jsonl"))
    (run_dir / "summary.html").write_text(page(run_dir, recs, gaps))
    path = run_dir / "summary.md"
    path.write_text(markdown(run_dir, recs, gaps))
    return path
