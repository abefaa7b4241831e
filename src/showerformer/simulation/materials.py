"""Materials with PDG constants and the effective-medium rules of sampling calorimeters.

Every quantity is stored in the units the PDG tables use (g/cm^2 for X0 and lambda_I, MeV for
the critical energy, MeV cm^2/g for the minimum ionization loss); the properties ending in
``_mm`` convert to lengths in mm with the density.

The effective medium of a stack of sheets follows the GFlash rules (Grindhammer & Peters,
hep-ex/0001020, appendix A.2) with two known Geant4 pitfalls avoided: the critical energies are
PDG values (not ``2.66 (X0 Z/A)^1.1`` evaluated with X0 in mm) and the effective critical energy
and Moliere radius are mass-weighted in g/cm^2 (the PDG mixture rule), not weighted by density.

References:
    Particle Data Group, Review of Particle Physics, "Passage of particles through matter" and
    "Atomic and nuclear properties of materials"; G. Grindhammer, S. Peters, hep-ex/0001020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from showerformer.errors import InputError

__all__ = [
    "E_S",
    "MATERIALS",
    "EffectiveMedium",
    "Material",
    "effective_medium",
    "get_material",
    "mixture",
]

E_S = 21.2052
"""Scale energy sqrt(4 pi / alpha) m_e c^2 in MeV, used in R_M = X0 E_s / E_c."""


@dataclass(frozen=True)
class Material:
    """A homogeneous material with the constants a parametrized shower needs.

    Attributes:
        name: label, e.g. ``"W"``.
        z: atomic number (mass-weighted effective value for compounds).
        a: atomic mass in g/mol (mass-weighted effective value for compounds).
        density: g/cm^3.
        x0: radiation length in g/cm^2.
        lambda_i: nuclear interaction length in g/cm^2.
        e_critical: critical energy for electrons in MeV (Rossi definition, PDG).
        dedx_min: minimum ionization loss in MeV cm^2/g.
    """

    name: str
    z: float
    a: float
    density: float
    x0: float
    lambda_i: float
    e_critical: float
    dedx_min: float

    @property
    def x0_mm(self) -> float:
        """Radiation length in mm."""
        return 10.0 * self.x0 / self.density

    @property
    def lambda_mm(self) -> float:
        """Nuclear interaction length in mm."""
        return 10.0 * self.lambda_i / self.density

    @property
    def moliere_radius(self) -> float:
        """Moliere radius in g/cm^2, X0 E_s / E_c."""
        return self.x0 * E_S / self.e_critical

    @property
    def moliere_mm(self) -> float:
        """Moliere radius in mm."""
        return 10.0 * self.moliere_radius / self.density

    def mip_loss(self, thickness_mm: float) -> float:
        """Mean energy (MeV) a minimum-ionizing particle loses crossing ``thickness_mm``."""
        return self.dedx_min * self.density * thickness_mm / 10.0


# PDG values (W, Pb, Fe, Cu, Si, polystyrene, air from the project fact sheet; LAr, Al,
# Kapton, G10 and the cable mix are PDG values quoted from memory or estimates: see
# docs/simulator.md).
MATERIALS: dict[str, Material] = {
    m.name: m
    for m in (
        Material("W", 74, 183.84, 19.30, 6.76, 191.9, 7.97, 1.145),
        Material("Pb", 82, 207.2, 11.35, 6.37, 199.6, 7.43, 1.122),
        Material("Fe", 26, 55.845, 7.874, 13.84, 132.1, 21.68, 1.451),
        Material("Cu", 29, 63.546, 8.96, 12.86, 137.3, 19.42, 1.403),
        Material("Al", 13, 26.98, 2.699, 24.01, 107.2, 42.70, 1.615),
        Material("Si", 14, 28.0855, 2.329, 21.82, 108.4, 40.19, 1.664),
        Material("LAr", 18, 39.948, 1.396, 19.55, 119.7, 32.84, 1.508),
        # polystyrene scintillator (C8H8)n: GFlash Z_eff = sum w_i Z_i
        Material("Polystyrene", 5.61, 11.16, 1.060, 43.79, 81.7, 93.11, 1.936),
        Material("Kapton", 6.46, 12.7, 1.42, 40.58, 85.8, 79.0, 1.820),
        # FR4/G10 printed circuit board (estimate; X0 as the ILD 'PCB' class of materials)
        Material("G10", 10.6, 21.5, 1.70, 27.5, 92.0, 50.0, 1.87),
        Material("Air", 7.31, 14.7, 1.205e-3, 36.62, 90.1, 87.92, 1.815),
    )
}
"""Built-in materials by name."""


def get_material(name: str | Material) -> Material:
    """A material by name (see :data:`MATERIALS`) or itself."""
    if isinstance(name, Material):
        return name
    try:
        return MATERIALS[name]
    except KeyError:
        raise InputError(f"unknown material {name!r}", key="material",
                         expected=f"one of {', '.join(MATERIALS)}") from None


def mixture(name: str, parts: Sequence[tuple[Material | str, float]], density: float) -> Material:
    """A homogeneous compound from mass fractions (PDG mixture rules).

    ``1/X0 = sum w_j / X0_j`` and ``1/lambda = sum w_j / lambda_j`` in g/cm^2; the critical
    energy follows from ``E_c / X0 = sum w_j E_cj / X0_j``; Z and A are mass-weighted (GFlash).

    Arguments:
        name: label of the compound.
        parts: (material, mass fraction) pairs; fractions are normalized.
        density: g/cm^3 of the compound.

    Returns:
        The compound as a :class:`Material`.
    """
    mats = [get_material(m) for m, _ in parts]
    w = [float(f) for _, f in parts]
    if not mats or min(w) < 0 or sum(w) <= 0:
        raise InputError(f"mixture {name!r} with fractions {w}", key="parts",
                         expected="positive mass fractions")
    total = sum(w)
    w = [x / total for x in w]
    inv_x0 = sum(wi / m.x0 for wi, m in zip(w, mats, strict=True))
    inv_lam = sum(wi / m.lambda_i for wi, m in zip(w, mats, strict=True))
    ec_over_x0 = sum(wi * m.e_critical / m.x0 for wi, m in zip(w, mats, strict=True))
    return Material(
        name=name,
        z=sum(wi * m.z for wi, m in zip(w, mats, strict=True)),
        a=sum(wi * m.a for wi, m in zip(w, mats, strict=True)),
        density=density,
        x0=1.0 / inv_x0,
        lambda_i=1.0 / inv_lam,
        e_critical=ec_over_x0 / inv_x0,
        dedx_min=sum(wi * m.dedx_min for wi, m in zip(w, mats, strict=True)),
    )


@dataclass(frozen=True)
class EffectiveMedium:
    """Homogenized properties of one period of a sampling structure (GFlash A.2).

    Attributes:
        z: mass-weighted atomic number Z_eff.
        a: mass-weighted atomic mass A_eff.
        density: g/cm^3, thickness-weighted.
        x0_mm, lambda_mm, moliere_mm: radiation length, interaction length, Moliere radius in mm.
        e_critical: effective critical energy in MeV.
        dedx_mm: mean minimum ionization loss per mm of the period in MeV/mm.
        pitch: period length in mm.
        f_s: sampling frequency X0_eff / pitch (GFlash's F_S).
        e_mip: GFlash e/mip ratio 1 / (1 + 0.007 (Z_passive - Z_active)).
        mip_fraction: fraction of a MIP's energy loss seen in the active sheets.
        active_mm: total active thickness per period in mm.
    """

    z: float
    a: float
    density: float
    x0_mm: float
    lambda_mm: float
    moliere_mm: float
    e_critical: float
    dedx_mm: float
    pitch: float
    f_s: float
    e_mip: float
    mip_fraction: float
    active_mm: float

    @property
    def wigmans_stochastic(self) -> float:
        """EM stochastic term sqrt(GeV) from 2.7% sqrt(d_active[mm] / f_mip) (Wigmans)."""
        if self.active_mm <= 0 or self.mip_fraction <= 0:
            return 0.0
        return 0.027 * math.sqrt(self.active_mm / self.mip_fraction)


def effective_medium(sheets: Sequence[tuple[Material, float, bool]]) -> EffectiveMedium:
    """GFlash effective medium of one period of (material, thickness mm, is_active) sheets.

    Mass weights ``w_i = d_i rho_i / sum d_j rho_j``; ``Z_eff``, ``A_eff`` mass-weighted;
    ``1/X0 = sum w_i / X0_i`` in g/cm^2; ``E_c = X0 sum w_i E_ci / X0_i``;
    ``R_M = E_s / sum w_i E_ci / X0_i`` (g/cm^2, then divided by the mean density), which is
    the PDG mixture rule (the Geant4 implementation weights by length instead, see
    docs/simulator.md).

    Arguments:
        sheets: the sheets of one period; at least one with positive thickness.

    Returns:
        The :class:`EffectiveMedium`.

    References:
        hep-ex/0001020 (appendix A.2); PDG RPP, "Passage of particles through matter".
    """
    sheets = [(get_material(m), float(d), bool(act)) for m, d, act in sheets if d > 0]
    if not sheets:
        raise InputError("a sampling period without material", key="sheets",
                         expected="at least one sheet with thickness > 0 mm")
    mass = [m.density * d for m, d, _ in sheets]  # g/cm^3 * mm, proportional to g/cm^2
    total_mass = sum(mass)
    pitch = sum(d for _, d, _ in sheets)
    w = [x / total_mass for x in mass]
    density = total_mass / pitch
    inv_x0 = sum(wi / m.x0 for wi, (m, _, _) in zip(w, sheets, strict=True))
    inv_lam = sum(wi / m.lambda_i for wi, (m, _, _) in zip(w, sheets, strict=True))
    ec_over_x0 = sum(wi * m.e_critical / m.x0 for wi, (m, _, _) in zip(w, sheets, strict=True))
    x0 = 1.0 / inv_x0
    x0_mm = 10.0 * x0 / density
    moliere_mm = 10.0 * (E_S / ec_over_x0) / density
    loss = [m.mip_loss(d) for m, d, _ in sheets]
    active_loss = sum(lo for lo, (_, _, act) in zip(loss, sheets, strict=True) if act)
    active_mm = sum(d for _, d, act in sheets if act)

    def zmean(active: bool) -> float:
        ms = [(mi, m.z) for mi, (m, _, act) in zip(mass, sheets, strict=True) if act == active]
        tot = sum(mi for mi, _ in ms)
        return sum(mi * z for mi, z in ms) / tot if tot > 0 else float("nan")

    z_act, z_pas = zmean(True), zmean(False)
    e_mip = 1.0 if math.isnan(z_act) or math.isnan(z_pas) else 1.0 / (1 + 0.007 * (z_pas - z_act))
    return EffectiveMedium(
        z=sum(wi * m.z for wi, (m, _, _) in zip(w, sheets, strict=True)),
        a=sum(wi * m.a for wi, (m, _, _) in zip(w, sheets, strict=True)),
        density=density,
        x0_mm=x0_mm,
        lambda_mm=10.0 * (1.0 / inv_lam) / density,
        moliere_mm=moliere_mm,
        e_critical=x0 * ec_over_x0,
        dedx_mm=sum(loss) / pitch,
        pitch=pitch,
        f_s=x0_mm / pitch,
        e_mip=e_mip,
        mip_fraction=active_loss / sum(loss),
        active_mm=active_mm,
    )
