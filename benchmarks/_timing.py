"""Shared by the benchmark scripts: synthetic clustered features and the best-of-N wall-clock timer."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def clustered_data(n: int, d: int, queries: int, clusters: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (base N×D, queries Q×D) float32 points: N(0, 1) cluster centres plus N(0, noise²) offsets."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d), dtype=np.float32)
    base = centers[rng.integers(0, clusters, n)]
    base += noise * rng.standard_normal((n, d), dtype=np.float32)
    query = centers[rng.integers(0, clusters, queries)]
    query += noise * rng.standard_normal((queries, d), dtype=np.float32)
    return base, query


def timed(fn: Callable[..., Any], *args: Any, repeats: int = 1, **kwargs: Any) -> tuple[Any, float]:
    """Return (result, fastest wall time over `repeats` calls): the minimum is least disturbed by other load."""
    best = float("inf")
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best
