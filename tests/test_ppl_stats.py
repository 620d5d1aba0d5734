"""Perplexity statistics against direct computations on random logits: torch.log_softmax for NLLs,
torch.nn.functional.kl_div for KLD, and llama.cpp's sum formulas for the standard errors written out by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.perplexity import stats
from harness.perplexity.stats import Accumulator, window_se

VOCAB = 50


def random_windows(seed: int, n_windows: int = 6, noise: float = 0.3):
    """(targets, reference logits, candidate logits) per window, of varying lengths."""
    g = torch.Generator().manual_seed(seed)
    windows = []
    for _ in range(n_windows):
        n = int(torch.randint(20, 60, (), generator=g))
        a = 3 * torch.randn(n, VOCAB, generator=g)
        windows.append((torch.randint(VOCAB, (n,), generator=g), a, a + noise * torch.randn(n, VOCAB, generator=g)))
    return windows


def accumulate(windows, names=("eager", "compiled")):
    acc = Accumulator(names)
    for t, a, b in windows:
        acc.add(t, [a, b][:len(names)])
    return acc.result()


def llamacpp_se(x: torch.Tensor) -> float:
    """llama.cpp's mean_and_uncertainty: sqrt((sum x^2 / N - (sum x / N)^2) / (N - 1))."""
    n = x.numel()
    return math.sqrt((float((x * x).sum()) / n - (float(x.sum()) / n) ** 2) / (n - 1))


def reference(windows):
    t = torch.cat([w[0] for w in windows])
    la = torch.log_softmax(torch.cat([w[1] for w in windows]).double(), -1)
    lb = torch.log_softmax(torch.cat([w[2] for w in windows]).double(), -1)
    nll_a = -la[torch.arange(t.numel()), t]
    nll_b = -lb[torch.arange(t.numel()), t]
    kld = F.kl_div(lb, la, log_target=True, reduction="none").sum(-1)  # KL(reference || candidate)
    return t.numel(), nll_a, nll_b, kld, la, lb


def test_perplexity_and_its_se_match_a_direct_computation():
    windows = random_windows(0)
    s = accumulate(windows)
    n, nll_a, nll_b, *_ = reference(windows)
    assert s.n_tokens == n and s.n_windows == len(windows)
    for engine, nll in zip(s.engines, (nll_a, nll_b)):
        ppl = math.exp(float(nll.mean()))
        assert engine.ppl.value == pytest.approx(ppl, rel=1e-12)
        assert engine.nll.se == pytest.approx(llamacpp_se(nll), rel=1e-9)
        assert engine.ppl.se == pytest.approx(ppl * llamacpp_se(nll), rel=1e-9)  # the delta method


def test_paired_statistics_match_a_direct_computation():
    windows = random_windows(1)
    p = accumulate(windows).pair
    n, nll_a, nll_b, kld, la, lb = reference(windows)

    se_a, se_b = llamacpp_se(nll_a), llamacpp_se(nll_b)
    cov = (float((nll_a * nll_b).sum()) / n - float(nll_a.sum()) * float(nll_b.sum()) / n ** 2) / (n - 1)
    assert p.ln_ratio.value == pytest.approx(float(nll_b.mean() - nll_a.mean()), rel=1e-10)
    assert p.ln_ratio.se == pytest.approx(math.sqrt(se_a ** 2 + se_b ** 2 - 2 * cov), rel=1e-6)
    assert p.nll_correlation == pytest.approx(float(torch.corrcoef(torch.stack([nll_a, nll_b]))[0, 1]), rel=1e-10)

    assert p.kld.value == pytest.approx(float(kld.mean()), rel=1e-10)
    assert p.kld.se == pytest.approx(llamacpp_se(kld), rel=1e-9)
    q = torch.tensor([99.9, 99, 95, 90, 50, 10, 5, 1, 0.1], dtype=torch.float64) / 100
    expected = [float(kld.max()), *torch.quantile(kld, q).tolist(), float(kld.min())]
    assert list(p.kld_percentiles.values()) == pytest.approx(expected, rel=1e-10)
    assert list(p.kld_percentiles) == ["max", "99.9", "99.0", "95.0", "90.0", "50.0", "10.0", "5.0", "1.0", "0.1",
                                       "min"]

    same = float((la.argmax(-1) == lb.argmax(-1)).double().mean())
    assert 0 < same < 1
    assert p.same_top.value == pytest.approx(same, rel=1e-12)
    assert p.same_top.se == pytest.approx(math.sqrt(same * (1 - same) / (n - 1)), rel=1e-12)

    dp = torch.exp(-nll_b) - torch.exp(-nll_a)
    assert p.dp.value == pytest.approx(float(dp.mean()), rel=1e-9)
    assert p.dp_rms.value == pytest.approx(math.sqrt(float((dp ** 2).mean())), rel=1e-10)


def test_identical_engines_give_zero_divergence_exactly():
    windows = [(t, a, a.clone()) for t, a, _ in random_windows(2)]
    s = accumulate(windows)
    assert s.engines[0].ppl == s.engines[1].ppl
    p = s.pair
    assert p.kld.value == 0 and p.kld_percentiles["max"] == 0 and p.kld_percentiles["min"] == 0
    assert p.ln_ratio.value == 0 and p.ln_ratio.se == 0 and p.ln_ratio_window_se == 0
    assert p.same_top.value == 1 and p.dp_rms.value == 0


