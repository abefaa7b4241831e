"""Digitization of simulated showers into every kind of geometry."""

from __future__ import annotations

import numpy as np
import pytest

from showerformer.geometry import CartesianGeometry, CylindricalGeometry, get_geometry
from showerformer.simulation import Simulator, get_detector, simulate
from showerformer.simulation.digitize import digitize_mesh, digitize_spots, layer_response
from showerformer.simulation.engine import develop


def _signal_in_layers(batch, n_layers: int) -> np.ndarray:
    sel = (batch.grid.layer >= 0) & (batch.grid.layer < n_layers)
    return sum(c.signal[:, sel].sum(axis=1) for c in batch.components)


def test_mesh_conserves_energy_inside_the_geometry():
    # an unbounded mesh catches everything deposited in its layers
    wide = CylindricalGeometry.uniform(45, 4, [0, 5, 20, 1e9], 3.4, "wide")
    sim = Simulator("ds2", energy="1:1000", seed=1)
    sim_wide = Simulator("ds2", energy="1:1000", seed=1, fluctuate=False)
    batch, rng = sim.develop_block(0, 64)
    resp = layer_response(sim.detector, wide, "geometry")
    mean = digitize_mesh(batch, wide, resp, rng, fluctuate=False)
    np.testing.assert_allclose(mean.sum(axis=1), _signal_in_layers(batch, 45), rtol=1e-9)
    # the fluctuated cells keep the mean and the configured sampling variance
    e = 50_000.0
    beam = sim_wide.beam.sample(2000, np.random.default_rng(2))
    beam.energy[:] = e
    b2 = develop(sim.detector, wide, beam, np.random.default_rng(3), fluctuate=False)
    tot = digitize_mesh(b2, wide, resp, np.random.default_rng(4)).sum(axis=1)
    assert tot.mean() / e == pytest.approx(b2.deposited.mean() / e, rel=2e-3)
    c = get_detector("cc-wsi").summary()["compartments"][0]["stochastic_term"]
    assert tot.std() / tot.mean() == pytest.approx(c / np.sqrt(50), rel=0.1)


def test_ds2_threshold_and_calibrated_scale():
    v = simulate("ds2", 512, energy=50, seed=2)
    nz = v.energies[v.energies > 0]
    assert nz.min() >= np.float32(0.01515)  # 15.15 keV calibrated = 0.5 keV in silicon
    ratio = v.energies.sum(axis=1, dtype=np.float64) / v.conditions.energy
    # contained electron showers read their energy (minus ~1.5% outside r = 41.85 mm)
    assert ratio.mean() == pytest.approx(0.985, abs=0.015)
    sparsity = (v.energies == 0).mean()
    assert 0.3 < sparsity < 0.9


def test_mesh_and_spots_agree_on_ds2():
    geo = get_geometry("ds2")
    sim = Simulator("ds2", energy=20, seed=5)
    batch, _ = sim.develop_block(0, 400)
    resp = layer_response(sim.detector, geo, "geometry")
    mesh = digitize_mesh(batch, geo, resp, np.random.default_rng(1))
    sparse, leak = digitize_spots(batch, sim.detector, geo, resp, np.random.default_rng(1),
                                  frame="axis", readout="geometry")
    spots = sparse.dense(geo.n_cells)
    assert not leak.any()
    lay_m = mesh.reshape(400, 45, -1).sum(axis=2).mean(axis=0)
    lay_s = spots.reshape(400, 45, -1).sum(axis=2).mean(axis=0)
    big = lay_m > 0.05 * lay_m.max()
    np.testing.assert_allclose(lay_s[big], lay_m[big], rtol=0.05)
    rad_m = mesh.reshape(400, 45, 16, 9).sum(axis=(1, 2)).mean(axis=0)
    rad_s = spots.reshape(400, 45, 16, 9).sum(axis=(1, 2)).mean(axis=0)
    np.testing.assert_allclose(rad_s, rad_m, rtol=0.06)
    # per-cell fluctuations of the same size (spots and sampling)
    core = (slice(None), 10, slice(None), 0)
    cm, cs = mesh.reshape(400, 45, 16, 9)[core], spots.reshape(400, 45, 16, 9)[core]
    assert cs.std() / cs.mean() == pytest.approx(cm.std() / cm.mean(), rel=0.15)


