"""Head-less contrastive / joint-embedding checkpoints: a ResNet trunk plus a training projector (MoCo, VICReg)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.mlp import build_mlp
from ssl_models.torchvision_layout import IMAGENET, build_torchvision_model, drop, has_trunk


def build_with_projector(raw: RawCheckpoint, kind: str, trunk: str, projector: str, ignore: Sequence[str],
                         why: str, variant_suffix: str = "") -> SSLModel:
    """The trunk under `trunk` as a head-less SSLModel, the MLP under `projector` kept as model.projector."""
    state = drop(raw, ignore, why)
    has_projector = any(key.startswith(projector) for key in state)
    with torch.device("meta"):
        mlp = build_mlp(state, projector) if has_projector else None
    if not has_projector:
        raw.notes.append(f"no projector {projector}* in the file")
    return build_torchvision_model(raw, trunk, kind, preprocess=IMAGENET, projector=mlp, projector_prefix=projector,
                                   state=state, variant_suffix=variant_suffix)


TRUNK_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def bare_trunk(raw: RawCheckpoint) -> bool:
    """True for a backbone-only torchvision ResNet file (trunk keys only: no fc, no head)."""
    return has_trunk(raw.state) and all(key.startswith(TRUNK_PREFIXES) for key in raw.state)
