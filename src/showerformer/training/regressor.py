"""Regression runs on sparse voxel files: train a regressor family, write predictions files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from showerformer.errors import InputError
from showerformer.training.config import (
    check_count,
    check_device,
    check_setting,
    check_val_fraction,
    load_run_config,
)
from showerformer.training.data import SparseVoxelDataset, split_indices
from showerformer.training.trainer import TrainResult, autocast_dtype

__all__ = [
    "predict_dataset",
    "predict_file",
    "regression_datasets",
    "train_regressor",
    "write_analysis",
]

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

    Raises:
        InputError: a file without events, targets that are missing, NaN or infinite, a
            validation file of another geometry, or a ``val_fraction`` outside [0, 1), naming
            the file and the key.
    """
    check_val_fraction(val_fraction)
    full = _labelled(SparseVoxelDataset(data, target_key, target_scale, in_memory=in_memory))
    if val_data is not None:
        val = _labelled(SparseVoxelDataset(val_data, target_key, target_scale,
                                           in_memory=in_memory))
        if val.shape != full.shape:
            raise InputError(f"event shape {val.shape}", path=val.path, key="geometry",
                             expected=f"{full.shape} as in {full.path}")
        return full, val
    if not val_fraction:
        return full, None
    if len(full) < 2:
        raise InputError(f"{len(full)} event cannot be split into training and validation",
                         path=full.path, key="events",
                         expected="at least two events, or a separate --val-data file")
    train_idx, val_idx = split_indices(len(full), float(val_fraction), seed)
    return full.subset(train_idx), full.subset(val_idx)


def _labelled(ds: SparseVoxelDataset) -> SparseVoxelDataset:
    """``ds`` after checking that it has events and that every target is finite."""
    if len(ds) == 0:
        raise InputError("no events", path=ds.path, key="events",
                         expected="at least one event")
    targets = ds.targets
    if targets is not None and not np.isfinite(targets).all():
        bad = np.flatnonzero(~np.isfinite(targets))
        raise InputError(f"{len(bad)} of {len(targets)} targets are NaN or infinite (first at "
                         f"event {int(ds.indices[bad[0]])})", path=ds.path, key=ds.target_key,
                         expected="a finite value for every event")
    return ds


