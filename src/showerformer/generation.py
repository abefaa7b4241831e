"""Generation with any generator family: load a checkpoint, draw conditions, generate, write."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from showerformer.errors import InputError
from showerformer.showers import Conditions, PointShowers, VoxelShowers

__all__ = [
    "OUTPUT_FORMATS",
    "generate",
    "load_generator",
    "sample_file",
    "trained_conditions",
]

OUTPUT_FORMATS = ("auto", "calochallenge", "pointcloud")
"""``--format`` of ``showerformer sample``: auto = voxels for a model trained on voxels."""

_VOXEL_FORMATS = ("calochallenge", "par04", "sparse-voxels")


def load_generator(checkpoint: str | os.PathLike[str], *, device: str = "auto",
                   ema: bool = True, which: str = "last") -> tuple[Any, dict[str, Any]]:
    """A trained generator of any family, with the state it fitted on its training data.

    Arguments:
        checkpoint: checkpoint folder or run folder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        ema: use the moving-average weights when saved.
        which: ``"last"`` or ``"best"`` for a run folder.

    Returns:
        ``(model in eval mode, checkpoint info)``.

    Raises:
        InputError: a regressor's checkpoint (checked before the model is built), an unknown
            family or damaged files, naming ``checkpoint.json`` and the key.
    """
    from showerformer.models import get_model_class
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
    try:
        cls = get_model_class(str(family))
    except InputError as exc:
        raise InputError(exc.what, path=jpath, key="family", expected=exc.expected) from None
    if getattr(cls, "task", None) != "generation":
        raise InputError(f"a '{family}' checkpoint ('showerformer predict' applies a "
                         "regressor)", path=jpath, key="family",
                         expected="the checkpoint of a generator family")
    model, info = load_checkpoint(folder, device=resolve_device(device), ema=ema, which=which)
    return model, info


def trained_conditions(model: Any) -> dict[str, Any]:
    """The incident particles a generator was trained on (``pdg``, ``energy_mev``, ``theta``,
    ``phi`` ranges) from its data state; empty when the family records none."""
    state = model.data_state() if callable(getattr(model, "data_state", None)) else {}
    return dict(state.get("conditions") or {})


def _options(model: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The non-None ``options`` checked against the family's ``generate`` signature."""
    wanted = {k: v for k, v in options.items() if v is not None}
    params = inspect.signature(model.generate).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return wanted
    for key in wanted:
        if key not in params:
            raise InputError(f"--{key.replace('_', '-')} given", key=f"--{key.replace('_', '-')}",
                             expected=f"no such option for the '{model.family}' family")
    return wanted


def generate(model: Any, conditions: Conditions, *, seed: int = 0, steps: int | None = None,
             progress: bool = False, chunk: int = 2048,
             **options: Any) -> PointShowers | VoxelShowers:
    """Showers in physical units from a loaded generator, in chunks of ``chunk`` conditions.

    Arguments:
        model: a generator family (see :func:`load_generator`).
        conditions: the incident particles.
        seed: seed of the generator's noise (a ``torch.Generator`` on the model's device).
        steps: network evaluations of an iterative sampler (None: the family's default).
        progress: show a progress bar.
        chunk: conditions per ``generate`` call.
        **options: further keywords of the family's ``generate`` (e.g. ``sampler``,
            ``batch_size``); None values are left out.

    Returns:
        The family's output type, one shower per condition in order.

    Raises:
        InputError: an option the family does not have.
    """
    opts = _options(model, options)
    device = next(iter(model.parameters())).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    parts: list[Any] = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("sampling", total=len(conditions))
    try:
        for start in range(0, len(conditions), chunk):
            sl = slice(start, start + chunk)
            parts.append(model.generate(conditions[sl], generator=gen, steps=steps, **opts))
            if bar is not None:
                bar.update(task, completed=min(start + chunk, len(conditions)))
    finally:
        if bar is not None:
            bar.stop()
    return _concat(parts, conditions)


