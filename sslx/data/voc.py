"""PASCAL VOC 2012 segmentation: images with class masks (0 background, c+1 class c, 255 ignore)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ._image_io import (
    ImageNormalization,
    PathLike,
    existing_dir,
    open_index_png,
    open_rgb,
    resize_image,
    resize_mask,
    to_normalized_tensor,
)

__all__ = ["VOCSegmentation2012", "VOC_CLASSES", "VOC_IGNORE"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_IGNORE = 255


class VOCSegmentation2012(ImageNormalization, Dataset):
    """Items `image` (3×size×size float32, ImageNet-normalised), `mask` (size×size int64: 0 background,
    c+1 for VOC class c, 255 = ignore/object border, kept), `labels` (20-dim multi-hot of the classes
    present), `label` (the class covering most pixels, -1 when none), `index`.

    `root` may be the folder holding `VOCdevkit/` (torchvision's layout), `VOCdevkit/` itself or
    `VOC2012/`. Labels are taken from the mask at its stored resolution; the image is resized
    bilinearly and the mask by nearest neighbour to size×size (aspect ratio not kept).
    """

    def __init__(self, root: PathLike, split: str = "val", size: int = 224) -> None:
        if not isinstance(split, str) or not split or "/" in split or "\\" in split:
            raise ValueError(f"split must be a split name such as 'train', 'val' or 'trainval', got {split!r}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.base = _find_voc2012(existing_dir(root, "VOC root"))
        self.split, self.size = split, int(size)
        self.classes = VOC_CLASSES
        self.num_classes = len(VOC_CLASSES)
        split_file = self.base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            available = sorted(p.stem for p in split_file.parent.glob("*.txt")) if split_file.parent.is_dir() else []
            raise FileNotFoundError(f"VOC split file not found: {split_file} (available splits: {available})")
        self.ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"VOC split file {split_file} lists no images")
        self.images = [self.base / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.masks = [self.base / "SegmentationClass" / f"{i}.png" for i in self.ids]
        for kind, paths in (("image", self.images), ("mask", self.masks)):
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} VOC {kind} files of split {split!r} are missing, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H×W×3 uint8) and mask (H×W uint8: 0..20, 255) at their stored resolution."""
        index = self._check_index(index)
        image = np.asarray(open_rgb(self.images[index]))
        mask = open_index_png(self.masks[index])
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {self.masks[index]} is {mask.shape} but image {self.images[index]} is {image.shape[:2]}")
        bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(self.num_classes + 1), VOC_IGNORE])
        if bad.size:
            raise ValueError(f"mask {self.masks[index]} holds values {bad[:10].tolist()}, expected 0..20 or 255")
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        image, mask = self.raw(index)
        counts = np.bincount(mask.ravel(), minlength=256)[1 : self.num_classes + 1]
        label = int(counts.argmax()) if counts.any() else -1
        return {
            "image": to_normalized_tensor(resize_image(Image.fromarray(image), self.size), self.mean, self.std),
            "label": label,
            "labels": torch.from_numpy((counts > 0).astype(np.float32)),
            "mask": torch.from_numpy(resize_mask(mask, self.size).astype(np.int64)),
            "index": index,
        }

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return index % n

    def __repr__(self) -> str:
        return f"VOCSegmentation2012({str(self.base)!r}, split={self.split!r}, images={len(self)}, size={self.size})"


def _find_voc2012(root: Path) -> Path:
    """The VOC2012 folder (holding JPEGImages/) under `root`, trying the usual nestings."""
    candidates = [root / "VOCdevkit" / "VOC2012", root / "VOC2012", root]
    for base in candidates:
        if (base / "JPEGImages").is_dir():
            return base
    raise FileNotFoundError(f"no VOC2012 folder with JPEGImages/ found; tried {[str(c) for c in candidates]}")
