"""One trainer for every model family: optimizer groups, schedules, AMP, EMA, checkpoints, DDP."""

from showerformer.training.checkpoint import load_checkpoint, save_checkpoint
from showerformer.training.config import RunConfig, TrainConfig, load_run_config
from showerformer.training.data import (
    DensifyCollate,
    EpochBatchSampler,
    SparseVoxelDataset,
    TensorDictDataset,
    densify_collate,
    epoch_permutation,
    split_indices,
)
from showerformer.training.ema import EMA
from showerformer.training.optim import (
    WarmupCosine,
    build_optimizer,
    clip_grad_norm,
    decay_mask,
    parameter_groups,
    warmup_cosine,
)
from showerformer.training.trainer import Trainer, TrainingError, TrainResult

__all__ = [
    "EMA",
    "DensifyCollate",
    "EpochBatchSampler",
    "RunConfig",
    "SparseVoxelDataset",
    "TensorDictDataset",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "WarmupCosine",
    "build_optimizer",
    "clip_grad_norm",
    "decay_mask",
    "densify_collate",
    "epoch_permutation",
    "load_checkpoint",
    "load_run_config",
    "parameter_groups",
    "save_checkpoint",
    "split_indices",
    "warmup_cosine",
]
