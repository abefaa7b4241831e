"""Incident particles: species, energy spectra and directions (simulator, samplers and CLI).

Hadrons given by momentum get the kinetic energy ``T = sqrt(p^2 + m^2) - m``, the energy they
can deposit; electrons and photons are given by energy (their rest mass is negligible here).
Directions follow the CaloChallenge barrel convention: ``theta`` is the polar angle, pi/2 being
normal incidence on the calorimeter; the tilt from the layer normal is ``|pi/2 - theta|``.
Spectra are written in GeV on the command line: ``"50"`` (fixed), ``"1:1000"`` (a range,
uniform or log-uniform) and ``"64,128,256"`` (a discrete list).

This module describes incident particles and parses their options; it simulates nothing, so
the training and sampling code uses it without depending on :mod:`showerformer.simulation`
(whose :mod:`~showerformer.simulation.beams` re-exports these names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from showerformer.errors import InputError
from showerformer.showers import particle_pdg

__all__ = [
    "MAX_ENERGY_MEV",
    "MAX_TILT_RAD",
    "PARTICLES",
    "SPECTRUM_KINDS",
    "Particle",
    "Spectrum",
    "get_particle",
    "parse_angle",
    "parse_theta",
]


@dataclass(frozen=True)
class Particle:
    """A particle species.

    Attributes:
        name: command-line name (``"e-"``, ``"gamma"``, ``"pi+"``, ...).
        pdg: PDG Monte-Carlo id.
        mass: rest mass in MeV.
        charge: electric charge in units of e.
        kind: ``"em"`` (e+-, photons) or ``"hadron"``.
        lambda_factor: interaction length relative to the nucleon one (pions interact less).
    """

    name: str
    pdg: int
    mass: float
    charge: int
    kind: str
    lambda_factor: float = 1.0

    @property
    def is_em(self) -> bool:
        return self.kind == "em"


PARTICLES: dict[str, Particle] = {
    p.name: p
    for p in (
        Particle("e-", 11, 0.51099895, -1, "em"),
        Particle("e+", -11, 0.51099895, 1, "em"),
        Particle("gamma", 22, 0.0, 0, "em"),
        Particle("pi+", 211, 139.57039, 1, "hadron", 1.15),
        Particle("pi-", -211, 139.57039, -1, "hadron", 1.15),
        Particle("proton", 2212, 938.27209, 1, "hadron"),
        Particle("neutron", 2112, 939.56542, 0, "hadron"),
    )
}
"""Simulated species by name (PDG 2024 masses)."""

_BY_PDG = {p.pdg: p for p in PARTICLES.values()}


def get_particle(spec: str | int | Particle) -> Particle:
    """A particle by name, alias (``"photon"``, ``"p"``) or PDG id."""
    if isinstance(spec, Particle):
        return spec
    if isinstance(spec, str) and spec.strip().lower() in ("p", "n"):
        spec = {"p": "proton", "n": "neutron"}[spec.strip().lower()]
    try:
        pdg = particle_pdg(spec)
    except InputError:
        pdg = None
    if pdg is None or pdg not in _BY_PDG:
        raise InputError(f"particle {spec!r} cannot be simulated", key="particle",
                         expected=f"one of {', '.join(PARTICLES)}")
    return _BY_PDG[pdg]


SPECTRUM_KINDS = ("fixed", "uniform", "log-uniform", "discrete")
MAX_ENERGY_MEV = 1e8
"""Highest energy (or momentum) a spectrum may reach, 100 TeV: beyond any collider beam and the
range where the parametrizations were tuned (1 GeV - 4 TeV)."""


@dataclass(frozen=True)
class Spectrum:
    """An energy (or momentum) spectrum in MeV.

    Attributes:
        kind: ``"fixed"``, ``"uniform"``, ``"log-uniform"`` or ``"discrete"``.
        values: (value,) for fixed, (low, high) for ranges, the list for discrete.
    """

    kind: str
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        v = self.values
        if self.kind not in SPECTRUM_KINDS:
            raise InputError(f"unknown spectrum {self.kind!r}", key="spectrum",
                             expected=" or ".join(SPECTRUM_KINDS))
        if not v or any(not math.isfinite(x) or x <= 0 for x in v):
            raise InputError(f"spectrum values {list(v)}", key="energy",
                             expected="finite energies > 0")
        if max(v) > MAX_ENERGY_MEV:
            raise InputError(f"energy {max(v) / 1000:g} GeV", key="energy",
                             expected=f"at most {MAX_ENERGY_MEV / 1e6:g} TeV")
        if self.kind in ("uniform", "log-uniform") and (len(v) != 2 or v[0] > v[1]):
            raise InputError(f"{self.kind} spectrum over {list(v)}", key="energy",
                             expected="a range low:high with low <= high")
        if self.kind == "fixed" and len(v) != 1:
            raise InputError(f"fixed spectrum with {len(v)} values", key="energy",
                             expected="one value")

    @classmethod
    def parse(cls, text: str | float | Sequence[float], kind: str | None = None,
              unit: float = 1000.0) -> Spectrum:
        """Parse ``"50"``, ``"1:1000"`` or ``"64,128,256"`` (in GeV by default).

        Arguments:
            text: the specification, or a number, or a sequence of numbers.
            kind: the spectrum kind; default fixed for one value, log-uniform for a range,
                discrete for a list.
            unit: MeV per unit of the text (1000 for GeV).

        Returns:
            The :class:`Spectrum` in MeV.
        """
        if isinstance(text, int | float):
            parts, sep = [float(text)], ""
        elif not isinstance(text, str):
            parts, sep = [float(x) for x in text], ","
        else:
            s = text.strip()
            sep = ":" if ":" in s else ("," if "," in s else "")
            try:
                parts = [float(x) for x in (s.split(sep) if sep else [s])]
            except ValueError:
                raise InputError(f"cannot parse energy {text!r}", key="energy",
                                 expected="a value '50', a range '1:1000' or a list "
                                 "'64,128,256' (GeV)") from None
        values = tuple(x * unit for x in parts)
        if kind is None:
            kind = {"": "fixed", ":": "log-uniform", ",": "discrete"}[sep]
            if sep == "," and len(values) == 1:
                kind = "fixed"
        if kind == "fixed" and len(values) == 2 and sep == ":":
            raise InputError(f"a range {text!r} with spectrum 'fixed'", key="spectrum",
                             expected="uniform or log-uniform for a range")
        if kind in ("uniform", "log-uniform") and len(values) == 1:
            values = (values[0], values[0])
        if kind == "discrete" and sep == ":":
            raise InputError(f"a range {text!r} with spectrum 'discrete'", key="spectrum",
                             expected="a list '64,128,256' for a discrete spectrum")
        return cls(kind, values)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` values (MeV), (n,) float64."""
        v = self.values
        if self.kind == "fixed":
            return np.full(n, v[0])
        if self.kind == "uniform":
            return rng.uniform(v[0], v[1], n)
        if self.kind == "log-uniform":
            return np.exp(rng.uniform(math.log(v[0]), math.log(v[1]), n))
        return np.asarray(v)[rng.integers(0, len(v), n)]

    def describe(self, unit: float = 1000.0, name: str = "GeV") -> str:
        vals = [f"{x / unit:g}" for x in self.values]
        if self.kind == "fixed":
            return f"{vals[0]} {name}"
        if self.kind == "discrete":
            return f"{{{', '.join(vals)}}} {name}"
        return f"{self.kind} {vals[0]}-{vals[1]} {name}"


