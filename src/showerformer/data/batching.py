"""Seeded sample orders, train/validation splits and size-bucketed batches of showers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Sampler

from showerformer.errors import InputError

if TYPE_CHECKING:
    from showerformer.data.points import PointCloudDataset

__all__ = [
    "BucketBatchSampler",
    "epoch_permutation",
    "size_chunks",
    "size_sorted",
    "split_indices",
]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` samples in ``epoch``: a function of ``(seed, epoch)`` only.

    Arguments:
        n: dataset size.
        seed: the run's seed.
        epoch: epoch number (0-based).

    Returns:
        ``(n,)`` int64 permutation of ``0..n-1``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x5EED]))
    return rng.permutation(int(n)).astype(np.int64)


def split_indices(n: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``0..n-1`` into training and validation indices (both sorted).

    Arguments:
        n: dataset size.
        val_fraction: share of the validation part, in (0, 1).
        seed: seed of the split.

    Returns:
        ``(train, val)`` int64 index arrays; the validation part has ``round(n * fraction)``
        samples (at least 1).

    Raises:
        InputError: a fraction outside (0, 1), or one that leaves no training sample.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction={val_fraction}", key="val_fraction",
                         expected="a fraction in (0, 1)")
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise InputError(f"{n} samples cannot be split with val_fraction={val_fraction}",
                         key="val_fraction", expected="a fraction leaving training samples")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B17]))
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


def size_sorted(dataset: PointCloudDataset) -> PointCloudDataset:
    """The same showers ordered by size (validation batches then need little padding).

    Arguments:
        dataset: a :class:`~showerformer.data.points.PointCloudDataset`.

    Returns:
        A copy with the showers sorted by their number of points (stable).
    """
    return dataset.subset(np.argsort(dataset.sizes, kind="stable"))


def size_chunks(sizes: np.ndarray, batch_size: int, max_padding: float = 0.25) -> list[slice]:
    """Cut showers, in their order, into network calls of at most ``batch_size`` showers whose
    padded points (showers x the largest) exceed their real points by at most ``max_padding``.

    Shower sizes from 1 GeV to 1 TeV differ a hundredfold, so a request padded to its largest
    shower computes mostly padding; sorted by size, it costs little more than its points.

    Arguments:
        sizes: points per shower.  # (N,)
        batch_size: showers per call, at most.
        max_padding: allowed padded points over real points, minus one.

    Returns:
        Consecutive slices covering ``0..N``.

    Raises:
        InputError: a batch size below 1 or a negative ``max_padding``.
    """
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}", key="batch_size",
                         expected="a positive number of showers")
    if not max_padding >= 0:
        raise InputError(f"max_padding={max_padding}", key="max_padding",
                         expected="a non-negative share of the points")
    sizes = np.maximum(np.asarray(sizes, dtype=np.int64).reshape(-1), 1)
    chunks: list[slice] = []
    start, total, largest = 0, 0, 0
    for i, size in enumerate(sizes.tolist()):
        new_largest, new_total = max(largest, size), total + size
        full = i - start >= batch_size
        if i > start and (full or (i - start + 1) * new_largest > (1 + max_padding) * new_total):
            chunks.append(slice(start, i))
            start, new_largest, new_total = i, size, size
        largest, total = new_largest, new_total
    if len(sizes):
        chunks.append(slice(start, len(sizes)))
    return chunks


class BucketBatchSampler(Sampler[list[int]]):
    """Seeded batches of showers of similar size (less padding), resumable like the trainer's.

    Each epoch the permutation of :func:`epoch_permutation` is cut into windows of
    ``bucket_batches`` global batches; inside a window the showers are sorted by size and cut
    into batches; all batches of the epoch are then shuffled (seeded by ``(seed, epoch)``).
    Every shower of the first ``n // batch_size * batch_size`` of the permutation is used once
    per epoch and the order depends only on ``(seed, epoch)``, so a run resumed at batch
    ``start`` continues exactly. Under DDP rank ``r`` takes every ``world_size``-th shower of a
    batch, so all ranks get showers of similar size.

    Arguments:
        sizes: points per shower.  # (N,)
        batch_size: global batch size.
        seed, epoch, start, rank, world_size: as in
            :class:`~showerformer.training.data.EpochBatchSampler`.
        bucket_batches: batches per sorting window (1: no bucketing, plain shuffled batches).

    Raises:
        InputError: a batch size that is not a positive multiple of ``world_size``, or
            ``bucket_batches`` below 1.
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
