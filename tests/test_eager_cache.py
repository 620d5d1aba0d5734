"""The eager cache (perplexity/eager_cache.py): a warm run computes only the compiled side and scores what a cold run
scores, bit for bit; NLL, PPL, dNLL and same-top are exactly those of an uncached run, the KLD a lower bound of the
full one; a fault planted in the candidate still fails the paired gate against the kept eager; anything eager depends
on names another cache."""

import copy
import json

import numpy as np
import pytest
import torch

from harness.checks import perplexity
from harness.common.errors import HarnessError
from harness.data.dataset import BUNDLED_PATH, load_text
from harness.perplexity import gate
from harness.perplexity.eager_cache import KLD_OVER, EagerCache, measure_against, summarize
from harness.perplexity.journal import WindowStore
from harness.perplexity.protocol import make_windows
from harness.perplexity.runner import score_all
from harness.perplexity.stats import KLD_FULL, Accumulator
from harness.reference.eager import EagerModel, Reference
from harness.reference.llama.config import TOY_GQA
from harness.reference.llama.model import Llama
from harness.reference.registry import resolve
from harness.reporting import merge, records
from harness.reporting.records import versions
from harness.run.case import Case
from harness.run.config import RunConfig
from test_ppl_runner import ByteTokenizer, Counting


def rows(seed: int, n: int = 40, vocab: int = 300) -> torch.Tensor:
    return 3 * torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed))


def test_measured_against_a_summary_nll_and_top_are_exact_the_kld_a_lower_bound():
    targets = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(1))
    a, b = rows(2), rows(2) + 0.3 * rows(3)
    full = Accumulator(["a", "b"]).measure(targets, [a, b])
    kept = measure_against(targets, summarize(targets, a, k=16), b)
    assert all(np.array_equal(x, y) for x, y in zip(kept.nll, full.nll)) and kept.same_top == full.same_top
    assert np.all(kept.kld <= full.kld + 1e-15) and np.all(kept.kld > 0)
    assert 0.3 < kept.kld.mean() / full.kld.mean() < 1
    # Every token kept: the coarsening is no coarsening.
    whole = measure_against(targets, summarize(targets, a, k=300), b)
    np.testing.assert_allclose(whole.kld, full.kld, rtol=1e-9)
    assert np.all(measure_against(targets, summarize(targets, a), a).kld == 0)


def test_non_finite_candidate_logits_never_pass_and_shapes_must_match():
    targets = torch.zeros(40, dtype=torch.int64)
    broken = rows(3)
    broken[5, 7] = torch.nan
    result = measure_against(targets, summarize(targets, rows(2)), broken)
    assert np.isnan(result.nll[1][5]) and np.isnan(result.kld[5])
    with pytest.raises(HarnessError, match=r"logits of shape \(40, 299\) against an eager summary of 40 tokens "
                                           "over a vocabulary of 300"):
        measure_against(targets, summarize(targets, rows(2)), rows(3)[:, :299])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = Llama(TOY_GQA)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(0.1)
    faulty = copy.deepcopy(model)
    with torch.no_grad():  # a planted fault in the candidate only: one layer's down projection x 1.125
        faulty.layers[1].mlp.down_proj.weight.mul_(1.125)
    return model, faulty


@pytest.fixture(scope="module")
def windows():
    return make_windows(load_text(), ByteTokenizer(), n_ctx=64, max_windows=8)


def scored(tmp_path, windows, eager, candidate, fp32=None, cache=True):
    """Eager vs the candidate, and (given `fp32`) eager fp32 vs eager, with a cache of eager (and fp32) in tmp_path."""
    comparisons = [[eager, candidate]] + ([[fp32, eager]] if fp32 else [])
    store = EagerCache(WindowStore.open(tmp_path / "eager", {"test": 1}), [eager] + ([fp32] if fp32 else []))
    return score_all(comparisons, windows, eager_cache=store if cache else None), store


def test_a_warm_run_computes_only_the_candidate_and_scores_what_a_cold_run_does(models, windows, tmp_path):
    model, _ = models
    eager, fp32, candidate = (Counting(EagerModel(model, name)) for name in ("eager", "eager-fp32", "iree"))
    (cold, cold_cost), cold_cache = scored(tmp_path, windows, eager, candidate, fp32)
    assert (cold_cache.misses, cold_cache.hits, len(eager.calls), len(fp32.calls)) == (8, 0, 8, 8)
    (warm, warm_cost), warm_cache = scored(tmp_path, windows, eager, candidate, fp32)
    assert (warm_cache.misses, warm_cache.hits, len(eager.calls), len(fp32.calls)) == (0, 8, 8, 8)
    assert len(candidate.calls) == 16
    assert json.dumps(cold.stats.to_record()) == json.dumps(warm.stats.to_record())
    assert json.dumps(cold_cost.stats.to_record()) == json.dumps(warm_cost.stats.to_record())
    assert [t.prefill_tokens for t in warm.timings] == [0, 8 * 64]
    assert "[eager] not run: its results of every window were kept (journal or eager cache)" in warm.summary()
    # Against uncached scoring: everything but the KLD exact, the KLD a lower bound; eager-only comparisons
    # (what the dtype costs) are kept whole, their KLD over the whole vocabulary.
    plain, plain_cost = scored(tmp_path, windows, eager, candidate, fp32, cache=False)[0]
    assert warm.stats.engines == plain.stats.engines and warm.stats.pair.ln_ratio == plain.stats.pair.ln_ratio
    assert warm.stats.pair.same_top == plain.stats.pair.same_top
    assert (warm.stats.kld_over, plain.stats.kld_over, warm_cost.stats.kld_over) == (KLD_OVER, KLD_FULL, KLD_FULL)
    assert warm_cost.stats == plain_cost.stats
    assert f"over {KLD_OVER}" in warm.stats.format()


