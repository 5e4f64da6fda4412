"""AGF's layer rules (Algorithm 1): the head, the C-rule, z^B, factorization, A-rule and the residual."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input

from .graph import Step
from .weights import DerivedWeights
from .numerics import delta_shift, keep, normalize_by_max, per_image_max, per_image_min, safe_divide

RESIDUALS = ("agf", "gradcam", "none")


@dataclass(frozen=True)
class AGFOptions:
    """Ablation switches of Table 5 (all on = full AGF)."""

    use_a: bool = True
    use_fx: bool = True
    use_fgrad: bool = True
    use_m: bool = True
    use_gate: bool = True
    residual: str = "agf"


# -- the head ----------------------------------------------------------------------------------
def head_attribution(weight: Tensor, bias: Tensor | None, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Initial attribution at the head (eq. 8): Φ = x ⊙ ∂ŷ_t/∂x with ŷ the Gaussian-softmax of the logits."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = F.linear(xg, weight.detach(), None if bias is None else bias.detach())
        yt = y.gather(1, target[:, None])
        sigma = (y - yt).abs().amax(dim=1, keepdim=True)
        if bool((sigma == 0).any()):
            raise ValueError("all logits of an image are equal: the Gaussian-softmax attribution is undefined")
        y_hat = torch.softmax(yt * torch.exp(-0.5 * ((y - yt) / sigma) ** 2), dim=1)
        (grad,) = torch.autograd.grad(y_hat.gather(1, target[:, None]).sum(), xg)
    return x * grad, grad


# -- convolution helpers -------------------------------------------------------------------------
def conv_forward(m, x: Tensor, weight: Tensor) -> Tensor:
    """The step's convolution geometry applied with another weight, without bias."""
    return F.conv2d(x, weight, None, m.stride, m.padding, m.dilation, m.groups)


