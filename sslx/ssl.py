"""Algorithm 2: explain an SSL head on the image's features combined with its nearest neighbour's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ._validate import check_image_batch
from .explain_api import METHODS

MODES = ("delta", "sum", "none")


@dataclass
class SSLExplanation:
    """Heatmaps B×1×H×W, the SSL class explained per image, the neighbours' dataset ids (B×k), the logits."""

    heatmaps: Tensor
    ssl_class: Tensor
    neighbor_ids: Tensor
    logits: Tensor


class CombinedFeaturesModel(nn.Module):
    """head(backbone(x) + offset): the SSL head on L_I − L_N (Δ), L_I + L_N (Σ) or L_I (w/o)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, offset: Tensor):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("offset", offset, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x) + self.offset)


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__} must expose `backbone` (images → penultimate features) and "
                        "`head` (the SSL nn.Linear), as the models from ssl_models.load do")
    return backbone, head


def explain(model: nn.Module, x: Tensor, index: Any, mode: str = "delta", method: str = "agf", k: int = 1,
            exclude_ids: Tensor | None = None, **options: Any) -> SSLExplanation:
    """Explain the SSL head's arg-max on the Δ/Σ/w-o combination of x's and its neighbours' features."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")
    check_image_batch(x, "x", channels=None)
    backbone, head = _backbone_and_head(model)
    with torch.no_grad():
        features = backbone(x)
        if features.dim() != 2 or features.shape[1] != head.in_features:
            raise ValueError(f"backbone features have shape {tuple(features.shape)}, the head expects "
                             f"B×{head.in_features}")
        if features.shape[1] != index.dim:
            raise ValueError(f"the index holds {index.dim}-d features, the model's are {features.shape[1]}-d")
        _, ids = index.search(features, k, exclude_ids)
        if bool((ids < 0).any()):
            raise RuntimeError("the index returned fewer than k neighbours (raise nprobe for IVF indexes)")
        neighbor = index.features_of(ids.cpu()).to(dtype=features.dtype, device=features.device).mean(dim=1)
        offset = {"delta": -neighbor, "sum": neighbor, "none": torch.zeros_like(neighbor)}[mode]
        combined = CombinedFeaturesModel(backbone, head, offset)
        logits = head(features + offset)
    ssl_class = logits.argmax(dim=1)
    heatmaps = METHODS[method](combined, **options).attribute(x, ssl_class)
    return SSLExplanation(heatmaps, ssl_class, ids, logits)
