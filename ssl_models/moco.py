"""MoCo v1/v2 (encoder_q/encoder_k/queue) and MoCo v3 ResNet (base_encoder/momentum_encoder/predictor) files."""
from __future__ import annotations

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.contrastive import build_with_projector

KIND = "moco"
EXPECTED_KEYS = "encoder_q.* (+ encoder_k.*, queue) for MoCo v1/v2, base_encoder.* (+ momentum_encoder.*, predictor.*) for v3"


def looks_like(raw: RawCheckpoint) -> bool:
    """True for MoCo v1/v2/v3 training checkpoints."""
    return any(key.startswith(("encoder_q.", "base_encoder.")) for key in raw.state)


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The query / base encoder as a head-less SSLModel; its projection MLP kept as model.projector."""
    if variant is not None:
        raise ValueError(f"MoCo checkpoints take no variant (v1/v2/v3 are detected), got variant={variant!r}")
    if "arch" in raw.meta:
        raw.notes.append(f"stored arch {raw.meta['arch']!r}")
    if any(key.startswith("base_encoder.") for key in raw.state):
        return build_with_projector(raw, KIND, "base_encoder.", "base_encoder.fc.",
                                    ("momentum_encoder.", "predictor."), "MoCo v3 momentum encoder and predictor",
                                    variant_suffix="-v3")
    suffix = "-v2" if "encoder_q.fc.0.weight" in raw.state else "-v1"
    return build_with_projector(raw, KIND, "encoder_q.", "encoder_q.fc.", ("encoder_k.", "queue"),
                                "MoCo key encoder and negative queue", variant_suffix=suffix)