def test_single_engine_mode_gives_perplexity_only():
    windows = random_windows(3)
    s = accumulate(windows, names=("eager",))
    _, nll_a, *_ = reference(windows)
    assert s.pair is None and len(s.engines) == 1
    assert s.engines[0].ppl.value == pytest.approx(math.exp(float(nll_a.mean())), rel=1e-12)
    assert s.format() == f"[eager] Final estimate: PPL = {s.engines[0].ppl.value:.4f} +/- {s.engines[0].ppl.se:.5f}"


def test_rows_are_reduced_in_blocks_without_changing_results(monkeypatch):
    windows = random_windows(4)
    whole = accumulate(windows)
    monkeypatch.setattr(stats, "BLOCK_ELEMENTS", 7 * VOCAB)  # 7 rows at a time
    blocked = accumulate(windows)
    assert blocked.pair.kld.value == pytest.approx(whole.pair.kld.value, rel=1e-12)
    assert blocked.pair.same_top == whole.pair.same_top
    assert blocked.engines[1].ppl.value == pytest.approx(whole.engines[1].ppl.value, rel=1e-12)


def test_window_se_is_the_se_of_window_means_for_equal_windows():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 30)) + rng.normal(size=(12, 1))  # a shared offset per window
    means = torch.tensor(x.mean(axis=1))
    assert window_se(x.ravel(), [30] * 12) == pytest.approx(float(means.std(correction=1)) / math.sqrt(12), rel=1e-10)


def test_window_se_by_hand_for_unequal_windows():
    sizes = [3, 1, 4, 2]
    x = np.array([0.5, 1.5, 1.0, 4.0, 2.0, 2.5, 3.0, 0.5, -1.0, 1.0])
    mean = sum(x) / len(x)
    starts = [0, 3, 4, 8]
    ss = sum((sum(x[s:s + n]) - mean * n) ** 2 for s, n in zip(starts, sizes))
    assert window_se(x, sizes) == pytest.approx(math.sqrt(4 / 3 * ss) / len(x), rel=1e-12)


def test_window_se_sees_correlation_that_the_token_se_misses():
    rng = np.random.default_rng(6)
    correlated = (rng.normal(size=(40, 50)) * 0.2 + rng.normal(size=(40, 1))).ravel()
    independent = rng.normal(size=2000)
    sizes = [50] * 40
    assert window_se(correlated, sizes) > 4 * stats.mean_se(correlated).se
    assert window_se(independent, sizes) == pytest.approx(stats.mean_se(independent).se, rel=0.3)


def test_summary_reads_like_llama_cpp():
    s = accumulate(random_windows(7))
    text = s.format()
    a, b = s.engines
    assert f"[eager] Final estimate: PPL = {a.ppl.value:.4f} +/- {a.ppl.se:.5f}" in text
    labels = [line.split(":")[0] for line in text.splitlines() if "KLD:" in line]
    assert labels == ["Mean    KLD", "Maximum KLD", "99.9%   KLD", "99.0%   KLD", "95.0%   KLD", "90.0%   KLD",
                      "Median  KLD", "10.0%   KLD", " 5.0%   KLD", " 1.0%   KLD", " 0.1%   KLD", "Minimum KLD"]
    assert f"Mean    KLD: {s.pair.kld.value:10.6f} ± {s.pair.kld.se:10.6f}" in text
    assert "Same top p:" in text and "RMS Δp    :" in text


def test_mismatched_inputs_are_rejected():
    t, a, b = random_windows(8)[0]
    with pytest.raises(ValueError):
        Accumulator(["a", "b"]).add(t, [a])
    with pytest.raises(ValueError):
        Accumulator(["a", "b"]).add(t, [a, b[:-1]])


def test_impossible_tokens_give_the_kl_divergence_its_limits():
    """A token impossible under both engines adds nothing; impossible only under the candidate, the
    divergence is infinite; a NaN logit gives NaN, never a number."""
    t, a, b = random_windows(4, n_windows=1)[0]
    a_out, b_out = a.clone(), b.clone()
    a_out[0, 3] = b_out[0, 3] = -math.inf
    keep = torch.arange(VOCAB) != 3
    want = F.kl_div(torch.log_softmax(b[0, keep].double(), -1), torch.log_softmax(a[0, keep].double(), -1),
                    log_target=True, reduction="sum")
    b_out[1] = a_out[1]  # row 1 diverges by 0: the maximum is row 0's
    assert accumulate([(t[:2], a_out[:2], b_out[:2])]).pair.kld_percentiles["max"] == pytest.approx(float(want))
    assert accumulate([(t[:2], a[:2], b_out[:2])]).pair.kld_percentiles["max"] == math.inf
    b_nan = b.clone()
    b_nan[1, 5] = math.nan
    assert math.isnan(accumulate([(t[:2], a[:2], b_nan[:2])]).pair.kld.value)
