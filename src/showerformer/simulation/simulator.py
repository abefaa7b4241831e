"""The simulator front end: dataset presets, reproducible sharded generation and file output.

A dataset preset names a geometry, a detector, the particles, their spectrum and directions and
the output kind (voxels or point clouds). Showers are generated in fixed blocks whose size
depends only on the preset; block ``b`` draws all its random numbers from
``np.random.SeedSequence(seed, spawn_key=(b,))``. Shard ``i`` of ``N`` is the contiguous range
of blocks ``[i nb / N, (i + 1) nb / N)``, so the shards of a run concatenate bit for bit into
the single-process run of the same seed, and different shards hold different showers.

Example::

    from showerformer.simulation import Simulator
    sim = Simulator("ds2", seed=1)
    for chunk in sim.run(10_000, shard=(0, 4)):
        ...  # VoxelShowers of the ds2 geometry
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from showerformer.errors import InputError
from showerformer.geometry import CylindricalGeometry, Geometry, get_geometry
from showerformer.showers import Conditions, PointShowers, VoxelShowers
from showerformer.simulation.beams import Beam, Spectrum, get_particle, parse_theta
from showerformer.simulation.detectors import SamplingCalorimeter, get_detector
from showerformer.simulation.digitize import (
    apply_noise_threshold,
    digitize_mesh,
    digitize_spots,
    layer_response,
)
from showerformer.simulation.engine import ShowerBatch, develop

__all__ = [
    "DATASETS",
    "MAX_SHOWERS",
    "DatasetSpec",
    "Simulator",
    "check_shower_count",
    "estimate_file_bytes",
    "parse_shard",
    "simulate",
    "simulate_to_file",
]

_DS1_ENERGIES_GEV = ",".join(repr(2.0**k / 1000) for k in range(8, 23))  # 0.256 .. 4194.304 GeV
_DS1_THETA_DEG = math.degrees(2 * math.atan(math.exp(-0.225)))  # |eta| = 0.20-0.25 slice


def _ild_geometry() -> Geometry:
    from showerformer.ild import ILDGeometry

    return ILDGeometry()


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset preset.

    Attributes:
        name: preset name.
        geometry: a geometry preset name or a factory.
        detector: a detector preset name.
        particles: particle names.
        energy: spectrum in GeV as on the command line (``"1:1000"``, ``"64,128,256"``).
        spectrum: spectrum kind, None for the default of ``energy``'s form.
        momentum: ``energy`` gives momenta (hadrons get T = sqrt(p^2 + m^2) - m).
        theta: polar angle in degrees, ``"90"`` or a range ``"70:90"``.
        output: ``"voxels"`` (CaloChallenge HDF5), ``"sparse-voxels"`` (hit lists, for large
            grids such as 64^3; see :mod:`showerformer.io.sparse`) or ``"points"``.
        frame: ``"axis"`` (cells around the incident axis) or ``"detector"``.
        readout: ``"geometry"`` (mesh slices along the axis) or ``"detector"`` (detector
            readout layers).
        entry: entry point on the front face (x, y) in mm, detector frame.
        description: one line.
    """

    name: str
    geometry: str | Callable[[], Geometry]
    detector: str
    particles: tuple[str, ...]
    energy: str
    spectrum: str | None = None
    momentum: bool = False
    theta: str = "90"
    output: str = "voxels"
    frame: str = "axis"
    readout: str = "geometry"
    entry: tuple[float, float] = (0.0, 0.0)
    description: str = ""


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("ds2", "ds2", "cc-wsi", ("e-",), "1:1000", "log-uniform",
                    description="CaloChallenge ds2-like electrons, log-uniform 1 GeV-1 TeV, "
                    "45 x 16 x 9 cells, Si-W"),
        DatasetSpec("ds3", "ds3", "cc-wsi", ("e-",), "1:1000", "log-uniform",
                    description="CaloChallenge ds3-like electrons, log-uniform 1 GeV-1 TeV, "
                    "45 x 50 x 18 cells, Si-W"),
        DatasetSpec("ds1-photons", "ds1-photons", "atlas-like", ("gamma",), _DS1_ENERGIES_GEV,
                    "discrete", theta=f"{_DS1_THETA_DEG:.6f}", readout="detector",
                    description="CaloChallenge ds1-like photons, 256 MeV-4 TeV in powers of 2, "
                    "ATLAS-like barrel"),
        DatasetSpec("ds1-pions", "ds1-pions", "atlas-like", ("pi+",), _DS1_ENERGIES_GEV,
                    "discrete", theta=f"{_DS1_THETA_DEG:.6f}", readout="detector",
                    description="CaloChallenge ds1-like pi+, 256 MeV-4 TeV in powers of 2, "
                    "ATLAS-like barrel"),
        DatasetSpec("par04", "par04", "cc-wsi", ("e-",), "64,128,256", "discrete",
                    theta="70:90",
                    description="Par04-like electrons at 64/128/256 GeV, theta 70-90 deg, "
                    "18 r x 50 phi x 45 z"),
        DatasetSpec("par04-scipb", "par04-scipb", "pb-scint", ("e-",), "64,128,256", "discrete",
                    theta="70:90",
                    description="the par04 electrons in a Pb/scintillator ECAL, 18 r x 50 phi x "
                    "45 z cells of 4.65 mm x 2 pi / 50 x 8.976 mm"),
        DatasetSpec("sandwich64", "sandwich64", "fe-scint", ("proton",), "1:20", "uniform",
                    momentum=True, output="sparse-voxels", frame="detector", readout="detector",
                    description="protons with momentum 1-20 GeV in a 64^3 Fe/scintillator "
                    "sandwich (10 x 10 x 26.5 mm cells), stored as hit lists"),
        DatasetSpec("sandwich32", "sandwich32", "fe-scint", ("proton",), "1:20", "uniform",
                    momentum=True, output="sparse-voxels", frame="detector", readout="geometry",
                    description="the sandwich64 protons read out in 32^3 cells of 20 x 20 x "
                    "53 mm (same detector; for fast CPU training)"),
        DatasetSpec("multi", "sandwich64", "fe-scint", ("e-", "gamma", "pi+", "proton"),
                    "1:100", "log-uniform", output="points", frame="detector",
                    readout="detector",
                    description="e-, gamma, pi+, proton point clouds (hit cells), log-uniform "
                    "1-100 GeV, Fe/scintillator 64^3"),
        DatasetSpec("ild-photons", _ild_geometry, "ild-ecal", ("gamma",), "10:100", "uniform",
                    output="points", frame="detector", readout="detector", entry=(-50.0, 0.0),
                    description="photons 10-100 GeV at normal incidence in the ILD-like Si-W "
                    "ECAL (30 layers, 5.09 mm cells), point clouds of hit cells"),
    )
}
"""Dataset presets by name (``showerformer simulate DATASET``)."""


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/N"`` or ``(i, N)`` -> (i, N) with 0 <= i < N."""
    if shard is None:
        return (0, 1)
    try:
        if isinstance(shard, str):
            a, b = shard.split("/")
            i, n = int(a), int(b)
        else:
            i, n = (int(x) for x in shard)
    except (ValueError, TypeError):
        raise InputError(f"shard {shard!r}", key="shard",
                         expected="'i/N' with 0 <= i < N, e.g. '0/4'") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard {i}/{n}", key="shard", expected="'i/N' with 0 <= i < N")
    return (i, n)


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(x, 1.0))))


