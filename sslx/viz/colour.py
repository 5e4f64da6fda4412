"""Map heatmaps to RGB (diverging for signed evidence, sequential otherwise) and blend them onto images."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap

from sslx.viz._inputs import map_batch, resize_maps, single_image, single_map

DIVERGING_CMAP = "bwr"  # blue = against (−), white = 0, red = evidence for (+)
SEQUENTIAL_CMAP = "Reds"  # near-white = 0, dark red = max


def is_signed(maps: np.ndarray) -> bool:
    """True when any value is negative (the map carries evidence against as well as for)."""
    return bool((maps < 0).any())


def resolve_cmap(cmap: str | Colormap | None, signed: bool) -> Colormap:
    """Return the Colormap to use; diverging maps get an odd LUT size so 0 lands exactly on the centre colour."""
    if cmap is None:
        cmap = DIVERGING_CMAP if signed else SEQUENTIAL_CMAP
    if isinstance(cmap, str):
        if cmap not in colormaps:
            raise ValueError(f"unknown matplotlib colormap {cmap!r}")
        cmap = colormaps[cmap]
    elif not isinstance(cmap, Colormap):
        raise TypeError(f"cmap must be a colormap name or matplotlib Colormap, got {type(cmap).__name__}")
    if signed and cmap.N % 2 == 0:
        cmap = cmap.resampled(cmap.N + 1)
    return cmap


def decide_signed(maps: np.ndarray, signed: bool | None, name: str = "heatmap") -> bool:
    """Resolve `signed=None` from the data; reject negative values in maps declared non-negative."""
    if signed is None:
        return is_signed(maps)
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be True, False or None, got {type(signed).__name__}")
    if not signed and is_signed(maps):
        raise ValueError(f"{name} has negative values (min {maps.min():.3g}) but signed=False; use signed=True or None")
    return signed


def scale_to_unit(maps: np.ndarray, signed: bool) -> np.ndarray:
    """Scale each B×H×W map to [0, 1]: signed maps by ±max|h| with 0 at 0.5, others by [0, max h]."""
    peak = np.abs(maps).max(axis=(-2, -1), keepdims=True)
    scaled = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    return 0.5 + 0.5 * scaled if signed else scaled


def colourise(maps: np.ndarray, signed: bool, cmap: str | Colormap | None) -> np.ndarray:
    """Colour validated B×H×W float maps into B×H×W×3 uint8 (each map scaled to its own peak)."""
    return resolve_cmap(cmap, signed)(scale_to_unit(maps, signed), bytes=True)[..., :3]


def heatmap_to_rgb(heatmap: object, signed: bool | None = None, cmap: str | Colormap | None = None) -> np.ndarray:
    """Render heatmap(s) as uint8 RGB: H×W → H×W×3, B×H×W or B×1×H×W → B×H×W×3.

    Signed maps use a diverging colormap with symmetric limits ±max|h| per map (0 → white, + → red,
    − → blue); non-negative maps use a sequential colormap over [0, max h]. `signed=None` decides from
    the data: signed when any value in the batch is negative.
    """
    maps, single = map_batch(heatmap)
    rgb = colourise(maps, decide_signed(maps, signed), cmap)
    return rgb[0] if single else rgb


def blend(image: np.ndarray, rgb: np.ndarray, alpha: float) -> np.ndarray:
    """Alpha-blend uint8 colours onto an H×W×3 [0, 1] image, returning uint8."""
    mixed = (1.0 - alpha) * image + alpha * (rgb.astype(np.float64) / 255.0)
    return np.clip(np.rint(mixed * 255.0), 0, 255).astype(np.uint8)


def check_alpha(alpha: object) -> float:
    """Return `alpha` as a float in [0, 1] or raise."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def overlay(
    image: object,
    heatmap: object,
    alpha: float = 0.5,
    mean: object = None,
    std: object = None,
    *,
    signed: bool | None = None,
    cmap: str | Colormap | None = None,
) -> np.ndarray:
    """Blend a coloured heatmap onto one image: H×W×3 uint8 = (1 − alpha)·image + alpha·colour.

    `image` is 3×H×W (or 1×3×H×W), in [0, 1] or normalised with per-channel `mean`/`std`; the heatmap
    (H×W, 1×H×W or 1×1×H×W) is resized bilinearly to the image when sizes differ.
    """
    alpha = check_alpha(alpha)
    picture = single_image(image, "image", mean, std)
    values = resize_maps(single_map(heatmap)[None], picture.shape[:2])
    rgb = colourise(values, decide_signed(values, signed), cmap)[0]
    return blend(picture, rgb, alpha)
