"""Point-flow runs: train PanShower + PointCountFM on shower files, sample showers from checkpoints."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.showers import Conditions, PointShowers, VoxelShowers
from showerformer.training.data import split_indices
from showerformer.training.engine import RunConfig, Trainer, TrainResult, load_run_config
from showerformer.training.point_data import (
    VOXEL_FORMATS,
    BucketBatchSampler,
    PointCloudDataset,
    PointCollate,
    load_point_dataset,
    size_sorted,
)

__all__ = [
    "DATA_KEYS",
    "OUTPUT_FORMATS",
    "build_point_flow",
    "count_limits",
    "generate_showers",
    "load_point_flow",
    "parse_energy",
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
    """
    full = load_point_dataset(data, seed=seed, max_showers=max_showers, threshold=threshold)
    if len(full) == 0:
        raise InputError("no showers", path=data, key="showers", expected="at least one shower")
    if val_data is not None:
        val = load_point_dataset(val_data, seed=seed + 1, max_showers=max_showers,
                                 threshold=threshold)
        if (full.geometry is not None and val.geometry is not None
                and not val.geometry.same_cells(full.geometry)):
            raise InputError(f"geometry {val.geometry.name}", path=val_data, key="geometry",
                             expected=f"{full.geometry.name} as in {data}")
        return full, size_sorted(val)
    if not val_fraction:
        return full, None
    train_idx, val_idx = split_indices(len(full), float(val_fraction), seed)
    return full.subset(train_idx), size_sorted(full.subset(val_idx))


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
    """The model of a run config for the training data: ``n_layers_calo`` from the geometry,
    ``particles`` default the model's four; the count model's statistics fitted on the data.

    Raises:
        InputError: a family other than ``point-flow``, a layer count that does not match the
            data, a particle of the data the model does not know, or a bad config value.
    """
    from showerformer.models import get_model_class
    from showerformer.models.panshower import particle_indices

    try:
        cls = get_model_class(run.family)
    except InputError as exc:
        raise InputError(exc.what, path=run.path, key="model.family",
                         expected=exc.expected) from None
    if run.family != "point-flow":
        raise InputError(f"family '{run.family}'", path=run.path, key="model.family",
                         expected="'point-flow' (PanShower with PointCountFM)")
    overrides = dict(run.model)
    n_layers = _n_layers(train)
    layers = overrides.setdefault("n_layers_calo", n_layers)
    if layers != n_layers:
        raise InputError(f"n_layers_calo={layers} but the data has {n_layers} layers",
                         path=run.path, key="model.n_layers_calo",
                         expected=f"{n_layers} (or leave it unset)")
    try:
        config = cls.config_class.from_dict(overrides)  # type: ignore[attr-defined]
    except InputError as exc:
        raise InputError(exc.what, path=run.path, key=f"model.{exc.key}",
                         expected=exc.expected) from None
    try:
        particle_indices(train.conditions.pdg, config.particles)
    except InputError as exc:
        raise InputError(exc.what, path=run.path, key="model.particles",
                         expected=exc.expected) from None
    model = cls(config)
    model.fit_normalization(train.layer_counts(config.n_layers_calo))  # type: ignore[operator]
    return model


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
    max_steps: int | None = None,
    max_showers: int | None = None,
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
        max_steps: overrides ``train.max_steps``.
        max_showers: read at most this many showers (overrides ``data.max_showers``).
        device: overrides ``train.device``.
        progress: show the progress bar.
        stop_at_step: interrupt (with a checkpoint) after this many steps, as a preempted job.

    Returns:
        The :class:`~showerformer.training.engine.TrainResult`; the checkpoints hold the
        preprocessing, the geometry, the training conditions and per-layer count limits.
    """
    from showerformer.models.panshower import Preprocessing

    run = load_run_config(config, data_keys=DATA_KEYS)
    train_cfg = run.train.with_overrides(out_dir=out_dir, max_steps=max_steps, device=device)
    d = run.data
    if val_fraction is None and val_data is None:
        val_fraction = float(d.get("val_fraction", _DEFAULT_VAL_FRACTION))
    if max_showers is None and d.get("max_showers") is not None:
        max_showers = int(d["max_showers"])
    threshold = None if d.get("threshold") is None else float(d["threshold"])
    train_ds, val_ds = point_flow_datasets(data, val_data=val_data, val_fraction=val_fraction,
                                           seed=train_cfg.seed, max_showers=max_showers,
                                           threshold=threshold)
    torch.manual_seed(train_cfg.seed)  # reproducible initial weights
    model = build_point_flow(run, train_ds)
    mcfg = model.config  # type: ignore[attr-defined]
    pre = Preprocessing.fit_points(train_ds.points, train_ds.conditions.energy,
                                   geometry=train_ds.geometry, n_layers=mcfg.n_layers_calo,
                                   per_layer=bool(d.get("per_layer", True)))
    collate = PointCollate(pre, mcfg.particles, int(d.get("pad_multiple", 1)))
    metadata = {
        "preprocessing": pre.to_dict(),
        "geometry": None if train_ds.geometry is None else train_ds.geometry.to_dict(),
        "source_format": train_ds.source_format,
        "conditions": _condition_summary(train_ds.conditions),
        "count_limits": count_limits(train_ds, mcfg.n_layers_calo).tolist(),
        "data": {"train": str(data), "val": None if val_data is None else str(val_data),
                 "val_fraction": None if val_data is not None else val_fraction,
                 "n_train": len(train_ds), "n_val": 0 if val_ds is None else len(val_ds),
                 "mean_points": float(train_ds.sizes.mean())},
        "run_config": str(run.path) if run.path else None,
    }
    sampler = BucketBatchSampler.factory(train_ds.sizes, int(d.get("bucket_batches", 32)))
    trainer = Trainer(model, train_ds, val_ds, train_cfg, collate, progress=progress,
                      metadata=metadata, batch_sampler=sampler)
    return trainer.fit(resume=resume, stop_at_step=stop_at_step)


def load_point_flow(checkpoint: str | os.PathLike[str], *, device: str = "auto",
                    ema: bool = True, which: str = "last") -> tuple[Any, Any, dict[str, Any]]:
    """A trained point-flow model with its preprocessing.

    Arguments:
        checkpoint: checkpoint folder or run folder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        ema: use the moving-average weights when saved.
        which: ``"last"`` or ``"best"`` for a run folder.

    Returns:
        ``(model in eval mode, Preprocessing, checkpoint info)``.
    """
    from showerformer.models.panshower import Preprocessing
    from showerformer.training.checkpoint import load_checkpoint
    from showerformer.training.distributed import resolve_device

    model, info = load_checkpoint(checkpoint, device=resolve_device(device), ema=ema,
                                  which=which)
    if info.get("family") != "point-flow":
        raise InputError(f"a '{info.get('family')}' checkpoint", path=info.get("path"),
                         key="family", expected="a point-flow checkpoint "
                         "(showerformer train point-flow)")
    raw = info.get("preprocessing")
    if not isinstance(raw, Mapping):
        raise InputError("no preprocessing stored", path=info.get("path"), key="preprocessing",
                         expected="the dict written by train_point_flow")
    try:
        pre = Preprocessing.from_dict(raw)
    except InputError as exc:
        raise InputError(exc.what, path=info.get("path"), key=f"preprocessing.{exc.key}",
                         expected=exc.expected) from None
    return model, pre, info


_RANGE_DASH = re.compile(r"^\s*([0-9.eE+]+)\s*-\s*([0-9.eE+]+)\s*$")


def parse_energy(text: str, spectrum: str | None = None) -> Any:
    """``"50"``, ``"1-1000"`` / ``"1:1000"`` (log-uniform by default) or ``"64,128,256"`` GeV
    -> a :class:`~showerformer.simulation.beams.Spectrum` in MeV."""
    from showerformer.simulation.beams import Spectrum

    m = _RANGE_DASH.match(str(text))
    if m and not str(text).strip().lower().endswith(("e-", "e+")):
        text = f"{m.group(1)}:{m.group(2)}"
    return Spectrum.parse(text, spectrum)


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
        energy: GeV specification (see :func:`parse_energy`); default: log-uniform over the
            training range.
        spectrum: ``fixed``, ``uniform``, ``log-uniform`` or ``discrete`` (default from the
            form of ``energy``).
        theta, phi: degrees, ``"90"`` or ``"70:90"`` (uniform); default: the training range.
        seed: seed of the draws.

    Returns:
        :class:`Conditions` of ``n`` showers.
    """
    from showerformer.simulation.beams import Spectrum, get_particle, parse_angle

    if n < 1:
        raise InputError(f"n={n}", key="n", expected="at least one shower")
    meta = dict(info.get("metadata") or {})
    trained = dict(meta.get("conditions") or {})
    model_particles = [int(p) for p in (info.get("model_config") or {}).get("particles", [])]
    if particle is None:
        pdgs = [int(p) for p in trained.get("pdg") or model_particles]
    else:
        names = particle.split(",") if isinstance(particle, str) else list(particle)
        pdgs = []
        for name in names:
            name = str(name).strip()
            pdgs.append(get_particle(int(name) if name.lstrip("-").isdigit() else name).pdg)
    known = [int(p) for p in trained.get("pdg") or model_particles]
    unknown = [p for p in pdgs if known and p not in known]
    if unknown or not pdgs:
        raise InputError(f"particle {unknown[0] if unknown else 'list empty'}", key="particle",
                         expected="a particle the model was trained on (PDG "
                         + ", ".join(str(p) for p in known) + ")")
    if energy is None:
        lo, hi = trained.get("energy_mev") or (1000.0, 100_000.0)
        spec = Spectrum("log-uniform", (float(lo), float(hi)))
    else:
        spec = parse_energy(energy, spectrum)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0D5]))
    e = spec.sample(n, rng)
    species = np.asarray(pdgs, dtype=np.int32)[rng.integers(0, len(pdgs), n)]

    def angle(text: str | None, key: str) -> np.ndarray:
        lo_hi = trained.get(key) or [math.pi / 2, math.pi / 2]
        lo, hi = parse_angle(text, (float(lo_hi[0]), float(lo_hi[1])))
        return rng.uniform(lo, hi, n) if hi > lo else np.full(n, lo)

    th, ph = angle(theta, "theta"), angle(phi, "phi")
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
        ``mean_points``.
    """
    from showerformer.io import write_calochallenge, write_pointcloud

    if format not in OUTPUT_FORMATS:
        raise InputError(f"format {format!r}", key="format", expected=" or ".join(OUTPUT_FORMATS))
    model, pre, info = load_point_flow(checkpoint, device=device, ema=ema, which=which)
    meta = dict(info.get("metadata") or {})
    if format == "auto":
        format = "calochallenge" if meta.get("source_format") in VOXEL_FORMATS else "pointcloud"
    if format == "calochallenge" and not meta.get("geometry"):
        raise InputError("the model's data had no geometry to voxelize into", key="format",
                         expected="--format pointcloud")
    conditions = sample_conditions(info, n, particle=particle, energy=energy, spectrum=spectrum,
                                   theta=theta, phi=phi, seed=seed)
    t0 = time.perf_counter()
    showers = generate_showers(model, pre, info, conditions, seed=seed, steps=steps,
                               sampler=sampler, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    path = Path(out)
    if format == "calochallenge":
        voxels: VoxelShowers = showers.to_voxels()
        write_calochallenge(path, voxels)
    else:
        write_pointcloud(path, showers)
    return {"path": str(path), "format": format, "showers": n, "seconds": seconds,
            "ms_per_shower": 1e3 * seconds / n, "mean_points": float(showers.n_points.mean()),
            "checkpoint": info.get("path"), "weights": info.get("weights")}
