"""Explain a trained probe on held-out images and score the explanations (segmentation, perturbation).

Conventions (also written into metrics.json by the CLI, see `CONVENTIONS`):
- Segmentation: the map explains the ground-truth class; foreground = mask > 0 (the object); threshold 0
  for signed maps (AGF), the map's mean for non-negative ones (Grad-CAM); pixel accuracy and mIoU are
  dataset-level, mAP is the mean per-image average precision of the AGF authors' protocol (the binarised
  map's two channels [background, foreground] against the one-hot mask); all in %.
- Negative perturbation: the least relevant pixels are zeroed first (p = 0.1 … 0.9 of the image) and the
  probe classifies the result. "predicted": the map explains the clean prediction and counts agreement
  with it; "target": the map explains the label and counts agreement with the label. AUC is the
  trapezoidal area of accuracy (%) over p in [0.1, 0.9] (a constant 100 % scores 80); higher is better.
- Reviewer metrics (`--metrics`, maps of the clean prediction): road (areas of the target probability
  over p = 0.2, 0.5, 0.8 under MoRF ↓ and LeRF ↑ noisy linear imputation), deletion ↓ / insertion ↑ (areas
  over 0 … 1, blurred baseline), pointing_game, relevance_mass (of the map's positive part), rank_accuracy
  (against the masks); each as the mean over images with its bootstrap interval.
- Intervals: every pixel accuracy, mAP, mIoU and AUC comes with its 95 % percentile bootstrap interval over
  the held-out images (`ci95`, 1000 resamples, seed 0, images in dataset-index order so that one and N
  processes agree).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from sslx.data.transforms import denormalize, normalize
from sslx.metrics import (DEFAULT_FRACTIONS, PerturbationAccuracy, SegmentationScores, curve_area,
                          insertion_deletion_curve, mean_interval, mean_ratio_interval, perturbation_correct,
                          pointing_game, ratio_interval, relevance_mass, relevance_rank_accuracy, road_scores,
                          segmentation_counts)

GRADCAM = "gradcam"
SEGMENTATION_KEYS = ("pixel_accuracy", "mAP", "mIoU", "iou_background", "iou_foreground", "n_ap_images")
VARIANTS = ("predicted", "target")
INTERVAL_KEYS = ("pixel_accuracy", "mAP", "mIoU")
# --metrics name → the per-image scores it adds (keys of metrics.json); the mask-based ones need masks.
EXTRA_METRICS = {"road": ("road_morf", "road_lerf"), "deletion": ("deletion",), "insertion": ("insertion",),
                 "pointing_game": ("pointing_game",), "relevance_mass": ("relevance_mass",),
                 "rank_accuracy": ("rank_accuracy",)}
MASK_METRICS = frozenset({"pointing_game", "relevance_mass", "rank_accuracy"})
ROAD_FRACTIONS = (0.2, 0.5, 0.8)
CONVENTIONS = {
    "segmentation": "maps explain the ground-truth class; foreground = mask > 0; threshold 0 for signed maps, "
                    "the per-image mean for non-negative maps; pixel_accuracy and mIoU dataset-level, mAP = mean "
                    "per-image average precision, the AGF authors' protocol (binarised map, AP over the background "
                    "and foreground channels against the one-hot mask, sslx.metrics protocol 'authors'); all in %",
    "perturbation": "negative test: least relevant pixels zeroed first on the [0,1] image, then normalised and "
                    "classified by the probe; 'predicted' explains and scores the clean prediction, 'target' the "
                    "label; accuracy in % per fraction; auc = trapezoid over the listed fractions "
                    "(0.1..0.9, p = 0 excluded: a constant 100 % gives 80); higher is better",
    "reviewer_metrics": "selected with --metrics; maps of the clean prediction; road_morf (lower is better) / "
                        "road_lerf (higher): trapezoid area of the target softmax probability over p = 0.2, 0.5, 0.8 "
                        "with ROAD noisy linear imputation; deletion (lower) / insertion (higher): area over 0..1 in "
                        "8 steps, blurred baseline (sigma 5 px); pointing_game, relevance_mass (positive part of the "
                        "map), rank_accuracy against the object mask (higher); mean over images with ci95 and n",
    "probe_accuracy": "top-1 accuracy (%) of the probe on the held-out images",
    "ci95": "95 % percentile bootstrap interval over the held-out images (1000 resamples, seed 0; images in "
            "dataset-index order) of every pixel_accuracy, mAP, mIoU and perturbation AUC",
    "heatmaps": "as returned by sslx.explain: AGF signed, per-image max-normalised; gradcam (and other methods) "
                "with their defaults, Grad-CAM taken at the output of the probed layer",
}


def available_methods() -> tuple[str, ...]:
    """Explanation methods a probe can be scored with (those of `sslx.explain`)."""
    from sslx.explain_api import METHODS

    return tuple(sorted(METHODS))


def make_explainer(method: str, model: nn.Module, cam_layer: str) -> Any:
    """An object with `.attribute(x, target)` for `method`; Grad-CAM reads the submodule named `cam_layer`."""
    from sslx.explain_api import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; available: {available_methods()}")
    if method == GRADCAM:
        return METHODS[method](model, layer=cam_layer)
    return METHODS[method](model)


def check_metrics(metrics: Sequence[str], with_masks: bool) -> tuple[str, ...]:
    """The --metrics selection, checked (known names, no repeats, masks present where needed)."""
    unknown = [m for m in metrics if m not in EXTRA_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(EXTRA_METRICS)}")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"--metrics lists a metric twice: {list(metrics)}")
    need = sorted(MASK_METRICS.intersection(metrics))
    if need and not with_masks:
        raise ValueError(f"metrics {need} need object masks; the data has none (give --masks)")
    return tuple(metrics)


def reviewer_scores(model: nn.Module, pixels: Tensor, maps: Tensor, targets: Tensor, masks: Tensor | None,
                    metrics: Sequence[str], normalizer: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    """Per-image scores (float64, B) of the selected reviewer metrics for one method's maps."""
    out: dict[str, Tensor] = {}
    grid = torch.tensor(ROAD_FRACTIONS, dtype=torch.float64, device=pixels.device)
    if "road" in metrics:
        for order in ("morf", "lerf"):
            road = road_scores(model, pixels, maps, targets, order, ROAD_FRACTIONS, normalizer)
            out[f"road_{order}"] = curve_area(grid, road.probability.double())
    for kind in ("deletion", "insertion"):
        if kind in metrics:
            fractions, curve = insertion_deletion_curve(model, pixels, maps, targets, kind, 8, "blur", normalizer)
            out[kind] = curve_area(fractions.double(), curve.double())
    if masks is not None:
        objects = (masks > 0).unsqueeze(1)
        functions = {"pointing_game": lambda: pointing_game(maps, objects),
                     "relevance_mass": lambda: relevance_mass(maps.clamp(min=0), objects),
                     "rank_accuracy": lambda: relevance_rank_accuracy(maps, objects)}
        out.update({name: f().double() for name, f in functions.items() if name in metrics})
    return out


