"""Physics of the built-in simulator: statistical checks with fixed seeds, each on a number."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special

from showerformer.simulation import Simulator, get_detector, simulate
from showerformer.simulation.em import radial_cdf

X0_PER_DS2_LAYER = get_detector("cc-wsi").total_x0 / 45
ENERGIES_GEV = (1, 3, 10, 30, 100, 300, 1000)


def _fit_peak(profile: np.ndarray, width: float) -> float:
    """Depth (X0) of the maximum of a gamma distribution fitted to a mean layer profile."""
    t = (np.arange(len(profile)) + 0.5) * width
    y = profile / width

    def gamma_pdf(t: np.ndarray, a: float, alpha: float, beta: float) -> np.ndarray:
        return a * beta * np.exp((alpha - 1) * np.log(beta * t) - beta * t - special.gammaln(alpha))

    p, _ = optimize.curve_fit(gamma_pdf, t, y, p0=(y.sum() * width, 4.0, 0.5),
                              bounds=([0, 1.01, 0.05], [np.inf, 50, 5]))
    return (p[1] - 1) / p[2]


@pytest.fixture(scope="module")
def shower_maxima() -> dict[str, np.ndarray]:
    out = {}
    for particle in ("e-", "gamma"):
        peaks = []
        for e in ENERGIES_GEV:
            v = simulate("ds2", 256, particle=particle, energy=e, seed=11)
            peaks.append(_fit_peak(v.layer_energies().mean(axis=0), X0_PER_DS2_LAYER))
        out[particle] = np.array(peaks)
    return out


def test_shower_maximum_grows_like_log_energy(shower_maxima):
    # PDG: t_max = ln(E / E_c) + C, a slope of exactly 1 X0 per e-fold of energy
    slope = np.polyfit(np.log(ENERGIES_GEV), shower_maxima["e-"], 1)[0]
    assert slope == pytest.approx(1.0, rel=0.10)
    slope_gamma = np.polyfit(np.log(ENERGIES_GEV), shower_maxima["gamma"], 1)[0]
    assert slope_gamma == pytest.approx(1.0, rel=0.10)


def test_photons_peak_one_x0_deeper(shower_maxima):
    # PDG: C_gamma - C_e = +0.5 - (-0.5) = 1 X0
    delta = shower_maxima["gamma"] - shower_maxima["e-"]
    assert delta.mean() == pytest.approx(1.0, abs=0.25)
    assert np.all((delta > 0.5) & (delta < 1.5))


def test_ninety_percent_inside_one_moliere_radius():
    sim = Simulator("ds2", energy=50, seed=3)
    batch, _ = sim.develop_block(0, 256)
    em = batch.components[0]
    r_m = sim.detector.compartments[0].medium.moliere_mm
    assert r_m == pytest.approx(10.88, abs=0.01)
    inside = (em.signal * radial_cdf(r_m, em.r1, em.r2, em.p)).sum() / em.signal.sum()
    assert inside == pytest.approx(0.90, rel=0.20)
    # and 99% (within 2%) inside 3.5 R_M
    within = (em.signal * radial_cdf(3.5 * r_m, em.r1, em.r2, em.p)).sum() / em.signal.sum()
    assert within == pytest.approx(0.99, abs=0.02)


def _fit_resolution(e_gev: np.ndarray, rel: np.ndarray) -> tuple[float, float]:
    def model(e: np.ndarray, a: float, b: float) -> np.ndarray:
        return np.sqrt(a**2 / e + b**2)

    (a, b), _ = optimize.curve_fit(model, e_gev, rel, p0=(0.1, 0.01), bounds=([0, 0], [5, 1]))
    return a, b


def test_em_resolution_follows_configured_stochastic_term():
    energies = np.array([2, 5, 10, 20, 50, 100, 200.0])
    rel = []
    for e in energies:
        v = simulate("ds2", 384, energy=e, seed=5)
        total = v.energies.sum(axis=1, dtype=np.float64)
        rel.append(total.std() / total.mean())
    a, b = _fit_resolution(energies, np.array(rel))
    configured = get_detector("cc-wsi").summary()["compartments"][0]["stochastic_term"]
    assert configured == pytest.approx(0.0777, abs=5e-4)  # 2.7% sqrt(0.3 mm / 0.0362)
    assert a == pytest.approx(configured, rel=0.15)
    assert b < 0.01


def test_mean_first_interaction_depth_is_lambda():
    sim = Simulator("sandwich64", energy=10, momentum=False, seed=9)
    batch, _ = sim.develop_block(0, 6000)
    lam = sim.detector.compartments[0].medium.lambda_mm
    assert lam == pytest.approx(199.05, abs=0.1)
    assert batch.start.mean() / lam == pytest.approx(1.0, rel=0.10)
    # the energy deposited before the interaction is a MIP track: about dE/dx_min per mm
    track = next(c for c in batch.components if c.kind == "track")
    path = np.minimum(batch.start, sim.detector.depth)
    mip_loss = track.signal.sum(axis=1) / sim.detector.layer_array("mip_response")[0]
    per_mm = mip_loss[path > 100] / path[path > 100]
    assert np.median(per_mm) == pytest.approx(sim.detector.layer_array("dedx")[0], rel=0.10)


def test_proton_resolution_and_non_compensation():
    kinetic = np.array([2, 5, 10, 20.0])
    rel, resp = [], []
    for t in kinetic:
        v = simulate("sandwich64", 320, energy=t, momentum=False, seed=13)
        total = v.energies.sum(axis=1, dtype=np.float64)
        rel.append(total.std() / total.mean())
        resp.append(total.mean() / (t * 1000))
    a, _b = _fit_resolution(kinetic, np.array(rel))
    assert 0.40 <= a <= 0.80, f"stochastic term {a:.3f}/sqrt(E)"
    e_resp = simulate("sandwich64", 96, particle="e-", energy=10, momentum=False,
                      seed=13).energies.sum(axis=1, dtype=np.float64).mean() / 1e4
    e_over_pi = e_resp / resp[2]
    assert e_over_pi > 1.08, f"e/p response ratio {e_over_pi:.3f}"
    assert e_resp == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("dataset", ["ds2", "ds1-pions", "sandwich64", "multi", "par04"])
def test_energy_bookkeeping(dataset):
    s = simulate(dataset, 48, seed=2)
    c = s.conditions
    dep, leak, inv = (c.extra[k] for k in ("e_deposited", "e_leaked", "e_invisible"))
    assert np.all(dep >= 0) and np.all(leak >= -1e-9 * c.energy) and np.all(inv >= 0)
    err = np.abs(dep + leak + inv - c.energy) / c.energy
    assert err.max() < 1e-6


def test_hadron_bookkeeping_has_every_term():
    c = simulate("sandwich64", 64, energy=20, momentum=False, seed=4).conditions
    assert c.extra["e_invisible"].mean() / c.energy.mean() == pytest.approx(0.15, abs=0.06)
    assert np.all(c.extra["e_leaked"] >= 0)
    # a photon in a thin ECAL leaks energy through the back
    thin = simulate("ds2", 32, particle="gamma", energy=500, seed=4).conditions
    assert 0 < thin.extra["e_leaked"].mean() / 5e5 < 0.05


def test_same_seed_same_showers_bit_for_bit():
    a = simulate("ds2", 600, seed=21)
    b = simulate("ds2", 600, seed=21)
    assert a.energies.tobytes() == b.energies.tobytes()
    assert a.conditions.energy.tobytes() == b.conditions.energy.tobytes()
    c = simulate("ds2", 600, seed=22)
    assert not np.array_equal(a.energies, c.energies)


@pytest.mark.parametrize("dataset", ["ds2", "sandwich64"])
def test_shards_reproduce_the_single_run(dataset):
    sim = Simulator(dataset, seed=7)
    n = 3 * sim.block_size + 5
    full = simulate(dataset, n, seed=7)
    parts = [simulate(dataset, n, seed=7, shard=(i, 3)) for i in range(3)]
    joined = np.concatenate([p.energies for p in parts])
    assert joined.tobytes() == full.energies.tobytes()
    assert np.array_equal(np.concatenate([p.conditions.extra["shower_index"] for p in parts]),
                          np.arange(n))
    first, second = parts[0].energies, parts[1].energies
    m = min(len(first), len(second))
    assert not np.array_equal(first[:m], second[:m])
    assert not np.array_equal(parts[0].conditions.energy[:m], parts[1].conditions.energy[:m])


def test_photon_conversion_depth():
    sim = Simulator("ds2", particle="gamma", energy=20, seed=1)
    batch, _ = sim.develop_block(0, 4000)
    x0 = sim.detector.compartments[0].medium.x0_mm
    assert batch.start.mean() / x0 == pytest.approx(9 / 7, rel=0.05)
    assert math.isclose(np.median(batch.start) / x0, 9 / 7 * math.log(2), rel_tol=0.08)
