"""Lightning feature extraction for big reference sets: Trainer.predict writes per-rank shards."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor, nn

from sslx.neighbors.batches import split_batch
from sslx.neighbors.extract import PENULTIMATE, extract_features
from sslx.neighbors.fingerprint import model_fingerprint
from sslx.neighbors.shard_files import rank_outputs, shard_stem, write_manifest, write_shard


class FeatureExtractor(pl.LightningModule):
    """LightningModule whose predict_step returns {'features': B×D float32, 'ids': B int64} of a batch."""

    def __init__(self, model: nn.Module, layer: str = PENULTIMATE) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        """Return the features of images `x` at this extractor's layer."""
        return extract_features(self.model, x, self.layer)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Return the float32 features and dataset ids of one {'image', 'index'} batch."""
        images, ids = split_batch(batch)
        if ids is None:
            raise ValueError(
                "the sharded path needs dataset ids in every batch (ranks see different samples): yield dicts "
                "with 'image' and 'index', e.g. by wrapping the dataset in sslx.neighbors.IndexedDataset"
            )
        return {"features": self(images).detach().float(), "ids": torch.from_numpy(ids)}


class ShardWriter(BasePredictionWriter):
    """Write each predict batch to features_rank{r}_batch{i}.npy / ids_rank{r}_batch{i}.npy, plus a manifest per rank.

    trainer = pl.Trainer(callbacks=[ShardWriter(out_dir)], ...)  # any devices / strategy
    trainer.predict(FeatureExtractor(model), loader, return_predictions=False)
    index = FeatureIndex.from_shards(out_dir)
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self._shards: list[dict] = []
        self._fingerprint: str | None = None
        self._dim: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse to mix this run's shards with files an earlier run left for the same rank."""
        if stage != "predict":
            return
        stale = rank_outputs(self.output_dir, trainer.global_rank)
        if stale:
            raise ValueError(
                f"{self.output_dir} already holds shards of rank {trainer.global_rank} ({stale[:3]}…); "
                "use an empty directory for each extraction run"
            )

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the model fingerprint that the manifest will carry."""
        if not isinstance(pl_module, FeatureExtractor):
            raise TypeError(f"ShardWriter works with sslx FeatureExtractor modules, got {type(pl_module).__name__}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._shards, self._dim = [], None
        self._fingerprint = model_fingerprint(pl_module.model)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write one batch's features and ids as a shard."""
        features = prediction["features"].cpu().numpy()
        ids = prediction["ids"].cpu().numpy()
        if self._dim is not None and features.shape[1] != self._dim:
            raise ValueError(f"feature dimension changed between batches: {self._dim} then {features.shape[1]}")
        self._dim = int(features.shape[1])
        stem = shard_stem(trainer.global_rank, batch_idx, dataloader_idx)
        self._shards.append(write_shard(self.output_dir, stem, features, ids))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write manifest_rank{r}.json, which marks this rank's shards as complete."""
        write_manifest(
            self.output_dir,
            trainer.global_rank,
            trainer.world_size,
            pl_module.layer,
            self._fingerprint,
            self._dim,
            self._shards,
        )
