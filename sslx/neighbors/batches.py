"""Split reference-set batches into images and dataset ids."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


def split_batch(batch: object) -> tuple[Tensor, np.ndarray | None]:
    """Return (images, ids) of a batch: a dict with 'image' and 'index', an (image, ...) tuple or a bare tensor.

    ids is an int64 array, or None when the batch carries no dataset ids.
    """
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ValueError(f"batch dict must have an 'image' entry, got keys {sorted(map(str, batch))}")
        images, raw_ids = batch["image"], batch.get("index")
    elif isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("batch is an empty tuple; expected (image, ...)")
        images, raw_ids = batch[0], None
    else:
        images, raw_ids = batch, None
    if not isinstance(images, Tensor):
        raise TypeError(f"batch images must be a torch.Tensor, got {type(images).__name__}")
    if raw_ids is None:
        return images, None
    return images, as_id_array(raw_ids, images.shape[0], "batch['index']")


def as_id_array(raw: object, count: int, name: str, *, allow_negative: bool = False) -> np.ndarray:
    """Return `raw` (tensor, array or list of ints) as a 1-D int64 array of length `count`."""
    if isinstance(raw, Tensor):
        if raw.is_floating_point() or raw.is_complex() or raw.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer dataset ids, got dtype {raw.dtype}")
        arr = raw.detach().cpu().numpy()
    else:
        arr = np.asarray(raw)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must hold integer dataset ids, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    arr = arr.astype(np.int64, copy=False)
    if arr.shape[0] != count:
        raise ValueError(f"{name} has {arr.shape[0]} ids for {count} images")
    if count and not allow_negative and int(arr.min()) < 0:
        raise ValueError(f"{name} contains negative ids ({int(arr.min())}); dataset ids must be >= 0")
    return arr


class IndexedDataset(Dataset):
    """Wrap a dataset of images or (image, ...) samples so that it yields {'image', 'index'} dicts."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        image = sample[0] if isinstance(sample, (tuple, list)) else sample
        return {"image": image, "index": index}
