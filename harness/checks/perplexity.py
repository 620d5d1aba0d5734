"""Perplexity of one configuration: eager and/or the candidate on the same windows, the paired gate between
them, and each against its golden value (golden/, written only when asked)."""

from __future__ import annotations

import itertools
import json
from importlib.metadata import version
from pathlib import Path

from harness.candidates import Candidate, Forward
from harness.candidates.exported import source_digest
from harness.common import host
from harness.common.cache import cache_dir, digest
from harness.common.errors import HarnessError
from harness.data.dataset import load_text
from harness.numerics import tolerance
from harness.numerics.tolerance import Policy, perplexity_budget
from harness.perplexity import gate
from harness.perplexity.eager_cache import TOP_K, EagerCache, kld_over
from harness.perplexity.journal import Journal, WindowStore
from harness.perplexity.protocol import DEFAULT_N_CTX, Protocol, Windows, check_max_windows, make_windows
from harness.perplexity.runner import PerplexityResult, Timing, score_all
from harness.perplexity.stats import KLD_FULL, Accumulator, Stats
from harness.reference import hf
from harness.reference.eager import Reference
from harness.reference.registry import slug
from harness.reporting.records import versions

ENGINES = ("both", "eager", "iree")
# The quick tier's subset: enough windows for the paired gate's power on fp32/fp16 (gate.py decides and
# says "underpowered" otherwise), few enough for minutes on a 2-core CPU.
QUICK_WINDOWS = 8


def journal_dir(run_dir: Path, config_id: str) -> Path:
    """Where a run keeps a configuration's per-window perplexity results (journal.py); `report merge` finds it
    there in shards made on other machines (a configuration id can hold a path: it is slugged)."""
    return run_dir / "perplexity" / slug(config_id)


def _code_digest(*packages: str) -> str:
    """The perplexity code's own sources (and those of `packages`): what scores a window, besides the model and
    program."""
    root = Path(__file__).resolve().parents[1]
    files = [p for package in ("perplexity", *packages) for p in sorted((root / package).rglob("*.py"))]
    return digest(*(p.read_bytes() for p in [*files, Path(__file__)]))


