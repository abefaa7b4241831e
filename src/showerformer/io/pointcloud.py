"""CaloClouds-style point-cloud HDF5 files: layout detection, chunked reading and exact writing.

File layout (FLC-QU-hep CaloClouds II / 3):

- ``events``: (N, P, 4) float32 (or (N, 4, P)), the columns x, y, z, E of up to P points per
  shower; rows with E == 0 are padding (CaloClouds pads at the front, real points last).
- ``energy``: (N, 1) float32 (or (N,), (1, N)), the incident energy in GeV.
- ``p_norm_local``: optional, the incident direction p/|p| in the local frame, (N, 3) or (3, N).

What the data say (the CaloClouds-3 sample ``cc3_mini_data_sample.hdf5``, two Geant4 photons
of 15.62 and 41.93 GeV in the ILD ECAL barrel at phi = 90 deg, 163 and 236 points):

- Depth axis: y. Its values lie in 0.008..29.92, with fractional parts uniform in (0, 1), while
  x and z spread over hundreds of mm (-194..193 and -112..217, the transverse box). A radial
  position in mm would lie between the sensor faces 1811.34 and 2010.57 mm
  (``layer_bottom_pos``); instead y is the CaloClouds *layer coordinate*: ``floor(y)`` is the
  layer (0..29) and ``y - floor(y)`` the position through that layer's 0.525 mm silicon sensor.
  It maps to the depth from the ECAL front face (global y = 1804.7 mm) as
  ``z = layer_bottom[layer] - 1804.7 + (y - layer) * 0.525 mm`` (:data:`showerformer.ild.ILD_ECAL`).
  Files with y in mm (global radial positions) are recognized too and shifted by the front
  face.
- Hit energies: GeV. The summed point energies are 0.0473 and 0.0978 in file units. As GeV that
  is 47.3 MeV (0.30 % of 15.62 GeV) and 97.8 MeV (0.23 % of 41.93 GeV): the visible fraction of a
  Si-W ECAL is about 2.3 % (1016 MeV in the silicon hits of the full-simulation 43.7 GeV photon
  of ``cc3_single_event_example.edm4hep.root``; 200-2400 MeV per shower for 10-100 GeV photons in
  the Geant4 reference histograms), so these sparse sample points (about 200 instead of 1000-3000
  cells) carry about a tenth of a full shower. As MeV the sums (0.05-0.1 MeV) would be below a
  single minimum-ionizing particle in 0.525 mm of silicon (about 0.15 MeV): impossible for a
  15-42 GeV photon. The largest point energy, 0.0072 GeV = 48 MIPs in one sub-cell, fits the
  shower core. The CaloClouds loaders multiply hit energies by 1000 to get MeV, in agreement.

showerformer's frame (:mod:`showerformer.ild`): local ``x`` = file z, ``y`` = file x (global Z
and X for ILD), ``z`` = depth in mm; hit and incident energies in MeV. The transverse columns
are only permuted, never shifted, so they stay bit-exact.

Writing inverts the same transform. Because a :class:`PointShowers` holds float32, two file
values are not always recoverable bit for bit: (1) GeV -> MeV float32 scaling is not injective
(1000 is not a power of two), so about 2.6 % of hit energies come back one float32 ulp off;
(2) float32 depths in mm are coarser than the layer coordinate (down to 1/16 of its resolution
at depths of 128-206 mm), so the layer coordinate comes back within 2e-5 of its value (1e-5 mm
of depth; measured on the sample: 1.5e-5, 9 % of the values bit-exact), always in its layer.
Transverse coordinates, the incident energies (float64 in MeV), the layers and the padding come
back bit-exact, and read(write(showers)) reproduces the showers exactly. Every
file written here carries its :class:`PointCloudLayout` as the JSON attribute ``layout``,
including the depth offset applied (``depth_offset``, in mm) and the calorimeter description
used, so the reader inverts exactly what the writer did.

Files not written here are recognized from their first 64 showers: the depth column is the
first of y, z, x whose values lie in 0..30 (layer coordinate) or in 1794.7..2020.6 mm (global
radial position, then shifted by the float32 value of 1804.7 mm, so exactly invertible); hit
energies are GeV unless their sum exceeds the incident energy (then MeV, as in CaloClouds II
generated files); incident energies are GeV; the padding side is where the zero rows are.

Showers of other geometries use the local layout: depth along z in mm, energies in MeV
(incident energies float64), and the layer column as dataset ``layer`` (N, P) int16. Both
layouts store ``pdg`` (int32), ``theta`` and ``phi`` (float32, rad) and the further per-shower
conditions as datasets named in the attribute ``condition_keys``; ``p_norm_local`` is written
when the showers carry it (extras ``p_norm_local_x/_y/_z``) and always in the CaloClouds layout,
whose readers condition on it.

References:
    CaloClouds, arXiv:2305.04847; CaloClouds II, arXiv:2309.05704; CaloClouds 3
    (FLC-QU-hep/CaloClouds-3, ``pointcloud/data/read_write.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from showerformer.errors import InputError
from showerformer.geometry import Geometry, get_geometry
from showerformer.ild import ILD_ECAL, ILDEcal, ILDGeometry
from showerformer.io._h5file import create_h5
from showerformer.io.calochallenge import _check_range, _dataset, _one_line, _open_h5
from showerformer.showers import Conditions, PointShowers

__all__ = [
    "ENERGY_KEY",
    "EVENTS_KEY",
    "PointCloudLayout",
    "iter_pointcloud",
    "pointcloud_layout",
    "read_pointcloud",
    "write_pointcloud",
]

EVENTS_KEY = "events"
"""Dataset of the points, (N, P, 4) or (N, 4, P) = x, y, z, E."""
ENERGY_KEY = "energy"
"""Dataset of the incident energies."""

_EXPECTED = "a CaloClouds point-cloud HDF5 file ('events' (N, P, 4) and 'energy' (N, 1))"
_P_NORM = "p_norm_local"
_P_NORM_EXTRA = ("p_norm_local_x", "p_norm_local_y", "p_norm_local_z")
_RESERVED = {EVENTS_KEY, ENERGY_KEY, _P_NORM, "layer", "pdg", "theta", "phi"}
_UNITS = {"GeV": 1000.0, "MeV": 1.0}
_AXES = "xyz"
_DEFAULT_CHUNK = 1024  # showers per chunk when streaming
_DETECT_SHOWERS = 64  # showers looked at to recognize a foreign file's layout
_ILD_FRONT_F32 = float(np.float32(ILD_ECAL.inner_radius))  # exact float32 offset

GeometryLike = str | os.PathLike[str] | Geometry


@dataclass(frozen=True)
class PointCloudLayout:
    """How a point-cloud file stores showers, relative to showerformer's local frame.

    Attributes:
        depth_axis: the file column along the depth (``"x"``, ``"y"`` or ``"z"``); the two
            others follow cyclically as local x and y (depth y: local x = file z, local y =
            file x).
        depth_unit: ``"layer"`` (CaloClouds layer coordinate: layer index + position through
            the silicon sensor, needs ``ecal``) or ``"mm"``.
        depth_offset: for ``"mm"``: file depth = local z + ``depth_offset`` (mm).
        hit_unit: unit of the point energies on disk, ``"GeV"`` or ``"MeV"``.
        incident_unit: unit of ``energy`` on disk, ``"GeV"`` or ``"MeV"``.
        incident_dtype: dtype of ``energy`` written, ``"float32"`` or ``"float64"``.
        channels_last: ``events`` is (N, P, 4) rather than (N, 4, P).
        padding: where writing puts the zero rows, ``"front"`` or ``"back"``.
        energy_shape: ``energy`` as ``"column"`` (N, 1), ``"flat"`` (N,) or ``"row"`` (1, N).
        p_norm_transposed: ``p_norm_local`` stored as (3, N) rather than (N, 3).
        store_layer: write the layer column as dataset ``layer`` (N, P) int16.
        ecal: the calorimeter whose layers give depths and layers, or None.
    """

    depth_axis: str = "y"
    depth_unit: str = "layer"
    depth_offset: float = 0.0
    hit_unit: str = "GeV"
    incident_unit: str = "GeV"
    incident_dtype: str = "float32"
    channels_last: bool = True
    padding: str = "front"
    energy_shape: str = "column"
    p_norm_transposed: bool = False
    store_layer: bool = False
    ecal: ILDEcal | None = field(default=ILD_ECAL)

    def __post_init__(self) -> None:
        checks = [("depth_axis", self.depth_axis, _AXES),
                  ("depth_unit", self.depth_unit, ("layer", "mm")),
                  ("hit_unit", self.hit_unit, tuple(_UNITS)),
                  ("incident_unit", self.incident_unit, tuple(_UNITS)),
                  ("incident_dtype", self.incident_dtype, ("float32", "float64")),
                  ("padding", self.padding, ("front", "back")),
                  ("energy_shape", self.energy_shape, ("column", "flat", "row"))]
        for name, value, allowed in checks:
            if value not in allowed:
                raise InputError(f"{name}={value!r}", key=name,
                                 expected=f"one of {', '.join(allowed)}")
        if self.depth_unit == "layer" and self.ecal is None:
            raise InputError("a layer-coordinate depth without a calorimeter", key="ecal",
                             expected="an ILDEcal description for depth_unit='layer'")

    @classmethod
    def caloclouds(cls, ecal: ILDEcal = ILD_ECAL, *, depth_unit: str = "layer") -> PointCloudLayout:
        """The CaloClouds ILD layout of ``cc3_mini_data_sample.hdf5``: depth along y as layer
        coordinate (or ``depth_unit="mm"``: global radial position), GeV, (N, P, 4), front
        padding, ``energy`` (N, 1) float32, ``p_norm_local`` (3, N)."""
        offset = float(np.float32(ecal.inner_radius)) if depth_unit == "mm" else 0.0
        return cls(depth_axis="y", depth_unit=depth_unit, depth_offset=offset, hit_unit="GeV",
                   incident_unit="GeV", incident_dtype="float32", channels_last=True,
                   padding="front", energy_shape="column", p_norm_transposed=True,
                   store_layer=False, ecal=ecal)

    @classmethod
    def local(cls, ecal: ILDEcal | None = None) -> PointCloudLayout:
        """showerformer's own frame: depth along z in mm from the front face, MeV, float64
        incident energies, back padding, the layer column stored."""
        return cls(depth_axis="z", depth_unit="mm", depth_offset=0.0, hit_unit="MeV",
                   incident_unit="MeV", incident_dtype="float64", channels_last=True,
                   padding="back", energy_shape="column", p_norm_transposed=False,
                   store_layer=True, ecal=ecal)

    @property
    def depth_column(self) -> int:
        return _AXES.index(self.depth_axis)

    @property
    def transverse_columns(self) -> tuple[int, int]:
        """File columns of local x and y."""
        d = self.depth_column
        return (d + 1) % 3, (d + 2) % 3

    def to_json(self) -> str:
        d = asdict(self)
        d["ecal"] = None if self.ecal is None else self.ecal.to_dict()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str, path: Any = None) -> PointCloudLayout:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError("not an object")
            ecal = d.pop("ecal", None)
            return cls(**d, ecal=None if ecal is None else ILDEcal.from_dict(ecal))
        except (ValueError, TypeError) as exc:
            raise InputError(f"cannot parse the stored layout ({_one_line(exc)})", path=path,
                             key="layout (attribute)",
                             expected="PointCloudLayout.to_json() output") from None


# ---------------------------------------------------------------------------- file access
def _events_dataset(f: h5py.File, path: Any) -> tuple[h5py.Dataset, bool]:
    """The ``events`` dataset and whether it is channels-last (N, P, 4) (also when P is 4)."""
    if not any(isinstance(obj, h5py.Dataset) for obj in f.values()):
        raise InputError("the HDF5 file holds no datasets", path=path, key=EVENTS_KEY,
                         expected=_EXPECTED)
    ev = _dataset(f, EVENTS_KEY, path, "(N, P, 4) points x, y, z, E")
    if ev.ndim != 3 or 4 not in ev.shape[1:]:
        raise InputError(f"shape {ev.shape}", path=path, key=EVENTS_KEY,
                         expected="(N, P, 4) or (N, 4, P) points x, y, z, E")
    return ev, ev.shape[2] == 4


def _energy_dataset(f: h5py.File, n: int, path: Any) -> tuple[h5py.Dataset, str]:
    e = _dataset(f, ENERGY_KEY, path, f"({n}, 1) incident energies")
    if e.shape == (n,):
        return e, "flat"
    if e.ndim == 2 and e.shape[0] == n and e.shape[1] == 1:
        return e, "column"
    if e.ndim == 2 and e.shape[0] == 1 and e.shape[1] == n:
        return e, "row"
    raise InputError(f"shape {e.shape} for {n} showers", path=path, key=ENERGY_KEY,
                     expected=f"({n}, 1), ({n},) or (1, {n}) incident energies")


def _read_energy(e: h5py.Dataset, shape: str, lo: int, hi: int) -> np.ndarray:
    if shape == "flat":
        return np.asarray(e[lo:hi])
    if shape == "column":
        return np.asarray(e[lo:hi, 0])
    return np.asarray(e[0, lo:hi])


def _p_norm_dataset(f: h5py.File, n: int, path: Any) -> tuple[h5py.Dataset | None, bool]:
    """``p_norm_local`` and whether it is (3, N); the first axis of length N is the shower axis."""
    if _P_NORM not in f:
        return None, False
    ds = _dataset(f, _P_NORM, path, f"({n}, 3) unit vectors")
    if ds.ndim == 2 and ds.shape == (n, 3):
        return ds, False
    if ds.ndim == 2 and ds.shape == (3, n):
        return ds, True
    raise InputError(f"shape {ds.shape} for {n} showers", path=path, key=_P_NORM,
                     expected=f"({n}, 3) or (3, {n}) incident directions")


def _attr_text(f: h5py.File, name: str) -> str | None:
    raw = f.attrs.get(name)
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _detect_layout(f: h5py.File, path: Any, ev: h5py.Dataset, channels_last: bool,
                   energy_shape: str, p_transposed: bool) -> PointCloudLayout:
    """Recognize the layout of a file not written here, from its first showers."""
    n = ev.shape[0]
    k = min(n, _DETECT_SHOWERS)
    block = np.asarray(ev[:k], dtype=np.float64)
    if not channels_last:
        block = block.transpose(0, 2, 1)
    mask = block[..., 3] != 0  # (k, P)
    pts = block[mask]
    pts = pts[np.isfinite(pts).all(axis=1)]  # bad values are reported when reading
    base = PointCloudLayout.caloclouds()
    if len(pts) == 0:
        return replace(base, energy_shape=energy_shape, p_norm_transposed=p_transposed,
                       channels_last=channels_last)
    ecal = ILD_ECAL
    radial = (ecal.inner_radius - 10.0, ecal.layer_bottom[-1] + ecal.sensor_thickness + 10.0)
    lo, hi = pts[:, :3].min(axis=0), pts[:, :3].max(axis=0)
    for axis in ("y", "z", "x"):  # CaloClouds keeps the depth in y
        c = _AXES.index(axis)
        if lo[c] >= 0 and hi[c] <= ecal.n_layers:
            layout = replace(base, depth_axis=axis, depth_unit="layer", depth_offset=0.0)
            break
        if lo[c] >= radial[0] and hi[c] <= radial[1]:
            layout = replace(base, depth_axis=axis, depth_unit="mm", depth_offset=_ILD_FRONT_F32)
            break
    else:
        spans = ", ".join(f"{a} {pts[:, i].min():.4g}..{pts[:, i].max():.4g}"
                          for i, a in enumerate(_AXES))
        raise InputError(f"cannot tell the depth axis (point coordinates {spans})", path=path,
                         key=EVENTS_KEY, expected="a depth column in ILD layer coordinates "
                         "(0..30) or radial mm (1804.7..2021), or an explicit layout=")
    # hits in GeV next to incident GeV carry a few percent of it; a ratio above one means MeV
    counts = mask.sum(axis=1)
    has = counts > 0
    hit_sum = np.where(mask, block[..., 3], 0.0).sum(axis=1)[has]
    incident = _read_energy(f[ENERGY_KEY], energy_shape, 0, k).astype(np.float64)[has]
    ok = incident > 0
    ratio = float(np.median(hit_sum[ok] / incident[ok])) if ok.any() else 0.0
    hit_unit = "MeV" if ratio > 1.0 else "GeV"
    # CaloClouds pads at the front: the last slot is filled and the first one empty
    partial = has & (counts < mask.shape[1])
    front = int((mask[partial, -1] & ~mask[partial, 0]).sum())
    padding = "front" if front * 2 >= int(partial.sum()) and partial.any() else "back"
    return replace(layout, hit_unit=hit_unit, channels_last=channels_last, padding=padding,
                   energy_shape=energy_shape, p_norm_transposed=p_transposed)


class _PointCloudFile:
    """The validated layout of an open point-cloud file."""

    def __init__(self, f: h5py.File, path: Any, geometry: GeometryLike | None,
                 layout: PointCloudLayout | None) -> None:
        self.f, self.path = f, path
        self.events, channels_last = _events_dataset(f, path)
        self.n = int(self.events.shape[0])
        if self.n == 0:
            raise InputError("the file holds 0 showers", path=path, key=EVENTS_KEY,
                             expected="at least one shower")
        self.energy, energy_shape = _energy_dataset(f, self.n, path)
        self.p_norm, p_transposed = _p_norm_dataset(f, self.n, path)
        if layout is None:
            stored = _attr_text(f, "layout")
            if stored is not None:
                layout = PointCloudLayout.from_json(stored, path)
            else:
                layout = _detect_layout(f, path, self.events, channels_last, energy_shape,
                                        p_transposed)
        # the array shapes on disk always win over what a layout says
        self.layout = replace(layout, channels_last=channels_last, energy_shape=energy_shape,
                              p_norm_transposed=p_transposed)
        self.layer = None
        if "layer" in f:
            self.layer = _dataset(f, "layer", path, "(N, P) layer indices")
            n_slots = self.events.shape[1] if channels_last else self.events.shape[2]
            if self.layer.shape != (self.n, n_slots):
                raise InputError(f"shape {self.layer.shape}", path=path, key="layer",
                                 expected=f"({self.n}, {n_slots}) like the events")
        self.geometry = self._geometry(geometry)
        self.extra_keys = self._extra_keys()

    def _geometry(self, geometry: GeometryLike | None) -> Geometry | None:
        if geometry is not None:
            if isinstance(geometry, str) and geometry in ("ild", "ild-ecal"):
                return ILDGeometry(self.layout.ecal or ILD_ECAL)
            return get_geometry(geometry)
        stored = _attr_text(self.f, "geometry_json")
        if stored is not None:
            try:
                return ILDGeometry.from_dict(json.loads(stored))
            except (ValueError, KeyError, TypeError):
                raise InputError("cannot parse the stored geometry", path=self.path,
                                 key="geometry_json (attribute)",
                                 expected="Geometry.to_dict() as JSON") from None
        if self.layout.ecal is not None:
            return ILDGeometry(self.layout.ecal)
        return None

    def _extra_keys(self) -> list[str]:
        text = _attr_text(self.f, "condition_keys")
        if text is None:
            return []
        try:
            keys = json.loads(text)
            if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
                raise ValueError
        except ValueError:
            raise InputError(f"cannot parse {text!r}", path=self.path,
                             key="condition_keys (attribute)",
                             expected="a JSON list of dataset names") from None
        for key in keys:
            ds = _dataset(self.f, key, self.path, "one value per shower")
            if ds.ndim == 0 or ds.shape[0] != self.n:
                raise InputError(f"shape {ds.shape} for {self.n} showers", path=self.path,
                                 key=key, expected=f"({self.n}, ...)")
        return keys

    def _per_shower(self, key: str, lo: int, hi: int) -> np.ndarray | None:
        if key not in self.f:
            return None
        ds = _dataset(self.f, key, self.path, "one value per shower")
        if ds.shape not in ((self.n,), (self.n, 1)):
            raise InputError(f"shape {ds.shape} for {self.n} showers", path=self.path, key=key,
                             expected=f"({self.n},)")
        values = np.asarray(ds[lo:hi]).reshape(-1)
        if key != "pdg" and not np.isfinite(values).all():
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InputError(f"NaN or inf at shower {lo + i}", path=self.path, key=key,
                             expected="finite angles in rad")
        return values

    def read(self, lo: int, hi: int) -> PointShowers:
        """Showers ``lo:hi`` in showerformer's frame and units."""
        lay = self.layout
        try:
            raw = np.asarray(self.events[lo:hi])
        except OSError as exc:
            raise InputError(f"cannot read showers {lo}..{hi} ({_one_line(exc)})",
                             path=self.path, key=EVENTS_KEY,
                             expected="a complete, uncorrupted file") from exc
        if not lay.channels_last:
            raw = raw.transpose(0, 2, 1)  # (n, P, 4)
        if raw.dtype.kind not in "fiu":
            raise InputError(f"dtype {raw.dtype}", path=self.path, key=EVENTS_KEY,
                             expected="float points")
        real = raw[..., 3] != 0  # (n, P); NaN energies count as real points
        counts = real.sum(axis=1)
        rows, slots = np.nonzero(real)  # shower-major, slots in stored order
        pts = raw[rows, slots].astype(np.float64)  # (m, 4)
        self._check_points(pts, rows, slots, lo)
        tx, ty = lay.transverse_columns
        depth = pts[:, lay.depth_column]
        if lay.depth_unit == "layer":
            assert lay.ecal is not None
            z, layer = lay.ecal.depth_from_layer_units(depth)
            # a layer coordinate beyond the layers is no layer (-1, outside), not the nearest
            layer = np.where((depth >= 0) & (depth <= lay.ecal.n_layers), layer, -1)
        else:
            z = depth - lay.depth_offset
            layer = None
        if self.layer is not None:
            layer = self._stored_layers(lo, hi, rows, slots)
        elif layer is None:
            if self.geometry is not None:
                layer = self.geometry.layer_of_z(z)
            elif lay.ecal is not None:
                layer = lay.ecal.layer_of_depth(z)
            else:
                layer = np.full(len(z), -1, dtype=np.int64)
        flat = np.empty((len(pts), 5), dtype=np.float32)
        flat[:, 0] = raw[rows, slots, tx]
        flat[:, 1] = raw[rows, slots, ty]
        flat[:, 2] = z
        flat[:, 3] = pts[:, 3] * _UNITS[lay.hit_unit]
        flat[:, 4] = layer
        energy = _read_energy(self.energy, lay.energy_shape, lo, hi).astype(np.float64)
        energy = energy * _UNITS[lay.incident_unit]
        showers = PointShowers.from_flat(flat, counts, self._conditions(lo, hi, energy),
                                         self.geometry)
        return showers.validate(self.path, EVENTS_KEY)

    def _stored_layers(self, lo: int, hi: int, rows: np.ndarray,
                       slots: np.ndarray) -> np.ndarray:
        """The ``layer`` dataset at the real points, (m,) int64; whole numbers required."""
        assert self.layer is not None
        values = np.asarray(self.layer[lo:hi])[rows, slots]  # (m,)
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values) | (np.rint(values) != values) | (np.abs(values) > 2**31)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(f"layer index {float(values[i])!r} at shower "
                                 f"{lo + int(rows[i])}, point {int(slots[i])}", path=self.path,
                                 key="layer", expected="whole-number layer indices")
        return values.astype(np.int64)

    def _check_points(self, pts: np.ndarray, rows: np.ndarray, slots: np.ndarray,
                      lo: int) -> None:
        """Raise for NaN/inf coordinates or energies and for negative energies."""
        bad = ~np.isfinite(pts).all(axis=1)
        what = "NaN or inf"
        if not bad.any():
            bad = pts[:, 3] < 0
            what = "a negative energy"
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{what} ({pts[i].tolist()}) at shower {lo + int(rows[i])}, "
                             f"point {int(slots[i])}", path=self.path, key=EVENTS_KEY,
                             expected="finite x, y, z and energies >= 0")

    def _conditions(self, lo: int, hi: int, energy: np.ndarray) -> Conditions:
        kw: dict[str, Any] = {k: self._per_shower(k, lo, hi) for k in ("pdg", "theta", "phi")}
        extra: dict[str, np.ndarray] = {}
        if self.p_norm is not None:
            p = np.asarray(self.p_norm[:, lo:hi] if self.layout.p_norm_transposed
                           else self.p_norm[lo:hi].T, dtype=np.float64)  # (3, n)
            if not np.isfinite(p).all():
                raise InputError("NaN or inf", path=self.path, key=_P_NORM,
                                 expected="finite unit vectors")
            extra.update(zip(_P_NORM_EXTRA, p, strict=True))
            norm = np.linalg.norm(p, axis=0)
            unit = p / np.where(norm > 0, norm, 1.0)
            # local x is the beam axis (global Z), local z the depth (global Y)
            if kw["theta"] is None:
                kw["theta"] = np.arccos(np.clip(unit[0], -1.0, 1.0))
            if kw["phi"] is None:
                kw["phi"] = np.arctan2(unit[2], unit[1])
        for key in self.extra_keys:
            extra[key] = np.asarray(self.f[key][lo:hi])
        return Conditions(energy, extra=extra, **kw)


