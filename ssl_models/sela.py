"""SeLa / self-label (Asano et al. 2020): BN AlexNet, pre-activation ResNet-50 (resnetv2), resnetv1, *_pp files."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from ssl_models.alexnet import CONV_NAMES, build_alexnet, infer_input_size
from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.errors import CheckpointError
from ssl_models.heads import linear_heads
from ssl_models.keys import KeyMap, require, require_contiguous
from ssl_models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ssl_models.resnet import STAGES, build_resnet, infer_block_kind
from ssl_models.strict_load import load_strict

KIND = "sela"
EXPECTED_KEYS = ("features.N.* + classifier.1/4.* + top_layer[N].* (AlexNet), features.0/2..5.* + top_layer* "
                 "(resnetv2), features.0/1/4..7.* + top_layer* (resnetv1), or torchvision conv1/layer1..4/fc.* "
                 "inside {'state_dict', 'labels'} (*_pp)")
LABEL_KEYS = ("labels", "L")
# SeLa AlexNet `features` indices of conv1..conv5 (each followed by its BatchNorm at index + 1).
ALEXNET_CONV_INDEX = (0, 4, 8, 11, 14)
ALEXNET_WIDTHS = {(96, 256, 384, 384, 256): "alexnet-big", (64, 192, 384, 256, 256): "alexnet-small"}
_MULTI_HEAD = re.compile(r"top_layer(\d+)\.weight$")


def looks_like(raw: RawCheckpoint) -> bool:
    """True for SeLa layouts: features.* with top_layer* heads, or torchvision keys stored with pseudo-labels."""
    state = raw.state
    if any(key.startswith("features.") for key in state) and any(key.startswith("top_layer") for key in state):
        return True
    return is_torchvision(state) and any(key in raw.meta for key in LABEL_KEYS)


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The SeLa model in `raw`, strictly loaded, with head 0 selected."""
    if variant is not None:
        raise ValueError(f"SeLa checkpoints take no variant (the layout is detected), got variant={variant!r}")
    state = raw.state
    if any(key.startswith("sobel.") for key in state):
        raise CheckpointError("this is a DeepCluster checkpoint (Sobel input layer, 2-channel conv1); "
                              "only SeLa / self-label models are supported")
    _note_metadata(raw)
    if is_torchvision(state):
        return _build_torchvision(raw)
    if any(key.startswith("classifier.") for key in state):
        return _build_alexnet(raw)
    if "features.1.running_mean" in state:  # resnetv1: features = conv1, bn1, relu, maxpool, layer1..4, pool
        return _build_resnet(raw, preact=False)
    if "features.2.0.conv1.weight" in state:  # resnetv2: features = conv, maxpool, layer1..4, pool
        return _build_resnet(raw, preact=True)
    raise CheckpointError(f"unrecognised SeLa layout; expected {EXPECTED_KEYS}")


def is_torchvision(state: Mapping[str, Tensor]) -> bool:
    """True for torchvision ResNet keys (conv1, layer1..4, fc), the layout of SeLa *_pp files."""
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state and "fc.weight" in state


def _sela_heads(state: Mapping[str, Tensor]) -> tuple[list[str], list[tuple[str, str]]]:
    """Head weight keys and renaming rules for top_layer0..N (several heads) or top_layer / top_layer.0 (one)."""
    multi = sorted(int(m.group(1)) for key in state if (m := _MULTI_HEAD.match(key)))
    single = [prefix for prefix in ("top_layer.", "top_layer.0.") if f"{prefix}weight" in state]
    if multi and single:
        raise CheckpointError("the file has both top_layerN.* heads and a single top_layer.* head")
    if multi:
        require_contiguous(multi, "SeLa heads top_layerN.*")
        return [f"top_layer{h}.weight" for h in multi], [(f"top_layer{h}.", f"heads.{h}.") for h in multi]
    if single:
        return [f"{single[0]}weight"], [(single[0], "heads.0.")]
    raise CheckpointError("no SeLa head found: expected top_layerN.weight (several heads) or top_layer.weight")


