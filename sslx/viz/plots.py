"""Line plot of a metric per layer per method (paper Fig. 4b analog)."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _value(entry: object, metric: str, where: str) -> float:
    """Read one finite number: `entry` itself, or `entry[metric]` when it is a dict of metrics."""
    if isinstance(entry, Mapping):
        if metric not in entry:
            raise KeyError(f"{where} has no metric {metric!r} (has {sorted(entry)})")
        entry = entry[metric]
    if isinstance(entry, bool) or not isinstance(entry, (int, float, np.floating, np.integer)):
        raise TypeError(f"{where} must be a number, got {type(entry).__name__}")
    if not math.isfinite(float(entry)):
        raise ValueError(f"{where} is not finite ({entry})")
    return float(entry)


def metric_vs_layer_plot(
    results: Mapping[str, Mapping[str, float | Mapping[str, float]]],
    metric: str,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (5.0, 3.5),
) -> Figure:
    """Plot `metric` against layer, one line per method.

    `results[method][layer]` is either the metric's value or a dict of metrics containing `metric`.
    Layers appear on the x-axis in first-seen order; a method missing a layer leaves a gap.
    """
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"metric must be a non-empty str naming the y-axis quantity, got {metric!r}")
    if not isinstance(results, Mapping) or len(results) == 0:
        raise ValueError("results is empty: give {method: {layer: value}}")
    layers: list[str] = []
    for method, per_layer in results.items():
        if not isinstance(per_layer, Mapping) or len(per_layer) == 0:
            raise ValueError(f"results[{method!r}] must be a non-empty dict of layer -> value")
        layers += [layer for layer in per_layer if layer not in layers]

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = np.arange(len(layers))
    for method, per_layer in results.items():
        values = [
            _value(per_layer[layer], metric, f"results[{method!r}][{layer!r}]") if layer in per_layer else np.nan
            for layer in layers
        ]
        ax.plot(positions, values, marker="o", label=str(method))
    ax.set_xticks(positions, [str(layer) for layer in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title is not None:
        ax.set_title(title)
    return fig
