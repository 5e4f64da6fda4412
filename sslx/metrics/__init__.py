"""Quantitative tests of explanations: perturbation curves/AUC and segmentation scores."""
from __future__ import annotations

from sslx.metrics.perturbation import (
    DEFAULT_FRACTIONS,
    PerturbationAccuracy,
    perturbation_auc,
    perturbation_correct,
    perturbation_curve,
)
from sslx.metrics.segmentation import (
    SegmentationScores,
    average_precision,
    class_specificity,
    segmentation_scores,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "PerturbationAccuracy",
    "SegmentationScores",
    "average_precision",
    "class_specificity",
    "perturbation_auc",
    "perturbation_correct",
    "perturbation_curve",
    "segmentation_scores",
]
