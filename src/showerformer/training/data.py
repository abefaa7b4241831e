"""Training data: datasets of dict items, per-batch densification of hit lists, seeded samplers."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from showerformer.data.batching import epoch_permutation, split_indices
from showerformer.errors import InputError

__all__ = [
    "DensifyCollate",
    "EpochBatchSampler",
    "SparseVoxelDataset",
    "TensorDictDataset",
    "densify_collate",
    "epoch_permutation",  # defined in showerformer.data.batching
    "split_indices",  # defined in showerformer.data.batching
]


# ---------------------------------------------------------------------------- sampling


class EpochBatchSampler(Sampler[list[int]]):
    """Global batches of a seeded epoch permutation, each split into equal per-rank shards.

    Batch ``b`` of epoch ``e`` holds samples ``perm[b * B:(b + 1) * B]`` of
    ``perm = epoch_permutation(n, seed, e)``; rank ``r`` of ``W`` gets the ``r``-th contiguous
    ``B / W`` of it. The last incomplete batch is dropped, so every step sees exactly ``B``
    samples split equally over the ranks. Iteration starts at batch ``start`` (resuming inside
    an epoch skips the batches already consumed).

    Arguments:
        n: dataset size.
        batch_size: the global batch size ``B`` (a multiple of ``world_size``).
        seed: the run's seed.
        epoch: the epoch whose permutation is used.
        start: first batch to yield.
        rank: this process's rank.
        world_size: number of processes.
        shuffle: False keeps the dataset order (validation, prediction).
        drop_last: drop the last incomplete batch (True for training).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, epoch: int = 0, start: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 drop_last: bool = True) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}", key="batch_size", expected="at least 1")
        if batch_size % world_size:
            raise InputError(f"batch_size={batch_size} for {world_size} processes",
                             key="batch_size", expected="a multiple of the number of processes")
        self.n, self.batch_size = int(n), int(batch_size)
        self.seed, self.epoch, self.start = int(seed), int(epoch), int(start)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in one epoch."""
        if self.drop_last:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        order = (epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle
                 else np.arange(self.n, dtype=np.int64))
        per = self.batch_size // self.world_size
        for b in range(self.start, self.batches_per_epoch):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]  # (B,)
            if len(batch) == self.batch_size:
                yield batch[self.rank * per:(self.rank + 1) * per].tolist()
            else:  # incomplete last batch (drop_last=False): interleave over the ranks
                yield batch[self.rank::self.world_size].tolist()


# ---------------------------------------------------------------------------- datasets


class TensorDictDataset(Dataset):
    """An in-memory dataset of equally long tensors; item ``i`` is ``{key: tensor[i]}``.

    Arguments:
        tensors: ``{name: (N, ...) tensor or array}``, all with the same first dimension.
    """

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        if not tensors:
            raise InputError("no tensors", expected="at least one named tensor")
        self.tensors = {k: torch.as_tensor(v) for k, v in tensors.items()}
        sizes = {k: len(v) for k, v in self.tensors.items()}
        if len(set(sizes.values())) != 1:
            raise InputError(f"tensors of different lengths {sizes}",
                             expected="the same first dimension for every tensor")
        self._n = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


class DensifyCollate:
    """Collate function turning hit-list items into dense batches (see :func:`densify_collate`).

    A small class rather than a closure so that data-loader workers can pickle it.

    Arguments:
        shape: the dense shape of one event, ``(nz, ny, nx)`` for a Cartesian grid.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        return densify_collate(items, self.shape)


def densify_collate(items: Sequence[Mapping[str, Any]], shape: Sequence[int]) -> dict[str, Tensor]:
    """Dense batch from items with hit lists.

    Arguments:
        items: dicts with ``"cells"`` (H_i,) int flat cell indices, ``"energies"`` (H_i,) MeV,
            and optionally ``"target"`` (float) and ``"index"`` (int).
        shape: dense shape of one event, e.g. ``(nz, ny, nx)``.

    Returns:
        ``{"voxels": (B, *shape) float32 MeV, "target": (B,) float32, "index": (B,) int64}``
        (``target`` / ``index`` only when the items have them). Energies of repeated cells add up.
    """
    shape = tuple(int(s) for s in shape)
    n_cells = math.prod(shape)
    b = len(items)
    counts = np.fromiter((len(it["cells"]) for it in items), dtype=np.int64, count=b)  # (B,)
    flat = torch.zeros(b * n_cells, dtype=torch.float32)  # (B * n_cells,)
    if counts.sum() > 0:
        cells = torch.from_numpy(np.concatenate([np.asarray(it["cells"], dtype=np.int64)
                                                 for it in items]))  # (H,)
        energies = torch.from_numpy(np.concatenate([np.asarray(it["energies"], dtype=np.float32)
                                                    for it in items]))  # (H,)
        rows = torch.from_numpy(np.repeat(np.arange(b, dtype=np.int64), counts))  # (H,)
        flat.index_put_((rows * n_cells + cells,), energies, accumulate=True)
    out = {"voxels": flat.view(b, *shape)}  # (B, nz, ny, nx)
    if b and "target" in items[0]:
        out["target"] = torch.tensor([float(it["target"]) for it in items], dtype=torch.float32)
    if b and "index" in items[0]:
        out["index"] = torch.tensor([int(it["index"]) for it in items], dtype=torch.int64)
    return out