def open_eager_cache(reference: Reference, protocol: Protocol, engines: list[Forward]) -> EagerCache:
    """The eager cache of the reference's `engines` on the protocol's window sequence (perplexity/eager_cache.py),
    under `$HARNESS_CACHE_DIR/eager/`, named by the digest of everything eager's logits depend on."""
    key = {"model": reference.name, "weights": reference.weights.sha256, "dtype": reference.dtype,
           "attention": reference.attention, "mode": reference.mode,
           "windows": {f: getattr(protocol, f) for f in Protocol.STREAM_FIELDS}, "top_k": TOP_K,
           "code": _code_digest("reference", "transforms", "common", "data"),
           "versions": {k: v for k, v in versions().items()
                        if k in ("python", "torch", "numpy", "gguf", "transformers")},
           "machine": {k: host.machine()[k] for k in ("llvm_cpu", "cpu_features", "threads")}}
    name = digest(json.dumps(key, sort_keys=True, default=str))
    return EagerCache(WindowStore.open(cache_dir("eager") / name, key), engines)


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
    if reference.family.family(reference.weights.config) == "hf":
        return f"none: {reference.name}'s eager reference is transformers' own model (the hf family)"
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
             vs_fp32: bool = True, golden_required: bool = False, golden_command: str = "",
             journal: Path | None = None, shard: tuple[int, int] | None = None, eager_cache: bool = False) -> dict:
    """Score `windows`; the record's kind and fields, with a "gates" list. `engine`: both, or only eager or
    the candidate; `vs_fp32`: also score eager fp32 on the same windows, for what a non-fp32 dtype costs;
    `golden_required` (the nightly): a missing golden fails instead of leaving the run ungated;
    `golden_command`: the configuration's `python -m harness perplexity` command, for the missing golden's hint;
    `journal`: the directory where each window's results are kept as it finishes (a rerun resumes from them);
    `shard` (i - 1, N): score only windows i - 1, i - 1 + N, ... (`report merge` joins the shards and gates the
    whole against its golden); `eager_cache`: keep eager's results of each window and reuse them
    (perplexity/eager_cache.py: the KLD against the compiled engine is then over eager's top tokens)."""
    if engine not in ENGINES:
        raise HarnessError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    if shard and update_golden:
        raise HarnessError("--update-golden with --ppl-shard: a golden keeps every window; write it from one run")
    if shard and len(windows) < shard[1]:
        raise HarnessError(f"--ppl-shard {shard[0] + 1}/{shard[1]}: only {len(windows)} windows to deal")
    engines = {"eager": [reference.eager], "iree": [candidate.forward(windows.protocol.n_ctx, windows.first)]}
    comparisons = [engines["eager"] + engines["iree"] if engine == "both" else engines[engine]]
    # What the dtype or quantization itself costs: its eager reference against eager fp32, same windows.
    if vs_fp32 and policy.dtype != "fp32":
        comparisons.append([reference.fp32, reference.eager])
    eager = engines["eager"] + ([reference.fp32] if len(comparisons) > 1 else [])
    kept = [e for e in eager if any(c[0] is e for c in comparisons)]  # the references the cache can stand in for
    cache = open_eager_cache(reference, windows.protocol, kept) if eager_cache and kept else None
    key = {"model": reference.name, "dtype": policy.dtype, "weights": reference.weights.sha256,
           "candidate": candidate.describe(), "protocol": windows.protocol.to_dict(),
           "engines": [[e.name for e in c] for c in comparisons], "code": [source_digest(), _code_digest()],
           "kld_over": [kld_over(cache, c) for c in comparisons], "versions": versions()}
    result, *cost = score_all(comparisons, windows, progress, journal and Journal.open(journal, key), shard, cache)
    stats = result.stats
    golden_file = gate.golden_path(golden_dir, reference.name, policy.dtype, windows.protocol)
    if update_golden:  # never gated against itself
        checked = independent_check(reference, windows, stats)
        gate.write_golden(golden_file, gate.make_golden(stats, windows.protocol, reference.weights.sha256, command,
                                                        checked), update=True)
        golden = [gate.GateResult("golden", "ungated", f"golden {golden_file} written by this run ({checked}): "
                                  "not gated against itself", {"path": str(golden_file)})]
    elif shard:
        golden = [gate.GateResult("golden", "ungated", f"--ppl-shard {shard[0] + 1}/{shard[1]} scores every "
                                  f"{shard[1]}th window: `report merge` of the shards gates the whole run",
                                  {"path": str(golden_file)})]
    else:
        golden = golden_gates(stats, windows.protocol, golden_file, reference.weights.sha256, policy, golden_required,
                              golden_command or f"python -m harness perplexity --model {reference.name} --dtype "
                              f"{policy.dtype}")
    gates = ([gate.check_pair(stats, policy.dtype)] if engine == "both" else []) + golden
    return dict(kind="perplexity", **result.to_record(), summary=result.summary(),
                vs_fp32=cost[0].stats.to_record() if cost else None, gates=[g.to_record() for g in gates],
                golden=str(golden_file) if golden_file.exists() else None,
                golden_required=golden_required,
                golden_command=golden_command,
                journal=journal and str(journal),
                eager_cache=cache and {"directory": str(cache.store.directory), "windows_kept": cache.hits,
                                       "windows_computed": cache.misses},
                ppl_shard=f"{shard[0] + 1}/{shard[1]}" if shard else None,
                passed=all(g.verdict in ("pass", "ungated") for g in gates))


def golden_gates(stats: Stats, protocol: Protocol, golden_file: Path, sha256: str, policy: Policy, required: bool,
                 rerun: str) -> list[gate.GateResult]:
    """Each engine against the golden file, or the missing golden's verdict (`rerun`: the configuration's
    `python -m harness perplexity` command, which writes it given --all --update-golden)."""
    if not golden_file.exists():
        return [gate.no_golden(golden_file, required, f"{rerun} --all --update-golden")]
    golden = gate.read_golden(golden_file)
    return [gate.golden_gate(e, stats, protocol, golden, sha256, policy.perplexity.golden_rtol) for e in stats.engines]


