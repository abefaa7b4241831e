"""``showerformer benchmark samplers``: quality and speed of one generator's samplers, and the
energy dependence of the number of hits and of the shower radius.

For a trained point-cloud generator and a held-out file: generate the held-out showers with
every requested sampler (``NAME:STEPS``, e.g. ``pc:100``, ``midpoint:16``, ``adaptive``), count
the shower network's evaluations, evaluate against the held-out showers (high-level classifier
AUC, FPD, KPD, separation powers) and time sampling at the requested batch sizes. The energy
dependence (:func:`energy_dependence`) measures the two weak points seed 003 reports: too many
hits at high energy, and the energy-radius relation ("centralization").

References:
    Hsu, seed document 003 (sections 6.4-6.5, 7.1); Song et al., arXiv:2011.13456.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from showerformer.errors import InputError

__all__ = ["ENERGY_EDGES_GEV", "energy_dependence", "parse_sampler_specs", "run_sampler_benchmark"]

ENERGY_EDGES_GEV = (1.0, 10.0, 100.0, 1000.0)
"""Incident-energy bins (GeV) of :func:`energy_dependence`."""

PathLike = str | os.PathLike[str]


def parse_sampler_specs(specs: Sequence[str]) -> list[tuple[str, int | None]]:
    """``["pc:100", "adaptive"]`` -> ``[("pc", 100), ("adaptive", None)]``.

    Raises:
        InputError: naming ``--sampler`` for a malformed entry or a step count below 1.
    """
    out: list[tuple[str, int | None]] = []
    for spec in specs:
        name, _, steps = str(spec).partition(":")
        if not name.strip():
            raise InputError(f"--sampler {spec!r}", key="--sampler", expected="NAME or NAME:STEPS")
        if steps:
            try:
                n = int(steps)
            except ValueError:
                n = 0
            if n < 1:
                raise InputError(f"--sampler {spec!r}", key="--sampler",
                                 expected="NAME:STEPS with STEPS a positive integer")
            out.append((name.strip(), n))
        else:
            out.append((name.strip(), None))
    return out


def _mean_radius(showers: Any) -> np.ndarray:
    """Energy-weighted mean distance of the deposits from the shower axis (x = y = 0), per
    shower, from the cell centres.  # (N,)"""
    xyz = showers.geometry.cell_centers()  # (C, 3)
    r = np.hypot(xyz[:, 0], xyz[:, 1])  # (C,)
    e = np.asarray(showers.energies, dtype=np.float64)  # (N, C)
    tot = e.sum(axis=1)
    return np.where(tot > 0, e @ r / np.where(tot > 0, tot, 1.0), np.nan)


def energy_dependence(reference: Any, generated: Any,
                      edges_gev: Sequence[float] = ENERGY_EDGES_GEV) -> list[dict[str, Any]]:
    """Hits and radius per incident-energy bin, reference against generated voxel showers.

    Arguments:
        reference, generated: :class:`~showerformer.showers.VoxelShowers` on the same geometry.
        edges_gev: incident-energy bin edges in GeV.

    Returns:
        One row per bin: ``bin`` (GeV range), ``n`` (reference showers), ``hits_ref``,
        ``hits_gen`` (mean cells above zero), ``hits_separation`` (separation power of the two
        ``n_hits`` histograms on 30 common bins), ``radius_ref``, ``radius_gen`` (mean of the
        energy-weighted mean radius, mm; showers without energy left out; None when none has
        any), ``radius_rel_diff`` (generated / reference - 1).
    """
    from showerformer.evaluation.metrics import separation_power

    rows: list[dict[str, Any]] = []
    hits_r = (np.asarray(reference.energies) > 0).sum(axis=1)
    hits_g = (np.asarray(generated.energies) > 0).sum(axis=1)
    rad_r, rad_g = _mean_radius(reference), _mean_radius(generated)
    e_r = np.asarray(reference.conditions.energy) / 1e3
    e_g = np.asarray(generated.conditions.energy) / 1e3
    for lo, hi in pairwise(edges_gev):
        sr = (e_r >= lo) & (e_r < hi)
        sg = (e_g >= lo) & (e_g < hi)
        row: dict[str, Any] = {"bin": f"{lo:g}-{hi:g} GeV", "n": int(sr.sum()),
                               "n_generated": int(sg.sum())}
        if sr.sum() and sg.sum():
            both = np.concatenate([hits_r[sr], hits_g[sg]])
            bins = np.linspace(both.min(), both.max() + 1, 31)
            row.update(
                hits_ref=float(hits_r[sr].mean()), hits_gen=float(hits_g[sg].mean()),
                hits_separation=separation_power(np.histogram(hits_r[sr], bins)[0],
                                                 np.histogram(hits_g[sg], bins)[0]),
                radius_ref=_finite_mean(rad_r[sr]), radius_gen=_finite_mean(rad_g[sg]))
            if row["radius_ref"] and row["radius_gen"] is not None:
                row["radius_rel_diff"] = row["radius_gen"] / row["radius_ref"] - 1.0
        rows.append(row)
    return rows


