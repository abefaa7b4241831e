"""Tests of the classical momentum-regression baselines on simulated sandwich32 protons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from showerformer.baselines import (
    BASELINES,
    PROTON_MASS_MEV,
    CalibratedEnergySum,
    GradientBoostedTrees,
    PerLayerLinear,
    high_level_features,
    kinetic_to_momentum,
    layer_energies,
    load_baseline,
    momentum_to_kinetic,
    true_momentum,
)
from showerformer.errors import InputError
from showerformer.geometry import CartesianGeometry
from showerformer.io.sparse import SparseVoxelFile
from showerformer.showers import Conditions, VoxelShowers
from showerformer.simulation import simulate_to_file

N_EVENTS, N_TRAIN = 3000, 2400


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SparseVoxelFile:
    path = tmp_path_factory.mktemp("baselines") / "p32.h5"
    simulate_to_file(path, "sandwich32", n=N_EVENTS, seed=1, progress=False)
    return SparseVoxelFile(path)


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(5).permutation(N_EVENTS)
    return order[:N_TRAIN], order[N_TRAIN:]


@pytest.fixture(scope="module")
def fitted(data: SparseVoxelFile, split: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    train, _ = split
    # one OpenMP thread: boosting with several threads crawls on a loaded shared machine
    return {"calibrated-energy-sum": CalibratedEnergySum().fit(data, train),
            "per-layer-linear": PerLayerLinear().fit(data, train),
            "gradient-boosted-trees": GradientBoostedTrees(n_threads=1).fit(data, train)}


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


class _DenseOnly:
    """Showers reachable only through .dense(indices), as a user's own container."""

    def __init__(self, f: SparseVoxelFile) -> None:
        self.conditions, self.geometry, self._f = f.conditions, f.geometry, f

    def dense(self, indices: Any) -> np.ndarray:
        return self._f.dense(indices)


class _HitsOnly:
    """Showers reachable only through .offsets and .hits(i)."""

    def __init__(self, f: SparseVoxelFile) -> None:
        self.conditions, self.geometry, self.offsets = f.conditions, f.geometry, f.offsets
        self.hits = f.hits


def test_kinematics_round_trip() -> None:
    p = np.array([1.0, 20.0, 1e-4]) * 1000.0
    t = momentum_to_kinetic(p)
    assert t[0] == pytest.approx(np.hypot(1000.0, PROTON_MASS_MEV) - PROTON_MASS_MEV)
    assert t[2] == pytest.approx(0.1**2 / (2 * PROTON_MASS_MEV), rel=1e-6)  # non-relativistic
    np.testing.assert_allclose(kinetic_to_momentum(t), p, rtol=1e-12)
    assert kinetic_to_momentum(-5.0) == 0.0


def test_targets_match_the_conditions(data: SparseVoxelFile) -> None:
    p = true_momentum(data)
    assert p.min() >= 1.0 - 1e-9 and p.max() <= 20.0 + 1e-9  # GeV, the preset's range
    # the simulator's kinetic energy is sqrt(p^2 + m^2) - m
    np.testing.assert_allclose(momentum_to_kinetic(p * 1000.0), data.conditions.energy,
                               rtol=1e-7)


def test_each_baseline_beats_the_mean(data: SparseVoxelFile, split: Any,
                                      fitted: dict[str, Any]) -> None:
    train, test = split
    p = true_momentum(data, test)
    const = _mae(np.full_like(p, true_momentum(data, train).mean()), p)  # ~4.8 GeV
    for name, model in fitted.items():
        pred = model.predict(data, test)
        assert pred.shape == p.shape and np.isfinite(pred).all()
        assert _mae(pred, p) < 0.35 * const, name  # measured 0.22-0.28


def test_trees_beat_the_energy_sum(data: SparseVoxelFile, split: Any,
                                   fitted: dict[str, Any]) -> None:
    _, test = split
    p = true_momentum(data, test)
    rmse_sum = _rmse(fitted["calibrated-energy-sum"].predict(data, test), p)
    rmse_gbt = _rmse(fitted["gradient-boosted-trees"].predict(data, test), p)
    assert rmse_gbt < 0.9 * rmse_sum  # measured ~0.8


