"""Evaluation metrics on cases with a known answer: separation power, W1, KS, FPD and KPD."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.evaluation.features import compute_features, histogram_names
from showerformer.evaluation.metrics import (
    DistanceEstimate,
    format_fpd_kpd,
    fpd,
    frechet_distance,
    high_level_feature_matrix,
    kpd,
    ks_features,
    ks_statistic,
    mmd2_poly_unbiased,
    separation_power,
    separation_power_features,
    wasserstein_1d,
    wasserstein_features,
)
from showerformer.geometry import get_geometry
from showerformer.showers import Conditions, VoxelShowers


def _random(name: str, n: int, seed: int, scale: float = 1.0) -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = rng.lognormal(-2.0, 2.0, size=(n, geo.n_cells)).astype(np.float32) * np.float32(scale)
    e[rng.random(e.shape) > 0.3] = 0.0
    return VoxelShowers(e, Conditions(10 ** rng.uniform(3, 6, n)), geo)


# ---------------------------------------------------------------------------- separation power
def test_separation_power_known_values():
    h = np.array([3.0, 5.0, 0.0, 2.0])
    assert separation_power(h, h) == 0.0
    assert separation_power(h, 7 * h) == pytest.approx(0.0, abs=1e-15)  # shapes, not counts
    assert separation_power([1, 1, 0, 0], [0, 0, 4, 1]) == pytest.approx(1.0, abs=1e-12)
    # p = (1/2, 1/2), q = (1, 0): 1/2 [(1/2)^2 / (3/2) + (1/2)^2 / (1/2)] = 1/3
    assert separation_power([2, 2], [3, 0]) == pytest.approx(1.0 / 3.0, rel=1e-12)
    assert math.isnan(separation_power([0, 0], [1, 2]))
    with pytest.raises(InputError, match="shapes"):
        separation_power([1, 2], [1, 2, 3])
    with pytest.raises(InputError, match="negative"):
        separation_power([1, -2], [1, 2])


def test_separation_power_equals_official_density_form():
    """The official code: density histograms times bin widths, under/overflow dropped."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 5000), rng.normal(0.3, 1.2, 4000)
    bins = np.array([-2.0, -1.5, -0.2, 0.0, 0.1, 0.9, 1.7, 2.5])  # uneven, data outside
    ha, _ = np.histogram(a, bins, density=True)
    hb, _ = np.histogram(b, bins, density=True)
    h1, h2 = ha * np.diff(bins), hb * np.diff(bins)
    official = 0.5 * np.sum((h1 - h2) ** 2 / (h1 + h2 + 1e-16))
    ca, _ = np.histogram(a, bins)
    cb, _ = np.histogram(b, bins)
    assert separation_power(ca, cb) == pytest.approx(official, rel=1e-12)


def test_separation_power_features_same_and_different_samples():
    ref = compute_features(_random("ds2", 60, seed=1))
    same = separation_power_features(ref, ref)
    assert list(same) == histogram_names("ds2")
    vals = np.array([v for v in same.values() if not math.isnan(v)])
    assert len(vals) > 300 and np.all(vals == 0.0)
    gen = compute_features(_random("ds2", 60, seed=2, scale=3.0))
    diff = separation_power_features(ref, gen, extra=False)
    assert list(diff) == histogram_names("ds2", extra=False)
    assert diff["voxel_energy"] > 0.01 and diff["E_tot/E_inc"] > 0.3
    assert all(0.0 <= v <= 1.0 for v in diff.values() if not math.isnan(v))
    # ds1 with its per-energy histograms (empty ranges give NaN, as officially)
    d1 = compute_features(_random("ds1-photons", 30, seed=1))
    s1 = separation_power_features(d1, d1)
    assert math.isnan(s1["E_tot/E_inc_at_E_256"]) or s1["E_tot/E_inc_at_E_256"] == 0.0


def test_separation_power_features_rejects_mismatched_samples():
    ref = compute_features(_random("ds2", 5, seed=1))
    with pytest.raises(InputError, match="geometry"):
        separation_power_features(ref, compute_features(_random("ds1-pions", 5, seed=1)))
    with pytest.raises(InputError, match="threshold"):
        separation_power_features(ref, compute_features(_random("ds2", 5, seed=1),
                                                        threshold=0.0))


