"""Generation with any generator family: load a checkpoint, draw conditions, generate, write."""

from __future__ import annotations

import inspect
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from showerformer.errors import InputError
from showerformer.showers import Conditions, PointShowers, VoxelShowers
from showerformer.training.config import check_count

__all__ = [
    "OUTPUT_FORMATS",
    "check_sample_options",
    "check_spectrum",
    "generate",
    "load_generator",
    "parse_energy",
    "parse_particles",
    "parse_phi",
    "parse_theta",
    "sample_conditions",
    "sample_file",
    "trained_conditions",
]

OUTPUT_FORMATS = ("auto", "calochallenge", "pointcloud")
"""``--format`` of ``showerformer sample``: auto = voxels for a model trained on voxels."""

_VOXEL_FORMATS = ("calochallenge", "par04", "sparse-voxels")


# ---------------------------------------------------------------------------- conditions

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
    from showerformer.models import MODELS
    from showerformer.samplers import SAMPLERS

    check_count(n, "--n", "at least one shower")
    check_count(batch_size, "--batch-size", "a positive number of showers per network call")
    if steps is not None:
        check_count(steps, "--steps", "at least one sampler step")
    check_count(seed, "--seed", "an integer >= 0", minimum=0)
    if sampler is not None:  # any family's; the family's generate checks its own
        known = sorted(set(SAMPLERS).union(*(getattr(c, "samplers", ()) for c in MODELS.values())))
        if sampler not in known:
            raise InputError(f"unknown sampler {sampler!r}", key="--sampler",
                             expected="one of " + ", ".join(known))
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
    trained: Mapping[str, Any],
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
        trained: the training range of the model (:func:`trained_conditions`: ``pdg``,
            ``energy_mev``, ``theta``, ``phi``, and ``energy_values_mev`` when the training
            energies were a few discrete values, which are then drawn by default); missing
            entries: any particle, 1-100 GeV, normal incidence.
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
    trained = dict(trained)
    known = [int(p) for p in trained.get("pdg") or []]
    pdgs = known if particle is None else parse_particles(particle)
    unknown = [p for p in pdgs if known and p not in known]
    if unknown or not pdgs:
        raise InputError(f"particle {unknown[0] if unknown else 'list empty'}", key="--particle",
                         expected="a particle the model was trained on (PDG "
                         + ", ".join(str(p) for p in known) + ")")
    lo, hi = (float(x) for x in trained.get("energy_mev") or (1000.0, 100_000.0))
    values = [float(v) for v in trained.get("energy_values_mev") or []]
    if energy is None and values and spectrum in (None, "discrete"):
        spec = Spectrum("discrete", tuple(values))  # a discrete training spectrum (Par04)
    elif energy is None:
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


# ---------------------------------------------------------------------------- generators


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
            :func:`sample_conditions`); by default what the
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

    check_sample_options(n=n, particle=particle, energy=energy, spectrum=spectrum, theta=theta,
                         phi=phi, format=format, seed=seed, steps=steps,
                         sampler=options.get("sampler"),
                         batch_size=256 if options.get("batch_size") is None
                         else options["batch_size"])
    check_device(device)
    path = check_output_file(out, option="--out")
    model, info = load_generator(checkpoint, device=device, ema=ema, which=which)
    _options(model, options)
    state = model.data_state()
    conditions = sample_conditions(trained_conditions(model), n, particle=particle,
                                   energy=energy, spectrum=spectrum, theta=theta, phi=phi,
                                   seed=seed)
    t0 = time.perf_counter()
    showers = generate(model, conditions, seed=seed, steps=steps, progress=progress, **options)
    seconds = time.perf_counter() - t0
    if format == "auto":  # voxels from voxel generators and from models trained on voxels
        format = ("calochallenge" if isinstance(showers, VoxelShowers)
                  or state.get("source_format") in _VOXEL_FORMATS else "pointcloud")
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
