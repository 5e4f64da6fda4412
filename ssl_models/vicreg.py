"""VICReg: backbone-only torchvision ResNet files, and {'epoch','model','optimizer'} with backbone.*/projector.*."""
from __future__ import annotations

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.contrastive import bare_trunk, build_with_projector

KIND = "vicreg"
EXPECTED_KEYS = "backbone.* + projector.* (training checkpoint) or torchvision trunk keys with kind='vicreg'"


def looks_like(raw: RawCheckpoint) -> bool:
    """True for a VICReg training checkpoint (backbone.* and projector.*)."""
    return any(key.startswith("projector.") for key in raw.state) and any(
        key.startswith("backbone.layer1.") for key in raw.state)


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The VICReg backbone as a head-less SSLModel; its expander kept as model.projector."""
    if variant is not None:
        raise ValueError(f"VICReg checkpoints take no variant, got variant={variant!r}")
    if bare_trunk(raw):
        return build_with_projector(raw, KIND, "", "projector.", (), "")
    return build_with_projector(raw, KIND, "backbone.", "projector.", (), "")
