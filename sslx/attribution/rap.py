"""RAP (relative attributing propagation) as rules on the propagation engine, with the reference's semantics.

Reproduces `RAP_relprop` of the authors' baseline code (github.com/shirgur/AGFVisualization,
`modules/layers_rap.py`) as its script calls it, see ../shared/golden/README.md, "Baselines / rap":

* Linear and Conv2d with a kernel taller than 1: the relevance is split by sign and distributed over
  the positive and negative contributions of x⁺ and of x⁻ separately, then a uniform shift over the
  non-zero entries restores each part's total (`positive_negative_rule`).
* Convolutions with kernel height 1: "absolute" z-rule |x| ⊙ |W|ᵀ·safe_divide(R, |W|·|x|), no shift.
* The convolution touching the image: z^B with per-image bounds and safe division.
* BatchNorm: ≈ identity, with the bias' share passed separately (`norm_rule`).
* ReLU, Dropout: identity; pooling and the residual add: z-rule; forks: plain sum.

The reference's Linear rule has a "first propagation" branch taken only when the incoming relevance
has maximum exactly 1 (a one-hot target); its script passes the logit-valued target, so that branch is
never taken and is not implemented here: every Linear, the head included, uses the generic rule.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .convops import conv_forward, conv_transpose
from .graph import CONV, LINEAR, NORM, PASS, RELU, ModelGraph, Step
from .lrp import (affine_adjoint, affine_forward, propagate_relevance, reference_norm_scale, run_model,
                  target_relevance, zb_rule)
from .numerics import per_image_sum, safe_divide
from .propagation import structural_rule


def shift_to_total(c: Tensor, target_total: Tensor) -> Tensor:
    """C − 1[C≠0]·safe_divide(ΣC − ΣR, #{C≠0}) per image: the uniform shift that restores the total ΣR."""
    nonzero = (c != 0).to(c.dtype)
    return c - safe_divide(per_image_sum(c) - target_total, per_image_sum(nonzero)) * nonzero


def _signed_part(step: Step, x1: Tensor, w1: Tensor, sign1: float, w2: Tensor, sign2: float, r: Tensor,
                 mask: Tensor) -> Tensor:
    """One input sign: Z1 = m⊙(±w1·x1) and Z2 = m⊙(±w2·x1) share R⁺ and R⁻ by their ratios, then the shift.

    The signs are applied to the outputs (exact) rather than to copies of the weights (large for Linear).
    """
    z1 = sign1 * affine_forward(step, x1, w1) * mask
    z2 = sign2 * affine_forward(step, x1, w2) * mask
    r_pos, r_neg = r.clamp(min=0), r.clamp(max=0)
    z = z1 + z2
    whole = safe_divide(z, z)  # ≈ 1: the reference keeps this factor
    share2 = safe_divide(z2, z)
    s1 = safe_divide(r_pos * whole, z1)
    s2 = safe_divide(r_pos * share2, z2) + safe_divide(r_neg * share2, z2)
    if step.kind == CONV:  # the reference sends R⁻'s whole share through Z2 for Conv2d, through Z1 for Linear
        s2 = s2 + safe_divide(r_neg * whole, z2)
    else:
        s1 = s1 + safe_divide(r_neg * whole, z1)
    back = sign1 * affine_adjoint(step, s1, w1, x1.shape) + sign2 * affine_adjoint(step, s2, w2, x1.shape)
    return shift_to_total(x1 * back, per_image_sum(r))


def positive_negative_rule(step: Step, x: Tensor, r: Tensor) -> Tensor:
    """RAP's rule for Linear and Conv2d: the x⁺ part (Z1 = W⁺x⁺, Z2 = −W⁻x⁺) plus the x⁻ part."""
    w = step.module.weight
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    mask = (r != 0).to(r.dtype)
    out = _signed_part(step, x.clamp(min=0), wp, 1.0, wn, -1.0, r, mask)
    if bool((x < 0).any()):  # for non-negative inputs every term of the x⁻ part is exactly zero
        out = out + _signed_part(step, x.clamp(max=0), wp, -1.0, wn, 1.0, r, mask)
    return out


def absolute_rule(step: Step, x: Tensor, r: Tensor) -> Tensor:
    """|x| ⊙ |W|ᵀ·safe_divide(R, 1[R≠0] ⊙ (|W|·|x|)) for convolutions with kernel height 1."""
    xa, wa = x.abs(), step.module.weight.abs()
    s = safe_divide(r, conv_forward(step.module, xa, wa) * (r != 0))
    return xa * conv_transpose(step.module, s, wa, x.shape)


def norm_rule(step: Step, x: Tensor, r: Tensor) -> Tensor:
    """BatchNorm ≈ identity: the bias' share b_c/#{R≠0 in channel c} is passed apart and added back."""
    m = step.module
    w = reference_norm_scale(m, x.dim())
    xw = x * w

    def through(rel: Tensor) -> Tensor:
        return x * (safe_divide(rel, xw) * w)

    if m.bias is None:
        return through(r)
    nonzero = (r != 0).to(r.dtype)
    spatial = tuple(range(2, r.dim()))
    bias = m.bias.reshape((1, -1) + (1,) * (r.dim() - 2))
    bias_share = safe_divide(bias * nonzero, nonzero.sum(dim=spatial, keepdim=True) if spatial else nonzero)
    return through(r - bias_share) + through(bias_share)


def rap_rule(step: Step, inputs: list, y: Tensor, r: Tensor) -> list:
    """RAP's rule for one step."""
    kind = step.kind
    if kind in (RELU, PASS):
        return [r]
    if kind == NORM:
        return [norm_rule(step, inputs[0], r)]
    if kind == CONV and step.role == "first":
        return [zb_rule(step, inputs[0], r, stabilized=False)]
    if kind == CONV and step.module.kernel_size[0] == 1:
        return [absolute_rule(step, inputs[0], r)]
    if kind in (CONV, LINEAR):
        return [positive_negative_rule(step, inputs[0], r)]
    generic = structural_rule(step, inputs, y, r, None)
    if generic is None:
        raise NotImplementedError(f"RAP has no rule for {kind} step '{step.node.name}'")
    return generic[0]


class RAP:
    """RAP heatmaps; `attribute` returns the signed, unnormalised B×1×H×W map."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.graph = ModelGraph(model)

    def attribute(self, x: Tensor, target: Any = None) -> Tensor:
        """Heatmaps B×1×H×W for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        env, logits, t = run_model(self.graph, x, target)
        with torch.no_grad():
            phi = propagate_relevance(self.graph, env, self.graph.head.node, target_relevance(logits, t), rap_rule)
        return phi.sum(dim=1, keepdim=True)


__all__ = ["RAP", "rap_rule", "positive_negative_rule", "absolute_rule", "norm_rule", "shift_to_total"]