def join_shards(shards: list[tuple[Path, dict]], golden_dir: Path) -> dict:
    """One configuration's perplexity record from its `--ppl-shard` records, each with the run directory that holds
    its journal: the windows' stored results joined in window order (so the statistics are exactly one run's, bit
    for bit), and the paired and golden gates (goldens from `golden_dir`) decided on the whole. Shards that do not
    make one whole split, or a window no journal holds, make a failed record that says so."""
    first = shards[0][1]
    try:
        result = _joined(shards)
    except HarnessError as e:
        return {**{k: v for k, v in first.items() if k not in ("stats", "vs_fp32", "gates", "summary")},
                "failure": {"stage": "perplexity", "message": str(e)}, "passed": False}
    joined, *cost = result
    stats, protocol, dtype = joined.stats, joined.protocol, first["dtype"]
    gates = ([gate.check_pair(stats, dtype)] if stats.pair else []) + golden_gates(
        stats, protocol, gate.golden_path(golden_dir, first["model"], dtype, protocol), first["weights"]["sha256"],
        tolerance.policy(dtype), first["golden_required"], first["golden_command"] or "python -m harness perplexity")
    return {**first, **joined.to_record(), "vs_fp32": cost[0].stats.to_record() if cost else None,
            "summary": joined.summary(), "gates": [g.to_record() for g in gates], "ppl_shard": None, "journal": None,
            "joined_shards": sorted(rec["ppl_shard"] for _, rec in shards),
            "eager_cache": [rec.get("eager_cache") for _, rec in shards],
            "passed": all(g.verdict in ("pass", "ungated") for g in gates)}


def _joined(shards: list[tuple[Path, dict]]) -> list[PerplexityResult]:
    first = shards[0][1]
    named = sorted(rec["ppl_shard"] for _, rec in shards)
    counts = {name.split("/")[1] for name in named}
    total = int(counts.pop()) if len(counts) == 1 else 0
    if not total or named != sorted(f"{i}/{total}" for i in range(1, total + 1)):
        raise HarnessError(f"report merge: perplexity of {first['config']}: shards {', '.join(named)} are not one "
                           "whole split (a shard failed or is missing)")
    journals = {int(rec["ppl_shard"].split("/")[0]) - 1: Journal.read(journal_dir(run_dir, rec["config"]))
                for run_dir, rec in shards}
    if len({json.dumps(j.key, sort_keys=True) for j in journals.values()}) != 1:
        raise HarnessError(f"report merge: perplexity of {first['config']}: the shards' journals score different "
                           "things (their key.json differ)")
    protocol = Protocol.from_dict(first["protocol"])
    key = journals[0].key
    over = key.get("kld_over", [KLD_FULL] * len(key["engines"]))  # journals before the eager cache: full KLD
    accumulators = [Accumulator(names, kld) for names, kld in zip(key["engines"], over)]
    for index in range(protocol.n_windows):
        results = journals[index % total].load(index)
        if results is None:
            raise HarnessError(f"report merge: perplexity of {first['config']}: window {index} is in no shard's "
                               f"journal ({journals[index % total].directory})")
        for acc, result in zip(accumulators, results):
            acc.add_result(result)
    runs = [rec["timings"] for _, rec in shards]  # the first comparison's engines, in each shard
    timings = tuple(Timing(t["engine"], sum(run[i]["seconds"] for run in runs),
                           sum(run[i]["prefill_tokens"] for run in runs)) for i, t in enumerate(runs[0]))
    wall_s = sum(rec["wall_s"] for _, rec in shards)
    return [PerplexityResult(protocol, acc.result(), timings if i == 0 else (), wall_s)
            for i, acc in enumerate(accumulators)]