def conv_transpose(m, out: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """The adjoint of `conv_forward` (a transposed convolution back to the input's shape)."""
    shape = (out.shape[0],) + tuple(input_shape[1:])
    return conv2d_input(shape, weight, out, m.stride, m.padding, m.dilation, m.groups)


def linear_c_rule(x: Tensor, weight: Tensor, r: Tensor, cache: DerivedWeights) -> Tensor:
    """C = G(|x|, |W|, Φ): LRP-0 with absolute inputs and weights, no bias."""
    xa, wa = x.abs(), cache.get(weight, "abs", Tensor.abs)
    s = safe_divide(r, keep(F.linear(xa, wa), r != 0))
    return xa * (s @ wa)


def first_conv_zb(step: Step, x: Tensor, r: Tensor, cache: DerivedWeights) -> Tensor:
    """z^B rule with per-image bounds (min and max of the input over all channels and pixels)."""
    m = step.module
    w = m.weight
    wp = cache.get(w, "pos", lambda v: v.clamp(min=0))
    wn = cache.get(w, "neg", lambda v: v.clamp(max=0))
    low, high = per_image_min(x), per_image_max(x)
    ones_maps = cache.get(w, ("ones", x.shape[1:]), lambda v: conv_forward(
        m, torch.ones_like(x[:1]), torch.cat([wp, wn])))  # conv(1, W+) and conv(1, W-) in one call
    ones_p, ones_n = ones_maps.chunk(2, dim=1)
    z = conv_forward(m, x, w) - low * ones_p - high * ones_n
    s = safe_divide(r, z)
    if m.groups == 1:  # the three transposed convolutions as one call
        stacked = cache.get(w, "w|w+|w-", lambda v: torch.cat([v, wp, wn], dim=1))
        back = conv_transpose(m, s, stacked, (x.shape[0], 3 * x.shape[1]) + x.shape[2:])
        bw, bp, bn = back.split(x.shape[1], dim=1)
    else:
        bw, bp, bn = (conv_transpose(m, s, v, x.shape) for v in (w, wp, wn))
    return x * bw - low * bp - high * bn


def factorization(y: Tensor, phi: Tensor) -> Tensor:
    """Guided factorization F(Y, φ): foreground minus background weight of a ridge fit, B×1×H×W."""
    b, c = y.shape[:2]
    h = torch.sigmoid(10 * normalize_by_max(y)).reshape(b, c, -1)
    masks = torch.cat([phi < 0, phi > 0], dim=1).reshape(b, 2, -1).to(y.dtype)
    reps = safe_divide(h @ masks.transpose(1, 2), masks.sum(dim=2)[:, None, :])  # B×C×2: [R_b, R_f]
    rt = reps.transpose(1, 2)
    # Ridge with λ = 1: W = (RᵀR + I)⁻¹ RᵀH, the 2×2 inverse in closed form.
    gram = rt @ reps
    p, q, r = gram[:, 0, 0] + 1, gram[:, 0, 1], gram[:, 1, 1] + 1
    det = p * r - q * q
    inverse = torch.stack([torch.stack([r, -q], 1), torch.stack([-q, p], 1)], 1) / det[:, None, None]
    w = torch.relu((inverse @ rt) @ h)  # B×2×HW
    return (w[:, 1] - w[:, 0]).reshape((b, 1) + y.shape[2:])


def conv_rule(step: Step, x: Tensor, r: Tensor, g: Tensor, opts: AGFOptions,
              cache: DerivedWeights) -> tuple[Tensor, Tensor]:
    """Relevance and gradient at a convolution's input: C-rule for "flat" convs, full AGF otherwise."""
    m = step.module
    w = m.weight
    mask = r != 0
    wa, xa = cache.get(w, "abs", Tensor.abs), x.abs()
    full = step.role == "full" and opts.residual != "none"
    need_masked = full and (opts.use_fgrad or opts.residual == "gradcam") and bool((g.ne(0) & ~mask).any())
    grads = conv_transpose(m, torch.cat([g, keep(g, mask)]) if need_masked else g, w, x.shape)
    g_in, g_masked = (grads.chunk(2) if need_masked else (grads, grads))

    s_c = safe_divide(r, keep(conv_forward(m, xa, wa), mask))
    use_a = full and opts.use_a
    if use_a:
        z_ones = keep(cache.get(w, ("ones|abs", x.shape[1:]), lambda v: conv_forward(
            m, torch.ones_like(x[:1]), wa)), mask)  # the A-rule's denominators do not depend on x
        back = conv_transpose(m, torch.cat([s_c, safe_divide(r, z_ones)]), wa, x.shape)
        back_c, a = back.chunk(2)
    else:
        back_c, a = conv_transpose(m, s_c, wa, x.shape), None
    c = xa * back_c
    if not full:
        return c, g_in

    if opts.residual == "gradcam":
        numer = torch.relu((x * g_masked.mean(dim=(2, 3), keepdim=True)).mean(dim=1, keepdim=True))
    else:
        numer = torch.zeros((), dtype=x.dtype, device=x.device)
        phi = c.mean(dim=1, keepdim=True)
        if opts.use_fx:
            numer = numer + torch.relu(factorization(x, phi))
        if opts.use_m:
            numer = numer + normalize_by_max(torch.relu((x * g_in).mean(dim=1, keepdim=True)))
    res = safe_divide(numer, 1 + torch.exp(-c)) if opts.use_gate else numer.expand_as(c)
    if opts.use_fgrad:
        res = res + torch.relu(factorization(g_masked, c.mean(dim=1, keepdim=True)))
    if use_a:
        res = res + a
    return delta_shift(c, keep(res, c != 0)), g_in


def linear_rule(step: Step, x: Tensor, r: Tensor, g: Tensor, boundary_shape: torch.Size | None,
                cache: DerivedWeights) -> tuple[Tensor, Tensor]:
    """C-rule for Linear layers; at the flatten boundary, Δ-shifted by the feature map's M."""
    w = step.module.weight
    c = linear_c_rule(x, w, r, cache)
    g_in = g @ w
    if boundary_shape is None:
        return c, g_in
    x4, g4 = x.reshape(boundary_shape), g_in.reshape(boundary_shape)
    m = (x4 * g4).mean(dim=1, keepdim=True).expand(boundary_shape).reshape(x.shape)
    m = normalize_by_max(keep(torch.relu(m), c != 0))
    return delta_shift(c, m), g_in
