"""Classifier inputs from the voxel cache: the official low-level inputs, the temporary file
removed, streamed training equal to the in-memory one, early stopping."""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import pytest

from showerformer.errors import InputError, OutputError
from showerformer.evaluation import classifier as C
from showerformer.evaluation.classifier import ClassifierConfig, run_classifier
from showerformer.evaluation.features import classifier_inputs, compute_features
from showerformer.evaluation.inputs import ArrayRows, LowLevelRows, VoxelCache
from showerformer.geometry import get_geometry
from showerformer.showers import Conditions, VoxelShowers


def _showers(name: str = "ds2", n: int = 30, seed: int = 0) -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = rng.lognormal(-3.0, 2.5, size=(n, geo.n_cells)).astype(np.float32)
    e[rng.random(e.shape) < 0.6] = 0.0
    e[0, geo.layer_slice(3)] = 0.005  # a layer below the threshold: E_layer 0, raw voxels > 0
    return VoxelShowers(e, Conditions(rng.uniform(1e3, 1e6, n), pdg=11), geo)


def _rows(showers: VoxelShowers, kind: str, cache: VoxelCache) -> LowLevelRows:
    fs = compute_features(showers)
    e_layer = np.stack([fs.features[f"E_layer_{lid}"] for lid in fs.layers], axis=1)
    return LowLevelRows(cache, kind, fs.incident_energy, e_layer, showers.geometry,
                        fs.threshold)


@pytest.mark.parametrize("name", ["ds2", "ds1-pions"])
@pytest.mark.parametrize("kind", ["low", "low_normed"])
def test_low_level_rows_equal_the_official_inputs(name, kind):
    showers = _showers(name)
    expected = classifier_inputs(showers, kind)  # (n, d) float32, computed in float64
    with VoxelCache(showers.geometry.n_cells) as cache:
        cache.append(showers.energies[:17])
        cache.append(showers.energies[17:])
        rows = _rows(showers, kind, cache)
        assert len(rows) == len(showers) and rows.dim == expected.shape[1]
        pick = np.array([0, 1, 2, 5, 6, 20, 29])  # runs of consecutive rows and single ones
        got = rows.take(pick)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected[pick], rtol=3e-7, atol=0)


def test_cache_reads_scattered_rows_in_parallel(tmp_path, monkeypatch):
    import showerformer.evaluation.inputs as I

    data = np.arange(50 * 7, dtype=np.float32).reshape(50, 7)
    rows = np.array([0, 1, 2, 9, 10, 30, 31, 32, 33, 49])
    with VoxelCache(7, tmp_path) as cache:
        cache.append(data)
        serial = cache.read(rows)
        monkeypatch.setattr(I, "_PARALLEL_BYTES", 0)
        parallel = cache.read(rows)
        assert cache._pool is not None
    np.testing.assert_array_equal(serial, data[rows])
    np.testing.assert_array_equal(parallel, data[rows])
    assert cache._pool is None  # the readers end with the cache


def test_cache_file_has_no_name_and_is_closed(tmp_path):
    with VoxelCache(10, tmp_path) as cache:
        cache.append(np.arange(30, dtype=np.float64).reshape(3, 10))
        assert list(tmp_path.iterdir()) == []  # an anonymous file: nothing to clean up
        np.testing.assert_array_equal(cache.read(np.array([0, 2]))[:, 0], [0.0, 20.0])
        out = np.zeros((2, 12), np.float32)
        cache.read(np.array([1, 2]), out[:, 1:11])  # into a column block of a wider array
        np.testing.assert_array_equal(out[:, 1], [10.0, 20.0])
        assert cache.nbytes == 3 * 10 * 4
        with pytest.raises(IndexError):
            cache.read(np.array([3]))
        with pytest.raises(InputError, match="shape"):
            cache.append(np.zeros((2, 9)))
    assert cache._file is None


def test_cache_full_disk_is_one_line(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with VoxelCache(4, tmp_path, option="--cache-dir") as cache:
        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(OutputError, match=r"--cache-dir .*disk became full"):
            cache.append(np.ones((2, 4)))
    with pytest.raises(OutputError, match="--cache-dir"):
        VoxelCache(4, tmp_path / "missing" / "folder")


def test_streamed_training_equals_the_in_memory_one(monkeypatch):
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(600, 12)).astype(np.float32)
    gen = rng.normal(size=(500, 12)).astype(np.float32)
    gen[:, 2] += 1.5
    cfg = ClassifierConfig.cpu_friendly(hidden=(16, 16), epochs=3, n_repeats=2, lr=2e-3,
                                        batch_size=64, whiten_max_features=4)
    memory = run_classifier(ref, gen, cfg)
    monkeypatch.setattr(C, "_MATERIALIZE_BYTES", 0)  # build every batch on the fly
    streamed = run_classifier(ArrayRows(ref), ArrayRows(gen), cfg)
    assert streamed.streamed and not memory.streamed
    assert streamed.best_epochs == memory.best_epochs
    np.testing.assert_allclose(streamed.aucs, memory.aucs, atol=2e-3)
    assert memory.auc_mean > 0.6


def test_fit_rows_and_early_stopping():
    rng = np.random.default_rng(4)
    ref, gen = rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3))
    cfg = ClassifierConfig.cpu_friendly(hidden=(8,), epochs=30, n_repeats=1, patience=2,
                                        fit_rows=300)
    res = run_classifier(ref, gen, cfg)
    assert res.epochs_run[0] < 30  # same distributions: no gain beyond the noise
    assert 1 <= res.best_epochs[0] <= res.epochs_run[0]
    assert "at most 30 epochs (stop after 2 without a better" in cfg.describe()
    assert "fitted on <= 300 training showers" in cfg.describe()
    assert not cfg.is_official() and ClassifierConfig(patience=None).is_official()
    with pytest.raises(InputError, match="patience"):
        ClassifierConfig(patience=0)
    with pytest.raises(InputError, match="fit_rows"):
        ClassifierConfig(fit_rows=1)


def test_row_sources_are_checked():
    with pytest.raises(InputError, match="reference classifier inputs are empty"):
        run_classifier(ArrayRows(np.zeros((0, 3))), np.ones((300, 3)))
    with VoxelCache(get_geometry("ds2").n_cells, tempfile.gettempdir()) as cache:
        with pytest.raises(InputError, match="0 cached showers, 2 incident energies"):
            _rows(_showers(n=2), "low", cache)
    with pytest.raises(InputError, match="same feature dimension"):
        run_classifier(ArrayRows(np.ones((300, 2))), np.ones((300, 3)))
