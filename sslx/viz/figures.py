"""The paper's qualitative figures: method grid (Fig. 2a/b), two classes (Fig. 2c), per-layer maps
(Fig. 5) and SSL nearest-neighbour explanations (Algorithm 2)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from sslx.viz._inputs import image_batch, map_batch, map_dict, resize_maps, row_labels, single_image
from sslx.viz._panels import MapPainter, check_cell_size, new_figure, show


def _masks(masks: object, batch: int, size: tuple[int, int]) -> np.ndarray:
    """Validate B ground-truth masks (non-negative) and resize them to the images."""
    arr, _ = map_batch(masks, "masks")
    if arr.shape[0] != batch:
        raise ValueError(f"masks has {arr.shape[0]} masks but there are {batch} images")
    if (arr < 0).any():
        raise ValueError(f"masks must be non-negative (got min {arr.min():.3g})")
    return resize_maps(arr, size)


def _show_mask(ax, mask: np.ndarray, **titles) -> None:
    show(ax, mask, cmap="gray", vmin=0.0, vmax=max(1.0, float(mask.max())), **titles)


def _single_maps(maps: object, name: str, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Validate {label: one map} and resize every map to `size` (returns label -> H×W)."""
    checked = map_dict(maps, name)
    for label, arr in checked.items():
        if arr.shape[0] != 1:
            raise ValueError(f"{name}[{label!r}] must hold one map for the single image, got {arr.shape[0]}")
    return {label: resize_maps(arr, size)[0] for label, arr in checked.items()}


def explanation_grid(
    images: Tensor,
    heatmaps: Mapping[str, Tensor],
    masks: Tensor | None = None,
    titles: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    signed: bool | None = None,
    overlay_alpha: float | None = None,
    cell_size: float = 2.0,
) -> Figure:
    """Grid with one row per image: image | mask (if given) | one map per method, plus shared colour bars.

    `heatmaps` maps a method name to B×1×H×W maps; each method is signed or not over the whole batch
    (`signed=None` decides from the data). `overlay_alpha` blends maps onto the image instead of
    showing them alone. `titles` label the rows (e.g. class names).
    """
    cell_size = check_cell_size(cell_size)
    pictures = image_batch(images, "images", mean, std)
    batch, size = pictures.shape[0], pictures.shape[1:3]
    maps = {label: resize_maps(arr, size) for label, arr in map_dict(heatmaps, "heatmaps", batch).items()}
    mask_arr = None if masks is None else _masks(masks, batch, size)
    labels = row_labels(titles, batch)

    painter = MapPainter(signed, overlay_alpha)
    signed_by_method = {label: painter.group_signed([arr], f"heatmaps[{label!r}]") for label, arr in maps.items()}
    lead_cols = 1 + (mask_arr is not None)
    fig = new_figure(batch, lead_cols + len(maps), cell_size, painter.colourbar_count(list(signed_by_method.values())))
    axes = fig.subplots(batch, lead_cols + len(maps), squeeze=False)
    for row in range(batch):
        top = row == 0
        show(axes[row, 0], pictures[row], title="image" if top else None, row_title=labels[row])
        if mask_arr is not None:
            _show_mask(axes[row, 1], mask_arr[row], title="mask" if top else None)
        for col, (label, arr) in enumerate(maps.items(), start=lead_cols):
            painter.paint(axes[row, col], arr[row], signed_by_method[label], pictures[row], title=label if top else None)
    painter.add_colourbars(fig)
    return fig


