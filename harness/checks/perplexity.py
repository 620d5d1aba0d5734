"""Perplexity of one configuration: eager and/or the candidate on the same windows, the paired gate between
them, and each against its golden value (golden/, written only when asked)."""

from __future__ import annotations

import itertools
from importlib.metadata import version
from pathlib import Path

from harness.candidates import Candidate
from harness.common.errors import HarnessError
from harness.data.dataset import load_text
from harness.numerics.tolerance import Policy, perplexity_budget
from harness.perplexity import gate
from harness.perplexity.protocol import DEFAULT_N_CTX, Windows, check_max_windows, make_windows
from harness.perplexity.runner import score_all
from harness.perplexity.stats import Stats
from harness.reference import hf
from harness.reference.eager import Reference

ENGINES = ("both", "eager", "iree")
# The quick tier's subset: enough windows for the paired gate's power on fp32/fp16 (gate.py decides and
# says "underpowered" otherwise), few enough for minutes on a 2-core CPU.
QUICK_WINDOWS = 8


def windows(reference: Reference, n_windows: int | None = QUICK_WINDOWS, n_ctx: int = DEFAULT_N_CTX,
            scheme: str = "llamacpp", dataset: str = "wikitext2", form: str = "raw") -> Windows:
    """The first `n_windows` windows (all when None) of `dataset` for the reference's tokenizer."""
    if reference.tokenizer is None:
        raise HarnessError(f"--model {reference.name}: has no tokenizer (a random toy); perplexity needs a "
                           "real model")
    if n_ctx > reference.weights.config.max_seq_len:
        raise HarnessError(f"--ppl-n-ctx {n_ctx}: {reference.name} takes at most "
                           f"{reference.weights.config.max_seq_len} tokens")
    check_max_windows(n_windows)  # before the text is read and tokenized
    return make_windows(load_text(dataset, form), reference.tokenizer(), scheme, n_ctx, max_windows=n_windows)


def independent_check(reference: Reference, windows: Windows, stats: Stats, n: int = 2) -> str:
    """Before an eager fp32 golden is written: transformers' implementation of the same weights scores the
    first `n` windows, and eager must agree within the fp32 paired budget (HarnessError otherwise, and no
    golden is written). Returns what was checked, for the golden file."""
    eager = next((e for e in stats.engines if e.name == "eager"), None)
    if reference.dtype != "fp32" or eager is None:
        return "not applicable: transformers checks the fp32 eager reference"
    if reference.transformers is None:
        return f"none: no transformers implementation of {reference.name}"
    sample = list(itertools.islice(windows, n))
    theirs = hf.window_nll(reference.transformers(), sample)
    tokens = sum(len(w.targets) for w in sample)
    d = (sum(eager.window_nll[:n]) - sum(theirs)) / tokens
    budget = perplexity_budget("fp32").paired
    if not abs(d) <= budget:
        raise HarnessError(f"--update-golden: refusing to write {reference.name}'s fp32 golden: eager differs from "
                           f"transformers by {d:+.2e} nats/token on the first {n} windows (budget {budget:.0e})")
    return f"transformers {version('transformers')}: mean dNLL {d:+.2e} nats/token on the first {n} windows"


def evaluate(candidate: Candidate, reference: Reference, windows: Windows, policy: Policy, golden_dir: Path,
             engine: str = "both", progress: bool = False, update_golden: bool = False, command: str = "",
             vs_fp32: bool = True, golden_required: bool = False, golden_command: str = "") -> dict:
    """Score `windows`; the record's kind and fields, with a "gates" list. `engine`: both, or only eager or
    the candidate; `vs_fp32`: also score eager fp32 on the same windows, for what a non-fp32 dtype costs;
    `golden_required` (the nightly): a missing golden fails instead of leaving the run ungated;
    `golden_command`: the configuration's `python -m harness perplexity` command, for the missing golden's hint."""
    if engine not in ENGINES:
        raise HarnessError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    engines = {"eager": [reference.eager], "iree": [candidate.forward(windows.protocol.n_ctx, windows.first)]}
    comparisons = [engines["eager"] + engines["iree"] if engine == "both" else engines[engine]]
    # What the dtype or quantization itself costs: its eager reference against eager fp32, same windows.
    if vs_fp32 and policy.dtype != "fp32":
        comparisons.append([reference.fp32, reference.eager])
    result, *cost = score_all(comparisons, windows, progress)
    stats = result.stats
    gates = [gate.check_pair(stats, policy.dtype)] if engine == "both" else []
    golden_file = gate.golden_path(golden_dir, reference.name, policy.dtype, windows.protocol)
    sha256 = reference.weights.sha256
    if update_golden:  # never gated against itself
        checked = independent_check(reference, windows, stats)
        gate.write_golden(golden_file, gate.make_golden(stats, windows.protocol, sha256, command, checked), update=True)
        gates.append(gate.GateResult("golden", "ungated", f"golden {golden_file} written by this run ({checked}): "
                                     "not gated against itself", {"path": str(golden_file)}))
    elif golden_file.exists():
        golden = gate.read_golden(golden_file)
        gates += [gate.golden_gate(e, stats, windows.protocol, golden, sha256, policy.perplexity.golden_rtol)
                  for e in stats.engines]
    else:
        gates.append(gate.no_golden(golden_file, golden_required, (golden_command or f"python -m harness perplexity "
                                    f"--model {reference.name} --dtype {policy.dtype}") + " --all --update-golden"))
    return dict(kind="perplexity", **result.to_record(), summary=result.summary(),
                vs_fp32=cost[0].stats.to_record() if cost else None, gates=[g.to_record() for g in gates],
                golden=str(golden_file) if golden_file.exists() else None,
                passed=all(g.verdict in ("pass", "ungated") for g in gates))
