"""Upstream-class fixtures for DINO ViT checkpoints: a re-implementation of facebookresearch/dino's
`vision_transformer.py` (VisionTransformer whose Attention returns (x, attn), DINOHead with a weight-normalised
last layer) and `utils.MultiCropWrapper`, saved the way DINO's `main_dino.py` saves them.
"""
from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class DinoPatchEmbed(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.num_patches = (img_size // patch_size) * (img_size // patch_size)
        self.img_size, self.patch_size = img_size, patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x)), attn


class DinoMlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DinoBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DinoAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DinoMlp(dim, int(dim * mlp_ratio))

    def forward(self, x, return_attention=False):
        y, attn = self.attn(self.norm1(x))
        if return_attention:
            return attn
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 qkv_bias=True):
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = DinoPatchEmbed(img_size, patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList([DinoBlock(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()

    def interpolate_pos_encoding(self, x, w, h):
        npatch, N = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        class_pos, patch_pos = self.pos_embed[:, 0], self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_embed.patch_size + 0.1, h // self.patch_embed.patch_size + 0.1
        patch_pos = F.interpolate(patch_pos.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
                                  scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
        patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)

    def prepare_tokens(self, x):
        B, nc, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        return self.pos_drop(x + self.interpolate_pos_encoding(x, w, h))

    def forward(self, x):
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim, nlayers=3, hidden_dim=2048, bottleneck_dim=256, norm_last_layer=True,
                 parametrized=False):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.2)
                nn.init.normal_(m.bias, std=0.1)
        if parametrized:  # the newer torch API: keys last_layer.parametrizations.weight.original0/1
            self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
            g = self.last_layer.parametrizations.weight.original0
        else:  # DINO's call; deprecated in torch 2.x, same keys weight_g / weight_v as the released files
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
            g = self.last_layer.weight_g
        with torch.no_grad():
            g.uniform_(0.5, 2.0)
        if norm_last_layer:
            g.requires_grad = False

    def forward(self, x):
        x = nn.functional.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        backbone.fc, backbone.head = nn.Identity(), nn.Identity()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x))


class DDP(nn.Module):
    """Stands in for DistributedDataParallel: the student's keys get the 'module.' prefix."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def tiny_dino(seed: int = 0, embed_dim: int = 128, depth: int = 2, out_dim: int = 10,
              parametrized: bool = False) -> MultiCropWrapper:
    """A small DINO network: ViT (2 heads of 64) + DINOHead, random weights, float64."""
    torch.manual_seed(seed)
    vit = DinoVisionTransformer(img_size=32, patch_size=16, embed_dim=embed_dim, depth=depth,
                                num_heads=embed_dim // 64, mlp_ratio=2.0)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return MultiCropWrapper(vit, DINOHead(embed_dim, out_dim, nlayers=3, hidden_dim=48, bottleneck_dim=16,
                                             parametrized=parametrized)).double()


def save_backbone_only(net: MultiCropWrapper, path: Path) -> Path:
    """The released `dino_deitsmall16_pretrain.pth` layout: the backbone's state_dict, no prefix."""
    torch.save(net.backbone.state_dict(), path)
    return path


def save_full(student: MultiCropWrapper, teacher: MultiCropWrapper, path: Path) -> Path:
    """main_dino.py's save_dict: student (DDP, 'module.'), teacher, optimizer, epoch, args, dino_loss."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    args = argparse.Namespace(arch="vit_small", patch_size=16, out_dim=10, norm_last_layer=True, lr=0.0005)
    torch.save({"student": DDP(student).state_dict(), "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": 3, "args": args,
                "dino_loss": {"center": torch.zeros(1, 10)}}, path)
    return path
