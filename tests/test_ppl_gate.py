"""Gates on seeded synthetic noise, both sides: planted regressions fail, clean runs pass at the nominal rate.
Per-token dNLL / NLL streams have a shared offset per window (neighbouring tokens are correlated) plus
per-token noise; each synthetic run goes through the same window-clustered SE as a real one."""

import json
import math

import numpy as np
import pytest
import torch

from harness.checks.perplexity import QUICK_WINDOWS
from harness.common.errors import HarnessError
from harness.numerics.tolerance import perplexity_budget
from harness.perplexity import gate
from harness.perplexity.gate import (
    ALPHA,
    golden_gate,
    make_golden,
    paired_gate,
    read_golden,
    write_golden,
)
from harness.perplexity.protocol import Protocol
from harness.perplexity.stats import Accumulator, Stats, engine_stats, mean_se, window_se

BUDGET = 1e-3
K, N = 32, 50  # windows per run, scored tokens per window
WINDOW_SD, TOKEN_SD = 4e-4, 5e-3  # window SE of the mean ~1.4e-4: power ~1 at 2x the budget


def dnll(rng, mu, runs, scale=1.0, window_sd=WINDOW_SD, token_sd=TOKEN_SD, k=K):
    """`runs` synthetic per-token dNLL streams of k windows with true mean mu, shape [runs, k * N]."""
    offsets = window_sd * rng.normal(size=(runs, k, 1))
    return (mu + scale * (offsets + token_sd * rng.normal(size=(runs, k, N)))).reshape(runs, -1)


def gate_runs(d, se=None):
    k = d.shape[1] // N
    return [paired_gate(x.mean(), window_se(x, [N] * k) if se is None else se(x), k, BUDGET) for x in d]


def verdicts(d, **kwargs):
    return [r.verdict for r in gate_runs(d, **kwargs)]


@pytest.mark.parametrize("p, df, table", [(0.99, 5, 3.3649), (0.99, 10, 2.7638), (0.99, 31, 2.4528),
                                          (0.95, 30, 1.6973), (0.975, 20, 2.0860)])
def test_t_quantile_matches_tables(p, df, table):
    assert gate.t_quantile(p, df) == pytest.approx(table, rel=1e-3)


def test_clean_runs_pass():
    v = verdicts(dnll(np.random.default_rng(0), 0.0, 500))
    assert v.count("pass") == 500


@pytest.mark.parametrize("k", [8, K])
def test_noise_at_the_budget_fails_at_the_nominal_rate(k):
    """The worst clean case, a true mean exactly at the budget, fails ALPHA of the time (one tail); with
    few windows only because the bound uses Student's t (the normal quantile would fail ~2.5 % at k = 8)."""
    runs = 4000
    rate = verdicts(dnll(np.random.default_rng(1), BUDGET, runs, k=k)).count("fail") / runs
    assert abs(rate - ALPHA) < 3.5 * math.sqrt(ALPHA * (1 - ALPHA) / runs), rate


def test_window_se_keeps_the_nominal_rate_where_the_token_se_would_false_alarm():
    """Why the gate clusters by window: with strongly correlated tokens in a window, llama.cpp's token SE
    understates the noise and the same runs at the budget fail far more often than ALPHA."""
    runs = 2000
    d = dnll(np.random.default_rng(2), BUDGET, runs, window_sd=1.5e-3, token_sd=3e-3)
    by_window = verdicts(d).count("fail") / runs
    by_token = verdicts(d, se=lambda x: mean_se(x).se).count("fail") / runs
    assert abs(by_window - ALPHA) < 3.5 * math.sqrt(ALPHA * (1 - ALPHA) / runs), by_window
    assert by_token > 10 * ALPHA, by_token


def test_planted_regression_slightly_above_the_budget_fails():
    rng = np.random.default_rng(2)
    quiet = (1.1 * BUDGET + TOKEN_SD / 20 * rng.normal(size=(K, N))).ravel()  # SE ~ budget / 140
    r = paired_gate(quiet.mean(), window_se(quiet, [N] * K), K, BUDGET)
    assert r.verdict == "fail" and not r.passed and "\n" not in r.message
    better = -quiet  # a compiled engine "better" than eager by more than the budget is a discrepancy too
    assert paired_gate(better.mean(), window_se(better, [N] * K), K, BUDGET).verdict == "fail"