def test_calibrated_sum_is_unbiased(data: SparseVoxelFile, split: Any,
                                    fitted: dict[str, Any]) -> None:
    _, test = split
    model = fitted["calibrated-energy-sum"]
    # non-compensating: the hadron response at 1 GeV is below the EM scale and rises slowly
    assert 0.6 < model.a < 0.95 and 1.0 < model.b < 1.15
    p = true_momentum(data, test)
    pred = model.predict(data, test)
    assert abs(np.mean(pred - p) / p.mean()) < 0.03
    high = p > 10.0
    assert abs(np.mean(pred[high] / p[high]) - 1.0) < 0.03


def test_layer_weights_and_summary(fitted: dict[str, Any]) -> None:
    model = fitted["per-layer-linear"]
    assert model.weights.shape == (32,) and np.isfinite(model.weights).all()
    # T per MeV of EM-scale energy: above 1 (e/h > 1) for the well-populated front layers
    assert 1.0 < np.median(model.weights[:16]) < 1.6
    s = model.summary()
    assert s["name"] == "per-layer-linear" and s["n_train"] == N_TRAIN and len(s["weights"]) == 32
    gbt = fitted["gradient-boosted-trees"].summary()
    assert 0 < gbt["n_iter"] < 1000  # early stopping stopped it
    assert gbt["feature_names"][0] == "e_total"


@pytest.mark.parametrize("name", list(BASELINES))
def test_save_load_round_trip(name: str, data: SparseVoxelFile, split: Any,
                              fitted: dict[str, Any], tmp_path: Path) -> None:
    _, test = split
    model = fitted[name]
    path = model.save(tmp_path / f"{name}.model")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.model"]  # no temp files
    for loaded in (type(model).load(path), load_baseline(path)):
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(loaded.predict(data, test), model.predict(data, test))
    other = next(cls for n, cls in BASELINES.items() if n != name)
    with pytest.raises(InputError, match="baseline"):
        other.load(path)


def test_gbt_is_seeded(data: SparseVoxelFile, split: Any) -> None:
    train, test = split
    small = train[:800]
    fits = [GradientBoostedTrees(max_iter=40, seed=s, n_threads=1).fit(data, small).predict(data, test)
            for s in (3, 3, 4)]
    np.testing.assert_array_equal(fits[0], fits[1])
    assert not np.array_equal(fits[0], fits[2])  # the seed picks the validation split