def test_a_fault_in_the_candidate_fails_the_paired_gate_against_the_kept_eager(models, windows, tmp_path):
    model, faulty = models
    eager = Counting(EagerModel(model, "eager"))
    scored(tmp_path, windows, eager, EagerModel(model, "iree"))  # fills the cache
    (clean,), _ = scored(tmp_path, windows, eager, EagerModel(model, "iree"))
    (bad,), cache = scored(tmp_path, windows, eager, EagerModel(faulty, "iree"))
    assert cache.hits == 8 and len(eager.calls) == 8
    assert gate.check_pair(clean.stats, "fp32").verdict == "pass"
    verdict = gate.check_pair(bad.stats, "fp32")
    assert verdict.verdict == "fail", verdict.message
    assert bad.stats.pair.kld.value > 1e-4 > clean.stats.pair.kld.value


def test_a_torn_window_file_is_one_line(tmp_path):
    store = WindowStore.open(tmp_path, {"test": 1})
    store.write(3, {"x": np.arange(4)})
    (tmp_path / "window-000003.npz").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(HarnessError, match=r"window-000003.npz: unreadable \(.*\); delete it"):
        store.arrays(3)


@pytest.mark.slow
def test_the_cache_is_named_by_everything_eager_depends_on(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    spec = resolve("smollm2-135m")
    weights = spec.load_weights()
    fp32 = Reference("smollm2-135m", weights, "fp32", tokenizer=spec.load_tokenizer)
    protocol = perplexity.windows(fp32, 1).protocol

    def directory(reference, protocol=protocol):
        return perplexity.open_eager_cache(reference, protocol, []).store.directory

    first = directory(fp32)
    assert directory(fp32) == first
    assert json.loads((first / "key.json").read_text())["weights"] == weights.sha256
    others = [directory(Reference("smollm2-135m", weights, "bf16")),
              directory(Reference("smollm2-135m", weights, "bf16", mode="native")),
              directory(Reference("smollm2-135m", weights, "fp32", attention="math")),
              directory(fp32, perplexity.windows(fp32, 1, n_ctx=256).protocol)]
    for package in ("torch", "gguf", "numpy"):  # gguf and numpy dequantize the GGUF weights eager is built from
        monkeypatch.setattr(perplexity, "versions", lambda: {**versions(), package: "0.0-other"})
        others.append(directory(fp32))
    monkeypatch.setattr(perplexity, "versions", versions)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)  # another order of eager's reductions
    others.append(directory(fp32))
    assert len({first, *others}) == 9


@pytest.mark.slow
def test_evaluate_with_the_cache_records_it_and_its_shards_merge_into_one_run(monkeypatch, tmp_path):
    """Through the check itself (SmolLM2 fp32, 6 windows of 128): a warm run keeps every window's eager side and
    scores what the cold one did; two warm shards merged are exactly the warm run, their KLD still a bound."""
    monkeypatch.setattr(perplexity, "cache_dir", lambda kind: tmp_path / kind)
    text = tmp_path / "short.txt"
    text.write_text(BUNDLED_PATH.read_text(encoding="utf-8")[:10000])
    case = Case(RunConfig("smollm2-135m", "fp32"))
    windows = perplexity.windows(case.reference, 6, 128, dataset=str(text))

    def scored(name: str, shard=None) -> dict:
        rec = case.run(perplexity.evaluate, inputs=windows, golden_dir=tmp_path / "golden", shard=shard,
                       journal=perplexity.journal_dir(tmp_path / name, case.config.id), eager_cache=True)
        records.append(tmp_path / name / "records.jsonl", rec)
        return rec

    cold, warm = scored("cold"), scored("warm")
    assert (cold["eager_cache"]["windows_computed"], warm["eager_cache"]["windows_kept"]) == (6, 6)
    assert json.dumps(cold["stats"], sort_keys=True) == json.dumps(warm["stats"], sort_keys=True)
    assert warm["stats"]["kld_over"] == KLD_OVER and warm["passed"]
    shards = [scored(f"shard{i}", (i, 2)) for i in range(2)]
    assert [s["eager_cache"]["windows_kept"] for s in shards] == [3, 3]
    merge.merge(tmp_path / "merged", [tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "golden")
    (joined,) = [r for r in records.read(tmp_path / "merged" / "records.jsonl") if r["kind"] == "perplexity"]
    assert json.dumps(joined["stats"], sort_keys=True) == json.dumps(warm["stats"], sort_keys=True)
    assert [c["windows_kept"] for c in joined["eager_cache"]] == [3, 3]
