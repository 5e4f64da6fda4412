"""Shared checks and the batched 'perturbed copies → target probability' pass of the removal metrics."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sslx._validate import check_image_batch, resolve_targets

Normalize = Callable[[Tensor], Tensor] | None


def check_model(model: object) -> nn.Module:
    """Return `model` after checking it is an nn.Module in eval mode."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model is in training mode; call model.eval() before scoring explanations")
    return model


def check_pair(images: Tensor, heatmaps: Tensor) -> None:
    """Raise unless images (B×C×H×W in [0,1]) and heatmaps (B×1×H×W) are valid and match."""
    check_image_batch(images, "images", channels=None)
    check_image_batch(heatmaps, "heatmaps", channels=1)
    if heatmaps.shape[0] != images.shape[0] or heatmaps.shape[2:] != images.shape[2:]:
        raise ValueError(f"heatmaps shape {tuple(heatmaps.shape)} does not match images shape {tuple(images.shape)} "
                         "(expected B×1×H×W with the images' B, H, W)")
    if heatmaps.device != images.device:
        raise ValueError(f"heatmaps are on {heatmaps.device} but images are on {images.device}")
    if bool(images.min() < 0) or bool(images.max() > 1):
        raise ValueError(f"images must be unnormalised values in [0, 1] (got range [{images.min().item():.4g}, "
                         f"{images.max().item():.4g}]); pass the dataset normalisation as `normalize`")


def outputs(model: nn.Module, x: Tensor, normalize: Normalize, what: str = "logits") -> Tensor:
    """The model's 2-D output (B×K) on a [0, 1] batch after `normalize`."""
    out = model(normalize(x) if normalize is not None else x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model must return {what} of shape B×K for {x.shape[0]} images, got {shape}")
    return out


def target_scores(model: nn.Module, copies: Tensor, batch: int, targets: object, normalize: Normalize,
                  batch_size: int | None) -> tuple[Tensor, Tensor]:
    """(probability of the target, still-top-1) for F·B perturbed copies (copy i = image i % B), each F×B."""
    n = copies.shape[0]
    size = n if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    probs, tops = [], []
    with torch.no_grad():
        for start in range(0, n, size):
            logits = outputs(model, copies[start:start + size], normalize)
            probs.append(logits.softmax(dim=1))
            tops.append(logits.argmax(dim=1))
    prob = torch.cat(probs)
    ids = resolve_targets(targets, prob[:batch]).repeat(n // batch)
    chosen = prob.gather(1, ids.view(-1, 1)).view(-1, batch)
    return chosen, (torch.cat(tops) == ids).view(-1, batch)


def clean_targets(model: nn.Module, images: Tensor, targets: object, normalize: Normalize) -> object:
    """The clean top-1 classes when `targets` is None, else `targets` unchanged."""
    if targets is not None:
        return targets
    with torch.no_grad():
        return outputs(model, images, normalize).argmax(dim=1)


def as_tuple(fractions: Sequence[float] | Tensor) -> tuple[float, ...]:
    """Fractions as floats (validated by perturbation.check_fractions)."""
    from sslx.metrics.perturbation import check_fractions

    return check_fractions(fractions)
