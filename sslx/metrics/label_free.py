"""Label-free faithfulness of SSL explanations: how the embedding reacts when pixels are removed in map order.

- cosine drop: 1 − cos(e(x), e(x')) between the embeddings of the clean and the perturbed image; under
  MoRF removal a faithful map makes it rise fast, under LeRF slowly.
- kNN agreement: whether the perturbed image's k-nearest-neighbour label (cosine similarity to a
  labelled reference set, majority vote, ties to the smaller label) equals the clean image's.
Removal: `imputation` "zero" sets the removed pixels to 0 on the [0, 1] image (as the paper's
perturbation test), "linear" uses ROAD's noisy linear imputation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslx.metrics._scoring import Normalize, as_tuple, check_model, check_pair, outputs
from sslx.metrics.imputation import DEFAULT_NOISE, noisy_linear_impute
from sslx.metrics.removal import removal_masks

__all__ = ["IMPUTATIONS", "embedding_cosine_drop", "knn_agreement", "knn_labels"]

IMPUTATIONS = ("zero", "linear")
DEFAULT_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _perturbed(images: Tensor, heatmaps: Tensor, order: str, fractions: Sequence[float], imputation: str,
               seed: int) -> Tensor:
    """F·B perturbed copies (copy i = image i % B)."""
    if imputation not in IMPUTATIONS:
        raise ValueError(f"imputation must be one of {IMPUTATIONS}, got {imputation!r}")
    masks = removal_masks(heatmaps, order, fractions).flatten(0, 1)
    repeated = images.repeat(len(fractions), 1, 1, 1)
    if imputation == "zero":
        return torch.where(masks, torch.zeros((), dtype=images.dtype, device=images.device), repeated)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    return noisy_linear_impute(repeated, masks, DEFAULT_NOISE, generator).clamp(0.0, 1.0)


def _embeddings(backbone: nn.Module, clean: Tensor, copies: Tensor, normalize: Normalize) -> tuple[Tensor, Tensor]:
    """(clean B×D, perturbed F·B×D) embeddings."""
    with torch.no_grad():
        return outputs(backbone, clean, normalize, "embeddings"), outputs(backbone, copies, normalize, "embeddings")


def embedding_cosine_drop(backbone: nn.Module, images: Tensor, heatmaps: Tensor, order: str = "morf",
                          fractions: Sequence[float] | Tensor = DEFAULT_FRACTIONS, normalize: Normalize = None,
                          imputation: str = "zero", seed: int = 0) -> Tensor:
    """B×F: 1 − cosine similarity between the clean and each perturbed image's embedding."""
    check_model(backbone)
    check_pair(images, heatmaps)
    values = as_tuple(fractions)
    clean, perturbed = _embeddings(backbone, images, _perturbed(images, heatmaps, order, values, imputation, seed),
                                   normalize)
    cos = F.cosine_similarity(perturbed, clean.repeat(len(values), 1), dim=1)
    return (1.0 - cos).view(len(values), -1).t().contiguous()


def knn_labels(queries: Tensor, reference: Tensor, labels: Tensor, k: int = 5) -> Tensor:
    """Majority label (ties → smaller label) of each query's k most cosine-similar reference rows."""
    if queries.dim() != 2 or reference.dim() != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(f"need Q×D queries and N×D reference features, got {tuple(queries.shape)} and "
                         f"{tuple(reference.shape)}")
    if labels.dim() != 1 or labels.numel() != reference.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must be N={reference.shape[0]} integer labels, got {tuple(labels.shape)} {labels.dtype}")
    if reference.shape[0] == 0:
        raise ValueError("the reference set is empty")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= reference.shape[0]:
        raise ValueError(f"k must be an int in [1, {reference.shape[0]}], got {k!r}")
    sims = F.normalize(queries, dim=1) @ F.normalize(reference.to(queries), dim=1).t()
    nearest = sims.topk(k, dim=1).indices
    votes = F.one_hot(labels.to(queries.device)[nearest].long(), int(labels.max()) + 1).sum(dim=1)
    return votes.argmax(dim=1)  # argmax returns the first (smallest) label among equal counts


def knn_agreement(backbone: nn.Module, reference: Tensor, labels: Tensor, images: Tensor, heatmaps: Tensor,
                  order: str = "lerf", fractions: Sequence[float] | Tensor = DEFAULT_FRACTIONS,
                  normalize: Normalize = None, k: int = 5, imputation: str = "zero", seed: int = 0) -> Tensor:
    """Bool B×F: does each perturbed image keep the clean image's kNN label (cosine, reference set)?"""
    check_model(backbone)
    check_pair(images, heatmaps)
    values = as_tuple(fractions)
    clean, perturbed = _embeddings(backbone, images, _perturbed(images, heatmaps, order, values, imputation, seed),
                                   normalize)
    before = knn_labels(clean, reference, labels, k)
    after = knn_labels(perturbed, reference, labels, k)
    return (after == before.repeat(len(values))).view(len(values), -1).t().contiguous()
