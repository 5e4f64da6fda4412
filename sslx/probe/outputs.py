"""What a probe run leaves behind: metrics.json, probe checkpoints, overlay/per-layer figures, a text table."""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sslx.probe.module import explainable_probe

RESULTS_VERSION = 1
PLOT_METRICS = ("mAP", "pixel_accuracy", "mIoU", "perturbation_predicted_auc")


def write_json(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically (temp file in the same folder, then os.replace)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_results(path: Path) -> dict[str, Any] | None:
    """The results stored in a metrics.json (None if there is none); raise if it is not ours or corrupt."""
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable or corrupt ({err}); delete it or choose another --out") from None
    if not isinstance(results, dict) or results.get("version") != RESULTS_VERSION or "layers" not in results:
        raise ValueError(f"{path} is not a sslx.probe results file (version {RESULTS_VERSION}); "
                         "delete it or choose another --out")
    return results


def save_probe(path: Path, explainable: nn.Module, description: Mapping[str, Any]) -> Path:
    """Write the probe network's weights and geometry (weights_only-loadable) atomically."""
    from ssl_models import save_checkpoint

    state = {k: v.detach().cpu() for k, v in explainable.state_dict().items()}
    return save_checkpoint({"state_dict": state, "probe": dict(description)}, path)


def load_probe(path: str | os.PathLike[str], model: nn.Module) -> nn.Sequential:
    """Rebuild a saved probe network (pixels → probe logits) on top of `model`'s layers, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"probe checkpoint not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise ValueError(f"{path} is not a readable probe checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(saved, dict) or not {"state_dict", "probe"} <= set(saved):
        raise ValueError(f"{path} is not a sslx.probe checkpoint (expected keys 'state_dict' and 'probe')")
    info = saved["probe"]
    layer = info.get("layer")
    if layer not in getattr(model, "layers", ()):
        raise ValueError(f"{path} probes layer {layer!r}, which this model does not have ({getattr(model, 'layers', ())})")
    channels, pool, classes = int(info["feature_shape"][0]), int(info["pool"]), int(info["num_classes"])
    net = explainable_probe(copy.deepcopy(model.truncate(layer)), channels, pool, classes)
    weight = saved["state_dict"].get("linear.weight")
    if isinstance(weight, Tensor) and weight.is_floating_point():
        net = net.to(dtype=weight.dtype)  # the saved precision, whatever the model's
    try:
        net.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not match this model's layer {layer!r}: {err}") from None
    return net.requires_grad_(False).eval()


def save_overlays(path: Path, images: Tensor, maps: Mapping[str, Tensor], masks: Tensor | None,
                  titles: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> Path:
    """PNG grid: image | mask | one heatmap per method, one row per image."""
    from sslx.viz import explanation_grid, save_figure

    fig = explanation_grid(images, dict(maps), masks, list(titles), mean, std)
    return save_figure(fig, path)


def save_layer_strip(path: Path, image: Tensor, maps_by_layer: Mapping[str, Tensor], mask: Tensor | None,
                     mean: Sequence[float], std: Sequence[float]) -> Path:
    """PNG strip (paper Fig. 5 analog): image | mask | the map of each layer's probe."""
    from sslx.viz import layer_strip, save_figure

    return save_figure(layer_strip(image, dict(maps_by_layer), mask, mean, std), path)


def plot_values(layers: Mapping[str, Any], metric: str) -> dict[str, dict[str, float]]:
    """{method: {layer: value}} of one metric (`perturbation_predicted_auc` reads the nested AUC)."""
    values: dict[str, dict[str, float]] = {}
    for layer, entry in layers.items():
        for method, scores in entry["methods"].items():
            if metric == "perturbation_predicted_auc":
                value = scores["perturbation_predicted"]["auc"]
            elif metric in scores:
                value = scores[metric]
            else:
                continue
            if value is not None and math.isfinite(value):
                values.setdefault(method, {})[layer] = value
    return values


def save_layer_plots(out: Path, layers: Mapping[str, Any]) -> dict[str, Path]:
    """One PNG per metric against layer, one line per method (paper Fig. 4b analog)."""
    from sslx.viz import metric_vs_layer_plot, save_figure

    paths = {}
    for metric in PLOT_METRICS:
        values = plot_values(layers, metric)
        if values:
            fig = metric_vs_layer_plot(values, metric, title=f"{metric} of the probe explanations per layer")
            paths[metric] = save_figure(fig, out / f"layers_{metric}.png")
    return paths


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def results_table(layers: Mapping[str, Any]) -> str:
    """Plain-text table: one row per layer and method."""
    header = ["layer", "method", "probe acc", "pixel acc", "mAP", "mIoU", "neg AUC pred", "neg AUC target"]
    rows = [header]
    for layer, entry in layers.items():
        for method, scores in entry["methods"].items():
            rows.append([layer, method, _cell(entry["probe"].get("test_accuracy")),
                         _cell(scores.get("pixel_accuracy")), _cell(scores.get("mAP")), _cell(scores.get("mIoU")),
                         _cell(scores["perturbation_predicted"]["auc"]), _cell(scores["perturbation_target"]["auc"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def flat_metrics(layer: str, entry: Mapping[str, Any]) -> dict[str, float]:
    """Scalar metrics of one layer with W&B-style keys `<layer>/<method>/<metric>`."""
    flat = {f"{layer}/probe/{k}": v for k, v in entry["probe"].items()
            if isinstance(v, float) and k.endswith("accuracy")}
    for method, scores in entry["methods"].items():
        for key, value in scores.items():
            if isinstance(value, Mapping) and "auc" in value:
                flat[f"{layer}/{method}/{key}_auc"] = value["auc"]
            elif isinstance(value, Mapping) and "mean" in value:
                flat[f"{layer}/{method}/{key}"] = value["mean"]
            elif isinstance(value, (int, float)):
                flat[f"{layer}/{method}/{key}"] = float(value)
    return flat
