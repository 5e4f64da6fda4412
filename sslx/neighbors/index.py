"""FeatureIndex: FAISS nearest neighbours over a reference set's features, reported as dataset ids."""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import Tensor, nn

from sslx.neighbors import faiss_ops
from sslx.neighbors.batches import as_id_array
from sslx.neighbors.embed import embed_loader
from sslx.neighbors.extract import PENULTIMATE, eval_mode, extract_features, model_device, static_feature_dim
from sslx.neighbors.fingerprint import model_fingerprint, state_version
from sslx.neighbors.storage import read_payload, write_payload

FORMAT = "sslx.FeatureIndex"
FORMAT_VERSION = 1
DeviceLike = torch.device | str | None


class FeatureIndex:
    """Nearest neighbours of feature vectors in a reference set S, reported as dataset ids.

    Distances are ascending: squared Euclidean for metric "l2", 1 - cosine similarity for "cosine".
    Create with `build`, `from_features`, `from_shards` or `load`.
    """

    def __init__(
        self,
        index: faiss.Index,
        features: np.ndarray,
        ids: np.ndarray,
        *,
        metric: str,
        factory: str,
        layer: str | None,
        fingerprint: str | None,
        nprobe: int | None = None,
        device: DeviceLike = None,
    ) -> None:
        """Wrap a filled CPU FAISS index whose row i holds `features[i]` (dataset id `ids[i]`)."""
        self._metric = faiss_ops.check_metric(metric)
        self._factory = factory
        self._layer = layer
        self._fingerprint = fingerprint
        self._features = features
        self._ids = ids
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        self._nlist = faiss_ops.nlist(index)
        device = torch.device(device) if device is not None else None
        self._index, self._gpu_resources = faiss_ops.to_device(index, device)
        self._nprobe: int | None = None
        if self._nlist is not None:
            self.nprobe = nprobe if nprobe is not None else max(1, round(math.sqrt(self._nlist)))
        elif nprobe is not None:
            self.nprobe = nprobe  # raises: not an IVF index
        self._verified_state: tuple | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        model: nn.Module,
        dataloader: Iterable,
        layer: str = PENULTIMATE,
        metric: str = "l2",
        factory: str = "Flat",
        device: DeviceLike = None,
        progress: bool = True,
        *,
        nprobe: int | None = None,
    ) -> FeatureIndex:
        """Embed every image of `dataloader` with `model` (eval mode, no grad) and index the features.

        Batches are dicts with 'image' and 'index' (dataset ids) or (image, ...) tuples (ids = running
        positions). `device` places the FAISS index (GPU when CUDA and FAISS has GPUs); default: the
        model's device.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        faiss_ops.check_metric(metric)
        with torch.no_grad(), eval_mode(model):
            features, ids = embed_loader(model, dataloader, layer, progress)
        return cls.from_features(
            features,
            ids,
            metric,
            factory,
            device=device if device is not None else model_device(model),
            nprobe=nprobe,
            layer=layer,
            fingerprint=model_fingerprint(model),
        )

    @classmethod
    def from_features(
        cls,
        features: Tensor | np.ndarray,
        ids: Tensor | np.ndarray | list[int] | None = None,
        metric: str = "l2",
        factory: str = "Flat",
        *,
        device: DeviceLike = None,
        nprobe: int | None = None,
        layer: str | None = None,
        fingerprint: str | None = None,
    ) -> FeatureIndex:
        """Index an N×D feature matrix whose rows have dataset `ids` (default 0..N-1); trains IVF/PQ indexes."""
        faiss_ops.check_metric(metric)
        raw = _feature_matrix(features, "features", copy=True)
        count, dim = raw.shape
        ids = np.arange(count, dtype=np.int64) if ids is None else as_id_array(ids, count, "ids").copy()
        unique, counts = np.unique(ids, return_counts=True)
        if unique.shape[0] != count:
            raise ValueError(f"ids must be unique, got duplicates {unique[counts > 1][:10].tolist()}")
        vectors = _unit_rows(raw, "features") if metric == "cosine" else raw
        index = faiss_ops.new_index(dim, factory, metric)
        faiss_ops.train(index, vectors, factory)
        index.add(vectors)
        return cls(
            index, raw, ids, metric=metric, factory=factory, layer=layer, fingerprint=fingerprint, nprobe=nprobe, device=device
        )

    @classmethod
    def from_shards(
        cls,
        directory: str | os.PathLike,
        metric: str = "l2",
        factory: str = "Flat",
        *,
        device: DeviceLike = None,
        nprobe: int | None = None,
    ) -> FeatureIndex:
        """Index the feature shards that `ShardWriter` wrote during `Trainer.predict` (any number of ranks)."""
        from sslx.neighbors.shard_files import read_shards

        shards = read_shards(directory)
        return cls.from_features(
            shards.features,
            shards.ids,
            metric,
            factory,
            device=device,
            nprobe=nprobe,
            layer=shards.layer,
            fingerprint=shards.fingerprint,
        )

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self._features.shape[1])

    @property
    def metric(self) -> str:
        """'l2' or 'cosine'."""
        return self._metric

    @property
    def factory(self) -> str:
        """The FAISS index_factory string."""
        return self._factory

    @property
    def layer(self) -> str | None:
        """The layer the features come from (None when built from raw features)."""
        return self._layer

    @property
    def fingerprint(self) -> str | None:
        """sha256 of the model's state_dict (None when built from raw features)."""
        return self._fingerprint

    @property
    def ids(self) -> Tensor:
        """The indexed dataset ids, in index order (a copy)."""
        return torch.from_numpy(self._ids.copy())

    @property
    def on_gpu(self) -> bool:
        """True when the FAISS index lives on a GPU."""
        return faiss_ops.is_gpu(self._index)

    @property
    def nprobe(self) -> int | None:
        """Inverted lists visited per query (IVF indexes only; None otherwise)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._nlist is None:
            raise ValueError(f"nprobe only applies to IVF indexes; factory {self._factory!r} has no inverted lists")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"nprobe must be an int >= 1, got {value!r}")
        faiss_ops.set_nprobe(self._index, int(value))
        self._nprobe = int(value)

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        probe = f", nprobe={self._nprobe}" if self._nprobe is not None else ""
        return (
            f"FeatureIndex(count={len(self)}, dim={self.dim}, metric={self._metric!r}, "
            f"factory={self._factory!r}{probe}, layer={self._layer!r}, gpu={self.on_gpu})"
        )

    # ------------------------------------------------------------------ queries
    def search(
        self,
        features: Tensor | np.ndarray,
        k: int = 1,
        exclude_ids: Tensor | np.ndarray | list[int] | None = None,
        *,
        nprobe: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Return (distances B×k, dataset ids B×k) of the k nearest indexed vectors of each query row.

        `exclude_ids[b]` (one per query) is never returned for query b, so an image of S is not its own
        neighbour. Rows FAISS could not fill (IVF with a small nprobe) hold id -1 and distance inf.
        Tensor queries get results on their device (distances in their dtype). A per-call `nprobe`
        overrides `self.nprobe` for this call only (so concurrent searches must not share the index).
        """
        queries = _feature_matrix(features, "features", copy=False)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query features have dimension {queries.shape[1]}, the index holds dimension {self.dim}")
        exclude = None
        if exclude_ids is not None:
            exclude = as_id_array(exclude_ids, queries.shape[0], "exclude_ids", allow_negative=True)
        k = self._check_k(k, excluding=exclude is not None)
        if self._metric == "cosine":
            queries = _unit_rows(queries, "query features")
        dist, ids = self._search_ids(queries, k + 1 if exclude is not None else k, nprobe)
        if exclude is not None:
            dist, ids = _drop_excluded(dist, ids, exclude, k)
        return _like(dist, features, floating=True), _like(ids, features, floating=False)

    def search_images(
        self,
        model: nn.Module,
        x: Tensor,
        k: int = 1,
        exclude_ids: Tensor | np.ndarray | list[int] | None = None,
        *,
        nprobe: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed images `x` with `model` (eval mode, no grad) at the index's layer and `search` them."""
        self.verify_model(model)
        with torch.no_grad(), eval_mode(model):
            features = extract_features(model, x, self._layer or PENULTIMATE)
        return self.search(features, k, exclude_ids, nprobe=nprobe)

    def features_of(self, ids: Tensor | np.ndarray | list[int] | int) -> Tensor:
        """Return the stored raw float32 features of dataset `ids` (shape ids.shape + (D,))."""
        shape = tuple(ids.shape) if isinstance(ids, (Tensor, np.ndarray)) else np.shape(ids)
        flat = ids.reshape(-1) if isinstance(ids, (Tensor, np.ndarray)) else np.reshape(np.asarray(ids), -1)
        wanted = as_id_array(flat, int(np.prod(shape, dtype=np.int64)), "ids", allow_negative=True)
        slot = np.clip(np.searchsorted(self._sorted_ids, wanted), 0, len(self) - 1)
        found = self._sorted_ids[slot] == wanted
        if not found.all():
            missing = np.unique(wanted[~found])[:10].tolist()
            raise ValueError(f"dataset ids {missing} are not in the index ({len(self)} vectors)")
        out = torch.from_numpy(self._features[self._order[slot]]).reshape(*shape, self.dim)
        return out.to(ids.device) if isinstance(ids, Tensor) else out

    def verify_model(self, model: nn.Module) -> None:
        """Raise ValueError unless `model` gives this index's feature dimension and has its weights."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        dim = static_feature_dim(model, self._layer or PENULTIMATE)
        if dim is not None and dim != self.dim:
            raise ValueError(
                f"feature dimension mismatch: the index holds {self.dim}-D features but "
                f"{type(model).__name__} gives {dim}-D features at layer {self._layer or PENULTIMATE!r}"
            )
        if self._fingerprint is None:
            return
        key = state_version(model)
        if key == self._verified_state:
            return
        found = model_fingerprint(model)
        if found != self._fingerprint:
            raise ValueError(
                f"model mismatch: the index was built with a model whose weights fingerprint is "
                f"{self._fingerprint[:12]}…, this {type(model).__name__} has {found[:12]}…"
            )
        self._verified_state = key

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index, its raw features, ids and metadata to one checksummed file (atomically)."""
        from sslx import __version__

        meta = {
            "dim": self.dim,
            "count": len(self),
            "metric": self._metric,
            "factory": self._factory,
            "layer": self._layer,
            "fingerprint": self._fingerprint,
            "nprobe": self._nprobe,
            "sslx_version": __version__,
        }
        tensors = {
            "faiss_index": torch.from_numpy(faiss_ops.serialize(self._index)),
            "features": torch.from_numpy(self._features),
            "ids": torch.from_numpy(self._ids),
        }
        return write_payload(path, FORMAT, FORMAT_VERSION, meta, tensors)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None, *, device: DeviceLike = None) -> FeatureIndex:
        """Read a `save`d index; with `model`, refuse it unless the model matches (dimension, weights).

        `device` places the FAISS index; default: the model's device, else CPU.
        """
        meta, tensors = read_payload(path, FORMAT, FORMAT_VERSION)
        dim, count = _check_meta(meta, tensors, path)
        index = faiss_ops.deserialize(tensors["faiss_index"].numpy())
        if index.d != dim or index.ntotal != count:
            raise ValueError(f"FeatureIndex file {path} is corrupt: FAISS index has d={index.d}, ntotal={index.ntotal}")
        if device is None and model is not None:
            device = model_device(model)
        loaded = cls(
            index,
            tensors["features"].numpy(),
            tensors["ids"].numpy(),
            metric=meta["metric"],
            factory=meta["factory"],
            layer=meta["layer"],
            fingerprint=meta["fingerprint"],
            nprobe=meta["nprobe"],
            device=device,
        )
        if model is not None:
            loaded.verify_model(model)
        return loaded

    # ------------------------------------------------------------------ internals
    def _check_k(self, k: object, *, excluding: bool) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        limit = len(self) - 1 if excluding else len(self)
        if k > limit:
            extra = " (one vector may be excluded per query)" if excluding else ""
            raise ValueError(f"k={k} exceeds the {limit} searchable vectors of the index{extra}")
        return int(k)

    def _search_ids(self, queries: np.ndarray, k: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        previous = self._nprobe
        if nprobe is not None:
            self.nprobe = nprobe
        try:
            dist, pos = self._index.search(queries, k)
        finally:
            if nprobe is not None and previous is not None:
                self.nprobe = previous
        missing = pos < 0
        ids = np.where(missing, -1, self._ids[np.where(missing, 0, pos)])
        if self._metric == "cosine":
            dist = 1.0 - dist
        # float32 rounding can make the distance of a duplicate vector slightly negative
        dist = np.maximum(dist, 0.0)
        dist[missing] = np.inf
        return dist, ids


def _feature_matrix(features: object, name: str, *, copy: bool) -> np.ndarray:
    """Return `features` (Tensor or ndarray, N×D floating, finite, non-empty) as C-contiguous float32."""
    if isinstance(features, Tensor):
        if not features.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {features.dtype}")
        array = features.detach().to("cpu", torch.float32).numpy()
    elif isinstance(features, np.ndarray):
        if not np.issubdtype(features.dtype, np.floating):
            raise TypeError(f"{name} must be floating point, got dtype {features.dtype}")
        array = features.astype(np.float32, copy=False)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape N×D, got {type(features).__name__}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N×D), got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(array.shape)})")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return np.array(array, dtype=np.float32, order="C", copy=True) if copy else np.ascontiguousarray(array)


