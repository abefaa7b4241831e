"""Regression runs on sparse voxel files: train a regressor family, write predictions files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from showerformer._atomic import atomic_path
from showerformer.errors import InputError
from showerformer.training.data import SparseVoxelDataset, split_indices
from showerformer.training.engine import (
    RunConfig,
    Trainer,
    TrainResult,
    autocast_dtype,
    load_run_config,
)

__all__ = [
    "DATA_KEYS",
    "build_regressor",
    "predict_dataset",
    "predict_file",
    "regression_datasets",
    "train_regressor",
]

DATA_KEYS = ("target_key", "target_scale", "val_fraction", "in_memory")
"""Allowed keys of the ``data:`` section of a regressor config."""
_DEFAULT_VAL_FRACTION = 0.1


def regression_datasets(
    data: str | os.PathLike[str],
    *,
    val_data: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    target_key: str = "momentum",
    target_scale: float = 1e-3,
    seed: int = 0,
    in_memory: bool = True,
) -> tuple[SparseVoxelDataset, SparseVoxelDataset | None]:
    """Training and validation datasets from sparse voxel files.

    Arguments:
        data: the training file.
        val_data: a separate validation file (takes precedence over ``val_fraction``).
        val_fraction: hold out this seeded random share of ``data`` (0 or None without
            ``val_data``: no validation).
        target_key: the regressed per-event quantity.
        target_scale: its factor (MeV -> GeV: 1e-3).
        seed: seed of the split.
        in_memory: load all hits at opening.

    Returns:
        ``(train, val)``; ``val`` is None when there is no validation data.
    """
    full = SparseVoxelDataset(data, target_key, target_scale, in_memory=in_memory)
    if val_data is not None:
        val = SparseVoxelDataset(val_data, target_key, target_scale, in_memory=in_memory)
        if val.shape != full.shape:
            raise InputError(f"event shape {val.shape}", path=val.path, key="geometry",
                             expected=f"{full.shape} as in {full.path}")
        return full, val
    if not val_fraction:
        return full, None
    train_idx, val_idx = split_indices(len(full), float(val_fraction), seed)
    return full.subset(train_idx), full.subset(val_idx)


def build_regressor(run: RunConfig, train: SparseVoxelDataset,
                    target_stats: tuple[float, float] | None = None) -> nn.Module:
    """The model of a run config, its grid and target normalisation taken from the data.

    ``grid`` defaults to the data's grid; ``target_mean_gev`` / ``target_std_gev`` default to
    the training targets' mean and standard deviation (explicit config values win).

    Raises:
        InputError: an unknown family, a non-regressor family, a grid that does not match the
            data, or a bad config value, naming the config file and the key.
    """
    from showerformer.models import get_model_class

    try:
        cls = get_model_class(run.family)
    except InputError as exc:
        raise InputError(exc.what, path=run.path, key="model.family",
                         expected=exc.expected) from None
    if getattr(cls, "task", None) != "regression":
        raise InputError(f"family '{run.family}' is not a regressor", path=run.path,
                         key="model.family", expected="a family with task = 'regression'")
    config_class = cls.config_class  # type: ignore[attr-defined]
    overrides = dict(run.model)
    fields = {f.name for f in dataclasses.fields(config_class)}
    shape = train.shape
    if "grid" in fields:
        if len(shape) != 3 or len(set(shape)) != 1:
            raise InputError(f"event shape {shape}", path=train.path, key="geometry",
                             expected="a cubic grid (G, G, G)")
        grid = overrides.setdefault("grid", shape[0])
        if grid != shape[0]:
            raise InputError(f"grid={grid} but the data has {shape[0]}^3 cells", path=run.path,
                             key="model.grid", expected=f"{shape[0]} (or leave it unset)")
    if target_stats is None:
        targets = train.targets
        if targets is None or len(targets) == 0:
            raise InputError("no targets", path=train.path, key=train.target_key,
                             expected="labelled training events")
        mean, std = float(np.mean(targets)), float(np.std(targets))
        target_stats = (mean, std if std > 0 and math.isfinite(std) else 1.0)
    if "target_mean_gev" in fields:
        overrides.setdefault("target_mean_gev", target_stats[0])
        overrides.setdefault("target_std_gev", target_stats[1])
    try:
        config = config_class.from_dict(overrides)
    except InputError as exc:
        raise InputError(exc.what, path=run.path, key=f"model.{exc.key}",
                         expected=exc.expected) from None
    return cls(config)


def train_regressor(
    data: str | os.PathLike[str],
    config: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    val_data: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a regressor family on a sparse voxel file.

    Arguments:
        data: training file (sparse voxels, e.g. ``showerformer simulate sandwich64``).
        config: YAML path or mapping with ``model:``, ``train:`` and optional ``data:``
            (``target_key``, ``target_scale``, ``val_fraction``, ``in_memory``).
        out_dir: run folder (overrides ``train.out_dir``).
        val_data: separate validation file.
        val_fraction: held-out share of ``data`` when there is no ``val_data`` (default: the
            config's, else 0.1).
        resume: continue from the run folder's last checkpoint.
        max_steps: overrides ``train.max_steps`` (with ``epochs`` also set, the earlier stop
            wins).
        device: overrides ``train.device``.
        progress: show the progress bar.

    Returns:
        The :class:`~showerformer.training.engine.TrainResult`.
    """
    run = load_run_config(config, data_keys=DATA_KEYS)
    train_cfg = run.train.with_overrides(out_dir=out_dir, max_steps=max_steps, device=device)
    d = run.data
    target_key = str(d.get("target_key", "momentum"))
    target_scale = float(d.get("target_scale", 1e-3))
    if val_fraction is None and val_data is None:
        val_fraction = float(d.get("val_fraction", _DEFAULT_VAL_FRACTION))
    train_ds, val_ds = regression_datasets(
        data, val_data=val_data, val_fraction=val_fraction, target_key=target_key,
        target_scale=target_scale, seed=train_cfg.seed, in_memory=bool(d.get("in_memory", True)))
    torch.manual_seed(train_cfg.seed)  # reproducible initial weights
    model = build_regressor(run, train_ds)
    mcfg = model.config  # type: ignore[attr-defined]
    preprocessing = {
        "kind": "sparse-voxels",
        "input": "voxels",
        "input_unit": "MeV",
        "shape": list(train_ds.shape),
        "geometry": train_ds.geometry.to_dict(),
        "target_key": target_key,
        "target_scale": target_scale,
        "target_unit": "GeV" if target_scale == 1e-3 else f"MeV x {target_scale:g}",
        "target_mean_gev": getattr(mcfg, "target_mean_gev", None),
        "target_std_gev": getattr(mcfg, "target_std_gev", None),
    }
    metadata = {
        "preprocessing": preprocessing,
        "data": {"train": str(data), "val": None if val_data is None else str(val_data),
                 "val_fraction": None if val_data is not None else val_fraction,
                 "n_train": len(train_ds), "n_val": 0 if val_ds is None else len(val_ds)},
        "run_config": str(run.path) if run.path else None,
    }
    out = Path(train_cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"model": {"family": run.family, **mcfg.to_dict()},
                "train": train_cfg.to_dict(), "data": {**d, "target_key": target_key,
                                                       "target_scale": target_scale}}
    with atomic_path(out / "run_config.json") as tmp:
        tmp.write_text(json.dumps(resolved, indent=1) + "\n")
    trainer = Trainer(model, train_ds, val_ds, train_cfg, progress=progress, metadata=metadata)
    return trainer.fit(resume=resume)


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: SparseVoxelDataset, *, batch_size: int = 64,
                    device: str | torch.device = "cpu", precision: str = "fp32",
                    progress: bool = False) -> np.ndarray:
    """Predictions of a regressor (``model.predict(voxels)``) for every event, in order.

    Returns:
        ``(N,)`` float64 predictions in the target unit (GeV for the momentum regressor).
    """
    from torch.utils.data import DataLoader

    from showerformer.training.data import EpochBatchSampler

    dev = torch.device(device)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=False, drop_last=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate_fn)
    dt = autocast_dtype(precision, dev)
    predict = getattr(model, "predict", None) or model
    out = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("predicting", total=len(dataset))
    try:
        for batch in loader:
            voxels = batch["voxels"].to(dev)
            if dt is None:
                pred = predict(voxels)
            else:
                with torch.autocast(device_type=dev.type, dtype=dt):
                    pred = predict(voxels)
            out.append(pred.float().cpu().numpy().astype(np.float64))
            if bar is not None:
                bar.update(task, advance=len(voxels))
    finally:
        if bar is not None:
            bar.stop()
    return np.concatenate(out) if out else np.zeros(0)


