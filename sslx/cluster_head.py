"""ClusterHead: FAISS k-means centroids of the reference features as a linear SSL head for head-less models.

A point's k-means cluster is its nearest centroid, arg-min ||x − c_k||². Dropping ||x||² (the same
for every k) leaves a linear function, so logits_k = (2·c_k·x − ||c_k||²) / T rank the clusters exactly
as k-means assigns them; T is the mean squared distance of the fitted points to their centroid
(scale-free logits), unless given.
"""
from __future__ import annotations

import os
from numbers import Integral
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import Tensor, nn

from sslx.neighbors.index import FeatureIndex
from sslx.neighbors.storage import read_payload, write_payload

FORMAT = "sslx.ClusterHead"
FORMAT_VERSION = 1


class ClusterHead(nn.Linear):
    """A k-way linear head whose arg-max is the nearest k-means centroid (an nn.Linear, so AGF treats it as one)."""

    def __init__(self, centroids: Tensor, temperature: float, fingerprint: str | None = None) -> None:
        if not isinstance(centroids, Tensor) or centroids.dim() != 2 or centroids.shape[0] < 2:
            raise ValueError(f"centroids must be a k×D tensor with k ≥ 2, got "
                             f"{tuple(centroids.shape) if isinstance(centroids, Tensor) else type(centroids).__name__}")
        if not centroids.is_floating_point() or not bool(torch.isfinite(centroids).all()):
            raise ValueError("centroids must be finite floating-point values")
        if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        k, dim = centroids.shape
        super().__init__(dim, k, dtype=centroids.dtype, device=centroids.device)
        with torch.no_grad():
            self.weight.copy_(2 * centroids / temperature)
            self.bias.copy_(-(centroids * centroids).sum(1) / temperature)
        self.register_buffer("centroids", centroids.detach().clone())
        self.temperature = float(temperature)
        self.fingerprint = fingerprint

    @classmethod
    def fit(cls, index_or_features: FeatureIndex | Tensor | np.ndarray, k: int, seed: int = 0, *,
            niter: int = 20, temperature: float | None = None) -> ClusterHead:
        """k-means (FAISS, all GPUs when FAISS has any) on a FeatureIndex's stored features or an N×D matrix."""
        if isinstance(k, bool) or not isinstance(k, Integral) or k < 2:
            raise ValueError(f"k (number of clusters) must be an int ≥ 2, got {k!r}")
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        fingerprint = None
        if isinstance(index_or_features, FeatureIndex):
            fingerprint = index_or_features.fingerprint
            features = index_or_features.features_of(index_or_features.ids).numpy()
        else:
            features = _matrix(index_or_features)
        n, dim = features.shape
        if n < k:
            raise ValueError(f"k = {k} clusters requested but only {n} reference features were given")
        kmeans = faiss.Kmeans(dim, int(k), niter=int(niter), seed=int(seed), verbose=False,
                              gpu=faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False)
        kmeans.train(features)
        distances, _ = kmeans.index.search(features, 1)
        if temperature is None:
            temperature = max(float(distances.mean()), 1e-12)
        return cls(torch.from_numpy(np.ascontiguousarray(kmeans.centroids)), temperature, fingerprint)

    def assign(self, features: Tensor) -> Tensor:
        """Index of the nearest centroid of each row of a B×D feature matrix."""
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"features must be a B×{self.in_features} tensor, got "
                             f"{tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__}")
        return self(features).argmax(dim=1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the centroids and temperature to one checksummed file, atomically (e.g. beside the index)."""
        meta = {"k": self.out_features, "dim": self.in_features, "temperature": self.temperature,
                "fingerprint": self.fingerprint}
        return write_payload(path, FORMAT, FORMAT_VERSION, meta, {"centroids": self.centroids.float()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClusterHead:
        """Read a `save`d ClusterHead (missing, foreign, corrupt or truncated files raise)."""
        meta, tensors = read_payload(path, FORMAT, FORMAT_VERSION)
        centroids = tensors.get("centroids")
        if centroids is None or tuple(centroids.shape) != (meta.get("k"), meta.get("dim")):
            raise ValueError(f"ClusterHead file {path} is corrupt: centroids do not match k={meta.get('k')}, "
                             f"dim={meta.get('dim')}")
        return cls(centroids, meta["temperature"], meta.get("fingerprint"))


def beside(index_path: str | os.PathLike) -> Path:
    """Where the ClusterHead of the index saved at `index_path` lives: <index>.clusters.pt."""
    path = Path(index_path)
    return path.with_name(path.name + ".clusters.pt")


class HeadedModel(nn.Module):
    """head(backbone(x)): a head-less SSL model completed by a (cluster) head, explainable like any classifier."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def _matrix(features: object) -> np.ndarray:
    if isinstance(features, Tensor):
        features = features.detach().cpu().numpy()
    if not isinstance(features, np.ndarray):
        raise TypeError(f"features must be a FeatureIndex, a torch.Tensor or a numpy array, got {type(features).__name__}")
    if features.ndim != 2 or 0 in features.shape:
        raise ValueError(f"features must be a non-empty N×D matrix, got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise TypeError(f"features must be floating point, got dtype {features.dtype}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or Inf values")
    return features