def train_regressor(
    data: str | os.PathLike[str],
    config: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Sequence[str] = (),
    val_data: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a regressor family on a sparse voxel file: :func:`showerformer.training.run.train`
    for configs whose family is a regressor.

    Arguments:
        data: training file (sparse voxels, e.g. ``showerformer simulate sandwich64``).
        config: YAML path or mapping with ``model:``, ``train:`` and optional ``data:``
            (``target_key``, ``target_scale``, ``val_fraction``, ``in_memory``).
        out_dir, overrides, val_data, val_fraction, resume, overwrite, max_steps, device,
            progress: as in :func:`~showerformer.training.run.train`.

    Returns:
        The :class:`~showerformer.training.trainer.TrainResult`.

    Raises:
        InputError: a family that is not a regressor (naming the config file and
            ``model.family``), and everything :func:`~showerformer.training.run.train` checks.
    """
    from showerformer.training.run import family_class, train

    run = load_run_config(config, overrides=overrides)
    if getattr(family_class(run), "task", None) != "regression":
        raise InputError(f"family '{run.family}' is not a regressor", path=run.path,
                         key="model.family", expected="a family with task = 'regression'")
    return train(config, data, out_dir, overrides=overrides, val_data=val_data,
                 val_fraction=val_fraction, resume=resume, overwrite=overwrite,
                 max_steps=max_steps, device=device, progress=progress)


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: SparseVoxelDataset, *, batch_size: int = 64,
                    device: str | torch.device = "cpu", precision: str = "fp32",
                    progress: bool = False, analysis: bool = False
                    ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Predictions of a regressor (``model.predict(voxels)``) for every event, in order.

    With ``analysis`` (a model with an ``analyse`` method, such as
    :class:`~showerformer.models.particle_cnn_transformer.ParticleCNNTransformer`) the per-event
    analysis arrays come too: ``(pred, {"cls": (N, d), "cross_scale_attention": (N, nB, 1 + S)})``
    in float32.

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
    extra: dict[str, list[np.ndarray]] = {}
    if analysis:
        analyse = getattr(model, "analyse", None)
        if analyse is None:
            raise InputError(f"a {type(model).__name__} model", key="analysis",
                             expected="a regressor with analysis outputs (particle-cnn-transformer)")
        predict = lambda v: _collect(analyse(v), extra)  # noqa: E731
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
    pred = np.concatenate(out) if out else np.zeros(0)
    if analysis:
        return pred, {k: np.concatenate(v) for k, v in extra.items()}
    return pred


def write_analysis(f: Any, arrays: Mapping[str, np.ndarray], *, method: str,
                   model: nn.Module | None = None) -> None:
    """Write per-event analysis arrays into the group ``analysis`` of an open predictions file.

    Layout: ``analysis/<name>`` float32 datasets with one row per event (``cls`` (N, d),
    ``cross_scale_attention`` (N, nB, 1 + S)); group attributes ``method`` (the row of ``pred``
    they belong to) and, for the attention, ``scales`` (one label per key: ``"query"`` then the
    resolution of every scale, e.g. ``"64^3"``).
    """
    g = f.create_group("analysis")
    g.attrs["method"] = method
    for name, value in arrays.items():
        g.create_dataset(name, data=np.asarray(value, dtype=np.float32))
    resolutions = getattr(getattr(model, "config", None), "scale_resolutions", None)
    if resolutions is not None:
        g.attrs["scales"] = ["query", *(f"{r}^3" for r in resolutions)]


def _collect(result: dict[str, Tensor], into: dict[str, list[np.ndarray]]) -> Tensor:
    """Keep the analysis arrays of one batch in ``into``; return the prediction."""
    for key, value in result.items():
        if key != "prediction":
            into.setdefault(key, []).append(value.float().cpu().numpy())
    return result["prediction"]


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
    analysis: bool = False,
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
        analysis: also write the model's analysis arrays into the group ``analysis`` (see
            :func:`write_analysis`), which ``evaluate-regression`` turns into plots.

    Returns:
        A summary: ``path``, ``events``, ``has_truth``, ``checkpoint``, ``weights`` and, with
        truth, ``mae`` and ``rmse``.

    Raises:
        InputError: a batch size below 1, a checkpoint that is not a regressor's or whose
            metadata is damaged, a data file without events, of another geometry or with NaN
            or infinite true values (naming the file and the key).
        OutputError: an output path that cannot be written, checked before any work.
    """

    from showerformer._paths import check_output_file
    from showerformer.training.checkpoint import (
        CHECKPOINT_JSON,
        load_checkpoint,
        read_checkpoint_info,
        resolve_checkpoint,
    )
    from showerformer.training.distributed import resolve_device

    if batch_size is not None:
        check_count(batch_size, "--batch-size", "a positive number of events per batch")
    check_device(device)
    out = check_output_file(out, option="--out")
    dev = resolve_device(device)
    folder = resolve_checkpoint(checkpoint, which)
    _check_regressor(read_checkpoint_info(folder))
    model, info = load_checkpoint(folder, device=dev, ema=ema, which=which)
    jpath = folder / CHECKPOINT_JSON
    prep = info.get("preprocessing") or {}
    train_cfg = info.get("train_config") or {}
    target_key = check_setting(prep.get("target_key", "momentum"), str,
                               "preprocessing.target_key", jpath)
    target_scale = check_setting(prep.get("target_scale", 1e-3), float,
                                 "preprocessing.target_scale", jpath)
    try:
        ds = SparseVoxelDataset(data, target_key, target_scale)
    except InputError as exc:
        if exc.key != target_key:
            raise
        ds = SparseVoxelDataset(data, None, target_scale)
    _labelled(ds)
    expected = prep.get("shape")
    if expected is not None and list(ds.shape) != list(expected):
        raise InputError(f"event shape {ds.shape}", path=ds.path, key="geometry",
                         expected=f"{tuple(expected)} as the model was trained on")
    size = batch_size or train_cfg.get("val_batch_size") or train_cfg.get("batch_size") or 64
    size = check_setting(size, int, "train_config.batch_size", jpath)
    if size < 1:
        raise InputError(f"batch_size={size}", path=jpath, key="train_config.batch_size",
                         expected="at least 1")
    if analysis and not hasattr(model, "analyse"):
        raise InputError(f"a '{info.get('family')}' checkpoint", path=folder, key="--analysis",
                         expected="a regressor with analysis outputs (particle-cnn-transformer)")
    result = predict_dataset(model, ds, batch_size=size, device=dev,
                             precision=str(train_cfg.get("precision", "fp32")),
                             progress=progress, analysis=analysis)
    pred, arrays = result if analysis else (result, None)
    true = ds.targets
    unit = prep.get("target_unit", "GeV")
    from showerformer.io._h5file import create_h5

    with create_h5(out) as (f, _):
        if true is not None:
            f.create_dataset("true", data=np.asarray(true, dtype=np.float64))
        f.create_dataset("pred", data=pred)
        f.attrs["quantity"] = str(target_key)
        f.attrs["unit"] = str(unit)
        f.attrs["checkpoint"] = str(info["path"])
        f.attrs["data"] = str(data)
        f.attrs["family"] = str(info.get("family"))
        f.attrs["weights"] = str(info.get("weights"))
        if arrays is not None:  # the analysis names the row of 'pred' it belongs to
            import h5py

            f.create_dataset("method", data=np.array([str(info.get("family"))],
                                                     dtype=h5py.string_dtype()))
            write_analysis(f, arrays, method=str(info.get("family")), model=model)
    summary: dict[str, Any] = {"path": str(out), "events": len(ds), "has_truth": true is not None,
                               "checkpoint": info["path"], "weights": info.get("weights"),
                               "quantity": target_key, "unit": unit}
    if true is not None and len(true):
        d = pred - true
        summary["mae"] = float(np.mean(np.abs(d)))
        summary["rmse"] = float(np.sqrt(np.mean(d * d)))
    return summary


def _check_regressor(info: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` (naming ``checkpoint.json`` and ``family``) unless the
    checkpoint holds a registered regressor family."""
    from showerformer.models import MODELS
    from showerformer.training.checkpoint import CHECKPOINT_JSON

    family = info.get("family")
    cls = MODELS.get(family) if isinstance(family, str) else None
    if cls is None or getattr(cls, "task", None) != "regression":
        hint = (" ('showerformer sample' generates showers with it)"
                if cls is not None and getattr(cls, "task", None) == "generation" else "")
        raise InputError(f"a '{family}' checkpoint{hint}",
                         path=Path(str(info.get("path", "."))) / CHECKPOINT_JSON, key="family",
                         expected="a regressor checkpoint (showerformer train regressor), e.g. "
                                  + ", ".join(sorted(n for n, c in MODELS.items()
                                                     if getattr(c, "task", None) == "regression")))
