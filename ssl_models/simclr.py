"""SimCLR v1/v2 converted ResNets: un-normalised [0,1] input."""
from __future__ import annotations

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.converted import EXPECTED_KEYS, build_converted, is_simclr_v2
from ssl_models.torchvision_layout import UNNORMALISED

KIND = "simclr"
__all__ = ["EXPECTED_KEYS", "build", "looks_like"]


def looks_like(raw: RawCheckpoint) -> bool:
    """True for the SimCLRv2 converter's layout (v1 files are plain torchvision: pass kind='simclr')."""
    return is_simclr_v2(raw)


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The converted SimCLR ResNet; preprocess leaves [0,1] pixels unnormalised, as SimCLR was trained."""
    if variant is not None:
        raise ValueError(f"SimCLR checkpoints take no variant, got variant={variant!r}")
    raw.notes.append("SimCLR input convention: [0,1] pixels, no mean/std normalisation")
    return build_converted(raw, KIND, UNNORMALISED)
