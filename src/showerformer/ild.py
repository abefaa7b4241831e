"""The ILD high-granularity Si-W electromagnetic calorimeter (barrel) as data, and its Geometry.

The numbers describe the ILD ECAL barrel stave at the top of the detector (phi = 90 deg), where
the CaloClouds photon samples were simulated: particles travel along global +y, so the global
y coordinate is the radial depth. ``layer_bottom`` holds the inner face (global y, mm) of the
silicon sensor of each of the 30 layers; the 20 first layers sit behind 2.1 mm of tungsten, the
10 last ones behind 4.2 mm, hence the two pitches. The values are the float32 positions of the
CaloClouds detector description (``layer_bottom_pos`` of the CaloClouds-3 Geant4 metrics file),
and they agree with full-simulation hits of the ILD_l5 model: a silicon hit with cellID layer
``l`` sits at global y = ``layer_bottom[l] + sensor_thickness / 2``.

showerformer's local frame for this detector (the CaloClouds-3 one, a cyclic permutation of
the global axes, so right-handed): ``x`` = global Z, ``y`` = global X and ``z`` = global Y minus
``inner_radius`` (1804.7 mm, the ECAL front face where the CaloClouds guns start), so ``z`` is
the depth from the front face.

This module depends on the geometry base (:mod:`showerformer.geometry_base`) only;
:mod:`showerformer.geometry` imports it to offer the ``"ild-ecal"`` preset, so the two never
import each other in a cycle.

References:
    CaloClouds II, arXiv:2309.05704; CaloClouds 3 (FLC-QU-hep/CaloClouds-3, detector
    description ``pointcloud/utils/detector_map.py``); ILD Interim Design Report,
    arXiv:2003.01116.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from showerformer.errors import InputError
from showerformer.geometry_base import Geometry, check_readout_threshold, register_kind

__all__ = ["ILD_ECAL", "ILDEcal", "ILDGeometry"]


@dataclass(frozen=True)
class ILDEcal:
    """Layer positions and cell sizes of a layered silicon calorimeter, ILD ECAL barrel style.

    Attributes:
        layer_bottom: inner face of each layer's silicon sensor along the depth axis (global
            radial coordinate, mm), increasing.
        sensor_thickness: thickness of the silicon sensors in mm.
        cell_size: transverse size of the square readout cells in mm.
        inner_radius: global radial position of the calorimeter front face (depth 0), mm.
        x_limits: local x range covered by the cell grid (global Z), mm.
        y_limits: local y range covered by the cell grid (global X), mm.
        name: a label.
    """

    layer_bottom: tuple[float, ...]
    sensor_thickness: float
    cell_size: float
    inner_radius: float
    x_limits: tuple[float, float] = (-260.0, 140.0)
    y_limits: tuple[float, float] = (-200.0, 200.0)
    name: str = "ild-ecal"

    def __post_init__(self) -> None:
        bottom = np.asarray(self.layer_bottom, dtype=np.float64)
        if bottom.ndim != 1 or len(bottom) < 1 or np.any(np.diff(bottom) <= self.sensor_thickness):
            raise InputError(f"layer_bottom {bottom.tolist()}", key="layer_bottom",
                             expected="increasing positions at least one sensor apart")
        if self.inner_radius > bottom[0]:
            raise InputError(f"inner_radius {self.inner_radius} behind the first sensor",
                             key="inner_radius", expected=f"<= {bottom[0]}")

    @property
    def n_layers(self) -> int:
        return len(self.layer_bottom)

    @property
    def sensor_depth(self) -> np.ndarray:
        """Depth of each sensor's inner face from the front face, (n_layers,) mm."""
        return np.asarray(self.layer_bottom, dtype=np.float64) - self.inner_radius

    @property
    def z_edges(self) -> np.ndarray:
        """Layer boundaries in depth, (n_layers + 1,) mm.

        Layer ``l`` reaches from the midpoint between the back of sensor ``l - 1`` and the front
        of sensor ``l`` to the next such midpoint; the first layer starts at the front face and
        the last one ends half its preceding gap behind its sensor.
        """
        front = self.sensor_depth
        back = front + self.sensor_thickness
        mids = 0.5 * (back[:-1] + front[1:])
        last_gap = front[-1] - back[-2] if self.n_layers > 1 else self.sensor_thickness
        return np.concatenate([[0.0], mids, [back[-1] + 0.5 * last_gap]])

    def layer_of_depth(self, z: np.ndarray) -> np.ndarray:
        """Layer index (int64) of depths ``z`` in mm; -1 in front of or behind the layers."""
        edges = self.z_edges
        layer = np.searchsorted(edges, np.asarray(z, dtype=np.float64), side="right") - 1
        return np.where((layer >= 0) & (layer < self.n_layers), layer, -1)

    def depth_from_layer_units(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth in mm from the CaloClouds layer coordinate ``u`` = layer + position in sensor.

        ``floor(u)`` (clipped to the valid layers) is the layer, ``u - floor(u)`` the fractional
        position through its silicon sensor.

        Arguments:
            u: layer coordinates, any shape.

        Returns:
            ``(z, layer)``: depth in mm (float64) and layer index (int64), shaped like ``u``.
        """
        u = np.asarray(u, dtype=np.float64)
        layer = np.clip(np.floor(u), 0, self.n_layers - 1).astype(np.int64)
        z = self.sensor_depth[layer] + (u - layer) * self.sensor_thickness
        return z, layer

    def layer_units_from_depth(self, z: np.ndarray, layer: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`depth_from_layer_units` as float32.

        Depths outside their layer's sensor are clipped onto it, so that ``floor`` of the result
        is always ``layer`` (the last layer may reach exactly ``n_layers``).

        Arguments:
            z: depths in mm.
            layer: layer indices in ``0 .. n_layers - 1``, shaped like ``z``.

        Returns:
            float32 layer coordinates shaped like ``z``.
        """
        layer = np.asarray(layer, dtype=np.int64)
        frac = (np.asarray(z, dtype=np.float64) - self.sensor_depth[layer]) / self.sensor_thickness
        u = (layer + np.clip(frac, 0.0, 1.0)).astype(np.float32)
        low = layer.astype(np.float32)
        high = np.where(layer < self.n_layers - 1,
                        np.nextafter((layer + 1).astype(np.float32), np.float32(0)),
                        np.float32(self.n_layers))
        return np.clip(u, low, high)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description."""
        return {"name": self.name, "layer_bottom": list(self.layer_bottom),
                "sensor_thickness": self.sensor_thickness, "cell_size": self.cell_size,
                "inner_radius": self.inner_radius, "x_limits": list(self.x_limits),
                "y_limits": list(self.y_limits)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ILDEcal:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(float(v) for v in d["layer_bottom"]), float(d["sensor_thickness"]),
                       float(d["cell_size"]), float(d["inner_radius"]),
                       (float(d["x_limits"][0]), float(d["x_limits"][1])),
                       (float(d["y_limits"][0]), float(d["y_limits"][1])),
                       str(d.get("name", "ild-ecal")))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"incomplete calorimeter description ({exc!r})", key="ecal",
                             expected="layer_bottom, sensor_thickness, cell_size, inner_radius, "
                                      "x_limits, y_limits") from None


ILD_ECAL = ILDEcal(
    layer_bottom=(
        1811.34020996, 1814.46508789, 1823.81005859, 1826.93505859, 1836.2800293,
        1839.4050293, 1848.75, 1851.875, 1861.2199707, 1864.3449707,
        1873.68994141, 1876.81494141, 1886.16003418, 1889.28503418, 1898.63000488,
        1901.75500488, 1911.09997559, 1914.22497559, 1923.56994629, 1926.69494629,
        1938.14001465, 1943.36499023, 1954.81005859, 1960.03503418, 1971.47998047,
        1976.70495605, 1988.15002441, 1993.375, 2004.81994629, 2010.04504395,
    ),
    sensor_thickness=0.5250244140625,
    cell_size=5.0883331298828125,
    inner_radius=1804.7,
    # the Geant4 box is Z -260..140 around the gun at Z = -50; CaloClouds II files store that
    # axis shifted into -160..240, so the grid covers both
    x_limits=(-260.0, 240.0),
    y_limits=(-200.0, 200.0),
)
"""The ILD ECAL barrel (top stave) of the CaloClouds photon samples: 30 silicon layers."""


@register_kind("ild")
class ILDGeometry(Geometry):
    """Square cells on a regular transverse grid in every layer of an :class:`ILDEcal`.

    The grid starts at the lower ``x_limits`` / ``y_limits`` and has as many ``cell_size``
    cells as cover the limits. It ignores the gaps between silicon wafers, so it approximates
    the real readout; it gives point clouds a cell structure for voxelizing and dequantizing.
    Cell centres and dequantized positions lie inside the silicon sensors (where the hits are);
    layer ``l`` spans depths ``z_edges[l] .. z_edges[l + 1]`` for locating points. Cells are
    ordered layer by layer, then y, then x fastest.

    Arguments:
        ecal: the calorimeter description (default :data:`ILD_ECAL`).
        name: a label (default the description's name).
        readout_threshold_mev: smallest cell energy the readout records, MeV (0: all).
    """

    def __init__(self, ecal: ILDEcal = ILD_ECAL, *, name: str | None = None,
                 readout_threshold_mev: float = 0.0) -> None:
        self.ecal = ecal
        self.name = name or ecal.name
        self.readout_threshold_mev = check_readout_threshold(readout_threshold_mev)
        c = ecal.cell_size
        self.nx = math.ceil((ecal.x_limits[1] - ecal.x_limits[0]) / c - 1e-9)
        self.ny = math.ceil((ecal.y_limits[1] - ecal.y_limits[0]) / c - 1e-9)
        if self.nx < 1 or self.ny < 1:
            raise InputError(f"limits {ecal.x_limits} x {ecal.y_limits}", key="limits",
                             expected="increasing ranges of at least one cell")
        self.x_edges = ecal.x_limits[0] + np.arange(self.nx + 1) * c
        self.y_edges = ecal.y_limits[0] + np.arange(self.ny + 1) * c
        self.z_edges = ecal.z_edges
        per_layer = self.nx * self.ny
        self.layer_offsets = np.arange(ecal.n_layers + 1, dtype=np.int64) * per_layer
        self.layer_of_cell = np.repeat(np.arange(ecal.n_layers, dtype=np.int64), per_layer)
        self._front = ecal.sensor_depth

    def _indices(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        layer, rem = np.divmod(cells, self.nx * self.ny)
        iy, ix = np.divmod(rem, self.nx)
        return ix, iy, layer

    def cell_centers(self) -> np.ndarray:
        ix, iy, layer = self._indices(np.arange(self.n_cells))
        c = self.ecal.cell_size
        return np.stack([self.x_edges[ix] + c / 2, self.y_edges[iy] + c / 2,
                         self._front[layer] + self.ecal.sensor_thickness / 2], axis=1)

    def cell_volumes(self) -> np.ndarray:
        """Volumes of the silicon of each cell, (n_cells,) mm^3."""
        return np.full(self.n_cells, self.ecal.cell_size ** 2 * self.ecal.sensor_thickness)

    def _locate_in_layer(self, x: np.ndarray, y: np.ndarray, layer: np.ndarray) -> np.ndarray:
        c = self.ecal.cell_size
        ix = np.floor((x - self.x_edges[0]) / c).astype(np.int64)
        iy = np.floor((y - self.y_edges[0]) / c).astype(np.int64)
        inside = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        return np.where(inside, (layer * self.ny + iy) * self.nx + ix, -1)

    def _sample_in_cells(self, cells: np.ndarray, u: np.ndarray) -> np.ndarray:
        ix, iy, layer = self._indices(cells)
        c = self.ecal.cell_size
        return np.stack([self.x_edges[ix] + u[:, 0] * c, self.y_edges[iy] + u[:, 1] * c,
                         self._front[layer] + u[:, 2] * self.ecal.sensor_thickness], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "ild", "name": self.name, "ecal": self.ecal.to_dict(),
                "readout_threshold_mev": self.readout_threshold_mev}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Geometry:
        """Rebuild from :meth:`to_dict` output (other kinds go to :meth:`Geometry.from_dict`)."""
        if d.get("kind") != "ild":
            return Geometry.from_dict(d)
        return ILDGeometry._from_dict(d)

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> ILDGeometry:
        if not isinstance(d.get("ecal"), dict):
            raise InputError("an 'ild' geometry without its calorimeter", key="ecal",
                             expected="the output of ILDGeometry.to_dict()")
        return cls(ILDEcal.from_dict(d["ecal"]), name=d.get("name"),
                   readout_threshold_mev=check_readout_threshold(
                       d.get("readout_threshold_mev", 0.0)))

    def describe(self) -> str:
        return (f"{self.name}: {self.n_layers} silicon layers at depths "
                f"{self._front[0]:.2f}-{self._front[-1]:.2f} mm, {self.nx} x {self.ny} cells of "
                f"{self.ecal.cell_size:.3f} mm, {self.n_cells} cells")
