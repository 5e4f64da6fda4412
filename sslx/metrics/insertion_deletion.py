"""Insertion / deletion curves and their areas (Petsiuk et al., RISE, BMVC 2018).

Deletion: the most relevant pixels are replaced by a baseline in map order (MoRF); insertion: starting
from the baseline image, the most relevant pixels of the real image are put back first. The curve is the
softmax probability of the target at each fraction of pixels changed, fractions 0 … 1 included; its area
(trapezoid over the fraction axis, so in [0, 1]) is low for a good deletion map, high for insertion.
Baselines: "zero" (black) or "blur" (Gaussian blur, σ = `sigma` px, the RISE insertion start image).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslx.metrics._scoring import Normalize, as_tuple, check_model, check_pair, clean_targets, target_scores
from sslx.metrics.removal import removal_masks

__all__ = ["BASELINES", "KINDS", "blur", "curve_area", "insertion_deletion_curve"]

BASELINES = ("zero", "blur")
KINDS = ("deletion", "insertion")
DEFAULT_STEPS = 8


def blur(images: Tensor, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur (radius 3σ, reflect padding) of a B×C×H×W batch."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    radius = max(1, min(int(3 * sigma), min(images.shape[2:]) - 1))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def insertion_deletion_curve(model: nn.Module, images: Tensor, heatmaps: Tensor, targets: object = None,
                             kind: str = "deletion", steps: int = DEFAULT_STEPS, baseline: str = "blur",
                             normalize: Normalize = None, sigma: float = 5.0,
                             batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """(fractions F, target probability B×F) for `steps`+1 evenly spaced fractions 0 … 1."""
    check_model(model)
    check_pair(images, heatmaps)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    fractions = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    grid = as_tuple([float(f) for f in fractions])
    changed = removal_masks(heatmaps, "morf", grid)  # F×B×1×H×W, most relevant first
    base = torch.zeros_like(images) if baseline == "zero" else blur(images, sigma)
    real, fill = (images, base) if kind == "deletion" else (base, images)
    copies = torch.where(changed, fill.unsqueeze(0), real.unsqueeze(0)).flatten(0, 1)
    targets = clean_targets(model, images, targets, normalize)
    prob, _ = target_scores(model, copies, images.shape[0], targets, normalize, batch_size)
    return fractions.to(images.dtype), prob.t().contiguous()


def curve_area(fractions: Tensor, curve: Tensor) -> Tensor:
    """Per-image trapezoid area (B) of a B×F curve over the F fractions."""
    if curve.dim() != 2 or fractions.dim() != 1 or curve.shape[1] != fractions.numel():
        raise ValueError(f"need a B×F curve and F fractions, got {tuple(curve.shape)} and {tuple(fractions.shape)}")
    if fractions.numel() < 2:
        raise ValueError("an area needs at least two fractions")
    return torch.trapezoid(curve, fractions.to(curve), dim=1)
