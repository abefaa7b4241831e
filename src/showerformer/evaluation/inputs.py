"""Classifier inputs read row by row: in-memory arrays, or low-level inputs built from a voxel cache.

The low-level classifier inputs of a CaloChallenge-size sample do not fit in memory (100,000
ds3 showers are 16 GB of float32 voxels). :class:`VoxelCache` keeps the voxels of one sample
in an anonymous temporary file, written once while the features are computed and removed when
it is closed or the process ends (it has no name in the file system); :class:`LowLevelRows`
builds the official low-level inputs of any set of showers from it, batch by batch, in float32.
Rows are read with ``preadv`` into ordinary buffers (not memory-mapped), so the process memory
stays bounded by the batches while the operating system caches the file.

A row source has a length, a feature dimension ``dim`` and ``take(rows)``, which returns the
inputs of the showers ``rows`` (sorted indices) as an (len(rows), dim) array;
:func:`showerformer.evaluation.classifier.run_classifier` accepts arrays and row sources alike.
"""

from __future__ import annotations

import errno
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from showerformer.errors import InputError, OutputError
from showerformer.evaluation.features import EPS, LOG_EPS
from showerformer.geometry import Geometry

__all__ = ["ArrayRows", "LowLevelRows", "RowSource", "VoxelCache"]

_IOV_MAX = 1024  # buffers per preadv call (the Linux limit)
_READERS = 8  # concurrent reads of scattered rows
_PARALLEL_BYTES = 4 << 20  # smaller reads are done in the calling thread


class RowSource(Protocol):
    """Anything :func:`~showerformer.evaluation.classifier.run_classifier` can read rows from."""

    dim: int

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Inputs of the showers ``rows`` (sorted), (len(rows), dim)."""
        ...


class ArrayRows:
    """A row source over an (N, d) array held in memory.

    Arguments:
        array: the inputs, (N, d); not copied.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.dim = int(array.shape[1])

    def __len__(self) -> int:
        return len(self.array)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """``array[rows]``, (len(rows), d)."""
        return self.array[rows]


