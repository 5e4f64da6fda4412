"""Linear SSL heads sized from their weights, and the integer head index some files store."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral

import torch
from torch import Tensor, nn

from ssl_models.errors import CheckpointError
from ssl_models.keys import require


def linear_heads(state: Mapping[str, Tensor], weight_keys: Sequence[str], feature_dim: int) -> list[nn.Linear]:
    """One nn.Linear(feature_dim, K) per weight key, K read from the weight's first dimension."""
    heads = []
    for key in weight_keys:
        weight = require(state, key, 2, "linear head weight")
        heads.append(nn.Linear(feature_dim, int(weight.shape[0])))
    return heads


def stored_index(value: object, name: str) -> int:
    """A head index stored in a file (int, numpy integer or 0-d integer tensor) as an int."""
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool:
        return int(value.item())
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    raise CheckpointError(f"stored {name!r} should be an integer head index, found {type(value).__name__} {value!r}")
