"""RotNet (Gidaris et al. 2018): the BN AlexNet with `_feature_blocks` and its 4-way rotation head."""
from __future__ import annotations

import torch

from ssl_models.alexnet import CONV_NAMES, build_alexnet, infer_input_size
from ssl_models.base import SSLModel
from ssl_models.checkpoint import RawCheckpoint
from ssl_models.errors import CheckpointError
from ssl_models.heads import linear_heads
from ssl_models.keys import KeyMap, require
from ssl_models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ssl_models.strict_load import load_strict

KIND = "rotnet"
EXPECTED_KEYS = "_feature_blocks.{0,2,4,5,6}.{0,1}.*, _feature_blocks.8.{1,2,4,5}.*, _feature_blocks.9.0.*"
# `_feature_blocks` indices of conv1..conv5 (1, 3 and 7 are the max-pools, 8 the fc block, 9 the classifier).
CONV_BLOCKS = (0, 2, 4, 5, 6)


def looks_like(raw: RawCheckpoint) -> bool:
    """True for gidariss RotNet networks (keys under _feature_blocks)."""
    return any(key.startswith("_feature_blocks.") for key in raw.state)


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The RotNet AlexNet in `raw`, strictly loaded, with its rotation head."""
    if variant is not None:
        raise ValueError(f"RotNet checkpoints take no variant, got variant={variant!r}")
    state = raw.state
    if any(".Block" in key for key in state):
        raise CheckpointError(
            "this is RotNet's CIFAR NetworkInNetwork (Block*_ConvB* keys); only the AlexNet is supported"
        )
    widths = tuple(int(require(state, f"_feature_blocks.{i}.0.weight", 4, f"AlexNet {name}").shape[0])
                   for i, name in zip(CONV_BLOCKS, CONV_NAMES))
    fc6 = require(state, "_feature_blocks.8.1.weight", 2, "fc_block first Linear")
    fc7 = require(state, "_feature_blocks.8.4.weight", 2, "fc_block second Linear")
    flatten = int(fc6.shape[1])
    input_size = infer_input_size(flatten, widths[-1], "_feature_blocks.8.1.weight")
    with torch.device("meta"):  # every tensor is replaced by the file's in load_strict
        backbone = build_alexnet(widths, flatten, (int(fc6.shape[0]), int(fc7.shape[0])), "batchnorm")
        heads = linear_heads(state, ["_feature_blocks.9.0.weight"], int(fc7.shape[0]))
    rules = [(f"_feature_blocks.{i}.", f"backbone.{name}.") for i, name in zip(CONV_BLOCKS, CONV_NAMES)]
    rules += [("_feature_blocks.8.1.", "backbone.fc6.0."), ("_feature_blocks.8.2.", "backbone.fc6.1."),
              ("_feature_blocks.8.4.", "backbone.fc7.0."), ("_feature_blocks.8.5.", "backbone.fc7.1."),
              ("_feature_blocks.9.0.", "heads.0.")]
    if heads[0].out_features == 4:
        raw.notes.append("head classes 0..3 = rotation by 0/90/180/270 degrees counter-clockwise (torch.rot90 k)")
    if "epoch" in raw.meta:
        raw.notes.append(f"stored epoch {raw.meta['epoch']!r}")
    info = {"kind": KIND, "variant": "rotnet-alexnet", "head_source": "the single rotation classifier",
            "heads_K": [heads[0].out_features], "feature_dim": int(fc7.shape[0]), "widths": widths,
            "flatten": flatten, "notes": raw.notes}
    model = SSLModel(backbone, heads, layers=CONV_NAMES, preprocess=Preprocess(IMAGENET_MEAN, IMAGENET_STD, input_size),
                     info=info, head_index=0, fixed_input_size=input_size)
    load_strict(model, state, KeyMap(rules), raw.notes)
    return model
