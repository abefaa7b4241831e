"""Beams: what is shot at the calorimeter and the incident particles drawn from it.

The descriptions of incident particles (species, spectra, angles and their parsing) live in
:mod:`showerformer.incident`, which the training and sampling code shares; they are re-exported
here. Hadrons given by momentum get the kinetic energy ``T = sqrt(p^2 + m^2) - m``, the energy
they can deposit; electrons and photons are given by energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from showerformer.incident import (
    MAX_ENERGY_MEV,
    MAX_TILT_RAD,
    PARTICLES,
    SPECTRUM_KINDS,
    Particle,
    Spectrum,
    get_particle,
    parse_angle,
    parse_theta,
)

__all__ = [
    "MAX_ENERGY_MEV",
    "MAX_TILT_RAD",
    "PARTICLES",
    "SPECTRUM_KINDS",
    "Beam",
    "BeamSample",
    "Particle",
    "Spectrum",
    "get_particle",
    "parse_angle",
    "parse_theta",
]


@dataclass
class BeamSample:
    """Drawn incident particles, one entry per shower (MeV, rad, mm)."""

    pdg: np.ndarray  # (N,) int32
    energy: np.ndarray  # (N,) kinetic energy (e/gamma: energy), MeV
    momentum: np.ndarray  # (N,) MeV
    theta: np.ndarray  # (N,) rad
    phi: np.ndarray  # (N,) rad
    x0: np.ndarray  # (N,) entry point on the front face, mm
    y0: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.pdg)


@dataclass(frozen=True)
class Beam:
    """What is shot at the calorimeter.

    Attributes:
        particles: species, drawn with equal probability per shower.
        spectrum: energy spectrum (kinetic energy for hadrons) or momentum spectrum.
        momentum: the spectrum gives momenta (hadrons get T = sqrt(p^2 + m^2) - m).
        theta: polar-angle range in rad (uniform); (pi/2, pi/2) is normal incidence.
        phi: azimuth range in rad (uniform).
        entry: entry point (x, y) on the front face in mm.
        entry_spread: Gaussian spread of the entry point in mm.
    """

    particles: tuple[Particle, ...]
    spectrum: Spectrum
    momentum: bool = False
    theta: tuple[float, float] = (math.pi / 2, math.pi / 2)
    phi: tuple[float, float] = (math.pi / 2, math.pi / 2)
    entry: tuple[float, float] = (0.0, 0.0)
    entry_spread: float = 0.0

    def sample(self, n: int, rng: np.random.Generator) -> BeamSample:
        """Draw ``n`` incident particles (always the same sequence of draws for one rng)."""
        species = rng.integers(0, len(self.particles), n) if len(self.particles) > 1 \
            else np.zeros(n, dtype=np.int64)
        value = self.spectrum.sample(n, rng)
        theta = rng.uniform(self.theta[0], self.theta[1], n)
        phi = rng.uniform(self.phi[0], self.phi[1], n)
        spread = rng.normal(0.0, 1.0, (2, n)) * self.entry_spread
        mass = np.array([p.mass for p in self.particles])[species]
        pdg = np.array([p.pdg for p in self.particles], dtype=np.int32)[species]
        em = np.array([p.is_em for p in self.particles])[species]
        if self.momentum:
            kinetic = np.where(em, value, np.sqrt(value**2 + mass**2) - mass)
            momentum = value
        else:
            kinetic = value
            momentum = np.where(em, value, np.sqrt(value * (value + 2 * mass)))
        return BeamSample(pdg, kinetic, momentum, theta, phi,
                          self.entry[0] + spread[0], self.entry[1] + spread[1])
