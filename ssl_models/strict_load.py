"""Strict loading: every model tensor comes from the file, with matching shape, dtype kind and finite values."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ssl_models.errors import CheckpointError
from ssl_models.keys import KeyMap, summarize_keys

_NBT = "num_batches_tracked"


def load_strict(model: nn.Module, state: Mapping[str, Tensor], keymap: KeyMap, notes: list[str]) -> None:
    """Put `state` (file keys) into `model` through `keymap`; raise CheckpointError before any partial load.

    `model` may be built on the meta device: its tensors are replaced by the file's (assign=True), cast
    to the model's dtype where they differ, so nothing is initialised only to be overwritten.
    """
    expected = model.state_dict()
    renamed: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for file_key, value in state.items():
        model_key = keymap.to_model(file_key)
        if model_key is None or model_key not in expected:
            unexpected.append(file_key)
        else:
            renamed[model_key] = value
    if unexpected:
        raise CheckpointError(f"unexpected keys for the inferred architecture: {summarize_keys(unexpected)}")
    missing = [key for key in expected if key not in renamed and not key.endswith(_NBT)]
    if missing:
        files = [keymap.to_file(key) for key in missing]
        raise CheckpointError(f"missing keys for the inferred architecture: {', '.join(files[:8])}"
                              + (f", ... ({len(files)} in all)" if len(files) > 8 else ""))
    filled = 0
    cast: set[str] = set()
    for key, target in expected.items():
        if key not in renamed:  # num_batches_tracked, absent from files written before PyTorch 0.4.1
            renamed[key] = torch.zeros(target.shape, dtype=target.dtype)
            filled += 1
            continue
        value = renamed[key]
        _check_tensor(keymap.to_file(key), value, target)
        if value.dtype != target.dtype:
            renamed[key] = value.to(target.dtype)
            cast.add(f"{value.dtype}->{target.dtype}")
    if filled:
        notes.append(f"num_batches_tracked absent for {filled} BatchNorm layers (legacy file): set to 0")
    if cast:
        notes.append(f"weights cast {', '.join(sorted(cast))}")
    model.load_state_dict(renamed, strict=True, assign=True)
    if any(tensor.is_meta for tensor in model.state_dict().values()):
        raise RuntimeError("internal error: a model tensor was left uninitialised after loading")


def _check_tensor(file_key: str, value: Tensor, target: Tensor) -> None:
    if tuple(value.shape) != tuple(target.shape):
        raise CheckpointError(
            f"shape mismatch for {file_key!r}: the file has {list(value.shape)}, "
            f"the architecture inferred from the file expects {list(target.shape)}"
        )
    if target.is_floating_point():
        if not value.is_floating_point():
            raise CheckpointError(f"{file_key!r} should hold floating-point weights, found dtype {value.dtype}")
        if value.numel() and not _all_finite(value):
            raise CheckpointError(f"{file_key!r} contains NaN or Inf values")
    elif value.is_floating_point() or value.is_complex():
        raise CheckpointError(f"{file_key!r} should hold integers, found dtype {value.dtype}")


def _all_finite(value: Tensor) -> bool:
    # min and max propagate NaN and ±Inf; one reduction pass, no bool tensor of the weight's size
    low, high = torch.aminmax(value.detach().reshape(-1))
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))