class VoxelCache:
    """The float32 voxels of one sample in an anonymous temporary file.

    Rows are appended in order (:meth:`append`) and read back by index (:meth:`read`). The
    file is created with ``tempfile.TemporaryFile``: on Linux it never has a name, so it
    disappears when :meth:`close` is called, when the object is collected, and when the process
    ends in any way.

    Arguments:
        n_cells: voxels per shower.
        folder: where the file lives (default the system temporary folder, ``$TMPDIR``).
        option: the option that named ``folder``, for messages.
    """

    def __init__(self, n_cells: int, folder: str | os.PathLike[str] | None = None,
                 option: str = "--cache-dir") -> None:
        self.n_cells = int(n_cells)
        self.row_bytes = 4 * self.n_cells
        self.folder = os.fspath(folder) if folder is not None else tempfile.gettempdir()
        self.option = option
        self.n = 0
        try:
            self._file: Any = tempfile.TemporaryFile(dir=self.folder)
        except OSError as exc:
            raise OutputError(f"cannot create a temporary file ({exc.strerror})",
                              path=self.folder, option=option,
                              expected="a writable folder for the classifier cache") from None
        self._fd = self._file.fileno()
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return self.n

    def __enter__(self) -> VoxelCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the file (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def nbytes(self) -> int:
        """Bytes written so far."""
        return self.n * self.row_bytes

    def append(self, energies: np.ndarray) -> None:
        """Append showers, (b, n_cells), stored as float32.

        Raises:
            OutputError: the disk became full (one line naming the cache folder).
        """
        x = np.ascontiguousarray(energies, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_cells:
            raise InputError(f"voxels of shape {x.shape}", key="showers",
                             expected=f"(b, {self.n_cells})")
        view = memoryview(x).cast("B")
        offset = self.nbytes
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutputError(
                    f"the disk became full while caching the voxels for the classifier "
                    f"({self.nbytes + done:,} bytes written)", path=self.folder,
                    option=self.option, expected="a folder with room for the cache (or "
                    "--classifier none)") from exc
            raise
        self.n += len(x)

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The voxels of showers ``rows`` (sorted, unique), (len(rows), n_cells) float32.

        ``out`` may be a view whose rows are contiguous but not adjacent (a column block of a
        wider array); the rows are read straight into it, consecutive rows with one call.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if out is None:
            out = np.empty((len(rows), self.n_cells), dtype=np.float32)
        if not len(rows):
            return out
        if rows[0] < 0 or rows[-1] >= self.n:
            raise IndexError(f"rows {rows[0]}..{rows[-1]} of a cache of {self.n}")
        if out.dtype != np.float32 or out.shape != (len(rows), self.n_cells) or \
                out.strides[1] != 4:
            raise ValueError("out must be (len(rows), n_cells) float32 with contiguous rows")
        views = [memoryview(row).cast("B") for row in out]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], breaks]).tolist()
        ends = np.concatenate([breaks, [len(rows)]]).tolist()
        runs = list(zip(starts, ends, rows[starts].tolist(), strict=True))
        if len(runs) < 2 or len(rows) * self.row_bytes < _PARALLEL_BYTES:
            self._read_runs(views, runs)
            return out
        # several requests in flight: a disk serves scattered rows several times faster than
        # one request at a time (the reads release the GIL)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=_READERS)
        groups = np.array_split(np.arange(len(runs)), min(_READERS, len(runs)))
        futures = [self._pool.submit(self._read_runs, views, [runs[i] for i in g])
                   for g in groups]
        for future in futures:
            future.result()
        return out

    def _read_runs(self, views: list[memoryview], runs: list[tuple[int, int, int]]) -> None:
        """Read runs (first index in ``views``, end, first row) of consecutive rows."""
        rb = self.row_bytes
        for s, e, r in runs:
            for a in range(s, e, _IOV_MAX):
                b = min(e, a + _IOV_MAX)
                offset = (r + a - s) * rb
                got = os.preadv(self._fd, views[a:b], offset)
                if got != (b - a) * rb:  # short read (a signal): finish row by row
                    for i in range(a, b):
                        self._read_exact(views[i], (r + i - s) * rb)

    def _read_exact(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(errno.EIO, "short read from the classifier cache")
            done += got


class LowLevelRows:
    """The official low-level classifier inputs of one sample, built from its voxel cache.

    - ``"low"``: ``[log10(E_inc), E_i / E_inc]`` with the voxels below the threshold zeroed;
    - ``"low_normed"``: ``[log10(E_inc), max(E_i, 0) / (E_layer + 1e-16),
      log10(E_layer + 1e-8)]`` with the layer energies of the thresholded shower and, as
      officially, the voxels not thresholded.

    The same values as :func:`showerformer.evaluation.features.classifier_inputs` (computed in
    float32 instead of float64 and rounded to float32: they agree to a few units in the last
    place).

    Arguments:
        cache: the sample's voxels.
        kind: ``"low"`` or ``"low_normed"``.
        incident_energy: (N,) MeV.
        layer_energy: (N, n_layers_with_cells) thresholded layer energies (MeV), in the order of
            the geometry's layers with cells (the ``E_layer_l`` features).
        geometry: the cells' geometry.
        threshold: the voxel threshold (MeV).
    """

    def __init__(self, cache: VoxelCache, kind: str, incident_energy: np.ndarray,
                 layer_energy: np.ndarray, geometry: Geometry, threshold: float) -> None:
        if kind not in ("low", "low_normed"):
            raise InputError(f"unknown low-level input {kind!r}", key="kind",
                             expected="'low' or 'low_normed'")
        n = len(cache)
        if len(incident_energy) != n or len(layer_energy) != n:
            raise InputError(f"{n} cached showers, {len(incident_energy)} incident energies "
                             f"and {len(layer_energy)} layer energies", key="showers",
                             expected="one of each per shower")
        self.cache, self.kind, self.geometry = cache, kind, geometry
        self.threshold = np.float32(threshold)
        layers = [lid for lid in range(geometry.n_layers)
                  if geometry.layer_slice(lid).stop > geometry.layer_slice(lid).start]
        if layer_energy.shape[1] != len(layers):
            raise InputError(f"{layer_energy.shape[1]} layer energies per shower",
                             key="layer_energy", expected=f"{len(layers)} (layers with cells)")
        self.slices = [geometry.layer_slice(lid) for lid in layers]
        e = np.asarray(incident_energy, dtype=np.float64)
        self.log_e = np.log10(e).astype(np.float32)  # (N,)
        self.inv_e = (1.0 / e).astype(np.float32)  # (N,)
        e_layer = np.asarray(layer_energy, dtype=np.float64)
        self.inv_layer = (1.0 / (e_layer + EPS)).astype(np.float32)  # (N, n_rel)
        self.log_layer = np.log10(e_layer + LOG_EPS).astype(np.float32)  # (N, n_rel)
        n_cells = geometry.n_cells
        self.dim = 1 + n_cells + (len(layers) if kind == "low_normed" else 0)

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def row_bytes(self) -> int:
        """Bytes read from the cache per shower."""
        return self.cache.row_bytes

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Inputs of the showers ``rows`` (sorted, unique), (len(rows), dim) float32."""
        rows = np.asarray(rows, dtype=np.int64)
        b, n_cells = len(rows), self.geometry.n_cells
        out = np.empty((b, self.dim), dtype=np.float32)
        x = out[:, 1:1 + n_cells]  # (b, n_cells) view: voxels are read straight into it
        self.cache.read(rows, x)
        out[:, 0] = self.log_e[rows]
        if self.kind == "low":
            # the official np.where(shower < min_energy, 0, shower)
            np.copyto(x, np.float32(0.0), where=x < self.threshold)
            x *= self.inv_e[rows, None]
        else:
            np.maximum(x, 0.0, out=x)
            inv = self.inv_layer[rows]  # (b, n_rel)
            for i, sl in enumerate(self.slices):
                x[:, sl] *= inv[:, i:i + 1]
            out[:, 1 + n_cells:] = self.log_layer[rows]
        return out
