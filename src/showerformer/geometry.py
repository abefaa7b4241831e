"""Calorimeter geometries as data: cylindrical (CaloChallenge XML, ds1/ds2/ds3, Par04), Cartesian.

Every geometry flattens its cells into one axis of ``n_cells`` in a fixed order and offers cell
centres, volumes, a vectorized map from continuous hit positions to cells and the inverse
(uniform dequantization inside a cell). Coordinates are local to the shower: ``z`` is the depth
along the incident axis, measured from the calorimeter's front face, ``x`` and ``y`` are
transverse; all lengths in mm. Every geometry also carries the readout threshold of its
detector (``readout_threshold_mev``); the presets set the CaloChallenge ones.

This module is where all geometries meet: the base class lives in
:mod:`showerformer.geometry_base` (re-exported here), the ILD geometry in
:mod:`showerformer.ild`, which depends on the base only; this module imports both and names
every preset, ``"ild-ecal"`` included, so importing it is all :func:`get_geometry`,
:data:`PRESETS` and :meth:`Geometry.from_dict` need, and no import cycle exists.

References:
    CaloChallenge 2022 datasets and binning files, https://calochallenge.github.io/homepage/
    (arXiv:2410.21611).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from showerformer.errors import InputError
from showerformer.geometry_base import Geometry, check_readout_threshold, register_kind
from showerformer.ild import ILDGeometry

__all__ = [
    "DS1_THRESHOLD",
    "DS23_THRESHOLD",
    "PRESETS",
    "READOUT_THRESHOLDS",
    "CartesianGeometry",
    "CylindricalGeometry",
    "CylindricalLayer",
    "Geometry",
    "geometry_for_cells",
    "get_geometry",
]


@dataclass(frozen=True, eq=False)
class CylindricalLayer:
    """One layer of a cylindrical (r, alpha) binning.

    Arguments:
        r_edges: radial bin edges in mm, (n_r + 1,); a single edge ``[0]`` makes an empty layer
            (``r_edges="0"`` in the CaloChallenge XML).
        n_alpha: number of equal angular bins covering [-pi, pi].
    """

    r_edges: np.ndarray
    n_alpha: int

    @property
    def n_r(self) -> int:
        return len(self.r_edges) - 1

    @property
    def n_cells(self) -> int:
        return self.n_r * self.n_alpha if self.n_r > 0 else 0

    @property
    def alpha_edges(self) -> np.ndarray:
        return np.linspace(-math.pi, math.pi, self.n_alpha + 1)


@register_kind("cylindrical")
class CylindricalGeometry(Geometry):
    """Layers of concentric (r, alpha) bins around the shower axis, CaloChallenge style.

    Cells are flattened in the order (layer, alpha, r), r fastest, exactly as the CaloChallenge
    files; alpha bins are centred on equal divisions of [-pi, pi]; ``eta = r cos(alpha)`` and
    ``phi = r sin(alpha)`` with r the bin midpoint (as in the official ``XMLHandler``).

    Arguments:
        layers: one :class:`CylindricalLayer` per layer (empty layers included, so that layer
            index = layer id).
        z_edges: layer boundaries in depth (mm), (n_layers + 1,). Defaults to unit-thickness
            layers (``layer_thickness`` mm each), as the XML files carry no depth.
        name: a label such as ``"ds2"``.
        readout_threshold_mev: smallest cell energy the readout records, MeV (0: all).
    """

    def __init__(
        self,
        layers: Sequence[CylindricalLayer],
        *,
        z_edges: np.ndarray | None = None,
        layer_thickness: float = 1.0,
        name: str = "cylindrical",
        readout_threshold_mev: float = 0.0,
    ) -> None:
        self.layers = list(layers)
        self.name = name
        self.readout_threshold_mev = check_readout_threshold(readout_threshold_mev)
        n_layers = len(self.layers)
        if z_edges is None:
            z_edges = np.arange(n_layers + 1, dtype=np.float64) * layer_thickness
        self.z_edges = np.asarray(z_edges, dtype=np.float64)
        if self.z_edges.shape != (n_layers + 1,) or np.any(np.diff(self.z_edges) <= 0):
            raise InputError(
                f"z_edges of shape {self.z_edges.shape} for {n_layers} layers",
                key="z_edges", expected=f"{n_layers + 1} increasing depths",
            )
        for i, lay in enumerate(self.layers):
            if lay.n_r > 0 and (np.any(np.diff(lay.r_edges) <= 0) or lay.r_edges[0] < 0):
                raise InputError(f"layer {i}: r_edges {lay.r_edges.tolist()} not increasing",
                                 key="r_edges", expected="increasing radii >= 0")
            if lay.n_alpha < 1:
                raise InputError(f"layer {i}: n_bin_alpha={lay.n_alpha}", key="n_bin_alpha",
                                 expected="an integer >= 1")
        counts = np.array([lay.n_cells for lay in self.layers], dtype=np.int64)
        self.layer_offsets = np.concatenate([[0], np.cumsum(counts)])
        self.layer_of_cell = np.repeat(np.arange(n_layers), counts)
        # per-cell bin indices in (layer, alpha, r) order
        self.alpha_bin = np.concatenate(
            [np.repeat(np.arange(lay.n_alpha), lay.n_r) for lay in self.layers if lay.n_cells]
            or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        self.r_bin = np.concatenate(
            [np.tile(np.arange(lay.n_r), lay.n_alpha) for lay in self.layers if lay.n_cells]
            or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        self._n_r = np.array([max(lay.n_r, 0) for lay in self.layers], dtype=np.int64)
        self._n_alpha = np.array([lay.n_alpha for lay in self.layers], dtype=np.int64)
        max_nr = int(self._n_r.max(initial=0))
        # padded radial edges: (n_layers, max_nr + 1), +inf beyond a layer's last edge
        self._r_edges = np.full((n_layers, max_nr + 1), np.inf)
        for i, lay in enumerate(self.layers):
            if lay.n_r > 0:
                self._r_edges[i, : lay.n_r + 1] = lay.r_edges
        lay_idx = self.layer_of_cell
        self.r_lo = self._r_edges[lay_idx, self.r_bin]
        self.r_hi = self._r_edges[lay_idx, self.r_bin + 1]
        da = 2 * math.pi / self._n_alpha[lay_idx]
        self.alpha_lo = -math.pi + self.alpha_bin * da
        self.alpha_hi = self.alpha_lo + da
        self.r_mid = 0.5 * (self.r_lo + self.r_hi)
        self.alpha_mid = 0.5 * (self.alpha_lo + self.alpha_hi)
        # CaloChallenge convention: eta = r cos(alpha), phi = r sin(alpha) at bin midpoints
        self.eta = self.r_mid * np.cos(self.alpha_mid)
        self.phi = self.r_mid * np.sin(self.alpha_mid)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def uniform(
        cls,
        n_layers: int,
        n_alpha: int,
        r_edges: Sequence[float] | np.ndarray,
        layer_thickness: float,
        name: str,
        *,
        readout_threshold_mev: float = 0.0,
    ) -> CylindricalGeometry:
        """The same (r, alpha) binning in every layer, layers of equal thickness."""
        r_edges = np.asarray(r_edges, dtype=np.float64)
        return cls(
            [CylindricalLayer(r_edges, n_alpha) for _ in range(n_layers)],
            z_edges=np.arange(n_layers + 1) * layer_thickness,
            name=name,
            readout_threshold_mev=readout_threshold_mev,
        )

    @classmethod
    def from_xml(cls, path: str | os.PathLike[str]) -> CylindricalGeometry:
        """Parse a CaloChallenge binning XML (``<Bins><Bin><Layer r_edges=... n_bin_alpha=...>``).

        When the binning equals a preset's (ds1-photons, ds1-pions, ds2, ds3), the result is
        that preset (its name, layer depths and readout threshold); other binnings read out
        every deposit.
        """
        path = Path(path)
        try:
            root = ET.parse(path).getroot()
        except FileNotFoundError:
            raise InputError("no such file", path=path,
                             expected="a CaloChallenge binning XML") from None
        except (ET.ParseError, OSError) as exc:
            raise InputError(f"not a readable XML file ({exc})", path=path,
                             expected="a CaloChallenge binning XML") from None
        layers: list[CylindricalLayer] = []
        for particle in root:
            for i, elem in enumerate(particle):
                r_str = elem.attrib.get("r_edges")
                a_str = elem.attrib.get("n_bin_alpha")
                if r_str is None or a_str is None:
                    raise InputError(f"layer {i} lacks r_edges or n_bin_alpha", path=path,
                                     key="Layer", expected="attributes r_edges and n_bin_alpha")
                try:
                    r_edges = np.array([float(s) for s in r_str.split(",")])
                    n_alpha = int(a_str)
                except ValueError:
                    raise InputError(f"layer {i}: cannot parse r_edges={r_str!r} "
                                     f"n_bin_alpha={a_str!r}", path=path, key="Layer",
                                     expected="comma-separated numbers and an integer") from None
                layers.append(CylindricalLayer(r_edges, n_alpha))
        if not layers:
            raise InputError("no <Layer> elements", path=path, key="Bins/Bin/Layer",
                             expected="one <Layer> per calorimeter layer")
        geo = cls(layers, name=path.stem)
        for preset_name in ("ds1-photons", "ds1-pions", "ds2", "ds3"):
            preset = get_geometry(preset_name)
            if isinstance(preset, CylindricalGeometry) and preset._same_binning(geo):
                return preset
        return geo

    def _same_binning(self, other: CylindricalGeometry) -> bool:
        return len(self.layers) == len(other.layers) and all(
            a.n_alpha == b.n_alpha and np.array_equal(a.r_edges, b.r_edges)
            for a, b in zip(self.layers, other.layers, strict=True)
        )

    # ------------------------------------------------------------------ properties
    @property
    def relevant_layers(self) -> list[int]:
        """Layers that have cells (``r_edges`` other than ``"0"``)."""
        return [i for i, lay in enumerate(self.layers) if lay.n_cells > 0]

    @property
    def alpha_binned_layers(self) -> list[int]:
        """Layers with more than one alpha bin (the only ones with eta/phi features)."""
        return [i for i, lay in enumerate(self.layers) if lay.n_cells > 0 and lay.n_alpha > 1]

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """(n_layers, n_alpha, n_r) when every layer has the same binning, else None."""
        first = self.layers[0]
        if all(lay.n_alpha == first.n_alpha and np.array_equal(lay.r_edges, first.r_edges)
               for lay in self.layers) and first.n_cells:
            return (self.n_layers, first.n_alpha, first.n_r)
        return None

    def cell_centers(self) -> np.ndarray:
        lay = self.layer_of_cell
        z = 0.5 * (self.z_edges[lay] + self.z_edges[lay + 1])
        return np.stack([self.eta, self.phi, z], axis=1)

    def cell_volumes(self) -> np.ndarray:
        lay = self.layer_of_cell
        dz = self.z_edges[lay + 1] - self.z_edges[lay]
        return 0.5 * (self.r_hi**2 - self.r_lo**2) * (self.alpha_hi - self.alpha_lo) * dz

    def _locate_in_layer(self, x: np.ndarray, y: np.ndarray, layer: np.ndarray) -> np.ndarray:
        r = np.hypot(x, y)
        alpha = np.arctan2(y, x)  # [-pi, pi]
        edges = self._r_edges[layer]  # (n, max_nr + 1)
        r_bin = (r[:, None] >= edges[:, 1:]).sum(axis=1)
        n_r = self._n_r[layer]
        n_a = self._n_alpha[layer]
        a_bin = np.floor((alpha + math.pi) / (2 * math.pi) * n_a).astype(np.int64)
        a_bin = np.clip(a_bin, 0, n_a - 1)
        inside = (n_r > 0) & (r_bin < n_r) & (r >= edges[:, 0])
        cell = self.layer_offsets[layer] + a_bin * n_r + r_bin
        return np.where(inside, cell, -1)

    def _sample_in_cells(self, cells: np.ndarray, u: np.ndarray) -> np.ndarray:
        r_lo, r_hi = self.r_lo[cells], self.r_hi[cells]
        r = np.sqrt(r_lo**2 + u[:, 0] * (r_hi**2 - r_lo**2))  # uniform in area
        a = self.alpha_lo[cells] + u[:, 1] * (self.alpha_hi[cells] - self.alpha_lo[cells])
        lay = self.layer_of_cell[cells]
        z = self.z_edges[lay] + u[:, 2] * (self.z_edges[lay + 1] - self.z_edges[lay])
        return np.stack([r * np.cos(a), r * np.sin(a), z], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cylindrical",
            "name": self.name,
            "layers": [{"r_edges": lay.r_edges.tolist(), "n_alpha": lay.n_alpha}
                       for lay in self.layers],
            "z_edges": self.z_edges.tolist(),
            "readout_threshold_mev": self.readout_threshold_mev,
        }

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> CylindricalGeometry:
        name = d.get("name", "cylindrical")
        return cls(
            [CylindricalLayer(np.asarray(lay["r_edges"], float), int(lay["n_alpha"]))
             for lay in d["layers"]],
            z_edges=np.asarray(d["z_edges"], float),
            name=name,
            readout_threshold_mev=_stored_threshold(d, name),
        )

    def describe(self) -> str:
        shape = self.shape
        if shape is not None:
            grid = f"{shape[0]} layers x {shape[1]} alpha x {shape[2]} r"
        else:
            grid = f"{self.n_layers} layers ({len(self.relevant_layers)} non-empty)"
        return f"{self.name}: cylindrical, {grid}, {self.n_cells} cells"


@register_kind("cartesian")
class CartesianGeometry(Geometry):
    """A regular (x, y, z) grid, e.g. a 64^3 sampling-calorimeter sandwich; z is the layer axis.

    Cells are flattened in C order of an array of shape ``(nz, ny, nx)``: layer (z) slowest,
    x fastest. The grid is centred on the incident axis in x and y and starts at z = 0.

    Arguments:
        shape: number of cells ``(nx, ny, nz)``.
        cell_size: cell size in mm ``(dx, dy, dz)``; dz is the layer pitch (absorber + active).
        name: a label such as ``"sandwich64"``.
        readout_threshold_mev: smallest cell energy the readout records, MeV (0: all).
    """

    def __init__(
        self,
        shape: tuple[int, int, int] = (64, 64, 64),
        cell_size: tuple[float, float, float] = (10.0, 10.0, 26.5),
        *,
        name: str = "cartesian",
        readout_threshold_mev: float = 0.0,
    ) -> None:
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"grid shape {shape}", key="shape", expected="(nx, ny, nz) >= 1")
        if len(cell_size) != 3 or min(cell_size) <= 0:
            raise InputError(f"cell size {cell_size}", key="cell_size",
                             expected="(dx, dy, dz) > 0 in mm")
        self.nx, self.ny, self.nz = (int(s) for s in shape)
        self.dx, self.dy, self.dz = (float(s) for s in cell_size)
        self.name = name
        self.readout_threshold_mev = check_readout_threshold(readout_threshold_mev)
        self.z_edges = np.arange(self.nz + 1, dtype=np.float64) * self.dz
        per_layer = self.nx * self.ny
        self.layer_offsets = np.arange(self.nz + 1, dtype=np.int64) * per_layer
        self.layer_of_cell = np.repeat(np.arange(self.nz, dtype=np.int64), per_layer)
        self.x_edges = (np.arange(self.nx + 1) - self.nx / 2) * self.dx
        self.y_edges = (np.arange(self.ny + 1) - self.ny / 2) * self.dy

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape of one shower, ``(nz, ny, nx)``."""
        return (self.nz, self.ny, self.nx)

    def _indices(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        iz, rem = np.divmod(cells, self.nx * self.ny)
        iy, ix = np.divmod(rem, self.nx)
        return ix, iy, iz

    def cell_centers(self) -> np.ndarray:
        ix, iy, iz = self._indices(np.arange(self.n_cells))
        return np.stack([self.x_edges[ix] + self.dx / 2, self.y_edges[iy] + self.dy / 2,
                         self.z_edges[iz] + self.dz / 2], axis=1)

    def cell_volumes(self) -> np.ndarray:
        return np.full(self.n_cells, self.dx * self.dy * self.dz)

    def _locate_in_layer(self, x: np.ndarray, y: np.ndarray, layer: np.ndarray) -> np.ndarray:
        ix = np.floor((x - self.x_edges[0]) / self.dx).astype(np.int64)
        iy = np.floor((y - self.y_edges[0]) / self.dy).astype(np.int64)
        inside = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        return np.where(inside, (layer * self.ny + iy) * self.nx + ix, -1)

    def _sample_in_cells(self, cells: np.ndarray, u: np.ndarray) -> np.ndarray:
        ix, iy, iz = self._indices(cells)
        return np.stack([self.x_edges[ix] + u[:, 0] * self.dx,
                         self.y_edges[iy] + u[:, 1] * self.dy,
                         self.z_edges[iz] + u[:, 2] * self.dz], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cartesian", "name": self.name, "shape": [self.nx, self.ny, self.nz],
                "cell_size": [self.dx, self.dy, self.dz],
                "readout_threshold_mev": self.readout_threshold_mev}

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> CartesianGeometry:
        name = d.get("name", "cartesian")
        return cls(tuple(d["shape"]), tuple(d["cell_size"]), name=name,
                   readout_threshold_mev=_stored_threshold(d, name))

    def describe(self) -> str:
        return (f"{self.name}: cartesian {self.nx} x {self.ny} x {self.nz} cells of "
                f"{self.dx:g} x {self.dy:g} x {self.dz:g} mm, {self.n_cells} cells")


# ---------------------------------------------------------------------------- presets
# CaloChallenge dataset 1 binnings (ATLAS-like; layer ids are calorimeter samplings, depth not
# part of the published binning, so layers get unit thickness).
_DS1_PHOTONS = {
    0: ([0, 5, 10, 30, 50, 100, 200, 400, 600], 1),
    1: ([0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200], 10),
    2: ([0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200, 250, 300, 350, 400], 10),
    3: ([0, 50, 100, 200, 400, 600], 1),
    12: ([0, 100, 200, 400, 1000, 2000], 1),
}
_DS1_PIONS = {
    0: ([0, 5, 10, 30, 50, 100, 200, 400, 600], 1),
    1: ([0, 1, 4, 7, 10, 15, 30, 50, 90, 150, 200], 10),
    2: ([0, 5, 10, 20, 30, 50, 80, 130, 200, 300, 400], 10),
    3: ([0, 50, 100, 200, 400, 600], 1),
    12: ([0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 1000, 2000], 10),
    13: ([0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 600, 1000, 2000], 10),
    14: ([0, 50, 100, 150, 200, 250, 300, 400, 600, 1000, 2000], 1),
}


DS1_THRESHOLD = 1.0
"""Readout threshold of dataset 1 in MeV (the CaloChallenge evaluation's)."""
DS23_THRESHOLD = 0.5e-3 / 0.033
"""Readout threshold of datasets 2 and 3 in MeV: 0.5 keV in silicon / sampling fraction 0.033."""
READOUT_THRESHOLDS: dict[str, float] = {
    "ds1-photons": DS1_THRESHOLD,
    "ds1-pions": DS1_THRESHOLD,
    "ds2": DS23_THRESHOLD,
    "ds3": DS23_THRESHOLD,
}
"""Readout thresholds (MeV) of the presets that have one; the other presets record every
deposit (0). The presets carry them as ``readout_threshold_mev``."""


def _stored_threshold(d: dict[str, Any], name: Any) -> float:
    """The threshold of a stored geometry; dicts written before geometries carried one get
    the threshold of the preset of their name (0 for other names)."""
    if "readout_threshold_mev" in d:
        return check_readout_threshold(d["readout_threshold_mev"])
    return READOUT_THRESHOLDS.get(str(name).lower(), 0.0)


def _ds1(table: dict[int, tuple[list[float], int]], name: str) -> CylindricalGeometry:
    layers = [CylindricalLayer(np.asarray(table.get(i, ([0], 1))[0], dtype=np.float64),
                               table.get(i, ([0], 1))[1]) for i in range(24)]
    return CylindricalGeometry(layers, name=name, readout_threshold_mev=READOUT_THRESHOLDS[name])


# Datasets 2 and 3 (and Par04): 45 voxel layers of 2 x (1.4 mm W + 0.3 mm Si) = 3.4 mm.
_CC_LAYER_PITCH = 3.4

PRESETS: dict[str, Any] = {
    "ds1-photons": lambda: _ds1(_DS1_PHOTONS, "ds1-photons"),
    "ds1-pions": lambda: _ds1(_DS1_PIONS, "ds1-pions"),
    "ds2": lambda: CylindricalGeometry.uniform(
        45, 16, np.round(np.arange(10) * 4.65, 6), _CC_LAYER_PITCH, "ds2",
        readout_threshold_mev=READOUT_THRESHOLDS["ds2"]),
    "ds3": lambda: CylindricalGeometry.uniform(
        45, 50, np.round(np.arange(19) * 2.325, 6), _CC_LAYER_PITCH, "ds3",
        readout_threshold_mev=READOUT_THRESHOLDS["ds3"]),
    # Par04 images: 18 r x 50 phi x 45 z, stored here in the common (layer, alpha, r) order.
    "par04": lambda: CylindricalGeometry.uniform(
        45, 50, np.round(np.arange(19) * 2.325, 6), _CC_LAYER_PITCH, "par04"),
    # The same 18 x 50 x 45 cells on the Pb/scintillator ECAL ("pb-scint"): cells scaled to its
    # longer radiation length (about 16.6 mm against 4.2 mm for Si-W) and wider showers, 2 x the
    # radial and 2.64 x the longitudinal pitch, so the 45 layers span its 404 mm depth. The
    # second detector of the voxel transformers' adaptation study (Par04 also ships SciPb).
    "par04-scipb": lambda: CylindricalGeometry.uniform(
        45, 50, np.round(np.arange(19) * 4.65, 6), 8.976, "par04-scipb"),
    "sandwich64": lambda: CartesianGeometry((64, 64, 64), (10.0, 10.0, 26.5), name="sandwich64"),
    "sandwich32": lambda: CartesianGeometry((32, 32, 32), (20.0, 20.0, 53.0), name="sandwich32"),
    # ILD-like Si-W ECAL (30 layers, 5.088 mm cells), the geometry of the CaloClouds samples
    "ild-ecal": lambda: ILDGeometry(),
}
"""Named geometries built from numbers alone; :func:`get_geometry` makes them."""


_BY_CELLS = {368: "ds1-photons", 533: "ds1-pions", 6480: "ds2", 40500: "ds3",
             262144: "sandwich64", 32768: "sandwich32"}


def get_geometry(spec: str | os.PathLike[str] | Geometry) -> Geometry:
    """A geometry from a preset name (see :data:`PRESETS`), a binning XML path, or itself."""
    if isinstance(spec, Geometry):
        return spec
    s = os.fspath(spec)
    if s in PRESETS:
        return PRESETS[s]()
    if s.lower().endswith(".xml") or os.path.exists(s):
        return CylindricalGeometry.from_xml(s)
    raise InputError(f"unknown geometry {s!r}", key="geometry",
                     expected=f"one of {', '.join(PRESETS)} or a binning XML file")


def geometry_for_cells(n_cells: int) -> Geometry | None:
    """The preset with this many cells (CaloChallenge ds1/ds2/ds3, 64^3/32^3 grids), or None."""
    name = _BY_CELLS.get(int(n_cells))
    return None if name is None else get_geometry(name)
