"""LinearProbe: a supervised linear classifier on one frozen layer of a self-supervised network.

Per-layer protocol (Gidaris et al.'s RotNet probes, ssl_checkpoints.md §5.3): the layer's post-ReLU map
→ AdaptiveMaxPool2d(p×p) → BatchNorm2d(C, affine=False) → flatten → Linear(C·p·p, K).

Choices made here (recorded in every results file through `probe_description`):
- p = min(side, round(sqrt(target_features / C))): C·p·p near `target_features` (default 9216, the
  AlexNet protocol's ≈9k features), never more than the map's side. At 224 px with RotNet's widths
  (64-192-384-256-256) this reproduces Gidaris et al.'s p = 12, 7, 5, 6, 6 exactly. For the embedded
  128-px RotNet (widths 32-64-96-64-64, maps 31-15-7-7-7) it gives p = 17, 12, 7, 7, 7, i.e.
  9248, 9216, 4704, 3136, 3136 features (conv3-5 keep their whole 7×7 map).
- The BatchNorm's statistics are the exact mean and (population) variance of the pooled features over
  the training set, computed in one pass before the first epoch (summed across processes), and the
  BatchNorm stays in eval mode. Training therefore optimises the Linear layer alone on fixed, standardised
  features: deterministic, and the same with one or several processes (per-batch statistics would differ
  between a 64-image batch and two 32-image shards).
- The loss is the cross-entropy averaged over the *global* batch (all processes), so DDP's gradient
  averaging gives exactly the single-process gradient.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.aggregation import MeanMetric

from sslx._validate import check_image_batch

TARGET_FEATURES = 9216  # the AlexNet per-layer protocol's feature count at 224 px (256·6·6)
OPTIMIZERS = ("sgd", "adam")


def probe_pool_size(channels: int, side: int, target_features: int = TARGET_FEATURES) -> int:
    """Pooled side p for a C×side×side map: C·p·p near `target_features`, at most `side`, at least 1."""
    for name, value in (("channels", channels), ("side", side), ("target_features", target_features)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return max(1, min(side, round(math.sqrt(target_features / channels))))


def probe_head(channels: int, pool: int, num_classes: int) -> nn.Sequential:
    """AdaptiveMaxPool2d(pool) → BatchNorm2d(channels, affine=False) → Flatten → Linear(channels·pool², K)."""
    return nn.Sequential(OrderedDict(
        pool=nn.AdaptiveMaxPool2d(pool),
        norm=nn.BatchNorm2d(channels, affine=False),
        flatten=nn.Flatten(1),
        linear=nn.Linear(channels * pool * pool, num_classes),
    ))


def explainable_probe(trunk: nn.Module, channels: int, pool: int, num_classes: int) -> nn.Sequential:
    """The plain network pixels → probe logits: trunk, then the probe head (fresh weights, eval mode)."""
    head = probe_head(channels, pool, num_classes)
    return nn.Sequential(OrderedDict(trunk=trunk, **dict(head.named_children()))).eval()


class LinearProbe(pl.LightningModule):
    """Linear classifier on the frozen output of `model.truncate(layer)`; logs loss and accuracy."""

    def __init__(self, model: nn.Module, layer: str, num_classes: int, *, input_size: int | None = None,
                 target_features: int = TARGET_FEATURES, pool: int | None = None, optimizer: str = "sgd",
                 lr: float = 0.01, weight_decay: float = 5e-4, momentum: float = 0.9,
                 cache_features: bool = True) -> None:
        super().__init__()
        if not hasattr(model, "truncate") or not hasattr(model, "layers"):
            raise TypeError(f"model must be an ssl_models model with .truncate(layer) and .layers, "
                            f"got {type(model).__name__}")
        if layer not in model.layers:
            raise ValueError(f"unknown layer {layer!r}; probe-able layers are {tuple(model.layers)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if input_size is None:
            input_size = getattr(getattr(model, "preprocess", None), "input_size", None)
            if input_size is None:
                raise ValueError("input_size is needed: the model has no .preprocess.input_size")
        self.save_hyperparameters(ignore=["model"])
        self.layer = layer
        self.num_classes = num_classes
        # A private frozen copy: freezing must not change the caller's model.
        self.trunk = copy.deepcopy(model.truncate(layer)).eval().requires_grad_(False)
        param = next(self.trunk.parameters(), None)
        probe_input = torch.zeros(1, 3, input_size, input_size,
                                  dtype=param.dtype if param is not None else torch.float32)
        with torch.no_grad():
            feature = self.trunk(probe_input)
        if feature.dim() != 4:
            raise ValueError(f"layer {layer!r} gives a {feature.dim()}-D output; a probe needs a B×C×H×W map")
        self.feature_shape = tuple(int(s) for s in feature.shape[1:])
        channels, height, width = self.feature_shape
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
            raise ValueError(f"pool must be a positive int or None (automatic), got {pool!r}")
        self.pool_size = pool if pool is not None else probe_pool_size(channels, min(height, width), target_features)
        self.head = probe_head(channels, self.pool_size, num_classes)
        self.head.norm.eval()  # fixed statistics (see the module docstring); Lightning keeps modes as they are
        self.cache_features = cache_features
        self._feature_cache: dict[tuple[str, int], Tensor] = {}
        self.register_buffer("stats_ready", torch.zeros(()))  # 1 once the BatchNorm statistics are set
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()

    # ---- structure ---------------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        """Inputs of the probe's Linear layer (C·p·p)."""
        return self.feature_shape[0] * self.pool_size ** 2

    def train(self, mode: bool = True) -> "LinearProbe":
        """Switch train/eval mode; the trunk and the probe's BatchNorm always stay in eval mode."""
        super().train(mode)
        self.trunk.eval()
        self.head.norm.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Probe logits B×K for a batch of normalised images."""
        check_image_batch(x, "x", channels=3)
        with torch.no_grad():
            features = self.trunk(x)
        return self.head(features)

    def pooled_features(self, batch: dict[str, Tensor], split: str) -> Tensor:
        """Pooled trunk features B×C×p×p of a batch, cached per (split, item index) when items carry one.

        The trunk is frozen and the inputs are not augmented, so an image's features never change:
        computing them once instead of every epoch makes the epochs after the first nearly free.
        """
        images = check_image_batch(batch["image"], "image", channels=3)
        keys = batch.get("index") if self.cache_features else None
        if keys is None:
            with torch.no_grad():
                return self.head.pool(self.trunk(images))
        keys = [(split, int(k)) for k in keys.tolist()]
        missing = [i for i, key in enumerate(keys) if key not in self._feature_cache]
        if missing:
            with torch.no_grad():
                fresh = self.head.pool(self.trunk(images[missing]))
            for i, features in zip(missing, fresh):
                self._feature_cache[keys[i]] = features
        return torch.stack([self._feature_cache[key] for key in keys])

    def _classify_pooled(self, pooled: Tensor) -> Tensor:
        head = self.head
        return head.linear(head.flatten(head.norm(pooled)))

    def explainable(self) -> nn.Sequential:
        """A detached eval-mode copy (trunk, pool, norm, flatten, linear) that AGF explains end to end."""
        net = explainable_probe(copy.deepcopy(self.trunk), self.feature_shape[0], self.pool_size, self.num_classes)
        weight = self.head.linear.weight
        net = net.to(device=weight.device, dtype=weight.dtype)
        net.load_state_dict(OrderedDict(
            [(f"trunk.{k}", v) for k, v in self.trunk.state_dict().items()]
            + list(self.head.state_dict().items())))
        return net.requires_grad_(False).eval()

    def description(self) -> dict[str, Any]:
        """Probe geometry for results files: layer, feature map shape, pooled side, feature count."""
        return {"layer": self.layer, "feature_shape": list(self.feature_shape), "pool": self.pool_size,
                "num_features": self.num_features, "num_classes": self.num_classes}

    # ---- BatchNorm statistics ------------------------------------------------------------------
    def on_train_start(self) -> None:
        if float(self.stats_ready) == 0:
            loader = self.trainer.datamodule.statistics_dataloader()
            rank_zero_info(f"[sslx.probe] {self.layer}: feature statistics of {len(loader.dataset)} training images "
                           "(first pass; later epochs reuse the features)")
            self.fit_feature_statistics(loader)

    def on_train_epoch_start(self) -> None:
        # Guards against a caller (or a mode restore) having switched the frozen parts to training mode.
        self.trunk.eval()
        self.head.norm.eval()

    @torch.no_grad()
    def fit_feature_statistics(self, loader: Any) -> None:
        """Set the BatchNorm's running mean/var to the exact statistics of the pooled features in `loader`."""
        channels = self.feature_shape[0]
        sums = torch.zeros(3, channels, dtype=torch.float64, device=self.device)  # count, Σx, Σx²
        for batch in loader:
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            pooled = self.pooled_features(batch, "train").double()
            sums[0] += pooled.shape[0] * pooled.shape[2] * pooled.shape[3]
            sums[1] += pooled.sum(dim=(0, 2, 3))
            sums[2] += pooled.square().sum(dim=(0, 2, 3))
        if self._world_size() > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        if float(sums[0, 0]) == 0:
            raise ValueError("no training images to compute the probe's feature statistics from")
        mean = sums[1] / sums[0]
        var = (sums[2] / sums[0] - mean.square()).clamp(min=0)
        norm = self.head.norm
        norm.running_mean.copy_(mean.to(norm.running_mean.dtype))
        norm.running_var.copy_(var.to(norm.running_var.dtype))
        self.stats_ready.fill_(1)

    # ---- training ------------------------------------------------------------------------------
    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _global_count(self, n: int) -> Tensor:
        count = torch.tensor(float(n), device=self.device)
        if self._world_size() > 1:
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        return count

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self._classify_pooled(self.pooled_features(batch, "train"))
        labels = batch["label"]
        world = self._world_size()
        # Sum over this shard / global count, times world size: DDP's gradient mean is then the global mean.
        loss = F.cross_entropy(logits, labels, reduction="sum") * world / self._global_count(labels.numel())
        self.train_acc(logits.detach(), labels)
        self.log(f"{self.layer}/train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{self.layer}/train/accuracy", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self._classify_pooled(self.pooled_features(batch, "val"))
        labels = batch["label"]
        self.val_loss.update(F.cross_entropy(logits, labels), weight=labels.numel())
        self.val_acc(logits, labels)
        self.log(f"{self.layer}/val/loss", self.val_loss, on_epoch=True)
        self.log(f"{self.layer}/val/accuracy", self.val_acc, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        params = list(self.head.linear.parameters())
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0,
                                  weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        epochs = max(1, int(self._trainer.max_epochs or 1)) if self._trainer is not None else 1
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