class ReviewerScores(Metric):
    """Per-image reviewer scores of one method (cat states) → mean, 95 % bootstrap interval and n per score."""

    full_state_update = False

    def __init__(self, keys: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        for key in ("ids", *self.keys):
            self.add_state(key, default=[], dist_reduce_fx="cat")

    def update(self, ids: Tensor, scores: Mapping[str, Tensor]) -> None:
        """Add a batch's dataset indices and its per-image scores."""
        self.ids.append(ids)
        for key in self.keys:
            getattr(self, key).append(scores[key])

    def compute(self) -> dict[str, tuple[float, float, float, int]]:
        """{score: (mean, low, high, n)} over the images with a defined score, in dataset-index order."""
        ids = self.ids if isinstance(self.ids, Tensor) else torch.cat(self.ids)
        order = torch.argsort(ids.cpu(), stable=True)
        out = {}
        for key in self.keys:
            value = getattr(self, key)
            column = (torch.cat(value) if isinstance(value, list) else value).double().cpu()[order]
            column = column[~torch.isnan(column)]
            if column.numel() == 0:
                out[key] = (math.nan, math.nan, math.nan, 0)
            else:
                low, high = mean_interval(column)
                out[key] = (float(column.mean()), low, high, int(column.numel()))
        return out


def explain_both(explainer: Any, x: Tensor, labels: Tensor, predictions: Tensor) -> tuple[Tensor, Tensor]:
    """Maps for the labels and for the predictions (recomputed only where the two differ)."""
    # Gradient methods need autograd even inside an evaluation loop's no_grad.
    with torch.enable_grad():
        for_label = explainer.attribute(x, labels).detach()
        for_prediction = for_label.clone()
        wrong = (predictions != labels).nonzero().flatten()
        if wrong.numel():
            for_prediction[wrong] = explainer.attribute(x[wrong], predictions[wrong]).detach().to(for_label.dtype)
    return for_label, for_prediction


class ImageScores(Metric):
    """One method's per-image scores (cat states, gathered across processes) → 95 % bootstrap intervals over images.

    ``update(ids, correct_by_variant, counts)``: the batch's dataset indices, its B×F perturbation flags per
    variant and (with masks) its `segmentation_counts`. ``compute()`` sorts the images by index (so one
    and N processes resample the same rows) and returns {"pixel_accuracy", "mAP", "mIoU",
    "perturbation_<variant>": (low, high)} in %.
    """

    full_state_update = False

    def __init__(self, fractions: Sequence[float], with_masks: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fractions, self.with_masks = tuple(fractions), with_masks
        names = ["ids", *[f"auc_{v}" for v in VARIANTS]] + (["correct", "total", "inter", "union", "ap"]
                                                             if with_masks else [])
        for name in names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, ids: Tensor, correct: Mapping[str, Tensor], counts: Mapping[str, Tensor] | None = None) -> None:
        """Add a batch: dataset indices, {variant: B×F flags}, and segmentation counts when scored with masks."""
        grid = torch.tensor(self.fractions, dtype=torch.float64, device=ids.device)
        self.ids.append(ids)
        for variant in VARIANTS:
            flags = correct[variant].double() * 100.0
            auc = torch.trapezoid(flags, grid, dim=1) if len(self.fractions) > 1 else flags[:, 0] * math.nan
            getattr(self, f"auc_{variant}").append(auc)
        if self.with_masks:
            if counts is None:
                raise ValueError("ImageScores(with_masks=True) needs the batch's segmentation counts")
            for state, key in (("correct", "correct"), ("total", "total"), ("inter", "intersections"),
                               ("union", "unions"), ("ap", "ap")):
                getattr(self, state).append(counts[key])

    def _column(self, name: str, order: Tensor) -> Tensor:
        value = getattr(self, name)
        return (torch.cat(value) if isinstance(value, list) else value).double().cpu()[order]

    def compute(self) -> dict[str, tuple[float, float]]:
        """Percentile intervals (%) of each score, images resampled in dataset-index order."""
        ids = self.ids if isinstance(self.ids, Tensor) else torch.cat(self.ids)
        order = torch.argsort(ids.cpu(), stable=True)
        out = {f"perturbation_{v}": mean_interval(self._column(f"auc_{v}", order)) if len(self.fractions) > 1
               else (math.nan, math.nan) for v in VARIANTS}
        if self.with_masks:
            ap = self._column("ap", order)
            scaled = {"pixel_accuracy": ratio_interval(self._column("correct", order), self._column("total", order)),
                      "mAP": mean_interval(ap) if bool((~torch.isnan(ap)).any()) else (math.nan, math.nan),
                      "mIoU": mean_ratio_interval(self._column("inter", order), self._column("union", order))}
            out.update({k: (100.0 * lo, 100.0 * hi) for k, (lo, hi) in scaled.items()})
        return out


class ExplanationEvaluation(pl.LightningModule):
    """Trainer.test module: probe accuracy, segmentation and negative-perturbation scores per method.

    `cam_layer` names the submodule whose output Grad-CAM reads (the probed layer). Every number is
    logged as a scalar (``probe/accuracy``, ``<method>/segmentation/mAP``,
    ``<method>/perturbation_predicted/auc``, ``…/accuracy@0.1``, …), so ``Trainer.test`` returns them under
    any strategy; `nest_results` turns them back into a nested dict. Metrics sum across processes.
    """

    def __init__(self, model: nn.Module, cam_layer: str, methods: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], *, with_masks: bool = True,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS, num_classes: int | None = None,
                 metrics: Sequence[str] = ()) -> None:
        super().__init__()
        if not methods:
            raise ValueError("methods is empty; give at least one explanation method")
        unknown = [m for m in methods if m not in available_methods()]
        if unknown:
            raise ValueError(f"unknown explanation methods {unknown}; available: {available_methods()}")
        if not isinstance(getattr(model, cam_layer, None), nn.Module):
            raise ValueError(f"the model has no submodule {cam_layer!r} (the layer Grad-CAM reads)")
        self.model = model.eval()
        self.cam_layer = cam_layer
        self.methods = tuple(methods)
        self.mean, self.std = tuple(mean), tuple(std)
        self.with_masks = with_masks
        self.fractions = tuple(fractions)
        self.num_classes = num_classes if num_classes is not None else int(model[-1].out_features)
        self.accuracy = MulticlassAccuracy(self.num_classes, average="micro")
        self.segmentation = nn.ModuleDict({m: SegmentationScores() for m in self.methods}) if with_masks else None
        self.perturbation = nn.ModuleDict({f"{m}_{v}": PerturbationAccuracy(self.fractions)
                                           for m in self.methods for v in VARIANTS})
        self.intervals = nn.ModuleDict({m: ImageScores(self.fractions, with_masks) for m in self.methods})
        self.metrics = check_metrics(tuple(metrics), with_masks)
        self.reviewer_keys = tuple(k for name in self.metrics for k in EXTRA_METRICS[name])
        self.reviewer = nn.ModuleDict({m: ReviewerScores(self.reviewer_keys) for m in self.methods})
        self._explainers: dict[str, Any] = {}

    def train(self, mode: bool = True) -> "ExplanationEvaluation":
        """The explained network always stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_explainers"] = {}  # traced graphs are rebuilt where they are used (e.g. after ddp_spawn)
        return state

    def explainer(self, method: str) -> Any:
        """The (cached) explainer for `method` on the probe network."""
        if method not in self._explainers:
            self._explainers[method] = make_explainer(method, self.model, self.cam_layer)
        return self._explainers[method]

    def _normalizer(self) -> Callable[[Tensor], Tensor]:
        return functools.partial(normalize, mean=self.mean, std=self.std)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        x, labels = batch["image"], batch["label"]
        logits = self.model(x)
        predictions = logits.argmax(dim=1)
        self.accuracy.update(predictions, labels)
        pixels = denormalize(x, self.mean, self.std).clamp(0.0, 1.0)
        for method in self.methods:
            for_label, for_prediction = explain_both(self.explainer(method), x, labels, predictions)
            counts = None
            if self.segmentation is not None:
                self.segmentation[method].update(for_label, batch["mask"])
                counts = segmentation_counts(for_label, batch["mask"])
            flags = {}
            for variant, maps, targets in (("predicted", for_prediction, predictions), ("target", for_label, labels)):
                flags[variant] = perturbation_correct(self.model, pixels, maps, targets, "negative", self.fractions,
                                                      self._normalizer())
                self.perturbation[f"{method}_{variant}"].update(flags[variant])
            self.intervals[method].update(batch["index"], flags, counts)
            if self.metrics:
                scores = reviewer_scores(self.model, pixels, for_prediction, predictions, batch.get("mask"),
                                         self.metrics, self._normalizer())
                self.reviewer[method].update(batch["index"], scores)

    def on_test_epoch_end(self) -> None:
        values: dict[str, float] = {"probe/accuracy": 100.0 * float(self.accuracy.compute())}
        for method in self.methods:
            for key, (low, high) in self.intervals[method].compute().items():
                name = f"{method}/{key}/auc" if key.startswith("perturbation") else f"{method}/segmentation/{key}"
                values[f"{name}_ci95_low"], values[f"{name}_ci95_high"] = low, high
            if self.segmentation is not None:
                scores = self.segmentation[method].compute()
                values.update({f"{method}/segmentation/{k}": float(scores[k]) for k in SEGMENTATION_KEYS})
            if self.metrics:
                for key, (mean, low, high, n) in self.reviewer[method].compute().items():
                    values[f"{method}/{key}/mean"], values[f"{method}/{key}/n"] = mean, float(n)
                    values[f"{method}/{key}/ci95_low"], values[f"{method}/{key}/ci95_high"] = low, high
            for variant in VARIANTS:
                curve = self.perturbation[f"{method}_{variant}"].compute()
                prefix = f"{method}/perturbation_{variant}"
                values[f"{prefix}/auc"] = float(curve["auc"])
                values[f"{prefix}/n_images"] = float(curve["n_images"])
                for p, acc in zip(self.fractions, curve["accuracy"].tolist()):
                    values[f"{prefix}/accuracy@{p:g}"] = acc
        for name, value in values.items():
            # Values are already synced by the Metrics; sync_dist averages identical numbers.
            self.log(name, value, sync_dist=True)


def nest_results(logged: Mapping[str, float], methods: Sequence[str], fractions: Sequence[float],
                 with_masks: bool, metrics: Sequence[str] = ()) -> dict[str, Any]:
    """Turn ExplanationEvaluation's flat scalars into {probe_accuracy, n_images, methods: {m: {...}}}.

    Values are rounded to 4 decimals: Lightning reports logged scalars in float32.
    """
    def get(key: str) -> float:
        if key not in logged:
            raise KeyError(f"evaluation did not report {key!r} (got {sorted(logged)[:8]}…)")
        return round(float(logged[key]), 4)

    methods_out: dict[str, Any] = {}
    for method in methods:
        entry: dict[str, Any] = {}
        if with_masks:
            entry.update({k: get(f"{method}/segmentation/{k}") for k in SEGMENTATION_KEYS})
            entry["n_ap_images"] = int(round(entry["n_ap_images"]))
            entry["ci95"] = {k: [get(f"{method}/segmentation/{k}_ci95_low"), get(f"{method}/segmentation/{k}_ci95_high")]
                             for k in INTERVAL_KEYS}
        for variant in VARIANTS:
            prefix = f"{method}/perturbation_{variant}"
            entry[f"perturbation_{variant}"] = {
                "auc": get(f"{prefix}/auc"),
                "fractions": [float(p) for p in fractions],
                "accuracy": [get(f"{prefix}/accuracy@{p:g}") for p in fractions],
                "ci95": {"auc": [get(f"{prefix}/auc_ci95_low"), get(f"{prefix}/auc_ci95_high")]},
            }
        for key in (k for name in metrics for k in EXTRA_METRICS[name]):
            entry[key] = {"mean": get(f"{method}/{key}/mean"), "n": int(round(get(f"{method}/{key}/n"))),
                          "ci95": [get(f"{method}/{key}/ci95_low"), get(f"{method}/{key}/ci95_high")]}
        methods_out[method] = entry
    n_images = int(round(get(f"{methods[0]}/perturbation_target/n_images")))
    return {"probe_accuracy": get("probe/accuracy"), "n_images": n_images, "methods": methods_out}


def explain_images(model: nn.Module, cam_layer: str, methods: Sequence[str], x: Tensor,
                   target: Tensor) -> dict[str, Tensor]:
    """Maps B×1×H×W per method for a small batch (e.g. the overlay scenes), explaining `target`."""
    with torch.enable_grad():
        return {m: make_explainer(m, model, cam_layer).attribute(x, target).detach() for m in methods}
