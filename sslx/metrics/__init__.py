"""Quantitative tests of explanations: perturbation curves/AUC, segmentation scores, bootstrap intervals."""
from __future__ import annotations

from sslx.metrics.bootstrap import (
    bootstrap_interval,
    mean_interval,
    mean_ratio_interval,
    ratio_interval,
)
from sslx.metrics.perturbation import (
    DEFAULT_FRACTIONS,
    PerturbationAccuracy,
    perturbation_auc,
    perturbation_correct,
    perturbation_curve,
)
from sslx.metrics.segmentation import (
    PROTOCOLS,
    SegmentationScores,
    average_precision,
    class_specificity,
    segmentation_counts,
    segmentation_scores,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "PROTOCOLS",
    "PerturbationAccuracy",
    "SegmentationScores",
    "average_precision",
    "bootstrap_interval",
    "class_specificity",
    "mean_interval",
    "mean_ratio_interval",
    "perturbation_auc",
    "perturbation_correct",
    "perturbation_curve",
    "ratio_interval",
    "segmentation_counts",
    "segmentation_scores",
]