class Simulator:
    """Generates showers of a dataset preset, reproducibly and in independent blocks.

    Arguments:
        dataset: a preset name (see :data:`DATASETS`) or a :class:`DatasetSpec`.
        particle: override the particles (``"e-"`` or ``"e-,gamma"``).
        energy: override the spectrum, GeV text (``"50"``, ``"1:1000"``, ``"64,128,256"``).
        spectrum: override the spectrum kind (fixed, uniform, log-uniform, discrete).
        theta: override the polar angle(s) in degrees (``"90"``, ``"70:90"``).
        momentum: override whether ``energy`` gives momenta.
        seed: the run's seed.
        max_spots: spots per shower component at most (explicit-spot digitization).
        fluctuate: False simulates mean showers (tests and expectations).
        detector: override the detector (a preset name or a :class:`SamplingCalorimeter`).
    """

    def __init__(
        self,
        dataset: str | DatasetSpec = "ds2",
        *,
        particle: str | None = None,
        energy: str | float | None = None,
        spectrum: str | None = None,
        theta: str | float | None = None,
        momentum: bool | None = None,
        seed: int = 0,
        max_spots: int = 20_000,
        fluctuate: bool = True,
        detector: str | SamplingCalorimeter | None = None,
    ) -> None:
        if isinstance(dataset, str):
            if dataset not in DATASETS:
                raise InputError(f"unknown dataset {dataset!r}", key="dataset",
                                 expected=f"one of {', '.join(DATASETS)}")
            dataset = DATASETS[dataset]
        spec = dataset
        if particle is not None:
            spec = replace(spec, particles=tuple(p.strip() for p in str(particle).split(",")
                                                 if p.strip()))
        if energy is not None:
            spec = replace(spec, energy=str(energy), spectrum=spectrum)
        elif spectrum is not None:
            spec = replace(spec, spectrum=spectrum)
        if theta is not None:
            spec = replace(spec, theta=str(theta))
        if momentum is not None:
            spec = replace(spec, momentum=bool(momentum))
        if spec.output not in ("voxels", "sparse-voxels", "points"):
            raise InputError(f"output {spec.output!r}", key="output",
                             expected="'voxels', 'sparse-voxels' or 'points'")
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise InputError(f"seed {seed!r}", key="seed", expected="an integer >= 0")
        self.spec = spec
        self.seed = int(seed)
        self.max_spots = int(max_spots)
        self.fluctuate = bool(fluctuate)
        self.geometry = spec.geometry() if callable(spec.geometry) else get_geometry(spec.geometry)
        self.detector = get_detector(detector if detector is not None else spec.detector)
        particles = tuple(get_particle(p) for p in spec.particles)
        if not particles:
            raise InputError("no particle given", key="particle",
                             expected="e.g. 'e-' or 'e-,gamma,pi+,proton'")
        lo, hi = parse_theta(spec.theta, (math.pi / 2, math.pi / 2))
        self.beam = Beam(particles, Spectrum.parse(spec.energy, spec.spectrum),
                         momentum=spec.momentum, theta=(lo, hi), entry=spec.entry)
        self._check()
        self.response = layer_response(self.detector, self.geometry, spec.readout)
        self.analytic = isinstance(self.geometry, CylindricalGeometry) and spec.frame == "axis"
        cells = self.geometry.n_cells
        if self.analytic:
            self.block_size = int(np.clip(_pow2_floor(4e6 / cells), 8, 1024))
        else:
            self.block_size = int(np.clip(_pow2_floor(8e6 / cells), 16, 256))
        self._centers: np.ndarray | None = None

    def _check(self) -> None:
        spec, geo, det = self.spec, self.geometry, self.detector
        if spec.frame not in ("axis", "detector"):
            raise InputError(f"frame {spec.frame!r}", key="frame", expected="'axis' or 'detector'")
        if spec.readout not in ("geometry", "detector"):
            raise InputError(f"readout {spec.readout!r}", key="readout",
                             expected="'geometry' or 'detector'")
        if spec.readout == "detector" and det.n_readout > geo.n_layers:
            raise InputError(f"detector {det.name} has {det.n_readout} readout layers, geometry "
                             f"{geo.name} {geo.n_layers}", key="geometry",
                             expected="a geometry with a layer per detector readout layer")
        if spec.readout == "geometry" and geo.z_edges[-1] > det.depth * (1 + 1e-9):
            raise InputError(f"geometry {geo.name} is {geo.z_edges[-1]:g} mm deep, detector "
                             f"{det.name} {det.depth:g} mm", key="geometry",
                             expected="a mesh no deeper than the detector")

    # ------------------------------------------------------------------ blocks
    def n_blocks(self, n: int) -> int:
        """Number of blocks of a run of ``n`` showers."""
        return -(-int(n) // self.block_size)

    def shard_blocks(self, n: int, shard: tuple[int, int] | str = (0, 1)) -> range:
        """The blocks of shard ``i`` of ``N`` of a run of ``n`` showers."""
        i, k = parse_shard(shard)
        nb = self.n_blocks(n)
        return range(i * nb // k, (i + 1) * nb // k)

    def block_rng(self, block: int) -> np.random.Generator:
        """The generator of block ``block`` (all its random numbers come from it)."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(int(block),)))

    def develop_block(self, block: int, size: int | None = None) -> tuple[ShowerBatch,
                                                                          np.random.Generator]:
        """Develop the showers of a block without digitizing them (and the generator, which
        digitization continues)."""
        rng = self.block_rng(block)
        size = self.block_size if size is None else int(size)
        beam = self.beam.sample(size, rng)
        batch = develop(self.detector, self.geometry, beam, rng, readout=self.spec.readout,
                        fluctuate=self.fluctuate)
        return batch, rng

    def block(self, block: int, size: int | None = None) -> VoxelShowers | PointShowers:
        """Simulate block ``block`` (``size`` showers, default the block size)."""
        batch, rng = self.develop_block(block, size)
        n = len(batch.beam)
        first = int(block) * self.block_size
        lay_cell = self.geometry.layer_of_cell
        if self.analytic:
            dense = digitize_mesh(batch, self.geometry, self.response, rng,
                                  fluctuate=self.fluctuate)
            dense = apply_noise_threshold(dense, lay_cell, self.response, rng)
            cond = self._conditions(batch, first)
            if self.spec.output != "points":
                return VoxelShowers(dense.astype(np.float32), cond, self.geometry)
            rows, cells = np.nonzero(dense)
            return self._points(rows, cells, dense[rows, cells], n, cond)
        sparse, lateral = digitize_spots(
            batch, self.detector, self.geometry, self.response, rng, frame=self.spec.frame,
            readout=self.spec.readout, max_spots=self.max_spots, fluctuate=self.fluctuate)
        batch.deposited = batch.deposited - lateral
        batch.leaked = batch.leaked + lateral
        values = apply_noise_threshold(sparse.values, lay_cell[sparse.cells], self.response, rng)
        keep = values > 0
        cond = self._conditions(batch, first)
        rows, cells, values = sparse.rows[keep], sparse.cells[keep], values[keep]
        if self.spec.output == "points":
            return self._points(rows, cells, values, n, cond)
        dense = np.zeros((n, self.geometry.n_cells), dtype=np.float32)
        dense[rows, cells] = values
        return VoxelShowers(dense, cond, self.geometry)

    def _conditions(self, batch: ShowerBatch, first: int) -> Conditions:
        b = batch.beam
        n = len(b)
        extra = {
            "momentum": np.asarray(b.momentum, dtype=np.float64),
            "e_deposited": np.asarray(batch.deposited, dtype=np.float64),
            "e_leaked": np.asarray(batch.leaked, dtype=np.float64),
            "e_invisible": np.asarray(batch.invisible, dtype=np.float64),
            "start_depth": np.asarray(batch.start, dtype=np.float64),
            "shower_index": np.arange(first, first + n, dtype=np.int64),
        }
        return Conditions(b.energy, b.pdg, b.theta, b.phi, extra)

    def _points(self, rows: np.ndarray, cells: np.ndarray, values: np.ndarray, n: int,
                cond: Conditions) -> PointShowers:
        if self._centers is None:
            self._centers = self.geometry.cell_centers()
        xyz = self._centers[cells]
        layer = self.geometry.layer_of_cell[cells]
        flat = np.concatenate([xyz, values[:, None], layer[:, None]], axis=1)
        counts = np.bincount(rows, minlength=n)
        return PointShowers.from_flat(flat.astype(np.float32), counts, cond, self.geometry)

    def run(self, n: int, *, shard: tuple[int, int] | str = (0, 1)
            ) -> Iterator[VoxelShowers | PointShowers]:
        """Yield the blocks of shard ``shard`` of a run of ``n`` showers, in order."""
        n = int(n)
        if n < 1:
            raise InputError(f"n = {n}", key="n", expected="at least one shower")
        for b in self.shard_blocks(n, shard):
            size = min(self.block_size, n - b * self.block_size)
            yield self.block(b, size)

    def shard_size(self, n: int, shard: tuple[int, int] | str = (0, 1)) -> int:
        """Number of showers in a shard of a run of ``n``."""
        blocks = self.shard_blocks(n, shard)
        if not len(blocks):
            return 0
        return min(n, blocks.stop * self.block_size) - blocks.start * self.block_size


def _concat(chunks: list[VoxelShowers | PointShowers]) -> VoxelShowers | PointShowers:
    if isinstance(chunks[0], VoxelShowers):
        return VoxelShowers.concatenate(chunks)
    counts = np.concatenate([c.n_points for c in chunks])
    flat = np.concatenate([c.points[c.mask] for c in chunks])
    cond = Conditions.concatenate([c.conditions for c in chunks])
    return PointShowers.from_flat(flat, counts, cond, chunks[0].geometry)


def simulate(dataset: str | DatasetSpec = "ds2", n: int = 1000, *, seed: int = 0,
             shard: tuple[int, int] | str = (0, 1), **options: Any
             ) -> VoxelShowers | PointShowers:
    """Simulate ``n`` showers (or one shard of them) in memory.

    Arguments:
        dataset: preset name or :class:`DatasetSpec`.
        n: showers in the whole run.
        seed: the run's seed.
        shard: ``(i, N)`` or ``"i/N"``: only shard i of N.
        **options: :class:`Simulator` options (particle, energy, spectrum, theta, momentum,
            max_spots, fluctuate, detector).

    Returns:
        VoxelShowers or PointShowers (per the preset's output).
    """
    sim = Simulator(dataset, seed=seed, **options)
    chunks = list(sim.run(n, shard=shard))
    if not chunks:
        raise InputError(f"shard {shard} of {n} showers is empty", key="shard",
                         expected="fewer shards than blocks")
    return _concat(chunks)


# ---------------------------------------------------------------------------- files
MAX_SHOWERS = 2**53
"""Most showers in one run (``n``): shower indices stay exact in float64 tools."""

_MAX_CHUNK_BYTES = 4 << 30  # one write holds chunk_size dense showers in memory at most
_GZIP_LEVEL = 4  # h5py's default gzip level, which the writers use
_FILE_OVERHEAD = 1 << 16  # HDF5 superblock, object headers, chunk indices (about 40 kB measured)


def check_shower_count(n: Any) -> int:
    """``n`` as the number of showers of a run: an integer in [1, :data:`MAX_SHOWERS`].

    Raises:
        InputError: naming the key ``n``.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise InputError(f"n = {n!r}", key="n", expected="an integer number of showers")
    if int(n) < 1:
        raise InputError(f"n = {int(n):,}", key="n", expected="at least one shower")
    if int(n) > MAX_SHOWERS:
        raise InputError(f"n = {int(n):,}", key="n",
                         expected=f"at most 2^53 = {MAX_SHOWERS:,} showers")
    return int(n)


def _showers_per_write(sim: Simulator, chunk_size: Any) -> int:
    """Whole blocks per write for ``chunk_size`` showers (default one block), checked."""
    if chunk_size is None:
        return 1
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) \
            or chunk_size < 1:
        raise InputError(f"chunk size {chunk_size!r}", key="chunk_size",
                         expected="an integer >= 1")
    row = 4 * sim.geometry.n_cells  # a dense float32 shower, as simulated
    most = max(sim.block_size, _MAX_CHUNK_BYTES // row)
    if int(chunk_size) > most:
        raise InputError(f"chunk size {int(chunk_size):,}", key="chunk_size",
                         expected=f"at most {most:,} {sim.spec.name} showers per write "
                         f"({_MAX_CHUNK_BYTES >> 30} GiB of cells in memory)")
    return max(1, -(-int(chunk_size) // sim.block_size))


def _packed(a: np.ndarray) -> int:
    """Bytes of ``a`` after gzip compression, as HDF5 stores a chunk."""
    return len(zlib.compress(np.ascontiguousarray(a).tobytes(), _GZIP_LEVEL))


def estimate_file_bytes(sample: VoxelShowers | PointShowers, output: str, n_showers: int,
                        geometry: Geometry | None = None) -> tuple[float, float]:
    """Size of a file of ``n_showers`` showers like ``sample``, as the writers store them.

    The arrays each writer stores for ``sample`` (conditions; dense cells for ``"voxels"``,
    hit lists for ``"sparse-voxels"``, zero-padded points for ``"points"``) are compressed with
    gzip at the writers' level, as HDF5 compresses its chunks; the bytes per shower times
    ``n_showers``, plus the file's fixed overhead (metadata and the geometry description),
    is the estimate. ``simulate_to_file`` measures it on the run's first block (64 to 1,024
    showers, by preset); on the presets' default spectra it came within 7 % of the files
    written.

    Arguments:
        sample: simulated showers (VoxelShowers or PointShowers).
        output: ``"voxels"``, ``"sparse-voxels"`` or ``"points"``.
        n_showers: showers the file will hold.
        geometry: the geometry stored in the file (default the sample's).

    Returns:
        ``(total bytes, bytes per shower)``.
    """
    c = sample.conditions
    k = len(sample)
    arrays = [np.asarray(c.energy, np.float64), np.asarray(c.pdg, np.int32),
              np.asarray(c.theta, np.float32), np.asarray(c.phi, np.float32),
              *(np.asarray(v) for v in c.extra.values())]
    if output == "voxels":
        arrays.append(np.asarray(sample.energies, np.float32))  # (k, n_cells)
    elif output == "sparse-voxels":
        e = sample.energies
        rows, cells = np.nonzero(e > 0)
        arrays += [cells.astype(np.int32), e[rows, cells].astype(np.float32),
                   np.cumsum(np.bincount(rows, minlength=k), dtype=np.int64)]
    else:
        pts = np.where(sample.mask[..., None], sample.points, 0)  # (k, P, 5)
        arrays += [pts[..., :4].astype(np.float32), np.rint(pts[..., 4]).astype(np.int16)]
    each = sum(_packed(a) for a in arrays) / max(k, 1)
    geo = geometry if geometry is not None else sample.geometry
    fixed = _FILE_OVERHEAD + (len(json.dumps(geo.to_dict())) if geo is not None else 0)
    return fixed + each * int(n_showers), each


class _PointStreamWriter:
    """Streams PointShowers into a point-cloud HDF5 file of showerformer's local layout
    (``events`` (N, P, 4) = x, y, z mm, E MeV, zero-padded at the back, P grown as needed;
    ``energy`` (N, 1) MeV float64; ``layer`` (N, P) int16; ``pdg``, ``theta``, ``phi`` and the
    extra conditions), as :func:`showerformer.io.pointcloud.read_pointcloud` reads it.

    Arguments:
        f: the open (temporary) HDF5 file.
        geometry: the showers' geometry, stored in the file.
        raw: the file object under ``f`` (see :func:`showerformer.io._h5file.create_h5`), whose
            ``raise_if_full()`` stops the run when the disk fills up.
    """

    def __init__(self, f: Any, geometry: Geometry, raw: Any = None) -> None:
        from showerformer.io.pointcloud import PointCloudLayout

        self.f = f
        self.raw = raw
        self.geometry = geometry
        self.layout = PointCloudLayout.local()
        self.n = 0
        self.keys: list[str] | None = None

    def _grow(self, name: str, data: np.ndarray) -> None:
        ds = self.f.get(name)
        if ds is None:
            shape = (0, *data.shape[1:])
            maxshape = (None,) * data.ndim
            chunks = (max(1, min(256, len(data))), *tuple(max(1, s) for s in data.shape[1:]))
            ds = self.f.create_dataset(name, shape=shape, maxshape=maxshape, dtype=data.dtype,
                                       chunks=chunks, compression="gzip")
        if data.ndim > 1 and data.shape[1] > ds.shape[1]:
            ds.resize(data.shape[1], axis=1)
        elif data.ndim > 1 and data.shape[1] < ds.shape[1]:
            pad = np.zeros((data.shape[0], ds.shape[1], *data.shape[2:]), dtype=data.dtype)
            pad[:, : data.shape[1]] = data
            data = pad
        lo = ds.shape[0]
        ds.resize(lo + len(data), axis=0)
        ds[lo:] = data

    def append(self, showers: PointShowers) -> None:
        c = showers.conditions
        pts = showers.points
        events = np.zeros((*pts.shape[:2], 4), dtype=np.float32)
        events[..., :4] = pts[..., :4]
        events[~showers.mask] = 0.0
        layer = np.where(showers.mask, np.rint(pts[..., 4]), 0).astype(np.int16)
        self._grow("events", events)
        self._grow("layer", layer)
        self._grow("energy", c.energy.astype(np.float64)[:, None])
        self._grow("pdg", c.pdg.astype(np.int32))
        self._grow("theta", c.theta.astype(np.float32))
        self._grow("phi", c.phi.astype(np.float32))
        if self.keys is None:
            self.keys = sorted(c.extra)
        for k in self.keys:
            self._grow(k, np.asarray(c.extra[k]))
        self.n += len(showers)
        if self.raw is not None:
            self.raw.raise_if_full()  # stop at the full disk, not after simulating the rest

    def finish(self) -> None:
        """Write the file's attributes (the file is closed by its owner)."""
        f = self.f
        f.attrs["format"] = "pointcloud"
        f.attrs["layout"] = self.layout.to_json()
        f.attrs["condition_keys"] = json.dumps(self.keys or [])
        f.attrs["energy_unit"] = "MeV"
        f.attrs["geometry"] = self.geometry.name
        f.attrs["geometry_json"] = json.dumps(self.geometry.to_dict())


def simulate_to_file(
    out: str | os.PathLike[str],
    dataset: str | DatasetSpec = "ds2",
    *,
    particle: str | None = None,
    energy: str | float | None = None,
    spectrum: str | None = None,
    theta: str | float | None = None,
    momentum: bool | None = None,
    n: int = 1000,
    seed: int = 0,
    shard: tuple[int, int] | str = (0, 1),
    chunk_size: int | None = None,
    progress: bool = True,
    max_spots: int = 20_000,
    space_check: bool = True,
) -> dict[str, Any]:
    """Simulate a dataset (or one shard of it) and stream it to an HDF5 file, atomically.

    Voxel presets write CaloChallenge HDF5 (``incident_energies``, ``showers`` and the extra
    conditions), point-cloud presets the point-cloud layout of
    :mod:`showerformer.io.pointcloud`. Memory stays bounded by one chunk.

    Every option and the output path are checked before the simulation starts. The first
    block of the shard is then simulated and measured (see :func:`estimate_file_bytes`), and
    the run is refused when the disk cannot hold the estimated file (unless ``space_check`` is
    False); that block is the run's first block, so the estimate costs nothing. Ctrl-C or
    SIGTERM (under :func:`showerformer.cli.main`) stops the run at the next block, a full disk
    at the next write: the temporary file is removed and an earlier ``out`` stays unchanged.

    Arguments:
        out: the target file.
        dataset: preset name or :class:`DatasetSpec`.
        particle, energy, spectrum, theta, momentum: overrides (see :class:`Simulator`).
        n: showers in the whole run (all shards together), 1 to :data:`MAX_SHOWERS`.
        seed: the run's seed.
        shard: ``(i, N)`` or ``"i/N"``.
        chunk_size: showers per write (rounded up to whole blocks); default one block.
        progress: show a progress bar.
        max_spots: spots per shower component at most.
        space_check: refuse the run when the estimated file does not fit on the disk.

    Returns:
        A summary: path, dataset, showers written, seconds, showers per second, estimated
        bytes.

    Raises:
        InputError: a bad option, naming it as the key (``n``, ``shard``, ``chunk_size``,
            ``energy``, ``theta``, ``particle``, ``spectrum``, ``seed``, ``dataset``).
        OutputError: ``out`` cannot be written, the disk is too small for the estimate, or
            it became full while writing.
    """
    import itertools
    import time

    from showerformer._interrupts import check_interrupt
    from showerformer._paths import check_output_file, human_bytes

    sim = Simulator(dataset, particle=particle, energy=energy, spectrum=spectrum, theta=theta,
                    momentum=momentum, seed=seed, max_spots=max_spots)
    n = check_shower_count(n)
    i, k = parse_shard(shard)
    total = sim.shard_size(n, (i, k))
    if total == 0:
        raise InputError(f"shard {i}/{k} of {n} showers is empty ({sim.n_blocks(n)} blocks of "
                         f"{sim.block_size})", key="shard", expected="fewer shards")
    per_write = _showers_per_write(sim, chunk_size)
    path = check_output_file(out, option="--out")

    t0 = time.perf_counter()
    blocks = sim.run(n, shard=(i, k))
    first = next(blocks)  # measured for the estimate, then written as the run's first block
    estimate, each = estimate_file_bytes(first, sim.spec.output, total, sim.geometry)
    if space_check:
        check_output_file(path, option="--out", estimated_bytes=estimate,
                          space_option="--skip-space-check",
                          content=f"{total:,} {sim.spec.name} showers of about "
                          f"{human_bytes(each)}, measured on the first {len(first):,}")
    written = 0
    bar = _progress(progress, total, f"{sim.spec.name} shard {i}/{k}")

    def stream(writer: Any, prog: Any) -> None:
        nonlocal written
        task = prog.add_task("simulating", total=total) if prog is not None else None
        pending: list[VoxelShowers | PointShowers] = []
        for chunk in itertools.chain([first], blocks):
            check_interrupt()  # an interrupt dropped inside a callback stops the run here
            pending.append(chunk)
            if len(pending) >= per_write:
                writer.append(_concat(pending))
                written += sum(len(c) for c in pending)
                pending = []
            if prog is not None:
                prog.update(task, advance=len(chunk))
        check_interrupt()
        if pending:
            writer.append(_concat(pending))
            written += sum(len(c) for c in pending)

    with bar as prog:
        if sim.spec.output == "voxels":
            from showerformer.io.calochallenge import CaloChallengeWriter

            with CaloChallengeWriter(path, sim.geometry) as writer:  # writes atomically
                stream(writer, prog)
        elif sim.spec.output == "sparse-voxels":
            from showerformer.io.sparse import SparseVoxelWriter

            with SparseVoxelWriter(path, sim.geometry) as writer:  # writes atomically
                stream(writer, prog)
        else:
            from showerformer.io._h5file import create_h5

            with create_h5(path) as (f, raw):  # writes atomically, survives a full disk
                writer = _PointStreamWriter(f, sim.geometry, raw)
                stream(writer, prog)
                writer.finish()
    dt = time.perf_counter() - t0
    return {"path": str(path), "dataset": sim.spec.name, "showers": written,
            "shard": f"{i}/{k}", "seconds": dt, "showers_per_second": written / max(dt, 1e-9),
            "geometry": sim.geometry.name, "detector": sim.detector.name,
            "estimated_bytes": estimate,
            "format": {"voxels": "calochallenge", "sparse-voxels": "sparse-voxels"}.get(
                sim.spec.output, "pointcloud")}


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool, total: int, label: str) -> Any:
    if not enabled:
        return _NoBar()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("showers"), TimeRemainingColumn(), transient=False)
