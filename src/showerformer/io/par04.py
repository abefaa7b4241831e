"""Par04 shower images (Geant4 example Par04): read and write them as voxel showers.

The Geant4 example ``examples/extended/parameterisations/Par04`` scores showers in a cylindrical
mesh of 18 radial x 50 azimuthal x 45 longitudinal cells (2.325 mm, 2 pi / 50, 3.4 mm) and its
HDF5 images keep the mesh order **(N, r, phi, z)**. Two layouts exist:

- ``"named"``, written by the Par04 EDM4hep/ROOT -> HDF5 conversion scripts (and by this module):
  ``showers`` (N, r, phi, z) cell energies in MeV, ``incident_energy`` (N,) in MeV (also accepted:
  ``incident_energies``, (N, 1)), optional ``incident_theta`` and ``incident_phi`` (N,) in rad.
- ``"per_energy"``, the Zenodo record "High Granularity Electromagnetic Calorimeter Shower Images"
  (files ``SiW_angle_70.h5``, ``SciPb_angle_50.h5``, ...): one dataset per incident energy, named
  by the energy in **GeV** (``"1"``, ``"2"``, ... ``"1024"``), each (n, r, phi, z) in MeV; the
  incident angle is only in the file name, in **degrees** (90 = perpendicular entry).

The library's ``par04`` geometry orders cells (layer = z, alpha = phi, r), r fastest, like the
CaloChallenge files (which were made from the same images with exactly this transposition), so
reading transposes (N, r, phi, z) -> (N, z, phi, r) and flattens; writing does the inverse. Par04
counts phi bins from -pi, as the geometry's alpha bins, and z is the depth along the particle
direction. Angles become rad and energies MeV. Grids of another size (e.g. 9 x 16 x 45 = ``ds2``)
work the same way on a matching uniform cylindrical geometry.

When neither the caller nor the file declares the energy unit, the reader checks it: showers whose
median deposited energy exceeds 3 x the incident energy mean the unit is wrong (a GeV file read as
MeV), and an :class:`InputError` asks for ``energy_unit``. Not read: the older per-event group
layouts (``Energy_{E}_Angle_{A}.hdf5``, and the ``Angle_90`` group of one dataset per shower that
CaloChallenge ds2/ds3 were made from).

The writer stores the named layout: ``showers`` float32 (N, r, phi, z), ``incident_energy``
float64 (N,) (float64 so that energies round trip exactly), ``incident_theta`` and
``incident_phi`` float32 (rad), ``pdg`` int32 and any ``Conditions.extra`` under its own name,
with file attributes ``energy_unit="MeV"``, ``angle_unit="rad"``, ``geometry``, ``geometry_json``.

References:
    Geant4 example ``examples/extended/parameterisations/Par04`` (its README cites the Zenodo
    record 6082201 of the full-simulation showers), read as its authors' training code does
    (DalilaSalamani/MLFastSim ``preprocess.py``: ``{geometry}_angle_{degrees}.h5``, one dataset
    per energy in GeV); CaloChallenge 2022 dataset 3 (arXiv:2410.21611).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from showerformer.errors import InputError
from showerformer.geometry import CylindricalGeometry, Geometry, get_geometry
from showerformer.io.calochallenge import (
    _block_rows,
    _check_energy_block,
    _check_range,
    _dataset,
    _one_line,
    _open_h5,
    _per_shower,
    _read_column,
    _read_conditions,
    _ShowerFileWriter,
    _slice_bounds,
    _stored_geometry,
)
from showerformer.showers import Conditions, VoxelShowers

__all__ = [
    "ENERGY_KEY",
    "PHI_KEY",
    "SHOWERS_KEY",
    "THETA_KEY",
    "Par04Writer",
    "iter_par04",
    "par04_layout",
    "read_par04",
    "write_par04",
]

SHOWERS_KEY = "showers"
"""Dataset of the cell energies, (N, r, phi, z) in MeV."""
ENERGY_KEY = "incident_energy"
"""Dataset of the incident energies, (N,) in MeV."""
THETA_KEY = "incident_theta"
"""Dataset of the incident polar angles, (N,) in rad."""
PHI_KEY = "incident_phi"
"""Dataset of the incident azimuthal angles, (N,) in rad."""

_ENERGY_KEYS = (ENERGY_KEY, "incident_energies")
_EXPECTED = ("'showers' (N, r, phi, z) with 'incident_energy' (N,) in MeV, or one (n, r, phi, z) "
             "dataset per incident energy named by the energy in GeV")
_ENERGY_UNITS = {"ev": 1e-6, "kev": 1e-3, "mev": 1.0, "gev": 1e3, "tev": 1e6}
_ANGLE_UNITS = {"rad": 1.0, "radian": 1.0, "radians": 1.0,
                "deg": math.pi / 180, "degree": math.pi / 180, "degrees": math.pi / 180}
_GEOMETRY_CANDIDATES = ("par04", "ds2", "ds3")
_MAX_DEPOSIT_RATIO = 3.0  # median deposited / incident energy above which units must be wrong
_ANGLE_IN_NAME = re.compile(r"angle[_-]?(\d+(?:\.\d+)?)", re.IGNORECASE)

GeometryLike = str | os.PathLike[str] | Geometry


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def par04_layout(f: h5py.File) -> str | None:
    """``"named"``, ``"per_energy"`` or None: which Par04 layout an open HDF5 file has."""
    if SHOWERS_KEY in f:
        obj = f[SHOWERS_KEY]
        return "named" if isinstance(obj, h5py.Dataset) and obj.ndim == 4 else None
    datasets = [v for v in f.values() if isinstance(v, h5py.Dataset)]
    if datasets and all(_is_number(Path(d.name).name) and d.ndim == 4 for d in datasets):
        return "per_energy"
    return None


def _attr_text(obj: Any, *names: str) -> str | None:
    for name in names:
        raw = obj.attrs.get(name)
        if raw is not None:
            return raw.decode() if isinstance(raw, bytes) else str(raw)
    return None


def _unit_factor(unit: str, table: dict[str, float], path: Any, key: str) -> float:
    factor = table.get(unit.strip().lower())
    if factor is None:
        raise InputError(f"unknown unit {unit!r}", path=path, key=key,
                         expected=f"one of {', '.join(sorted(set(table)))}")
    return factor


def _geometry_for_shape(geometry: GeometryLike | None, shape: tuple[int, int, int],
                        f: h5py.File, path: Any, key: str) -> CylindricalGeometry:
    """The geometry whose (layer, alpha, r) grid is the file's (z, phi, r)."""
    n_r, n_phi, n_z = shape
    want = (n_z, n_phi, n_r)
    if geometry is not None:
        geo = get_geometry(geometry)
        if not isinstance(geo, CylindricalGeometry) or geo.shape != want:
            grid = geo.shape if isinstance(geo, CylindricalGeometry) else "a Cartesian grid"
            raise InputError(f"(r, phi, z) = {shape} does not fit geometry {geo.name} "
                             f"(layer, alpha, r) = {grid}", path=path, key=key,
                             expected=f"a uniform cylindrical geometry with {want}")
        return geo
    stored = _stored_geometry(f, path)
    if isinstance(stored, CylindricalGeometry) and stored.shape == want:
        return stored
    for name in _GEOMETRY_CANDIDATES:
        geo = get_geometry(name)
        assert isinstance(geo, CylindricalGeometry)
        if geo.shape == want:
            return geo
    raise InputError(f"(r, phi, z) = {shape} fits no known geometry", path=path, key=key,
                     expected="(18, 50, 45) for par04 or (9, 16, 45) for ds2, or a geometry "
                     "given explicitly")


