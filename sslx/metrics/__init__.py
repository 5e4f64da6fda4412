"""Quantitative tests of explanations: perturbation, ROAD, insertion/deletion, localisation, randomisation, label-free."""
from __future__ import annotations

from sslx.metrics.bootstrap import (
    bootstrap_interval,
    mean_interval,
    mean_ratio_interval,
    ratio_interval,
)
from sslx.metrics.imputation import noisy_linear_impute
from sslx.metrics.insertion_deletion import blur, curve_area, insertion_deletion_curve
from sslx.metrics.label_free import embedding_cosine_drop, knn_agreement, knn_labels
from sslx.metrics.localisation import pointing_game, relevance_mass, relevance_rank_accuracy
from sslx.metrics.perturbation import (
    DEFAULT_FRACTIONS,
    PerturbationAccuracy,
    perturbation_auc,
    perturbation_correct,
    perturbation_curve,
)
from sslx.metrics.randomisation import parameter_randomisation, randomisable_layers, randomise
from sslx.metrics.removal import removal_masks
from sslx.metrics.road import RoadScores, road_scores
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
    "RoadScores",
    "blur",
    "curve_area",
    "embedding_cosine_drop",
    "insertion_deletion_curve",
    "knn_agreement",
    "knn_labels",
    "noisy_linear_impute",
    "parameter_randomisation",
    "pointing_game",
    "randomisable_layers",
    "randomise",
    "relevance_mass",
    "relevance_rank_accuracy",
    "removal_masks",
    "road_scores",
    "segmentation_counts",
    "segmentation_scores",
]
from sslx.metrics.similarity import average_ranks, spearman, ssim  # noqa: E402

__all__ += ["average_ranks", "spearman", "ssim"]
