"""Probe data: train / val / held-out splits of the scenes benchmark or an image folder, sharded per process.

The three splits never share an image: the scenes come from the benchmark's separate train/val/test
splits; an image folder's stratified held-out part is shuffled with the seed and cut into disjoint
validation and test images. `ProbeDatasets.splits` records which images each split holds (written
into metrics.json by the probe job).

Sharding is done here (the Trainer must run with ``use_distributed_sampler=False``) so that one process
and N processes see the same global batches: each epoch's seeded permutation is cut into global batches
and process r takes items r, r+N, … of every batch. Evaluation splits are sharded r::N without padding,
so every image is evaluated exactly once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from sslx.data.scenes import SCENE_CLASSES, collate_scenes

SCENES = "scenes"


@dataclass
class ProbeDatasets:
    """The three splits a probe run uses, with what is needed to undo normalisation and read masks."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    has_masks: bool
    source: str
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes the probe predicts."""
        return len(self.classes)


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def scenes_datasets(resolution: int, mean: Sequence[float], std: Sequence[float], train_images: int,
                    val_images: int, eval_images: int, seed: int = 0) -> ProbeDatasets:
    """Procedural scenes: train / val / test splits of the given sizes (rendered once, kept in memory)."""
    from sslx.data.scenes import ScenesDataset

    sizes = {"train": _positive(train_images, "train_images"), "val": _positive(val_images, "val_images"),
             "test": _positive(eval_images, "eval_images")}
    splits = {split: ScenesDataset(split, size, seed, resolution, "single", mean=mean, std=std, cache="memory")
              for split, size in sizes.items()}
    first = splits["train"]
    described = {split: {"count": size, "images": f"scenes 0..{size - 1} of the benchmark's {split!r} split (seed {seed})"}
                 for split, size in sizes.items()}
    return ProbeDatasets(splits["train"], splits["val"], splits["test"], SCENE_CLASSES, first.mean, first.std,
                         has_masks=True, source=f"{SCENES} (seed {seed}, {resolution}px)", splits=described)


def held_out_sizes(available: int, val_images: int, eval_images: int) -> tuple[int, int]:
    """(validation, test) image counts drawn from `available` held-out images without overlap.

    Both requests are met when there are enough images; otherwise the held-out images are shared in
    proportion to the requests, each split keeping at least one image.
    """
    _positive(val_images, "val_images")
    _positive(eval_images, "eval_images")
    if isinstance(available, bool) or not isinstance(available, int) or available < 0:
        raise ValueError(f"available must be a non-negative int, got {available!r}")
    if available < 2:
        raise ValueError(f"the held-out part has {available} image(s); disjoint validation and test splits need at "
                         "least 2 (add images or raise the held-out fraction)")
    if available >= val_images + eval_images:
        return val_images, eval_images
    val = min(available - 1, max(1, round(available * val_images / (val_images + eval_images))))
    return val, available - val


def _folder_split(subset: Subset, root: Path) -> dict[str, Any]:
    """{"count", "indices" (into the folder's sorted image list), "paths" (relative to the folder)} of a split."""
    dataset, indices = subset.dataset, list(subset.indices)
    while isinstance(dataset, Subset):  # a split of the held-out Subset: map back to the folder's images
        indices = [int(dataset.indices[i]) for i in indices]
        dataset = dataset.dataset
    paths = [Path(dataset.samples[i][0]).resolve() for i in indices]
    return {"count": len(indices), "indices": indices,
            "paths": [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]}


def folder_datasets(root: str | os.PathLike, masks: str | os.PathLike | None, resolution: int,
                    mean: Sequence[float], std: Sequence[float], train_images: int, val_images: int,
                    eval_images: int, seed: int = 0, held_out_fraction: float = 0.2) -> ProbeDatasets:
    """An ImageFolder directory: a stratified held-out part, shuffled with `seed`, gives disjoint val and test images."""
    from sslx.data.datamodule import ImageFolderDataModule

    for value, name in ((train_images, "train_images"), (val_images, "val_images"), (eval_images, "eval_images")):
        _positive(value, name)
    try:
        module = ImageFolderDataModule(root, masks, val_fraction=held_out_fraction, seed=seed,
                                       resolution=resolution, mean=mean, std=std)
    except PermissionError as err:
        raise ValueError(f"cannot read data directory {str(root)!r}: {err}") from None
    if module.num_classes < 2:
        raise ValueError(f"data directory {str(root)!r} has {module.num_classes} class folder; a probe needs >= 2")
    held_out = module.val_set
    if len(held_out) == 0:
        raise ValueError(f"data directory {str(root)!r} has too few images per class for a held-out split "
                         f"({held_out_fraction:.0%} of each class rounds to none)")
    order = torch.randperm(len(module.train_set), generator=torch.Generator().manual_seed(seed)).tolist()
    train = Subset(module.train_set, sorted(order[:train_images]))
    n_val, n_test = held_out_sizes(len(held_out), val_images, eval_images)
    shuffled = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    val = Subset(held_out, sorted(shuffled[:n_val]))
    test = Subset(held_out, sorted(shuffled[n_val:n_val + n_test]))
    for name, split in (("training", train), ("held-out", test)):
        split[0]  # fail now, not mid-training, if the folder's images cannot be read
    folder = Path(root).resolve()
    splits = {name: _folder_split(split, folder) for name, split in (("train", train), ("val", val), ("test", test))}
    return ProbeDatasets(train, val, test, module.classes, module.mean, module.std, has_masks=masks is not None,
                         source=f"image folder {folder}", splits=splits)


def probe_datasets(data: str, masks: str | None, resolution: int, mean: Sequence[float], std: Sequence[float],
                   train_images: int, val_images: int, eval_images: int, seed: int = 0) -> ProbeDatasets:
    """`data` = "scenes" (the embedded benchmark) or an ImageFolder directory (with optional masks folder)."""
    if data == SCENES:
        if masks is not None:
            raise ValueError("--masks is only for image folders; the scenes come with exact masks")
        return scenes_datasets(resolution, mean, std, train_images, val_images, eval_images, seed)
    return folder_datasets(data, masks, resolution, mean, std, train_images, val_images, eval_images, seed)


class GlobalBatchSampler(Sampler[list[int]]):
    """Seeded per-epoch shuffle cut into global batches; this process yields every world-th item of each."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size = _positive(size, "size")
        self.batch_size = _positive(batch_size, "batch_size")
        self.world_size = _positive(world_size, "world_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the {world_size} processes sharing it")
        self.seed, self.rank, self.epoch = seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation is drawn (called by Lightning before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        # A last, partial global batch is kept when every process gets at least one image of it.
        return self.size // self.batch_size + int(self.size % self.batch_size >= self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        for start in range(0, self.batch_size * len(self), self.batch_size):
            yield order[start:start + self.batch_size][self.rank::self.world_size].tolist()


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, … of range(size), in order, without padding."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.size, self.rank, self.world_size = size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))


class ProbeDataModule(pl.LightningDataModule):
    """Loaders for `ProbeDatasets`, sharded by this process's rank (run with use_distributed_sampler=False)."""

    def __init__(self, datasets: ProbeDatasets, batch_size: int = 64, eval_batch_size: int = 32,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.datasets = datasets
        self.batch_size = _positive(batch_size, "batch_size")
        self.eval_batch_size = _positive(eval_batch_size, "eval_batch_size")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.num_workers, self.seed = num_workers, seed

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _check_shardable(self, dataset: Dataset, what: str) -> None:
        world = self._rank_world()[1]
        if len(dataset) < world:
            raise ValueError(f"the {what} split has {len(dataset)} images, fewer than the {world} processes")

    def _loader(self, dataset: Dataset, **kwargs: object) -> DataLoader:
        return DataLoader(dataset, num_workers=self.num_workers, collate_fn=collate_scenes,
                          persistent_workers=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        """Seeded global batches of `batch_size`, this process's share of each."""
        rank, world = self._rank_world()
        train = self.datasets.train
        self._check_shardable(train, "training")
        return self._loader(train, batch_sampler=GlobalBatchSampler(len(train), self.batch_size, self.seed, rank, world))

    def statistics_dataloader(self) -> DataLoader:
        """This process's shard of every training image, in order (for the feature statistics)."""
        rank, world = self._rank_world()
        train = self.datasets.train
        return self._loader(train, sampler=ShardSampler(len(train), rank, world), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        """This process's shard of the validation images."""
        rank, world = self._rank_world()
        self._check_shardable(self.datasets.val, "validation")
        return self._loader(self.datasets.val, sampler=ShardSampler(len(self.datasets.val), rank, world),
                            batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        """This process's shard of the held-out images that are explained and scored."""
        rank, world = self._rank_world()
        self._check_shardable(self.datasets.test, "held-out")
        return self._loader(self.datasets.test, sampler=ShardSampler(len(self.datasets.test), rank, world),
                            batch_size=self.eval_batch_size)
