"""Evaluation of generated showers: CaloChallenge features, separation power, FPD/KPD, classifiers."""

from showerformer.evaluation.classifier import ClassifierConfig, ClassifierResult, run_classifier
from showerformer.evaluation.features import (
    DEFAULT_THRESHOLDS,
    FeatureAccumulator,
    FeatureSet,
    classifier_inputs,
    classifier_inputs_streaming,
    compute_features,
    compute_features_streaming,
    default_threshold,
    histogram_names,
    official_binning,
)
from showerformer.evaluation.inputs import ArrayRows, LowLevelRows, VoxelCache
from showerformer.evaluation.metrics import (
    DistanceEstimate,
    format_fpd_kpd,
    fpd,
    high_level_feature_matrix,
    kpd,
    ks_features,
    ks_statistic,
    separation_power,
    separation_power_features,
    wasserstein_1d,
    wasserstein_features,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ArrayRows",
    "ClassifierConfig",
    "ClassifierResult",
    "DistanceEstimate",
    "FeatureAccumulator",
    "FeatureSet",
    "LowLevelRows",
    "VoxelCache",
    "classifier_inputs",
    "classifier_inputs_streaming",
    "compute_features",
    "compute_features_streaming",
    "default_threshold",
    "format_fpd_kpd",
    "fpd",
    "high_level_feature_matrix",
    "histogram_names",
    "kpd",
    "ks_features",
    "ks_statistic",
    "official_binning",
    "run_classifier",
    "separation_power",
    "separation_power_features",
    "wasserstein_1d",
    "wasserstein_features",
]
