"""Identify a model by its weights, so an index is never queried with features of another model."""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn


def model_fingerprint(model: nn.Module) -> str:
    """Return the sha256 hex digest of the model's state_dict (names, dtypes, shapes and values)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        if not isinstance(value, Tensor):  # get_extra_state() payloads
            digest.update(repr(value).encode())
            continue
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def state_version(model: nn.Module) -> tuple:
    """Return a cheap key that changes whenever a state tensor is replaced or modified in place."""
    return tuple(
        (name, value.data_ptr(), value._version)
        for name, value in model.state_dict().items()
        if isinstance(value, Tensor)
    )
