"""The small models trained on the scenes benchmark and shipped in ssl_models/assets/, loaded by name."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

SUPERVISED = ("vgg", "resnet")
TRANSFORMERS = ("vit",)  # supervised too, kept apart: AGF does not walk attention
SELF_SUPERVISED = ("rotnet", "sela", "scan")
SSL_TRANSFORMERS = ("dino_vit",)  # self-supervised ViT (DINO layout), kept apart like TRANSFORMERS
EMBEDDED = SUPERVISED + SELF_SUPERVISED
SUPERVISED_KEYS = frozenset({"arch", "config", "state_dict", "classes", "metrics"})


def assets_dir() -> Path:
    """Folder holding the embedded checkpoints (ssl_models/assets)."""
    from ssl_models.embedded_assets import ASSETS_DIR

    return ASSETS_DIR


def asset_path(name: str) -> Path:
    """Checkpoint path of the embedded model `name` (which may not exist yet)."""
    valid = EMBEDDED + TRANSFORMERS + SSL_TRANSFORMERS
    if name not in valid:
        raise ValueError(f"unknown embedded model {name!r}; valid names are {valid}")
    return assets_dir() / (f"supervised_{name}.pth" if name in SUPERVISED + TRANSFORMERS else f"{name}.pth")


def training_command(name: str) -> str:
    """The command that (re)creates the asset `name`."""
    if name == "vit":
        return "python experiments/train_vit.py"
    if name in SUPERVISED:
        return f"python experiments/train_supervised.py --arch {name}"
    return f"python experiments/train_{name}.py"


def load_embedded(name: str) -> nn.Module:
    """The embedded model `name` in eval mode: "vgg", "resnet", "vit" (supervised, 12 scene classes), "rotnet", "sela",
    "scan", "dino_vit"."""
    path = asset_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"embedded model asset {path} is missing; create it with `{training_command(name)}`")
    if name in SUPERVISED + TRANSFORMERS:
        return load_supervised(path, name)
    import ssl_models

    return ssl_models.embedded(name)


def read_supervised(path: str | Path) -> dict[str, Any]:
    """The validated contents {'arch', 'config', 'state_dict', 'classes', 'metrics'} of a supervised checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"supervised checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} holds objects other than weights and plain data; refusing to load it ({exc})") from None
    except Exception as exc:  # torch reports damaged files with many exception types
        raise ValueError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or set(obj) != SUPERVISED_KEYS:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} is not an sslx supervised checkpoint: expected keys {sorted(SUPERVISED_KEYS)}, "
                         f"found {found}")
    state = obj["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'state_dict' must be a non-empty dict of tensors")
    if not isinstance(obj["config"], dict):
        raise ValueError(f"{path}: 'config' must be a dict of builder arguments, got {type(obj['config']).__name__}")
    return obj


def load_supervised(path: str | Path, arch: str | None = None) -> nn.Module:
    """Rebuild a supervised classifier from its checkpoint (strict load, finite weights), in eval mode."""
    from sslx.models import build_classifier

    obj = read_supervised(path)
    if arch is not None and obj["arch"] != arch:
        raise ValueError(f"{path} holds a {obj['arch']!r} classifier, expected {arch!r}")
    if obj["arch"] == "vit":
        from sslx.models.vit import VisionTransformer

        try:
            model: nn.Module = VisionTransformer(**obj["config"])
        except TypeError as exc:
            raise ValueError(f"{path}: 'config' does not describe a VisionTransformer: {exc}") from None
    else:
        model = build_classifier(obj["arch"], obj["config"])
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the {obj['arch']!r} network its config describes: {exc}") from None
    bad = [k for k, v in obj["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: NaN or Inf in {bad[:5]}")
    num_classes = list(model.parameters())[-1].shape[0]
    if len(obj["classes"]) != num_classes:
        raise ValueError(f"{path}: {len(obj['classes'])} class names for a {num_classes}-way classifier")
    return model.eval()
