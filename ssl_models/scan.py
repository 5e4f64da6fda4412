"""SCAN (Van Gansbeke et al. 2020): ResNet-50 / CIFAR-STL ResNet-18 backbones with cluster heads."""
from __future__ import annotations

import torch

from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.errors import CheckpointError
from ssl_models.heads import linear_heads, stored_index
from ssl_models.keys import KeyMap, child_indices, require, require_contiguous
from ssl_models.preprocess import (CIFAR10_MEAN, CIFAR10_STD, CIFAR20_MEAN, CIFAR20_STD, IMAGENET_MEAN,
                                   IMAGENET_STD, Preprocess)
from ssl_models.resnet import STAGES, build_resnet, infer_block_kind, projection_name
from ssl_models.strict_load import load_strict

KIND = "scan"
VARIANTS = ("imagenet", "cifar", "stl")
EXPECTED_KEYS = "backbone.conv1.weight, backbone.layer1..4.*, cluster_head.N.weight/bias"


def looks_like(raw: RawCheckpoint) -> bool:
    """True for SCAN clustering/self-label weights (and pretext weights, which `build` rejects clearly)."""
    state = raw.state
    has_backbone = any(key.startswith("backbone.") for key in state)
    return has_backbone and any(key.startswith(("cluster_head.", "contrastive_head.")) for key in state)


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The SCAN model in `raw`, strictly loaded, with the stored best head selected."""
    state = raw.state
    if any(key.startswith("contrastive_head.") for key in state):
        raise CheckpointError(
            "this is a SCAN pretext (SimCLR/MoCo) checkpoint with a contrastive_head and no cluster_head; "
            "only SCAN clustering and self-labelling models (cluster_head.N.*) are supported"
        )
    num_heads = require_contiguous(child_indices(state, "cluster_head."), "SCAN cluster heads cluster_head.N.*")
    kernel = int(require(state, "backbone.conv1.weight", 4, "SCAN backbone stem").shape[-1])
    stem = _stem(kernel, variant)
    file_stages = tuple(f"backbone.{stage}." for stage in STAGES)
    block = infer_block_kind(state, "backbone.layer1.0.")
    file_projection = "shortcut" if any(".shortcut." in key for key in state) else "downsample"
    with torch.device("meta"):  # every tensor is replaced by the file's in load_strict
        backbone, shape = build_resnet(state, "backbone.conv1.weight", file_stages, file_projection, block, stem,
                                       fixed_pool=7 if stem == "stl" else None)
        weight_keys = [f"cluster_head.{h}.weight" for h in range(num_heads)]
        heads = linear_heads(state, weight_keys, shape.feature_dim)

    rules = [("backbone.", "backbone."), ("cluster_head.", "heads.")]
    ours = projection_name(block)
    if file_projection != ours:  # CIFAR/STL files call the projection `shortcut`
        for stage in STAGES:
            for b in child_indices(state, f"backbone.{stage}."):
                rules.append((f"backbone.{stage}.{b}.{file_projection}.", f"backbone.{stage}.{b}.{ours}."))
    head, head_source = _default_head(raw, num_heads)
    variant_name = f"resnet{shape.depth}" + ("" if stem == "imagenet" else f"-{stem}")
    info = {
        "kind": KIND, "variant": variant_name, "head_source": head_source,
        "heads_K": [h.out_features for h in heads], "feature_dim": shape.feature_dim,
        "depths": shape.depths, "widths": shape.widths, "notes": raw.notes,
    }
    if stem == "cifar":
        raw.notes.append(
            "CIFAR and STL-10 SCAN ResNets have identical keys; loaded as CIFAR (pass variant='stl' for STL-10)"
        )
    preprocess, fixed = _preprocess(stem, heads[0].out_features, raw.notes)
    model = SSLModel(backbone, heads, layers=STAGES, preprocess=preprocess, info=info, head_index=head,
                     fixed_input_size=fixed)
    load_strict(model, state, KeyMap(rules), raw.notes)
    return model


def _stem(kernel: int, variant: str | None) -> str:
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown SCAN variant {variant!r}; valid: {VARIANTS}")
    if kernel == 7:
        if variant not in (None, "imagenet"):
            raise CheckpointError(f"variant={variant!r} contradicts the file: its 7×7 stem is the ImageNet ResNet")
        return "imagenet"
    if kernel == 3:
        if variant == "imagenet":
            raise CheckpointError("variant='imagenet' contradicts the file: its 3×3 stem is the CIFAR/STL ResNet")
        return variant or "cifar"
    raise CheckpointError(
        f"'backbone.conv1.weight' has a {kernel}×{kernel} kernel; SCAN uses 7×7 (ImageNet) or 3×3 (CIFAR/STL)"
    )


def _default_head(raw: RawCheckpoint, num_heads: int) -> tuple[int, str]:
    for name in ("head", "best_loss_head"):
        if name in raw.meta and raw.meta[name] is not None:
            index = stored_index(raw.meta[name], name)
            if not 0 <= index < num_heads:
                raise CheckpointError(f"stored {name!r} = {index} is out of range for {num_heads} cluster head(s)")
            return index, f"stored {name!r}"
    return 0, "default (file stores no best head)"


def _preprocess(stem: str, clusters: int, notes: list[str]) -> tuple[Preprocess, int | None]:
    if stem == "imagenet":
        return Preprocess(IMAGENET_MEAN, IMAGENET_STD, 224), None
    if stem == "stl":
        return Preprocess(IMAGENET_MEAN, IMAGENET_STD, 96), 96
    if clusters == 20:
        notes.append("20 clusters: CIFAR-100-20 normalisation")
        return Preprocess(CIFAR20_MEAN, CIFAR20_STD, 32), None
    return Preprocess(CIFAR10_MEAN, CIFAR10_STD, 32), None
