"""CaloChallenge 2022 HDF5 shower files: chunked reading, streaming and atomic writing.

File layout (as published on Zenodo and read by the official ``code/evaluate.py`` of
CaloChallenge/homepage):

- ``incident_energies``: (N, 1), incident energy in MeV. The official evaluation uses it as a
  2-D column (``np.log10(E_inc)`` is concatenated with the voxels along ``axis=1``), so it must be
  (N, 1); this reader also accepts (N,).
- ``showers``: (N, n_voxels), energy per voxel in MeV, flattened layer by layer, then angular bin,
  radial bin fastest (368 / 533 / 6480 / 40500 voxels for ds1-photons / ds1-pions / ds2 / ds3).

The official ``check_file`` only compares the two lengths and ``showers.shape[1]``; it does not
look at dtypes (the evaluation turns everything into float64). The published files were written
by h5py with gzip: ``incident_energies`` is float64 everywhere (built from Python floats); ds1
``showers`` are float64 (from CSV), ds2/ds3 ``showers`` inherit the dtype of the Geant4 source.

What this module writes (decided here):

- ``incident_energies``: float64 (N, 1), as in every published file, so incident energies round
  trip bit-exactly (``Conditions.energy`` is float64).
- ``showers``: float32 (N, n_voxels) by default: :class:`VoxelShowers` hold float32, so float32 is
  lossless for them and halves the file size; ``showers_dtype=np.float64`` reproduces ds1 exactly.
- Both chunked along showers, resizable, gzip-compressed.
- Extra per-shower conditions the official evaluation ignores: ``pdg`` (int32), ``theta`` and
  ``phi`` (float32, rad) and every ``Conditions.extra`` entry under its own name (e.g.
  ``momentum``); the file attribute ``condition_keys`` (JSON list) names the stored extras.
- File attributes ``format`` (``"calochallenge"``), ``geometry`` (the name),
  ``geometry_json`` (``Geometry.to_dict()`` as JSON) and ``energy_unit`` (``"MeV"``).

Reading fills one preallocated float32 array block by block (about 64 MiB per block), converting
the dtype and checking for NaN, inf and negative energies per block, so a 1.4 GB ds3 file is never
held twice in memory.

References:
    CaloChallenge 2022, https://calochallenge.github.io/homepage/ (arXiv:2410.21611).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import h5py
import numpy as np

from showerformer.errors import InputError
from showerformer.geometry import PRESETS, Geometry, geometry_for_cells, get_geometry
from showerformer.io._h5file import SpaceCheckedFile, create_h5
from showerformer.showers import Conditions, VoxelShowers

__all__ = [
    "ENERGY_KEY",
    "SHOWERS_KEY",
    "CaloChallengeWriter",
    "iter_calochallenge",
    "read_calochallenge",
    "write_calochallenge",
]

ENERGY_KEY = "incident_energies"
"""Dataset of the incident energies, (N, 1) in MeV."""
SHOWERS_KEY = "showers"
"""Dataset of the voxel energies, (N, n_voxels) in MeV."""

_EXPECTED = "datasets 'incident_energies' (N, 1) and 'showers' (N, n_voxels) in MeV"
_READ_BLOCK_BYTES = 64 << 20  # bytes of file data converted at once while reading
_WRITE_CHUNK_BYTES = 1 << 20  # target size of one HDF5 chunk of showers
_CACHE_BYTES = 32 << 20  # HDF5 chunk cache per dataset while reading
_CACHE_SLOTS = 10007  # hash slots of that cache (a prime, ~100 x the chunks it holds)
_NUMERIC_KINDS = "fiu"

GeometryLike = str | os.PathLike[str] | Geometry


# ---------------------------------------------------------------------------- shared helpers
@contextlib.contextmanager
def _open_h5(path: str | os.PathLike[str], expected: str) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; every failure becomes a one-line :class:`InputError`."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", path=p, expected=expected)
    if p.is_dir():
        raise InputError("is a directory, not a file", path=p, expected=expected)
    if not os.access(p, os.R_OK):
        raise InputError("not readable (permission denied)", path=p, expected=expected)
    if p.stat().st_size == 0:
        raise InputError("empty file (0 bytes)", path=p, expected=expected)
    try:
        f = h5py.File(p, "r", rdcc_nbytes=_CACHE_BYTES, rdcc_nslots=_CACHE_SLOTS)
    except OSError as exc:
        raise InputError(f"not a readable HDF5 file ({_one_line(exc)})", path=p,
                         expected=expected) from exc
    try:
        yield f
    except OSError as exc:  # truncated or corrupt data found while reading
        raise InputError(f"cannot read the file, truncated or corrupt ({_one_line(exc)})",
                         path=p, expected=expected) from exc
    finally:
        with contextlib.suppress(Exception):
            f.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _dataset(f: h5py.File, key: str, path: Any, expected: str) -> h5py.Dataset:
    """The dataset ``key`` or an :class:`InputError` saying what the file holds instead."""
    if key not in f:
        found = ", ".join(repr(k) for k in f.keys()) or "nothing"
        raise InputError(f"missing (the file holds {found})", path=path, key=key,
                         expected=expected)
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise InputError("is a group, not a dataset", path=path, key=key, expected=expected)
    if obj.dtype.kind not in _NUMERIC_KINDS:
        raise InputError(f"has dtype {obj.dtype}", path=path, key=key,
                         expected="numbers (float or integer)")
    return obj


def _check_energy_block(values: np.ndarray, offset: int, path: Any, key: str,
                        cell_index: Any = None) -> None:
    """Raise for NaN, inf or negative values in a block of cell energies (rows = showers)."""
    if values.size == 0:
        return
    lo, hi = values.min(), values.max()  # NaN propagates through min/max
    if np.isfinite(lo) and np.isfinite(hi) and lo >= 0:
        return
    bad = ~np.isfinite(values)
    what = "NaN or inf" if bad.any() else "a negative energy"
    if not bad.any():
        bad = values < 0
    idx = np.argwhere(bad)[0]
    where = f"shower {offset + int(idx[0])}"
    if len(idx) > 1:
        cell = tuple(int(i) for i in idx[1:])
        label = cell_index(cell) if cell_index is not None else f"voxel {cell[0]}"
        where += f", {label}"
    raise InputError(f"{what} ({float(values[tuple(idx)])!r}) at {where}", path=path, key=key,
                     expected="finite energies >= 0 MeV")


def _check_incident(values: np.ndarray, offset: int, path: Any, key: str) -> None:
    """Raise unless every incident energy is finite and > 0."""
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"invalid incident energy {float(values[i])!r} at shower {offset + i}",
                         path=path, key=key, expected="finite incident energies > 0 MeV")


def _per_shower(f: h5py.File, key: str, n: int, path: Any) -> h5py.Dataset:
    """A per-shower dataset of shape (N,) or (N, 1) (or (N, ...) for extras)."""
    ds = _dataset(f, key, path, "one value per shower")
    if ds.ndim == 0 or ds.shape[0] != n:
        raise InputError(f"shape {ds.shape} for {n} showers", path=path, key=key,
                         expected=f"({n},) or ({n}, 1)")
    return ds


def _read_column(ds: h5py.Dataset, lo: int, hi: int) -> np.ndarray:
    arr = ds[lo:hi]
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    return arr


def _condition_keys(f: h5py.File, path: Any) -> list[str]:
    raw = f.attrs.get("condition_keys")
    if raw is None:
        return []
    try:
        keys = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ValueError
    except ValueError:
        raise InputError(f"cannot parse {raw!r}", path=path, key="condition_keys (attribute)",
                         expected="a JSON list of dataset names") from None
    return keys


def _read_conditions(
    f: h5py.File, lo: int, hi: int, n: int, path: Any, *, energy: np.ndarray,
    names: dict[str, str],
) -> Conditions:
    """Conditions of showers ``lo:hi``: the given energies plus pdg/theta/phi/extras if stored.

    ``names`` maps ``"pdg"``, ``"theta"``, ``"phi"`` to the dataset names of this layout.
    """
    kw: dict[str, Any] = {}
    for field, key in names.items():
        if key in f:
            values = _read_column(_per_shower(f, key, n, path), lo, hi)
            if field != "pdg" and not np.isfinite(values).all():
                i = int(np.flatnonzero(~np.isfinite(values))[0])
                raise InputError(f"NaN or inf at shower {lo + i}", path=path, key=key,
                                 expected="finite angles in rad")
            kw[field] = values
    extra = {}
    for key in _condition_keys(f, path):
        if key in names.values():
            continue
        ds = _per_shower(f, key, n, path)
        values = ds[lo:hi]
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        extra[key] = values
    return Conditions(energy, extra=extra, **kw)


@functools.lru_cache(maxsize=1)
def _known_counts() -> str:
    by_count: dict[int, list[str]] = {}
    for name in PRESETS:
        by_count.setdefault(get_geometry(name).n_cells, []).append(name)
    return ", ".join(f"{count} ({' / '.join(names)})" for count, names in by_count.items())


def _stored_geometry(f: h5py.File, path: Any) -> Geometry | None:
    raw = f.attrs.get("geometry_json")
    if raw is None:
        return None
    try:
        return Geometry.from_dict(json.loads(raw.decode() if isinstance(raw, bytes) else raw))
    except (ValueError, KeyError, TypeError):
        raise InputError("cannot parse the stored geometry", path=path,
                         key="geometry_json (attribute)",
                         expected="Geometry.to_dict() as JSON") from None


def _resolve_geometry(geometry: GeometryLike | None, n_cells: int, f: h5py.File, path: Any,
                      key: str = SHOWERS_KEY) -> Geometry:
    """The given geometry (checked against ``n_cells``), the stored one, or the preset."""
    if geometry is not None:
        geo = get_geometry(geometry)
        if geo.n_cells != n_cells:
            raise InputError(f"{n_cells} voxels per shower do not match geometry {geo.name}",
                             path=path, key=key,
                             expected=f"{geo.n_cells} voxels for {geo.name}")
        return geo
    stored = _stored_geometry(f, path)
    if stored is not None and stored.n_cells == n_cells:
        return stored
    geo = geometry_for_cells(n_cells)
    if geo is None:
        raise InputError(f"{n_cells} voxels per shower fit no known geometry", path=path,
                         key=key, expected=f"one of {_known_counts()} voxels, or a "
                         "geometry (preset name or binning XML) given explicitly")
    return geo


def _block_rows(row_bytes: int, budget: int = _READ_BLOCK_BYTES) -> int:
    return max(1, budget // max(1, row_bytes))


def _check_range(start: Any, stop: Any, path: Any = None,
                 keys: tuple[str, str] = ("start", "stop")) -> None:
    """Raise unless ``start`` is an integer >= 0 and ``stop`` None or an integer >= 0.

    Negative values are refused rather than counted from the end as in Python slices: a
    ``stop`` of -1 (e.g. ``--max-showers -1``) would silently read all showers but the last.
    """
    for key, value, optional in ((keys[0], start, False), (keys[1], stop, True)):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            more = ", or None for the end of the file" if optional else ""
            raise InputError(f"{key}={value!r}", path=path, key=key,
                             expected=f"a shower count from the start of the file, an integer "
                             f">= 0{more}")


def _slice_bounds(start: int, stop: int | None, n: int) -> tuple[int, int]:
    lo, hi, _ = slice(start, stop).indices(n)
    return lo, max(lo, hi)


# ---------------------------------------------------------------------------- reading
class _CaloChallengeFile:
    """The validated layout of an open CaloChallenge file."""

    def __init__(self, f: h5py.File, path: Any, geometry: GeometryLike | None) -> None:
        self.f, self.path = f, path
        if not any(isinstance(obj, h5py.Dataset) for obj in f.values()):
            raise InputError("the HDF5 file holds no datasets", path=path, key=SHOWERS_KEY,
                             expected=_EXPECTED)
        self.showers = _dataset(f, SHOWERS_KEY, path, _EXPECTED)
        self.energy = _dataset(f, ENERGY_KEY, path, _EXPECTED)
        s, e = self.showers, self.energy
        if s.ndim != 2:
            raise InputError(f"shape {s.shape}", path=path, key=SHOWERS_KEY,
                             expected="a 2-D array (N, n_voxels)")
        if not (e.ndim == 1 or (e.ndim == 2 and e.shape[1] == 1)):
            raise InputError(f"shape {e.shape}", path=path, key=ENERGY_KEY,
                             expected="(N, 1) incident energies in MeV")
        if e.shape[0] != s.shape[0]:
            raise InputError(f"{e.shape[0]} incident energies for {s.shape[0]} showers",
                             path=path, key=ENERGY_KEY,
                             expected=f"one per shower, ({s.shape[0]}, 1)")
        self.n, self.n_cells = int(s.shape[0]), int(s.shape[1])
        if self.n == 0:
            raise InputError("the file holds 0 showers", path=path, key=SHOWERS_KEY,
                             expected="at least one shower")
        self.geometry = _resolve_geometry(geometry, self.n_cells, f, path)

    def read(self, lo: int, hi: int, block_rows: int | None = None) -> VoxelShowers:
        """Showers ``lo:hi`` into a new float32 array, converted and checked block by block."""
        out = np.empty((hi - lo, self.n_cells), dtype=np.float32)  # (n, n_cells)
        rows = block_rows or _block_rows(self.n_cells * self.showers.dtype.itemsize)
        direct = self.showers.dtype == out.dtype
        for a in range(0, hi - lo, rows):
            b = min(hi - lo, a + rows)
            try:
                if direct:
                    self.showers.read_direct(out, np.s_[lo + a:lo + b], np.s_[a:b])
                else:
                    out[a:b] = self.showers[lo + a:lo + b]
            except OSError as exc:
                raise InputError(f"cannot read showers {lo + a}..{lo + b} ({_one_line(exc)})",
                                 path=self.path, key=SHOWERS_KEY,
                                 expected="a complete, uncorrupted file") from exc
            _check_energy_block(out[a:b], lo + a, self.path, SHOWERS_KEY)
        energy = _read_column(self.energy, lo, hi).astype(np.float64)
        _check_incident(energy, lo, self.path, ENERGY_KEY)
        cond = _read_conditions(self.f, lo, hi, self.n, self.path, energy=energy,
                                names=CaloChallengeWriter.CONDITION_NAMES)
        return VoxelShowers(out, cond, self.geometry)


def read_calochallenge(
    path: str | os.PathLike[str],
    geometry: GeometryLike | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    chunk_size: int | None = None,
) -> VoxelShowers:
    """Read a CaloChallenge HDF5 file (or a slice of it) into :class:`VoxelShowers`.

    The voxels go into one preallocated float32 array, filled ``chunk_size`` showers at a time
    (dtype conversion and NaN / inf / negative checks per block), so no full-size temporary copy
    is made.

    Arguments:
        path: the ``.hdf5`` file.
        geometry: a preset name, a binning XML or a :class:`Geometry`; by default the geometry
            stored by this library's writer, else the preset with this many voxels
            (368 ds1-photons, 533 ds1-pions, 6480 ds2, 40500 ds3).
        start, stop: the showers to read, as in ``showers[start:stop]`` but counted from the
            start of the file only (integers >= 0; ``stop=None`` reads to the end).
        chunk_size: showers per read block; default about 64 MiB of file data.

    Returns:
        The showers (energies in MeV, float32) with their conditions; ``pdg``, ``theta``,
        ``phi`` and extras are restored when the file stores them.

    Raises:
        InputError: missing or unreadable file, missing key, wrong shape, mismatched lengths,
            unknown voxel count, NaN / inf / negative energies, a file of 0 showers, a
            negative ``start`` or ``stop``.
    """
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size={chunk_size}", key="chunk_size", expected="an integer >= 1")
    _check_range(start, stop, path)
    with _open_h5(path, _EXPECTED) as f:
        cc = _CaloChallengeFile(f, path, geometry)
        lo, hi = _slice_bounds(start, stop, cc.n)
        return cc.read(lo, hi, chunk_size)


def iter_calochallenge(
    path: str | os.PathLike[str],
    chunk_size: int | None = 10000,
    geometry: GeometryLike | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[VoxelShowers]:
    """Stream a CaloChallenge file as :class:`VoxelShowers` chunks of ``chunk_size`` showers.

    The layout is checked when this function is called; energies are checked chunk by chunk
    while iterating.

    Arguments:
        path: the ``.hdf5`` file.
        chunk_size: showers per chunk (the last one may be shorter); None picks about 64 MiB.
        geometry: as in :func:`read_calochallenge`.
        start, stop: the range of showers to stream.

    Returns:
        An iterator over consecutive chunks.
    """
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size={chunk_size}", key="chunk_size", expected="an integer >= 1")
    _check_range(start, stop, path)
    with _open_h5(path, _EXPECTED) as f:
        cc = _CaloChallengeFile(f, path, geometry)
        lo, hi = _slice_bounds(start, stop, cc.n)
        geo = cc.geometry
    return _iter_chunks(path, geo, lo, hi, chunk_size)


def _iter_chunks(path: Any, geo: Geometry, lo: int, hi: int,
                 chunk_size: int | None) -> Iterator[VoxelShowers]:
    with _open_h5(path, _EXPECTED) as f:
        cc = _CaloChallengeFile(f, path, geo)
        step = chunk_size or _block_rows(cc.n_cells * cc.showers.dtype.itemsize)
        for a in range(lo, hi, step):
            yield cc.read(a, min(hi, a + step))


# ---------------------------------------------------------------------------- writing
class _ShowerFileWriter:
    """Streams :class:`VoxelShowers` into resizable HDF5 datasets of a temporary file that is
    renamed onto the target when the ``with`` block ends without an exception.

    Subclasses define the main datasets (:meth:`_create_main`, :meth:`_write_main`) and the
    names of the condition datasets (:attr:`CONDITION_NAMES`).
    """

    FORMAT: ClassVar[str] = ""
    CONDITION_NAMES: ClassVar[dict[str, str]] = {"pdg": "pdg", "theta": "theta", "phi": "phi"}
    _CONDITION_DTYPES: ClassVar[dict[str, Any]] = {
        "pdg": np.int32, "theta": np.float32, "phi": np.float32}

    def __init__(
        self,
        path: str | os.PathLike[str],
        geometry: GeometryLike,
        *,
        compression: str | None = "gzip",
        compression_opts: int | None = None,
        extra_keys: str | Sequence[str] | None = "auto",
    ) -> None:
        self.path = Path(path)
        self.geometry = get_geometry(geometry)
        if compression not in (None, "gzip", "lzf"):
            raise InputError(f"compression={compression!r}", key="compression",
                             expected="'gzip', 'lzf' or None")
        self.compression = compression
        self.compression_opts = compression_opts if compression == "gzip" else None
        if not (extra_keys is None or extra_keys == "auto"
                or (not isinstance(extra_keys, str) and isinstance(extra_keys, Sequence))):
            raise InputError(f"extra_keys={extra_keys!r}", key="extra_keys",
                             expected="'auto', None or a list of condition names")
        self._extra_spec = extra_keys
        self._stack: contextlib.ExitStack | None = None
        self._file: h5py.File | None = None
        self._raw: SpaceCheckedFile | None = None
        self._conditions: list[str] | None = None  # condition fields stored, fixed on 1st append
        self._n = 0

    # -- context management
    def __enter__(self) -> _ShowerFileWriter:
        stack = contextlib.ExitStack()
        try:
            self._file, self._raw = stack.enter_context(create_h5(self.path))
            self._file.attrs["format"] = self.FORMAT
            self._file.attrs["geometry"] = self.geometry.name
            self._file.attrs["geometry_json"] = json.dumps(self.geometry.to_dict())
            self._file.attrs["energy_unit"] = "MeV"
            self._create_main(self._file)
            self._raw.raise_if_full()
        except BaseException:
            stack.__exit__(*sys.exc_info())
            raise
        self._stack = stack
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        if exc_type is None and self._n == 0:
            err = InputError("no showers were written", path=self.path, key="showers",
                             expected="at least one shower appended")
            stack.__exit__(InputError, err, None)  # removes the temporary file
            raise err
        return bool(stack.__exit__(exc_type, exc, tb))  # a full disk: OutputError

    @property
    def n_written(self) -> int:
        """Number of showers appended so far."""
        return self._n

    # -- appending
    def append(self, showers: VoxelShowers) -> None:
        """Append a chunk of showers (checked: geometry, finite non-negative energies)."""
        if self._file is None or self._stack is None:
            raise RuntimeError(f"{type(self).__name__} must be used in a 'with' block")
        if not isinstance(showers, VoxelShowers):
            raise InputError(f"cannot write {type(showers).__name__}", path=self.path,
                             key="showers", expected="VoxelShowers")
        if not showers.geometry.same_cells(self.geometry):
            raise InputError(f"showers of geometry {showers.geometry.name}", path=self.path,
                             key="showers", expected=f"showers of {self.geometry.name}")
        showers.validate(path=self.path)
        k = len(showers)
        if k == 0:
            return
        cond = showers.conditions
        if self._conditions is None:
            self._conditions = self._choose_conditions(cond)
            self._create_conditions(cond)
        lo, hi = self._n, self._n + k
        self._write_main(showers, lo, hi)
        for field in self._conditions:
            values = self._condition_values(cond, field)
            ds = self._file[self._dataset_name(field)]
            ds.resize(hi, axis=0)
            ds[lo:hi] = values
        assert self._raw is not None
        self._raw.raise_if_full()  # a full disk stops the writing here, not at the end
        self._n = hi

    def _choose_conditions(self, cond: Conditions) -> list[str]:
        spec = self._extra_spec
        if spec is None:
            return []
        if spec == "auto":
            return ["pdg", "theta", "phi", *sorted(cond.extra)]
        fields = list(spec)
        for field in fields:
            if field not in self.CONDITION_NAMES and field not in cond.extra:
                raise InputError(f"unknown condition {field!r}", path=self.path,
                                 key="extra_keys",
                                 expected=f"pdg, theta, phi or one of {sorted(cond.extra)}")
        return fields

    def _dataset_name(self, field: str) -> str:
        return self.CONDITION_NAMES.get(field, field)

    def _condition_values(self, cond: Conditions, field: str) -> np.ndarray:
        if field in self.CONDITION_NAMES:
            return getattr(cond, field)
        if field not in cond.extra:
            raise InputError(f"condition {field!r} missing in appended showers", path=self.path,
                             key=field, expected="the same conditions in every chunk")
        return cond.extra[field]

    def _create_conditions(self, cond: Conditions) -> None:
        f = self._file
        assert f is not None
        reserved = {*self._main_keys(), *self.CONDITION_NAMES.values()}
        extras = []
        for field in self._conditions or []:
            values = np.asarray(self._condition_values(cond, field))
            name = self._dataset_name(field)
            if field in self.CONDITION_NAMES:
                dtype = self._CONDITION_DTYPES[field]
            else:
                if name in reserved:
                    raise InputError(f"extra condition {name!r} clashes with a reserved dataset",
                                     path=self.path, key=name, expected="another name")
                if values.dtype.kind not in _NUMERIC_KINDS + "b":
                    raise InputError(f"condition of dtype {values.dtype}", path=self.path,
                                     key=name, expected="numbers per shower")
                dtype = values.dtype
                extras.append(name)
            tail = values.shape[1:]
            row_bytes = int(np.prod(tail, dtype=np.int64)) * np.dtype(dtype).itemsize
            rows = min(4096, _block_rows(row_bytes, _WRITE_CHUNK_BYTES))
            f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                             chunks=(rows, *tail), **self._filters())
        f.attrs["condition_keys"] = json.dumps(extras)

    def _filters(self) -> dict[str, Any]:
        if self.compression is None:
            return {}
        kw: dict[str, Any] = {"compression": self.compression}
        if self.compression_opts is not None:
            kw["compression_opts"] = self.compression_opts
        return kw

    # -- the layout
    def _main_keys(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _create_main(self, f: h5py.File) -> None:
        raise NotImplementedError

    def _write_main(self, showers: VoxelShowers, lo: int, hi: int) -> None:
        raise NotImplementedError


class CaloChallengeWriter(_ShowerFileWriter):
    """Stream showers into a CaloChallenge HDF5 file, atomically.

    Use as a context manager and call :meth:`append` with successive chunks; the file appears at
    ``path`` (replacing any earlier one) only when the ``with`` block ends normally. A run that
    fails or is killed leaves the earlier file intact (and at most a hidden temporary file).

    Arguments:
        path: the target ``.hdf5`` file.
        geometry: the showers' geometry (preset name, XML path or :class:`Geometry`).
        compression: ``"gzip"`` (as the published files), ``"lzf"`` or None.
        compression_opts: the gzip level (h5py's default 4 when None).
        extra_keys: per-shower conditions stored besides the official two datasets: ``"auto"``
            (``pdg``, ``theta``, ``phi`` and every ``Conditions.extra`` key of the first chunk),
            None (none) or a list of names. The official evaluation ignores them.
        showers_dtype: dtype of the ``showers`` dataset, float32 (default) or float64.

    Example::

        with CaloChallengeWriter("gen.hdf5", "ds2") as w:
            for chunk in chunks:
                w.append(chunk)
    """

    FORMAT: ClassVar[str] = "calochallenge"

    def __init__(
        self,
        path: str | os.PathLike[str],
        geometry: GeometryLike,
        *,
        compression: str | None = "gzip",
        compression_opts: int | None = None,
        extra_keys: str | Sequence[str] | None = "auto",
        showers_dtype: Any = np.float32,
    ) -> None:
        super().__init__(path, geometry, compression=compression,
                         compression_opts=compression_opts, extra_keys=extra_keys)
        self.showers_dtype = np.dtype(showers_dtype)
        if self.showers_dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise InputError(f"showers_dtype={self.showers_dtype}", key="showers_dtype",
                             expected="float32 or float64")

    def __enter__(self) -> CaloChallengeWriter:
        super().__enter__()
        return self

    def _main_keys(self) -> tuple[str, ...]:
        return (ENERGY_KEY, SHOWERS_KEY)

    def _create_main(self, f: h5py.File) -> None:
        n_cells = self.geometry.n_cells
        rows = min(1024, _block_rows(n_cells * self.showers_dtype.itemsize, _WRITE_CHUNK_BYTES))
        f.create_dataset(ENERGY_KEY, shape=(0, 1), maxshape=(None, 1), dtype=np.float64,
                         chunks=(4096, 1), **self._filters())
        f.create_dataset(SHOWERS_KEY, shape=(0, n_cells), maxshape=(None, n_cells),
                         dtype=self.showers_dtype, chunks=(rows, n_cells), **self._filters())

    def _write_main(self, showers: VoxelShowers, lo: int, hi: int) -> None:
        f = self._file
        assert f is not None
        f[ENERGY_KEY].resize(hi, axis=0)
        f[ENERGY_KEY][lo:hi] = showers.conditions.energy[:, None]  # (k, 1) float64
        f[SHOWERS_KEY].resize(hi, axis=0)
        f[SHOWERS_KEY][lo:hi] = showers.energies  # (k, n_cells)


def write_calochallenge(
    path: str | os.PathLike[str],
    showers: VoxelShowers,
    *,
    compression: str | None = "gzip",
    extra_keys: str | Sequence[str] | None = "auto",
    showers_dtype: Any = np.float32,
) -> Path:
    """Write showers as a CaloChallenge HDF5 file (atomically; see :class:`CaloChallengeWriter`).

    Arguments:
        path: the target file.
        showers: the showers; their geometry defines the voxel count.
        compression, extra_keys, showers_dtype: as in :class:`CaloChallengeWriter`.

    Returns:
        The path written.
    """
    if not isinstance(showers, VoxelShowers):
        raise InputError(f"cannot write {type(showers).__name__} as CaloChallenge voxels",
                         path=path, key="showers",
                         expected="VoxelShowers (voxelize point clouds with to_voxels())")
    with CaloChallengeWriter(path, showers.geometry, compression=compression,
                             extra_keys=extra_keys, showers_dtype=showers_dtype) as writer:
        writer.append(showers)
    return Path(path)
