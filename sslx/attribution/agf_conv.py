"""AGF's convolution rule: the C-rule ("flat" convs) and full AGF (factorization, M, gate, A-rule, Δ-shift).

Every N-sized pass is counted: buffers this rule allocates are updated in place, masks are float
multiplications, and the one host read (whether the masked gradient differs) skips a transposed conv.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .agf_rules import AGFOptions
from .buffers import KernelBuffers
from .convops import conv_forward, conv_of_ones, conv_transpose, flipped_kernel
from .graph import Step
from .numerics import (STABILIZER, delta_shift_, guarded_denominator, nonzero, normalize_by_max,
                       per_image_max, safe_divide, safe_divide_nonnegative_)


def side_masks(phi: Tensor) -> Tensor:
    """B×HW×2 float indicators of φ < 0 (background) and φ > 0 (foreground); φ = 0 belongs to neither."""
    flat = phi.reshape(phi.shape[0], -1)
    return torch.stack([flat < 0, flat > 0], dim=2).to(phi.dtype)


def factorization(y: Tensor, phi: Tensor) -> Tensor:
    """Guided factorization F(Y, φ): foreground minus background weight of a ridge fit, B×1×H×W."""
    return factorize(y, side_masks(phi))


def factorize(y: Tensor, masks: Tensor, work: Tensor | None = None) -> Tensor:
    """`factorization` with the side masks of φ given (they are shared by F_x and F_∇x); H is written into
    `work` (a contiguous buffer of y's shape) when given."""
    b, c = y.shape[:2]
    scale = 10 / guarded_denominator(per_image_max(y))  # H = sigmoid(10·Y/max Y); max = 0 gives Y/max = 0
    h = torch.mul(y, scale, out=work).sigmoid_().reshape(b, c, -1)
    reps = safe_divide(torch.bmm(h, masks), masks.sum(dim=1)[:, None, :])  # B×C×2: [R_b, R_f]
    rt = reps.transpose(1, 2)
    # Ridge with λ = 1: W = (RᵀR + I)⁻¹ RᵀH, the 2×2 inverse in closed form.
    gram = rt @ reps
    p, q, r = gram[:, 0, 0] + 1, gram[:, 0, 1], gram[:, 1, 1] + 1
    det = p * r - q * q
    inverse = torch.stack([torch.stack([r, -q], 1), torch.stack([-q, p], 1)], 1) / det[:, None, None]
    w = torch.relu(torch.bmm(inverse @ rt, h))  # B×2×HW
    return (w[:, 1] - w[:, 0]).reshape((b, 1) + y.shape[2:])


def conv_rule(step: Step, x: Tensor, r: Tensor, g: Tensor | None, opts: AGFOptions,
              grad_scale: Tensor | None = None, buffers: KernelBuffers | None = None) -> tuple[Tensor, Tensor | None]:
    """Relevance and gradient at a convolution's input: C-rule for "flat" convs, full AGF otherwise.

    `grad_scale` (per output channel) is a following BatchNorm's gradient factor γ/√(var+ε), folded into
    the kernel of the gradient's transposed convolution when that is smaller than the gradient. The kernel
    transforms (|W|, flipped kernels) are written into `buffers` (fresh ones when None).
    """
    m = step.module
    w = m.weight.detach()
    kernels = buffers if buffers is not None else KernelBuffers()
    wg = w
    if grad_scale is not None and g is not None:
        scale = grad_scale.to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1))
        if g.numel() >= w.numel():  # scaling the kernel is the cheaper pass
            wg = torch.mul(w, scale, out=kernels.get("scaled", w.shape, w))
        else:
            g = g * scale.reshape(1, -1, 1, 1)
    full = step.role == "full" and opts.residual != "none"
    if full and g is None:
        raise ValueError(f"full AGF at '{step.node.name}' needs the gradient at the layer's output")
    # the adjoints of W (gradient) and |W| (C, A) share one flipped kernel where that form pays
    flipped = flipped_kernel(m, r, w, (g is not None) + 1 + (full and opts.use_a), kernels)
    flipped_a = None if flipped is None else torch.abs(flipped, out=kernels.get("flipped_abs", flipped.shape, w))
    flipped_g = None if flipped is None or g is None else \
        (flipped if wg is w else flipped.mul_(scale.transpose(0, 1)))  # flipped is not read after this
    g_in = None if g is None else conv_transpose(m, g, wg, x.shape, flipped_g)
    g_masked = _masked_gradient(m, x, r, g, wg, g_in, flipped_g) \
        if full and (opts.use_fgrad or opts.residual == "gradcam") else g_in
    del flipped, flipped_g
    wa, xa = torch.abs(w, out=kernels.get("abs", w.shape, w)), (x if step.nonnegative_input else x.abs())
    z = conv_forward(m, xa, wa)  # the C-rule's denominators
    if full and opts.use_a and stacking_pays(r, w):
        # C and A quotients (A's input is all ones, so its denominators conv(1, |W|) do not depend on x) stacked
        # along the batch: one transposed conv, one read of |W|
        b = r.shape[0]
        quotients = r.new_empty((2 * b,) + r.shape[1:])
        safe_divide_nonnegative_(r, z, out=quotients[:b])
        torch.div(r, _guarded_(conv_of_ones(m, wa, x.shape), work=quotients[b:]), out=quotients[b:])
        del z
        back = conv_transpose(m, quotients, wa, x.shape, flipped_a)
        c, a = back[:b].mul_(xa), back[b:]
        del xa, back
    else:
        quotients = safe_divide_nonnegative_(r, z)
        c = conv_transpose(m, quotients, wa, x.shape, flipped_a).mul_(xa)
        del xa, z
        if not full:
            return c, g_in
        # A's quotient goes into the C quotient's buffer, no longer read
        a = conv_transpose(m, torch.div(r, _guarded_(conv_of_ones(m, wa, x.shape), work=quotients), out=quotients),
                           wa, x.shape, flipped_a) if opts.use_a else None
    # one input-shaped buffer serves, in turn, both factorizations' H, the product x·∇x of M, the gate's
    # denominator and the mask of C's support (a fresh buffer each would be five allocations per layer); the
    # quotients' buffer, no longer read, where it is large enough
    work = _reuse_as(quotients, x.shape)
    del quotients
    full_part, pixel_part = _residual(x, g_in, g_masked, c, a, opts, work)
    if full_part is None and pixel_part is None:  # every residual term is switched off: Φ = C
        return c, g_in
    return delta_shift_(c, full_part, pixel_part, work), g_in


