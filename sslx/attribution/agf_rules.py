"""AGF's layer rules outside the convolutions: the options, the head, Linear layers and the z^B first conv."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .convops import conv_forward, conv_of_bounds, conv_transpose
from .graph import Step
from .numerics import (delta_shift, nonzero, normalize_by_max, per_image_max, per_image_min, safe_divide_,
                       safe_divide_nonnegative_)

RESIDUALS = ("agf", "gradcam", "none")
LINEAR_BLOCK_BYTES = 1 << 20  # |W| of a Linear layer is made block by block (cache-sized), never stored whole
LINEAR_BLOCK_ROWS = 32  # ... of at least this many rows, so that per-call overhead stays small on wide layers


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


# -- Linear layers -------------------------------------------------------------------------------
def linear_c_rule(x: Tensor, weight: Tensor, r: Tensor, g: Tensor | None,
                  nonnegative: bool = False) -> tuple[Tensor, Tensor | None]:
    """C = G(|x|, |W|, Φ) (LRP-0 with absolute inputs and weights, no bias) and the input gradient g @ W.

    Each output unit's rule is independent, so W is read in blocks of rows: |W| exists one block at a time, and
    the block's products read it from cache. On CPU the loop runs on one intra-op thread (restored after): a block
    of |W| written by two threads and read by a one-thread matrix-vector product crosses cores, and when the two
    vCPUs sit far apart that costs more than the second thread gains. Zen 5 VM, 2 vCPUs, the Linear rules of one
    AGF call: AlexNet B=1 34.7 → 22.6 ms, VGG-19 B=1 67.7 → 43.9 ms, B=4 144–185 → 132 ms; when the vCPUs are
    close, two threads are 2–5 ms faster (AlexNet 21.1 against 23.1 ms, VGG-19 41.6 against 46.7).
    """
    xa = x if nonnegative else x.abs()
    row_bytes = max(1, weight.shape[1] * weight.element_size())
    rows = min(weight.shape[0], max(LINEAR_BLOCK_ROWS, LINEAR_BLOCK_BYTES // row_bytes))
    block = weight.new_empty((rows, weight.shape[1]))  # one buffer for every block's |W|
    back = g_in = None
    with _one_cpu_thread(weight):
        for start in range(0, weight.shape[0], rows):
            w = weight[start:start + rows]
            if g is not None:  # first, so that the block of W is read from memory once and then hit in cache
                gb = g[:, start:start + rows]
                g_in = gb @ w if g_in is None else g_in.addmm_(gb, w)
            wa = torch.abs(w, out=block[:w.shape[0]])
            s = safe_divide_nonnegative_(r[:, start:start + rows], F.linear(xa, wa))
            back = s @ wa if back is None else back.addmm_(s, wa)
    return back.mul_(xa), g_in  # `back` is this rule's own buffer


@contextmanager
def _one_cpu_thread(t: Tensor) -> Iterator[None]:
    """Run the block on one intra-op thread when t is on CPU, then restore the caller's count (even on error).

    torch's thread count is process-wide: torch work in other Python threads during the block runs on one thread.
    """
    threads = torch.get_num_threads()
    if t.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def linear_rule(step: Step, x: Tensor, r: Tensor, g: Tensor,
                boundary_shape: torch.Size | None) -> tuple[Tensor, Tensor]:
    """C-rule for Linear layers; at the flatten boundary, Δ-shifted by the feature map's M."""
    c, g_in = linear_c_rule(x, step.module.weight.detach(), r, g, step.nonnegative_input)
    if boundary_shape is None:
        return c, g_in
    x4, g4 = x.reshape(boundary_shape), g_in.reshape(boundary_shape)
    m = (x4 * g4).mean(dim=1, keepdim=True).expand(boundary_shape).reshape(x.shape)
    m = normalize_by_max(torch.relu(m) * nonzero(c))  # masked, and only then divided by its max
    return delta_shift(c, m), g_in


# -- the convolution touching the image ---------------------------------------------------------
def first_conv_zb(step: Step, x: Tensor, r: Tensor) -> Tensor:
    """z^B rule with per-image bounds (min and max of the input over all channels and pixels)."""
    m = step.module
    w = m.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    low, high = per_image_min(x), per_image_max(x)
    bounds = conv_of_bounds(m, wp, wn, low, high, x.shape)  # low·conv(1, W+) + high·conv(1, W-)
    z = conv_forward(m, x, w).sub_(bounds)
    s = safe_divide_(r, z, work=bounds)
    # Wᵀs = W⁺ᵀs + W⁻ᵀs, so two transposed convolutions (one call when possible) serve all three terms
    if m.groups == 1:
        back = conv_transpose(m, s, torch.cat([wp, wn], dim=1), (x.shape[0], 2 * x.shape[1]) + x.shape[2:])
        bp, bn = back.split(x.shape[1], dim=1)
    else:
        bp, bn = (conv_transpose(m, s, v, x.shape) for v in (wp, wn))
    return (x * (bp + bn)).addcmul_(low, bp, value=-1).addcmul_(high, bn, value=-1)