def _unit_rows(vectors: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{name} rows {zero[:10].tolist()} are zero vectors, which have no cosine direction")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def _drop_excluded(dist: np.ndarray, ids: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    # ids are unique in the index, so each row holds its excluded id at most once
    keep = ~((ids == exclude[:, None]) & (ids >= 0))
    keep[keep.all(axis=1), -1] = False
    return dist[keep].reshape(-1, k), ids[keep].reshape(-1, k)


def _like(values: np.ndarray, reference: object, *, floating: bool) -> Tensor:
    out = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32 if floating else np.int64))
    if not isinstance(reference, Tensor):
        return out
    return out.to(device=reference.device, dtype=reference.dtype if floating else torch.int64)


def _check_meta(meta: dict, tensors: dict[str, Tensor], path: object) -> tuple[int, int]:
    expected = {"dim": int, "count": int, "metric": str, "factory": str}
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"FeatureIndex file {path} is corrupt: metadata {key!r} is {meta.get(key)!r}")
    for key in ("layer", "fingerprint", "nprobe"):
        if key not in meta:
            raise ValueError(f"FeatureIndex file {path} is corrupt: metadata {key!r} is missing")
    faiss_ops.check_metric(meta["metric"])
    dim, count = meta["dim"], meta["count"]
    shapes = {"features": ((count, dim), torch.float32), "ids": ((count,), torch.int64), "faiss_index": (None, torch.uint8)}
    for key, (shape, dtype) in shapes.items():
        tensor = tensors.get(key)
        if tensor is None or tensor.dtype != dtype or (shape is not None and tuple(tensor.shape) != shape):
            found = None if tensor is None else (tuple(tensor.shape), tensor.dtype)
            raise ValueError(f"FeatureIndex file {path} is corrupt: {key!r} is {found}, expected {shape} {dtype}")
    return dim, count