def _brute_features(dense: np.ndarray, geo: CartesianGeometry) -> dict[str, np.ndarray]:
    """The features of one shower from its dense (nz, ny, nx) grid, written plainly."""
    grid = dense.reshape(geo.shape).astype(np.float64)
    iz, iy, ix = np.nonzero(grid > 0)
    e = grid[iz, iy, ix]
    x = geo.x_edges[ix] + geo.dx / 2
    y = geo.y_edges[iy] + geo.dy / 2
    z = geo.z_edges[iz] + geo.dz / 2
    tot = e.sum()
    xm, ym = (e * x).sum() / tot, (e * y).sum() / tot
    r2 = (x - xm) ** 2 + (y - ym) ** 2
    zm = (e * z).sum() / tot
    layer = grid.sum(axis=(1, 2))
    zc = geo.z_edges[:-1] + geo.dz / 2
    start = int(np.flatnonzero(layer >= 0.2 * layer.max())[0])
    med = np.sort(e)[(len(e) - 1) // 2]
    return {
        "e_total": tot, "n_hits": len(e), "n_layers_hit": (layer > 0).sum(),
        "e_mean_hit": tot / len(e), "e_median_hit": med,
        "log_e_hit": (e * np.log(e)).sum() / tot,
        "f_dense": e[e > 5 * med].sum() / tot, "f_max_cell": e.max() / tot,
        "f_core": e[r2 <= 30.0**2].sum() / tot, "r_rms": np.sqrt((e * r2).sum() / tot),
        "z_mean": zm, "z_rms": np.sqrt((e * (z - zm) ** 2).sum() / tot),
        "z_start": zc[start], "e_before_start": layer[:start].sum(),
        "e_layer_max": layer.max(), "z_layer_max": zc[np.argmax(layer)],
        **{f"e_section_{k}": layer[4 * k:4 * k + 4].sum() for k in range(8)},
    }


def test_features_match_brute_force(data: SparseVoxelFile) -> None:
    rows = np.array([17, 3, 250, 1999, 3])  # unsorted, with a repeat
    feats, names = high_level_features(data, rows)
    assert feats.shape == (5, len(names)) and len(set(names)) == len(names)
    dense = data.dense(rows)
    for i in range(len(rows)):
        expected = _brute_features(dense[i], data.geometry)
        assert list(expected) == names
        np.testing.assert_allclose(feats[i], list(expected.values()), rtol=1e-6, atol=1e-6,
                                   err_msg=f"shower {rows[i]}")
    np.testing.assert_allclose(layer_energies(data, rows), dense.reshape(5, 32, -1).sum(-1),
                               rtol=1e-6)


def test_other_inputs_give_the_same_answers(data: SparseVoxelFile,
                                            fitted: dict[str, Any]) -> None:
    rows = np.arange(40, 100)
    ref, _ = high_level_features(data, rows)
    voxels = VoxelShowers(data.dense(rows), data.conditions[rows], data.geometry)
    np.testing.assert_allclose(high_level_features(voxels)[0], ref, rtol=1e-9)
    on_disk = SparseVoxelFile(data.path, in_memory=False)
    np.testing.assert_array_equal(high_level_features(on_disk, rows)[0], ref)
    on_disk.close()
    mask = np.zeros(len(data), dtype=bool)
    mask[rows] = True
    np.testing.assert_array_equal(high_level_features(data, mask)[0], ref)
    for other in (_DenseOnly(data), _HitsOnly(data)):
        np.testing.assert_allclose(high_level_features(other, rows)[0], ref, rtol=1e-9)
        for model in fitted.values():
            np.testing.assert_allclose(model.predict(other, rows), model.predict(data, rows),
                                       rtol=1e-9)


def test_bad_input(data: SparseVoxelFile, fitted: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no showers selected"):
        CalibratedEnergySum().fit(data, np.array([], dtype=int))
    with pytest.raises(InputError, match="out of range"):
        CalibratedEnergySum().fit(data, [0, N_EVENTS])
    with pytest.raises(InputError, match="'pt'"):
        PerLayerLinear(target_key="pt").fit(data)
    with pytest.raises(InputError, match="not fitted"):
        GradientBoostedTrees().predict(data)
    with pytest.raises(InputError, match="geometry"):
        CalibratedEnergySum().fit(object())
    with pytest.raises(InputError, match="ridge"):
        PerLayerLinear(ridge=0.0)
    geo = CartesianGeometry((4, 4, 8), (20.0, 20.0, 53.0), name="tiny")
    empty = VoxelShowers(np.zeros((0, geo.n_cells)), Conditions(np.zeros(0)), geo)
    with pytest.raises(InputError, match="no showers"):
        high_level_features(empty)
    other = VoxelShowers(np.ones((2, geo.n_cells)),
                         Conditions(np.ones(2), extra={"momentum": np.ones(2)}), geo)
    with pytest.raises(InputError, match="training geometry"):
        fitted["per-layer-linear"].predict(other)
    assert fitted["calibrated-energy-sum"].predict(other).shape == (2,)  # geometry-free
    other.energies[1, 5] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        layer_energies(other)
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2")
    with pytest.raises(InputError, match=r"junk\.json"):
        load_baseline(junk)
    with pytest.raises(InputError, match="cannot read"):
        load_baseline(tmp_path / "missing.json")
