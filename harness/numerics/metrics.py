"""Error metrics between a result and a reference tensor. Everything is computed in fp64; all
functions take torch tensors of the same shape (logits are [..., vocab])."""

from __future__ import annotations

import math

import torch


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def all_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def max_abs(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((_f64(x) - _f64(ref)).abs().max())


def max_rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |x - ref| relative to the reference's largest magnitude (element-wise relative error
    is meaningless for logits near zero)."""
    scale = float(_f64(ref).abs().max())
    return max_abs(x, ref) / scale if scale else math.inf


def rms(x: torch.Tensor) -> float:
    return float(_f64(x).pow(2).mean().sqrt())


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return rms(_f64(x) - _f64(ref))


def cosine(x: torch.Tensor, ref: torch.Tensor) -> float:
    a, b = _f64(x).flatten(), _f64(ref).flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def sqnr_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 20 log10(||ref|| / ||x - ref||), in dB (inf when equal)."""
    noise = float((_f64(x) - _f64(ref)).norm())
    return math.inf if noise == 0 else 20 * math.log10(float(_f64(ref).norm()) / noise)


def top1_agreement(logits: torch.Tensor, ref_logits: torch.Tensor) -> float:
    """Fraction of positions whose argmax token is the same."""
    return float((logits.argmax(-1) == ref_logits.argmax(-1)).double().mean())


def kl_divergence(logits: torch.Tensor, ref_logits: torch.Tensor) -> tuple[float, float]:
    """Mean and max over positions of KL(ref || x) of the next-token distributions, in nats."""
    log_p = torch.log_softmax(_f64(ref_logits), -1)
    log_q = torch.log_softmax(_f64(logits), -1)
    kld = (log_p.exp() * (log_p - log_q)).sum(-1)
    return float(kld.mean()), float(kld.max())


def allclose(x: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> dict:
    """A fixed tolerance's verdict, as torch.allclose and numpy's assert_allclose judge: |x - ref| <= atol +
    rtol |ref| everywhere; with the worst element's |x - ref| / (atol + rtol |ref|) (over 1 fails) and the share
    of elements over. NaN or Inf fails."""
    ratio = (_f64(x) - _f64(ref)).abs() / (atol + rtol * _f64(ref).abs())
    finite = all_finite(x) and all_finite(ref)
    worst = float(ratio.max()) if finite else math.inf
    return {"atol": atol, "rtol": rtol, "passed": worst <= 1, "worst": worst,
            "over": float((ratio > 1).double().mean()) if finite else 1.0}


def compare(x: torch.Tensor, ref: torch.Tensor, logits: bool = True) -> dict[str, float]:
    """Every metric of `x` against `ref`; the distribution metrics only when both are logits."""
    out = {
        "max_abs": max_abs(x, ref), "max_rel": max_rel(x, ref), "rmse": rmse(x, ref),
        "cosine": cosine(x, ref), "sqnr_db": sqnr_db(x, ref),
    }
    if logits:
        out["top1"] = top1_agreement(x, ref)
        out["kld_mean"], out["kld_max"] = kl_divergence(x, ref)
    return out
