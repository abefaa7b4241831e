"""Point-flow runs: train PanShower + PointCountFM on shower files, sample showers from checkpoints."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from showerformer.data.batching import BucketBatchSampler, size_sorted, split_indices
from showerformer.data.points import (
    VOXEL_FORMATS,
    PointCloudDataset,
    PointCollate,
    PointPreprocessing,
    load_point_dataset,
)
from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.showers import Conditions, PointShowers, VoxelShowers
from showerformer.training.config import (
    RunConfig,
    check_count,
    check_device,
    check_enough_samples,
    check_max_steps,
    check_setting,
    check_val_fraction,
    load_run_config,
)
from showerformer.training.trainer import Trainer, TrainResult, check_run_folder

__all__ = [
    "DATA_KEYS",
    "OUTPUT_FORMATS",
    "build_point_flow",
    "check_layers",
    "check_particles_known",
    "check_sample_options",
    "check_spectrum",
    "count_limits",
    "generate_showers",
    "load_point_flow",
    "parse_energy",
    "parse_particles",
    "parse_phi",
    "parse_theta",
    "point_flow_datasets",
    "sample_conditions",
    "sample_point_flow",
    "train_point_flow",
]

DATA_KEYS = ("val_fraction", "max_showers", "threshold", "pad_multiple", "bucket_batches",
             "per_layer")
"""Allowed keys of the ``data:`` section of a point-flow config."""

OUTPUT_FORMATS = ("auto", "calochallenge", "pointcloud")
"""``--format`` of ``showerformer sample``: auto = voxels when the model was trained on voxels."""

_DEFAULT_VAL_FRACTION = 0.05


def point_flow_datasets(
    data: str | os.PathLike[str],
    *,
    val_data: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    max_showers: int | None = None,
    threshold: float | None = None,
) -> tuple[PointCloudDataset, PointCloudDataset | None]:
    """Training and validation point clouds from shower files (voxels are dequantized).

    Arguments:
        data: training file, any format :func:`~showerformer.io.detect_format` knows.
        val_data: a separate validation file (takes precedence over ``val_fraction``).
        val_fraction: hold out this seeded share of ``data`` (0 or None: no validation).
        seed: seed of the split and the dequantization.
        max_showers: read at most this many showers from each file.
        threshold: voxel energy (MeV) that makes a point (default: the geometry's).

    Returns:
        ``(train, val)``; the validation showers are sorted by size (little padding).

    Raises:
        InputError: a file without showers, a validation file of another geometry, a
            ``val_fraction`` outside [0, 1) or a ``max_showers`` below 1.
    """
    check_val_fraction(val_fraction)
    _check_max_showers(max_showers)
    full = _with_showers(load_point_dataset(data, seed=seed, max_showers=max_showers,
                                            threshold=threshold), data)
    if val_data is not None:
        val = _with_showers(load_point_dataset(val_data, seed=seed + 1, max_showers=max_showers,
                                               threshold=threshold), val_data)
        if (full.geometry is not None and val.geometry is not None
                and not val.geometry.same_cells(full.geometry)):
            raise InputError(f"geometry {val.geometry.name}", path=val_data, key="geometry",
                             expected=f"{full.geometry.name} as in {data}")
        return full, size_sorted(val)
    if not val_fraction:
        return full, None
    if len(full) < 2:
        raise InputError("1 shower cannot be split into training and validation", path=data,
                         key="showers", expected="at least two showers, or a separate --val-data")
    train_idx, val_idx = split_indices(len(full), float(val_fraction), seed)
    return full.subset(train_idx), size_sorted(full.subset(val_idx))


def _check_max_showers(max_showers: int | None) -> None:
    if max_showers is not None:
        check_count(max_showers, "--max-showers", "a positive number of showers")


def _with_showers(ds: PointCloudDataset, path: str | os.PathLike[str]) -> PointCloudDataset:
    if len(ds) == 0:
        raise InputError("no showers", path=path, key="showers", expected="at least one shower")
    return ds


def check_layers(ds: PointCloudDataset, n_layers: int) -> None:
    """Raise :class:`InputError` naming the data file unless every point's layer index is a
    whole number in ``0..n_layers - 1``."""
    layer = ds.points[:, 4].astype(np.float64)  # (M,)
    bad = ~np.isfinite(layer) | (layer < 0) | (layer > n_layers - 1) | (np.rint(layer) != layer)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"geometry {ds.geometry.name}" if ds.geometry is not None else "the model"
        raise InputError(f"layer index {layer[i]:g} ({int(bad.sum())} point(s) outside the "
                         "layers)", path=ds.path, key="layer",
                         expected=f"whole numbers 0..{n_layers - 1}, the layers of {where}")


def _n_layers(ds: PointCloudDataset) -> int:
    if ds.geometry is not None:
        return int(ds.geometry.n_layers)
    return int(np.rint(ds.points[:, 4]).max()) + 1 if len(ds.points) else 1


def count_limits(ds: PointCloudDataset, n_layers: int) -> np.ndarray:
    """Largest number of points per layer a generated shower may have, (L,) int64.

    For showers made from voxels: the cells of the layer (one point per cell). Otherwise twice
    the largest count seen in the training showers (at least 1).
    """
    geo = ds.geometry
    if ds.source_format in VOXEL_FORMATS and geo is not None and geo.n_layers == n_layers:
        return np.diff(np.asarray(geo.layer_offsets, dtype=np.int64))
    return np.maximum(2 * ds.layer_counts(n_layers).max(axis=0, initial=0), 1).astype(np.int64)


def build_point_flow(run: RunConfig, train: PointCloudDataset) -> torch.nn.Module:
    """The model of a run config for the training data: ``n_calo_layers`` from the geometry,
    ``particles`` default the model's four; the count model's statistics fitted on the data.

    Raises:
        InputError: a family other than ``point-flow``, a layer count that does not match the
            data or a bad config value (naming the config file), a particle the model does not
            know or a layer index outside the layers (naming the data file).
    """
    from showerformer.models import get_model_class

    try:
        cls = get_model_class(run.family)
    except InputError as exc:
        raise InputError(exc.what, path=run.path, key="model.family",
                         expected=exc.expected) from None
    if run.family != "point-flow":
        raise InputError(f"family '{run.family}'", path=run.path, key="model.family",
                         expected="'point-flow' (PanShower with PointCountFM)")
    n_layers = _n_layers(train)
    try:
        overrides = cls.config_class.translate_legacy_keys(run.model)  # type: ignore[attr-defined]
        layers = overrides.setdefault("n_calo_layers", n_layers)
        if layers != n_layers:
            raise InputError(f"n_calo_layers={layers} but the data has {n_layers} layers",
                             key="n_calo_layers", expected=f"{n_layers} (or leave it unset)")
        config = cls.config_class.from_dict(overrides)  # type: ignore[attr-defined]
    except InputError as exc:
        raise InputError(exc.what, path=run.path, key=f"model.{exc.key}",
                         expected=exc.expected) from None
    check_particles_known(train, config.particles, run.path)
    check_layers(train, config.n_calo_layers)
    model = cls(config)
    model.fit_normalization(train.layer_counts(config.n_calo_layers))  # type: ignore[operator]
    return model


def check_particles_known(ds: PointCloudDataset, particles: Sequence[int],
                          config_path: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`InputError` naming the data file and ``pdg`` when a shower's particle is
    not one of the model's ``particles``."""
    from showerformer.data.conditions import particle_indices

    try:
        particle_indices(ds.conditions.pdg, tuple(particles))
    except InputError as exc:
        where = f" of {config_path}" if config_path else ""
        raise InputError(exc.what, path=ds.path, key="pdg",
                         expected=f"{exc.expected} (model.particles{where})") from None


def _condition_summary(c: Conditions) -> dict[str, Any]:
    return {"pdg": sorted(int(p) for p in np.unique(c.pdg)),
            "energy_mev": [float(c.energy.min()), float(c.energy.max())],
            "theta": [float(c.theta.min()), float(c.theta.max())],
            "phi": [float(c.phi.min()), float(c.phi.max())]}


def train_point_flow(
    data: str | os.PathLike[str],
    config: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    val_data: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    max_showers: int | None = None,
    layer_window: int | None = None,
    device: str | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train the point-cloud generator (PanShower + PointCountFM) on a shower file.

    Arguments:
        data: training file: point clouds, or voxels (CaloChallenge, Par04, sparse) that are
            dequantized to one point per cell.
        config: YAML path or mapping with ``model:`` (``family: point-flow`` and
            :class:`~showerformer.models.point_flow.PointFlowConfig` keys), ``train:`` and an
            optional ``data:`` section (``val_fraction``, ``max_showers``, ``threshold``,
            ``pad_multiple``, ``bucket_batches``, ``per_layer``).
        out_dir: run folder (overrides ``train.out_dir``).
        val_data: separate validation file.
        val_fraction: held-out share of ``data`` without ``val_data`` (default: the config's,
            else 0.05).
        resume: continue from the run folder's last checkpoint.
        overwrite: replace the checkpoints of an earlier run in the run folder (without it
            a fresh run into such a folder is refused).
        max_steps: overrides ``train.max_steps``.
        max_showers: read at most this many showers (overrides ``data.max_showers``).
        layer_window: overrides the config's ``model.shower.layer_window``: attention only
            between points at most this many layers apart; -1: no limit (None: as configured).
        device: overrides ``train.device``.
        progress: show the progress bar.
        stop_at_step: interrupt (with a checkpoint) after this many steps, as a preempted job.

    Returns:
        The :class:`~showerformer.training.trainer.TrainResult`; the checkpoints hold the
        preprocessing, the geometry, the training conditions and per-layer count limits.

    Raises:
        InputError: a bad option (naming it), config value (naming the config file and key) or
            data file (naming the file and key), all before training starts; damaged or
            incompatible checkpoints with ``resume``.
        OutputError: an unusable run folder, or a fresh run into a folder with checkpoints.
    """
    check_val_fraction(val_fraction)
    check_max_steps(max_steps)
    _check_max_showers(max_showers)
    if layer_window is not None:
        layer_window = check_count(layer_window, "--layer-window", "a number of layers >= 0, "
                                   "or -1 (none) for no limit", minimum=-1)
    run = load_run_config(config, data_keys=DATA_KEYS)
    if layer_window is not None:
        run = _with_layer_window(run, None if layer_window < 0 else layer_window)
    train_cfg = run.train.with_overrides(out_dir=out_dir, max_steps=max_steps, device=device)
    d = _data_settings(run)
    if device is not None:
        check_device(device)
    else:
        check_device(train_cfg.device, "train.device", run.path)
    check_run_folder(train_cfg.out_dir, resume, overwrite=overwrite)
    if val_fraction is None and val_data is None:
        val_fraction = d["val_fraction"]
    if max_showers is None:
        max_showers = d["max_showers"]
    train_ds, val_ds = point_flow_datasets(data, val_data=val_data, val_fraction=val_fraction,
                                           seed=train_cfg.seed, max_showers=max_showers,
                                           threshold=d["threshold"])
    check_enough_samples(len(train_ds), train_cfg, data, run.path)
    torch.manual_seed(train_cfg.seed)  # reproducible initial weights
    model = build_point_flow(run, train_ds)
    mcfg = model.config  # type: ignore[attr-defined]
    if val_ds is not None:
        check_particles_known(val_ds, mcfg.particles, run.path)
        check_layers(val_ds, mcfg.n_calo_layers)
    try:
        pre = PointPreprocessing.fit_points(train_ds.points, train_ds.conditions.energy,
                                            geometry=train_ds.geometry,
                                            n_layers=mcfg.n_calo_layers, per_layer=d["per_layer"])
    except InputError as exc:
        raise InputError(exc.what, path=data, key=exc.key, expected=exc.expected) from None
    collate = PointCollate(pre, mcfg.particles, d["pad_multiple"])
    metadata = {
        "preprocessing": pre.to_dict(),
        "geometry": None if train_ds.geometry is None else train_ds.geometry.to_dict(),
        "source_format": train_ds.source_format,
        "conditions": _condition_summary(train_ds.conditions),
        "count_limits": count_limits(train_ds, mcfg.n_calo_layers).tolist(),
        "data": {"train": str(data), "val": None if val_data is None else str(val_data),
                 "val_fraction": None if val_data is not None else val_fraction,
                 "n_train": len(train_ds), "n_val": 0 if val_ds is None else len(val_ds),
                 "mean_points": float(train_ds.sizes.mean())},
        "run_config": str(run.path) if run.path else None,
    }
    sampler = BucketBatchSampler.factory(train_ds.sizes, d["bucket_batches"])
    trainer = Trainer(model, train_ds, val_ds, train_cfg, collate, progress=progress,
                      metadata=metadata, batch_sampler=sampler)
    return trainer.fit(resume=resume, stop_at_step=stop_at_step, overwrite=overwrite)


def _with_layer_window(run: RunConfig, window: int | None) -> RunConfig:
    """``run`` with ``model.shower.layer_window`` replaced (the config file stays named)."""
    model = dict(run.model)
    shower = model.get("shower") or {}
    if not isinstance(shower, Mapping):
        raise InputError(f"a {type(shower).__name__}", path=run.path, key="model.shower",
                         expected="a mapping of PanShower config keys")
    model["shower"] = {**shower, "layer_window": window}
    return dataclasses.replace(run, model=model)


def _data_settings(run: RunConfig) -> dict[str, Any]:
    """The ``data:`` section of a point-flow config with defaults, checked (errors name the
    config file and ``data.<key>``)."""
    d, path = run.data, run.path
    out: dict[str, Any] = {
        "val_fraction": check_setting(d.get("val_fraction", _DEFAULT_VAL_FRACTION), float,
                                      "data.val_fraction", path),
        "max_showers": check_setting(d.get("max_showers"), int | None, "data.max_showers", path),
        "threshold": check_setting(d.get("threshold"), float | None, "data.threshold", path),
        "pad_multiple": check_setting(d.get("pad_multiple", 1), int, "data.pad_multiple", path),
        "bucket_batches": check_setting(d.get("bucket_batches", 32), int,
                                        "data.bucket_batches", path),
        "per_layer": check_setting(d.get("per_layer", True), bool, "data.per_layer", path),
    }
    check_val_fraction(out["val_fraction"], path=path, key="data.val_fraction")
    for key in ("max_showers", "pad_multiple", "bucket_batches"):
        if out[key] is not None and out[key] < 1:
            raise InputError(f"{out[key]!r}", path=path, key=f"data.{key}",
                             expected="a positive integer")
    if out["threshold"] is not None and out["threshold"] < 0:
        raise InputError(f"{out['threshold']!r}", path=path, key="data.threshold",
                         expected="a non-negative cell energy in MeV, or null for the "
                                  "geometry's readout threshold")
    return out


def load_point_flow(checkpoint: str | os.PathLike[str], *, device: str = "auto",
                    ema: bool = True, which: str = "last") -> tuple[Any, Any, dict[str, Any]]:
    """A trained point-flow model with its preprocessing.

    Arguments:
        checkpoint: checkpoint folder or run folder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        ema: use the moving-average weights when saved.
        which: ``"last"`` or ``"best"`` for a run folder.

    Returns:
        ``(model in eval mode, PointPreprocessing, checkpoint info)``.

    Raises:
        InputError: another family's checkpoint (checked before the model is built), or
            damaged metadata, naming ``checkpoint.json`` and the key.
    """
    from showerformer.training.checkpoint import (
        CHECKPOINT_JSON,
        load_checkpoint,
        read_checkpoint_info,
        resolve_checkpoint,
    )
    from showerformer.training.distributed import resolve_device

    folder = resolve_checkpoint(checkpoint, which)
    jpath = folder / CHECKPOINT_JSON
    family = read_checkpoint_info(folder).get("family")
    if family != "point-flow":
        hint = (" ('showerformer predict' applies a regressor)"
                if family == "particle-cnn-transformer" else "")
        raise InputError(f"a '{family}' checkpoint{hint}", path=jpath, key="family",
                         expected="a point-flow checkpoint (showerformer train point-flow)")
    model, info = load_checkpoint(folder, device=resolve_device(device), ema=ema, which=which)
    raw = info.get("preprocessing")
    if not isinstance(raw, Mapping):
        raise InputError("no preprocessing stored", path=jpath, key="preprocessing",
                         expected="the dict written by train_point_flow")
    try:
        pre = PointPreprocessing.from_dict(raw)
    except InputError as exc:
        raise InputError(exc.what, path=jpath, key=f"preprocessing.{exc.key}",
                         expected=exc.expected) from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"unreadable preprocessing ({type(exc).__name__})", path=jpath,
                         key="preprocessing", expected="the dict written by train_point_flow"
                         ) from None
    _check_generator_metadata(info, model.config.n_calo_layers, jpath)
    return model, pre, info


def _check_generator_metadata(info: Mapping[str, Any], n_layers: int, jpath: Path) -> None:
    """Raise :class:`InputError` naming ``jpath`` and the key unless the metadata that
    sampling reads (training conditions, geometry, count limits) is well formed."""
    meta = info.get("metadata") or {}
    cond = meta.get("conditions") or {}
    if not isinstance(cond, Mapping):
        raise InputError(f"a {type(cond).__name__}", path=jpath, key="metadata.conditions",
                         expected="a JSON object")
    pdg = cond.get("pdg")
    if pdg is not None and not (isinstance(pdg, list) and pdg and all(
            isinstance(p, int) and not isinstance(p, bool) for p in pdg)):
        raise InputError(f"{pdg!r}", path=jpath, key="metadata.conditions.pdg",
                         expected="a list of PDG ids")
    for key in ("energy_mev", "theta", "phi"):
        v = cond.get(key)
        if v is None:
            continue
        ok = (isinstance(v, list) and len(v) == 2
              and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
              and all(math.isfinite(x) for x in v) and v[0] <= v[1])
        if ok and key == "energy_mev":
            ok = v[0] > 0
        if not ok:
            raise InputError(f"{v!r}", path=jpath, key=f"metadata.conditions.{key}",
                             expected="[low, high], finite" + (" and > 0" if key == "energy_mev"
                                                               else ""))
    limits = meta.get("count_limits")
    if limits is not None and not (isinstance(limits, list) and len(limits) == n_layers and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in limits)):
        raise InputError("not one count per layer", path=jpath, key="metadata.count_limits",
                         expected=f"a list of {n_layers} non-negative integers")
    geo = meta.get("geometry")
    if geo is not None:
        try:
            Geometry.from_dict(geo)
        except InputError as exc:
            raise InputError(exc.what, path=jpath, key=f"metadata.geometry.{exc.key}",
                             expected=exc.expected) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"unreadable geometry ({type(exc).__name__}: {exc})"[:200],
                             path=jpath, key="metadata.geometry",
                             expected="the geometry dict written by train_point_flow") from None


_RANGE_DASH = re.compile(r"^\s*([0-9.eE+]+)\s*-\s*([0-9.eE+]+)\s*$")
_ENERGY_MARGIN = 1.1
"""Requested energies may exceed the training range by this factor (10 %) at either end."""


def _rekey(exc: InputError, key: str) -> InputError:
    return InputError(exc.what, key=key, expected=exc.expected)


def parse_energy(text: str, spectrum: str | None = None) -> Any:
    """``"50"``, ``"1-1000"`` / ``"1:1000"`` (log-uniform by default) or ``"64,128,256"`` GeV
    -> a :class:`~showerformer.incident.Spectrum` in MeV.

    Raises:
        InputError: text that does not parse, non-positive energies or an unknown spectrum,
            naming ``--energy`` or ``--spectrum``.
    """
    from showerformer.incident import Spectrum

    m = _RANGE_DASH.match(str(text))
    if m and not str(text).strip().lower().endswith(("e-", "e+")):
        text = f"{m.group(1)}:{m.group(2)}"
    check_spectrum(spectrum)
    try:
        return Spectrum.parse(text, spectrum)
    except InputError as exc:
        raise _rekey(exc, "--spectrum" if exc.key == "spectrum" else "--energy") from None


def check_spectrum(spectrum: str | None) -> None:
    """Raise :class:`InputError` naming ``--spectrum`` unless None or a known kind."""
    from showerformer.incident import SPECTRUM_KINDS

    if spectrum is not None and spectrum not in SPECTRUM_KINDS:
        raise InputError(f"unknown spectrum {spectrum!r}", key="--spectrum",
                         expected=" or ".join(SPECTRUM_KINDS))


def _spectrum_of_training_range(spectrum: str | None) -> str:
    """The spectrum kind over the training range when ``--energy`` is not given: uniform or
    log-uniform (the default); fixed and discrete need ``--energy``."""
    check_spectrum(spectrum)
    if spectrum in ("fixed", "discrete"):
        raise InputError(f"--spectrum {spectrum} without --energy", key="--spectrum",
                         expected="uniform or log-uniform over the training range, or "
                                  "--energy with the values")
    return spectrum or "log-uniform"


def parse_particles(particle: str | Sequence[str | int]) -> list[int]:
    """PDG ids of ``"e-,gamma"``, ``"211"`` or a list of names / ids.

    Raises:
        InputError: an empty list or a particle the simulator does not know, naming
            ``--particle``.
    """
    from showerformer.incident import get_particle

    names = particle.split(",") if isinstance(particle, str) else list(particle)
    pdgs = []
    for name in names:
        name = str(name).strip()
        if not name:
            raise InputError(f"empty particle name in {particle!r}", key="--particle",
                             expected="comma-separated names or PDG ids, e.g. 'e-,gamma'")
        try:
            pdgs.append(get_particle(int(name) if name.lstrip("-").isdigit() else name).pdg)
        except InputError as exc:
            raise _rekey(exc, "--particle") from None
    return pdgs


def parse_theta(text: str | None, default: tuple[float, float]) -> tuple[float, float]:
    """A polar angle or range in degrees (``"90"``, ``"70:90"``) -> radians, within the limits
    that ``showerformer simulate`` accepts (4-176 deg).

    Raises:
        InputError: naming ``--theta``.
    """
    from showerformer.incident import parse_theta as parse_polar_angle

    return parse_polar_angle(text, default, key="--theta")


def parse_phi(text: str | None, default: tuple[float, float]) -> tuple[float, float]:
    """An azimuth or range in degrees -> radians, within -360..360 deg.

    Raises:
        InputError: naming ``--phi``.
    """
    from showerformer.incident import parse_angle

    try:
        lo, hi = parse_angle(text, default)
    except InputError as exc:
        raise _rekey(exc, "--phi") from None
    if text is not None and not (-2 * math.pi <= lo and hi <= 2 * math.pi):
        raise InputError(f"phi {text!r} deg", key="--phi", expected="angles within -360..360 deg")
    return lo, hi


def check_sample_options(*, n: int, particle: str | None = None, energy: str | None = None,
                         spectrum: str | None = None, theta: str | None = None,
                         phi: str | None = None, format: str = "auto", seed: int = 0,
                         steps: int | None = None, sampler: str | None = None,
                         batch_size: int = 256) -> None:
    """Check the options of ``showerformer sample`` that need no checkpoint, before any work.

    Raises:
        InputError: naming the option (``--n``, ``--steps``, ``--sampler``, ...).
    """
    from showerformer.samplers import get_sampler

    check_count(n, "--n", "at least one shower")
    check_count(batch_size, "--batch-size", "a positive number of showers per network call")
    if steps is not None:
        check_count(steps, "--steps", "at least one ODE step")
    check_count(seed, "--seed", "an integer >= 0", minimum=0)
    if sampler is not None:
        try:
            get_sampler(sampler)
        except InputError as exc:
            raise _rekey(exc, "--sampler") from None
    if format not in OUTPUT_FORMATS:
        raise InputError(f"format {format!r}", key="--format",
                         expected=" or ".join(OUTPUT_FORMATS))
    check_spectrum(spectrum)
    if energy is None:
        _spectrum_of_training_range(spectrum)
    else:
        parse_energy(energy, spectrum)
    if particle is not None:
        parse_particles(particle)
    parse_theta(theta, (math.pi / 2, math.pi / 2))
    parse_phi(phi, (0.0, 0.0))


def sample_conditions(
    info: Mapping[str, Any],
    n: int,
    *,
    particle: str | Sequence[str] | None = None,
    energy: str | None = None,
    spectrum: str | None = None,
    theta: str | None = None,
    phi: str | None = None,
    seed: int = 0,
) -> Conditions:
    """Incident particles to generate, defaulting to what the model was trained on.

    Arguments:
        info: the checkpoint info (its ``metadata.conditions`` give the defaults).
        n: number of showers.
        particle: names or PDG ids (``"e-"``, ``"e-,gamma"``, ``"211"``); default: the
            training particles; several are drawn with equal probability.
        energy: GeV specification (see :func:`parse_energy`), within the training range (10 %
            margin); default: the training range.
        spectrum: ``fixed``, ``uniform``, ``log-uniform`` or ``discrete`` (default from the
            form of ``energy``; without ``energy`` uniform or log-uniform over the training
            range, log-uniform by default).
        theta, phi: degrees, ``"90"`` or ``"70:90"`` (uniform); default: the training range.
        seed: seed of the draws.

    Returns:
        :class:`Conditions` of ``n`` showers.

    Raises:
        InputError: a bad value or one the model was not trained for, naming the option
            (``--particle``, ``--energy``, ...).
    """
    from showerformer.incident import Spectrum

    n = check_count(n, "--n", "at least one shower")
    seed = check_count(seed, "--seed", "an integer >= 0", minimum=0)
    meta = dict(info.get("metadata") or {})
    trained = dict(meta.get("conditions") or {})
    model_particles = [int(p) for p in (info.get("model_config") or {}).get("particles", [])]
    known = [int(p) for p in trained.get("pdg") or model_particles]
    pdgs = known if particle is None else parse_particles(particle)
    unknown = [p for p in pdgs if known and p not in known]
    if unknown or not pdgs:
        raise InputError(f"particle {unknown[0] if unknown else 'list empty'}", key="--particle",
                         expected="a particle the model was trained on (PDG "
                         + ", ".join(str(p) for p in known) + ")")
    lo, hi = (float(x) for x in trained.get("energy_mev") or (1000.0, 100_000.0))
    if energy is None:
        spec = Spectrum(_spectrum_of_training_range(spectrum), (lo, hi))
    else:
        spec = parse_energy(energy, spectrum)
        if trained.get("energy_mev") and (min(spec.values) < lo / _ENERGY_MARGIN
                                          or max(spec.values) > hi * _ENERGY_MARGIN):
            raise InputError(f"{energy!r} GeV lies outside the training range "
                             f"{lo / 1e3:.4g}-{hi / 1e3:.4g} GeV", key="--energy",
                             expected="energies within the training range (10 % margin)")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0D5]))
    e = spec.sample(n, rng)
    species = np.asarray(pdgs, dtype=np.int32)[rng.integers(0, len(pdgs), n)]

    def trained_range(key: str, default: float) -> tuple[float, float]:
        lo_hi = trained.get(key) or [default, default]
        return float(lo_hi[0]), float(lo_hi[1])

    th_lo, th_hi = parse_theta(theta, trained_range("theta", math.pi / 2))
    ph_lo, ph_hi = parse_phi(phi, trained_range("phi", 0.0))
    th = rng.uniform(th_lo, th_hi, n) if th_hi > th_lo else np.full(n, th_lo)
    ph = rng.uniform(ph_lo, ph_hi, n) if ph_hi > ph_lo else np.full(n, ph_lo)
    return Conditions(e, species, th, ph)


def generate_showers(
    model: Any,
    preprocessing: Any,
    info: Mapping[str, Any],
    conditions: Conditions,
    *,
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> PointShowers:
    """Generate physical point clouds with a loaded point-flow model (see :func:`load_point_flow`).

    The per-layer counts are capped by the checkpoint's ``count_limits``.
    """
    from showerformer.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS

    meta = dict(info.get("metadata") or {})
    geo = Geometry.from_dict(meta["geometry"]) if meta.get("geometry") else None
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    steps = DEFAULT_STEPS if steps is None else int(steps)
    sampler = DEFAULT_SAMPLER if sampler is None else sampler
    out: list[PointShowers] = []
    chunk = max(batch_size, 1) * 8
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("sampling", total=len(conditions))
    try:
        for start in range(0, len(conditions), chunk):
            sl = slice(start, start + chunk)
            out.append(model.generate(conditions[sl], preprocessing, generator=gen,
                                      steps=steps, sampler=sampler, batch_size=batch_size,
                                      geometry=geo, max_counts=meta.get("count_limits")))
            if bar is not None:
                bar.update(task, completed=min(start + chunk, len(conditions)))
    finally:
        if bar is not None:
            bar.stop()
    return _concat_points(out, conditions, geo)


def _concat_points(parts: list[PointShowers], conditions: Conditions,
                   geometry: Geometry | None) -> PointShowers:
    ragged: list[np.ndarray] = []
    for p in parts:
        ragged += p.to_ragged()
    return PointShowers.from_ragged(ragged, conditions, geometry)


def sample_point_flow(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n: int,
    particle: str | None = None,
    energy: str | None = None,
    spectrum: str | None = None,
    theta: str | None = None,
    phi: str | None = None,
    format: str = "auto",
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    ema: bool = True,
    which: str = "last",
    progress: bool = True,
) -> dict[str, Any]:
    """Generate showers with a point-flow checkpoint and write them.

    Arguments:
        checkpoint: checkpoint or run folder.
        out: output HDF5 file (written atomically).
        n, particle, energy, spectrum, theta, phi, seed: see :func:`sample_conditions`.
        format: ``"calochallenge"`` (voxelized through the training geometry), ``"pointcloud"``
            or ``"auto"`` (CaloChallenge when the model was trained on voxels).
        steps, sampler: ODE integration (default midpoint, 16 steps).
        batch_size: showers per network call.
        device, ema, which: see :func:`load_point_flow`.
        progress: show a progress bar.

    Returns:
        Summary: ``path``, ``format``, ``showers``, ``seconds``, ``ms_per_shower``,
        ``mean_points``, ``checkpoint``, ``weights`` and ``outside`` (for CaloChallenge
        output: None, or a phrase such as ``"3 points holding 1.2 MeV in 2 of 100 showers"``
        for generated points outside the geometry's cells, which are left out).

    Raises:
        InputError: a bad option (naming it; checked before any work), a checkpoint that is
            not a point-flow model's or whose metadata is damaged (naming ``checkpoint.json``
            and the key), or conditions the model was not trained for.
        OutputError: an output path that cannot be written (checked before any work), or a
            disk that became full (an earlier file at ``out`` stays as it was).
    """
    from showerformer._paths import check_output_file, disk_full_error
    from showerformer.io import write_calochallenge, write_pointcloud

    check_sample_options(n=n, particle=particle, energy=energy, spectrum=spectrum, theta=theta,
                         phi=phi, format=format, seed=seed, steps=steps, sampler=sampler,
                         batch_size=batch_size)
    check_device(device)
    path = check_output_file(out, option="--out")
    model, pre, info = load_point_flow(checkpoint, device=device, ema=ema, which=which)
    meta = dict(info.get("metadata") or {})
    if format == "auto":
        format = "calochallenge" if meta.get("source_format") in VOXEL_FORMATS else "pointcloud"
    if format == "calochallenge" and not meta.get("geometry"):
        raise InputError("the model's data had no geometry to voxelize into", key="--format",
                         expected="--format pointcloud")
    conditions = sample_conditions(info, n, particle=particle, energy=energy, spectrum=spectrum,
                                   theta=theta, phi=phi, seed=seed)
    t0 = time.perf_counter()
    showers = generate_showers(model, pre, info, conditions, seed=seed, steps=steps,
                               sampler=sampler, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    outside = None
    try:
        if format == "calochallenge":
            outside = showers.describe_outside()
            voxels: VoxelShowers = showers.to_voxels(outside="drop")
            write_calochallenge(path, voxels)
        else:
            write_pointcloud(path, showers)
    except OSError as exc:
        err = disk_full_error(exc, path)
        if err is None:
            raise
        raise err from exc
    return {"path": str(path), "format": format, "showers": n, "seconds": seconds,
            "ms_per_shower": 1e3 * seconds / n, "mean_points": float(showers.n_points.mean()),
            "checkpoint": info.get("path"), "weights": info.get("weights"), "outside": outside}
