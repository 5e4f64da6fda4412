"""Thin FAISS helpers: create, train, place on GPU, tune nprobe, (de)serialise."""
from __future__ import annotations

import warnings

import faiss
import numpy as np
import torch

METRICS = {"l2": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT}


def check_metric(metric: object) -> str:
    """Return `metric` if it is 'l2' or 'cosine', else raise."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return metric  # type: ignore[return-value]


def new_index(dim: int, factory: str, metric: str) -> faiss.Index:
    """Return an empty CPU index from a FAISS index_factory string."""
    if not isinstance(factory, str) or not factory.strip():
        raise TypeError(f"factory must be a FAISS index_factory string such as 'Flat', got {factory!r}")
    try:
        return faiss.index_factory(int(dim), factory, METRICS[check_metric(metric)])
    except RuntimeError as err:
        raise ValueError(f"FAISS cannot build index factory {factory!r} for dimension {dim}: {_faiss_reason(err)}") from err


def train(index: faiss.Index, vectors: np.ndarray, factory: str) -> None:
    """Train `index` on `vectors` when it needs training, with a clear error for too few points."""
    if index.is_trained:
        return
    needed = min_training_points(index)
    if vectors.shape[0] < needed:
        raise ValueError(
            f"index factory {factory!r} needs at least {needed} training vectors (one per centroid), "
            f"got {vectors.shape[0]}; use a smaller factory (e.g. fewer IVF lists) or 'Flat'"
        )
    try:
        index.train(vectors)
    except RuntimeError as err:
        raise ValueError(f"FAISS could not train {factory!r} on {vectors.shape[0]} vectors: {_faiss_reason(err)}") from err


def min_training_points(index: faiss.Index) -> int:
    """Return the fewest training vectors the coarse quantizer and product quantizer can cluster."""
    needed = 1
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needed = max(needed, int(ivf.nlist))
    for candidate in (index, ivf):
        if candidate is None:
            continue
        pq = getattr(faiss.downcast_index(candidate), "pq", None)
        if pq is not None:
            needed = max(needed, int(pq.ksub))
    return needed


def nlist(index: faiss.Index) -> int | None:
    """Return the number of inverted lists of a CPU IVF index, None for other index types."""
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else int(ivf.nlist)


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set how many inverted lists an IVF index visits per query."""
    space = faiss.GpuParameterSpace() if is_gpu(index) else faiss.ParameterSpace()
    space.set_index_parameter(index, "nprobe", int(nprobe))


def gpu_available(device: torch.device | None) -> bool:
    """True when `device` is CUDA and this FAISS build has GPUs."""
    return (
        device is not None
        and device.type == "cuda"
        and hasattr(faiss, "StandardGpuResources")
        and faiss.get_num_gpus() > 0
    )


def to_device(index: faiss.Index, device: torch.device | None) -> tuple[faiss.Index, object]:
    """Return (index, gpu_resources): a GPU copy of `index` when `device` allows it, else `index` itself."""
    if not gpu_available(device):
        return index, None
    resources = faiss.StandardGpuResources()
    try:
        return faiss.index_cpu_to_gpu(resources, device.index or 0, index), resources
    except RuntimeError as err:
        warnings.warn(f"FAISS has no GPU version of this index ({_faiss_reason(err)}); searching on CPU", stacklevel=3)
        return index, None


def is_gpu(index: faiss.Index) -> bool:
    """True for indexes that live on a GPU."""
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def serialize(index: faiss.Index) -> np.ndarray:
    """Return the index as a uint8 array (GPU indexes are copied to CPU first)."""
    return faiss.serialize_index(_cpu_view(index))


def deserialize(data: np.ndarray) -> faiss.Index:
    """Rebuild a CPU index from `serialize` output (only call on checksummed bytes)."""
    return faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))


def _cpu_view(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if is_gpu(index) else index


def _faiss_reason(err: Exception) -> str:
    # FAISS messages start with a long C++ signature; the reason is after the last "Error:"/":".
    text = str(err).strip()
    return text.rsplit("Error:", 1)[-1].strip() if "Error:" in text else text.rsplit(":", 1)[-1].strip()
