"""BYOL converted ResNets (torchvision keys + fc): ImageNet mean/std input."""
from __future__ import annotations

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.converted import EXPECTED_KEYS, build_converted
from ssl_models.torchvision_layout import IMAGENET

KIND = "byol"
__all__ = ["EXPECTED_KEYS", "build", "looks_like"]


def looks_like(raw: RawCheckpoint) -> bool:
    """Never: a converted BYOL file is a plain torchvision ResNet, recognised only with kind='byol'."""
    return False


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The converted BYOL ResNet with ImageNet normalisation."""
    if variant is not None:
        raise ValueError(f"BYOL checkpoints take no variant, got variant={variant!r}")
    return build_converted(raw, KIND, IMAGENET)
