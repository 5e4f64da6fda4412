"""SwAV: ResNet trunk + projection_head MLP + prototypes (the SSL classifier), flat or under 'state_dict'."""
from __future__ import annotations

import torch
from torch import nn

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.errors import CheckpointError
from ssl_models.keys import require
from ssl_models.mlp import L2Normalize, build_mlp
from ssl_models.torchvision_layout import IMAGENET, build_torchvision_model

KIND = "swav"
EXPECTED_KEYS = "torchvision trunk keys + projection_head.N.* + prototypes.weight"


def looks_like(raw: RawCheckpoint) -> bool:
    """True for SwAV files (a prototypes layer next to a projection head)."""
    return any(key.startswith("prototypes") for key in raw.state) and any(
        key.startswith("projection_head.") for key in raw.state)


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """backbone = trunk ▸ projection_head ▸ L2 normalisation; head = the prototypes (bias-free linear)."""
    if variant is not None:
        raise ValueError(f"SwAV checkpoints take no variant, got variant={variant!r}")
    state = raw.state
    if "prototypes.weight" not in state:
        found = sorted({key.split(".")[0] for key in state if key.startswith("prototypes")})
        raise CheckpointError(f"several prototype sets {found} (SwAV MultiPrototypes) are not supported; "
                              "expected a single prototypes.weight")
    prototypes = require(state, "prototypes.weight", 2, "SwAV prototypes")
    with torch.device("meta"):
        projection = build_mlp(state, "projection_head.")
        head = nn.Linear(int(prototypes.shape[1]), int(prototypes.shape[0]), bias=False)
    embed = [("projection", projection), ("l2norm", L2Normalize())]
    raw.notes.append("features = L2-normalised projection_head output (the prototypes' input)")
    return build_torchvision_model(raw, "", KIND, preprocess=IMAGENET, embed=embed,
                                   embed_rules=[("projection_head.", "backbone.projection.")], head=head,
                                   head_prefix="prototypes.")