def _bounds(start: int, stop: int | None, n: int) -> tuple[int, int]:
    lo, hi, _ = slice(start, stop).indices(n)
    return lo, max(lo, hi)


# ---------------------------------------------------------------------------- public reading
def pointcloud_layout(path: str | os.PathLike[str]) -> PointCloudLayout:
    """The layout of a point-cloud file: the stored one, or what its first showers show.

    Arguments:
        path: the HDF5 file.

    Returns:
        The :class:`PointCloudLayout` that :func:`read_pointcloud` applies and with which
        :func:`write_pointcloud` reproduces the file.
    """
    with _open_h5(path, _EXPECTED) as f:
        return _PointCloudFile(f, path, None, None).layout


def read_pointcloud(
    path: str | os.PathLike[str],
    geometry: GeometryLike | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    layout: PointCloudLayout | None = None,
) -> PointShowers:
    """Read showers ``start:stop`` of a point-cloud file into showerformer's frame and units.

    Arguments:
        path: the HDF5 file.
        geometry: the geometry of the returned showers (a Geometry, a preset name or
            ``"ild-ecal"``); default: the stored one, else :class:`~showerformer.ild.ILDGeometry`
            for ILD layouts, else None.
        start, stop: the slice of showers to read, integers >= 0 counted from the start of
            the file (``stop=None``: to the end).
        layout: how the file stores points; default: the stored layout, else detected.

    Returns:
        :class:`PointShowers` with x, y, z in mm (z = depth from the front face), E in MeV and
        the layer index (from the ``layer`` dataset, the layer coordinate, or the depth), padded
        to the largest number of points among the showers read. Points outside the geometry
        are kept as they are (a layer coordinate beyond the layers gets layer -1):
        :meth:`PointShowers.count_outside` counts them and ``to_voxels`` refuses or drops them.

    Raises:
        InputError: missing, empty, truncated or non-HDF5 file, a file of 0 showers, missing
            ``events`` / ``energy``, wrong shapes, NaN/inf or negative energies, layer indices
            that are not whole numbers, a negative ``start`` or ``stop``.
    """
    _check_range(start, stop, path)
    with _open_h5(path, _EXPECTED) as f:
        pc = _PointCloudFile(f, path, geometry, layout)
        lo, hi = _bounds(start, stop, pc.n)
        return pc.read(lo, hi)