def parse_angle(text: str | float | Sequence[float] | None, default: tuple[float, float]
                ) -> tuple[float, float]:
    """An angle or angle range given in degrees (``"90"``, ``"70:90"``), returned in rad."""
    if text is None:
        return default
    try:
        if isinstance(text, str):
            parts = [float(x) for x in text.replace(",", ":").split(":")]
        elif isinstance(text, int | float):
            parts = [float(text)]
        else:
            parts = [float(x) for x in text]
    except ValueError:
        raise InputError(f"cannot parse angle {text!r}", key="theta",
                         expected="degrees, e.g. '90' or '70:90'") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] > parts[1] or not all(map(math.isfinite, parts)):
        raise InputError(f"angle range {text!r}", key="theta", expected="'low:high' in degrees")
    return (math.radians(parts[0]), math.radians(parts[1]))


MAX_TILT_RAD = 1.5
"""Largest tilt ``|pi/2 - theta|`` of the incident direction from the layer normal (86 deg):
beyond it a shower runs along the layers and the parametrization does not hold."""


def parse_theta(text: str | float | Sequence[float] | None, default: tuple[float, float],
                *, key: str = "theta") -> tuple[float, float]:
    """A polar angle or range in degrees (``"90"``, ``"70:90"``) -> radians, within the
    4-176 deg that the simulator supports (see :data:`MAX_TILT_RAD`).

    Arguments:
        text: the angle(s) in degrees, or None for ``default``.
        default: the range in rad returned for None (not checked).
        key: the option or key named in errors.

    Raises:
        InputError: an unparsable value, or an angle outside 4-176 deg.
    """
    if text is None:
        return default
    try:
        lo, hi = parse_angle(text, default)
    except InputError as exc:
        raise InputError(exc.what, path=exc.path, key=key, expected=exc.expected) from None
    if not (0 < lo and hi < math.pi and abs(math.pi / 2 - lo) < MAX_TILT_RAD
            and abs(math.pi / 2 - hi) < MAX_TILT_RAD):
        raise InputError(f"theta {text!r} deg", key=key,
                         expected="angles within 4-176 deg (90 = normal incidence)")
    return lo, hi
