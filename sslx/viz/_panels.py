"""Figure scaffolding shared by the builders: Agg figures, image/map panels, shared colour bars."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from sslx.viz.colour import blend, check_alpha, colourise, decide_signed, resolve_cmap

COLOURBAR_WIDTH_IN = 0.9  # extra figure width per colour bar, inches
TITLE_HEIGHT_IN = 0.4  # extra figure height for column titles, inches
SIGNED_LABEL = "evidence for (+) / against (−)"
UNSIGNED_LABEL = "relevance"


def check_cell_size(cell_size: object) -> float:
    """Return the panel size in inches or raise."""
    if isinstance(cell_size, bool) or not isinstance(cell_size, (int, float)) or not cell_size > 0:
        raise ValueError(f"cell_size must be a positive number of inches, got {cell_size!r}")
    return float(cell_size)


def new_figure(n_rows: int, n_cols: int, cell_size: float, n_colourbars: int) -> Figure:
    """Create a constrained-layout Figure on its own Agg canvas (never registered with pyplot)."""
    width = cell_size * n_cols + COLOURBAR_WIDTH_IN * n_colourbars
    height = cell_size * n_rows + TITLE_HEIGHT_IN
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def bare(ax: Axes) -> Axes:
    """Hide ticks and frame but keep the y-label (used for row titles)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax


def show(ax: Axes, pixels: np.ndarray, title: str | None = None, row_title: str | None = None, **imshow_kw) -> None:
    """Draw an image-like array in a bare panel with optional column and row titles."""
    ax.imshow(pixels, interpolation="nearest", **imshow_kw)
    bare(ax)
    if title is not None:
        ax.set_title(title, fontsize="small")
    if row_title is not None:
        ax.set_ylabel(row_title, fontsize="small")


class MapPainter:
    """Colours map panels consistently (one signedness per group) and remembers them for colour bars."""

    def __init__(self, signed: bool | None, overlay_alpha: float | None) -> None:
        self.signed = signed
        self.alpha = None if overlay_alpha is None else check_alpha(overlay_alpha)
        self.signed_axes: list[Axes] = []
        self.unsigned_axes: list[Axes] = []

    def group_signed(self, maps: Sequence[np.ndarray], name: str) -> bool:
        """Decide one signedness for maps that share a label (e.g. one method over all images)."""
        return decide_signed(np.concatenate([m.reshape(-1) for m in maps]), self.signed, name)

    def paint(self, ax: Axes, maps: np.ndarray, signed: bool, picture: np.ndarray | None, **titles) -> None:
        """Draw one H×W map (resized to `picture` beforehand), overlaid on it when an alpha was given."""
        rgb = colourise(maps[None], signed, None)[0]
        if self.alpha is not None and picture is not None:
            rgb = blend(picture, rgb, self.alpha)
        show(ax, rgb, **titles)
        (self.signed_axes if signed else self.unsigned_axes).append(ax)

    @staticmethod
    def colourbar_count(signed_flags: Sequence[bool]) -> int:
        """Number of colour bars the given group signedness values will need (one per kind present)."""
        return len(set(signed_flags))

    def add_colourbars(self, fig: Figure) -> None:
        """One shared bar for all signed panels (±max) and one for all non-negative panels (0..max),
        both at the right edge of the figure."""
        panels = list(fig.axes)
        if self.signed_axes:
            bar = fig.colorbar(
                ScalarMappable(Normalize(-1.0, 1.0), resolve_cmap(None, True)),
                ax=panels, ticks=[-1.0, 0.0, 1.0], shrink=0.9,
            )
            bar.ax.set_yticklabels(["−max", "0", "+max"])
            bar.set_label(SIGNED_LABEL, fontsize="small")
        if self.unsigned_axes:
            bar = fig.colorbar(
                ScalarMappable(Normalize(0.0, 1.0), resolve_cmap(None, False)),
                ax=panels, ticks=[0.0, 1.0], shrink=0.9,
            )
            bar.ax.set_yticklabels(["0", "max"])
            bar.set_label(UNSIGNED_LABEL, fontsize="small")
