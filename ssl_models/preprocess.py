"""Input normalisation that a checkpoint expects (mean/std per channel and crop size)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sslx._validate import check_image_batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR20_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR20_STD = (0.2675, 0.2565, 0.2761)


@dataclass(frozen=True)
class Preprocess:
    """Per-channel normalisation and the square input size (crop side, pixels) a model was trained with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")

    def __call__(self, x: Tensor) -> Tensor:
        """Normalise a B×C×H×W batch of [0,1] pixel values; dtype and device follow `x`."""
        check_image_batch(x, "x", channels=len(self.mean))
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"x must hold pixel values in [0, 1], got min {lo:.4g} and max {hi:.4g} "
                "(0-255 images must be divided by 255; clamp overshoot from bicubic resizing)"
            )
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std
