"""DINO ResNet-50: backbone-only torchvision files, and full checkpoints (teacher backbone.* + DINOHead head.*)."""
from __future__ import annotations

import torch
from torch import nn

from ssl_models.base import SSLModel
from ssl_models.checkpoint import DINO_NETWORKS, RawCheckpoint
from ssl_models.contrastive import bare_trunk, build_with_projector
from ssl_models.errors import CheckpointError
from ssl_models.mlp import L2Normalize, build_mlp, fold_weight_norm
from ssl_models.torchvision_layout import IMAGENET, build_torchvision_model

KIND = "dino"
EXPECTED_KEYS = ("{'student','teacher',...} with backbone.* + head.mlp.* + head.last_layer.weight_g/_v, "
                 "or torchvision trunk keys with kind='dino'")


def looks_like(raw: RawCheckpoint) -> bool:
    """True for a DINO full checkpoint (a weight-normed head.last_layer next to backbone.*)."""
    return ("head.last_layer.weight_v" in raw.state and any(key.startswith("backbone.") for key in raw.state)
            and "backbone.cls_token" not in raw.state)  # a ViT's full checkpoint is dino_vit's


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """backbone = trunk ▸ DINOHead MLP (GELU) ▸ L2 normalisation; head = the last layer (weight norm folded)."""
    if variant is not None and not (variant in DINO_NETWORKS and raw.wrapper_key in DINO_NETWORKS):
        raise ValueError(f"variant={variant!r}: DINO ResNet-50 files take only 'teacher'/'student' for full checkpoints")
    if bare_trunk(raw):
        return build_with_projector(raw, KIND, "", "head.", (), "")
    state = dict(raw.state)
    if "head.last_layer.weight_v" not in state:
        raise CheckpointError("DINO checkpoint without head.last_layer.weight_v (the DINOHead's last layer)")
    fold_weight_norm(state, "head.last_layer.")
    last = state["head.last_layer.weight"]
    if "head.last_layer.bias" in state:
        raise CheckpointError("head.last_layer has a bias; DINOHead's last layer is bias-free")
    with torch.device("meta"):
        mlp = build_mlp(state, "head.mlp.", activation=nn.GELU)
        head = nn.Linear(int(last.shape[1]), int(last.shape[0]), bias=False)
    raw.notes.append("features = L2-normalised DINOHead MLP output; head = last layer with weight norm folded in")
    return build_torchvision_model(raw, "backbone.", KIND, preprocess=IMAGENET,
                                   embed=[("projection", mlp), ("l2norm", L2Normalize())],
                                   embed_rules=[("head.mlp.", "backbone.projection.")], head=head,
                                   head_prefix="head.last_layer.", state=state)