def iter_pointcloud(
    path: str | os.PathLike[str],
    geometry: GeometryLike | None = None,
    *,
    chunk_size: int | None = None,
    start: int = 0,
    stop: int | None = None,
    layout: PointCloudLayout | None = None,
) -> Iterator[PointShowers]:
    """Stream a point-cloud file in chunks of ``chunk_size`` showers (default 1024).

    Arguments:
        path, geometry, start, stop, layout: as in :func:`read_pointcloud`.
        chunk_size: showers per chunk.

    Yields:
        :class:`PointShowers`, each padded to its own largest shower.
    """
    size = int(chunk_size or _DEFAULT_CHUNK)
    if size < 1:
        raise InputError(f"chunk_size={size}", key="chunk_size", expected="an integer >= 1")
    _check_range(start, stop, path)
    with _open_h5(path, _EXPECTED) as f:
        pc = _PointCloudFile(f, path, geometry, layout)
        lo, hi = _bounds(start, stop, pc.n)
        for a in range(lo, hi, size):
            yield pc.read(a, min(hi, a + size))


# ---------------------------------------------------------------------------- writing
def _default_layout(showers: PointShowers) -> PointCloudLayout:
    geo = showers.geometry
    if isinstance(geo, ILDGeometry):
        return PointCloudLayout.caloclouds(geo.ecal)
    return PointCloudLayout.local()


