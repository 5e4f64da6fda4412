"""Shared pieces of the embedded-model training scripts: seeding, Lightning trainer, loaders, augmentation, checks."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "ssl_models" / "assets"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling experiment modules import by name

from scene_tensors import SceneTensors, load_split, load_views, to_input  # noqa: E402
from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

__all__ = ["ASSETS", "ROOT", "Clock", "EpochLog", "OneCycleModule", "SceneTensors", "add_run_options", "agf_check",
           "batched", "class_accuracy", "color_augment", "file_mb", "hungarian_accuracy", "load_split", "load_views", "make_trainer",
           "predict", "random_flip", "random_shift", "setup", "tensor_loader", "to_input", "write_report"]


def add_run_options(parser: argparse.ArgumentParser, *, lr: float, weight_decay: float, out: str | None,
                    out_help: str | None = None, lr_help: str = "peak one-cycle AdamW learning rate",
                    probe: bool = False) -> None:
    """The options every training script has: optimiser, seed, threads, output file (and the linear probe's size)."""
    parser.add_argument("--lr", type=float, default=lr, help=lr_help)
    parser.add_argument("--weight-decay", type=float, default=weight_decay)
    if probe:
        parser.add_argument("--probe-train-size", type=int, default=9600, help="train scenes for the linear probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=45.0,
                        help="safety stop: training ends after this long even if epochs remain")
    parser.add_argument("--stop-after-epochs", type=int, default=None,
                        help="train only the first N epochs of the planned schedule (the schedule still spans all)")
    parser.add_argument("--out", default=out, help=out_help)


def setup(seed: int, threads: int = 2) -> None:
    """Fix every seed, use `threads` CPU threads and deterministic kernels."""
    torch.set_num_threads(threads)
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True)


class Clock:
    """Wall-clock and process CPU seconds since creation (on a shared machine both grow; wall-clock more)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.time(), time.process_time()

    def seconds(self) -> tuple[float, float]:
        """(wall, cpu) seconds elapsed."""
        return time.time() - self.wall, time.process_time() - self.cpu


class EpochLog(pl.Callback):
    """Print the logged metrics and the elapsed wall-clock / CPU time after every training epoch."""

    def __init__(self) -> None:
        self.clock = Clock()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        wall, cpu = self.clock.seconds()
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {metrics} "
              f"elapsed {wall:.0f}s wall, {cpu:.0f}s cpu", flush=True)


def make_trainer(max_epochs: int, max_minutes: float = 45.0, callbacks: Iterable[pl.Callback] = (),
                 stop_after_epochs: int | None = None) -> pl.Trainer:
    """A CPU Lightning trainer: no logger files, no checkpoints, deterministic; `max_minutes` is only a safety stop."""
    if stop_after_epochs is not None:
        max_epochs = min(max_epochs, stop_after_epochs)
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, deterministic=True, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, max_time={"minutes": max_minutes},
        callbacks=[EpochLog(), *callbacks],
    )


def tensor_loader(*tensors: Tensor, batch_size: int, seed: int, shuffle: bool = True,
                  drop_last: bool = True) -> DataLoader:
    """A DataLoader over in-memory tensors; the shuffle order is fixed by `seed`."""
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=0, generator=torch.Generator().manual_seed(seed) if shuffle else None)


OPTIMIZERS = ("sgd", "adamw")


class OneCycleModule(pl.LightningModule):
    """A LightningModule trained with SGD (Nesterov) or AdamW and a per-step one-cycle learning-rate schedule."""

    def __init__(self, lr: float, weight_decay: float, total_steps: int, optimizer: str = "sgd") -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.lr, self.weight_decay, self.total_steps, self.optimizer_name = lr, weight_decay, total_steps, optimizer

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for n, p in self.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.named_parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.optimizer_name == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=self.lr)
        else:
            optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=0.9, nesterov=True)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=self.total_steps,
                                                       pct_start=0.2)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def random_flip(x: Tensor) -> Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def random_shift(x: Tensor, max_shift: int) -> Tensor:
    """Translate each image by its own random integer offset in [−max_shift, max_shift] (edge pixels repeat)."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (b, 1), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (b, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h) + dy).view(b, 1, h, 1).expand(b, c, h, w + 2 * max_shift)
    shifted = padded.gather(2, rows)
    cols = (torch.arange(w, device=x.device).view(1, w) + dx).view(b, 1, 1, w).expand(b, c, h, w)
    return shifted.gather(3, cols)