class _Par04File:
    """The validated layout of an open Par04 file; reads any range of showers."""

    def __init__(
        self, f: h5py.File, path: Any, geometry: GeometryLike | None, *,
        energy_unit: str | None, angle_unit: str | None, theta: float | None,
    ) -> None:
        self.f, self.path = f, path
        datasets = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
        if not datasets:
            raise InputError("the HDF5 file holds no datasets", path=path, key=SHOWERS_KEY,
                             expected=_EXPECTED)
        self.layout = "named" if SHOWERS_KEY in f else "per_energy"
        self.theta_override = theta
        self.segments: list[tuple[str, int, int]] = []  # (key, first, end) in global indices
        if self.layout == "named":
            self._init_named(energy_unit, angle_unit)
        else:
            self._init_per_energy(datasets, energy_unit)
        self.n = self.segments[-1][2] if self.segments else 0
        if self.n == 0:
            raise InputError("the file holds 0 showers", path=path, key=self.segments[0][0]
                             if self.segments else SHOWERS_KEY, expected="at least one shower")
        self.geometry = _geometry_for_shape(geometry, self.shape, f, path, self.segments[0][0])

    def _init_named(self, energy_unit: str | None, angle_unit: str | None) -> None:
        f, path = self.f, self.path
        s = _dataset(f, SHOWERS_KEY, path, _EXPECTED)
        if s.ndim != 4:
            raise InputError(f"shape {s.shape}", path=path, key=SHOWERS_KEY,
                             expected="a 4-D array (N, r, phi, z)")
        n = int(s.shape[0])
        key = next((k for k in _ENERGY_KEYS if k in f), ENERGY_KEY)
        e = _dataset(f, key, path, "(N,) incident energies in MeV")
        if not (e.ndim == 1 or (e.ndim == 2 and e.shape[1] == 1)):
            raise InputError(f"shape {e.shape}", path=path, key=key,
                             expected="(N,) incident energies")
        if e.shape[0] != n:
            raise InputError(f"{e.shape[0]} incident energies for {n} showers", path=path,
                             key=key, expected=f"one per shower, ({n},)")
        self.energy_ds = e
        self.energy_key = key
        unit = energy_unit or _attr_text(e, "unit", "units") or _attr_text(f, "energy_unit")
        self.unit_declared = unit is not None
        self.energy_factor = _unit_factor(unit or "MeV", _ENERGY_UNITS, path, key)
        unit = angle_unit
        if unit is None and THETA_KEY in f:
            unit = _attr_text(f[THETA_KEY], "unit", "units")
        unit = unit or _attr_text(f, "angle_unit") or "rad"
        self.angle_unit = unit.strip().lower()
        self.angle_factor = _unit_factor(unit, _ANGLE_UNITS, path, THETA_KEY)
        self.shape = tuple(int(d) for d in s.shape[1:])
        self.segments = [(SHOWERS_KEY, 0, n)]

    def _init_per_energy(self, datasets: list[str], energy_unit: str | None) -> None:
        f, path = self.f, self.path
        numeric = sorted((k for k in datasets if _is_number(k)), key=float)
        if not numeric:
            found = ", ".join(repr(k) for k in f.keys())
            raise InputError(f"missing (the file holds {found})", path=path, key=SHOWERS_KEY,
                             expected=_EXPECTED)
        shape = None
        first = 0
        for key in numeric:
            ds = _dataset(f, key, path, "(n, r, phi, z) cell energies in MeV")
            if ds.ndim != 4 or (shape is not None and ds.shape[1:] != shape):
                grid = "" if shape is None else f" with (r, phi, z) = {shape} as the other energies"
                raise InputError(f"shape {ds.shape}", path=path, key=key,
                                 expected=f"a 4-D array (n, r, phi, z){grid}")
            shape = ds.shape[1:]
            if float(key) <= 0:
                raise InputError(f"incident energy {key} GeV", path=path, key=key,
                                 expected="dataset names that are energies > 0")
            self.segments.append((key, first, first + int(ds.shape[0])))
            first += int(ds.shape[0])
        assert shape is not None
        self.shape = tuple(int(d) for d in shape)
        unit = energy_unit or _attr_text(f, "energy_unit")
        self.unit_declared = unit is not None
        self.energy_factor = _unit_factor(unit or "GeV", _ENERGY_UNITS, path, numeric[0])
        self.energy_key = numeric[0]
        self.angle_factor = math.pi / 180
        self.angle_unit = "deg"

    # -- reading
    def read(self, lo: int, hi: int, block_rows: int | None = None) -> VoxelShowers:
        n_r, n_phi, n_z = self.shape
        n_cells = n_r * n_phi * n_z
        out = np.empty((hi - lo, n_cells), dtype=np.float32)  # (n, z * phi * r)
        for key, first, end in self.segments:
            a, b = max(lo, first), min(hi, end)
            if a >= b:
                continue
            ds = self.f[key]
            rows = block_rows or _block_rows(n_cells * ds.dtype.itemsize)
            for s in range(a, b, rows):
                t = min(b, s + rows)
                try:
                    block = ds[s - first:t - first]  # (k, r, phi, z), file dtype
                except OSError as exc:
                    raise InputError(f"cannot read showers {s - first}..{t - first} "
                                     f"({_one_line(exc)})",
                                     path=self.path, key=key,
                                     expected="a complete, uncorrupted file") from exc
                _check_energy_block(block, s - first, self.path, key,
                                    cell_index=lambda c: f"cell (r, phi, z) = {c}")
                dest = out[s - lo:t - lo].reshape(t - s, n_z, n_phi, n_r)  # a view
                dest[...] = block.transpose(0, 3, 2, 1)
        cond = self._conditions(lo, hi)
        if not self.unit_declared and hi > lo:
            self._check_energy_scale(out, cond.energy, lo)
        return VoxelShowers(out, cond, self.geometry)

    def _check_energy_scale(self, cells: np.ndarray, energy: np.ndarray, lo: int) -> None:
        """Refuse incident energies far below the deposited energy: a unit mix-up.

        A calorimeter cannot see more than the incident energy; the median deposited fraction
        is ~0.02 for raw Par04 silicon deposits and ~1 after sampling-fraction scaling.
        """
        ratio = float(np.median(cells.sum(axis=1, dtype=np.float64) / energy))
        if ratio > _MAX_DEPOSIT_RATIO:
            raise InputError(
                f"showers {lo}..{lo + len(energy)} deposit {ratio:.3g} x their incident energy "
                "(median), so the incident energies are not in the assumed unit", path=self.path,
                key=self.energy_key, expected="energy_unit='GeV' (or 'MeV') passed to the "
                "reader, or a 'unit' attribute on the dataset")

    def _conditions(self, lo: int, hi: int) -> Conditions:
        f, path = self.f, self.path
        if self.layout == "named":
            energy = _read_column(self.energy_ds, lo, hi).astype(np.float64) * self.energy_factor
            cond = _read_conditions(f, lo, hi, self.n, path, energy=energy,
                                    names={"pdg": "pdg"})
            for field, key in (("theta", THETA_KEY), ("phi", PHI_KEY)):
                if key in f:
                    values = _read_column(_per_shower(f, key, self.n, path), lo, hi)
                    setattr(cond, field, self._angles(values, lo, key, field))
        else:
            energy = np.concatenate([
                np.full(max(0, min(hi, end) - max(lo, first)), float(key), dtype=np.float64)
                for key, first, end in self.segments]) * self.energy_factor
            cond = Conditions(energy)
            angle = _ANGLE_IN_NAME.search(Path(path).name)
            if angle is not None:
                cond.theta = np.full(hi - lo, float(angle.group(1)) * self.angle_factor,
                                     dtype=np.float32)
        bad = ~np.isfinite(cond.energy) | (cond.energy <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"invalid incident energy {float(cond.energy[i])!r} at shower "
                             f"{lo + i}", path=path, key=self.energy_key,
                             expected="finite incident energies > 0")
        if self.theta_override is not None:
            cond.theta = np.full(hi - lo, self.theta_override, dtype=np.float32)
        return cond

    def _angles(self, values: np.ndarray, lo: int, key: str, field: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise InputError(f"NaN or inf at shower {lo + i}", path=self.path, key=key,
                             expected="finite angles")
        limit = math.pi if field == "theta" else 2 * math.pi
        if self.angle_factor == 1.0 and values.size and np.abs(values).max() > limit + 1e-6:
            raise InputError(f"angle {float(np.abs(values).max()):g} exceeds {limit:.4g} rad "
                             "(degrees?)", path=self.path, key=key,
                             expected="angles in rad, or angle_unit='deg' / a 'unit' attribute")
        return (values * self.angle_factor).astype(np.float32)


def read_par04(
    path: str | os.PathLike[str],
    geometry: GeometryLike | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    chunk_size: int | None = None,
    energy_unit: str | None = None,
    angle_unit: str | None = None,
    theta: float | None = None,
) -> VoxelShowers:
    """Read a Par04 image file (either layout) into :class:`VoxelShowers`.

    Arguments:
        path: the HDF5 file.
        geometry: default: the stored geometry, else ``par04`` for 18 x 50 x 45 images
            (``ds2`` for 9 x 16 x 45); any uniform cylindrical geometry whose
            (layers, alpha, r) equals the file's (z, phi, r).
        start, stop: the showers to read, as in ``showers[start:stop]`` but integers >= 0
            counted from the start of the file (for the per-energy layout, over the datasets
            in increasing energy); ``stop=None`` reads to the end.
        chunk_size: showers converted at once; default about 64 MiB of file data.
        energy_unit: unit of the file's incident energies, overriding the file (``"MeV"`` for
            the named layout, ``"GeV"`` for the per-energy dataset names by default).
        angle_unit: ``"rad"`` or ``"deg"`` for ``incident_theta`` / ``incident_phi``,
            overriding the file's ``unit`` attribute (default rad).
        theta: the incident polar angle in rad for every shower, overriding the file (the
            per-energy layout otherwise takes it from ``angle_<degrees>`` in the file name).

    Returns:
        Showers on the geometry, cells in (z, phi, r) order, energies in MeV, angles in rad.

    Raises:
        InputError: missing or unreadable file, missing keys, wrong shapes, lengths that do not
            match, unknown grid, NaN / inf / negative energies, a file of 0 showers, unknown
            units, a negative ``start`` or ``stop``.
    """
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size={chunk_size}", key="chunk_size", expected="an integer >= 1")
    _check_range(start, stop, path)
    with _open_h5(path, _EXPECTED) as f:
        pf = _Par04File(f, path, geometry, energy_unit=energy_unit, angle_unit=angle_unit,
                        theta=theta)
        lo, hi = _slice_bounds(start, stop, pf.n)
        return pf.read(lo, hi, chunk_size)


def iter_par04(
    path: str | os.PathLike[str],
    chunk_size: int | None = 10000,
    geometry: GeometryLike | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    energy_unit: str | None = None,
    angle_unit: str | None = None,
    theta: float | None = None,
) -> Iterator[VoxelShowers]:
    """Stream a Par04 file as chunks of ``chunk_size`` showers (None: about 64 MiB).

    The layout is checked when called; energies are checked while iterating. Other arguments
    as in :func:`read_par04`.
    """
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size={chunk_size}", key="chunk_size", expected="an integer >= 1")
    _check_range(start, stop, path)
    kw = dict(energy_unit=energy_unit, angle_unit=angle_unit, theta=theta)
    with _open_h5(path, _EXPECTED) as f:
        pf = _Par04File(f, path, geometry, **kw)
        lo, hi = _slice_bounds(start, stop, pf.n)
        geo = pf.geometry
    return _iter_chunks(path, geo, lo, hi, chunk_size, kw)


def _iter_chunks(path: Any, geo: Geometry, lo: int, hi: int, chunk_size: int | None,
                 kw: dict[str, Any]) -> Iterator[VoxelShowers]:
    with _open_h5(path, _EXPECTED) as f:
        pf = _Par04File(f, path, geo, **kw)
        step = chunk_size or _block_rows(geo.n_cells * 4)
        for a in range(lo, hi, step):
            yield pf.read(a, min(hi, a + step))


class Par04Writer(_ShowerFileWriter):
    """Stream showers into a Par04 HDF5 file (named layout), atomically.

    Cells are written in the Par04 mesh order (N, r, phi, z); see the module docstring for the
    datasets. Use as a context manager and :meth:`append` chunks; the file replaces ``path``
    only when the ``with`` block ends normally.

    Arguments:
        path: the target file.
        geometry: a uniform cylindrical geometry (``par04`` by default in :func:`write_par04`).
        compression, compression_opts: ``"gzip"`` (level) , ``"lzf"`` or None.
        extra_keys: ``"auto"`` (pdg, theta, phi and every ``Conditions.extra`` key), None or a
            list of names.
    """

    FORMAT: ClassVar[str] = "par04"
    CONDITION_NAMES: ClassVar[dict[str, str]] = {"pdg": "pdg", "theta": THETA_KEY, "phi": PHI_KEY}

    def __init__(
        self,
        path: str | os.PathLike[str],
        geometry: GeometryLike = "par04",
        *,
        compression: str | None = "gzip",
        compression_opts: int | None = None,
        extra_keys: str | Sequence[str] | None = "auto",
    ) -> None:
        super().__init__(path, geometry, compression=compression,
                         compression_opts=compression_opts, extra_keys=extra_keys)
        geo = self.geometry
        if not isinstance(geo, CylindricalGeometry) or geo.shape is None:
            raise InputError(f"geometry {geo.name} has no regular (layer, alpha, r) grid",
                             path=self.path, key="geometry",
                             expected="a uniform cylindrical geometry such as par04")
        n_z, n_phi, n_r = geo.shape
        self.image_shape = (n_r, n_phi, n_z)

    def __enter__(self) -> Par04Writer:
        super().__enter__()
        return self

    def _main_keys(self) -> tuple[str, ...]:
        return (ENERGY_KEY, SHOWERS_KEY)

    def _create_main(self, f: h5py.File) -> None:
        shape = self.image_shape
        rows = min(1024, _block_rows(int(np.prod(shape)) * 4, 1 << 20))
        f.attrs["layout"] = "named"
        f.attrs["angle_unit"] = "rad"
        f.create_dataset(ENERGY_KEY, shape=(0,), maxshape=(None,), dtype=np.float64,
                         chunks=(4096,), **self._filters())
        f.create_dataset(SHOWERS_KEY, shape=(0, *shape), maxshape=(None, *shape),
                         dtype=np.float32, chunks=(rows, *shape), **self._filters())

    def _write_main(self, showers: VoxelShowers, lo: int, hi: int) -> None:
        f = self._file
        assert f is not None
        n_r, n_phi, n_z = self.image_shape
        f[ENERGY_KEY].resize(hi, axis=0)
        f[ENERGY_KEY][lo:hi] = showers.conditions.energy
        ds = f[SHOWERS_KEY]
        ds.resize(hi, axis=0)
        rows = _block_rows(showers.geometry.n_cells * 4)
        for a in range(0, hi - lo, rows):
            b = min(hi - lo, a + rows)
            block = showers.energies[a:b].reshape(b - a, n_z, n_phi, n_r)
            ds[lo + a:lo + b] = np.ascontiguousarray(block.transpose(0, 3, 2, 1))  # (k, r, phi, z)


def write_par04(
    path: str | os.PathLike[str],
    showers: VoxelShowers,
    *,
    compression: str | None = "gzip",
    extra_keys: str | Sequence[str] | None = "auto",
) -> Path:
    """Write showers as a Par04 HDF5 file (named layout, atomically; see :class:`Par04Writer`).

    Returns:
        The path written.
    """
    if not isinstance(showers, VoxelShowers):
        raise InputError(f"cannot write {type(showers).__name__} as Par04 images", path=path,
                         key="showers", expected="VoxelShowers (voxelize point clouds first)")
    with Par04Writer(path, showers.geometry, compression=compression,
                     extra_keys=extra_keys) as writer:
        writer.append(showers)
    return Path(path)
