"""Projection MLPs (Linear / BatchNorm1d / ReLU / GELU sequences) sized from a state_dict, and L2 normalisation."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models.errors import CheckpointError
from ssl_models.keys import child_indices, summarize_keys


class L2Normalize(nn.Module):
    """Rows divided by their L2 norm (F.normalize, eps 1e-12), as SwAV and DINO apply before the prototypes."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1, p=2)


def build_mlp(state: Mapping[str, Tensor], prefix: str, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """The nn.Linear at `prefix`weight, or the nn.Sequential stored under `prefix`N.*: Linear where N has a 2-D weight, BatchNorm1d where it has
    running statistics, `activation` at the parameter-free indices between them."""
    weight = state.get(f"{prefix}weight")
    if weight is not None and weight.dim() == 2:  # a single Linear (MoCo v1's fc)
        return nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=f"{prefix}bias" in state)
    indices = child_indices(state, prefix)
    if not indices:
        raise CheckpointError(f"no MLP layers {prefix}N.* found; found {summarize_keys(state)}")
    layers: list[nn.Module] = []
    for i in range(indices[-1] + 1):
        weight, mean = state.get(f"{prefix}{i}.weight"), state.get(f"{prefix}{i}.running_mean")
        if weight is not None and weight.dim() == 2:
            layers.append(nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=f"{prefix}{i}.bias" in state))
        elif mean is not None:
            layers.append(nn.BatchNorm1d(int(mean.shape[0]), affine=weight is not None))
        elif i in indices:
            raise CheckpointError(f"{prefix}{i}.* is neither a Linear nor a BatchNorm1d layer")
        else:
            layers.append(activation())
    return nn.Sequential(*layers)


def fold_weight_norm(state: dict[str, Tensor], prefix: str) -> None:
    """Replace `prefix`weight_g / weight_v (torch weight_norm, dim 0) by the plain `prefix`weight they define."""
    g, v = state.pop(f"{prefix}weight_g", None), state.pop(f"{prefix}weight_v", None)
    if g is None or v is None:
        raise CheckpointError(f"weight-normed layer {prefix!r} needs both {prefix}weight_g and {prefix}weight_v")
    if v.dim() != 2 or tuple(g.shape) != (v.shape[0], 1):
        raise CheckpointError(f"{prefix}weight_g {list(g.shape)} does not match {prefix}weight_v {list(v.shape)}")
    norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    state[f"{prefix}weight"] = v * (g / norm)
