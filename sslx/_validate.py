"""Input checks shared by the public entry points: clear errors instead of silently wrong numbers."""
from __future__ import annotations

import torch
from torch import Tensor


def check_image_batch(x: object, name: str = "x", channels: int | None = 3) -> Tensor:
    """Raise TypeError/ValueError unless `x` is a finite floating B×C×H×W tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape B×{channels or 'C'}×H×W, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B×{channels or 'C'}×H×W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32/float64), got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(x.shape)} ({x.shape[1]} channels)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return x


def check_input_channels(x: Tensor, layers: dict[str, int], name: str = "x") -> None:
    """Raise ValueError unless x's channel count is what the model's image-facing layers (path -> channels) expect."""
    wrong = {path: c for path, c in layers.items() if c != x.shape[1]}
    if wrong:
        path, expected = next(iter(wrong.items()))
        hint = f"; for grayscale images repeat the channel, e.g. {name}.expand(-1, {expected}, -1, -1)" \
            if x.shape[1] == 1 else ""
        raise ValueError(f"{name} has {x.shape[1]} channel(s) (shape {tuple(x.shape)}) but the model's first "
                         f"layer '{path}' expects {expected}{hint}")


def resolve_targets(target: object, logits: Tensor) -> Tensor:
    """Return a LongTensor[B] of class ids: top-1 when `target` is None, else the validated ids."""
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError("target must be None, an int or a LongTensor[B], got bool")
    if isinstance(target, int):
        t = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    elif isinstance(target, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in target):
            raise TypeError("target list must contain ints")
        t = torch.tensor(list(target), dtype=torch.long, device=logits.device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target tensor must hold integer class ids, got dtype {target.dtype}")
        t = target.to(device=logits.device, dtype=torch.long).reshape(-1)
        if target.dim() == 0:
            t = t.expand(batch)
        elif target.dim() != 1:
            raise ValueError(f"target must be a scalar or 1-D tensor, got shape {tuple(target.shape)}")
    else:
        raise TypeError(f"target must be None, an int or a LongTensor[B], got {type(target).__name__}")
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} targets for a batch of {batch} images")
    if bool(((t < 0) | (t >= num_classes)).any()):
        bad = t[(t < 0) | (t >= num_classes)].tolist()
        raise ValueError(f"target class ids {bad} out of range for a model with {num_classes} outputs")
    return t.contiguous()


def check_model_matches(model: torch.nn.Module, x: Tensor) -> None:
    """Raise unless `x` has the dtype and device of the model's parameters."""
    for name, p in list(model.named_parameters())[:1]:
        if p.dtype != x.dtype:
            raise TypeError(f"x is {x.dtype} but the model's parameters are {p.dtype} ({name}); "
                            "cast one of them (e.g. model.double() with a float64 x)")
        if p.device != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {p.device}; move one of them")
