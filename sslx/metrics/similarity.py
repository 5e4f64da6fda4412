"""Similarity of two batches of maps: Spearman rank correlation and SSIM, per image.

- Spearman: Pearson correlation of the pixels' average ranks (ties share their mean rank), NaN when a
  map is constant.
- SSIM (Wang et al. 2004) as scikit-image's default: each map min-max scaled to [0, 1] first (a
  constant map becomes 0), data range 1, 7×7 uniform windows over the valid area, sample covariance
  (N − 1), C1 = (0.01)², C2 = (0.03)²; the score is the mean over windows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslx._validate import check_image_batch

__all__ = ["average_ranks", "spearman", "ssim"]

SSIM_WINDOW = 7


def _check(a: Tensor, b: Tensor) -> None:
    """Raise unless a and b are matching B×1×H×W map batches."""
    check_image_batch(a, "a", channels=1)
    check_image_batch(b, "b", channels=1)
    if a.shape != b.shape or a.device != b.device:
        raise ValueError(f"maps must have the same shape and device, got {tuple(a.shape)} on {a.device} and "
                         f"{tuple(b.shape)} on {b.device}")


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1…N of each row of a B×N tensor, tied values sharing their mean rank (float64)."""
    rows, n = x.shape
    values, order = torch.sort(x, dim=1, stable=True)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    group = new_group.long().cumsum(dim=1) - 1 + n * torch.arange(rows, device=x.device).view(-1, 1)
    position = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand(rows, n)
    mean = torch.zeros(rows * n, dtype=torch.float64, device=x.device).scatter_reduce(
        0, group.flatten(), position.flatten(), "mean", include_self=False)
    ranks = torch.empty(rows, n, dtype=torch.float64, device=x.device)
    return ranks.scatter_(1, order, mean[group])


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Spearman rank correlation (B, float64) between two B×1×H×W map batches."""
    _check(a, b)
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    den = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(dim=1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def _unit(x: Tensor) -> Tensor:
    """Each map min-max scaled to [0, 1] (a constant map to 0)."""
    flat = x.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    return ((flat - low) / torch.where(span > 0, span, 1.0)).view_as(x)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image SSIM (B) between two B×1×H×W map batches after min-max scaling each map."""
    _check(a, b)
    if min(a.shape[2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs maps of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {tuple(a.shape[2:])}")
    x, y = _unit(a.double()), _unit(b.double())
    n = SSIM_WINDOW * SSIM_WINDOW
    mean = lambda t: F.avg_pool2d(t, SSIM_WINDOW, stride=1)  # noqa: E731
    mx, my = mean(x), mean(y)
    cov = n / (n - 1)
    vx, vy, vxy = cov * (mean(x * x) - mx * mx), cov * (mean(y * y) - my * my), cov * (mean(x * y) - mx * my)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).to(a.dtype)