@pytest.mark.parametrize("k, scale", [(QUICK_WINDOWS, 0.7), (K, 1.6)])
def test_regression_of_twice_the_budget_is_caught_with_the_stated_power(k, scale):
    """At a noise level where the gate claims ~95 % power, it catches about that share of 2x regressions:
    at the quick tier's 8 windows (what CI runs; Student's t on 7 degrees of freedom) and at 32."""
    results = gate_runs(dnll(np.random.default_rng(3), gate.DETECT_FACTOR * BUDGET, 1000, scale=scale, k=k))
    caught = sum(r.verdict == "fail" for r in results) / len(results)
    claimed = float(np.mean([r.details["power"] for r in results]))
    assert caught >= gate.POWER and caught == pytest.approx(claimed, abs=0.03), (caught, claimed)


def test_too_noisy_or_too_short_runs_are_underpowered_not_passed():
    d = dnll(np.random.default_rng(4), 0.0, 1)[0] * 5  # SE ~ budget
    r = paired_gate(d.mean(), window_se(d, [N] * K), K, BUDGET)
    assert r.verdict == "underpowered" and not r.passed and r.details["power"] < gate.POWER
    needed = int(r.message.rsplit("about ", 1)[1].split()[0])
    assert needed > K
    more = dnll(np.random.default_rng(5), 0.0, 1)[0].reshape(K, N)[:, :N // 10].ravel() * 0  # sanity: SE 0
    assert paired_gate(more.mean(), window_se(more, [N // 10] * K), K, BUDGET).verdict == "pass"
    assert paired_gate(0.0, 0.0, gate.MIN_WINDOWS - 1, BUDGET).verdict == "underpowered"


def test_non_finite_always_fails():
    assert paired_gate(math.nan, 1e-4, K, BUDGET).verdict == "fail"
    assert paired_gate(math.inf, math.nan, 2, BUDGET).verdict == "fail"


def test_budgets_by_dtype():
    assert perplexity_budget("fp32").paired < perplexity_budget("fp16").paired < perplexity_budget("bf16").paired
    with pytest.raises(HarnessError, match="fp8"):
        perplexity_budget("fp8")


# golden ---------------------------------------------------------------------------------------------

NLL_SD, NLL_WINDOW_SD, RTOL, FILE_WINDOWS = 2.5, 0.3, 5e-4, 200


def protocol(n_windows, n_ctx=512):
    """The first n_windows of 200 windows that score 255 tokens each."""
    return Protocol(dataset="synthetic", dataset_sha256="cd" * 32, text_form="raw", text_sha256="ef" * 32,
                    tokenizer="fake", tokenizer_fingerprint="ab" * 32, scheme="llamacpp", bos="none", n_ctx=n_ctx,
                    stride=n_ctx, scored="255 a window", text_tokens=512 * FILE_WINDOWS, total_windows=FILE_WINDOWS,
                    n_windows=n_windows, n_tokens=255 * n_windows)


def nll_stream(rng, n_windows=FILE_WINDOWS, per_window=255):
    return (3.0 + NLL_WINDOW_SD * rng.normal(size=(n_windows, 1))
            + NLL_SD * rng.normal(size=(n_windows, per_window))).ravel()


def stats_of(nll, n_windows, names=("eager", "iree")):
    return Stats(255 * n_windows, n_windows, tuple(engine_stats(n, nll, [255] * n_windows) for n in names), None,
                 (255,) * n_windows)


def golden_from(nll, names=("eager", "iree")):
    return make_golden(stats_of(nll, FILE_WINDOWS, names), protocol(FILE_WINDOWS), "m" * 64, "cmd", "checked")


def check(nll, n_windows, golden, rtol=RTOL):
    stats = stats_of(nll, n_windows, ("iree",))
    return golden_gate(stats.engines[0], stats, protocol(n_windows), golden, "m" * 64, rtol)


@pytest.mark.parametrize("k", [QUICK_WINDOWS, 16, FILE_WINDOWS])
def test_any_prefix_is_gated_against_the_same_windows(k):
    """A golden keeps every window: a run of the first k (the quick tier's 8, 16, the whole file) meets the
    golden's PPL over exactly those, so only numerics separate them; a shift beyond the floor fails."""
    nll = nll_stream(np.random.default_rng(6))
    golden = golden_from(nll)
    prefix = nll[:255 * k]
    same = check(prefix, k, golden)
    assert same.verdict == "pass" and same.details["diff"] == pytest.approx(0, abs=1e-9)
    assert check(prefix + math.log(1 + 0.5 * RTOL), k, golden).verdict == "pass"
    r = check(prefix + math.log(1 + 3 * RTOL), k, golden)
    assert r.verdict == "fail" and "\n" not in r.message and f"same {k} windows" in r.message
    assert check(prefix + math.nan, k, golden).verdict == "fail"


def test_a_golden_covers_the_whole_file_and_every_engine():
    nll = nll_stream(np.random.default_rng(7))
    with pytest.raises(HarnessError, match=r"scored 8 of 200 \(score them all"):
        make_golden(stats_of(nll[:255 * 8], 8), protocol(8), "m" * 64, "cmd", "checked")
    eager_only = golden_from(nll, names=("eager",))
    assert check(nll[:255 * 8], 8, eager_only).verdict == "ungated"


def test_no_golden_fails_the_nightly_and_is_ungated_in_the_quick_tier(tmp_path):
    path = tmp_path / "x.json"
    assert gate.no_golden(path, True, "python -m harness perplexity ... --update-golden").verdict == "fail"
    quick = gate.no_golden(path, False, "python -m harness perplexity ... --update-golden")
    assert quick.verdict == "ungated" and "--update-golden" in quick.message and not quick.passed


def test_golden_files_round_trip_and_are_written_only_when_asked(tmp_path):
    golden = golden_from(nll_stream(np.random.default_rng(8)))
    assert (golden.command, golden.model_sha256, len(golden.window_tokens)) == ("cmd", "m" * 64, FILE_WINDOWS)
    assert {"python", "torch"} <= set(golden.versions) and golden.date and golden.checked == "checked"
    path = gate.golden_path(tmp_path, "toy", "fp32", golden.protocol)
    assert path == tmp_path / "toy.fp32.synthetic-raw.llamacpp.c512.json"
    with pytest.raises(HarnessError, match="update"):
        write_golden(path, golden)
    assert not path.exists()
    write_golden(path, golden, update=True)
    assert read_golden(path) == golden
    assert len(json.loads(path.read_text())["engines"]["iree"]) == FILE_WINDOWS


def test_golden_problems_are_one_line_errors(tmp_path):
    nll = nll_stream(np.random.default_rng(9))
    golden = golden_from(nll)
    stats = stats_of(nll[:2550], 10, ("iree",))
    other_windows = Stats(stats.n_tokens, 10, stats.engines, None, (254,) * 10)
    (tmp_path / "bad.json").write_text("{}")
    cases = [
        (lambda: read_golden(tmp_path / "missing.json"), "no golden"),
        (lambda: read_golden(tmp_path / "bad.json"), "not a golden"),
        (lambda: golden_gate(stats.engines[0], stats, protocol(10, n_ctx=256), golden, "m" * 64, RTOL), "n_ctx"),
        (lambda: golden_gate(stats.engines[0], stats, protocol(10), golden, "x" * 64, RTOL), "sha256"),
        (lambda: golden_gate(stats.engines[0], other_windows, protocol(10), golden, "m" * 64, RTOL), "other tokens"),
    ]
    for call, message in cases:
        with pytest.raises(HarnessError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


def test_kld_gate_fails_a_corrupted_candidate_and_passes_an_identical_one():
    """The KLD gate on real rows through the Accumulator: logits perturbed by noise of sd 0.3 give a mean KLD
    of ~0.04 nats (0.5 sd^2 per token), far over the fp32 budget, whatever their dNLL on random targets does;
    an identical candidate has KLD 0 and passes."""
    g = torch.Generator().manual_seed(0)
    acc_bad, acc_same = Accumulator(("a", "b")), Accumulator(("a", "b"))
    for _ in range(8):
        a = torch.randn(20, 64, generator=g)
        targets = torch.randint(0, 64, (20,), generator=g)
        acc_bad.add(targets, [a, a + 0.3 * torch.randn(20, 64, generator=g)])
        acc_same.add(targets, [a, a.clone()])
    bad, same = gate.check_kld(acc_bad.result(), "fp32"), gate.check_kld(acc_same.result(), "fp32")
    assert bad.gate == "kld" and bad.verdict == "fail" and 0.02 < bad.details["mean"] < 0.08
    assert same.verdict == "pass" and same.details["mean"] == 0
