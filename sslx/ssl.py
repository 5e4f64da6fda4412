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


def _backbone_and_head(model: nn.Module, head: nn.Linear | None = None) -> tuple[nn.Module, nn.Linear]:
    backbone = getattr(model, "backbone", None)
    if head is not None:
        if not isinstance(head, nn.Linear):
            raise TypeError(f"head must be an nn.Linear (e.g. sslx.cluster_head.ClusterHead), got {type(head).__name__}")
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"{type(model).__name__} must expose `backbone` (images → penultimate features)")
        return backbone, head
    head = getattr(model, "head", None)
    if isinstance(backbone, nn.Module) and head is None and hasattr(model, "head"):
        raise ValueError(f"this {type(model).__name__} has no SSL classifier (a head-less MoCo / VICReg / SimCLR / BYOL "
                         "model): pass head=sslx.cluster_head.ClusterHead.fit(index, k), k-means on the reference "
                         "features, or use explain_similarity")
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


def _neighbors(index: Any, features: Tensor, k: int, exclude_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """(ids B×k, L_N B×D): the k nearest reference items of each row and their mean features."""
    _, ids = index.search(features, k, exclude_ids)
    if bool((ids < 0).any()):
        raise RuntimeError("the index returned fewer than k neighbours (raise nprobe for IVF indexes)")
    neighbor = index.features_of(ids.cpu()).to(dtype=features.dtype, device=features.device).mean(dim=1)
    return ids, neighbor


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
            exclude_ids: Tensor | None = None, explain_model: str = "unmodified", head: nn.Linear | None = None,
            **options: Any) -> SSLExplanation:
    """Algorithm 2: t = arg-max head(L_I ∓ L_N) (Δ/Σ/w-o), then `method` explains M = head ∘ backbone on x for t.

    `index` is a FeatureIndex over the reference set S (penultimate features, the head's input); the k
    nearest neighbours' features are averaged into L_N (k = 1 in the paper); `exclude_ids[b]` is never
    image b's neighbour. `explain_model="combined"` explains head(backbone(·) ∓ L_N) instead of M.
    `head` replaces the model's SSL classifier (required for head-less models: a ClusterHead); M is then
    head ∘ backbone. `options` go to the method (any name of `sslx.explain`).
    """
    _check_choice(mode, MODES, "mode")
    _check_choice(explain_model, EXPLAIN_MODELS, "explain_model")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")
    check_image_batch(x, "x", channels=None)
    own_head = head is None
    backbone, head = _backbone_and_head(model, head)
    if not own_head:
        from .cluster_head import HeadedModel

        model = HeadedModel(backbone, head)
    k = _check_index_and_k(index, k)
    with torch.no_grad():
        features = backbone(x)
        if features.dim() != 2 or features.shape[1] != head.in_features:
            raise ValueError(f"backbone features have shape {tuple(features.shape)}, the head expects "
                             f"B×{head.in_features}")
        if features.shape[1] != index.dim:
            raise ValueError(f"the index holds {index.dim}-d features, the model's are {features.shape[1]}-d")
        ids, neighbor = _neighbors(index, features, k, exclude_ids)
        offset = mode_offset(neighbor, mode)
        logits = head(features + offset)
        if explain_model == "unmodified":
            _check_unmodified(model, x, features, head)
    ssl_class = logits.argmax(dim=1)
    explained = model if explain_model == "unmodified" else CombinedFeaturesModel(backbone, head, offset)
    heatmaps = METHODS[method](explained, **options).attribute(x, ssl_class)
    return SSLExplanation(heatmaps, ssl_class, ids, logits)


class NeighborSimilarityModel(nn.Module):
    """[backbone(x) · u, 0]: output 0 is the projection on one unit neighbour direction u, output 1 a constant
    reference (softmax-contrasting methods such as AGF need a second logit)."""

    def __init__(self, backbone: nn.Module, unit_neighbor: Tensor) -> None:
        super().__init__()
        if unit_neighbor.dim() != 1:
            raise ValueError(f"unit_neighbor must be a D vector, got shape {tuple(unit_neighbor.shape)}")
        self.backbone = backbone
        self.head = nn.Linear(unit_neighbor.shape[0], 2, bias=False, dtype=unit_neighbor.dtype,
                              device=unit_neighbor.device)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0].copy_(unit_neighbor)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


@dataclass
class SimilarityExplanation:
    """Heatmaps B×1×H×W of the similarity target, its cosine per image (B), the neighbours' ids (B×k)."""

    heatmaps: Tensor
    cosine: Tensor
    neighbor_ids: Tensor


def explain_similarity(model: nn.Module, x: Tensor, index: Any, method: str = "agf", k: int = 1,
                       exclude_ids: Tensor | None = None, **options: Any) -> SimilarityExplanation:
    """Label-free target: explain how image b's features align with its neighbour's (needs no SSL head).

    The explained score is ⟨ϕF(x_b), L_N/‖L_N‖⟩ = ‖ϕF(x_b)‖ · cos(ϕF(x_b), L_N): a linear read-out, so
    every method (AGF included) explains it; for L2-normalised features (SwAV, DINO) it is the cosine itself.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")
    check_image_batch(x, "x", channels=None)
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{type(model).__name__} must expose `backbone` (images → penultimate features)")
    k = _check_index_and_k(index, k)
    with torch.no_grad():
        features = backbone(x)
        if features.dim() != 2 or features.shape[1] != index.dim:
            raise ValueError(f"backbone features have shape {tuple(features.shape)}, the index holds "
                             f"{index.dim}-d features")
        ids, neighbor = _neighbors(index, features, k, exclude_ids)
        norms = neighbor.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError("a neighbour's features are all zero: the cosine similarity is undefined")
        unit = neighbor / norms
        cosine = torch.nn.functional.cosine_similarity(features, neighbor, dim=1)
    # one explained model per image: each image's score must not depend on the other images of the batch
    target = torch.zeros(1, dtype=torch.long, device=x.device)
    heatmaps = torch.cat([METHODS[method](NeighborSimilarityModel(backbone, unit[b]), **options).attribute(
        x[b:b + 1], target) for b in range(x.shape[0])])
    return SimilarityExplanation(heatmaps, cosine, ids)
