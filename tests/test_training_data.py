"""Tests of the training data: seeded epoch order, rank shards, densification, sparse datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import write_cube_file

from showerformer.errors import InputError
from showerformer.io.sparse import SparseVoxelFile
from showerformer.training import (
    DensifyCollate,
    EpochBatchSampler,
    SparseVoxelDataset,
    TensorDictDataset,
    densify_collate,
    epoch_permutation,
    split_indices,
)


def test_epoch_permutation_depends_on_seed_and_epoch_only() -> None:
    a = epoch_permutation(50, seed=3, epoch=1)
    np.testing.assert_array_equal(a, epoch_permutation(50, seed=3, epoch=1))
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    assert not np.array_equal(a, epoch_permutation(50, seed=3, epoch=2))
    assert not np.array_equal(a, epoch_permutation(50, seed=4, epoch=1))


def test_batch_sampler_shards_and_start() -> None:
    full = list(EpochBatchSampler(43, 8, seed=1, epoch=2))
    assert len(full) == 5 and all(len(b) == 8 for b in full)  # the incomplete batch is dropped
    perm = epoch_permutation(43, 1, 2)
    assert [i for b in full for i in b] == perm[:40].tolist()
    # two ranks: equal contiguous halves of every global batch
    r0 = list(EpochBatchSampler(43, 8, seed=1, epoch=2, rank=0, world_size=2))
    r1 = list(EpochBatchSampler(43, 8, seed=1, epoch=2, rank=1, world_size=2))
    for g, a, b in zip(full, r0, r1, strict=True):
        assert len(a) == len(b) == 4 and a + b == g
    # resuming inside the epoch skips the consumed batches
    tail = EpochBatchSampler(43, 8, seed=1, epoch=2, start=3)
    assert len(tail) == 2 and list(tail) == full[3:]
    # validation order: no shuffle, keep the last partial batch
    plain = list(EpochBatchSampler(10, 4, shuffle=False, drop_last=False))
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(InputError, match="multiple of the number of processes"):
        EpochBatchSampler(43, 7, world_size=2)


def test_split_indices() -> None:
    tr, va = split_indices(100, 0.2, seed=5)
    assert len(va) == 20 and len(tr) == 80
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(100))
    np.testing.assert_array_equal(va, split_indices(100, 0.2, seed=5)[1])
    assert not np.array_equal(va, split_indices(100, 0.2, seed=6)[1])
    with pytest.raises(InputError, match="val_fraction"):
        split_indices(100, 1.5)


def test_densify_collate() -> None:
    items = [{"cells": np.array([0, 5, 5]), "energies": np.array([1.0, 2.0, 3.0], np.float32),
              "target": 4.5, "index": 7},
             {"cells": np.array([], np.int64), "energies": np.array([], np.float32),
              "target": 1.0, "index": 2}]
    out = densify_collate(items, (2, 2, 2))
    assert out["voxels"].shape == (2, 2, 2, 2) and out["voxels"].dtype == torch.float32
    flat = out["voxels"].reshape(2, 8)
    assert flat[0, 0] == 1.0 and flat[0, 5] == 5.0  # repeated cells add up
    assert flat[0].sum() == 6.0 and flat[1].sum() == 0.0
    torch.testing.assert_close(out["target"], torch.tensor([4.5, 1.0]))
    assert out["index"].tolist() == [7, 2]
    assert DensifyCollate((2, 2, 2))(items)["voxels"].shape == (2, 2, 2, 2)


def test_tensor_dict_dataset() -> None:
    ds = TensorDictDataset({"x": torch.arange(6).reshape(3, 2), "y": np.arange(3.0)})
    assert len(ds) == 3 and ds[1]["x"].tolist() == [2, 3] and ds[1]["y"].item() == 1.0
    with pytest.raises(InputError, match="different lengths"):
        TensorDictDataset({"x": torch.zeros(3), "y": torch.zeros(4)})


def test_sparse_voxel_dataset(tmp_path) -> None:
    path = write_cube_file(tmp_path / "cube.h5", n=12, grid=16)
    ds = SparseVoxelDataset(path)
    f = SparseVoxelFile(path)
    assert len(ds) == 12 and ds.shape == (16, 16, 16)
    np.testing.assert_allclose(ds.targets, f.conditions.extra["momentum"] * 1e-3)
    batch = ds.collate_fn([ds[i] for i in (3, 0)])
    assert batch["voxels"].shape == (2, 16, 16, 16)
    dense = f.dense([3, 0]).reshape(2, 16, 16, 16)
    np.testing.assert_array_equal(batch["voxels"].numpy(), dense)
    np.testing.assert_allclose(batch["target"].numpy(), ds.targets[[3, 0]], rtol=1e-6)
    sub = ds.subset([5, 1])
    assert len(sub) == 2 and sub[0]["index"] == 5 and sub.file is ds.file
    np.testing.assert_allclose(sub.targets, ds.targets[[5, 1]])
    energy = SparseVoxelDataset(path, target_key="energy", target_scale=1.0)
    np.testing.assert_allclose(energy.targets, f.conditions.energy)
    assert "target" not in SparseVoxelDataset(path, target_key=None)[0]
    with pytest.raises(InputError, match=r"cube\.h5.*key 'charge'.*momentum") as err:
        SparseVoxelDataset(path, target_key="charge")
    assert err.value.key == "charge"
    with pytest.raises(InputError, match=r"missing\.h5"):
        SparseVoxelDataset(tmp_path / "missing.h5")
