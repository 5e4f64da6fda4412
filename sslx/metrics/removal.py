"""Shared pixel-removal orders: MoRF (most relevant first) and LeRF (least relevant first), batched.

A map's pixels are ranked by a stable sort of the row-major flattened heatmap (descending for MoRF,
ascending for LeRF), so among equal values the top-most, then left-most pixel goes first, as in
`sslx.metrics.perturbation`. For each fraction p the ``int(H*W*p)`` first-ranked pixels are removed.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sslx._validate import check_image_batch
from sslx.metrics.perturbation import check_fractions, removal_counts, removal_ranks

__all__ = ["ORDERS", "check_order", "removal_masks"]

ORDERS = ("morf", "lerf")
_TO_PERTURBATION = {"morf": "positive", "lerf": "negative"}


def check_order(order: object) -> str:
    """Return `order` after checking it is 'morf' or 'lerf'."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (most / least relevant first), got {order!r}")
    return str(order)


def removal_masks(heatmaps: Tensor, order: str, fractions: Sequence[float] | Tensor) -> Tensor:
    """Return BoolTensor[F, B, 1, H, W]: True where a pixel is removed at each fraction, in `order`."""
    check_image_batch(heatmaps, "heatmaps", channels=1)
    order = check_order(order)
    values = check_fractions(fractions)
    batch, _, height, width = heatmaps.shape
    ranks = removal_ranks(heatmaps, _TO_PERTURBATION[order]).view(1, batch, 1, height, width)
    counts = torch.tensor(removal_counts(height * width, values), device=heatmaps.device)
    return ranks < counts.view(-1, 1, 1, 1, 1)