# ---------------------------------------------------------------------------- W1 and KS
def test_wasserstein_and_ks_known_values():
    assert wasserstein_1d([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)
    assert wasserstein_1d([0, 0, 1], [0, 1, 1]) == pytest.approx(1.0 / 3.0)
    assert ks_statistic([1, 2, 3], [10, 11, 12]) == 1.0
    assert ks_statistic([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    with pytest.raises(InputError, match="NaN"):
        wasserstein_1d([0, np.nan], [1, 2])
    with pytest.raises(InputError, match="empty"):
        ks_statistic([], [1, 2])
    ref = compute_features(_random("ds2", 20, seed=1))
    w = wasserstein_features(ref, ref)
    k = ks_features(ref, ref, names=["E_tot", "n_hits"])
    assert set(w) == set(ref.features) and max(w.values()) == 0.0
    assert k == {"E_tot": 0.0, "n_hits": 0.0}


# ---------------------------------------------------------------------------- FPD
def _fd_closed_form(m1, s1, m2, s2) -> float:
    """|m1 - m2|^2 + Tr(s1 + s2 - 2 (s1^1/2 s2 s1^1/2)^1/2) by eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner).sum())


M1 = np.zeros(3)
S1 = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
M2 = np.array([0.4, 0.0, -0.1])
S2 = np.diag([1.5, 0.7, 0.5])


def test_frechet_distance_closed_form():
    assert frechet_distance(M1, S1, M2, S2) == pytest.approx(_fd_closed_form(M1, S1, M2, S2),
                                                             rel=1e-10)
    # commuting (diagonal) covariances: |dm|^2 + sum (sigma1 - sigma2)^2
    d1, d2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert frechet_distance([0, 0], d1, [1, 1], d2) == pytest.approx(2 + 4 + 1)
    assert frechet_distance(M1, S1, M1, S1) == pytest.approx(0.0, abs=1e-10)
    # a singular product falls back to a regularized square root, without warnings
    assert frechet_distance([0, 0], np.diag([1.0, 0.0]), [0, 0], np.diag([1.0, 0.0])) == \
        pytest.approx(0.0, abs=1e-5)


def test_fpd_reproduces_gaussian_closed_form():
    rng = np.random.default_rng(11)
    x = rng.multivariate_normal(M1, S1, size=40_000)
    y = rng.multivariate_normal(M2, S2, size=40_000)
    kwargs = dict(min_samples=2000, max_samples=10_000, num_batches=10, num_points=6,
                  normalise=False, seed=1)
    value, error = fpd(x, y, **kwargs)
    true = _fd_closed_form(M1, S1, M2, S2)
    assert error > 0
    assert abs(value - true) < max(3 * error, 0.02)
    same = fpd(x, rng.multivariate_normal(M1, S1, size=40_000), **kwargs)
    assert 0.0 <= same.value < 0.005
    # deterministic for a seed; the default normalisation changes the scale, not the sign
    assert fpd(x, y, **kwargs) == (value, error)
    assert fpd(x, y, **{**kwargs, "normalise": True}).value > 0.01


# ---------------------------------------------------------------------------- KPD
def _uniform_moment(idx: tuple[int, ...], lo: np.ndarray, hi: np.ndarray) -> float:
    """E[x_i1 ... x_ij] for independent uniform coordinates x_k ~ U[lo_k, hi_k]."""
    out = 1.0
    for k in set(idx):
        p = idx.count(k)
        out *= (hi[k] ** (p + 1) - lo[k] ** (p + 1)) / ((p + 1) * (hi[k] - lo[k]))
    return out


def _mmd2_closed_form(lo1, hi1, lo2, hi2, degree: int) -> float:
    """MMD^2 with (x.y/d + 1)^D = sum_j C(D, j) d^-j (x.y)^j:
    sum_j C(D, j) d^-j |E[x^(x)j] - E[y^(x)j]|_F^2 with the moment tensors."""
    d = len(lo1)
    total = 0.0
    for j in range(1, degree + 1):
        s = sum((_uniform_moment(idx, lo1, hi1) - _uniform_moment(idx, lo2, hi2)) ** 2
                for idx in itertools.product(range(d), repeat=j))
        total += math.comb(degree, j) * d ** (-j) * s
    return total


def test_mmd2_unbiased_equals_direct_quadratic_formula():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1, size=(5, 3))

    def k(a, b, degree=4):
        return (a @ b / 3 + 1) ** degree

    for degree in (3, 4):
        xx = sum(k(x[i], x[j], degree) for i in range(7) for j in range(7) if i != j) / 42
        yy = sum(k(y[i], y[j], degree) for i in range(5) for j in range(5) if i != j) / 20
        xy = sum(k(x[i], y[j], degree) for i in range(7) for j in range(5)) / 35
        assert mmd2_poly_unbiased(x, y, degree) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kpd_known_value_and_zero_for_same_distribution():
    rng = np.random.default_rng(5)
    lo1, hi1 = np.zeros(2), np.ones(2)
    lo2, hi2 = np.array([0.2, 0.0]), np.array([1.2, 1.3])
    x = rng.uniform(lo1, hi1, size=(30_000, 2))
    y = rng.uniform(lo2, hi2, size=(30_000, 2))
    for degree in (4, 2):
        true = _mmd2_closed_form(lo1, hi1, lo2, hi2, degree)
        value, error = kpd(x, y, num_batches=10, batch_size=1500, degree=degree,
                           normalise=False, seed=2)
        assert abs(value - true) < max(3 * error, 0.03 * true), (degree, value, error, true)
    same = kpd(x, rng.uniform(lo1, hi1, size=(30_000, 2)), num_batches=10, batch_size=1500,
               normalise=False, seed=2)
    true4 = _mmd2_closed_form(lo1, hi1, lo2, hi2, 4)
    assert abs(same.value) < 0.02 * true4 and abs(same.value) < 3 * same.error + 1e-3
    # unbiased: the mean of many small-batch estimates is ~0 (a biased V-statistic is not)
    vals = [mmd2_poly_unbiased(x[i * 50:(i + 1) * 50], x[15000 + i * 50:15000 + (i + 1) * 50])
            for i in range(200)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))


def test_fpd_kpd_bad_input_and_formatting():
    with pytest.raises(InputError, match="same d"):
        kpd(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(InputError, match="NaN"):
        fpd(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(InputError, match="at least 2"):
        kpd(np.zeros((1, 2)), np.zeros((5, 2)))
    f, k = DistanceEstimate(0.0123456, 0.00042), DistanceEstimate(-1.5e-5, 2e-6)
    assert f.scaled() == pytest.approx((12.3456, 0.42))
    assert format_fpd_kpd(f, k) == "FPD (x10^3): 12.3456 ± 0.4200\nKPD (x10^3): -0.0150 ± 0.0020"


def test_high_level_feature_matrix_dimension():
    fs = compute_features(_random("ds2", 4, seed=0))
    assert high_level_feature_matrix(fs).shape == (4, 362)


def test_high_level_names_and_scale_outliers():
    from showerformer.evaluation.features import high_level_names
    from showerformer.evaluation.metrics import scale_outliers

    fs = compute_features(_random("ds2", 6, seed=1))
    names = high_level_names(fs)
    mat = high_level_feature_matrix(fs)
    assert len(names) == mat.shape[1] == len(set(names))
    assert names[0] == "log10(E_inc)" and names[-1].startswith("width_r_")
    np.testing.assert_allclose(mat[:, 0], np.log10(fs.incident_energy))
    # a column the reference fills with round-off only is named; the others are not
    real, gen = mat.copy(), mat.copy()
    real[:, 5] = 0.0
    real[0, 5] = 1e-9
    gen[:, 5] = 0.5
    out = scale_outliers(real, gen, names)
    assert len(out) == 1 and names[5] in out[0] and "5e+08" in out[0]
    assert scale_outliers(mat, mat, names) == []
