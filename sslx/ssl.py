"""Algorithm 2 of the AGF paper: explain an SSL network's class chosen with the image's nearest neighbour.

Lines 1–6 pick the class: t = arg-max ϕτ(L_I − L_N) (Δ), ϕτ(L_I + L_N) (Σ) or ϕτ(L_I) (w/o), with
L_I = ϕF(I) the image's penultimate features and L_N its nearest neighbour's in the reference set S.
Line 7, "Apply Alg. 1, with the input tuple M, I, t", explains the *unmodified* SSL network
M = ϕτ ∘ ϕF on I for t: that is the default (`explain_model="unmodified"`). The alternative
`explain_model="combined"` explains CombinedFeaturesModel = ϕτ(ϕF(·) ± L_N) instead, the head on the
combined features with the neighbour's held fixed (not the paper's reading; kept for comparison).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ._validate import check_image_batch
from .explain_api import METHODS

MODES = ("delta", "sum", "none")
EXPLAIN_MODELS = ("unmodified", "combined")


@dataclass
class SSLExplanation:
    """Heatmaps B×1×H×W, the SSL class t explained per image, the neighbours' dataset ids (B×k), the logits v."""

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


def mode_offset(neighbor: Tensor, mode: str) -> Tensor:
    """The features added to L_I: −L_N for Δ ("delta"), +L_N for Σ ("sum"), 0 for w/o ("none")."""
    _check_choice(mode, MODES, "mode")
    return {"delta": -neighbor, "sum": neighbor, "none": torch.zeros_like(neighbor)}[mode]


def _check_choice(value: object, choices: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__} must expose `backbone` (images → penultimate features) and "
                        "`head` (the SSL nn.Linear), as the models from ssl_models.load do")
    return backbone, head


def _check_index_and_k(index: Any, k: object) -> int:
    from .neighbors import FeatureIndex

    if not isinstance(index, FeatureIndex):
        raise TypeError(f"index must be an sslx.neighbors.FeatureIndex over the reference set S, got "
                        f"{type(index).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (neighbours per image) must be a positive int, got {k!r}")
    if k > len(index):
        raise ValueError(f"k = {k} neighbours requested but the index holds only {len(index)} vectors")
    return k


def _check_unmodified(model: nn.Module, x: Tensor, features: Tensor, head: nn.Linear) -> None:
    """Raise unless model(x) is head(backbone(x)): Algorithm 2 explains M = ϕτ ∘ ϕF itself."""
    direct, composed = model(x), head(features)
    if not isinstance(direct, Tensor) or direct.shape != composed.shape:
        shape = tuple(direct.shape) if isinstance(direct, Tensor) else type(direct).__name__
        raise ValueError(f"model(x) returned {shape}, but head(backbone(x)) is {tuple(composed.shape)}: Algorithm 2 "
                         "explains M = head ∘ backbone, so its forward must return the SSL head's logits")
    scale = float(composed.abs().max()) if composed.numel() else 1.0
    if not torch.allclose(direct, composed, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
        raise ValueError("model(x) differs from model.head(model.backbone(x)): Algorithm 2 explains the unmodified "
                         "network M = head ∘ backbone (is the model in training mode, or does forward do more?)")


def explain(model: nn.Module, x: Tensor, index: Any, mode: str = "delta", method: str = "agf", k: int = 1,
            exclude_ids: Tensor | None = None, explain_model: str = "unmodified", **options: Any) -> SSLExplanation:
    """Algorithm 2: t = arg-max head(L_I ∓ L_N) (Δ/Σ/w-o), then `method` explains M = head ∘ backbone on x for t.

    `index` is a FeatureIndex over the reference set S (penultimate features, the head's input); the k
    nearest neighbours' features are averaged into L_N (k = 1 in the paper); `exclude_ids[b]` is never
    image b's neighbour. `explain_model="combined"` explains head(backbone(·) ∓ L_N) instead of M.
    `options` go to the method (any name of `sslx.explain`).
    """
    _check_choice(mode, MODES, "mode")
    _check_choice(explain_model, EXPLAIN_MODELS, "explain_model")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")
    check_image_batch(x, "x", channels=None)
    backbone, head = _backbone_and_head(model)
    k = _check_index_and_k(index, k)
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
        offset = mode_offset(neighbor, mode)
        logits = head(features + offset)
        if explain_model == "unmodified":
            _check_unmodified(model, x, features, head)
    ssl_class = logits.argmax(dim=1)
    explained = model if explain_model == "unmodified" else CombinedFeaturesModel(backbone, head, offset)
    heatmaps = METHODS[method](explained, **options).attribute(x, ssl_class)
    return SSLExplanation(heatmaps, ssl_class, ids, logits)
