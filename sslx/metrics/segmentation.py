"""Segmentation tests of explanations: heatmaps against binary foreground/background masks.

Conventions (ImageNet-Segmentation protocol of the AGF paper, docs/agf_reference_semantics.md):
- Masks: label > 0 is foreground, 0 is background, `ignore_index` pixels are left out of every count
  (and of the AP ranking). Any other negative label is an error.
- Prediction: a pixel is foreground when its heatmap value is strictly above the image's threshold.
  ``threshold="auto"`` uses 0 for a signed map (one with any negative value) and the map's mean (over
  all its pixels, ignored ones included) for a non-negative map; ``"mean"`` always uses the mean; a
  number is used as is for every image.
- Pixel accuracy = Σ correct / Σ non-ignored pixels over all images (dataset level when accumulated).
- mIoU = mean over the two classes (background, foreground) of Σ intersection / Σ union, summed over
  all images first; a class whose union is empty everywhere is left out of the mean.
- mAP = mean over images of a per-image average precision (AP), sklearn's ``average_precision_score``:
  AP = Σ_k (R_k − R_{k−1}) P_k over the distinct score thresholds, step-wise, no interpolation (tied
  scores form one threshold). Two protocols (`PROTOCOLS`):
  - ``"authors"`` (default): the AGF authors' ImageNet-Segmentation evaluation (`imagenet_seg_eval.py`
    with `get_ap_scores` of shirgur/AGFVisualization). The map is binarised at the threshold, the
    two-channel output [background = 1 − pred, foreground = pred] is flattened and scored against the
    one-hot truth [mask == 0, mask > 0] (2·N entries per image, ignored pixels left out of both
    channels). With binary scores this AP equals a² + (1 − a)/2 for the image's pixel accuracy a, so it
    lies in [50, 100] %. Every image with a valid pixel has an AP (background is a class too).
  - ``"per_image_raw"``: the AP of the raw heatmap values against the foreground only; an image
    without foreground pixels has no AP (excluded, counted in ``n_excluded``).
- All scores are percentages (0–100), like the paper's tables.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from sslx._validate import check_image_batch

__all__ = [
    "PROTOCOLS",
    "SegmentationScores",
    "average_precision",
    "class_specificity",
    "foreground_prediction",
    "segmentation_counts",
    "segmentation_scores",
    "segmentation_statistics",
]

Threshold = str | float
PROTOCOLS = ("authors", "per_image_raw")


def _check_masks(masks: object, heatmaps: Tensor, name: str, ignore_index: int | None) -> Tensor:
    """Return `masks` as B×H×W after checking dtype, shape, device and labels against the heatmaps."""
    if not isinstance(masks, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape B×H×W, got {type(masks).__name__}")
    if masks.is_floating_point() or masks.is_complex():
        raise TypeError(f"{name} must hold integer or bool labels, got dtype {masks.dtype}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    expected = (heatmaps.shape[0], *heatmaps.shape[2:])
    if masks.dim() != 3 or tuple(masks.shape) != expected:
        raise ValueError(
            f"{name} shape {tuple(masks.shape)} does not match heatmaps shape {tuple(heatmaps.shape)} "
            f"(expected B×H×W = {expected} or B×1×H×W)"
        )
    if masks.device != heatmaps.device:
        raise ValueError(f"{name} are on {masks.device} but heatmaps are on {heatmaps.device}")
    if masks.dtype != torch.bool:
        bad = masks < 0 if ignore_index is None else (masks < 0) & (masks != ignore_index)
        if bool(bad.any()):
            raise ValueError(
                f"{name} contain negative labels {sorted(set(masks[bad].tolist()))[:5]} other than "
                f"ignore_index={ignore_index}"
            )
    return masks


def _check_threshold(threshold: object) -> Threshold:
    """Return `threshold` unless it is neither 'auto', 'mean' nor a finite number."""
    if isinstance(threshold, str):
        if threshold not in ("auto", "mean"):
            raise ValueError(f"threshold must be 'auto', 'mean' or a number, got {threshold!r}")
    elif not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise TypeError(f"threshold must be 'auto', 'mean' or a number, got {type(threshold).__name__}")
    elif not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    return threshold


def _check_protocol(protocol: object) -> str:
    """Return `protocol` unless it is not one of PROTOCOLS."""
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def foreground_prediction(heatmaps: Tensor, threshold: Threshold = "auto") -> Tensor:
    """Return BoolTensor[B, H, W]: pixels whose heatmap value is above the per-image threshold."""
    return _above_threshold(check_image_batch(heatmaps, "heatmaps", channels=1), threshold)


def _above_threshold(heatmaps: Tensor, threshold: Threshold) -> Tensor:
    """`foreground_prediction` for already-checked heatmaps."""
    if isinstance(_check_threshold(threshold), str):
        cut = heatmaps.mean(dim=(1, 2, 3), keepdim=True)
        if threshold == "auto":
            signed = (heatmaps < 0).flatten(1).any(dim=1).view(-1, 1, 1, 1)
            cut = torch.where(signed, torch.zeros_like(cut), cut)
    else:
        cut = torch.tensor(float(threshold), dtype=heatmaps.dtype, device=heatmaps.device)
    return (heatmaps > cut)[:, 0]


def average_precision(scores: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """Return float64 Tensor[B]: per-row average precision (sklearn's definition), NaN for rows without positives.

    `scores` B×N, `labels` bool B×N, `valid` bool B×N (entries that are False are ignored).
    """
    if scores.dim() != 2 or labels.shape != scores.shape or labels.dtype != torch.bool:
        raise ValueError(
            f"expected scores B×N and bool labels of the same shape, got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)} {labels.dtype}"
        )
    if valid is not None and (valid.shape != scores.shape or valid.dtype != torch.bool):
        raise ValueError(f"valid must be a bool tensor of shape {tuple(scores.shape)}")
    order = torch.argsort(scores, dim=1, descending=True)
    sorted_scores = scores.gather(1, order)
    positive = labels if valid is None else labels & valid
    negative = ~labels if valid is None else ~labels & valid
    positive, negative = positive.gather(1, order), negative.gather(1, order)
    true_pos = positive.cumsum(dim=1)
    predicted = true_pos + negative.cumsum(dim=1)
    # Tied scores form one threshold: every entry takes the precision at the end of its tie group.
    n = scores.shape[1]
    group_end = torch.ones_like(positive)
    group_end[:, :-1] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    index = torch.arange(n, device=scores.device).expand_as(order)
    end_of_group = torch.where(group_end, index, n - 1).flip(1).cummin(dim=1).values.flip(1)
    precision = true_pos.gather(1, end_of_group).double() / predicted.gather(1, end_of_group).clamp(min=1)
    n_positive = positive.sum(dim=1)
    ap_sum = (precision * positive).sum(dim=1)
    return torch.where(n_positive > 0, ap_sum / n_positive.clamp(min=1), torch.nan)


def segmentation_counts(
    heatmaps: Tensor, masks: Tensor, threshold: Threshold = "auto", ignore_index: int | None = 255,
    protocol: str = "authors",
) -> dict[str, Tensor]:
    """Return per-image counts: correct, total (B), intersections, unions (B×2: background, foreground), ap (B, NaN = none)."""
    check_image_batch(heatmaps, "heatmaps", channels=1)
    masks = _check_masks(masks, heatmaps, "masks", ignore_index)
    _check_protocol(protocol)
    if ignore_index is None or masks.dtype == torch.bool:
        valid = torch.ones_like(masks, dtype=torch.bool)
    else:
        valid = masks != ignore_index
    truth = (masks > 0) & valid
    pred = _above_threshold(heatmaps, threshold)
    pred_bg, truth_bg, pred_fg = ~pred & valid, ~truth & valid, pred & valid

    def per_image(t: Tensor) -> Tensor:
        return t.flatten(1).sum(dim=1)

    batch = heatmaps.shape[0]
    flat_truth, flat_valid = truth.reshape(batch, -1), valid.reshape(batch, -1)
    if protocol == "authors":
        foreground = pred.reshape(batch, -1).to(torch.float64)
        ap = average_precision(torch.cat([1.0 - foreground, foreground], dim=1),
                               torch.cat([~flat_truth, flat_truth], dim=1), torch.cat([flat_valid, flat_valid], dim=1))
    else:
        ap = average_precision(heatmaps.reshape(batch, -1), flat_truth, flat_valid)
    return {
        "correct": per_image((pred == truth) & valid),
        "total": per_image(valid),
        "intersections": torch.stack([per_image(pred_bg & truth_bg), per_image(pred_fg & truth)], dim=1),
        "unions": torch.stack([per_image(pred_bg | truth_bg), per_image(pred_fg | truth)], dim=1),
        "ap": ap,
    }


def segmentation_statistics(
    heatmaps: Tensor, masks: Tensor, threshold: Threshold = "auto", ignore_index: int | None = 255,
    protocol: str = "authors",
) -> dict[str, Tensor]:
    """Return the batch's summable counts (correct, total, intersections, unions, ap_sum, ap_count, n_excluded)."""
    counts = segmentation_counts(heatmaps, masks, threshold, ignore_index, protocol)
    ap = counts["ap"]
    has_ap = ~torch.isnan(ap)
    return {
        "correct": counts["correct"].sum(),
        "total": counts["total"].sum(),
        "intersections": counts["intersections"].sum(dim=0),
        "unions": counts["unions"].sum(dim=0),
        "ap_sum": torch.where(has_ap, ap, 0.0).sum(),
        "ap_count": has_ap.sum(),
        "n_excluded": (~has_ap).sum(),
    }


def _scores_from_statistics(stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """Turn summed counts into percentages: pixel_accuracy, mIoU (and per class), mAP, plus counts."""
    if int(stats["total"]) == 0:
        raise ValueError("no valid pixels: every mask pixel equals ignore_index (or nothing was accumulated)")
    iou = stats["intersections"].double() / stats["unions"].clamp(min=1)
    present = stats["unions"] > 0
    ap_count = stats["ap_count"]
    return {
        "pixel_accuracy": 100.0 * stats["correct"].double() / stats["total"],
        "mIoU": 100.0 * (iou * present).sum() / present.sum(),
        "iou_background": 100.0 * iou[0] if bool(present[0]) else iou.new_tensor(torch.nan),
        "iou_foreground": 100.0 * iou[1] if bool(present[1]) else iou.new_tensor(torch.nan),
        "mAP": 100.0 * stats["ap_sum"].double() / ap_count if int(ap_count) > 0 else iou.new_tensor(torch.nan),
        "n_ap_images": ap_count.clone(),
        "n_excluded": stats["n_excluded"].clone(),
    }


def segmentation_scores(
    heatmaps: Tensor, masks: Tensor, threshold: Threshold = "auto", ignore_index: int | None = 255,
    protocol: str = "authors",
) -> dict[str, Tensor]:
    """Return pixel_accuracy, mIoU, iou_background, iou_foreground, mAP (all %), n_ap_images and n_excluded.

    heatmaps B×1×H×W (any scale), masks B×H×W or B×1×H×W (conventions in the module docstring);
    `protocol` is the mAP protocol ("authors" or "per_image_raw"). mAP is NaN when no image has an AP.
    Values are in the heatmaps' dtype.
    """
    scores = _scores_from_statistics(segmentation_statistics(heatmaps, masks, threshold, ignore_index, protocol))
    return {k: v if k.startswith("n_") else v.to(heatmaps.dtype) for k, v in scores.items()}


class SegmentationScores(Metric):
    """Accumulate `segmentation_scores` over batches and processes (sum-reduced states, DDP-safe).

    ``update(heatmaps, masks)``; ``compute()`` returns the same keys as `segmentation_scores`, in
    float64, with pixel accuracy and IoU at dataset level and mAP (of `protocol`) averaged over all
    accumulated images.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: Threshold = "auto", ignore_index: int | None = 255, protocol: str = "authors",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = _check_threshold(threshold)
        self.ignore_index = ignore_index
        self.protocol = _check_protocol(protocol)
        long = torch.long
        self.add_state("correct", default=torch.tensor(0, dtype=long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=long), dist_reduce_fx="sum")
        self.add_state("intersections", default=torch.zeros(2, dtype=long), dist_reduce_fx="sum")
        self.add_state("unions", default=torch.zeros(2, dtype=long), dist_reduce_fx="sum")
        self.add_state("ap_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ap_count", default=torch.tensor(0, dtype=long), dist_reduce_fx="sum")
        self.add_state("n_excluded", default=torch.tensor(0, dtype=long), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: Tensor) -> None:
        """Add one batch of heatmaps (B×1×H×W) and masks (B×H×W)."""
        stats = segmentation_statistics(heatmaps, masks, self.threshold, self.ignore_index, self.protocol)
        for name, value in stats.items():
            state = getattr(self, name)
            setattr(self, name, state + value.to(device=state.device, dtype=state.dtype))

    def compute(self) -> dict[str, Tensor]:
        """Return the accumulated scores (see `segmentation_scores`)."""
        return _scores_from_statistics({name: getattr(self, name) for name in (
            "correct", "total", "intersections", "unions", "ap_sum", "ap_count", "n_excluded")})


def _positive_iou(heatmaps: Tensor, masks: Tensor, threshold: Threshold) -> Tensor:
    """Return Tensor[B]: IoU (%) of each map's above-threshold region with the object mask (> 0)."""
    pred, obj = _above_threshold(heatmaps, threshold), masks > 0
    inter = (pred & obj).flatten(1).sum(dim=1)
    union = (pred | obj).flatten(1).sum(dim=1)
    return (100.0 * inter.double() / union).to(heatmaps.dtype)


def class_specificity(
    heat_a: Tensor, heat_b: Tensor, mask_a: Tensor, mask_b: Tensor, threshold: Threshold = "auto"
) -> dict[str, Tensor]:
    """Return B-vectors of IoU (%) between each class's map and its own / the other object's mask.

    For two-object scenes: `heat_a` explains the class of the object in `mask_a`, `heat_b` that of
    `mask_b` (masks B×H×W, > 0 = object). A map's region is its positive part (threshold as in
    `foreground_prediction`: > 0 for signed maps, > mean otherwise). Keys: iou_own_a, iou_other_a,
    iou_own_b, iou_other_b, and iou_own / iou_other = their means over the two maps. A class-specific
    method has iou_own > iou_other; a saliency-biased one gives about equal values.
    """
    check_image_batch(heat_a, "heat_a", channels=1)
    check_image_batch(heat_b, "heat_b", channels=1)
    if heat_a.shape != heat_b.shape:
        raise ValueError(f"heat_a shape {tuple(heat_a.shape)} does not match heat_b shape {tuple(heat_b.shape)}")
    if heat_a.device != heat_b.device:
        raise ValueError(f"heat_a is on {heat_a.device} but heat_b is on {heat_b.device}")
    masks = {}
    for name, mask in (("mask_a", mask_a), ("mask_b", mask_b)):
        mask = _check_masks(mask, heat_a, name, ignore_index=None)
        empty = ~(mask > 0).flatten(1).any(dim=1)
        if bool(empty.any()):
            raise ValueError(f"{name} has no object pixels in images {empty.nonzero().flatten().tolist()}")
        masks[name] = mask
    own_a = _positive_iou(heat_a, masks["mask_a"], threshold)
    other_a = _positive_iou(heat_a, masks["mask_b"], threshold)
    own_b = _positive_iou(heat_b, masks["mask_b"], threshold)
    other_b = _positive_iou(heat_b, masks["mask_a"], threshold)
    return {
        "iou_own_a": own_a,
        "iou_other_a": other_a,
        "iou_own_b": own_b,
        "iou_other_b": other_b,
        "iou_own": (own_a + own_b) / 2,
        "iou_other": (other_a + other_b) / 2,
    }
