"""Transformer explanations for ViTs: transformer attribution (Chefer, Gur & Wolf, CVPR 2021), attention
rollout (Abnar & Zuidema, ACL 2020) and generic attention (Chefer, Gur & Wolf, ICCV 2021).

Each works on the recorded forward pass of `vit_walk.record_vit`; its token map (row of the CLS token over
the patch tokens) is reshaped to the patch grid and bilinearly upsampled to the input size, B×1×H×W.
Relevance for transformer attribution follows the authors' LRP (github.com/hila-chefer/Transformer-Explainability,
`ViT_LRP.py` / `layers_ours.py`): LRP-αβ with α=1, β=0 on Linear layers, identity through LayerNorm, GELU,
softmax and dropout, gradient×input split of both matmuls halved between their operands, and residual
additions rescaled so each operand keeps its share of |Σ relevance| (per image here; the authors' batch is 1).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._validate import resolve_targets
from .vit_walk import BlockRecord, ViTRun, attention_gradients, record_vit


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """a / b with the authors' stabiliser: |b| at least 1e-9 keeping its sign, and 0 where b == 0."""
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).to(den.dtype) * 1e-9
    return a / den * b.ne(0).to(b.dtype)


def linear_relprop(relevance: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """LRP-α1β0 through y = x Wᵀ (bias ignored): relevance of the output → relevance of the input."""
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    px, nx = x.clamp(min=0), x.clamp(max=0)
    s = safe_divide(relevance, F.linear(px, pw) + F.linear(nx, nw))
    return px * (s @ pw) + nx * (s @ nw)


def _per_image_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1).reshape((-1,) + (1,) * (t.dim() - 1))


