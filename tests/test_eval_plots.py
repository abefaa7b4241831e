"""Evaluation plots: every function writes a non-empty PNG, leaves no figure open, checks input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("mplhep")

from showerformer.errors import InputError
from showerformer.evaluation import plots as P
from showerformer.evaluation.features import compute_features
from showerformer.geometry import CartesianGeometry, get_geometry
from showerformer.showers import Conditions, VoxelShowers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_bytes: int = 2000) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    # no temporary file of the atomic write is left beside it
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))


@pytest.fixture(autouse=True)
def _no_open_figures():
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "a plot function left a pyplot figure open"


def _toy(geo, n: int, seed: int, scale: float = 1.0) -> VoxelShowers:
    """Toy showers: energy falling with depth and radius, gamma-distributed per cell."""
    rng = np.random.default_rng(seed)
    centres = geo.cell_centers()
    z = (geo.layer_of_cell + 0.5) / geo.n_layers
    r = np.hypot(centres[:, 0], centres[:, 1])
    shape = np.exp(-3 * z) * np.exp(-r / 30.0)
    e = shape[None] * rng.gamma(2.0, 1.0, (n, geo.n_cells)) * 100.0 * scale
    e[rng.random(e.shape) < 0.3] = 0.0
    return VoxelShowers(e.astype(np.float32), Conditions(rng.uniform(1e3, 1e4, n)), geo)


SMALL_GRID = CartesianGeometry((8, 6, 5), (10.0, 12.0, 20.0), name="grid8x6x5")


def test_feature_histogram_counts_and_checks():
    h = P.FeatureHistogram.from_values("E_tot/E_inc", [0.1, 0.5, 0.6, np.nan, 2.0],
                                       [0.55, 0.95], [0.0, 0.5, 1.0], separation_power=0.25)
    assert h.reference.tolist() == [1.0, 2.0]  # 2.0 outside, NaN dropped; 0.5 in the upper bin
    assert h.generated.tolist() == [0.0, 2.0]
    with pytest.raises(InputError, match="not increasing"):
        P.FeatureHistogram.from_values("x", [1.0], [1.0], [1.0, 1.0])
    with pytest.raises(InputError, match="counts for 2 bins"):
        P.FeatureHistogram("x", [1.0], [1.0, 2.0], [0.0, 1.0, 2.0])


def test_feature_label():
    assert P.feature_label("E_layer_12").endswith("layer 12")
    assert "MeV" in P.feature_label("E_layer_0")
    assert P.feature_label("E_tot/E_inc") == r"$E_\mathrm{tot} / E_\mathrm{inc}$"
    assert P.feature_label("something_else") == "something_else"
    assert P.feature_family("width_eta_3") == "width_eta"
    assert P.feature_family("E_tot/E_inc_at_E_256") == "E_tot/E_inc_at_E"
    assert P.feature_family("voxel_energy") is None and P.feature_family("n_hits") is None


def test_plot_feature_and_group(tmp_path):
    rng = np.random.default_rng(0)
    h = P.FeatureHistogram.from_values("E_tot/E_inc", rng.normal(1, 0.1, 2000),
                                       rng.normal(1.02, 0.1, 2000), np.linspace(0.5, 1.5, 101),
                                       0.0123)
    path = P.plot_feature(h, tmp_path / "one.png")
    assert path == tmp_path / "one.png"
    _assert_png(path)
    # logarithmic binning, log y, a histogram whose generated sample is empty in range
    edges = np.logspace(-2, 3, 40)
    hists = [P.FeatureHistogram.from_values(f"E_layer_{k}", rng.lognormal(1, 1, 500),
                                            rng.lognormal(1.2, 1, 500) if k else [-1.0], edges,
                                            0.01 * k) for k in range(5)]
    _assert_png(P.plot_feature(hists[0], tmp_path / "log.png", logy=True))
    _assert_png(P.plot_feature_group(hists, tmp_path / "grid.png", title="E_layer"))
    with pytest.raises(InputError, match="no features"):
        P.plot_feature_group([], tmp_path / "empty.png")
    with pytest.raises(InputError, match=r"\.png"):
        P.plot_feature(h, tmp_path / "one.pdf")


def test_plot_feature_set_and_profiles(tmp_path):
    geo = get_geometry("ds1-photons")
    ref = compute_features(_toy(geo, 300, seed=1))
    gen = compute_features(_toy(geo, 300, seed=2, scale=1.1))
    hists, skipped = P.feature_histograms(ref, gen, separation_powers={"E_tot/E_inc": 0.5})
    assert hists["E_tot/E_inc"].separation_power == 0.5
    assert hists["E_layer_1"].separation_power is None
    assert hists["E_layer_1"].reference.sum() > 0
    assert isinstance(skipped, dict)
    paths = P.plot_feature_set(ref, gen, tmp_path, separation_powers={"E_tot/E_inc": 0.5},
                               layers=[1, 2])
    names = {p.name for p in paths}
    assert {"hist_E_tot_over_E_inc.png", "hist_voxel_energy.png", "hist_E_layer.png",
            "hist_EC_eta.png", "hist_E_tot_over_E_inc_at_E.png"} <= names
    for p in paths:
        _assert_png(p)
    profiles = P.plot_profiles(ref, gen, tmp_path)
    assert [p.name for p in profiles] == ["profile_longitudinal.png", "profile_radial.png"]
    for p in profiles:
        _assert_png(p)
    with pytest.raises(InputError, match="differ"):
        P.plot_profile([0, 1], [1.0], [1.0, 2.0], tmp_path / "bad.png", xlabel="x", ylabel="y")


@pytest.mark.parametrize("name", ["ds1-pions", "ds2"])
def test_average_shower_cylindrical(tmp_path, name):
    geo = get_geometry(name)
    mean = _toy(geo, 20, seed=3).energies.mean(axis=0)
    _assert_png(P.plot_average_shower(mean, geo, tmp_path / "avg.png", title="average"))
    with pytest.raises(InputError, match="values"):
        P.plot_average_shower(mean[:-1], geo, tmp_path / "bad.png")
    with pytest.raises(InputError, match="NaN"):
        P.plot_average_shower(np.full(geo.n_cells, np.nan), geo, tmp_path / "bad.png")


def test_average_shower_and_projections_cartesian(tmp_path):
    sh = _toy(SMALL_GRID, 3, seed=4)
    _assert_png(P.plot_average_shower(sh.energies.mean(axis=0), SMALL_GRID, tmp_path / "a.png"))
    path = P.plot_shower_projections(sh.energies, SMALL_GRID, tmp_path / "p.png",
                                     titles=["a", "b", "c"])
    _assert_png(path)
    with pytest.raises(InputError, match="titles"):
        P.plot_shower_projections(sh.energies, SMALL_GRID, tmp_path / "p.png", titles=["a"])


def test_projections_conserve_energy():
    # Cartesian grids are summed exactly; cylindrical cells are sampled, energy still conserved
    sh = _toy(SMALL_GRID, 2, seed=5)
    grids, edges = P._projections(sh.energies.astype(np.float64), SMALL_GRID,
                                  samples_per_cell=4, n_transverse=16, seed=0)
    assert len(edges["x"]) == SMALL_GRID.nx + 1 and len(edges["z"]) == SMALL_GRID.nz + 1
    for planes, e in zip(grids, sh.energies, strict=True):
        assert planes[0].shape == (SMALL_GRID.ny, SMALL_GRID.nx)  # (y, x)
        assert planes[1].shape == (SMALL_GRID.nz, SMALL_GRID.nx)  # (z, x)
        assert planes[2].shape == (SMALL_GRID.nz, SMALL_GRID.ny)  # (z, y)
        for plane in planes:
            assert plane.sum() == pytest.approx(e.sum(dtype=np.float64), rel=1e-9)
        cube = e.reshape(SMALL_GRID.shape)
        np.testing.assert_allclose(planes[1], cube.sum(axis=1), rtol=1e-6)
    geo = get_geometry("ds2")
    cyl = _toy(geo, 1, seed=6)
    grids, _ = P._projections(cyl.energies.astype(np.float64), geo, samples_per_cell=4,
                              n_transverse=32, seed=0)
    for plane in grids[0]:
        assert plane.sum() == pytest.approx(float(cyl.energies.sum(dtype=np.float64)), rel=1e-6)
    # the x-z projection keeps the depth profile: energy per layer on the z axis
    per_layer = cyl.layer_energies()[0]
    np.testing.assert_allclose(grids[0][1].sum(axis=1), per_layer, rtol=1e-5)


def test_shower_projections_bad_input(tmp_path):
    with pytest.raises(InputError, match="shape"):
        P.plot_shower_projections(np.ones(7), SMALL_GRID, tmp_path / "p.png")
    bad = np.ones((1, SMALL_GRID.n_cells))
    bad[0, 3] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        P.plot_shower_projections(bad, SMALL_GRID, tmp_path / "p.png")


def test_regression_plots(tmp_path):
    rng = np.random.default_rng(1)
    edges = np.linspace(1, 20, 20)
    _assert_png(P.plot_binned_metric(edges, rng.random(19), tmp_path / "rmse.png",
                                     ylabel="RMSE [GeV]"))
    values = rng.random((2, 19))
    values[1, 3] = np.nan  # an empty bin
    _assert_png(P.plot_binned_metric(edges, values, tmp_path / "mape.png", ylabel="MAPE [%]",
                                     labels=["a", "b"], errors=0.1 * values))
    with pytest.raises(InputError, match="bins"):
        P.plot_binned_metric(edges, rng.random(5), tmp_path / "x.png", ylabel="y")
    _assert_png(P.plot_residuals({"a": rng.normal(0, 0.1, 500), "b": rng.normal(0.1, 0.2, 500)},
                                 tmp_path / "res.png", xlabel="(pred - true) / true"))
    true = rng.uniform(1, 20, 1000)
    _assert_png(P.plot_pred_vs_true(true, [true * 1.05, true + rng.normal(0, 1, 1000)],
                                    tmp_path / "pvt.png", labels=["a", "b"], quantity="momentum",
                                    unit="GeV"))
    e = np.linspace(1, 20, 8)
    fit = {"a": 0.5, "b": 0.03, "c": 0.1, "a_err": 0.01, "b_err": 0.002, "c_err": 0.05}
    _assert_png(P.plot_resolution(e, np.sqrt(0.25 / e + 0.03**2), 0.01 + 0 * e,
                                  tmp_path / "resol.png", labels=["a"], fits=[fit]))
