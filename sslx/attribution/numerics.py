"""Numerical primitives shared by the propagation rules (safe division, per-image reductions, Δ-shift)."""
from __future__ import annotations

import torch
from torch import Tensor

STABILIZER = 1e-9


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """a / (b + 1e-9) where b != 0, else 0 (the reference's guard, stabiliser added whatever b's sign)."""
    den = b + STABILIZER
    if bool((den == 0).any()):  # only where b == -1e-9 exactly
        den.masked_fill_(den == 0, STABILIZER)
    return torch.where(b != 0, a / den, 0.0)


def keep(t: Tensor, mask: Tensor) -> Tensor:
    """t where the boolean mask is set, 0 elsewhere (no dtype conversion of the mask)."""
    return torch.where(mask, t, 0.0)


def per_image_sum(t: Tensor) -> Tensor:
    """Sum over all non-batch dims, kept broadcastable (B×1×…×1)."""
    return t.reshape(t.shape[0], -1).sum(dim=1).reshape((-1,) + (1,) * (t.dim() - 1))


def per_image_max(t: Tensor) -> Tensor:
    """Signed maximum over all non-batch dims, kept broadcastable (B×1×…×1)."""
    return t.reshape(t.shape[0], -1).amax(dim=1).reshape((-1,) + (1,) * (t.dim() - 1))


def per_image_min(t: Tensor) -> Tensor:
    """Minimum over all non-batch dims, kept broadcastable (B×1×…×1)."""
    return t.reshape(t.shape[0], -1).amin(dim=1).reshape((-1,) + (1,) * (t.dim() - 1))


def normalize_by_max(t: Tensor) -> Tensor:
    """Divide each image by its signed maximum, with the safe-division guard."""
    return safe_divide(t, per_image_max(t))


def delta_shift(c: Tensor, r: Tensor) -> Tensor:
    """Δ-shift: C + r − (Σr / #{C≠0})·1[C≠0], so the result keeps C's total (per image)."""
    nonzero = c != 0
    count = nonzero.reshape(c.shape[0], -1).sum(dim=1).reshape((-1,) + (1,) * (c.dim() - 1)).to(c.dtype)
    # An image whose C is all zero gets no shift (the reference would produce 0/0 = NaN there).
    shift = per_image_sum(r) / count.clamp_min(1)
    return (c + r).sub_(torch.where(nonzero, shift, 0.0))
