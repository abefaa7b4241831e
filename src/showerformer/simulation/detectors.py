"""Sampling calorimeters built from material sheets, with derived shower constants and presets.

A :class:`SamplingCalorimeter` is a stack of :class:`Compartment` objects (e.g. an ECAL and an
HCAL), each a sequence of :class:`Layer` objects; a layer is a period of :class:`Sheet`
(material, thickness, active or not) repeated ``repeat`` times and read out as one readout
layer (or not read out: dead material). Everything a parametrized shower needs is derived from
the sheets: radiation and interaction lengths, Moliere radius, critical energy, GFlash sampling
frequency and e/mip, MIP and EM sampling fractions and the EM stochastic term (Wigmans).

Depth maps convert a depth z (mm from the front face, along the detector normal) into radiation
lengths and interaction lengths, piecewise linear between layer boundaries.

Energies are calibrated: a readout layer reports visible energy / EM sampling fraction, so a
contained electron shower reads about its energy. Thresholds and noise are specified on the
visible scale (as in hardware, e.g. 0.5 keV in the CaloChallenge silicon, which is the published
15.15 keV once divided by the sampling fraction 0.033).

References:
    CaloChallenge datasets 2/3 and Geant4 Par04 (arXiv:2410.21611); ILD ECAL and AHCAL
    (k4geo ILD_common_v02); R. Wigmans, Calorimetry (sampling fluctuations);
    G. Grindhammer, S. Peters, hep-ex/0001020.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from showerformer.errors import InputError
from showerformer.simulation.materials import (
    EffectiveMedium,
    Material,
    effective_medium,
    get_material,
)

__all__ = [
    "DETECTORS",
    "Compartment",
    "Layer",
    "SamplingCalorimeter",
    "Sheet",
    "get_detector",
]


@dataclass(frozen=True)
class Sheet:
    """One material sheet: ``thickness`` in mm, ``active`` when it is read out (sensor)."""

    material: Material
    thickness: float
    active: bool = False


def _sheet(name: str, thickness: float, active: bool = False) -> Sheet:
    return Sheet(get_material(name), float(thickness), active)


@dataclass(frozen=True)
class Layer:
    """A period of sheets repeated ``repeat`` times, forming one readout layer.

    Attributes:
        sheets: the period, front to back.
        repeat: number of periods in the layer.
        readout: False for dead material (no readout layer id).
    """

    sheets: tuple[Sheet, ...]
    repeat: int = 1
    readout: bool = True

    @property
    def thickness(self) -> float:
        """Layer thickness in mm."""
        return self.repeat * sum(s.thickness for s in self.sheets)

    @cached_property
    def medium(self) -> EffectiveMedium:
        """The GFlash effective medium of the period."""
        return effective_medium([(s.material, s.thickness, s.active) for s in self.sheets])


@dataclass(frozen=True)
class Compartment:
    """A group of layers sharing a calorimeter technology (e.g. the ECAL).

    Attributes:
        name: label.
        layers: front to back.
        e_over_h: ratio of EM to non-EM hadronic response (> 1: non-compensating).
        stochastic_term: EM stochastic term in sqrt(GeV); None derives it per layer (Wigmans).
        em_sampling_fraction: visible / deposited energy of EM showers; None derives
            mip fraction x e/mip per layer (GFlash e/mip).
        hadronic_sampling_factor: hadronic sampling fluctuations relative to EM ones.
        layer_ids: readout-layer ids of the read-out layers (default: numbered on).
    """

    name: str
    layers: tuple[Layer, ...]
    e_over_h: float = 1.3
    stochastic_term: float | None = None
    em_sampling_fraction: float | None = None
    hadronic_sampling_factor: float = 1.7
    layer_ids: tuple[int, ...] | None = None

    @cached_property
    def medium(self) -> EffectiveMedium:
        """Effective medium of the compartment: all sheets of all layers homogenized, with the
        mean period (pitch, active thickness, sampling frequency) of its layers."""
        sheets = [(s.material, s.thickness * lay.repeat, s.active)
                  for lay in self.layers for s in lay.sheets]
        med = effective_medium(sheets)
        n_periods = sum(lay.repeat for lay in self.layers)
        pitch = med.pitch / n_periods
        return replace(med, pitch=pitch, f_s=med.x0_mm / pitch,
                       active_mm=med.active_mm / n_periods)


@dataclass(frozen=True, eq=False)
class SamplingCalorimeter:
    """A longitudinally segmented sampling calorimeter.

    Arguments:
        name: label, e.g. ``"cc-wsi"``.
        compartments: front to back.
        threshold: readout threshold per cell on the visible scale, MeV.
        noise: Gaussian electronic noise per cell on the visible scale, MeV (0: none).
        half_width: transverse half size in mm (None: laterally infinite); energy outside
            leaks.
        description: one line for humans.
    """

    name: str
    compartments: tuple[Compartment, ...]
    threshold: float = 0.0
    noise: float = 0.0
    half_width: float | None = None
    description: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ per-layer arrays
    def _layer_table(self) -> dict[str, np.ndarray]:
        if "table" in self._cache:
            return self._cache["table"]
        rows: list[dict[str, float]] = []
        z = 0.0
        next_id = 0
        for ci, comp in enumerate(self.compartments):
            ids = list(comp.layer_ids) if comp.layer_ids is not None else None
            n_read = sum(1 for lay in comp.layers if lay.readout)
            if ids is not None and len(ids) != n_read:
                raise InputError(f"compartment {comp.name}: {len(ids)} layer ids for {n_read} "
                                 "read-out layers", key="layer_ids", expected="one id per layer")
            k = 0
            for lay in comp.layers:
                med = lay.medium
                if lay.readout:
                    rid = ids[k] if ids is not None else next_id
                    k += 1
                    next_id = rid + 1
                else:
                    rid = -1
                f_em = (comp.em_sampling_fraction if comp.em_sampling_fraction is not None
                        else med.mip_fraction * med.e_mip)
                c = (comp.stochastic_term if comp.stochastic_term is not None
                     else med.wigmans_stochastic)
                t = lay.thickness
                rows.append({
                    "z0": z, "z1": z + t, "readout": rid, "compartment": ci,
                    "x0": t / med.x0_mm, "lam": t / med.lambda_mm,
                    # lateral scales of the compartment's average medium: a shower spreads
                    # over many layers, so thin dense and wide light layers share one scale
                    "moliere": comp.medium.moliere_mm, "lambda_mm": comp.medium.lambda_mm,
                    "f_em": f_em if med.active_mm > 0 else np.nan,
                    "f_mip": med.mip_fraction, "e_mip": med.e_mip, "c": c,
                    "mip": med.dedx_mm * t, "dedx": med.dedx_mm,
                    "mip_response": (med.mip_fraction / f_em
                                     if med.active_mm > 0 and f_em > 0 else 1.0),
                })
                z += t
        table = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        table["readout"] = table["readout"].astype(np.int64)
        table["compartment"] = table["compartment"].astype(np.int64)
        self._cache["table"] = table
        return table

    @property
    def n_layers(self) -> int:
        """Number of physical layers (read out or dead)."""
        return len(self._layer_table()["z0"])

    @property
    def n_readout(self) -> int:
        """Number of readout-layer ids (the largest id + 1)."""
        return int(self._layer_table()["readout"].max()) + 1

    @property
    def depth(self) -> float:
        """Total depth in mm."""
        return float(self._layer_table()["z1"][-1])

    @property
    def total_x0(self) -> float:
        """Total depth in radiation lengths."""
        return float(self._layer_table()["x0"].sum())

    @property
    def total_lambda(self) -> float:
        """Total depth in interaction lengths."""
        return float(self._layer_table()["lam"].sum())

    def layer_array(self, key: str) -> np.ndarray:
        """Per physical layer: ``z0``, ``z1`` (mm), ``readout`` id (-1 dead), ``compartment``,
        ``x0``/``lam`` (thickness in X0 / lambda), ``moliere``/``lambda_mm`` (mm, of the
        compartment's average medium), ``f_em``,
        ``f_mip``, ``e_mip``, ``c`` (EM stochastic term), ``mip`` (MIP loss, MeV), ``dedx``
        (MeV/mm), ``mip_response`` (calibrated signal per MeV of MIP loss, f_mip / f_em)."""
        return self._layer_table()[key]

    def readout_edges(self) -> np.ndarray:
        """(n_readout, 2) depth interval in mm of each readout id (NaN when an id is unused)."""
        tab = self._layer_table()
        out = np.full((self.n_readout, 2), np.nan)
        for rid in range(self.n_readout):
            sel = tab["readout"] == rid
            if sel.any():
                out[rid] = tab["z0"][sel].min(), tab["z1"][sel].max()
        return out

    def readout_array(self, key: str, reduce: Callable[[np.ndarray], float] = np.mean
                      ) -> np.ndarray:
        """A per-layer quantity (see :meth:`layer_array`) per readout id (NaN for unused ids)."""
        tab = self._layer_table()
        out = np.full(self.n_readout, np.nan)
        for rid in range(self.n_readout):
            sel = tab["readout"] == rid
            if sel.any():
                out[rid] = reduce(tab[key][sel])
        return out

    def compartment_array(self, key: str) -> np.ndarray:
        """Per compartment: ``z_eff``, ``f_s``, ``e_mip``, ``e_critical``, ``moliere_mm``,
        ``stochastic`` (EM, sqrt(GeV)), ``e_over_h``, ``hadronic_factor``."""
        ck = f"comp_{key}"
        if ck in self._cache:
            return self._cache[ck]
        tab = self._layer_table()
        vals = []
        for ci, comp in enumerate(self.compartments):
            m = comp.medium
            if key == "stochastic":
                sel = (tab["compartment"] == ci) & (tab["readout"] >= 0)
                v = (comp.stochastic_term if comp.stochastic_term is not None else
                     float(np.average(tab["c"][sel], weights=tab["x0"][sel])) if sel.any()
                     else m.wigmans_stochastic)
            elif key == "e_over_h":
                v = comp.e_over_h
            elif key == "hadronic_factor":
                v = comp.hadronic_sampling_factor
            else:
                v = {"z_eff": m.z, "f_s": m.f_s, "e_mip": m.e_mip, "e_critical": m.e_critical,
                     "moliere_mm": m.moliere_mm}[key]
            vals.append(v)
        self._cache[ck] = np.asarray(vals, dtype=np.float64)
        return self._cache[ck]

    def shower_compartment(self) -> np.ndarray:
        """Per physical layer: the compartment whose medium parametrizes a shower starting
        there, the first one at or behind the layer with at least 3 X0 (dead material and thin
        presamplers in front of a calorimeter take the calorimeter's parameters)."""
        if "shower_comp" not in self._cache:
            tab = self._layer_table()
            comp_x0 = np.array([tab["x0"][tab["compartment"] == ci].sum()
                                for ci in range(len(self.compartments))])
            choice = np.arange(len(self.compartments))
            thick = np.flatnonzero(comp_x0 >= 3.0)
            for ci in range(len(self.compartments)):
                later = thick[thick >= ci]
                choice[ci] = later[0] if len(later) else (thick[-1] if len(thick) else ci)
            self._cache["shower_comp"] = choice[tab["compartment"]]
        return self._cache["shower_comp"]

    def sampling_fraction(self) -> np.ndarray:
        """EM sampling fraction (visible / deposited) per readout id."""
        return self.readout_array("f_em")

    # ------------------------------------------------------------------ depth maps
    def _knots(self, unit: str) -> tuple[np.ndarray, np.ndarray]:
        key = f"knots_{unit}"
        if key not in self._cache:
            tab = self._layer_table()
            z = np.concatenate([[0.0], tab["z1"]])
            per = tab["x0"] if unit == "x0" else tab["lam"]
            self._cache[key] = (z, np.concatenate([[0.0], np.cumsum(per)]))
        return self._cache[key]

    def to_units(self, z: np.ndarray, unit: str = "x0") -> np.ndarray:
        """Depth z in mm -> cumulative radiation lengths (``"x0"``) or interaction lengths
        (``"lambda"``); linear extrapolation beyond the back with the last layer's slope."""
        zk, tk = self._knots(unit)
        z = np.asarray(z, dtype=np.float64)
        out = np.interp(z, zk, tk)
        slope = (tk[-1] - tk[-2]) / (zk[-1] - zk[-2])
        front = z * (tk[1] / zk[1])
        return np.where(z > zk[-1], tk[-1] + (z - zk[-1]) * slope, np.where(z < 0, front, out))

    def from_units(self, t: np.ndarray, unit: str = "x0") -> np.ndarray:
        """Inverse of :meth:`to_units`: radiation or interaction lengths -> depth in mm."""
        zk, tk = self._knots(unit)
        t = np.asarray(t, dtype=np.float64)
        out = np.interp(t, tk, zk)
        slope = (zk[-1] - zk[-2]) / (tk[-1] - tk[-2])
        front = t * (zk[1] / tk[1])
        return np.where(t > tk[-1], zk[-1] + (t - tk[-1]) * slope, np.where(t < 0, front, out))

    def layer_of_depth(self, z: np.ndarray) -> np.ndarray:
        """Physical layer index of depths z (mm); -1 in front of or behind the calorimeter."""
        tab = self._layer_table()
        z = np.asarray(z, dtype=np.float64)
        idx = np.searchsorted(tab["z1"], z, side="right")
        return np.where((z < 0) | (idx >= len(tab["z1"])), -1, idx)

    def readout_of_depth(self, z: np.ndarray) -> np.ndarray:
        """Readout id of depths z (mm); -1 in dead material or outside."""
        layer = self.layer_of_depth(z)
        return np.where(layer >= 0, self._layer_table()["readout"][np.maximum(layer, 0)], -1)

    # ------------------------------------------------------------------ summaries
    def summary(self) -> dict[str, Any]:
        """Derived constants per compartment and in total (for documentation and tests)."""
        comps = []
        for comp in self.compartments:
            m = comp.medium
            lays = [lay for lay in comp.layers if lay.readout]
            c = (comp.stochastic_term if comp.stochastic_term is not None
                 else (m.wigmans_stochastic if lays else 0.0))
            comps.append({
                "name": comp.name, "layers": len(comp.layers), "readout_layers": len(lays),
                "depth_mm": sum(lay.thickness for lay in comp.layers),
                "x0": sum(lay.thickness / lay.medium.x0_mm for lay in comp.layers),
                "lambda": sum(lay.thickness / lay.medium.lambda_mm for lay in comp.layers),
                "z_eff": m.z, "density": m.density, "x0_mm": m.x0_mm,
                "lambda_mm": m.lambda_mm, "moliere_mm": m.moliere_mm,
                "e_critical": m.e_critical, "f_s": m.f_s, "e_mip": m.e_mip,
                "mip_fraction": m.mip_fraction,
                "em_sampling_fraction": (comp.em_sampling_fraction
                                         if comp.em_sampling_fraction is not None
                                         else m.mip_fraction * m.e_mip),
                "stochastic_term": c, "e_over_h": comp.e_over_h,
            })
        return {"name": self.name, "depth_mm": self.depth, "x0": self.total_x0,
                "lambda": self.total_lambda, "readout_layers": self.n_readout,
                "threshold_visible_mev": self.threshold, "noise_visible_mev": self.noise,
                "compartments": comps}

    def describe(self) -> str:
        """One line: name, depth in mm, X0 and lambda, readout layers."""
        return (f"{self.name}: {self.depth:.1f} mm = {self.total_x0:.1f} X0 = "
                f"{self.total_lambda:.2f} lambda, {self.n_readout} readout layers")

    def __repr__(self) -> str:
        return f"<SamplingCalorimeter {self.describe()}>"


# ---------------------------------------------------------------------------- presets
def _cc_wsi() -> SamplingCalorimeter:
    # CaloChallenge ds2/ds3 and Par04: 90 x (1.4 mm W + 0.3 mm Si), read out in 45 layers of
    # two physical layers; published calibration: Si energy / 0.033; threshold 0.5 keV in Si
    # (15.15 keV calibrated).
    layer = Layer((_sheet("W", 1.4), _sheet("Si", 0.3, True)), repeat=2)
    ecal = Compartment("ecal", (layer,) * 45, e_over_h=1.4, em_sampling_fraction=0.033)
    return SamplingCalorimeter("cc-wsi", (ecal,), threshold=0.01515 * 0.033,
                               description="CaloChallenge ds2/ds3 / Par04 Si-W ECAL, "
                               "45 x 2 x (1.4 mm W + 0.3 mm Si)")


def _ild_ecal() -> SamplingCalorimeter:
    # ILD Si-W ECAL: 20 x 2.1 mm + 10 x 4.2 mm W, 0.525 mm Si; each readout layer is one W plate
    # with material and the sensor behind it. The sensors sit at the Geant4 positions of the
    # CaloClouds ILD model (showerformer.ild.ILD_ECAL, first sensor 6.64 mm behind the front
    # face, then pitches alternating 3.125 / 9.345 mm with thin W and 5.225 / 11.445 mm with
    # thick W): a thin gap inside a slab (W, glue and carbon, Si) alternates with a wide gap
    # between slabs (PCB 1.0, Cu 0.4, ASIC 0.7 mm on each side, carbon-fibre walls).
    def small(w: float) -> Layer:
        return Layer((_sheet("W", w), _sheet("G10", 0.5), _sheet("Si", 0.525, True)))

    def wide(w: float) -> Layer:
        return Layer((_sheet("W", w), _sheet("G10", 2.12), _sheet("G10", 2.0),
                      _sheet("Cu", 0.8), _sheet("G10", 1.4), _sheet("Air", 0.4),
                      _sheet("Si", 0.525, True)))

    first = Layer((_sheet("W", 2.1), _sheet("G10", 1.6), _sheet("Cu", 0.4), _sheet("G10", 2.54),
                   _sheet("Si", 0.525, True)))
    thin = (first, *tuple(small(2.1) if i % 2 else wide(2.1) for i in range(1, 20)))
    thick = tuple(small(4.2) if i % 2 else wide(4.2) for i in range(20, 30))
    return SamplingCalorimeter(
        "ild-ecal",
        (Compartment("ecal-thin", thin, e_over_h=1.4),
         Compartment("ecal-thick", thick, e_over_h=1.4)),
        threshold=0.5 * 0.7 * get_material("Si").mip_loss(0.525),  # 0.5 MIP (most probable)
        half_width=None,
        description="ILD-like Si-W ECAL, 20 x 2.1 mm + 10 x 4.2 mm W, 0.525 mm Si, 30 layers",
    )


def _pb_scint() -> SamplingCalorimeter:
    # Shashlik-like Pb/scintillator ECAL (LHCb-like sampling): 66 x (2 mm Pb + 4 mm
    # polystyrene + 0.12 mm paper-like G10), read out in 33 layers of two periods.
    layer = Layer((_sheet("Pb", 2.0), _sheet("G10", 0.12), _sheet("Polystyrene", 4.0, True)),
                  repeat=2)
    ecal = Compartment("ecal", (layer,) * 33, e_over_h=1.1)
    return SamplingCalorimeter("pb-scint", (ecal,),
                               threshold=0.5 * 0.8 * get_material("Polystyrene").mip_loss(4.0),
                               description="Pb/scintillator ECAL, 66 x (2 mm Pb + 4 mm "
                               "scintillator), 33 readout layers")


def _fe_scint(n_layers: int = 64, periods: int = 1, half_width: float | None = 320.0
              ) -> SamplingCalorimeter:
    # ILD AHCAL-like: 20 mm steel + 6.5 mm chamber (2 x 0.5 mm steel cassette, 3 mm
    # polystyrene tiles, 0.7 mm PCB, 1.5 mm cables approximated as G10, 0.3 mm air): 26.5 mm.
    period = (_sheet("Fe", 20.0), _sheet("Fe", 0.5), _sheet("Polystyrene", 3.0, True),
              _sheet("G10", 0.7), _sheet("G10", 1.5), _sheet("Fe", 0.5), _sheet("Air", 0.3))
    hcal = Compartment("hcal", (Layer(period, repeat=periods),) * n_layers, e_over_h=1.3)
    name = "fe-scint" if periods == 1 else f"fe-scint-{n_layers}"
    return SamplingCalorimeter(
        name, (hcal,), threshold=0.5 * 0.8 * get_material("Polystyrene").mip_loss(3.0),
        half_width=half_width,
        description=f"Fe/scintillator HCAL (ILD AHCAL-like), {n_layers} layers of "
                    f"{periods} x (20 mm steel + 6.5 mm chamber with 3 mm scintillator)")


def _atlas_like() -> SamplingCalorimeter:
    # An ATLAS-barrel-like stack at |eta| ~ 0.2 for CaloChallenge dataset 1: about 2 X0 of dead
    # material, LAr presampler (sampling 0), Pb/LAr accordion (samplings 1-3, 4.3 / 16 / 2 X0),
    # cryostat, Fe/scintillator tile calorimeter (samplings 12-14, 1.5 / 4.1 / 1.8 lambda).
    acc = (_sheet("Pb", 1.53), _sheet("Fe", 0.4), _sheet("LAr", 4.2, True), _sheet("Kapton", 0.3))
    tile = (_sheet("Fe", 14.0), _sheet("Polystyrene", 3.0, True))
    dead_front = Compartment("dead-front", (Layer((_sheet("Al", 178.0),), readout=False),))
    presampler = Compartment("presampler", (Layer((_sheet("LAr", 11.0, True),)),),
                             layer_ids=(0,))
    dead_mid = Compartment("dead-mid", (Layer((_sheet("Al", 45.0),), readout=False),))
    ecal = Compartment("lar-em", (Layer(acc, repeat=13), Layer(acc, repeat=49),
                                  Layer(acc, repeat=6)), e_over_h=1.35, layer_ids=(1, 2, 3))
    cryo = Compartment("cryostat", (Layer((_sheet("Al", 120.0),), readout=False),))
    tilecal = Compartment("tile", (Layer(tile, repeat=17), Layer(tile, repeat=47),
                                   Layer(tile, repeat=21)), e_over_h=1.33,
                          layer_ids=(12, 13, 14))
    return SamplingCalorimeter(
        "atlas-like", (dead_front, presampler, dead_mid, ecal, cryo, tilecal),
        threshold=0.0,
        description="ATLAS-barrel-like: LAr presampler, Pb/LAr accordion (3 samplings), "
                    "Fe/scintillator tiles (3 samplings); CaloChallenge ds1 sampling ids")


DETECTORS: dict[str, Callable[[], SamplingCalorimeter]] = {
    "cc-wsi": _cc_wsi,
    "ild-ecal": _ild_ecal,
    "pb-scint": _pb_scint,
    "fe-scint": _fe_scint,
    "fe-scint-32": lambda: _fe_scint(32, 2, 320.0),
    "atlas-like": _atlas_like,
}
"""Named detector presets; :func:`get_detector` builds them."""


def get_detector(spec: str | SamplingCalorimeter) -> SamplingCalorimeter:
    """A detector preset by name (see :data:`DETECTORS`) or itself."""
    if isinstance(spec, SamplingCalorimeter):
        return spec
    try:
        return DETECTORS[spec]()
    except KeyError:
        raise InputError(f"unknown detector {spec!r}", key="detector",
                         expected=f"one of {', '.join(DETECTORS)}") from None

