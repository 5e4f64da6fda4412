"""Embed a whole reference set from a dataloader into a feature matrix plus dataset ids."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from sslx.neighbors.batches import split_batch
from sslx.neighbors.extract import extract_features, model_device


def embed_loader(model: nn.Module, loader: Iterable, layer: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return (N×D float32 features, N int64 ids) of every batch of `loader`, computed on the model's device.

    Batches move to the model's device; ids come from the batches' 'index' entries, or are running
    positions when batches carry none. Grad and train/eval mode are the caller's.
    """
    device = model_device(model)
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    features: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    seen, carries_ids = 0, None
    for batch in tqdm(loader, total=total, desc="Embedding reference set", unit="batch", disable=not progress):
        images, batch_ids = split_batch(batch)
        if carries_ids is None:
            carries_ids = batch_ids is not None
        elif carries_ids != (batch_ids is not None):
            raise ValueError("some batches carry dataset ids ('index') and others do not")
        count = images.shape[0]
        feats = extract_features(model, images.to(device), layer).detach().float().cpu().numpy()
        if features and feats.shape[1] != features[0].shape[1]:
            raise ValueError(f"feature dimension changed between batches: {features[0].shape[1]} then {feats.shape[1]}")
        features.append(feats)
        ids.append(batch_ids if batch_ids is not None else np.arange(seen, seen + count, dtype=np.int64))
        seen += count
    if not features:
        raise ValueError("the dataloader yielded no images: the reference set S is empty")
    return np.concatenate(features), np.concatenate(ids)
