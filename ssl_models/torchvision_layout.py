"""ResNet backbones stored under torchvision key names (conv1, bn1, layer1..4), the layout of modern SSL files."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.errors import CheckpointError
from ssl_models.keys import KeyMap, summarize_keys
from ssl_models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ssl_models.resnet import STAGES, build_resnet, infer_block_kind
from ssl_models.strict_load import load_strict

IMAGENET = Preprocess(IMAGENET_MEAN, IMAGENET_STD, 224)
# SimCLR v1/v2 (TensorFlow) models take [0,1] pixels without mean/std normalisation.
UNNORMALISED = Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 224)


def has_trunk(state: Mapping[str, Tensor], prefix: str = "") -> bool:
    """True when `state` holds a torchvision ResNet trunk under `prefix` (conv1 and layer1..4)."""
    return f"{prefix}conv1.weight" in state and all(f"{prefix}{stage}.0.conv1.weight" in state for stage in STAGES)


def sub_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Entries under `prefix`, with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def drop(raw: RawCheckpoint, prefixes: Sequence[str], why: str) -> dict[str, Tensor]:
    """`raw.state` without the keys under `prefixes` (noted in raw.notes when any were present)."""
    kept = {key: value for key, value in raw.state.items() if not key.startswith(tuple(prefixes))}
    dropped = [key for key in raw.state if key not in kept]
    if dropped:
        raw.notes.append(f"ignored {summarize_keys(dropped, limit=3)}: {why}")
    return kept


def build_torchvision_model(
    raw: RawCheckpoint,
    trunk_prefix: str,
    kind: str,
    *,
    preprocess: Preprocess = IMAGENET,
    embed: Sequence[tuple[str, nn.Module]] = (),
    embed_rules: Sequence[tuple[str, str]] = (),
    head: nn.Linear | None = None,
    head_prefix: str = "",
    projector: nn.Module | None = None,
    projector_prefix: str = "",
    state: Mapping[str, Tensor] | None = None,
    variant_suffix: str = "",
) -> SSLModel:
    """An SSLModel over the ResNet trunk at `trunk_prefix`, strictly loaded from `state` (default raw.state).

    `embed` modules are appended to the backbone after the pooled features (SwAV/DINO projection, file keys
    renamed by `embed_rules`), `head` is the SSL classifier (read from `head_prefix`*), `projector` an unused
    training projection (read from `projector_prefix`*). Everything else in `state` is an error.
    """
    state = raw.state if state is None else state
    if not has_trunk(state, trunk_prefix):
        raise CheckpointError(f"no ResNet trunk under {trunk_prefix or 'the top level'!r} "
                              f"(expected {trunk_prefix}conv1.weight and {trunk_prefix}layer1..4.*); "
                              f"found {summarize_keys(state)}")
    block = infer_block_kind(state, f"{trunk_prefix}layer1.0.")
    stages = tuple(f"{trunk_prefix}{stage}." for stage in STAGES)
    with torch.device("meta"):  # every tensor is replaced by the file's in load_strict
        backbone, shape = build_resnet(state, f"{trunk_prefix}conv1.weight", stages, "downsample", block, "imagenet")
    for name, module in embed:
        backbone.add_module(name, module)
    rules = [(f"{trunk_prefix}conv1.", "backbone.conv1."), (f"{trunk_prefix}bn1.", "backbone.bn1.")]
    rules += [(prefix, f"backbone.{stage}.") for prefix, stage in zip(stages, STAGES)]
    rules += list(embed_rules)
    if head is not None:
        rules.append((head_prefix, "heads.0."))
    if projector is not None:
        rules.append((projector_prefix, "projector."))
    info = {"kind": kind, "variant": f"resnet{shape.depth}{variant_suffix}", "head_source": "SSL classifier in the file"
            if head is not None else "none (head-less model; fit sslx.cluster_head.ClusterHead)",
            "heads_K": [head.out_features] if head is not None else [], "feature_dim": shape.feature_dim,
            "depths": shape.depths, "widths": shape.widths, "notes": raw.notes}
    model = SSLModel(backbone, [head] if head is not None else [], projector=projector, layers=STAGES,
                     preprocess=preprocess, info=info)
    load_strict(model, state, KeyMap(rules), raw.notes)
    return model