def add_relprop(relevance: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance of z = a + b split to a and b, each rescaled to its share |Σ| of Σ relevance (per image)."""
    s = safe_divide(relevance, a + b)
    ra, rb = a * s, b * s
    sa, sb, total = _per_image_sum(ra), _per_image_sum(rb), _per_image_sum(relevance)
    fa = safe_divide(sa.abs(), sa.abs() + sb.abs()) * total
    fb = safe_divide(sb.abs(), sa.abs() + sb.abs()) * total
    return ra * safe_divide(fa, sa), rb * safe_divide(fb, sb)


def clone_relprop(x: Tensor, *relevances: Tensor) -> Tensor:
    """Relevance of x used several times: x · Σ_i r_i / x (0 where x == 0)."""
    return x * sum(safe_divide(r, x) for r in relevances)


def matmul_relprop(relevance: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient×input relevance of z = a @ b for both operands, each halved (their sum is 2·Σ relevance)."""
    s = safe_divide(relevance, a @ b)
    return a * (s @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ s) / 2


def _block_relprop(rec: BlockRecord, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance at the block output → (relevance at the block input, relevance of its attention map)."""
    x1 = rec.x + rec.attn_out
    r_res, r_mlp = add_relprop(relevance, x1, rec.mlp_out)
    for inp, weight in reversed(rec.mlp_linears):
        r_mlp = linear_relprop(r_mlp, inp, weight)
    relevance = clone_relprop(x1, r_res, r_mlp)
    r_res, r_attn_out = add_relprop(relevance, rec.x, rec.attn_out)
    b, h, n, d = rec.v.shape
    r_merged = linear_relprop(r_attn_out, rec.merged, rec.proj_weight).reshape(b, n, h, d).transpose(1, 2)
    r_attn, r_v = matmul_relprop(r_merged, rec.attn, rec.v)
    r_q, r_k = matmul_relprop(r_attn, rec.q, rec.k.transpose(-2, -1))
    r_qkv = torch.stack([r_q, r_k.transpose(-2, -1), r_v]).permute(1, 3, 0, 2, 4).reshape(b, n, 3 * h * d)
    r_in = linear_relprop(r_qkv, rec.attn_in, rec.qkv_weight)
    return clone_relprop(rec.x, r_res, r_in), r_attn


def lrp_relevances(run: ViTRun, target: Tensor) -> tuple[list[Tensor], Tensor]:
    """LRP from a one-hot target: (each block's attention relevance B×h×N×N, relevance at the tokens B×N×D)."""
    out = run.output.detach()
    relevance = F.one_hot(target, out.shape[1]).to(out.dtype)
    for inp, weight in reversed(run.head_linears):
        relevance = linear_relprop(relevance, inp.detach(), weight.detach())
    last = run.blocks[-1]
    tokens = torch.zeros(last.x.shape, dtype=out.dtype, device=out.device)
    if run.pooling == "cls":  # the authors' IndexSelect rule on the classifier's input
        cls = run.head_linears[0][0].detach() if run.head_linears else out
        tokens[:, 0] = cls * safe_divide(relevance.reshape(cls.shape), cls)
    else:  # mean of the patch tokens: gradient×input of the average, X_i · (R / X̄) / n
        patches = (last.x + last.attn_out + last.mlp_out).detach()[:, -run.grid[0] * run.grid[1]:]
        mean = patches.mean(dim=1)
        tokens[:, -patches.shape[1]:] = patches * safe_divide(relevance.reshape(mean.shape), mean)[:, None] / patches.shape[1]
    relevance = tokens
    cams: list[Tensor] = []
    for rec in reversed(run.blocks):
        relevance, cam = _block_relprop(_detached(rec), relevance)
        cams.append(cam)
    return cams[::-1], relevance


def _detached(rec: BlockRecord) -> BlockRecord:
    return BlockRecord(**{k: (v.detach() if isinstance(v, Tensor) else
                              [(i.detach(), w.detach()) for i, w in v] if isinstance(v, list) else v)
                          for k, v in rec.__dict__.items()})


def _eye_like(a: Tensor) -> Tensor:
    return torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)


def rollout_transformer_attribution(cams: list[Tensor], grads: list[Tensor], start_layer: int = 0) -> Tensor:
    """C = Ā_L ⋯ Ā_s with Ā_b = I + E_h[(∇A_b ⊙ R_b)⁺] (CVPR'21 Eq. 13–14), B×N×N."""
    mats = [(g * c).clamp(min=0).mean(dim=1) for c, g in zip(cams, grads)]
    mats = [m + _eye_like(m) for m in mats]
    joint = mats[start_layer]
    for m in mats[start_layer + 1:]:
        joint = m @ joint
    return joint


def rollout_attention(attns: list[Tensor], residual: float = 0.5) -> Tensor:
    """Attention rollout: Ã_L ⋯ Ã_1 with Ã_b = (1 − r)·E_h[A_b] + r·I (rows stay stochastic), B×N×N."""
    joint = None
    for a in attns:
        m = (1 - residual) * a.mean(dim=1)
        m = m + residual * _eye_like(m)
        joint = m if joint is None else m @ joint
    return joint


def rollout_generic(attns: list[Tensor], grads: list[Tensor]) -> Tensor:
    """Generic attention (ICCV'21, self-attention rule): R ← R + Ā_b R from R = I, Ā_b = E_h[(∇A_b ⊙ A_b)⁺]."""
    relevance = _eye_like(attns[0].mean(dim=1)).clone()
    for a, g in zip(attns, grads):
        relevance = relevance + (g * a).clamp(min=0).mean(dim=1) @ relevance
    return relevance


def token_map_to_image(joint: Tensor, run: ViTRun) -> Tensor:
    """CLS row over the patch tokens → B×1×h×w patch grid → bilinear B×1×H×W."""
    gh, gw = run.grid
    patches = joint[:, 0, joint.shape[-1] - gh * gw:].reshape(-1, 1, gh, gw)
    return F.interpolate(patches, size=run.image_size, mode="bilinear", align_corners=False)


class _ViTMethod:
    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model

    def token_relevance(self, x: Tensor, target: object = None) -> tuple[Tensor, ViTRun]:
        """The B×N×N rolled-out token matrix and the recorded run."""
        raise NotImplementedError

    def attribute(self, x: Tensor, target: object = None) -> Tensor:
        """B×1×H×W heatmaps for `target` (None: top-1; int or LongTensor[B] of class ids)."""
        joint, run = self.token_relevance(x, target)
        return token_map_to_image(joint, run).detach()


class TransformerAttribution(_ViTMethod):
    """Chefer et al. CVPR'21: LRP relevance of each attention map × its gradient, rolled out over blocks."""

    def __init__(self, model: nn.Module, start_layer: int = 0):
        super().__init__(model)
        if isinstance(start_layer, bool) or not isinstance(start_layer, numbers.Integral) or start_layer < 0:
            raise ValueError(f"start_layer must be an int >= 0, got {start_layer!r}")
        self.start_layer = int(start_layer)

    def token_relevance(self, x: Tensor, target: object = None) -> tuple[Tensor, ViTRun]:
        run = record_vit(self.model, x)
        if self.start_layer >= len(run.blocks):
            raise ValueError(f"start_layer {self.start_layer} >= the model's {len(run.blocks)} blocks")
        t = resolve_targets(target, run.output.detach())
        attention_gradients(run, t)
        cams, _ = lrp_relevances(run, t)
        return rollout_transformer_attribution(cams, [r.grad for r in run.blocks], self.start_layer), run


class AttentionRollout(_ViTMethod):
    """Abnar & Zuidema 2020: head-averaged attention plus identity, multiplied over blocks (class-agnostic)."""

    def __init__(self, model: nn.Module, residual: float = 0.5):
        super().__init__(model)
        if isinstance(residual, bool) or not isinstance(residual, numbers.Real) or not 0 <= residual <= 1:
            raise ValueError(f"residual must be a number in [0, 1], got {residual!r}")
        self.residual = float(residual)

    def token_relevance(self, x: Tensor, target: object = None) -> tuple[Tensor, ViTRun]:
        run = record_vit(self.model, x)
        resolve_targets(target, run.output.detach())  # validated for a uniform API; rollout ignores it
        return rollout_attention([r.attn.detach() for r in run.blocks], self.residual), run


class GenericAttention(_ViTMethod):
    """Chefer et al. ICCV'21: gradient-weighted attention accumulated with the self-attention rule."""

    def token_relevance(self, x: Tensor, target: object = None) -> tuple[Tensor, ViTRun]:
        run = record_vit(self.model, x)
        t = resolve_targets(target, run.output.detach())
        attention_gradients(run, t)
        return rollout_generic([r.attn.detach() for r in run.blocks], [r.grad for r in run.blocks]), run
