"""ROAD's noisy linear imputation (Rong et al., ICML 2022): removed pixels become their neighbours' weighted mean.

Each removed pixel's value v_i solves  Σ_j w_ij (v_i − v_j) = 0  over its in-image 8-neighbours j, with
w = 1/6 for the 4 direct and 1/12 for the 4 diagonal neighbours; kept pixels are fixed at their values,
removed neighbours are unknowns. All removed pixels of an image are solved jointly (one sparse, symmetric
positive-definite system per image and channel, by batched conjugate gradients whose matrix-vector
product is a 3×3 convolution), then Gaussian noise of standard deviation `noise` is added to them.
"""
from __future__ import annotations

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


def noisy_linear_impute(images: Tensor, removed: Tensor, noise: float = DEFAULT_NOISE,
                        generator: torch.Generator | None = None, tol: float = 1e-7, max_iter: int = 2000) -> Tensor:
    """Return `images` (B×C×H×W) with the `removed` pixels (Bool B×1×H×W) linearly imputed plus N(0, noise²) noise."""
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
    kernel = torch.tensor(NEIGHBOUR_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 1, 3, 3)
    mask = removed.to(images.dtype).expand_as(images)
    keep = 1.0 - mask
    degree = _neighbour_sum(torch.ones_like(images[:, :1]), kernel)  # in-image weight sum per pixel

    def apply(v: Tensor) -> Tensor:  # A v on the removed set: degree·v − Σ_removed neighbours w v
        return mask * (degree * v - _neighbour_sum(v * mask, kernel))

    b = mask * _neighbour_sum(images * keep, kernel)
    x = b / degree  # Jacobi start
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
    filled = x * mask
    if noise > 0:
        filled = filled + mask * noise * torch.randn(images.shape, generator=generator, dtype=images.dtype,
                                                     device=images.device)
    return images * keep + filled
