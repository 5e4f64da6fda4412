"""Every `sslx.explain` method as a Quantus `explain_func`: (model, inputs, targets, **kwargs) → numpy maps.

Quantus calls ``explain_func(model=..., inputs=x_batch, targets=y_batch, **explain_func_kwargs)`` with numpy
arrays (or tensors); the adapter runs the sslx method on the model's own device and dtype and returns the
B×1×H×W maps as a numpy array. Quantus itself is not imported here.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sslx.explain_api import METHODS

__all__ = ["quantus_explain_func"]

ExplainFunc = Callable[..., np.ndarray]


def _as_tensor(value: Any, name: str, like: torch.Tensor, integer: bool = False) -> torch.Tensor:
    """numpy array / tensor / list → tensor on `like`'s device (its dtype, or long for `integer`)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a numpy array or tensor, got {type(value).__name__}") from None
    dtype = torch.long if integer else like.dtype
    if integer and (value.is_floating_point() and bool((value != value.round()).any())):
        raise ValueError(f"{name} must hold integer class ids, got non-integer values")
    return value.to(device=like.device, dtype=dtype)


def quantus_explain_func(method: str = "agf", **options: Any) -> ExplainFunc:
    """A Quantus-compatible explain_func running sslx `method` (with `options`) and returning numpy B×1×H×W."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        """The method's maps of `targets` on `inputs` (Quantus passes unused kwargs such as `device`)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("the model has no parameters to take a device and dtype from")
        x = _as_tensor(inputs, "inputs", first)
        t = _as_tensor(targets, "targets", first, integer=True).reshape(-1)
        with torch.enable_grad():
            maps = METHODS[method](model, **options).attribute(x, t)
        return maps.detach().cpu().numpy()

    explain_func.__name__ = f"sslx_{method}"
    return explain_func