def test_ds3_and_par04_cells():
    v = simulate("ds3", 32, energy=100, seed=1)
    assert v.energies.shape == (32, 40500)
    assert v.energies.sum(axis=1).mean() / 1e5 == pytest.approx(0.99, abs=0.02)
    tilted = simulate("par04", 32, theta="70", energy=128, seed=1)
    normal = simulate("par04", 32, theta="90", energy=128, seed=1)
    # tilted axes traverse more material behind the mesh: the mesh sees the same profile
    leak_tilted = tilted.conditions.extra["e_leaked"].mean()
    assert leak_tilted <= normal.conditions.extra["e_leaked"].mean() + 1.0
    assert tilted.energies.sum(axis=1).mean() == pytest.approx(
        normal.energies.sum(axis=1).mean(), rel=0.03)


def test_ds1_layers():
    g = simulate("ds1-photons", 64, energy=65.536, seed=1)
    geo = g.geometry
    per_layer = g.layer_energies().mean(axis=0)
    assert set(np.flatnonzero(per_layer > 0)) <= {0, 1, 2, 3, 12}
    assert per_layer[2] > 0.5 * per_layer.sum()  # the middle sampling holds most of a shower
    pions = simulate("ds1-pions", 64, energy=65.536, seed=1)
    lp = pions.layer_energies().mean(axis=0)
    assert lp[12:15].sum() > 0.2 * lp.sum()  # hadrons reach the tile calorimeter
    assert geo.n_cells == 368 and pions.geometry.n_cells == 533


def test_cartesian_protons_in_sandwich():
    v = simulate("sandwich64", 24, seed=3)
    geo = v.geometry
    assert isinstance(geo, CartesianGeometry) and v.energies.shape == (24, 64**3)
    thr = get_detector("fe-scint").threshold / get_detector("fe-scint").sampling_fraction()[0]
    nz = v.energies[v.energies > 0]
    assert nz.min() >= np.float32(thr)
    layers = v.layer_energies()
    assert (layers > 0).sum(axis=1).min() >= 3


def test_point_clouds_have_per_layer_hits():
    p = simulate("multi", 32, seed=6)
    geo = p.geometry
    pts = p.points[p.mask]
    layer = pts[:, 4].astype(int)
    assert layer.min() >= 0 and layer.max() < geo.n_layers
    np.testing.assert_array_equal(geo.layer_of_z(pts[:, 2]), layer)
    assert np.all(pts[:, 3] > 0)
    back = p.to_voxels()
    np.testing.assert_allclose(back.energies.sum(axis=1), (p.points[..., 3] * p.mask).sum(axis=1),
                               rtol=1e-5)


def test_ild_photon_hits_in_sensors():
    p = simulate("ild-photons", 16, energy=50, seed=1)
    assert 400 < np.median(p.n_points) < 1500
    det = get_detector("ild-ecal")
    f = det.sampling_fraction()
    pts = p.points[p.mask]
    visible = pts[:, 3] * f[pts[:, 4].astype(int)]
    assert visible.min() >= det.threshold * (1 - 1e-5)
    assert (p.points[..., 3].sum(axis=1) / 5e4).mean() == pytest.approx(0.99, abs=0.03)


def test_noise_is_applied_per_cell():
    from dataclasses import replace

    det = replace(get_detector("cc-wsi"), noise=0.0005, _cache={})
    quiet = simulate("ds2", 8, energy=10, seed=1)
    noisy = simulate("ds2", 8, energy=10, seed=1, detector=det)
    assert (noisy.energies > 0).sum() > (quiet.energies > 0).sum()
