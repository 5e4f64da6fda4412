"""Shared code of the supervised experiments (Tables 2, 3, 5, class specificity): models, data, batch scorers, summaries.

Scorers are nn.Modules holding the explained model, so Lightning's Trainer.predict (experiments/harness.py)
moves them to each rank's device and keeps them in eval mode; explainers are built lazily on that device.
Each scorer returns per-image rows; the `*_summary` functions turn the gathered rows into the tables' numbers.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401  (puts the checkout on sys.path)
from sslx.data.scenes import ScenesDataset, collate_scenes
from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from sslx.explain_api import METHODS
from sslx.metrics import (DEFAULT_FRACTIONS, average_precision, mean_interval, mean_ratio_interval, perturbation_auc,
                          perturbation_correct, ratio_interval, segmentation_counts)

# The paper's method order (Tables 2 and 3) and display names.
TABLE2_METHODS = ("integrated_gradients", "smoothgrad", "lrp", "lrp_ab", "fullgrad", "gradcam", "rap", "clrp",
                  "sglrp", "agf")
TABLE3_METHODS = ("gradient_shap", "meaningful_perturbation", *TABLE2_METHODS)
# Attention-based methods for Vision Transformers (--model vit); the graph-walking methods above need CNNs.
VIT_METHODS = ("attention_rollout", "generic_attention", "transformer_attribution")
NOT_IMPLEMENTED = {"meaningful_perturbation"}
LABELS = {"gradient_shap": "Gradient SHAP", "meaningful_perturbation": "Meaningful Perturbation",
          "integrated_gradients": "Int. Grad", "smoothgrad": "Smooth Grad", "lrp": "LRP", "lrp_ab": "LRP αβ",
          "fullgrad": "Full Grad", "gradcam": "Grad CAM", "rap": "RAP", "clrp": "CLRP", "sglrp": "SGLRP",
          "agf": "AGF (ours)", "attention_rollout": "Rollout", "generic_attention": "Generic Attn (ICCV'21)",
          "transformer_attribution": "Transformer Attr. (CVPR'21)"}
# Maps with signed values: their positive part is the object (threshold 0). The others are non-negative
# and thresholded at their per-image mean (the paper's rule). Integrated gradients is in the paper's signed
# list, but the authors' baseline (and sslx's, by default) returns Σ_c|·| ≥ 0, so it is thresholded at the mean.
SIGNED_METHODS = frozenset({"gradient_shap", "lrp_ab", "rap", "clrp", "sglrp", "agf"})
# Only internal batch sizes (same maps, fewer passes): captum's default of 16 points per pass is slow on CPU.
SPEED_OPTIONS: dict[str, dict[str, int]] = {"integrated_gradients": {"internal_batch_size": 256},
                                            "smoothgrad": {"batch_size": 128}}
MAP_PROTOCOLS = {
    "authors": "mAP (protocol `authors`, the default) = the AGF authors' ImageNet-Segmentation evaluation "
               "(`imagenet_seg_eval.py` / `get_ap_scores` of shirgur/AGFVisualization): the map is binarised by the "
               "foreground rule, the two channels [background = 1 − prediction, foreground = prediction] are "
               "flattened and scored against the one-hot truth with sklearn's average precision, per image; mAP = "
               "mean over images. With binary scores an image's AP is a² + (1 − a)/2 for its pixel accuracy a, so "
               "values lie in [50, 100] and follow the pixel accuracy.",
    "per_image_raw": "mAP (protocol `per_image_raw`) = mean over images of the average precision (sklearn's "
                     "step-wise definition) of the raw map values against the foreground; images without "
                     "foreground have no AP and are left out.",
}
MULTILABEL_ASSET = "multilabel_vgg.pth"
UNCHOSEN_PENALTY = 0.1  # subtracted from the channels of classes not predicted (sigmoid ≤ 0.5), as the authors' VOC code
Factory = Callable[[nn.Module], Any]

__all__ = ["LABELS", "MAP_PROTOCOLS", "SIGNED_METHODS", "TABLE2_METHODS", "TABLE3_METHODS", "VIT_METHODS", "ClassSpecificityScorer", "Explainers",
           "MultiLabelSegmentationScorer", "PerturbationScorer", "SegmentationScorer", "add_map_protocol_option",
           "add_methods_option",
           "add_model_option", "class_evidence", "curves_figure", "label_scores", "load_model", "make_loader",
           "method_factories", "multilabel_summary", "perturbation_summary", "scene_dataset", "segmentation_rows",
           "segmentation_summary", "specificity_summary", "threshold_for"]


# ---------------------------------------------------------------------------------------------- options
def add_model_option(parser: argparse.ArgumentParser, default: str = "vgg", flag: str = "--model",
                     what: str = "the explained classifier") -> None:
    """Add a model option: an embedded name (vgg, resnet), an sslx checkpoint path, or torchvision:NAME."""
    parser.add_argument(flag, default=default, help=f"{what}: 'vgg' or 'resnet' (embedded), a path to an sslx "
                        "supervised checkpoint, or 'torchvision:NAME' (torchvision's pretrained weights, e.g. "
                        f"torchvision:vgg19 for real ImageNet data) (default: {default})")


def add_methods_option(parser: argparse.ArgumentParser, default: Sequence[str]) -> None:
    """Add --methods (comma-separated subset of explanation methods)."""
    parser.add_argument("--methods", default=",".join(default),
                        help=f"comma-separated explanation methods (default: {','.join(default)})")


def add_map_protocol_option(parser: argparse.ArgumentParser, part: str = "") -> None:
    """Add --map-protocol: how a map's average precision is computed (sslx.metrics.segmentation.PROTOCOLS)."""
    parser.add_argument("--map-protocol", choices=tuple(MAP_PROTOCOLS), default="authors",
                        help=f"mAP protocol{' of ' + part if part else ''}: 'authors' (default; binarised map, AP over "
                             "background and foreground channels, as the AGF authors' imagenet_seg_eval.py) or "
                             "'per_image_raw' (AP of the raw map values against the foreground)")


