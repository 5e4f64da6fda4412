"""ROAD's noisy linear imputation (Rong et al., ICML 2022): removed pixels become their neighbours' weighted mean.

Each removed pixel's value v_i solves  Σ_j w_ij (v_i − v_j) = 0  over its in-image 8-neighbours j, with
w = 1/6 for the 4 direct and 1/12 for the 4 diagonal neighbours; kept pixels are fixed at their values,
removed neighbours are unknowns. All removed pixels of an image are solved jointly (one sparse, symmetric
positive-definite system per image, shared by its channels), then Gaussian noise of standard deviation
`noise` is added to them. CPU tensors: one block-diagonal sparse LU (scipy, like the ROAD authors' code)
for the whole batch; other devices: batched conjugate gradients whose matrix-vector product is a 3×3
convolution, started from a coarse-to-fine fill-in, run to relative residual `tol`.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from sslx._validate import check_image_batch

__all__ = ["DEFAULT_NOISE", "NEIGHBOUR_WEIGHTS", "noisy_linear_impute"]

DEFAULT_NOISE = 0.01
NEIGHBOUR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def _neighbour_sum(x: Tensor, kernel: Tensor) -> Tensor:
    """Σ_j w_ij x_j over in-image neighbours (zero padding), per channel."""
    channels = x.shape[1]
    return F.conv2d(x, kernel.expand(channels, 1, 3, 3), padding=1, groups=channels)


def _solve_direct(images: Tensor, removed: Tensor) -> Tensor:
    """Exact imputation of a CPU batch: one block-diagonal sparse system over all images, channels as RHS."""
    rem = removed[:, 0].numpy()
    batch, height, width = rem.shape
    flat = np.flatnonzero(rem.ravel())
    index = np.full(rem.size, -1, dtype=np.int64)
    index[flat] = np.arange(flat.size)
    b_id, rest = np.divmod(flat, height * width)
    row, col = np.divmod(rest, width)
    values = images.detach().permute(0, 2, 3, 1).reshape(-1, images.shape[1]).double().numpy()
    diag = np.zeros(flat.size)
    rhs = np.zeros((flat.size, images.shape[1]))
    rows, cols, entries = [], [], []
    for di, line in zip((-1, 0, 1), NEIGHBOUR_WEIGHTS):
        for dj, weight in zip((-1, 0, 1), line):
            if weight == 0.0:
                continue
            r, c = row + di, col + dj
            inside = np.flatnonzero((r >= 0) & (r < height) & (c >= 0) & (c < width))
            diag[inside] += weight
            neighbour = (b_id[inside] * height + r[inside]) * width + c[inside]
            unknown = index[neighbour]
            is_unknown = unknown >= 0
            rows.append(inside[is_unknown])
            cols.append(unknown[is_unknown])
            entries.append(np.full(int(is_unknown.sum()), -weight))
            known = inside[~is_unknown]
            rhs[known] += weight * values[neighbour[~is_unknown]]
    size = flat.size
    matrix = sparse.csc_matrix((np.concatenate(entries + [diag]), (np.concatenate(rows + [np.arange(size)]),
                                                                   np.concatenate(cols + [np.arange(size)]))),
                               shape=(size, size))
    solution = sparse_linalg.splu(matrix).solve(rhs)
    out = values.copy()
    out[flat] = solution
    return torch.from_numpy(out).view(batch, height, width, -1).permute(0, 3, 1, 2).to(images.dtype).contiguous()


def _pyramid_guess(images: Tensor, keep: Tensor) -> Tensor:
    """Smooth fill-in of the removed pixels from coarser and coarser averages of the kept ones (CG start)."""
    num, den = images * keep, keep
    levels = []
    while min(num.shape[2:]) >= 2:
        levels.append((num, den))
        num, den = F.avg_pool2d(num, 2), F.avg_pool2d(den, 2)
    levels.append((num, den))
    est = (num.sum((2, 3), keepdim=True) / den.sum((2, 3), keepdim=True).clamp_min(1e-12)).expand_as(num)
    for num, den in reversed(levels):
        if est.shape[2:] != num.shape[2:]:
            est = F.interpolate(est, size=num.shape[2:], mode="bilinear", align_corners=False)
        est = num + (1 - den) * est  # kept share of each cell at its mean, the rest from the coarser level
    return est


def noisy_linear_impute(images: Tensor, removed: Tensor, noise: float = DEFAULT_NOISE,
                        generator: torch.Generator | None = None, tol: float = 1e-5, max_iter: int = 2000,
                        solver: str = "auto") -> Tensor:
    """Return `images` (B×C×H×W) with the `removed` pixels (Bool B×1×H×W) linearly imputed plus N(0, noise²) noise.

    `solver`: "auto" (direct on CPU, CG elsewhere), "direct" (CPU only) or "cg".
    """
    if solver not in ("auto", "direct", "cg"):
        raise ValueError(f"solver must be 'auto', 'direct' or 'cg', got {solver!r}")
    check_image_batch(images, "images", channels=None)
    if not isinstance(removed, Tensor) or removed.dtype != torch.bool:
        raise TypeError(f"removed must be a bool tensor B×1×H×W, got {getattr(removed, 'dtype', type(removed).__name__)}")
    if removed.dim() != 4 or removed.shape[1] != 1 or removed.shape[0] != images.shape[0] \
            or removed.shape[2:] != images.shape[2:]:
        raise ValueError(f"removed must have shape {(images.shape[0], 1, *images.shape[2:])}, got {tuple(removed.shape)}")
    if removed.device != images.device:
        raise ValueError(f"removed is on {removed.device} but images are on {images.device}")
    if not (isinstance(noise, (int, float)) and not isinstance(noise, bool)) or noise < 0:
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    if bool(removed.flatten(1).all(dim=1).any()):
        raise ValueError("an image has every pixel removed: nothing is left to impute from")
    if solver == "direct" and images.device.type != "cpu":
        raise ValueError(f"solver='direct' runs on CPU tensors only, images are on {images.device}")
    if solver == "direct" or (solver == "auto" and images.device.type == "cpu"):
        return _add_noise(_solve_direct(images, removed), removed, noise, generator)
    kernel = torch.tensor(NEIGHBOUR_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 1, 3, 3)
    mask = removed.to(images.dtype).expand_as(images)
    keep = 1.0 - mask
    degree = _neighbour_sum(torch.ones_like(images[:, :1]), kernel)  # in-image weight sum per pixel

    def apply(v: Tensor) -> Tensor:  # A v on the removed set: degree·v − Σ_removed neighbours w v
        return mask * (degree * v - _neighbour_sum(v * mask, kernel))

    b = mask * _neighbour_sum(images * keep, kernel)
    x = mask * _pyramid_guess(images, keep)  # a smooth start: far fewer CG iterations in large holes
    r = b - apply(x)
    p = r.clone()
    rs = (r * r).sum(dim=(2, 3), keepdim=True)
    scale = (b * b).sum(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(images.dtype).tiny)
    for _ in range(max_iter):
        if bool((rs <= tol * tol * scale).all()):
            break
        ap = apply(p)
        alpha = rs / (p * ap).sum(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(images.dtype).tiny)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dim=(2, 3), keepdim=True)
        p = r + (rs_new / rs.clamp_min(torch.finfo(images.dtype).tiny)) * p
        rs = rs_new
    return _add_noise(images * keep + x * mask, removed, noise, generator)


def _add_noise(images: Tensor, removed: Tensor, noise: float, generator: torch.Generator | None) -> Tensor:
    """`images` plus N(0, noise²) on the removed pixels."""
    if noise == 0:
        return images
    draw = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return images + removed.to(images.dtype) * noise * draw
