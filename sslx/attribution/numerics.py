"""Numerical primitives shared by the propagation rules (safe division, per-image reductions, Δ-shift).

Masks are float tensors (1.0 / 0.0 in the data's dtype) applied by multiplication: on CPU a boolean
mask costs a `where`/`masked_fill` pass that is several times slower than a float multiply, and a
multiply by 1.0 is exact. Nothing here reads a value back to the host.
"""
from __future__ import annotations

import torch
from torch import Tensor

STABILIZER = 1e-9


def nonzero(t: Tensor) -> Tensor:
    """1.0 where t != 0, else 0.0, in t's dtype."""
    return torch.ne(t, 0, out=torch.empty_like(t))


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """a / (b + 1e-9) where b != 0, else 0 (the reference's guard, stabiliser added whatever b's sign).

    Where b + 1e-9 is exactly 0 (b == -1e-9) the denominator is 1e-9, as in the reference.
    """
    return torch.mul(a, nonzero(b)).div_(_stabilized(b))


def safe_divide_(a: Tensor, b: Tensor, work: Tensor | None = None) -> Tensor:
    """`safe_divide`, overwriting b (a buffer the caller owns): two new tensors where `safe_divide` makes four,
    one when `work` (a buffer of b's shape the caller no longer needs) is given."""
    mask = nonzero(b) if work is None else torch.ne(b, 0, out=work)
    quotient = torch.mul(a, mask)
    den = b.add_(STABILIZER)
    den.add_(torch.eq(den, 0, out=mask), alpha=STABILIZER)
    return quotient.div_(den)


def scale_by_quotient(b: Tensor, a: Tensor) -> Tensor:
    """b ⊙ safe_divide(a, b) without the zero mask, which the factor b makes redundant (a finite)."""
    return torch.div(a, _stabilized(b)).mul_(b)


def scale_by_quotient_(b: Tensor, a: Tensor, nonnegative: bool = False) -> Tensor:
    """`scale_by_quotient` written into a (a buffer the caller owns); `nonnegative` (b >= 0): b + 1e-9 > 0 needs
    no zero guard."""
    return a.div_(torch.add(b, STABILIZER) if nonnegative else _stabilized(b)).mul_(b)


def _stabilized(b: Tensor) -> Tensor:
    den = b + STABILIZER
    return den.add_(torch.eq(den, 0, out=torch.empty_like(den)), alpha=STABILIZER)


def divide_by_positive_part(a: Tensor, b: Tensor) -> Tensor:
    """a / (max(b, 0) + 1e-9): equal to safe_divide(a, b) where a is 0 wherever b <= 0 (relevance that came
    back through a ReLU of b), in three passes instead of six."""
    den = torch.clamp_min(b, 0).add_(STABILIZER)
    return torch.div(a, den, out=den)


def safe_divide_nonnegative_(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """safe_divide(a, b) for b >= 0, overwriting b (a buffer the caller owns); written into `out` when given."""
    mask = nonzero(b) if out is None else torch.ne(b, 0, out=out)
    b.add_(STABILIZER)  # b >= 0, so b + 1e-9 > 0: no second guard needed
    return torch.mul(a, mask, out=mask).div_(b)


def per_image_sum(t: Tensor) -> Tensor:
    """Sum over all non-batch dims, kept broadcastable (B×1×…×1)."""
    return t.reshape(t.shape[0], -1).sum(dim=1).reshape((-1,) + (1,) * (t.dim() - 1))


def per_image_max(t: Tensor) -> Tensor:
    """Signed maximum over all non-batch dims, kept broadcastable (B×1×…×1)."""
    return t.reshape(t.shape[0], -1).amax(dim=1).reshape((-1,) + (1,) * (t.dim() - 1))


def per_image_min(t: Tensor) -> Tensor:
    """Minimum over all non-batch dims, kept broadcastable (B×1×…×1)."""
    return t.reshape(t.shape[0], -1).amin(dim=1).reshape((-1,) + (1,) * (t.dim() - 1))


def per_image_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ a·b over all non-batch dims in one read of each (no product tensor), kept broadcastable."""
    n = a.shape[0]
    # On CPU, bmm/mm of 1×N by N×1 matrices can take tens of ms whatever N; dot and vecdot stream.
    if n == 1:
        out = torch.dot(a.reshape(-1), b.reshape(-1))
    else:
        out = torch.linalg.vecdot(a.reshape(n, -1), b.reshape(n, -1))
    return out.reshape((-1,) + (1,) * (a.dim() - 1))


def guarded_denominator(b: Tensor) -> Tensor:
    """b + 1e-9 (1e-9 where that is 0) where b != 0, +inf where b == 0, so that a / it is safe_divide(a, b)."""
    den = b + STABILIZER
    den = torch.where(den == 0, STABILIZER, den)
    return torch.where(b != 0, den, torch.inf)


def normalize_by_max(t: Tensor) -> Tensor:
    """Divide each image by its signed maximum, with the safe-division guard (one pass over t)."""
    return t / guarded_denominator(per_image_max(t))


def delta_shift(c: Tensor, r: Tensor) -> Tensor:
    """Δ-shift on C's support: C + r − (Σr / #{C≠0}) where C ≠ 0, else 0; r is masked by 1[C≠0] first.

    The result keeps C's total per image (an image whose C is all zero gets no shift, where the
    reference would produce 0/0 = NaN). r may broadcast against C.
    """
    mask = nonzero(c)
    shift = per_image_sum(r * mask) / per_image_sum(mask).clamp_min(1)
    return torch.addcmul(c, r - shift, mask)


def delta_shift_(c: Tensor, r: Tensor | None, r_map: Tensor | None = None, work: Tensor | None = None) -> Tensor:
    """`delta_shift` by r + r_map, overwriting c and r (C-shaped buffers the caller owns), returned in c.

    r_map (B×1×…, broadcast over channels) is never expanded: its masked sum uses the per-pixel count of
    C ≠ 0. Either part may be None. `work`: a C-shaped buffer for the mask of C ≠ 0 (made here when None).
    """
    mask = nonzero(c) if work is None else torch.ne(c, 0, out=work)
    per_pixel = mask.sum(dim=1, keepdim=True)  # how many channels of each pixel have C ≠ 0
    total = per_image_dot(r, mask) if r is not None else 0
    if r_map is not None:
        total = total + per_image_dot(r_map, per_pixel)
    shift = total / per_image_sum(per_pixel).clamp_min(1)
    if r is None:
        r = r_map - shift
    else:
        r.sub_(shift if r_map is None else shift - r_map)
    return c.addcmul_(r, mask)