def predict_file(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    device: str | None = "auto",
    which: str = "last",
    ema: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Predict every event of a sparse voxel file and write a predictions file, atomically.

    The file has the layout read by
    :func:`showerformer.evaluation.regression.evaluate_regression_file`: ``true`` (N,) and
    ``pred`` (N,) float64 in the target unit, attributes ``quantity`` (the target key, e.g.
    ``"momentum"``) and ``unit`` (``"GeV"``), plus ``checkpoint``, ``data``, ``family`` and
    ``weights`` (``"ema"`` or ``"model"``). Without the target in ``data`` only ``pred`` is
    written.

    Arguments:
        checkpoint: a checkpoint folder or run folder (see
            :func:`~showerformer.training.checkpoint.resolve_checkpoint`).
        data: the sparse voxel file.
        out: the predictions HDF5 file.
        batch_size: events per batch (default: the run's validation batch size).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        which: ``"last"`` or ``"best"`` checkpoint of a run folder.
        ema: use the moving-average weights when present.
        progress: show a progress bar.

    Returns:
        A summary: ``path``, ``events``, ``has_truth``, ``checkpoint``, ``weights`` and, with
        truth, ``mae`` and ``rmse``.
    """
    import h5py

    from showerformer.training.checkpoint import load_checkpoint
    from showerformer.training.distributed import resolve_device

    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, device=dev, ema=ema, which=which)
    prep = info.get("preprocessing") or {}
    train_cfg = info.get("train_config") or {}
    target_key = prep.get("target_key", "momentum")
    target_scale = float(prep.get("target_scale", 1e-3))
    try:
        ds = SparseVoxelDataset(data, target_key, target_scale)
    except InputError as exc:
        if exc.key != target_key:
            raise
        ds = SparseVoxelDataset(data, None, target_scale)
    expected = prep.get("shape")
    if expected is not None and list(ds.shape) != list(expected):
        raise InputError(f"event shape {ds.shape}", path=ds.path, key="geometry",
                         expected=f"{tuple(expected)} as the model was trained on")
    size = int(batch_size or train_cfg.get("val_batch_size") or train_cfg.get("batch_size") or 64)
    if size < 1:
        raise InputError(f"batch_size={size}", key="batch_size", expected="at least 1")
    pred = predict_dataset(model, ds, batch_size=size, device=dev,
                           precision=str(train_cfg.get("precision", "fp32")), progress=progress)
    true = ds.targets
    unit = prep.get("target_unit", "GeV")
    out = Path(out)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        if true is not None:
            f.create_dataset("true", data=np.asarray(true, dtype=np.float64))
        f.create_dataset("pred", data=pred)
        f.attrs["quantity"] = str(target_key)
        f.attrs["unit"] = str(unit)
        f.attrs["checkpoint"] = str(info["path"])
        f.attrs["data"] = str(data)
        f.attrs["family"] = str(info.get("family"))
        f.attrs["weights"] = str(info.get("weights"))
    summary: dict[str, Any] = {"path": str(out), "events": len(ds), "has_truth": true is not None,
                               "checkpoint": info["path"], "weights": info.get("weights"),
                               "quantity": target_key, "unit": unit}
    if true is not None and len(true):
        d = pred - true
        summary["mae"] = float(np.mean(np.abs(d)))
        summary["rmse"] = float(np.sqrt(np.mean(d * d)))
    return summary
