"""ssl_models.load: read a SCAN / SeLa / RotNet checkpoint safely, detect its layout, build the model."""
from __future__ import annotations

import logging
import os
from numbers import Integral
from pathlib import Path
from types import ModuleType

from ssl_models import (byol, converted, dino, dino_vit, moco, rotnet, scan, sela, simclr, swav, torchvision_backbone,
                        vicreg)
from ssl_models.base import SSLModel
from ssl_models.checkpoint import DINO_NETWORKS, RawCheckpoint, unwrap_checkpoint, unwrap_dino_training
from ssl_models.errors import CheckpointError
from ssl_models.keys import summarize_keys
from ssl_models.serialization import read_checkpoint

logger = logging.getLogger("ssl_models")

FAMILIES: dict[str, ModuleType] = {
    "scan": scan, "sela": sela, "rotnet": rotnet, "moco": moco, "swav": swav, "dino": dino, "vicreg": vicreg,
    "simclr": simclr, "byol": byol, "dino_vit": dino_vit, "torchvision": torchvision_backbone,
}
KINDS = tuple(FAMILIES)
# Families whose published files include a backbone-only torchvision ResNet (no SSL marker in the keys).
BARE_TRUNK_KINDS = ("dino", "vicreg", "moco", "swav", "simclr", "byol")
# Families whose converted files are a torchvision ResNet with its supervised fc.
TORCHVISION_FC_KINDS = ("simclr", "byol")


def load(path: str | os.PathLike[str], kind: str | None = None, head: int | None = None,
         *, variant: str | None = None) -> SSLModel:
    """Load a SCAN / SeLa / RotNet / MoCo / SwAV / DINO (ResNet-50 or ViT) / VICReg / SimCLR / BYOL checkpoint as an
    eval-mode SSLModel on the CPU.

    kind: one of KINDS ("scan", "sela", "rotnet", "moco", "swav", "dino", "vicreg", "simclr", "byol", "dino_vit",
    "torchvision"), or None to detect it from the keys; head: which SSL head the forward uses (default: SCAN's
    stored best head, else head 0); variant: for SCAN ResNet-18 files, whose CIFAR ("cifar", default) and
    STL-10 ("stl") models have identical keys; for full DINO checkpoints, "teacher" (default) or "student".
    """
    if kind is not None and kind not in FAMILIES:
        raise ValueError(f"unknown kind {kind!r}; valid kinds are {KINDS} or None (detect)")
    if head is not None and (isinstance(head, bool) or not isinstance(head, Integral)):
        raise TypeError(f"head must be an int or None, got {type(head).__name__}")
    path = Path(path)
    try:
        obj = read_checkpoint(path)
        network = variant if kind in (None, "dino", "dino_vit") and variant in DINO_NETWORKS else None
        raw = unwrap_dino_training(obj, network) or unwrap_checkpoint(obj)
        detected = detect_kind(raw, kind)
        if kind is not None and detected != kind:
            raise CheckpointError(
                f"kind={kind!r} contradicts the file, which is a {detected!r} checkpoint "
                f"({summarize_keys(raw.state, limit=4)})"
            )
        model = FAMILIES[detected].build(raw, variant)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if head is not None:
        model.select_head(head)
        model.info["head_source"] = "head= argument"
    model.info.update(source=str(path), layout=raw.layout)
    model.eval()
    logger.info(
        "loaded %s %s from %s: head %d of %d (%s), K=%s",
        model.info["kind"], model.info["variant"], path, model.head_index, len(model.heads),
        model.info["head_source"], model.info["K"],
    )
    return model


def detect_kind(raw: RawCheckpoint, requested: str | None = None) -> str:
    """Which family wrote the checkpoint, from its keys (and pseudo-label entries for SeLa *_pp files).

    A bare torchvision ResNet state_dict carries no SSL marker; it is taken as SeLa only when requested.
    """
    matches = [name for name, family in FAMILIES.items() if family.looks_like(raw)]
    if matches == ["torchvision"] and requested in BARE_TRUNK_KINDS:
        return requested
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise CheckpointError(f"ambiguous checkpoint: its keys match several layouts {matches}")
    if requested == "sela" and sela.is_torchvision(raw.state):
        raw.notes.append("plain torchvision ResNet layout loaded as SeLa because kind='sela' was given")
        return "sela"
    if requested in TORCHVISION_FC_KINDS and converted.is_torchvision_with_fc(raw):
        return requested
    expected = "; ".join(f"{name}: {family.EXPECTED_KEYS}" for name, family in FAMILIES.items())
    hint = ""
    if "conv1.weight" in raw.state and "fc.weight" in raw.state:
        hint = (" (this looks like a plain torchvision ResNet with fc; SeLa *_pp files are recognised by their "
                "{'state_dict', 'labels'} wrapper; pass kind='sela', or kind='simclr' / 'byol' for converted "
                "SimCLR v1 / BYOL files)")
    raise CheckpointError(
        f"unknown checkpoint layout{hint}: expected {expected}; found {summarize_keys(raw.state)} "
        f"in a {raw.layout}"
    )

