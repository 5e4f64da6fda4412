"""Visual explanations: heatmap colouring, overlays and the paper's figure layouts (Agg, no pyplot)."""
from __future__ import annotations

from sslx.viz.colour import DIVERGING_CMAP, SEQUENTIAL_CMAP, heatmap_to_rgb, overlay
from sslx.viz.figures import explanation_grid, layer_strip, neighbour_figure, two_class_figure
from sslx.viz.plots import metric_vs_layer_plot
from sslx.viz.save import save_figure

__all__ = [
    "DIVERGING_CMAP",
    "SEQUENTIAL_CMAP",
    "explanation_grid",
    "heatmap_to_rgb",
    "layer_strip",
    "metric_vs_layer_plot",
    "neighbour_figure",
    "overlay",
    "save_figure",
    "two_class_figure",
]