def two_class_figure(
    image: Tensor,
    maps_a: Mapping[str, Tensor],
    maps_b: Mapping[str, Tensor],
    class_a: str | int,
    class_b: str | int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    signed: bool | None = None,
    overlay_alpha: float | None = None,
    cell_size: float = 2.0,
) -> Figure:
    """Paper Fig. 2c: the image (left, spanning both rows), then per method its map for class A (top)
    and class B (bottom); both dicts must name the same methods."""
    cell_size = check_cell_size(cell_size)
    picture = single_image(image, "image", mean, std)
    size = picture.shape[:2]
    a = _single_maps(maps_a, "maps_a", size)
    b = _single_maps(maps_b, "maps_b", size)
    if list(a) != list(b):
        missing_b, missing_a = [k for k in a if k not in b], [k for k in b if k not in a]
        if missing_a or missing_b:
            raise ValueError(f"maps_a and maps_b must name the same methods: only in maps_a {missing_b}, "
                             f"only in maps_b {missing_a}")
        b = {label: b[label] for label in a}

    painter = MapPainter(signed, overlay_alpha)
    signed_by_method = {label: painter.group_signed([a[label], b[label]], f"maps[{label!r}]") for label in a}
    fig = new_figure(2, 1 + len(a), cell_size, painter.colourbar_count(list(signed_by_method.values())))
    grid = fig.add_gridspec(2, 1 + len(a))
    show(fig.add_subplot(grid[:, 0]), picture, title="image")
    for col, label in enumerate(a, start=1):
        top, bottom = fig.add_subplot(grid[0, col]), fig.add_subplot(grid[1, col])
        painter.paint(top, a[label], signed_by_method[label], picture, title=label,
                      row_title=str(class_a) if col == 1 else None)
        painter.paint(bottom, b[label], signed_by_method[label], picture,
                      row_title=str(class_b) if col == 1 else None)
    painter.add_colourbars(fig)
    return fig


def layer_strip(
    image: Tensor,
    maps_by_layer: Mapping[str, Tensor],
    mask: Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    signed: bool | None = None,
    overlay_alpha: float | None = None,
    cell_size: float = 2.0,
) -> Figure:
    """Paper Fig. 5: one row — image | mask (if given) | the map obtained at each layer, in dict order."""
    cell_size = check_cell_size(cell_size)
    picture = single_image(image, "image", mean, std)
    size = picture.shape[:2]
    layers = _single_maps(maps_by_layer, "maps_by_layer", size)
    mask_arr = None if mask is None else _masks(mask, 1, size)[0]

    painter = MapPainter(signed, overlay_alpha)
    signed_by_layer = {label: painter.group_signed([m], f"maps_by_layer[{label!r}]") for label, m in layers.items()}
    lead_cols = 1 + (mask_arr is not None)
    fig = new_figure(1, lead_cols + len(layers), cell_size, painter.colourbar_count(list(signed_by_layer.values())))
    axes = fig.subplots(1, lead_cols + len(layers), squeeze=False)[0]
    show(axes[0], picture, title="image")
    if mask_arr is not None:
        _show_mask(axes[1], mask_arr, title="mask")
    for ax, (label, m) in zip(axes[lead_cols:], layers.items()):
        painter.paint(ax, m, signed_by_layer[label], picture, title=label)
    painter.add_colourbars(fig)
    return fig


def neighbour_figure(
    image: Tensor,
    neighbour: Tensor,
    maps: Mapping[str, Tensor],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    signed: bool | None = None,
    overlay_alpha: float | None = None,
    cell_size: float = 2.0,
) -> Figure:
    """Algorithm 2: image | its nearest neighbour | the image's explanation per feature variant
    (e.g. "Δ", "Σ", "w/o"), in dict order."""
    cell_size = check_cell_size(cell_size)
    picture = single_image(image, "image", mean, std)
    near = single_image(neighbour, "neighbour", mean, std)
    variants = _single_maps(maps, "maps", picture.shape[:2])

    painter = MapPainter(signed, overlay_alpha)
    signed_by_variant = {label: painter.group_signed([m], f"maps[{label!r}]") for label, m in variants.items()}
    fig = new_figure(1, 2 + len(variants), cell_size, painter.colourbar_count(list(signed_by_variant.values())))
    axes = fig.subplots(1, 2 + len(variants), squeeze=False)[0]
    show(axes[0], picture, title="image")
    show(axes[1], near, title="nearest neighbour")
    for ax, (label, m) in zip(axes[2:], variants.items()):
        painter.paint(ax, m, signed_by_variant[label], picture, title=label)
    painter.add_colourbars(fig)
    return fig