def _build_alexnet(raw: RawCheckpoint) -> SSLModel:
    state = raw.state
    widths = tuple(int(require(state, f"features.{i}.weight", 4, f"AlexNet {name}").shape[0])
                   for i, name in zip(ALEXNET_CONV_INDEX, CONV_NAMES))
    fc6 = require(state, "classifier.1.weight", 2, "AlexNet fc6")
    fc7 = require(state, "classifier.4.weight", 2, "AlexNet fc7")
    flatten = int(fc6.shape[1])
    input_size = infer_input_size(flatten, widths[-1], "classifier.1.weight")
    head_keys, head_rules = _sela_heads(state)
    with torch.device("meta"):  # every tensor is replaced by the file's in load_strict
        backbone = build_alexnet(widths, flatten, (int(fc6.shape[0]), int(fc7.shape[0])), "dropout")
        heads = linear_heads(state, head_keys, int(fc7.shape[0]))
    rules = [(f"features.{i + j}.", f"backbone.{name}.{j}.")
             for i, name in zip(ALEXNET_CONV_INDEX, CONV_NAMES) for j in (0, 1)]
    rules += [("classifier.1.", "backbone.fc6.1."), ("classifier.4.", "backbone.fc7.1.")] + head_rules
    variant = ALEXNET_WIDTHS.get(widths, "alexnet")
    info = _info(variant, heads, int(fc7.shape[0]), raw, widths=widths, flatten=flatten)
    model = SSLModel(backbone, heads, layers=CONV_NAMES, preprocess=Preprocess(IMAGENET_MEAN, IMAGENET_STD, input_size),
                     info=info, head_index=0, fixed_input_size=input_size)
    load_strict(model, state, KeyMap(rules), raw.notes)
    return model


def _build_resnet(raw: RawCheckpoint, preact: bool) -> SSLModel:
    state = raw.state
    head_keys, head_rules = _sela_heads(state)
    with torch.device("meta"):  # every tensor is replaced by the file's in load_strict
        if preact:
            stages = tuple(f"features.{i}." for i in range(2, 6))
            backbone, shape = build_resnet(state, "features.0.weight", stages, "shortcut", "preact", "preact")
            rules = [("features.0.", "backbone.conv1.")]
            variant, fixed = f"resnetv2-{shape.depth}", None
        else:
            stages = tuple(f"features.{i}." for i in range(4, 8))
            block = infer_block_kind(state, "features.4.0.")
            backbone, shape = build_resnet(state, "features.0.weight", stages, "downsample", block, "imagenet",
                                           fixed_pool=7)
            rules = [("features.0.", "backbone.conv1."), ("features.1.", "backbone.bn1.")]
            variant, fixed = f"resnetv1-{shape.depth}", 224
        heads = linear_heads(state, head_keys, shape.feature_dim)
    rules += [(prefix, f"backbone.{stage}.") for prefix, stage in zip(stages, STAGES)]
    info = _info(variant, heads, shape.feature_dim, raw, depths=shape.depths, widths=shape.widths)
    model = SSLModel(backbone, heads, layers=STAGES, preprocess=Preprocess(IMAGENET_MEAN, IMAGENET_STD, 224),
                     info=info, head_index=0, fixed_input_size=fixed)
    load_strict(model, state, KeyMap(rules + head_rules), raw.notes)
    return model


def _build_torchvision(raw: RawCheckpoint) -> SSLModel:
    state = raw.state
    block = infer_block_kind(state, "layer1.0.")
    with torch.device("meta"):  # every tensor is replaced by the file's in load_strict
        backbone, shape = build_resnet(state, "conv1.weight", tuple(f"{s}." for s in STAGES), "downsample", block,
                                       "imagenet")
        heads = linear_heads(state, ["fc.weight"], shape.feature_dim)
    rules = [("conv1.", "backbone.conv1."), ("bn1.", "backbone.bn1."), ("fc.", "heads.0.")]
    rules += [(f"{stage}.", f"backbone.{stage}.") for stage in STAGES]
    raw.notes.append("torchvision-style *_pp file: only head 0 of the original model is kept (as fc)")
    info = _info(f"torchvision-resnet{shape.depth}", heads, shape.feature_dim, raw,
                 depths=shape.depths, widths=shape.widths)
    model = SSLModel(backbone, heads, layers=STAGES, preprocess=Preprocess(IMAGENET_MEAN, IMAGENET_STD, 224),
                     info=info, head_index=0)
    load_strict(model, state, KeyMap(rules), raw.notes)
    return model


def _info(variant: str, heads: list, feature_dim: int, raw: RawCheckpoint, **extra: object) -> dict:
    heads_k = [h.out_features for h in heads]
    if len(heads_k) > 1 and heads_k[-1] == 4 and heads_k[0] != 4:
        raw.notes.append(f"last head (index {len(heads_k) - 1}) is 4-way: the RotNet head of a '-wRot' model")
    return {"kind": KIND, "variant": variant, "head_source": "default (SeLa head 0)", "heads_K": heads_k,
            "feature_dim": feature_dim, **extra, "notes": raw.notes}


def _note_metadata(raw: RawCheckpoint) -> None:
    for key in LABEL_KEYS:
        value = raw.meta.get(key)
        if isinstance(value, Tensor):
            raw.notes.append(f"pseudo-labels {key!r} {list(value.shape)} ignored")
    if "arch" in raw.meta:
        raw.notes.append(f"stored arch {raw.meta['arch']!r}")