STACK_MAX_RATIO = 1.0


def stacking_pays(r: Tensor, weight: Tensor) -> bool:
    """Whether the C and A adjoints go faster as one call on a doubled batch: where the relevance map is no larger
    than the kernel, the call is bound by reading the kernel and its fixed cost. Zen 5, 2 threads, 3×3 convs:
    B = 1, 512@7² 1.77 → 1.39 ms, 256@14² 1.13 → 1.03, 128@28² 1.03 → 0.96; where the map outweighs the kernel
    (64@56², or 128@28² at B = 8) one call on the doubled batch was slower."""
    return r.numel() <= STACK_MAX_RATIO * weight.numel()


def _masked_gradient(m, x: Tensor, r: Tensor, g: Tensor, wg: Tensor, g_in: Tensor,
                     flipped: Tensor | None = None) -> Tensor:
    """The input gradient recomputed from g ⊙ 1[Φ ≠ 0]; usually g_in itself, as g is already 0 wherever Φ is."""
    # g ⊙ 1[Φ≠0] = g iff Σ|g|·1[Φ=0] = 0: a sum of nonnegative terms is 0 only if every term is, and a NaN
    # or an overflow to inf only sends the batch down the exact path. One mask, multiplied by g in place, and one
    # streaming 1-norm (count_nonzero is several times slower on CPU).
    masked = torch.eq(r, 0, out=torch.empty_like(r)).mul_(g)  # g where Φ = 0
    if float(torch.linalg.vector_norm(masked.reshape(-1), 1)) == 0:
        return g_in
    return conv_transpose(m, torch.ne(r, 0, out=masked).mul_(g), wg, x.shape, flipped)


def _guarded_(z: Tensor, work: Tensor | None = None) -> Tensor:
    """z + 1e-9 where z != 0 and +inf where z == 0, for z >= 0, written into z: r / it is safe_divide(r, z).
    `work`: a buffer for the mask of z != 0, used when it has z's shape."""
    mask = torch.ne(z, 0, out=work) if work is not None and work.shape == z.shape else nonzero(z)
    return z.add_(STABILIZER).div_(mask)  # (z + 1e-9)/1 where z != 0, 1e-9/0 = +inf where z == 0


def _reuse_as(buffer: Tensor, shape: torch.Size) -> Tensor:
    """A contiguous tensor of `shape` in buffer's memory when that is large enough (its contents are dropped),
    otherwise a new one."""
    numel = math.prod(shape)
    if buffer.is_contiguous() and buffer.numel() >= numel:
        return buffer.view(-1)[:numel].view(shape)
    return buffer.new_empty(shape)


def _residual(x: Tensor, g_in: Tensor, g_masked: Tensor, c: Tensor, a: Tensor | None,
              opts: AGFOptions, work: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """The residual r = gate(numer) + F_∇x + A, unmasked, as (C-shaped part, B×1×H×W part broadcast over
    channels); a part is None when its terms are off. `a` is A, a buffer this rule owns and reuses; `work`, a
    contiguous C-shaped scratch buffer for the passes in turn (none of the returned parts is written into it)."""
    masks = side_masks(c.mean(dim=1, keepdim=True))
    numer = None
    if opts.residual == "gradcam":
        numer = torch.relu((x * g_masked.mean(dim=(2, 3), keepdim=True)).mean(dim=1, keepdim=True))
    else:
        if opts.use_fx:
            numer = torch.relu(factorize(x, masks, work))
        if opts.use_m:
            mm = normalize_by_max(torch.relu(torch.mul(x, g_in, out=work).mean(dim=1, keepdim=True)))
            numer = mm if numer is None else numer.add_(mm)
    full, pixel = a, None
    if numer is not None and opts.use_gate:
        # numer / (1 + e^(−C) + 1e-9): the reference's safe divide of a denominator >= 1 (numer·sigmoid(C)
        # would save two passes but move float64 parity from 1e-14 to 1e-10)
        if full is None:  # the quotient is a returned part: its own buffer
            den = torch.neg(c).exp_().add_(1 + STABILIZER)
            full = torch.div(numer, den, out=den)
        else:
            full.addcdiv_(numer, torch.neg(c, out=work).exp_().add_(1 + STABILIZER))
    elif numer is not None:
        pixel = numer
    if opts.use_fgrad:
        fg = torch.relu(factorize(g_masked, masks, work))
        pixel = fg if pixel is None else pixel.add_(fg)
    return full, pixel
