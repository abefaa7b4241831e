"""Tiny models and data shared by the training tests; also the worker of the DDP test.

Run as ``python tests/training_helpers.py ddp OUT_DIR`` with torchrun's environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) to train :class:`SmoothMLP` as one
process of a data-parallel run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from showerformer.nn.norms import LayerScale, RMSNorm, drop_path
from showerformer.training import TensorDictDataset, TrainConfig, Trainer

__all__ = ["NoisyNet", "ScalarModel", "SmoothMLP", "ddp_config", "regression_data", "run_smooth",
           "tiny_point_flow_config", "tiny_regressor_config", "write_cube_file",
           "write_empty_sparse_file"]


class NoisyNet(nn.Module):
    """A small network with every kind of parameter and two random layers (dropout, DropPath)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.norm = nn.LayerNorm(16)
        self.rms = RMSNorm(16)
        self.scale = LayerScale(16, 0.5)
        self.embed = nn.Embedding(3, 16)
        self.token = nn.Parameter(torch.zeros(16))
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.fc2 = nn.Linear(32, 1)
        self.drop = nn.Dropout(0.2)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        h = torch.relu(self.norm(self.fc1(batch["x"]))) + self.token + self.embed.weight[0]  # (B, 16)
        h = h + drop_path(self.scale(self.rms(self.drop(h))), 0.3, self.training)
        h = self.conv(h[:, None, :]).flatten(1)  # (B, 32)
        return ((self.fc2(h).squeeze(-1) - batch["y"]) ** 2).mean()


class SmoothMLP(nn.Module):
    """A deterministic MLP (no dropout) for comparing distributed and single-process runs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return ((self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()


class ScalarModel(nn.Module):
    """One scalar weight ``w``; the loss is ``mean((w - y)^2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return ((self.w - batch["y"]) ** 2).mean()


def regression_data(n_train: int = 48, n_val: int = 16,
                    seed: int = 0) -> tuple[TensorDictDataset, TensorDictDataset]:
    """``x`` (N, 4) Gaussian, ``y = sum(sin x)``: training and validation datasets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 4, generator=g)
    y = torch.sin(x).sum(1)
    return (TensorDictDataset({"x": x[:n_train], "y": y[:n_train]}),
            TensorDictDataset({"x": x[n_train:], "y": y[n_train:]}))


def ddp_config(out: str | Path) -> TrainConfig:
    """The settings of the distributed-versus-single-process comparison."""
    return TrainConfig(lr=1e-2, epochs=2, batch_size=8, warmup_steps=2, log_every=1,
                       checkpoint_every=None, out_dir=str(out), device="cpu", tensorboard=False)


def run_smooth(out: str | Path) -> None:
    """Train :class:`SmoothMLP` (64 training samples, 2 epochs) into ``out``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SmoothMLP()
    train, val = regression_data(64, 16)
    Trainer(model, train, val, ddp_config(out), progress=False).fit()


def tiny_regressor_config(**train: object) -> dict:
    """A run config of a ~7k-parameter ParticleCNNTransformer for 16^3 grids."""
    cfg = {"lr": 1e-3, "epochs": 2, "batch_size": 8, "checkpoint_every": None,
           "device": "cpu", "log_every": 1, "tensorboard": False}
    cfg.update(train)
    return {"model": {"family": "particle-cnn-transformer", "d_model": 12, "n_heads": 1,
                      "mlp_ratio": 2, "cnn_channels": [4, 4, 8, 12], "cnn_depths": [0, 0, 1, 1],
                      "head_hidden": [8]},
            "train": cfg, "data": {"val_fraction": 0.25}}


def write_cube_file(path: str | Path, n: int = 40, grid: int = 16, seed: int = 0) -> Path:
    """A sparse voxel file of ``n`` random events on a ``grid^3`` Cartesian grid, with
    ``momentum`` 1-20 GeV (in MeV) and energies that grow with it."""
    from showerformer.geometry import CartesianGeometry
    from showerformer.io.sparse import write_sparse
    from showerformer.showers import Conditions, VoxelShowers

    rng = np.random.default_rng(seed)
    geo = CartesianGeometry((grid, grid, grid), (10.0, 10.0, 20.0), name=f"cube{grid}")
    p = rng.uniform(1.0, 20.0, n) * 1e3  # MeV
    e = np.zeros((n, geo.n_cells), np.float32)
    for i in range(n):
        cells = rng.choice(geo.n_cells, 30, replace=False)
        e[i, cells] = rng.exponential(p[i] / 3000.0, 30)
    write_sparse(path, VoxelShowers(e, Conditions(p, extra={"momentum": p}), geo))
    return Path(path)


def write_empty_sparse_file(path: str | Path, grid: int = 16) -> Path:
    """A sparse voxel file with the layout of :func:`write_cube_file` but zero events (the
    writers refuse to write one, so its datasets are emptied afterwards)."""
    import h5py

    write_cube_file(path, n=1, grid=grid)
    with h5py.File(path, "r+") as f:
        for key in list(f):
            ds = f[key]
            shape, dtype, attrs = ds.shape, ds.dtype, dict(ds.attrs)
            del f[key]
            if key == "offsets":
                f.create_dataset(key, data=np.zeros(1, dtype))
            else:
                f.create_dataset(key, shape=(0, *shape[1:]), dtype=dtype)
            f[key].attrs.update(attrs)
    return Path(path)


def tiny_point_flow_config(**train: object) -> dict:
    """A run config of a small PanShower + PointCountFM (d_model 32, two blocks) for CPU tests."""
    cfg = {"lr": 1e-3, "max_steps": 2, "batch_size": 8, "checkpoint_every": None,
           "log_every": 1, "tensorboard": False, "device": "cpu", "precision": "fp32"}
    cfg.update(train)
    return {"model": {"family": "point-flow",
                      "shower": {"d_model": 32, "n_heads": 2, "n_blocks": 2},
                      "counts": {"d_model": 32, "n_blocks": 2}},
            "train": cfg, "data": {"val_fraction": 0.1, "pad_multiple": 4}}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "ddp":
        raise SystemExit("usage: python training_helpers.py ddp OUT_DIR")
    run_smooth(sys.argv[2])
