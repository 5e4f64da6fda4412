"""ROAD (Rong et al., ICML 2022): MoRF / LeRF removal with noisy linear imputation instead of a constant.

For each fraction p the ``int(H*W*p)`` pixels ranked first by the map (sslx.metrics.removal: MoRF = most
relevant first, LeRF = least relevant first) are replaced by `noisy_linear_impute`; the model scores the
imputed [0, 1] image after `normalize`. Returned per image and fraction: the softmax probability of the
target class and whether the target is still the top-1 class. Good maps: a fast drop under MoRF (low
area), a slow drop under LeRF (high area).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sslx.metrics._scoring import Normalize, as_tuple, check_model, check_pair, clean_targets, target_scores
from sslx.metrics.imputation import DEFAULT_NOISE, noisy_linear_impute
from sslx.metrics.removal import removal_masks

__all__ = ["DEFAULT_ROAD_FRACTIONS", "RoadScores", "road_scores"]

DEFAULT_ROAD_FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)


class RoadScores(NamedTuple):
    """Per image (rows) and fraction (columns): target probability and still-top-1 flag."""

    probability: Tensor
    correct: Tensor


def road_scores(model: nn.Module, images: Tensor, heatmaps: Tensor, targets: object = None, order: str = "morf",
                fractions: Sequence[float] | Tensor = DEFAULT_ROAD_FRACTIONS, normalize: Normalize = None,
                noise: float = DEFAULT_NOISE, seed: int = 0, batch_size: int | None = None) -> RoadScores:
    """ROAD curves (B×F) of target probability and top-1 correctness; `targets=None` = clean top-1 classes."""
    check_model(model)
    check_pair(images, heatmaps)
    values = as_tuple(fractions)
    masks = removal_masks(heatmaps, order, values)  # F×B×1×H×W
    batch = images.shape[0]
    generator = torch.Generator(device=images.device).manual_seed(seed)
    flat = masks.flatten(0, 1)
    copies = noisy_linear_impute(images.repeat(len(values), 1, 1, 1), flat, noise, generator).clamp(0.0, 1.0)
    targets = clean_targets(model, images, targets, normalize)
    prob, correct = target_scores(model, copies, batch, targets, normalize, batch_size)
    return RoadScores(prob.t().contiguous(), correct.t().contiguous())
