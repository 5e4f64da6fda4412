"""Image normalisation and resize/crop helpers shared by the sslx datasets."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sslx._validate import check_image_batch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return (mean, std) as 3-tuples of floats, or raise if they are not valid per-channel statistics."""
    out = []
    for name, values in (("mean", mean), ("std", std)):
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, Tensor)):
            raise TypeError(f"{name} must be a sequence of 3 floats, got {type(values).__name__}")
        vals = tuple(float(v) for v in values)
        if len(vals) != 3:
            raise ValueError(f"{name} must have 3 values (one per RGB channel), got {len(vals)}")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"{name} must be finite, got {vals}")
        out.append(vals)
    if min(out[1]) <= 0:
        raise ValueError(f"std must be positive, got {out[1]}")
    return out[0], out[1]


def _stats_like(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    m, s = check_mean_std(mean, std)
    shape = (3, 1, 1)
    return (torch.tensor(m, dtype=x.dtype, device=x.device).view(shape),
            torch.tensor(s, dtype=x.dtype, device=x.device).view(shape))


def _check_images(x: object, name: str) -> Tensor:
    if isinstance(x, Tensor) and x.dim() == 3:
        check_image_batch(x.unsqueeze(0), name, channels=3)
        return x
    return check_image_batch(x, name, channels=3)


def normalize(x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Map [0,1] RGB images (3×H×W or B×3×H×W) to (x − mean) / std."""
    x = _check_images(x, "images")
    m, s = _stats_like(x, mean, std)
    return (x - m) / s


def denormalize(x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Invert `normalize`: map normalised images (3×H×W or B×3×H×W) back to [0,1] RGB."""
    x = _check_images(x, "images")
    m, s = _stats_like(x, mean, std)
    return x * s + m


def resize_center_crop(img: Image.Image, resolution: int, resize: int, resample: int) -> Image.Image:
    """Resize so the shorter side is `resize`, then crop the central resolution×resolution square."""
    w, h = img.size
    scale = resize / min(w, h)
    new_w, new_h = max(resize, round(w * scale)), max(resize, round(h * scale))
    img = img.resize((new_w, new_h), resample=resample)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def pil_to_unit_tensor(img: Image.Image) -> Tensor:
    """Convert an RGB PIL image to a 3×H×W float32 tensor in [0,1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
