"""Perturbation tests of explanations: accuracy while pixels are removed in heatmap order.

Protocol (the AGF authors' code, see docs/agf_reference_semantics.md "Evaluation protocols"):
`images` are unnormalised [0, 1] batches. For each fraction p the ``int(H*W*p)`` pixels ranked first
by the heatmap are set to zero in every channel, `normalize` (e.g. the dataset's mean/std
normalisation) is applied, and the model classifies the result; a perturbed image counts as correct
when its top-1 class (``argmax``, first index on ties) equals its target.

- ``order="negative"``: least relevant pixels first (lowest heatmap values first). A good explanation
  keeps accuracy high, so a higher curve/AUC is better (the paper's Tables 2, 4, 5).
- ``order="positive"``: most relevant pixels first (highest values first); lower is better.
- Tie-breaking: pixels are ranked by a *stable* sort of the row-major flattened heatmap (ascending for
  "negative", descending for "positive"), so among equal values the pixel with the smaller row-major
  index (top-most, then left-most) is removed first, in both orders.
- "target" vs "predicted" variants: pass the labels as `targets` for the target test, or the clean
  top-1 predictions (``targets=None`` computes them) for the predicted test. The heatmaps should then
  explain that same class; that is the caller's side of the protocol.
- A fraction p = 0 removes nothing: it gives the clean accuracy.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from sslx._validate import check_image_batch, resolve_targets

DEFAULT_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_ORDERS = ("negative", "positive")

__all__ = [
    "DEFAULT_FRACTIONS",
    "PerturbationAccuracy",
    "perturbation_auc",
    "perturbation_correct",
    "perturbation_curve",
    "removal_counts",
    "removal_ranks",
]


def check_fractions(fractions: Sequence[float] | Tensor) -> tuple[float, ...]:
    """Return `fractions` as a tuple of floats after checking they are strictly increasing in [0, 1]."""
    if isinstance(fractions, Tensor):
        if fractions.dim() != 1:
            raise ValueError(f"fractions must be 1-D, got shape {tuple(fractions.shape)}")
        fractions = fractions.tolist()
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence):
        raise TypeError(f"fractions must be a sequence of floats, got {type(fractions).__name__}")
    if len(fractions) == 0:
        raise ValueError("fractions is empty")
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in fractions):
        raise TypeError(f"fractions must contain numbers, got {list(fractions)!r}")
    values = tuple(float(p) for p in fractions)
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values):
        raise ValueError(f"fractions must lie in [0, 1], got {list(values)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"fractions must be strictly increasing, got {list(values)}")
    return values


def removal_counts(num_pixels: int, fractions: Sequence[float]) -> list[int]:
    """Return the number of pixels removed per fraction: ``int(num_pixels * p)`` (the authors' rounding)."""
    return [int(num_pixels * p) for p in check_fractions(fractions)]


def removal_ranks(heatmaps: Tensor, order: str = "negative") -> Tensor:
    """Return LongTensor[B, H*W]: each pixel's removal position (0 = removed first), stable row-major ties."""
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    flat = heatmaps.reshape(heatmaps.shape[0], -1)
    removal_order = torch.sort(flat, dim=1, descending=(order == "positive"), stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(removal_order)
    return torch.empty_like(removal_order).scatter_(1, removal_order, positions)


def _check_pair(images: Tensor, heatmaps: Tensor) -> None:
    """Raise unless images (B×C×H×W in [0,1]) and heatmaps (B×1×H×W) are valid and match."""
    check_image_batch(images, "images", channels=None)
    check_image_batch(heatmaps, "heatmaps", channels=1)
    if heatmaps.shape[0] != images.shape[0] or heatmaps.shape[2:] != images.shape[2:]:
        raise ValueError(
            f"heatmaps shape {tuple(heatmaps.shape)} does not match images shape {tuple(images.shape)} "
            "(expected B×1×H×W with the images' B, H, W)"
        )
    if heatmaps.device != images.device:
        raise ValueError(f"heatmaps are on {heatmaps.device} but images are on {images.device}")
    if bool(images.min() < 0) or bool(images.max() > 1):
        raise ValueError(
            f"images must be unnormalised values in [0, 1] (got range [{images.min().item():.4g}, "
            f"{images.max().item():.4g}]); pass the dataset normalisation as `normalize`"
        )


def _classify(model: nn.Module, x: Tensor, normalize: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Return the model's logits (B×K) for a [0,1] batch after `normalize`."""
    logits = model(normalize(x) if normalize is not None else x)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape B×num_classes for {x.shape[0]} images, got {shape}")
    return logits


def perturbation_correct(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor | int | Sequence[int] | None,
    order: str = "negative",
    fractions: Sequence[float] | Tensor = DEFAULT_FRACTIONS,
    normalize: Callable[[Tensor], Tensor] | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Return BoolTensor[B, F]: whether each image is still classified as its target after each removal.

    `targets=None` uses the model's clean top-1 predictions (the "predicted" test). `batch_size` caps
    the number of perturbed images per forward pass (default: B, i.e. one pass per fraction). The
    model runs as given, without gradients; it must be in eval mode (train-mode BatchNorm would both
    change the numbers and update its running statistics).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model is in training mode; call model.eval() before a perturbation test")
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    if normalize is not None and not callable(normalize):
        raise TypeError(f"normalize must be a callable or None, got {type(normalize).__name__}")
    _check_pair(images, heatmaps)
    batch, height, width = images.shape[0], images.shape[2], images.shape[3]
    if batch_size is None:
        batch_size = batch
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    counts = torch.tensor(removal_counts(height * width, fractions), device=images.device)

    ranks = removal_ranks(heatmaps, order).view(batch, 1, height, width)
    num_items = counts.numel() * batch  # item i perturbs image i % B at fraction i // B
    predictions = torch.empty(num_items, dtype=torch.long, device=images.device)
    zero = torch.zeros((), dtype=images.dtype, device=images.device)
    target_ids: Tensor | None = None
    num_classes = 0
    with torch.no_grad():
        if targets is None:
            targets = _classify(model, images, normalize).argmax(dim=1)
        for start in range(0, num_items, batch_size):
            items = torch.arange(start, min(start + batch_size, num_items), device=images.device)
            image_ids, fraction_ids = items % batch, items // batch
            keep = ranks[image_ids] >= counts[fraction_ids].view(-1, 1, 1, 1)
            logits = _classify(model, torch.where(keep, images[image_ids], zero), normalize)
            if target_ids is None:
                # A shape-only stand-in for the logits lets resolve_targets check count and class range.
                target_ids = resolve_targets(targets, zero.expand(batch, logits.shape[1]))
            elif logits.shape[1] != num_classes:
                raise ValueError(f"model returned {logits.shape[1]} classes after {num_classes} on an earlier pass")
            num_classes = logits.shape[1]
            predictions[items] = logits.argmax(dim=1)
    assert target_ids is not None  # at least one pass ran: fractions and the batch are non-empty
    return predictions.view(-1, batch).t() == target_ids.view(batch, 1)


def perturbation_curve(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor | int | Sequence[int] | None,
    order: str = "negative",
    fractions: Sequence[float] | Tensor = DEFAULT_FRACTIONS,
    normalize: Callable[[Tensor], Tensor] | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Return Tensor[F]: top-1 accuracy in % of the batch at each removal fraction (see perturbation_correct)."""
    correct = perturbation_correct(model, images, heatmaps, targets, order, fractions, normalize, batch_size)
    return (correct.sum(dim=0, dtype=torch.float64) * (100.0 / correct.shape[0])).to(images.dtype)


def perturbation_auc(
    fractions: Sequence[float] | Tensor,
    accuracies: Sequence[float] | Tensor,
    include_zero: bool = False,
    clean_accuracy: float | Tensor | None = None,
) -> Tensor:
    """Return the trapezoidal area under accuracy (%) over removal fraction p, on the given p grid.

    Convention: the area spans exactly the given fractions, by default p = 0.1 … 0.9 with p = 0 not
    included, so a constant 100 % curve scores 80. `include_zero=True` prepends the point
    (p = 0, `clean_accuracy`), which must then be given (and fractions must not already start at 0).
    Units are "% × fraction"; report the full curve beside the number.
    """
    grid = list(check_fractions(fractions))
    if isinstance(accuracies, Tensor):
        if accuracies.dim() != 1:
            raise ValueError(f"accuracies must be 1-D, got shape {tuple(accuracies.shape)}")
        if not accuracies.is_floating_point():
            accuracies = accuracies.double()
        acc = accuracies
    else:
        acc = torch.as_tensor([float(a) for a in accuracies], dtype=torch.float64)
    if acc.numel() != len(grid):
        raise ValueError(f"got {acc.numel()} accuracies for {len(grid)} fractions")
    if include_zero:
        if clean_accuracy is None:
            raise ValueError("include_zero=True needs clean_accuracy (the accuracy at p = 0)")
        if grid[0] == 0.0:
            raise ValueError("include_zero=True but fractions already start at p = 0")
        acc = torch.cat([torch.as_tensor(clean_accuracy, dtype=acc.dtype, device=acc.device).reshape(1), acc])
        grid = [0.0] + grid
    elif clean_accuracy is not None:
        raise ValueError("clean_accuracy is only used with include_zero=True")
    if len(grid) < 2:
        raise ValueError(f"an area needs at least two points, got fractions {grid}")
    if not bool(torch.isfinite(acc).all()) or bool((acc < 0).any()) or bool((acc > 100).any()):
        raise ValueError(f"accuracies must be percentages in [0, 100], got {acc.tolist()}")
    return torch.trapezoid(acc, torch.tensor(grid, dtype=acc.dtype, device=acc.device))


class PerturbationAccuracy(Metric):
    """Accumulate per-fraction correct counts from `perturbation_correct` across batches and processes.

    ``update(correct)`` takes the B×F boolean matrix; ``compute()`` returns ``{"fractions",
    "accuracy" (%), "auc", "n_images"}`` where the AUC integrates exactly over ``fractions`` (include
    0.0 in `fractions` to have the clean accuracy in the curve and area). States are sums, so they
    sync under DDP.
    """

    is_differentiable = False
    higher_is_better = None  # higher for the negative test, lower for the positive one
    full_state_update = False

    def __init__(self, fractions: Sequence[float] | Tensor = DEFAULT_FRACTIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fractions = check_fractions(fractions)
        self.add_state("correct", default=torch.zeros(len(self.fractions), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        """Add a B×F boolean matrix of per-image, per-fraction correctness."""
        if not isinstance(correct, Tensor) or correct.dtype != torch.bool:
            kind = correct.dtype if isinstance(correct, Tensor) else type(correct).__name__
            raise TypeError(f"correct must be a bool tensor from perturbation_correct, got {kind}")
        if correct.dim() != 2 or correct.shape[1] != len(self.fractions):
            raise ValueError(
                f"correct must have shape B×{len(self.fractions)} (one column per fraction), "
                f"got {tuple(correct.shape)}"
            )
        self.correct += correct.sum(dim=0).to(self.correct.device)
        self.total += correct.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Return the accumulated curve (%), its AUC over `fractions` (NaN for a single fraction), and counts."""
        if int(self.total) == 0:
            raise ValueError("PerturbationAccuracy has no images: call update() before compute()")
        accuracy = self.correct.double() * 100.0 / self.total
        fractions = torch.tensor(self.fractions, dtype=torch.float64, device=accuracy.device)
        single = torch.full((), math.nan, dtype=torch.float64, device=accuracy.device)
        auc = torch.trapezoid(accuracy, fractions) if len(self.fractions) > 1 else single
        return {"fractions": fractions, "accuracy": accuracy, "auc": auc, "n_images": self.total.clone()}