def _condition_values(conditions: Any, key: str, path: Path) -> np.ndarray:
    """A per-event condition by name: energy, pdg, theta, phi or an extra quantity."""
    if key in ("energy", "pdg", "theta", "phi"):
        return np.asarray(getattr(conditions, key), dtype=np.float64)
    if key in conditions.extra:
        return np.asarray(conditions.extra[key], dtype=np.float64).reshape(len(conditions))
    known = ["energy", "pdg", "theta", "phi", *sorted(conditions.extra)]
    raise InputError("no such per-event quantity", path=path, key=key,
                     expected="one of " + ", ".join(known))


class SparseVoxelDataset(Dataset):
    """Events of a sparse voxel HDF5 file as hit lists, densified per batch.

    Item ``i`` is ``{"cells": (H,) int64, "energies": (H,) float32 MeV, "target": float,
    "index": int}`` (no ``target`` when ``target_key`` is None); :attr:`collate_fn`
    (:class:`DensifyCollate`) builds ``"voxels"`` (B, nz, ny, nx) float32 MeV and ``"target"``
    (B,). Only hit lists are kept in memory, so 100k events of a 64^3 grid fit easily.

    Arguments:
        path: a sparse voxel file (:mod:`showerformer.io.sparse`), or an open
            :class:`~showerformer.io.sparse.SparseVoxelFile`.
        target_key: the per-event quantity to regress (``"momentum"``, ``"energy"``, an extra
            condition) or None for unlabelled prediction.
        target_scale: factor applied to it (1e-3: MeV -> GeV).
        indices: restrict to these events (e.g. a train / validation split).
        in_memory: load all hits at opening.

    Raises:
        InputError: a missing file, a bad layout or an unknown ``target_key``, naming the file.
    """

    def __init__(self, path: str | os.PathLike[str] | Any, target_key: str | None = "momentum",
                 target_scale: float = 1e-3, *, indices: Sequence[int] | np.ndarray | None = None,
                 in_memory: bool = True) -> None:
        from showerformer.io.sparse import SparseVoxelFile

        if isinstance(path, SparseVoxelFile):
            self.file = path
        else:
            self.file = SparseVoxelFile(path, in_memory=in_memory)
        self.path = Path(self.file.path)
        self.target_key = target_key
        self.target_scale = float(target_scale)
        n = len(self.file)
        if indices is None:
            self.indices = np.arange(n, dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
                raise InputError(f"event index out of range for {n} events", path=self.path,
                                 expected=f"indices in [0, {n})")
        self._all_targets = None
        if target_key is not None:
            self._all_targets = _condition_values(self.file.conditions, target_key,
                                                  self.path) * self.target_scale  # (N,)
        shape = getattr(self.file.geometry, "shape", None)
        self.shape: tuple[int, ...] = (tuple(int(s) for s in shape) if shape is not None
                                       else (int(self.file.geometry.n_cells),))
        self.collate_fn = DensifyCollate(self.shape)

    @property
    def geometry(self) -> Any:
        """The file's geometry."""
        return self.file.geometry

    @property
    def targets(self) -> np.ndarray | None:
        """Targets of the events of this dataset, (N,) float64 (None without ``target_key``)."""
        return None if self._all_targets is None else self._all_targets[self.indices]

    def subset(self, indices: Sequence[int] | np.ndarray) -> SparseVoxelDataset:
        """The events ``indices`` (positions in this dataset), sharing the loaded file."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return SparseVoxelDataset(self.file, self.target_key, self.target_scale,
                                  indices=self.indices[idx])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        cells, energies = self.file.hits(j)
        item: dict[str, Any] = {"cells": cells, "energies": energies, "index": j}
        if self._all_targets is not None:
            item["target"] = float(self._all_targets[j])
        return item
