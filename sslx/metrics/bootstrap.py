"""Percentile bootstrap confidence intervals over images, vectorised over the resamples.

A resample draws n images with replacement from the n evaluated ones; it is represented by the
multiplicity of every image (an R×n float64 matrix whose rows sum to n), so a statistic that is a
sum over images — a mean, a ratio of sums (dataset-level pixel accuracy), a mean of per-class ratios
of sums (mIoU) — is one matrix product per chunk of resamples. The interval is the (1 − level)/2 and
(1 + level)/2 quantiles (linear interpolation) of the R resampled values; resamples where the
statistic is undefined (NaN, e.g. a ratio with a zero denominator) are left out of the quantiles.
Defaults: R = 1000 resamples, seed 0, level 0.95; the same seed and n always give the same resamples.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "bootstrap_interval",
    "mean_interval",
    "mean_ratio_interval",
    "ratio_interval",
    "resample_counts",
]

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
_CHUNK_ENTRIES = 4_000_000  # resamples × images held at once (32 MB of float64)

Statistic = Callable[[Tensor], Tensor]


def _check_settings(n: object, resamples: object, level: object, seed: object) -> int:
    """Return n after checking the bootstrap settings; errors name the bad one."""
    for value, name, low in ((n, "n (number of images)", 1), (resamples, "resamples", 1), (seed, "seed", 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    return int(n)  # type: ignore[arg-type]


def resample_counts(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Iterator[Tensor]:
    """Yield float64 chunks (r×n) of per-image multiplicities, `resamples` rows in all, each row summing to n."""
    _check_settings(n, resamples, DEFAULT_LEVEL, seed)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, _CHUNK_ENTRIES // n)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        drawn = torch.randint(n, (rows, n), generator=generator)
        yield torch.zeros(rows, n, dtype=torch.float64).scatter_add_(1, drawn, torch.ones(rows, n, dtype=torch.float64))


def bootstrap_interval(statistic: Statistic, n: int, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                       seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Percentile interval of `statistic(weights r×n) -> r values` over bootstrap resamples of n images."""
    n = _check_settings(n, resamples, level, seed)
    if not callable(statistic):
        raise TypeError(f"statistic must be a callable weights → values, got {type(statistic).__name__}")
    values = []
    for weights in resample_counts(n, resamples, seed):
        out = statistic(weights)
        if not isinstance(out, Tensor) or out.shape != (weights.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"statistic must return one value per resample ({weights.shape[0]},), got {shape}")
        values.append(out.double())
    samples = torch.cat(values)
    if bool(torch.isnan(samples).all()):
        return math.nan, math.nan
    tail = (1.0 - float(level)) / 2.0
    low, high = torch.nanquantile(samples, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return low, high


def _per_image(values: object, name: str, columns: bool = False) -> Tensor:
    """`values` as a float64 tensor of n (or n×C when `columns`) per-image numbers; errors name the problem."""
    if not isinstance(values, Tensor):
        values = torch.as_tensor(values)
    if values.dtype == torch.bool or values.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
    want = 2 if columns else 1
    if values.dim() != want:
        raise ValueError(f"{name} must be {'n×C' if columns else 'a vector of n'} per-image values, got shape "
                         f"{tuple(values.shape)}")
    if values.shape[0] == 0:
        raise ValueError(f"{name} is empty: no images to resample")
    return values.detach().to("cpu", torch.float64)


def mean_interval(values: Tensor, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                  seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Interval of the mean of per-image `values` (NaN entries are dropped first: images without a value)."""
    v = _per_image(values, "values")
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        raise ValueError("values holds only NaN: no image has a value to resample")
    return bootstrap_interval(lambda w: w @ v / v.numel(), v.numel(), resamples, level, seed)


def ratio_interval(numerators: Tensor, denominators: Tensor, resamples: int = DEFAULT_RESAMPLES,
                   level: float = DEFAULT_LEVEL, seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Interval of Σ numerators / Σ denominators over images (e.g. dataset-level pixel accuracy)."""
    num, den = _per_image(numerators, "numerators"), _per_image(denominators, "denominators")
    if num.shape != den.shape:
        raise ValueError(f"numerators {tuple(num.shape)} and denominators {tuple(den.shape)} differ in shape")
    return bootstrap_interval(lambda w: (w @ num) / (w @ den), num.numel(), resamples, level, seed)


def mean_ratio_interval(numerators: Tensor, denominators: Tensor, resamples: int = DEFAULT_RESAMPLES,
                        level: float = DEFAULT_LEVEL, seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Interval of the mean over classes of Σ num_c / Σ den_c (n×C inputs; classes with Σ den_c = 0 left out), e.g. mIoU."""
    num = _per_image(numerators, "numerators", columns=True)
    den = _per_image(denominators, "denominators", columns=True)
    if num.shape != den.shape:
        raise ValueError(f"numerators {tuple(num.shape)} and denominators {tuple(den.shape)} differ in shape")

    def statistic(w: Tensor) -> Tensor:
        top, bottom = w @ num, w @ den
        present = bottom > 0
        ratios = torch.where(present, top / torch.where(present, bottom, 1.0), 0.0)
        return ratios.sum(dim=1) / present.sum(dim=1)  # NaN when no class is present in a resample

    return bootstrap_interval(statistic, num.shape[0], resamples, level, seed)
