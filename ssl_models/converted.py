"""SimCLR v1/v2 and BYOL ResNets converted from TensorFlow/JAX: torchvision keys + fc, or SimCLRv2's {'resnet','head'}."""
from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.errors import CheckpointError
from ssl_models.keys import require
from ssl_models.mlp import build_mlp
from ssl_models.preprocess import Preprocess
from ssl_models.torchvision_layout import build_torchvision_model, has_trunk

EXPECTED_KEYS = "torchvision keys conv1/layer1..4/fc (kind='simclr' or 'byol'), or SimCLRv2 resnet.net.*/head.layers.*"
# Separius/SimCLRv2-Pytorch block: net.{0,1.0,2,3.0,4,5.0} = conv1, bn1, conv2, bn2, conv3, bn3.
_V2_BLOCK = {"net.0.": "conv1.", "net.1.0.": "bn1.", "net.2.": "conv2.", "net.3.0.": "bn2.", "net.4.": "conv3.",
             "net.5.0.": "bn3.", "projection.shortcut.": "downsample.0.", "projection.bn.0.": "downsample.1."}
_V2_KEY = re.compile(r"resnet\.net\.([1-4])\.blocks\.(\d+)\.(.*)$")


def is_simclr_v2(raw: RawCheckpoint) -> bool:
    """True for a file written by the SimCLRv2 converter ({'resnet': ..., 'head': ...})."""
    return "resnet.net.0.0.weight" in raw.state


def is_torchvision_with_fc(raw: RawCheckpoint) -> bool:
    """True for a torchvision ResNet state_dict with its fc (the converters' output)."""
    return has_trunk(raw.state) and "fc.weight" in raw.state


def build_converted(raw: RawCheckpoint, kind: str, preprocess: Preprocess) -> SSLModel:
    """The converted ResNet; its supervised linear-evaluation fc becomes head 0, SimCLRv2's MLP model.projector."""
    state = raw.state
    if is_simclr_v2(raw):
        state = _simclr_v2_to_torchvision(state)
        raw.notes.append("SimCLRv2 converter layout renamed to torchvision keys")
    elif not is_torchvision_with_fc(raw):
        raise CheckpointError(f"not a converted {kind} ResNet: expected {EXPECTED_KEYS}")
    fc = require(state, "fc.weight", 2, "supervised linear-evaluation head")
    projector = None
    with torch.device("meta"):
        head = nn.Linear(int(fc.shape[1]), int(fc.shape[0]))
        if any(key.startswith("projector.") for key in state):
            projector = build_mlp(state, "projector.")
    raw.notes.append("head = the supervised linear-evaluation fc stored by the converter (not an SSL classifier)")
    model = build_torchvision_model(raw, "", kind, preprocess=preprocess, head=head, head_prefix="fc.",
                                    projector=projector, projector_prefix="projector.", state=state)
    model.info["head_source"] = "supervised linear-evaluation fc (converted)"
    return model


def _simclr_v2_to_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if "resnet.net.0.3.weight" in state or any("mixing_conv" in key for key in state):
        raise CheckpointError("SimCLRv2 selective-kernel (sk1) models are not supported; use an sk0 file")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("resnet.net.0.0."):
            new = "conv1." + key[len("resnet.net.0.0."):]
        elif key.startswith("resnet.net.0.1.0."):
            new = "bn1." + key[len("resnet.net.0.1.0."):]
        elif key.startswith("resnet.fc."):
            new = key[len("resnet."):]
        elif key.startswith("head.layers."):
            new = "projector." + key[len("head.layers."):]
        elif match := _V2_KEY.match(key):
            stage, block, rest = match.groups()
            prefix = next((p for p in _V2_BLOCK if rest.startswith(p)), None)
            if prefix is None:
                raise CheckpointError(f"unexpected SimCLRv2 key {key!r}")
            new = f"layer{stage}.{block}.{_V2_BLOCK[prefix]}{rest[len(prefix):]}"
        else:
            raise CheckpointError(f"unexpected SimCLRv2 key {key!r}")
        out[new] = value
    return out