def parse_methods(text: str, allowed: Sequence[str]) -> list[str]:
    """The --methods list, checked against `allowed`, in the order given."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in allowed]
    if not names or unknown:
        raise ValueError(f"--methods must name some of {list(allowed)}, got {text!r} (unknown: {unknown})")
    return names


def load_model(spec: str) -> nn.Module:
    """A classifier in eval mode from an embedded name, an sslx supervised checkpoint path or torchvision:NAME."""
    from sslx.assets import SUPERVISED, TRANSFORMERS, load_embedded, load_supervised

    if spec in SUPERVISED + TRANSFORMERS:
        return load_embedded(spec)
    if spec.startswith("torchvision:"):
        import torchvision

        return torchvision.models.get_model(spec.split(":", 1)[1], weights="DEFAULT").eval()
    if not Path(spec).is_file():
        raise FileNotFoundError(f"model {spec!r} is neither an embedded name {SUPERVISED}, torchvision:NAME, "
                                "nor an existing checkpoint file")
    return load_supervised(spec)


def num_outputs(model: nn.Module) -> int:
    """Number of classes of a classifier ending in a Linear layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear head")
    return int(linears[-1].out_features)


# ------------------------------------------------------------------------------------------------- data
def scene_dataset(objects: str, seed: int = 0) -> ScenesDataset:
    """The test split of the scenes benchmark ('single' or 'pair' objects), ImageNet-normalised."""
    return ScenesDataset("test", seed=seed, objects=objects)


def make_loader(dataset: Dataset, n_images: int, batch_size: int) -> DataLoader:
    """Batches of the first `n_images` items (in order) of `dataset`, collated as dicts of tensors."""
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise ValueError(f"the dataset {dataset!r} is empty")
    subset = Subset(dataset, range(min(n_images, total)))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_scenes)