def _p_norm_local(c: Conditions) -> np.ndarray:
    """Incident directions in the local frame, (3, N) float64."""
    if all(k in c.extra for k in _P_NORM_EXTRA):
        return np.stack([np.asarray(c.extra[k], dtype=np.float64) for k in _P_NORM_EXTRA])
    theta = c.theta.astype(np.float64)
    phi = c.phi.astype(np.float64)
    return np.stack([np.cos(theta), np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi)])


def write_pointcloud(
    path: str | os.PathLike[str],
    showers: PointShowers,
    *,
    layout: PointCloudLayout | None = None,
    max_points: int | None = None,
) -> Path:
    """Write showers as a point-cloud HDF5 file (atomically), inverting :func:`read_pointcloud`.

    Arguments:
        path: the target file.
        showers: the showers; points with zero energy cannot be stored (zero rows are padding).
        layout: how to store them; default the CaloClouds ILD layout for showers on an
            :class:`~showerformer.ild.ILDGeometry`, else :meth:`PointCloudLayout.local`. Use
            ``pointcloud_layout(original)`` to reproduce a file.
        max_points: pad every shower to this many slots (CaloClouds files use 6000); default
            the largest shower.

    Returns:
        The path written.

    Raises:
        InputError: no showers, more points than ``max_points``, conditions named like the
            datasets, points in no layer for the layer-coordinate layout.
        OutputError: the disk became full (the earlier file, if any, is left unchanged).
    """
    lay = layout or _default_layout(showers)
    p = Path(path)
    if len(showers) == 0:
        raise InputError("no showers to write", path=p, key="showers",
                         expected="at least one shower")
    counts = showers.n_points
    n_max = int(counts.max(initial=0))
    slots = n_max if max_points is None else int(max_points)
    if slots < n_max:
        raise InputError(f"a shower has {n_max} points", path=p, key="max_points",
                         expected=f"max_points >= {n_max}")
    cond = showers.conditions
    reserved = sorted(_RESERVED.intersection(cond.extra))
    if reserved:
        raise InputError(f"conditions named like datasets: {', '.join(reserved)}", path=p,
                         key="conditions", expected="other names for extra conditions")
    n = len(showers)
    rows, idx = np.nonzero(showers.mask)
    pts = showers.points[rows, idx].astype(np.float64)  # (m, 5)
    rank = (np.cumsum(showers.mask, axis=1) - 1)[rows, idx]
    pos = rank if lay.padding == "back" else slots - counts[rows] + rank
    layer = np.rint(pts[:, 4]).astype(np.int64)

    out = np.zeros((n, slots, 4), dtype=np.float32)
    tx, ty = lay.transverse_columns
    out[rows, pos, tx] = showers.points[rows, idx, 0]
    out[rows, pos, ty] = showers.points[rows, idx, 1]
    if lay.depth_unit == "layer":
        assert lay.ecal is not None
        n_layers = lay.ecal.n_layers
        bad = (layer < 0) | (layer >= n_layers)
        if bad.any():
            # points without a valid layer column take the layer of their depth
            layer[bad] = lay.ecal.layer_of_depth(pts[bad, 2])
            nowhere = layer < 0
            if nowhere.any():  # moving them into the first or last layer would falsify them
                k, e = int(nowhere.sum()), float(pts[nowhere, 3].sum())
                raise InputError(
                    f"{k:,} point{'s' if k != 1 else ''} ({e:.4g} MeV) in no layer of "
                    f"{lay.ecal.name} (layer index and depth both outside), which the layer "
                    "coordinate cannot store", path=p, key="layer",
                    expected="points inside the layers (drop them with "
                    "PointShowers.drop_outside(), or convert --drop-outside), or a layout "
                    "with depth_unit='mm'")
        out[rows, pos, lay.depth_column] = lay.ecal.layer_units_from_depth(pts[:, 2], layer)
    else:
        out[rows, pos, lay.depth_column] = (pts[:, 2] + lay.depth_offset).astype(np.float32)
    out[rows, pos, 3] = (pts[:, 3] / _UNITS[lay.hit_unit]).astype(np.float32)
    if not lay.channels_last:
        out = out.transpose(0, 2, 1)

    energy = (cond.energy / _UNITS[lay.incident_unit]).astype(lay.incident_dtype)
    energy = {"column": energy[:, None], "flat": energy, "row": energy[None, :]}[lay.energy_shape]
    p_norm = _p_norm_local(cond)  # (3, N)
    has_direction = all(k in cond.extra for k in _P_NORM_EXTRA)
    with create_h5(p) as (f, _):
        f.create_dataset(EVENTS_KEY, data=out)
        f.create_dataset(ENERGY_KEY, data=energy)
        if has_direction or lay.depth_unit == "layer":
            f.create_dataset(_P_NORM, data=p_norm if lay.p_norm_transposed else p_norm.T)
        f.create_dataset("pdg", data=cond.pdg.astype(np.int32))
        f.create_dataset("theta", data=cond.theta.astype(np.float32))
        f.create_dataset("phi", data=cond.phi.astype(np.float32))
        if lay.store_layer:
            lay_arr = np.zeros((n, slots), dtype=np.int16)
            lay_arr[rows, pos] = layer
            f.create_dataset("layer", data=lay_arr)
        keys = [k for k in cond.extra if k not in _P_NORM_EXTRA]
        for key in keys:
            f.create_dataset(key, data=np.asarray(cond.extra[key]))
        f.attrs["format"] = "pointcloud"
        f.attrs["layout"] = lay.to_json()
        f.attrs["condition_keys"] = json.dumps(keys)
        f.attrs["energy_unit"] = lay.hit_unit
        if showers.geometry is not None:
            f.attrs["geometry"] = showers.geometry.name
            f.attrs["geometry_json"] = json.dumps(showers.geometry.to_dict())
    return p