def color_augment(images: Tensor, gray_p: float = 0.2, strength: float = 0.4, permute: bool = True) -> Tensor:
    """uint8 scenes → normalised inputs with per-image colour changes: channel permutation (unless `permute` is
    False), brightness, contrast, saturation and random grayscale (colour carries no class information)."""
    b = images.shape[0]
    x = images.float() / 255
    if permute:
        perms = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], device=x.device)
        order = perms[torch.randint(0, 6, (b,), device=x.device)].view(b, 3, 1, 1).expand_as(x)
        x = x.gather(1, order)

    def factor() -> Tensor:
        return 1 + strength * (2 * torch.rand(b, 1, 1, 1, device=x.device) - 1)

    luma = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    gray = (x * luma).sum(1, keepdim=True)
    x = gray + factor() * (x - gray)                                    # saturation
    x = x * factor()                                                    # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + factor() * (x - mean)                                    # contrast
    to_gray = torch.rand(b, 1, 1, 1, device=x.device) < gray_p
    x = torch.where(to_gray, (x * luma).sum(1, keepdim=True).expand_as(x), x)
    mean_t = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.clamp(0, 1) - mean_t) / std_t


def batched(n: int, batch_size: int) -> Iterable[slice]:
    """Slices covering 0..n-1 in steps of `batch_size`."""
    return (slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size))


@torch.no_grad()
def predict(fn: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 200) -> Tensor:
    """Concatenated `fn(to_input(batch))` over uint8 scenes (call with the model in eval mode)."""
    return torch.cat([fn(to_input(images[s])) for s in batched(len(images), batch_size)])


def class_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((logits.argmax(1) == labels).double().mean())


def hungarian_accuracy(pred: Tensor, labels: Tensor, num_clusters: int, num_classes: int = 12) -> float:
    """Accuracy of the best one-to-one matching between clusters and classes (Hungarian).

    With more clusters than classes each class is matched to one cluster; the other clusters count as wrong.
    """
    from scipy.optimize import linear_sum_assignment

    counts = torch.zeros(num_clusters, num_classes, dtype=torch.long)
    counts.index_put_((pred.cpu(), labels.cpu()), torch.ones_like(pred, device="cpu"), accumulate=True)
    rows, cols = linear_sum_assignment(-counts.numpy())
    return float(counts[rows, cols].sum()) / len(pred)


def agf_check(model: nn.Module, images: Tensor) -> Tensor:
    """Run sslx.AGF on a few uint8 scenes; raise unless the heatmaps are finite and not all zero."""
    from sslx import AGF

    model.eval()
    maps = AGF(model).attribute(to_input(images))
    if maps.shape != (images.shape[0], 1, *images.shape[2:]) or not torch.isfinite(maps).all():
        raise RuntimeError(f"AGF returned a bad map: shape {tuple(maps.shape)}, finite={bool(torch.isfinite(maps).all())}")
    if not bool((maps.abs().flatten(1).amax(1) > 0).all()):
        raise RuntimeError("AGF returned an all-zero map")
    return maps


def file_mb(path: str | os.PathLike) -> float:
    """File size in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


def write_report(name: str, report: dict[str, Any]) -> None:
    """Print the run's numbers as one JSON line (the docs table is filled from these lines)."""
    clean = {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in report.items()}
    print(f"REPORT {name} {json.dumps(clean, sort_keys=True)}", flush=True)
