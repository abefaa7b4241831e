"""Sparse voxel HDF5 files: showers of large grids (e.g. 64^3) stored as lists of hit cells.

A 64^3 grid has 262,144 cells while a 1-20 GeV hadron shower hits a few hundred of them, so dense
(N, n_cells) arrays are out of the question for 100k events (105 GB). This layout keeps only the
hit cells, in CSR form, and is densified per batch (:meth:`SparseVoxelFile.dense`):

- ``offsets``: (N + 1,) int64, the hits of shower ``i`` are rows ``offsets[i]:offsets[i+1]``;
- ``cell``: (H,) int32, flat cell index in the geometry's order (C order (nz, ny, nx) for a
  Cartesian grid, (layer, alpha, r) for a cylindrical one), increasing within a shower;
- ``energy``: (H,) float32, deposited energy in MeV (> 0);
- ``incident_energies``: (N, 1) float64 MeV, as in CaloChallenge files;
- ``pdg`` (N,) int32, ``theta``, ``phi`` (N,) float32 rad and every extra condition under its own
  name (e.g. ``momentum`` (N,) MeV), listed in the attribute ``condition_keys``;
- attributes ``format`` = ``"sparse-voxels"``, ``geometry``, ``geometry_json``, ``energy_unit``.

Files are written atomically (temporary file + rename) and stream chunk by chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from showerformer.errors import InputError
from showerformer.geometry import Geometry, get_geometry
from showerformer.io.calochallenge import (
    ENERGY_KEY,
    _check_range,
    _dataset,
    _open_h5,
    _read_conditions,
    _ShowerFileWriter,
    _stored_geometry,
)
from showerformer.showers import Conditions, VoxelShowers

__all__ = [
    "SPARSE_FORMAT",
    "SparseVoxelFile",
    "SparseVoxelWriter",
    "iter_sparse",
    "read_sparse",
    "write_sparse",
]

SPARSE_FORMAT = "sparse-voxels"
"""The ``format`` attribute of sparse voxel files."""

OFFSETS_KEY, CELL_KEY, HIT_ENERGY_KEY = "offsets", "cell", "energy"
_EXPECTED = ("a sparse voxel HDF5 file ('offsets' (N+1,), 'cell' (H,), 'energy' (H,), "
             "'incident_energies' (N, 1))")
_HIT_CHUNK = 1 << 16


class SparseVoxelWriter(_ShowerFileWriter):
    """Stream showers into a sparse voxel HDF5 file, atomically.

    Use as a context manager and :meth:`append` :class:`VoxelShowers` chunks; only cells with
    energy > 0 are stored. The file appears at ``path`` when the ``with`` block ends normally.

    Arguments:
        path: the target file.
        geometry: the showers' geometry (preset name, XML path or :class:`Geometry`).
        compression: ``"gzip"``, ``"lzf"`` or None.
        compression_opts: the gzip level.
        extra_keys: ``"auto"`` (pdg, theta, phi and every extra condition), None or a list.
    """

    FORMAT: ClassVar[str] = SPARSE_FORMAT

    def __init__(self, path: str | os.PathLike[str], geometry: Any, *,
                 compression: str | None = "gzip", compression_opts: int | None = None,
                 extra_keys: str | Sequence[str] | None = "auto") -> None:
        super().__init__(path, geometry, compression=compression,
                         compression_opts=compression_opts, extra_keys=extra_keys)
        self._n_hits = 0

    def __enter__(self) -> SparseVoxelWriter:
        super().__enter__()
        return self

    def _main_keys(self) -> tuple[str, ...]:
        return (ENERGY_KEY, OFFSETS_KEY, CELL_KEY, HIT_ENERGY_KEY)

    def _create_main(self, f: h5py.File) -> None:
        if self.geometry.n_cells >= 2**31:
            raise InputError(f"geometry with {self.geometry.n_cells} cells", path=self.path,
                             key=CELL_KEY, expected="fewer than 2^31 cells")
        f.create_dataset(ENERGY_KEY, shape=(0, 1), maxshape=(None, 1), dtype=np.float64,
                         chunks=(4096, 1), **self._filters())
        f.create_dataset(OFFSETS_KEY, data=np.zeros(1, dtype=np.int64), maxshape=(None,),
                         chunks=(4096,), **self._filters())
        for key, dtype in ((CELL_KEY, np.int32), (HIT_ENERGY_KEY, np.float32)):
            f.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dtype,
                             chunks=(_HIT_CHUNK,), **self._filters())

    def _write_main(self, showers: VoxelShowers, lo: int, hi: int) -> None:
        f = self._file
        assert f is not None
        rows, cells = np.nonzero(showers.energies > 0)  # row-major: cells increase per shower
        values = showers.energies[rows, cells]
        counts = np.bincount(rows, minlength=hi - lo)
        offsets = self._n_hits + np.cumsum(counts, dtype=np.int64)
        f[ENERGY_KEY].resize(hi, axis=0)
        f[ENERGY_KEY][lo:hi] = showers.conditions.energy[:, None]
        f[OFFSETS_KEY].resize(hi + 1, axis=0)
        f[OFFSETS_KEY][lo + 1:hi + 1] = offsets
        h0, h1 = self._n_hits, self._n_hits + len(values)
        for key, data in ((CELL_KEY, cells.astype(np.int32)),
                          (HIT_ENERGY_KEY, values.astype(np.float32))):
            f[key].resize(h1, axis=0)
            f[key][h0:h1] = data
        self._n_hits = h1


def write_sparse(path: str | os.PathLike[str], showers: VoxelShowers, **kwargs: Any) -> Path:
    """Write ``showers`` to a sparse voxel file (see :class:`SparseVoxelWriter`); returns the
    path."""
    with SparseVoxelWriter(path, showers.geometry, **kwargs) as writer:
        writer.append(showers)
    return Path(path)


class SparseVoxelFile:
    """Random access to a sparse voxel file: conditions, hit lists and dense batches.

    The offsets and conditions are loaded at opening; the hits too when ``in_memory`` (8 bytes
    per hit: 100k showers of 1,000 hits take 0.8 GB), otherwise they are read from the file per
    request.

    Arguments:
        path: the file.
        geometry: override the stored geometry (must have the same number of cells).
        in_memory: load all hits at opening.

    Raises:
        InputError: a missing key, 0 showers, inconsistent offsets, a cell index out of range
            or twice in a shower, or NaN, inf or negative energies, naming the file and the
            key. Without ``in_memory`` the hits are checked when read (or by
            :meth:`validate`).
    """

    def __init__(self, path: str | os.PathLike[str], *, geometry: Any = None,
                 in_memory: bool = True) -> None:
        self.path = Path(path)
        self.in_memory = bool(in_memory)
        self._file: h5py.File | None = None
        with _open_h5(self.path, _EXPECTED) as f:
            self._load(f, geometry)

    def _load(self, f: h5py.File, geometry: Any) -> None:
        path = self.path
        offsets_ds = _dataset(f, OFFSETS_KEY, path, "(N + 1,) int64 hit offsets")
        if offsets_ds.dtype.kind not in "iu":
            raise InputError(f"dtype {offsets_ds.dtype}", path=path, key=OFFSETS_KEY,
                             expected="integer hit offsets")
        offsets = np.asarray(offsets_ds[()]).astype(np.int64)
        if offsets.ndim != 1:
            raise InputError(f"shape {offsets.shape}", path=path, key=OFFSETS_KEY,
                             expected="(N + 1,) hit offsets")
        if len(offsets) < 2:
            raise InputError("the file holds 0 showers", path=path, key=OFFSETS_KEY,
                             expected="at least one shower")
        if offsets[0] != 0:
            raise InputError(f"first offset {int(offsets[0])}", path=path, key=OFFSETS_KEY,
                             expected="offsets starting at 0")
        step = np.diff(offsets)
        if (step < 0).any():
            i = int(np.flatnonzero(step < 0)[0])
            raise InputError(f"offset {int(offsets[i + 1])} of shower {i + 1} after "
                             f"{int(offsets[i])}", path=path, key=OFFSETS_KEY,
                             expected="non-decreasing offsets (hits per shower >= 0)")
        n = len(offsets) - 1
        n_hits = int(offsets[-1])
        cell_ds = _dataset(f, CELL_KEY, path, "(H,) integer cell indices")
        energy_ds = _dataset(f, HIT_ENERGY_KEY, path, "(H,) hit energies in MeV")
        for ds, key in ((cell_ds, CELL_KEY), (energy_ds, HIT_ENERGY_KEY)):
            if ds.shape != (n_hits,):
                raise InputError(f"shape {ds.shape} for {n_hits} hits in 'offsets'", path=path,
                                 key=key, expected=f"({n_hits},)")
        if cell_ds.dtype.kind not in "iu":
            raise InputError(f"dtype {cell_ds.dtype}", path=path, key=CELL_KEY,
                             expected="integer cell indices")
        inc = _dataset(f, ENERGY_KEY, path, "(N, 1) incident energies in MeV")
        if not (inc.ndim == 1 or (inc.ndim == 2 and inc.shape[1] == 1)):
            raise InputError(f"shape {inc.shape}", path=path, key=ENERGY_KEY,
                             expected=f"({n}, 1) incident energies in MeV")
        if inc.shape[0] != n:
            raise InputError(f"{inc.shape[0]} incident energies for {n} showers", path=path,
                             key=ENERGY_KEY, expected=f"{n} rows, one per shower")
        energy = np.asarray(inc[()], dtype=np.float64).reshape(n)
        bad = ~np.isfinite(energy) | (energy <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"invalid incident energy {float(energy[i])!r} at shower {i}",
                             path=path, key=ENERGY_KEY, expected="finite energies > 0 MeV")
        stored = _stored_geometry(f, path)
        if geometry is not None:
            geo = get_geometry(geometry)
            if stored is not None and stored.n_cells != geo.n_cells:
                raise InputError(f"geometry {geo.name} has {geo.n_cells} cells, the file's "
                                 f"{stored.name} {stored.n_cells}", path=path, key="geometry",
                                 expected=f"a geometry of {stored.n_cells} cells")
        elif stored is None:
            raise InputError("no geometry stored", path=path, key="geometry_json (attribute)",
                             expected="a stored geometry, or pass geometry=")
        else:
            geo = stored
        self.geometry: Geometry = geo
        self.offsets = offsets.astype(np.int64)
        self.conditions: Conditions = _read_conditions(
            f, 0, n, n, path, energy=energy, names={"pdg": "pdg", "theta": "theta",
                                                    "phi": "phi"})
        self._cells: np.ndarray | None = None
        self._energies: np.ndarray | None = None
        if self.in_memory:
            self._cells = cell_ds[:].astype(np.int64)
            self._energies = energy_ds[:].astype(np.float32)
            self._check_hits(self._cells, self._energies, 0)

    def _shower_of_hit(self, hit: int) -> int:
        return int(np.searchsorted(self.offsets, hit, side="right")) - 1

    def _check_hits(self, cells: np.ndarray, energies: np.ndarray, first: int) -> None:
        """Raise for hits ``first : first + len(cells)`` with a cell index outside the
        geometry, a cell twice or out of order within a shower, or a NaN, inf or negative
        energy."""
        n_cells = self.geometry.n_cells
        if len(cells) and (cells.min() < 0 or cells.max() >= n_cells):
            bad = int(np.flatnonzero((cells < 0) | (cells >= n_cells))[0])
            raise InputError(f"cell index {int(cells[bad])} at hit {first + bad} (shower "
                             f"{self._shower_of_hit(first + bad)})", path=self.path,
                             key=CELL_KEY,
                             expected=f"indices in [0, {n_cells}) of {self.geometry.name}")
        if len(cells) > 1:
            order = np.diff(cells) <= 0  # (h - 1,): hit k + 1 does not follow hit k
            if order.any():
                # a new shower may start anywhere: hit k + 1 begins one when it is an offset
                a = np.searchsorted(self.offsets, first, side="right")
                b = np.searchsorted(self.offsets, first + len(cells), side="left")
                order[self.offsets[a:b] - first - 1] = False
            if order.any():
                k = int(np.flatnonzero(order)[0])
                raise InputError(f"cell {int(cells[k + 1])} after cell {int(cells[k])} at hit "
                                 f"{first + k + 1} (shower {self._shower_of_hit(first + k + 1)})",
                                 path=self.path, key=CELL_KEY,
                                 expected="increasing cell indices within a shower, each cell "
                                 "once")
        ok = np.isfinite(energies) & (energies >= 0)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise InputError(f"energy {energies[bad]} at hit {first + bad} (shower "
                             f"{self._shower_of_hit(first + bad)})", path=self.path,
                             key=HIT_ENERGY_KEY, expected="finite, non-negative MeV")

    def validate(self, chunk_hits: int = 1 << 22) -> SparseVoxelFile:
        """Check every hit (cell indices inside the geometry, each cell once and in order
        within a shower, finite non-negative energies), reading ``chunk_hits`` at a time.

        Files opened ``in_memory`` were checked at opening; otherwise hits are checked when
        read, and this checks them all at once (``showerformer info`` does).

        Returns:
            The file itself.

        Raises:
            InputError: naming the file, the key, the hit and the shower.
        """
        if self._cells is not None:
            return self
        n_hits = self.n_hits
        for lo in range(0, n_hits, max(2, int(chunk_hits))):
            # one hit of overlap, so that the order check spans the chunk boundary
            self.hit_range(max(0, lo - 1), min(n_hits, lo + max(2, int(chunk_hits))))
        return self

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __enter__(self) -> SparseVoxelFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file handle used for on-demand reads (if any)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, Any]:  # picklable for data-loader workers
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    @property
    def counts(self) -> np.ndarray:
        """Hits per shower, (N,) int64."""
        return np.diff(self.offsets)

    @property
    def n_hits(self) -> int:
        """Hits in the file."""
        return int(self.offsets[-1])

    def _index(self, indices: Any) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise InputError(f"shower index out of range for {n} showers", path=self.path,
                             expected=f"indices in [0, {n})")
        return np.where(idx < 0, idx + n, idx)

    def hit_range(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Hits ``lo:hi`` of the whole file (rows of ``cell`` and ``energy``; shower ``i`` owns
        ``offsets[i]:offsets[i+1]``): cells int64 and energies float32 MeV."""
        if self._cells is not None and self._energies is not None:
            return self._cells[lo:hi], self._energies[lo:hi]
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        cells = self._file[CELL_KEY][lo:hi].astype(np.int64)
        energies = self._file[HIT_ENERGY_KEY][lo:hi].astype(np.float32)
        self._check_hits(cells, energies, lo)
        return cells, energies

    def hits(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The hit cells (int64) and energies (float32, MeV) of shower ``i``."""
        j = int(self._index([i])[0])
        return self.hit_range(int(self.offsets[j]), int(self.offsets[j + 1]))

    def dense(self, indices: Any) -> np.ndarray:
        """Showers ``indices`` as a dense (B, n_cells) float32 array in MeV."""
        idx = self._index(indices)
        out = np.zeros((len(idx), self.geometry.n_cells), dtype=np.float32)
        for row, j in enumerate(idx):
            cells, energies = self.hit_range(int(self.offsets[j]), int(self.offsets[j + 1]))
            out[row, cells] = energies
        return out

    def read(self, start: int = 0, stop: int | None = None) -> VoxelShowers:
        """Showers ``start:stop`` (integers >= 0, ``stop=None``: to the end) as dense
        :class:`VoxelShowers`."""
        _check_range(start, stop, self.path)
        lo, hi, _ = slice(start, stop).indices(len(self))
        idx = np.arange(lo, max(lo, hi))
        return VoxelShowers(self.dense(idx), self.conditions[idx], self.geometry)


def read_sparse(path: str | os.PathLike[str], start: int = 0, stop: int | None = None, *,
                geometry: Any = None) -> VoxelShowers:
    """Showers ``start:stop`` of a sparse voxel file, densified.

    Raises:
        InputError: a bad file (see :class:`SparseVoxelFile`), a file of 0 showers, a
            negative ``start`` or ``stop``.
    """
    _check_range(start, stop, path)
    with SparseVoxelFile(path, geometry=geometry, in_memory=False) as f:
        return f.read(start, stop)


def iter_sparse(path: str | os.PathLike[str], chunk_size: int = 1024, *, start: int = 0,
                stop: int | None = None, geometry: Any = None) -> Iterator[VoxelShowers]:
    """Dense chunks of ``chunk_size`` showers of a sparse voxel file."""
    if chunk_size < 1:
        raise InputError(f"chunk_size={chunk_size}", key="chunk_size", expected="at least 1")
    _check_range(start, stop, path)
    f = SparseVoxelFile(path, geometry=geometry, in_memory=False)
    try:
        lo, hi, _ = slice(start, stop).indices(len(f))
        for a in range(lo, hi, chunk_size):
            yield f.read(a, min(a + chunk_size, hi))
    finally:
        f.close()


def is_sparse_file(f: h5py.File) -> bool:
    """Whether an open HDF5 file has the sparse voxel layout."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    return fmt == SPARSE_FORMAT or (OFFSETS_KEY in f and CELL_KEY in f and HIT_ENERGY_KEY in f)


def sparse_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Shower count, hits and geometry of a sparse voxel file (hits checked chunk by chunk,
    never all loaded)."""
    with SparseVoxelFile(path, in_memory=False) as f:
        f.validate()
    counts = f.counts
    return {"showers": len(f), "hits": f.n_hits, "geometry": f.geometry.name,
            "hits_per_shower_mean": float(counts.mean()) if len(counts) else 0.0,
            "geometry_json": json.dumps(f.geometry.to_dict())}