def _finite_mean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


class _Counter:
    """Counts calls of a module's forward (network evaluations) and of the model's ``sample``
    (one sampler run per call of showers)."""

    def __init__(self, model: Any) -> None:
        self.model, self.evaluations, self.runs = model, 0, 0
        self._handle = None
        self._sample = model.sample

    def __enter__(self) -> _Counter:
        def hook(*_: Any) -> None:
            self.evaluations += 1

        def sample(*args: Any, **kwargs: Any) -> Any:
            self.runs += 1
            return self._sample(*args, **kwargs)

        self._handle = self.model.shower.register_forward_hook(hook)
        self.model.sample = sample
        return self

    def __exit__(self, *_: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
        del self.model.sample  # the instance attribute; the method shows again

    @property
    def per_run(self) -> float | None:
        return self.evaluations / self.runs if self.runs else None


def run_sampler_benchmark(
    checkpoint: PathLike,
    test_file: PathLike,
    out_dir: PathLike,
    *,
    samplers: Sequence[str] = ("pc:50", "pc:100", "pc:200", "pc:500", "euler:8", "euler:16",
                               "euler:32", "adaptive"),
    n_showers: int | None = None,
    speed_batches: Sequence[int] = (1, 100),
    classifier: str = "cpu",
    seed: int = 0,
    device: str = "auto",
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare the samplers of one generator; writes ``samplers.json`` into ``out_dir``.

    Arguments:
        checkpoint: a run folder or checkpoint of a point-cloud generator.
        test_file: held-out voxel showers (their incident particles are generated).
        out_dir: folder for ``samplers.json`` and the evaluation reports.
        samplers: ``NAME:STEPS`` or ``NAME`` (the family's default steps).
        n_showers: the first this many held-out showers (default: all; with a classifier at
            least the 250 its split needs).
        speed_batches: batch sizes of the speed measurement (empty: skip).
        classifier: evaluation classifier mode (``cpu``, ``full``, ``none``).
        seed: noise seed (the same for every sampler).
        device: ``auto``, ``cpu`` or ``cuda``.
        say: progress messages.
    """
    from showerformer.benchmark.point_flow import _evaluate, _write, measure_sampling
    from showerformer.generation import generate, load_generator
    from showerformer.io import read_showers

    say = say or (lambda _m: None)
    specs = parse_sampler_specs(samplers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = load_generator(checkpoint, device=device)
    known = getattr(model, "samplers", None)
    for name, _ in specs:
        if known is not None and name not in known:
            raise InputError(f"sampler {name!r} of family '{model.family}'", key="--sampler",
                             expected="one of " + ", ".join(known))
    test = read_showers(test_file)
    if n_showers is not None:
        test = test[np.arange(min(int(n_showers), len(test)))]
    if classifier != "none":  # fail before any sampling when the classifier cannot run
        from showerformer.evaluation.pipeline import check_classifier_size

        check_classifier_size(len(test), len(test), classifier, seed)
    summary: dict[str, Any] = {"checkpoint": str(checkpoint), "test_file": str(test_file),
                               "n_showers": len(test), "family": model.family,
                               "torch_threads": torch.get_num_threads(),
                               "device": str(next(model.parameters()).device), "samplers": []}
    for name, steps in specs:
        label = name if steps is None else f"{name}:{steps}"
        say(f"{label}: generating {len(test):,} showers")
        with _Counter(model) as count:
            t0 = time.perf_counter()
            gen = generate(model, test.conditions, seed=seed, steps=steps, sampler=name,
                           progress=True)
            seconds = time.perf_counter() - t0
        gen_v = gen.to_voxels(outside="drop")
        row: dict[str, Any] = {"sampler": name, "steps": steps,
                               "evaluations": count.per_run,
                               "generate_ms_per_shower": 1e3 * seconds / len(test),
                               "mean_points": float(gen.n_points.mean())}
        say(f"{label}: evaluating")
        row["evaluation"] = _evaluate(test, gen_v, out / f"eval_{name}_{steps or 'default'}",
                                      classifier, seed, ("high",), plots=False)
        row["energy_dependence"] = energy_dependence(test, gen_v)
        if speed_batches:
            row["speed"] = measure_sampling(model, test.conditions, list(speed_batches),
                                            seed=seed, steps=steps, sampler=name)
        summary["samplers"].append(row)
        _write(out / "samplers.json", summary)
    _write(out / "samplers.json", summary)
    return summary
