"""Training data of the generators: conditions, point clouds and their preprocessing, batching."""

from showerformer.data.batching import (
    BucketBatchSampler,
    epoch_permutation,
    size_chunks,
    size_sorted,
    split_indices,
)
from showerformer.data.conditions import (
    CONDITION_KEYS,
    DEFAULT_PARTICLES,
    check_particles,
    condition_tensors,
    particle_indices,
    require_keys,
)
from showerformer.data.points import (
    VOXEL_FORMATS,
    PointCloudDataset,
    PointCollate,
    PointPreprocessing,
    Preprocessing,
    counts_per_layer,
    layers_from_counts,
    load_point_dataset,
    make_batch,
)

__all__ = [
    "CONDITION_KEYS",
    "DEFAULT_PARTICLES",
    "VOXEL_FORMATS",
    "BucketBatchSampler",
    "PointCloudDataset",
    "PointCollate",
    "PointPreprocessing",
    "Preprocessing",
    "check_particles",
    "condition_tensors",
    "counts_per_layer",
    "epoch_permutation",
    "layers_from_counts",
    "load_point_dataset",
    "make_batch",
    "particle_indices",
    "require_keys",
    "size_chunks",
    "size_sorted",
    "split_indices",
]
