"""DINO ViTs (Caron et al. 2021, facebookresearch/dino): ViT-S/16, ViT-B/16 and other widths.

Layouts read: the backbone-only release (`dino_deitsmall16_pretrain.pth`: cls_token, pos_embed, patch_embed.*,
blocks.N.*, norm.*, no prefix) and the full training checkpoint ({'teacher': backbone.*/head.*, 'student':
module.backbone.*/module.head.*, 'optimizer', 'epoch', 'args', 'dino_loss'}; the teacher by default). With a
DINOHead the model is backbone = ViT ▸ head MLP ▸ L2 normalisation and SSL head = the weight-normalised last
layer (its effective weight g·v/‖v‖); without one the head is the identity on the CLS features.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ssl_models.base import SSLModel
from ssl_models.checkpoint import DINO_NETWORKS, RawCheckpoint
from ssl_models.errors import CheckpointError
from ssl_models.mlp import L2Normalize
from ssl_models.keys import KeyMap, child_indices, require, require_contiguous, summarize_keys
from ssl_models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ssl_models.strict_load import load_strict

KIND = "dino_vit"
EXPECTED_KEYS = "cls_token, pos_embed, patch_embed.proj.* (optionally patch_embed.stem.*), blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*, norm.*"
HEAD_DIM = 64  # every DINO ViT (vit_tiny/small/base) uses 64-d heads: num_heads = embed_dim / 64
VARIANTS = {192: "vit_tiny", 384: "vit_small", 768: "vit_base"}


def looks_like(raw: RawCheckpoint) -> bool:
    """True for DINO/timm ViT weights (cls_token and blocks.0.attn.qkv, bare or under backbone.)."""
    keys = {k.removeprefix("backbone.") for k in raw.state}
    return "cls_token" in keys and "blocks.0.attn.qkv.weight" in keys


def _head_layers(state: Mapping[str, Tensor]) -> list[int]:
    layers = child_indices(state, "head.mlp.")
    if any(k.startswith("head.mlp.") and "running_mean" in k for k in state):
        raise CheckpointError("DINOHead with batch norm (use_bn=True) is not supported")
    if layers != list(range(0, 2 * len(layers), 2)):
        raise CheckpointError(f"DINOHead Linear layers at head.mlp.{layers}, expected head.mlp.0, 2, 4, ... "
                              "(Linear, GELU, Linear, ...)")
    return layers


def _last_layer_weight(state: Mapping[str, Tensor]) -> tuple[Tensor, list[str]]:
    """The effective weight g·v/‖v‖ of the weight-normalised last layer, and the file keys it used."""
    for g_key, v_key in (("head.last_layer.weight_g", "head.last_layer.weight_v"),
                         ("head.last_layer.parametrizations.weight.original0",
                          "head.last_layer.parametrizations.weight.original1")):
        if g_key in state and v_key in state:
            g, v = require(state, g_key, 2, "last layer g"), require(state, v_key, 2, "last layer v")
            if g.shape != (v.shape[0], 1):
                raise CheckpointError(f"{g_key} has shape {list(g.shape)}, expected [{v.shape[0]}, 1]")
            norm = v.norm(dim=1, keepdim=True)
            if bool((norm == 0).any()):
                raise CheckpointError(f"{v_key} has all-zero rows: the weight-normalised layer is undefined")
            return g * v / norm, [g_key, v_key]
    if "head.last_layer.weight" in state:
        return require(state, "head.last_layer.weight", 2, "last layer"), ["head.last_layer.weight"]
    raise CheckpointError(f"DINO head without a last layer: found {summarize_keys(k for k in state if k.startswith('head.'))}")


def build(raw: RawCheckpoint, variant: str | None = None) -> SSLModel:
    """The DINO ViT in `raw` (+ its DINOHead when present), strictly loaded, on the CPU in eval mode."""
    from sslx.models.vit import VisionTransformer

    if variant is not None and raw.wrapper_key not in DINO_NETWORKS:
        raise ValueError(f"variant={variant!r} only selects 'teacher'/'student' of a full DINO checkpoint")
    state = {k.removeprefix("backbone."): v for k, v in raw.state.items()}
    if len(state) != len(raw.state):
        raise CheckpointError("keys collide after removing the 'backbone.' prefix")
    cls = require(state, "cls_token", 3, "CLS token")
    pos = require(state, "pos_embed", 3, "position embedding")
    patch = require(state, "patch_embed.proj.weight", 4, "patch embedding")
    stem = _stem_channels(state)
    dim, patch_size = int(cls.shape[-1]), int(patch.shape[-1]) << len(stem)
    grid = round((pos.shape[1] - 1) ** 0.5)
    if grid * grid != pos.shape[1] - 1:
        raise CheckpointError(f"pos_embed holds {pos.shape[1]} tokens, not 1 + a square patch grid")
    depth = require_contiguous(child_indices(state, "blocks."), "transformer blocks (blocks.N.*)")
    hidden = int(require(state, "blocks.0.mlp.fc1.weight", 2, "MLP fc1").shape[0])
    num_heads, pool = _stored_architecture(raw.meta.get("args"), dim)
    config = {"img_size": grid * patch_size, "patch_size": patch_size, "embed_dim": dim, "depth": depth,
              "num_heads": num_heads, "mlp_ratio": hidden / dim, "qkv_bias": "blocks.0.attn.qkv.bias" in state,
              "pool": pool}
    if stem:
        config["stem_channels"] = stem
    head_layers = _head_layers(state)
    with torch.device("meta"):
        vit = VisionTransformer(**config)
    parts: list[tuple[str, nn.Module]] = [("vit", vit)]
    rules = [("", "backbone.vit.")]
    if head_layers:
        weight, used = _last_layer_weight(state)
        state = {k: v for k, v in state.items() if k not in used}
        state["head.last_layer.weight"] = weight
        mlp: list[nn.Module] = []
        prev = dim
        for i in head_layers:
            w = require(state, f"head.mlp.{i}.weight", 2, f"DINOHead Linear {i}")
            if w.shape[1] != prev:
                raise CheckpointError(f"head.mlp.{i}.weight has {w.shape[1]} inputs, expected {prev}")
            with torch.device("meta"):
                mlp += [nn.Linear(prev, int(w.shape[0])), nn.GELU()]
            prev = int(w.shape[0])
        mlp = mlp[:-1]
        parts += [("mlp", nn.Sequential(*mlp)), ("normalize", L2Normalize())]
        with torch.device("meta"):
            head = nn.Linear(prev, int(weight.shape[0]), bias=False)
        rules = [("", "backbone.vit."), ("head.last_layer.", "heads.0.")]
        rules += [(f"head.mlp.{i}.", f"backbone.mlp.{i}.") for i in head_layers]
        head_source = "DINOHead last layer (weight-normalised, effective weight g·v/‖v‖)"
    else:
        with torch.device("meta"):
            head = nn.Linear(dim, dim, bias=False)
        state = dict(state)
        state["__identity_head__"] = torch.eye(dim)
        rules.insert(0, ("__identity_head__", "heads.0.weight"))
        head_source = "none in the file: identity on the CLS features (class t = feature dimension t)"
    unexpected_head = [k for k in state if k.startswith("head.") and not k.startswith(("head.mlp.", "head.last_layer."))]
    if unexpected_head:
        raise CheckpointError(f"unexpected DINO head keys: {summarize_keys(unexpected_head)}")
    if isinstance(raw.meta.get("epoch"), int):
        raw.notes.append(f"stored epoch {raw.meta['epoch']}")
    info: dict[str, Any] = {"kind": KIND, "variant": f"{VARIANTS.get(dim, f'vit_{dim}d')}{patch_size}",
                            "head_source": head_source, "heads_K": [int(head.out_features)], "feature_dim":
                            int(head.in_features), "config": config, "notes": raw.notes}
    model = SSLModel(_sequential(parts), [head], layers=[n for n, _ in parts],
                     preprocess=Preprocess(IMAGENET_MEAN, IMAGENET_STD, config["img_size"]), info=info, head_index=0,
                     fixed_input_size=config["img_size"])
    load_strict(model, state, KeyMap(rules), raw.notes)
    return model


def _stem_channels(state: Mapping[str, Tensor]) -> list[int]:
    """Widths of a convolutional stem (patch_embed.stem.{0,2,…}: 3×3 stride-2 convs, sslx's tiny ViT); [] for none."""
    convs = sorted(int(k.split(".")[2]) for k in state if k.startswith("patch_embed.stem.") and k.endswith(".weight"))
    if convs != list(range(0, 2 * len(convs), 2)):
        raise CheckpointError(f"patch_embed.stem holds convolutions at {convs}, expected 0, 2, 4, … (conv, GELU pairs)")
    widths, prev = [], 3
    for i in convs:
        w = require(state, f"patch_embed.stem.{i}.weight", 4, f"stem convolution {i}")
        if tuple(w.shape[1:]) != (prev, 3, 3):
            raise CheckpointError(f"patch_embed.stem.{i}.weight has shape {tuple(w.shape)}, expected (C, {prev}, 3, 3)")
        widths.append(int(w.shape[0]))
        prev = int(w.shape[0])
    return widths


def _stored_architecture(args: object, dim: int) -> tuple[int, str]:
    """(num_heads, pooling): DINO's rule (64-d heads, CLS token) unless the stored `args` name them (sslx's DINO)."""
    num_heads = getattr(args, "num_heads", None)
    pool = getattr(args, "token_pooling", "cls")
    if num_heads is None:
        if dim % HEAD_DIM:
            raise CheckpointError(f"embedding width {dim} is not a multiple of DINO's {HEAD_DIM}-d heads")
        num_heads = dim // HEAD_DIM
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0 or dim % num_heads:
        raise CheckpointError(f"stored args.num_heads={num_heads!r} does not divide the embedding width {dim}")
    if pool not in ("cls", "mean"):
        raise CheckpointError(f"stored args.token_pooling={pool!r}, expected 'cls' or 'mean'")
    return num_heads, pool


def _sequential(parts: list[tuple[str, nn.Module]]) -> nn.Sequential:
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(parts))
