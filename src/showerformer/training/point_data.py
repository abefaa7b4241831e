"""Point-cloud training data: ragged showers in memory, voxels -> points, size-bucketed batches."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.showers import Conditions, PointShowers, VoxelShowers
from showerformer.training.data import epoch_permutation

__all__ = [
    "BucketBatchSampler",
    "PointCloudDataset",
    "PointCollate",
    "load_point_dataset",
    "size_sorted",
]

VOXEL_FORMATS = ("calochallenge", "par04", "sparse-voxels")
"""Formats whose showers are turned into points by dequantization inside the cells."""


@dataclass
class PointCloudDataset(Dataset):
    """Showers as ragged point clouds kept in memory: all points stacked plus offsets.

    Item ``i`` is ``{"points": (n_i, 5) float32, "energy", "pdg", "theta", "phi"}`` (points are
    x, y, z in mm, E in MeV and the layer index, as in :class:`PointShowers`).

    Attributes:
        points: the points of all showers, shower-major.  # (M, 5) float32
        offsets: shower ``i`` owns ``points[offsets[i]:offsets[i + 1]]``.  # (N + 1,) int64
        conditions: the incident particles.  # length N
        geometry: the geometry the points live in (voxelization, layer depths), or None.
        source_format: the format of the file the showers came from (``"pointcloud"``,
            ``"calochallenge"``, ...); voxel formats were dequantized.
        path: that file, named in errors about its showers (None: not from a file).
    """

    points: np.ndarray
    offsets: np.ndarray
    conditions: Conditions
    geometry: Geometry | None = None
    source_format: str = "pointcloud"
    path: str | None = None

    def __post_init__(self) -> None:
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 5)
        self.offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1)
        if (len(self.offsets) != len(self.conditions) + 1 or self.offsets[0] != 0
                or self.offsets[-1] != len(self.points) or np.any(np.diff(self.offsets) < 0)):
            raise InputError(f"{len(self.offsets)} offsets for {len(self.conditions)} showers and "
                             f"{len(self.points)} points", path=self.path, key="offsets",
                             expected="N + 1 non-decreasing offsets from 0 to the number of points")

    @classmethod
    def from_showers(cls, showers: PointShowers, source_format: str = "pointcloud",
                     path: str | os.PathLike[str] | None = None) -> PointCloudDataset:
        """From padded point clouds (the padding is dropped)."""
        counts = showers.mask.sum(axis=1).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return cls(showers.points[showers.mask], offsets, showers.conditions, showers.geometry,
                   source_format, None if path is None else str(path))

    def __len__(self) -> int:
        return len(self.conditions)

    @property
    def sizes(self) -> np.ndarray:
        """Points per shower, (N,) int64."""
        return np.diff(self.offsets)

    def layer_counts(self, n_layers: int) -> np.ndarray:
        """Points per calorimeter layer of every shower, (N, n_layers) int64."""
        rows = np.repeat(np.arange(len(self)), self.sizes)
        layer = np.clip(np.rint(self.points[:, 4]).astype(np.int64), 0, n_layers - 1)
        return np.bincount(rows * n_layers + layer,
                           minlength=len(self) * n_layers).reshape(len(self), n_layers)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c = self.conditions
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return {"points": self.points[lo:hi], "energy": float(c.energy[i]), "pdg": int(c.pdg[i]),
                "theta": float(c.theta[i]), "phi": float(c.phi[i])}

    def subset(self, indices: Sequence[int] | np.ndarray) -> PointCloudDataset:
        """The showers ``indices`` (in that order), copied."""
        idx = np.asarray(indices, dtype=np.int64)
        sizes = self.sizes[idx]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        if len(idx):
            take = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
        else:
            take = np.zeros(0, dtype=np.int64)
        return PointCloudDataset(self.points[take], offsets, self.conditions[idx], self.geometry,
                                 self.source_format, self.path)

    def to_showers(self, indices: Sequence[int] | np.ndarray | None = None) -> PointShowers:
        """Padded :class:`PointShowers` of ``indices`` (all when None)."""
        sub = self if indices is None else self.subset(indices)
        return PointShowers.from_flat(sub.points, sub.sizes, sub.conditions, sub.geometry)


def size_sorted(dataset: PointCloudDataset) -> PointCloudDataset:
    """The same showers ordered by size (validation batches then need little padding)."""
    return dataset.subset(np.argsort(dataset.sizes, kind="stable"))


def load_point_dataset(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_showers: int | None = None,
    threshold: float | None = None,
    geometry: Any = None,
) -> PointCloudDataset:
    """Read a shower file of any supported format as point clouds.

    Point-cloud files are taken as they are. Voxel files (CaloChallenge, Par04, sparse voxels)
    become one point per cell above ``threshold``, placed uniformly inside its cell
    (dequantization, as for the mean-field attention GAN of seed document 002); voxelizing the
    points through the same geometry gives the voxels back exactly.

    Arguments:
        path: the file.
        seed: seed of the dequantization.
        max_showers: read at most this many showers (the first ones).
        threshold: cell energy (MeV) a voxel needs to become a point; default: the
            geometry's ``readout_threshold_mev`` (e.g. 15.15 keV for ds2/ds3).
        geometry: passed to the reader (needed for files that do not name theirs).

    Returns:
        The :class:`PointCloudDataset` (``source_format`` records the file's format, ``path``
        the file).

    Raises:
        InputError: a ``max_showers`` below 1, or a file the readers reject.
    """
    from showerformer.io import SparseVoxelFile, detect_format, read_showers

    if max_showers is not None and (isinstance(max_showers, bool)
                                    or not isinstance(max_showers, int | np.integer)
                                    or max_showers < 1):
        raise InputError(f"{max_showers!r}", key="max_showers",
                         expected="a positive number of showers, or none for all")
    p = Path(path)
    fmt = detect_format(p)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDE9A]))
    if fmt == "sparse-voxels":
        with SparseVoxelFile(p, geometry=geometry, in_memory=False) as f:
            n = len(f) if max_showers is None else min(len(f), int(max_showers))
            geo = f.geometry
            cells, energies = f.hit_range(0, int(f.offsets[n]))
            counts = f.counts[:n]
            conditions = f.conditions[:n]
        thr = _threshold(geo, threshold)
        keep = energies > thr
        rows = np.repeat(np.arange(n), counts)[keep]
        cells, energies = cells[keep], energies[keep]
        xyz = geo.dequantize(cells, rng)
        flat = np.concatenate([xyz, energies[:, None], geo.layer_of_cell[cells][:, None]], axis=1)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
        return PointCloudDataset(flat, offsets, conditions, geo, fmt, str(p))
    stop = {} if max_showers is None or fmt == "edm4hep" else {"stop": int(max_showers)}
    showers = read_showers(p, geometry, **stop)
    if isinstance(showers, VoxelShowers):
        thr = _threshold(showers.geometry, threshold)
        return PointCloudDataset.from_showers(
            showers.to_points(dequantize=True, rng=rng, threshold=thr), fmt, p)
    if max_showers is not None:
        showers = showers[: int(max_showers)]
    return PointCloudDataset.from_showers(showers, fmt, p)


def _threshold(geometry: Geometry, threshold: float | None) -> float:
    return float(geometry.readout_threshold_mev if threshold is None else threshold)


class PointCollate:
    """Items of :class:`PointCloudDataset` -> the batch dict of PanShower / PointCountFM.

    Pads to the largest shower of the batch (rounded up to ``pad_multiple``), sorts the points
    of every shower by layer and normalizes them with the fitted preprocessing (see
    :func:`showerformer.models.panshower.make_batch`). A class so that data-loader workers can
    pickle it.

    Arguments:
        preprocessing: a fitted :class:`~showerformer.models.panshower.Preprocessing`.
        particles: the model's particle list.
        pad_multiple: pad the point dimension to a multiple of this (128 keeps the number of
            FlexAttention shapes small on GPUs).
    """

    def __init__(self, preprocessing: Any, particles: Sequence[int], pad_multiple: int = 1) -> None:
        self.preprocessing = preprocessing
        self.particles = tuple(int(p) for p in particles)
        self.pad_multiple = max(1, int(pad_multiple))

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        from showerformer.models.panshower import make_batch

        sizes = np.array([len(it["points"]) for it in items], dtype=np.int64)
        p = max(1, int(sizes.max(initial=0)))
        p = math.ceil(p / self.pad_multiple) * self.pad_multiple
        flat = (np.concatenate([it["points"] for it in items]) if len(items)
                else np.zeros((0, 5), np.float32))
        cond = Conditions(np.array([it["energy"] for it in items]),
                          np.array([it["pdg"] for it in items]),
                          np.array([it["theta"] for it in items]),
                          np.array([it["phi"] for it in items]))
        showers = PointShowers.from_flat(flat, sizes, cond, None, max_points=p)
        return make_batch(showers, self.preprocessing, self.particles)


class BucketBatchSampler(Sampler[list[int]]):
    """Seeded batches of showers of similar size (less padding), resumable like the trainer's.

    Each epoch the permutation of :func:`~showerformer.training.data.epoch_permutation` is cut
    into windows of ``bucket_batches`` global batches; inside a window the showers are sorted
    by size and cut into batches; all batches of the epoch are then shuffled (seeded by
    ``(seed, epoch)``). Every shower of the first ``n // batch_size * batch_size`` of the
    permutation is used once per epoch and the order depends only on ``(seed, epoch)``, so a
    run resumed at batch ``start`` continues exactly. Under DDP rank ``r`` takes every
    ``world_size``-th shower of a batch, so all ranks get showers of similar size.

    Arguments:
        sizes: points per shower.  # (N,)
        batch_size: global batch size.
        seed, epoch, start, rank, world_size: as in
            :class:`~showerformer.training.data.EpochBatchSampler`.
        bucket_batches: batches per sorting window (1: no bucketing, plain shuffled batches).
    """

    def __init__(self, sizes: Sequence[int] | np.ndarray, batch_size: int, *, seed: int = 0,
                 epoch: int = 0, start: int = 0, rank: int = 0, world_size: int = 1,
                 bucket_batches: int = 32) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise InputError(f"batch_size={batch_size} for {world_size} processes",
                             key="batch_size", expected="a positive multiple of the processes")
        if bucket_batches < 1:
            raise InputError(f"bucket_batches={bucket_batches}", key="bucket_batches",
                             expected="a positive integer")
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        self.batch_size, self.bucket_batches = int(batch_size), int(bucket_batches)
        self.seed, self.epoch, self.start = int(seed), int(epoch), int(start)
        self.rank, self.world_size = int(rank), int(world_size)

    @classmethod
    def factory(cls, sizes: Sequence[int] | np.ndarray, bucket_batches: int = 32
                ) -> Callable[..., BucketBatchSampler]:
        """A factory with :class:`~showerformer.training.data.EpochBatchSampler`'s signature
        (``n, batch_size, **kw``), for the ``batch_sampler`` argument of the trainer."""
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)

        def make(n: int, batch_size: int, **kw: Any) -> BucketBatchSampler:
            if n != len(sizes):
                raise ValueError(f"bucketing sizes of {len(sizes)} showers for a dataset of {n}")
            return cls(sizes, batch_size, bucket_batches=bucket_batches, **kw)

        return make

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch (the last incomplete one is dropped)."""
        return len(self.sizes) // self.batch_size

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start, 0)

    def batches(self) -> list[np.ndarray]:
        """All global batches of the epoch, in order."""
        nb, b = self.batches_per_epoch, self.batch_size
        perm = epoch_permutation(len(self.sizes), self.seed, self.epoch)[: nb * b]
        out: list[np.ndarray] = []
        window = self.bucket_batches * b
        for lo in range(0, len(perm), window):
            chunk = perm[lo:lo + window]
            chunk = chunk[np.argsort(self.sizes[chunk], kind="stable")]
            out += [chunk[i:i + b] for i in range(0, len(chunk), b)]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 0xB0C4]))
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches()[self.start:]:
            yield batch[self.rank::self.world_size].tolist()
