"""Localisation of maps against object masks: pointing game, relevance mass and relevance rank accuracy.

Definitions (as Quantus: Zhang et al. 2018; Arras et al. 2022), per image, masks B×1×H×W (True = object):
- pointing game: hit when a pixel holding the map's maximum lies in the mask (any of tied maxima, as Quantus);
- relevance mass accuracy: Σ map inside the mask / Σ map over the image (on the map as given: pass a
  non-negative map, e.g. ``m.clamp(min=0)``; NaN when the total is 0);
- relevance rank accuracy: with K = |mask|, the fraction of the K highest-ranked pixels (stable
  descending sort) that lie in the mask.
Images whose mask is empty have no score: NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sslx._validate import check_image_batch

__all__ = ["pointing_game", "relevance_mass", "relevance_rank_accuracy"]


def _check(heatmaps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Flattened (B×N maps, B×N bool masks) after checking shapes and dtypes."""
    check_image_batch(heatmaps, "heatmaps", channels=1)
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor B×1×H×W, got {getattr(masks, 'dtype', type(masks).__name__)}")
    if masks.shape != heatmaps.shape:
        raise ValueError(f"masks shape {tuple(masks.shape)} does not match heatmaps shape {tuple(heatmaps.shape)}")
    if masks.device != heatmaps.device:
        raise ValueError(f"masks are on {masks.device} but heatmaps are on {heatmaps.device}")
    return heatmaps.flatten(1), masks.flatten(1)


def _nan_if_empty(score: Tensor, masks: Tensor) -> Tensor:
    """NaN for images whose mask is empty."""
    return torch.where(masks.any(dim=1), score, torch.full_like(score, float("nan")))


def pointing_game(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Per image (float B: 1 hit, 0 miss, NaN empty mask): does the map's maximum lie in the mask?"""
    maps, m = _check(heatmaps, masks)
    hit = (m & (maps == maps.max(dim=1, keepdim=True).values)).any(dim=1).to(heatmaps.dtype)
    return _nan_if_empty(hit, m)


def relevance_mass(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Per image: share of the map's total inside the mask (NaN for an empty mask or a zero total)."""
    maps, m = _check(heatmaps, masks)
    total = maps.sum(dim=1)
    inside = (maps * m).sum(dim=1)
    share = torch.where(total != 0, inside / torch.where(total != 0, total, 1.0), torch.full_like(total, float("nan")))
    return _nan_if_empty(share, m)


def relevance_rank_accuracy(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Per image: fraction of the |mask| top-ranked pixels that are in the mask (NaN for an empty mask)."""
    maps, m = _check(heatmaps, masks)
    order = torch.sort(maps, dim=1, descending=True, stable=True).indices
    k = m.sum(dim=1)
    in_mask = m.gather(1, order)
    top = torch.arange(maps.shape[1], device=maps.device).view(1, -1) < k.view(-1, 1)
    score = (in_mask & top).sum(dim=1).to(heatmaps.dtype) / k.clamp_min(1).to(heatmaps.dtype)
    return _nan_if_empty(score, m)