def normalisation(dataset: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the dataset normalised its images with (ImageNet's unless it says otherwise)."""
    return tuple(getattr(dataset, "mean", IMAGENET_MEAN)), tuple(getattr(dataset, "std", IMAGENET_STD))


# -------------------------------------------------------------------------------------------- explainers
def method_factories(methods: Sequence[str]) -> dict[str, Factory]:
    """name → factory(model) for sslx.explain methods (with the faster internal batch sizes)."""
    out: dict[str, Factory] = {}
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown explanation method {name!r}; available: {sorted(METHODS)}")
        out[name] = lambda model, name=name: METHODS[name](model, **SPEED_OPTIONS.get(name, {}))
    return out


class Explainers(nn.Module):
    """The explained model plus explainers built lazily from factories (per device, after Lightning moved us)."""

    def __init__(self, model: nn.Module, factories: Mapping[str, Factory]) -> None:
        super().__init__()
        self.model = model.eval()
        self.factories = dict(factories)
        self._built: dict[tuple[str, str], Any] = {}

    @property
    def names(self) -> list[str]:
        """Names of the explainers, in the order given."""
        return list(self.factories)

    def explain(self, name: str, x: Tensor, target: Tensor) -> Tensor:
        """B×1×H×W maps of explainer `name` for per-image `target` classes (gradients on, maps detached)."""
        key = (name, str(x.device))
        if key not in self._built:
            self._built[key] = self.factories[name](self.model)
        if x.shape[0] == 0:
            return x.new_zeros((0, 1, *x.shape[2:]))
        with torch.enable_grad():
            return self._built[key].attribute(x, target).detach().to(x.dtype)


def threshold_for(method: str) -> float | str:
    """The segmentation threshold of a method's maps: 0 for signed maps, 'mean' for non-negative ones."""
    return 0.0 if method in SIGNED_METHODS else "mean"


# --------------------------------------------------------------------------------------- perturbation
class PerturbationScorer(nn.Module):
    """Per image and method: still-correct flags (B×F) after removing pixels in map order, per variant.

    "predicted" explains and scores the clean top-1 class, "target" the label (maps recomputed only where
    the two differ). `order` is "negative" (least relevant first) or "positive".
    """

    def __init__(self, explainers: Explainers, variants: Sequence[str], order: str, mean: Sequence[float],
                 std: Sequence[float], fractions: Sequence[float] = DEFAULT_FRACTIONS) -> None:
        super().__init__()
        self.explainers, self.variants, self.order = explainers, tuple(variants), order
        self.mean, self.std, self.fractions = tuple(mean), tuple(std), tuple(fractions)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x, labels = batch["image"], batch["label"]
        model = self.explainers.model
        with torch.no_grad():
            predictions = model(x).argmax(dim=1)
        pixels = denormalize(x, self.mean, self.std).clamp(0.0, 1.0)
        norm = lambda t: normalize(t, self.mean, self.std)  # noqa: E731
        rows = {"ids": batch["index"], "clean_correct": (predictions == labels),
                "predictions": predictions}
        differ = (predictions != labels).nonzero().flatten()
        for name in self.explainers.names:
            first = predictions if "target" not in self.variants else labels
            maps = self.explainers.explain(name, x, first)
            for variant in self.variants:
                targets = labels if variant == "target" else predictions
                variant_maps = maps
                if variant == "predicted" and "target" in self.variants and differ.numel():
                    variant_maps = maps.clone()
                    variant_maps[differ] = self.explainers.explain(name, x[differ], predictions[differ])
                rows[f"{name}|{variant}"] = perturbation_correct(model, pixels, variant_maps, targets, self.order,
                                                                 self.fractions, norm)
        return rows


def perturbation_summary(rows: Mapping[str, Tensor], names: Sequence[str], variants: Sequence[str],
                         fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, Any]:
    """{name: {variant: {accuracy (% per fraction), auc, auc_se, n_images, ci95: {auc: [lo, hi]}, n: {auc: n}}}}.

    auc_se = std of per-image AUCs / √n; ci95 = percentile bootstrap over images of the mean per-image AUC
    (which equals the AUC of the mean curve).
    """
    out: dict[str, Any] = {}
    grid = torch.tensor(fractions, dtype=torch.float64)
    for name in names:
        out[name] = {}
        for variant in variants:
            correct = rows[f"{name}|{variant}"].double() * 100.0  # n×F, 0 or 100
            curve = correct.mean(dim=0)
            per_image = torch.trapezoid(correct, grid, dim=1)
            n = correct.shape[0]
            se = float(per_image.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
            out[name][variant] = {"fractions": list(fractions), "accuracy": curve.tolist(),
                                  "auc": float(perturbation_auc(fractions, curve)), "auc_se": se, "n_images": n,
                                  "ci95": {"auc": list(mean_interval(per_image))}, "n": {"auc": n}}
    return out


def curves_figure(summary: Mapping[str, Any], variants: Sequence[str], labels: Mapping[str, str],
                  ylabel: str = "top-1 accuracy (%)") -> Figure:
    """Accuracy-vs-removed-fraction curves, one panel per variant, one line per method (paper Fig. 3)."""
    fig = Figure(figsize=(5.2 * len(variants), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(variants), squeeze=False)[0]
    for ax, variant in zip(axes, variants):
        for name, entry in summary.items():
            curve = entry[variant]
            ax.plot(curve["fractions"], curve["accuracy"], marker="o", markersize=3,
                    label=f"{labels.get(name, name)} ({curve['auc']:.1f})")
        ax.set_title(f"{variant} class")
        ax.set_xlabel("fraction of pixels removed")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="method (AUC)", title_fontsize=7)
    return fig


# --------------------------------------------------------------------------------------- segmentation
def segmentation_rows(maps: Tensor, masks: Tensor, threshold: float | str, protocol: str = "authors",
                      ignore_index: int | None = 255) -> dict[str, Tensor]:
    """Per-image counts of a binary foreground test: correct, total, inter/union (bg, fg) and AP of `protocol` (NaN: none)."""
    counts = segmentation_counts(maps, masks, threshold, ignore_index, protocol)
    inter, union = counts["intersections"], counts["unions"]
    return {"correct": counts["correct"], "total": counts["total"], "inter_bg": inter[:, 0], "union_bg": union[:, 0],
            "inter_fg": inter[:, 1], "union_fg": union[:, 1], "ap": counts["ap"]}


def _with_intervals(scores: dict[str, Any], intervals: Mapping[str, tuple[float, float]],
                    counts: Mapping[str, int]) -> dict[str, Any]:
    """`scores` plus ci95 {metric: [lo, hi]} (percentages) and n {metric: images}."""
    return {**scores, "ci95": {k: [100 * lo, 100 * hi] for k, (lo, hi) in intervals.items()}, "n": dict(counts)}


def _binary_scores(rows: Mapping[str, Tensor], prefix: str) -> dict[str, Any]:
    """Pixel accuracy, mIoU (dataset level), mAP (mean over images with an AP), all in %, with bootstrap intervals."""
    def column(key: str) -> Tensor:
        return rows[f"{prefix}{key}"].double()

    def total(key: str) -> float:
        return float(column(key).sum())

    ap = column("ap")
    has = ~torch.isnan(ap)
    ious = [total(f"inter_{c}") / total(f"union_{c}") for c in ("bg", "fg") if total(f"union_{c}") > 0]
    inter = torch.stack([column("inter_bg"), column("inter_fg")], dim=1)
    union = torch.stack([column("union_bg"), column("union_fg")], dim=1)
    scores = {"pixel_accuracy": 100 * total("correct") / total("total"), "mAP": float(100 * ap[has].mean()),
              "mIoU": 100 * sum(ious) / len(ious), "n_images": int(ap.numel()), "n_ap_images": int(has.sum())}
    intervals = {"pixel_accuracy": ratio_interval(column("correct"), column("total")),
                 "mAP": mean_interval(ap) if bool(has.any()) else (math.nan, math.nan),
                 "mIoU": mean_ratio_interval(inter, union)}
    n = int(ap.numel())
    return _with_intervals(scores, intervals, {"pixel_accuracy": n, "mAP": int(has.sum()), "mIoU": n})


class SegmentationScorer(nn.Module):
    """Per image and method: binary segmentation counts of the map for the top-predicted class vs mask > 0."""

    def __init__(self, explainers: Explainers, protocol: str = "authors") -> None:
        super().__init__()
        self.explainers, self.protocol = explainers, protocol

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x, masks = batch["image"], batch["mask"]
        with torch.no_grad():
            predictions = self.explainers.model(x).argmax(dim=1)
        rows: dict[str, Tensor] = {"ids": batch["index"]}
        for name in self.explainers.names:
            maps = self.explainers.explain(name, x, predictions)
            for key, value in segmentation_rows(maps, masks, threshold_for(name), self.protocol).items():
                rows[f"{name}|{key}"] = value
        return rows


def segmentation_summary(rows: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{name: {pixel_accuracy, mAP, mIoU, n_images, n_ap_images, ci95, n}} from SegmentationScorer rows."""
    return {name: _binary_scores(rows, f"{name}|") for name in names}


# ------------------------------------------------------------------------- multi-label (VOC) segmentation
def class_evidence(maps: Tensor, threshold: float | str) -> Tensor:
    """B×1×H×W maps → their above-threshold part divided by its per-image max, in [0, 1] (0 where below)."""
    cut = maps.mean(dim=(1, 2, 3), keepdim=True) if threshold == "mean" else torch.full_like(maps[:, :1, :1, :1],
                                                                                             float(threshold))
    part = torch.relu(maps - cut)
    top = part.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return torch.where(top > 0, part / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(part))


def label_scores(evidence: Tensor, chosen: Tensor) -> Tensor:
    """B×(K+1)×H×W channel scores from per-class evidence (B×K×H×W) and chosen classes (B×K bool).

    Channel 0 (background) is 0; a chosen class's channel is its evidence in [0, 1]; an unchosen class's
    channel is −UNCHOSEN_PENALTY. Per pixel the label is the argmax (ties → background), so a pixel is
    background unless some chosen class's map is above its threshold there, and the class with the larger
    normalised evidence wins where maps overlap.
    """
    scores = torch.where(chosen[:, :, None, None], evidence, torch.full_like(evidence, -UNCHOSEN_PENALTY))
    return torch.cat([torch.zeros_like(scores[:, :1]), scores], dim=1)


def multilabel_rows(scores: Tensor, masks: Tensor, ignore_index: int | None = 255) -> dict[str, Tensor]:
    """Per image: correct/total pixels, per-label intersections and unions (B×(K+1)) and micro AP of softmax(scores)."""
    b, channels = scores.shape[:2]
    valid = torch.ones_like(masks, dtype=torch.bool) if ignore_index is None else masks != ignore_index
    if bool((masks[valid] >= channels).any()) or bool((masks[valid] < 0).any()):
        raise ValueError(f"masks hold labels outside 0..{channels - 1} (other than ignore_index={ignore_index})")
    pred = scores.argmax(dim=1)
    truth = torch.where(valid, masks, 0)
    labels = torch.arange(channels, device=scores.device).view(1, -1, 1, 1)
    pred_hot, truth_hot = (pred[:, None] == labels) & valid[:, None], (truth[:, None] == labels) & valid[:, None]
    probabilities = scores.softmax(dim=1)
    every = valid[:, None].expand_as(truth_hot)
    return {
        "correct": ((pred == truth) & valid).flatten(1).sum(dim=1), "total": valid.flatten(1).sum(dim=1),
        "inter": (pred_hot & truth_hot).flatten(2).sum(dim=2), "union": (pred_hot | truth_hot).flatten(2).sum(dim=2),
        "ap": average_precision(probabilities.reshape(b, -1), truth_hot.reshape(b, -1), every.reshape(b, -1)),
    }


class MultiLabelSegmentationScorer(nn.Module):
    """Explains every class with sigmoid > 0.5 and scores the (K+1)-channel map against the class mask."""

    def __init__(self, explainers: Explainers, ignore_index: int | None = 255) -> None:
        super().__init__()
        self.explainers, self.ignore_index = explainers, ignore_index

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x, masks = batch["image"], batch["mask"]
        with torch.no_grad():
            chosen = self.explainers.model(x).sigmoid() > 0.5
        images, classes = chosen.nonzero(as_tuple=True)
        b, k = chosen.shape
        rows: dict[str, Tensor] = {"ids": batch["index"], "n_chosen": chosen.sum(dim=1)}
        if "labels" in batch:
            truth = batch["labels"] > 0.5
            rows["exact_set"] = (chosen == truth).all(dim=1)
        for name in self.explainers.names:
            maps = self.explainers.explain(name, x[images], classes)
            evidence = x.new_zeros((b, k, *x.shape[2:]))
            evidence[images, classes] = class_evidence(maps, threshold_for(name))[:, 0]
            for key, value in multilabel_rows(label_scores(evidence, chosen), masks, self.ignore_index).items():
                rows[f"{name}|{key}"] = value
        return rows


def multilabel_summary(rows: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{name: {pixel_accuracy, mAP (mean per-image micro AP), mIoU (labels present), n_images, ci95, n}} in %."""
    out = {}
    for name in names:
        per_inter, per_union = rows[f"{name}|inter"].double(), rows[f"{name}|union"].double()
        inter, union = per_inter.sum(0), per_union.sum(0)
        present = union > 0
        ap = rows[f"{name}|ap"].double()
        has = ~torch.isnan(ap)
        correct, total = rows[f"{name}|correct"].double(), rows[f"{name}|total"].double()
        scores = {"pixel_accuracy": float(100 * correct.sum() / total.sum()),
                  "mAP": float(100 * ap[has].mean()), "mIoU": float(100 * (inter[present] / union[present]).mean()),
                  "n_images": int(ap.numel()), "n_ap_images": int(has.sum())}
        intervals = {"pixel_accuracy": ratio_interval(correct, total),
                     "mAP": mean_interval(ap) if bool(has.any()) else (math.nan, math.nan),
                     "mIoU": mean_ratio_interval(per_inter, per_union)}
        n = int(ap.numel())
        out[name] = _with_intervals(scores, intervals, {"pixel_accuracy": n, "mAP": int(has.sum()), "mIoU": n})
    return out


# ---------------------------------------------------------------------------------- class specificity
class ClassSpecificityScorer(nn.Module):
    """On two-object scenes: IoU of each class's positive map with its own and the other object's mask."""

    def __init__(self, explainers: Explainers) -> None:
        super().__init__()
        self.explainers = explainers

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        from sslx.metrics import class_specificity

        x, objects, instance = batch["image"], batch["object_labels"], batch["instance"]
        if bool((objects < 0).any()):
            raise ValueError("class specificity needs two-object scenes (object_labels holds −1)")
        with torch.no_grad():
            top2 = self.explainers.model(x).topk(2, dim=1).indices
        both = (top2[:, :, None] == objects[:, None, :]).any(dim=1).all(dim=1)
        rows: dict[str, Tensor] = {"ids": batch["index"], "both_in_top2": both}
        for name in self.explainers.names:
            heat_a = self.explainers.explain(name, x, objects[:, 0])
            heat_b = self.explainers.explain(name, x, objects[:, 1])
            scores = class_specificity(heat_a, heat_b, instance == 1, instance == 2, threshold_for(name))
            rows.update({f"{name}|{k}": v for k, v in scores.items()})
        return rows


def specificity_summary(rows: Mapping[str, Tensor], names: Sequence[str], subset: Tensor | None = None
                        ) -> dict[str, dict[str, Any]]:
    """{name: {iou_own, iou_other, difference, difference_se, n_images, ci95, n}}: means over images (optionally a subset)."""
    out = {}
    for name in names:
        own, other = rows[f"{name}|iou_own"].double(), rows[f"{name}|iou_other"].double()
        if subset is not None:
            own, other = own[subset], other[subset]
        diff = own - other
        n = int(diff.numel())
        values = {"iou_own": own, "iou_other": other, "difference": diff}
        out[name] = {**{k: float(v.mean()) if n else math.nan for k, v in values.items()},
                     "difference_se": float(diff.std() / math.sqrt(n)) if n > 1 else math.nan, "n_images": n,
                     "ci95": {k: list(mean_interval(v)) if n else [math.nan, math.nan] for k, v in values.items()},
                     "n": {k: n for k in values}}
    return out

