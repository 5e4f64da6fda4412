"""Shared helpers for the real-dataset readers: safe file access, resizing, ImageNet normalisation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def existing_file(path: PathLike, what: str) -> Path:
    """Return `path` as a Path, raising FileNotFoundError (naming `what` and the path) unless it is a file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if not p.is_file():
        raise FileNotFoundError(f"{what} is not a file: {p}")
    return p


def existing_dir(path: PathLike, what: str) -> Path:
    """Return `path` as a Path, raising FileNotFoundError (naming `what` and the path) unless it is a directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} is not a directory: {p}")
    return p


def is_image_file(path: Path) -> bool:
    """True when the file name has one of the image extensions (case-insensitive)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def open_rgb(path: PathLike) -> Image.Image:
    """Decode an image file fully into an RGB PIL image; unreadable files raise ValueError naming the file."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()  # decode now so truncated files fail here, with the file name
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {p}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {p}: {e}") from e


def open_index_png(path: PathLike) -> np.ndarray:
    """Read a label PNG (palette 'P' or greyscale 'L') as its H×W uint8 index array; colour PNGs are refused."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise ValueError(
                    f"label image {p} has mode {im.mode!r}; expected a palette ('P') or greyscale ('L') PNG "
                    "whose pixel values are class indices"
                )
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"label image not found: {p}") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read label image {p}: {e}") from e


def resize_image(image: Image.Image, size: int) -> Image.Image:
    """Resize an RGB image to size×size with bilinear interpolation."""
    return image.resize((size, size), Image.BILINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize an H×W uint8 label array to size×size with nearest-neighbour interpolation."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))


def to_normalized_tensor(image: Image.Image | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Convert an H×W×3 uint8 image to a normalised 3×H×W float32 tensor ((x/255 − mean) / std)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 uint8 image, got dtype {arr.dtype} and shape {arr.shape}")
    t = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div(255)
    m = torch.tensor(mean, dtype=t.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=t.dtype).view(-1, 1, 1)
    return t.sub(m).div(s)


def one_hot(label: int, num_classes: int) -> Tensor:
    """A num_classes float32 vector with 1 at `label` (all zeros when label is -1, i.e. unknown)."""
    v = torch.zeros(num_classes, dtype=torch.float32)
    if label >= 0:
        v[label] = 1.0
    return v


class EvalTransform:
    """PIL image → normalised tensor: shorter side to `resize`, centre crop `crop`, mean/std normalisation."""

    def __init__(
        self,
        resize: int = 256,
        crop: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if resize < 1 or crop < 1:
            raise ValueError(f"resize and crop must be positive, got resize={resize}, crop={crop}")
        self.resize, self.crop = int(resize), int(crop)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image) -> Tensor:
        """Apply the transform to one RGB PIL image."""
        image = TF.resize(image, [self.resize], interpolation=TF.InterpolationMode.BILINEAR)
        image = TF.center_crop(image, [self.crop, self.crop])
        return to_normalized_tensor(image, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, crop={self.crop})"


class ImageNormalization:
    """Mixin giving a dataset `mean`, `std`, `normalize(batch)` and `denormalize(batch)`."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def normalize(self, batch: Tensor) -> Tensor:
        """Map [0, 1] images (3×H×W or B×3×H×W) to the normalised space of this dataset's items."""
        return normalize(batch, self.mean, self.std)

    def denormalize(self, batch: Tensor) -> Tensor:
        """Map normalised images (3×H×W or B×3×H×W) back to [0, 1] (not clamped)."""
        return denormalize(batch, self.mean, self.std)
