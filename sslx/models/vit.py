"""A small Vision Transformer with the timm/DINO module layout (patch_embed.proj, blocks.N.attn.qkv, norm, head)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: one strided convolution, optionally after a convolutional stem.

    `stem_channels` (c_1, …, c_n): n 3×3 stride-2 convolutions with GELU before the projection, whose kernel
    and stride are then patch_size / 2ⁿ (the "early convolutions" of Xiao et al. 2021, ViT_C; they make a
    small ViT trainable from scratch on little data).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, stem_channels: Sequence[int] = ()):
        super().__init__()
        stem_channels = tuple(int(c) for c in stem_channels)
        kernel = patch_size >> len(stem_channels)
        if kernel < 1 or kernel << len(stem_channels) != patch_size or min(stem_channels, default=1) < 1:
            raise ValueError(f"patch_size {patch_size} is not 2^{len(stem_channels)} (one halving per stem conv) "
                             f"times an integer kernel, or stem_channels {stem_channels} has a width < 1")
        self.patch_size = patch_size
        if stem_channels:
            layers: list[nn.Module] = []
            for c in stem_channels:
                layers += [nn.Conv2d(in_chans, c, 3, 2, 1), nn.GELU()]
                in_chans = c
            self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "stem"):
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    """fc1 → GELU → fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(·))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a CLS token; `head` is a Linear classifier, or Identity (num_classes=0) for features.

    pool="cls": features = norm(tokens)[CLS] (DINO/timm); pool="mean": features = norm(mean of the patch
    tokens after the last block), which trains much faster from scratch on small data.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 8, in_chans: int = 3, num_classes: int = 0,
                 embed_dim: int = 64, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, pool: str = "cls", stem_channels: Sequence[int] = ()):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.token_pooling = pool  # read by the transformer explanations' LRP
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, stem_channels)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if pool == "mean":  # fixed-frequency 2-D sin-cos start (Beyer et al. 2022, "Better plain ViT baselines")
            with torch.no_grad():
                self.pos_embed[0, 1:] = sincos_2d(img_size // patch_size, embed_dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def tokens(self, x: Tensor, depth: int | None = None) -> Tensor:
        """B×(1+P)×D tokens after `depth` blocks (all blocks and the final norm when None)."""
        if x.shape[-2] != self.img_size or x.shape[-1] != self.img_size:
            raise ValueError(f"expected {self.img_size}×{self.img_size} images, got shape {tuple(x.shape)}")
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.pos_drop(t + self.pos_embed)
        for block in self.blocks[:depth]:
            t = block(t)
        return self.norm(t) if depth is None else t

    def forward(self, x: Tensor) -> Tensor:
        if self.token_pooling == "mean":
            return self.head(self.norm(self.tokens(x, len(self.blocks))[:, 1:].mean(dim=1)))
        return self.head(self.tokens(x)[:, 0])


def sincos_2d(side: int, dim: int) -> Tensor:
    """side²×dim 2-D sine-cosine position codes (rows then columns)."""
    if dim % 4:
        raise ValueError(f"embed_dim {dim} must be a multiple of 4 for 2-D sin-cos position codes")
    y, x = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                          indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4 - 1))
    y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


TINY_VIT = {"img_size": 128, "patch_size": 16, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0,
            "pool": "mean"}


def tiny_vit(num_classes: int = 0, **overrides: int | float) -> VisionTransformer:
    """The embedded tiny ViT for the 128×128 scenes: 16×16 patches (8×8 grid), 64-d, 4 blocks, 4 heads, mean pool."""
    return VisionTransformer(num_classes=num_classes, **{**TINY_VIT, **overrides})
