"""Backbone-only torchvision ResNet files (DINO / VICReg / SwAV-hub style): trunk keys, no fc, no SSL head."""
from __future__ import annotations

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.contrastive import bare_trunk
from ssl_models.torchvision_layout import IMAGENET, build_torchvision_model

KIND = "torchvision"
EXPECTED_KEYS = "conv1.weight, bn1.*, layer1..4.* and no fc (a backbone-only file)"


def looks_like(raw: RawCheckpoint) -> bool:
    """True for a bare ResNet trunk without fc."""
    return bare_trunk(raw)


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The trunk as a head-less SSLModel with ImageNet normalisation."""
    if variant is not None:
        raise ValueError(f"backbone-only files take no variant, got variant={variant!r}")
    raw.notes.append("backbone-only file: the SSL family is not recorded in it (pass kind='dino'/'vicreg' to label it)")
    return build_torchvision_model(raw, "", KIND, preprocess=IMAGENET)
