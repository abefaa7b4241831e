"""Per-shower conditions of the point-cloud generators: particle types, incident energy, direction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from showerformer.errors import InputError
from showerformer.showers import Conditions

if TYPE_CHECKING:
    from showerformer.data.points import PointPreprocessing

__all__ = [
    "CONDITION_KEYS",
    "DEFAULT_PARTICLES",
    "check_particles",
    "condition_tensors",
    "particle_indices",
    "require_keys",
]

DEFAULT_PARTICLES: tuple[int, ...] = (11, 22, 211, 2212)
"""PDG ids of the particle types, in embedding order: e-, gamma, pi+, proton."""

CONDITION_KEYS = ("particle", "energy", "theta", "phi")
"""Per-shower condition tensors of the point-cloud generators (see :func:`condition_tensors`)."""


def particle_indices(pdg: Any, particles: tuple[int, ...] = DEFAULT_PARTICLES) -> np.ndarray:
    """Embedding index of every PDG id.

    Arguments:
        pdg: PDG ids.  # (N,)
        particles: the model's particle list (``config.particles``).

    Returns:
        ``(N,)`` int64 indices into ``particles``.

    Raises:
        InputError: for an id that is not in ``particles``.
    """
    pdg = np.asarray(pdg, dtype=np.int64).reshape(-1)
    lookup = {int(p): i for i, p in enumerate(particles)}
    unknown = sorted({int(p) for p in np.unique(pdg)} - set(lookup))
    if unknown:
        raise InputError(f"particle PDG id {unknown[0]} is not modelled", key="pdg",
                         expected="one of " + ", ".join(str(p) for p in particles))
    return np.array([lookup[int(p)] for p in pdg], dtype=np.int64)


def check_particles(particles: tuple[int, ...], key: str = "particles") -> None:
    """Check a model's particle list: at least one PDG id, all distinct and non-zero.

    Arguments:
        particles: the PDG ids.
        key: the config key named in the error.

    Raises:
        InputError: naming ``key``.
    """
    if not particles or len(set(particles)) != len(particles) or 0 in particles:
        raise InputError(f"{key}={list(particles)!r}", key=key,
                         expected="a non-empty list of distinct non-zero PDG ids")


def require_keys(d: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    """Check that the dict ``d`` (a batch, conditions) holds every one of ``keys``.

    Arguments:
        d: the dict.
        keys: the entries it needs.
        what: its name in the error, e.g. ``"batch"``.

    Raises:
        InputError: naming the first missing key.
    """
    for key in keys:
        if key not in d:
            raise InputError(f"{what} without this entry", key=key,
                             expected="a dict with " + ", ".join(repr(k) for k in keys))


def condition_tensors(
    conditions: Conditions,
    preprocessing: PointPreprocessing,
    particles: tuple[int, ...] = DEFAULT_PARTICLES,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """The per-shower condition tensors of the point-cloud generators.

    Arguments:
        conditions: incident particles (energy in MeV, PDG id, theta and phi in rad).
        preprocessing: supplies the incident-energy normalization (``transform_incident``).
        particles: the model's particle list.
        device: where to put the tensors.

    Returns:
        ``{"particle": (N,) int64, "energy": (N,) float32 normalized log E,
        "theta": (N,) float32, "phi": (N,) float32}``.

    Raises:
        InputError: a particle that is not in ``particles`` (key ``pdg``).
    """
    return {
        "particle": torch.as_tensor(particle_indices(conditions.pdg, particles), device=device),
        "energy": torch.as_tensor(preprocessing.transform_incident(conditions.energy), device=device),
        "theta": torch.as_tensor(np.asarray(conditions.theta, np.float32), device=device),
        "phi": torch.as_tensor(np.asarray(conditions.phi, np.float32), device=device),
    }
