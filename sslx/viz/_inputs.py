"""Turn user tensors/arrays into validated float64 numpy arrays for drawing."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sslx._validate import check_image_batch

# Denormalised images may overshoot [0, 1] slightly (bicubic resizing); more than this means wrong mean/std.
_IMAGE_RANGE_TOLERANCE = 0.05


def as_float_array(x: object, name: str) -> np.ndarray:
    """Return `x` (torch tensor or numpy array) as a finite float64 numpy array."""
    if isinstance(x, Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        arr = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    elif isinstance(x, np.ndarray):
        if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        arr = x.astype(np.float64)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return arr


def map_batch(heatmap: object, name: str = "heatmap") -> tuple[np.ndarray, bool]:
    """Return (B×H×W float64 maps, whether the input was a single H×W map) from H×W, B×H×W or B×1×H×W."""
    arr = as_float_array(heatmap, name)
    if arr.ndim == 2:
        return arr[None], True
    if arr.ndim == 3:
        return arr, False
    if arr.ndim == 4 and arr.shape[1] == 1:
        return arr[:, 0], False
    raise ValueError(f"{name} must be H×W, B×H×W or B×1×H×W, got shape {arr.shape}")


def single_map(heatmap: object, name: str = "heatmap") -> np.ndarray:
    """Return one H×W float64 map from H×W, 1×H×W or 1×1×H×W."""
    maps, _ = map_batch(heatmap, name)
    if maps.shape[0] != 1:
        raise ValueError(f"{name} must hold a single map, got a batch of {maps.shape[0]} (shape {np.shape(heatmap)})")
    return maps[0]


def map_dict(maps: object, name: str, batch: int | None = None) -> dict[str, np.ndarray]:
    """Validate a non-empty {label: maps} dict; every entry becomes B×H×W with B == `batch` when given."""
    if not isinstance(maps, Mapping):
        raise TypeError(f"{name} must be a dict of label -> heatmap tensor, got {type(maps).__name__}")
    if len(maps) == 0:
        raise ValueError(f"{name} is empty: give at least one heatmap")
    out: dict[str, np.ndarray] = {}
    for label, value in maps.items():
        if not isinstance(label, str):
            raise TypeError(f"{name} keys must be str labels, got {type(label).__name__} ({label!r})")
        arr, _ = map_batch(value, f"{name}[{label!r}]")
        if batch is not None and arr.shape[0] != batch:
            raise ValueError(f"{name}[{label!r}] has {arr.shape[0]} maps but there are {batch} images")
        out[label] = arr
    return out


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize B×h×w maps to B×H×W (no-op when the size already matches)."""
    if maps.shape[-2:] == tuple(size):
        return maps
    resized = F.interpolate(torch.from_numpy(maps)[:, None], size=size, mode="bilinear", align_corners=False)
    return resized[:, 0].numpy()


def _channel_stats(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be 3 finite per-channel values, got {values!r}")
    return arr


def image_batch(images: object, name: str = "images", mean: object = None, std: object = None) -> np.ndarray:
    """Return B×3×H×W images as B×H×W×3 float64 in [0, 1], denormalised with mean/std when given."""
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    x = check_image_batch(x, name, channels=3)
    arr = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std to denormalise images, or neither")
    if mean is not None:
        mean_arr, std_arr = _channel_stats(mean, "mean"), _channel_stats(std, "std")
        if (std_arr <= 0).any():
            raise ValueError(f"std must be positive, got {std_arr.tolist()}")
        arr = arr * std_arr[None, :, None, None] + mean_arr[None, :, None, None]
    low, high = float(arr.min()), float(arr.max())
    if low < -_IMAGE_RANGE_TOLERANCE or high > 1 + _IMAGE_RANGE_TOLERANCE:
        hint = "check mean/std" if mean is not None else "pass mean/std for normalised images; divide 0-255 images by 255"
        raise ValueError(f"{name} values span [{low:.3g}, {high:.3g}], expected [0, 1] ({hint})")
    return np.clip(arr, 0.0, 1.0).transpose(0, 2, 3, 1)


def single_image(image: object, name: str = "image", mean: object = None, std: object = None) -> np.ndarray:
    """Return one 3×H×W (or 1×3×H×W) image as H×W×3 float64 in [0, 1]."""
    x = torch.as_tensor(image) if isinstance(image, np.ndarray) else image
    if isinstance(x, Tensor) and x.dim() == 3:
        x = x[None]
    elif isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] != 1:
        raise ValueError(f"{name} must be a single image (3×H×W or 1×3×H×W), got shape {tuple(x.shape)}")
    elif isinstance(x, Tensor) and x.dim() != 4:
        raise ValueError(f"{name} must be 3×H×W or 1×3×H×W, got shape {tuple(x.shape)}")
    return image_batch(x, name, mean, std)[0]


def row_labels(titles: Sequence[str] | None, count: int) -> list[str | None]:
    """Validate optional per-row titles (one per image)."""
    if titles is None:
        return [None] * count
    if isinstance(titles, str) or not isinstance(titles, Sequence):
        raise TypeError(f"titles must be a list of {count} strings, got {type(titles).__name__}")
    if len(titles) != count:
        raise ValueError(f"got {len(titles)} titles for {count} images")
    return [str(t) for t in titles]
