"""Atomic PNG export of figures."""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from sslx._io import atomic_write


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float = 100) -> Path:
    """Write `fig` as a PNG at `path` atomically (temp file in the same folder, then os.replace)."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not dpi > 0:
        raise ValueError(f"dpi must be a positive number, got {dpi!r}")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG files; path must end in .png, got {str(target)!r}")
    return atomic_write(target, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