def _concat(parts: list[Any], conditions: Conditions) -> PointShowers | VoxelShowers:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], PointShowers):
        ragged: list[np.ndarray] = []
        for p in parts:
            ragged += p.to_ragged()
        return PointShowers.from_ragged(ragged, conditions, parts[0].geometry)
    energies = np.concatenate([p.energies for p in parts])
    return VoxelShowers(energies, conditions, parts[0].geometry)


def sample_file(
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
    device: str = "auto",
    ema: bool = True,
    which: str = "last",
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Generate showers with any generator checkpoint and write them.

    Arguments:
        checkpoint: checkpoint or run folder.
        out: output HDF5 file (written atomically).
        n, particle, energy, spectrum, theta, phi, seed: the incident particles (see
            :func:`~showerformer.training.point_flow.sample_conditions`); by default what the
            model was trained on.
        format: ``"calochallenge"`` (voxels of the training geometry), ``"pointcloud"`` or
            ``"auto"`` (CaloChallenge when the model was trained on voxels or makes voxels).
        steps: network evaluations (None: the family's default).
        device, ema, which: see :func:`load_generator`.
        progress: show a progress bar.
        **options: further keywords of the family's ``generate`` (``sampler``, ``batch_size``).

    Returns:
        Summary: ``path``, ``format``, ``showers``, ``seconds``, ``ms_per_shower``,
        ``mean_points`` (point output), ``checkpoint``, ``weights``, ``family`` and ``outside``
        (CaloChallenge output of point clouds: None, or a phrase on generated points outside
        the geometry's cells, which are left out).

    Raises:
        InputError: a bad option (naming it; checked before any work), a checkpoint that is
            not a generator's, or conditions the model was not trained for.
        OutputError: an output path that cannot be written (checked before any work), or a
            disk that became full (an earlier file at ``out`` stays as it was).
    """
    from showerformer._paths import check_output_file, disk_full_error
    from showerformer.io import write_calochallenge, write_pointcloud
    from showerformer.training.config import check_device
    from showerformer.training.point_flow import check_sample_options, sample_conditions

    check_sample_options(n=n, particle=particle, energy=energy, spectrum=spectrum, theta=theta,
                         phi=phi, format=format, seed=seed, steps=steps,
                         sampler=options.get("sampler"),
                         batch_size=options.get("batch_size") or 1)
    check_device(device)
    path = check_output_file(out, option="--out")
    model, info = load_generator(checkpoint, device=device, ema=ema, which=which)
    _options(model, options)
    state = model.data_state()
    if format == "auto":
        format = ("calochallenge" if state.get("source_format") in _VOXEL_FORMATS
                  else "pointcloud")
    conditions = sample_conditions({"metadata": {"conditions": trained_conditions(model)}}, n,
                                   particle=particle, energy=energy, spectrum=spectrum,
                                   theta=theta, phi=phi, seed=seed)
    t0 = time.perf_counter()
    showers = generate(model, conditions, seed=seed, steps=steps, progress=progress, **options)
    seconds = time.perf_counter() - t0
    if (format == "calochallenge" and isinstance(showers, PointShowers)
            and showers.geometry is None):
        raise InputError("the model's data had no geometry to voxelize into", key="--format",
                         expected="--format pointcloud")
    if format == "pointcloud" and isinstance(showers, VoxelShowers):
        showers = showers.to_points()
    outside = None
    try:
        if format == "calochallenge":
            if isinstance(showers, PointShowers):
                outside = showers.describe_outside()
                showers = showers.to_voxels(outside="drop")
            write_calochallenge(path, showers)
        else:
            write_pointcloud(path, showers)
    except OSError as exc:
        err = disk_full_error(exc, path)
        if err is None:
            raise
        raise err from exc
    summary = {"path": str(path), "format": format, "showers": n, "seconds": seconds,
               "ms_per_shower": 1e3 * seconds / n, "checkpoint": info.get("path"),
               "weights": info.get("weights"), "family": info.get("family"), "outside": outside,
               "mean_points": None}
    if isinstance(showers, PointShowers):
        summary["mean_points"] = float(showers.n_points.mean()) if len(showers) else 0.0
    return summary
