"""Metrics against hand computations on small tensors."""

import math

import pytest
import torch

from harness.numerics import metrics


def test_errors_on_known_difference():
    ref = torch.tensor([[1.0, -2.0, 3.0, 4.0]])
    x = ref + torch.tensor([[0.0, 0.5, 0.0, -1.0]])
    assert metrics.max_abs(x, ref) == 1.0
    assert metrics.max_rel(x, ref) == 1.0 / 4.0
    assert metrics.rmse(x, ref) == pytest.approx(math.sqrt((0.25 + 1.0) / 4))
    assert metrics.sqnr_db(x, ref) == pytest.approx(20 * math.log10(math.sqrt(30) / math.sqrt(1.25)))
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert metrics.cosine(2 * ref, ref) == pytest.approx(1.0)
    assert metrics.cosine(-ref, ref) == pytest.approx(-1.0)


def test_top1_and_kld():
    ref = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]]])
    x = torch.tensor([[[3.0, 1.0, 0.0], [2.0, 0.0, 1.0]]])
    assert metrics.top1_agreement(x, ref) == 0.5
    p, q = torch.softmax(ref.double(), -1), torch.softmax(x.double(), -1)
    expected = (p * (p.log() - q.log())).sum(-1)
    mean, worst = metrics.kl_divergence(x, ref)
    assert mean == pytest.approx(float(expected.mean()))
    assert worst == pytest.approx(float(expected.max()))
    assert metrics.kl_divergence(ref, ref)[0] == pytest.approx(0.0, abs=1e-15)


def test_nan_is_never_finite():
    assert not metrics.all_finite(torch.tensor([1.0, float("nan")]))
    assert not metrics.all_finite(torch.tensor([float("inf")]))
    assert metrics.all_finite(torch.tensor([1.0]))
