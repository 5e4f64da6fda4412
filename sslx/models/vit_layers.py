"""Probe-able ViT layers: `truncate("block4")` maps images to the CLS token (or the mean patch token) after block 4."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sslx.models.vit import VisionTransformer

TOKENS = ("cls", "mean")


class ViTTrunk(nn.Module):
    """Patch embedding and the first `depth` blocks of a ViT (weights shared); output B×D×1×1."""

    def __init__(self, vit: VisionTransformer, depth: int, token: str = "cls"):
        super().__init__()
        if token not in TOKENS:
            raise ValueError(f"token must be one of {TOKENS}, got {token!r}")
        if not 1 <= depth <= len(vit.blocks):
            raise ValueError(f"depth must be in 1..{len(vit.blocks)}, got {depth}")
        self.patch_embed, self.cls_token, self.pos_embed = vit.patch_embed, vit.cls_token, vit.pos_embed
        self.img_size = vit.img_size
        self.blocks = nn.ModuleList(list(vit.blocks)[:depth])
        self.token_pooling = token  # read by the transformer explanations' LRP (CLS or mean of patch tokens)

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        pooled = t[:, 0] if self.token_pooling == "cls" else t[:, 1:].mean(dim=1)
        return pooled[:, :, None, None]


class ViTLayers(nn.Module):
    """A frozen ViT seen as probe-able layers block1..blockN (the interface sslx.probe expects)."""

    def __init__(self, vit: VisionTransformer, preprocess: object, token: str = "cls", info: dict | None = None):
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"vit must be an sslx VisionTransformer, got {type(vit).__name__}")
        if token not in TOKENS:
            raise ValueError(f"--vit-token must be one of {TOKENS}, got {token!r}")
        self.vit, self.preprocess, self.token = vit, preprocess, token
        self.layers = tuple(f"block{i}" for i in range(1, len(vit.blocks) + 1))
        self.info = dict(info or {}, vit_token=token)

    def truncate(self, name: str) -> ViTTrunk:
        """Images → B×D×1×1 token after block `name` ("block4" = after the 4th block)."""
        if name not in self.layers:
            raise ValueError(f"unknown layer {name!r}; probe-able layers are {self.layers}")
        return ViTTrunk(self.vit, int(name.removeprefix("block")), self.token)

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(x)
