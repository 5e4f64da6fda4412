"""LightningDataModules for the scenes benchmark and for user image folders (ImageFolder layout)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from sslx.data.scenes import DEFAULT_SIZES, SCENE_CLASSES, SPLITS, ScenesDataset, _check_int, collate_scenes
from sslx.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, check_mean_std, denormalize, normalize,
                                  pil_to_unit_tensor, resize_center_crop)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class _LoaderMixin:
    """DataLoader construction shared by both DataModules."""

    batch_size: int
    num_workers: int
    seed: int

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=collate_scenes, persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )


class ScenesDataModule(_LoaderMixin, pl.LightningDataModule):
    """Train/val/test splits of `ScenesDataset`; predict uses the test split in order."""

    def __init__(self, batch_size: int = 64, num_workers: int = 0, objects: str = "single",
                 sizes: dict[str, int] | None = None, seed: int = 0, resolution: int = 128, *,
                 pair_fraction: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, cache: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.num_workers = _check_int(num_workers, "num_workers", 0)
        self.seed = _check_int(seed, "seed", 0)
        sizes = dict(sizes or {})
        unknown = set(sizes) - set(SPLITS)
        if unknown:
            raise ValueError(f"sizes has unknown splits {sorted(unknown)}; expected keys among {tuple(SPLITS)}")
        # Datasets are cheap to build (scenes are generated on access), so build them now to fail early.
        self.datasets = {
            split: ScenesDataset(split, sizes.get(split, DEFAULT_SIZES[split]), seed, resolution, objects,
                                 pair_fraction=pair_fraction, mean=mean, std=std, cache=cache)
            for split in SPLITS
        }
        self.classes: tuple[str, ...] = SCENE_CLASSES
        self.num_classes = len(SCENE_CLASSES)
        self.mean, self.std = self.datasets["train"].mean, self.datasets["train"].std

    def train_dataloader(self) -> DataLoader:
        """Shuffled training scenes (order fixed by `seed`)."""
        return self._loader(self.datasets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation scenes in index order."""
        return self._loader(self.datasets["val"], shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test scenes in index order."""
        return self._loader(self.datasets["test"], shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Test scenes in index order."""
        return self._loader(self.datasets["test"], shuffle=False)


def _scan_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {str(root)!r} is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class subfolders (expected {root}/<class>/<image>)")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not files:
            raise ValueError(f"class folder {str(root / name)!r} contains no images "
                             f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((p, label) for p in files)
    return classes, samples


class ImageFolderDataset(Dataset):
    """Images in `root/<class>/<image>`, resized and centre-cropped, with optional binary masks."""

    def __init__(self, root: str | os.PathLike, masks_root: str | os.PathLike | None = None, resolution: int = 224,
                 resize: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.root = Path(root)
        self.resolution = _check_int(resolution, "resolution", 1)
        self.resize = round(self.resolution * 256 / 224) if resize is None else _check_int(resize, "resize", 1)
        if self.resize < self.resolution:
            raise ValueError(f"resize ({self.resize}) must be >= resolution ({self.resolution})")
        self.mean, self.std = check_mean_std(mean, std)
        classes, self.samples = _scan_image_folder(self.root)
        self.classes: tuple[str, ...] = tuple(classes)
        self.num_classes = len(classes)
        self.masks_root = None if masks_root is None else Path(masks_root)
        if self.masks_root is not None:
            self._check_masks(self.masks_root)

    def _mask_path(self, image_path: Path) -> Path:
        assert self.masks_root is not None
        return self.masks_root / image_path.parent.name / (image_path.stem + ".png")

    def _check_masks(self, masks_root: Path) -> None:
        if not masks_root.is_dir():
            raise FileNotFoundError(f"masks folder {str(masks_root)!r} does not exist or is not a directory")
        missing = [self._mask_path(p) for p, _ in self.samples if not self._mask_path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(self.samples)} images have no mask, "
                                    f"e.g. {str(missing[0])!r} (expected masks/<class>/<stem>.png)")

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def _open(path: Path, kind: str) -> Image.Image:
        try:
            with Image.open(path) as img:
                img.load()
                return img
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"cannot read {kind} {str(path)!r}: {err}") from err

    def __getitem__(self, index: int) -> dict[str, Tensor | int | str]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {str(self.root)!r}")
        i = int(index) % len(self)
        path, label = self.samples[i]
        img = self._open(path, "image").convert("RGB")
        image = pil_to_unit_tensor(resize_center_crop(img, self.resolution, self.resize, Image.BICUBIC))
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[label] = 1.0
        item: dict[str, Tensor | int | str] = {
            "image": normalize(image, self.mean, self.std), "label": label, "labels": labels, "index": i,
            "path": str(path),
        }
        if self.masks_root is not None:
            mask_path = self._mask_path(path)
            mask_img = self._open(mask_path, "mask")
            if mask_img.size != img.size:
                raise ValueError(f"mask {str(mask_path)!r} is {mask_img.size[0]}×{mask_img.size[1]} but its image "
                                 f"{str(path)!r} is {img.size[0]}×{img.size[1]}")
            if mask_img.mode not in ("1", "L", "P", "I", "I;16"):  # keep palette/label indices as they are
                mask_img = mask_img.convert("L")
            mask = resize_center_crop(mask_img, self.resolution, self.resize, Image.NEAREST)
            foreground = torch.from_numpy(np.asarray(mask, dtype=np.uint8) > 0)
            item["mask"] = foreground.long() * (label + 1)
        return item

    def normalize(self, batch: Tensor) -> Tensor:
        """[0,1] images → this dataset's normalised inputs."""
        return normalize(batch, self.mean, self.std)

    def denormalize(self, batch: Tensor) -> Tensor:
        """This dataset's normalised inputs → [0,1] images."""
        return denormalize(batch, self.mean, self.std)


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (train, val), taking about `val_fraction` of each class (at least one stays in train)."""
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(labels_arr):
        idx = rng.permutation(np.flatnonzero(labels_arr == c))
        n_val = min(int(round(val_fraction * len(idx))), len(idx) - 1)
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


class ImageFolderDataModule(_LoaderMixin, pl.LightningDataModule):
    """A user image folder: stratified train/val split; test and predict iterate over every image."""

    def __init__(self, root: str | os.PathLike, masks_root: str | os.PathLike | None = None, *,
                 val_fraction: float = 0.1, seed: int = 0, resolution: int = 224, resize: int | None = None,
                 batch_size: int = 64, num_workers: int = 0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.num_workers = _check_int(num_workers, "num_workers", 0)
        self.seed = _check_int(seed, "seed", 0)
        self.dataset = ImageFolderDataset(root, masks_root, resolution, resize, mean, std)
        self.classes, self.num_classes = self.dataset.classes, self.dataset.num_classes
        self.mean, self.std = self.dataset.mean, self.dataset.std
        train, val = stratified_split([label for _, label in self.dataset.samples], float(val_fraction), self.seed)
        self.train_set, self.val_set = Subset(self.dataset, train), Subset(self.dataset, val)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training part of the folder (order fixed by `seed`)."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Held-out part of the folder (empty when val_fraction is 0)."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Every image of the folder, in sorted order."""
        return self._loader(self.dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Every image of the folder, in sorted order."""
        return self._loader(self.dataset, shuffle=False)
