"""Simulator building blocks: materials, detectors, beams, presets, files and the CLI command."""

from __future__ import annotations

import math

import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.simulation import (
    DATASETS,
    MATERIALS,
    Simulator,
    Spectrum,
    effective_medium,
    get_detector,
    get_particle,
    mixture,
    simulate,
    simulate_to_file,
)
from showerformer.simulation.beams import Beam, parse_angle


def test_par04_effective_medium_matches_reference_numbers():
    m = effective_medium([(MATERIALS["W"], 1.4, False), (MATERIALS["Si"], 0.3, True)])
    assert m.z == pytest.approx(72.5, abs=0.05)
    assert m.density == pytest.approx(16.31, abs=0.01)
    assert m.x0_mm == pytest.approx(4.22, abs=0.005)
    assert m.moliere_mm == pytest.approx(10.88, abs=0.01)  # PDG rule, not Geant4's 9.5 mm
    assert m.e_critical == pytest.approx(8.23, abs=0.01)  # PDG E_c, not 2.66 (X0 Z/A)^1.1
    assert m.f_s == pytest.approx(2.48, abs=0.01)
    assert m.e_mip == pytest.approx(0.704, abs=0.001)
    assert m.mip_fraction == pytest.approx(0.036, abs=0.001)
    assert m.wigmans_stochastic == pytest.approx(0.078, abs=0.001)


def test_materials_and_mixtures():
    w = MATERIALS["W"]
    assert w.x0_mm == pytest.approx(3.504, abs=0.002)
    assert w.moliere_mm == pytest.approx(9.32, abs=0.01)
    fe = MATERIALS["Fe"]
    assert fe.lambda_mm == pytest.approx(167.7, abs=0.2)
    half = mixture("WSi", [("W", 0.5), ("Si", 0.5)], density=10.0)
    assert 1 / half.x0 == pytest.approx(0.5 / 6.76 + 0.5 / 21.82)
    with pytest.raises(InputError):
        mixture("bad", [("W", -1.0)], density=1.0)
    with pytest.raises(InputError, match="unknown material"):
        effective_medium([("Unobtainium", 1.0, True)])


def test_detector_layouts_fit_their_geometries():
    cc = get_detector("cc-wsi")
    assert cc.n_readout == 45
    np.testing.assert_allclose(cc.readout_edges()[:, 1], get_geometry("ds2").z_edges[1:])
    assert cc.total_x0 == pytest.approx(36.26, abs=0.05)
    fe = get_detector("fe-scint")
    np.testing.assert_allclose(fe.readout_edges()[:, 1], get_geometry("sandwich64").z_edges[1:])
    assert fe.total_lambda == pytest.approx(8.52, abs=0.05)
    fe32 = get_detector("fe-scint-32")
    np.testing.assert_allclose(fe32.readout_edges()[:, 1], get_geometry("sandwich32").z_edges[1:])
    ild = get_detector("ild-ecal")
    from showerformer.ild import ILD_ECAL

    # the sensors (the last 0.525 mm of each layer) sit where the Geant4 model has them
    np.testing.assert_allclose(ild.readout_edges()[:, 1] - 0.525, ILD_ECAL.sensor_depth,
                               atol=1e-3)
    w = sum(s.thickness * lay.repeat for c in ild.compartments for lay in c.layers
            for s in lay.sheets if s.material.name == "W")
    assert w == pytest.approx(20 * 2.1 + 10 * 4.2)
    f = ild.sampling_fraction()
    assert f[:20].mean() > 1.5 * f[20:].mean()  # thick tungsten samples half as often
    atlas = get_detector("atlas-like")
    assert set(np.flatnonzero(~np.isnan(atlas.readout_edges()[:, 0]))) == {0, 1, 2, 3, 12, 13, 14}
    for name in ("pb-scint",):
        d = get_detector(name)
        assert 20 < d.total_x0 < 30
    with pytest.raises(InputError):
        get_detector("nope")


def test_depth_maps_invert():
    d = get_detector("ild-ecal")
    z = np.linspace(0, d.depth * 1.2, 101)
    np.testing.assert_allclose(d.from_units(d.to_units(z, "x0"), "x0"), z, atol=1e-9)
    np.testing.assert_allclose(d.from_units(d.to_units(z, "lambda"), "lambda"), z, atol=1e-9)
    assert d.to_units(np.array(d.depth), "x0") == pytest.approx(d.total_x0)


def test_hadron_kinetic_energy_from_momentum():
    beam = Beam((get_particle("proton"),), Spectrum("fixed", (20000.0,)), momentum=True)
    s = beam.sample(3, np.random.default_rng(0))
    m = 938.27209
    assert s.energy[0] == pytest.approx(math.sqrt(20000.0**2 + m**2) - m)
    assert s.momentum[0] == 20000.0
    e = Beam((get_particle("e-"),), Spectrum("fixed", (5000.0,)), momentum=True).sample(
        2, np.random.default_rng(0))
    assert e.energy[0] == 5000.0
    pi = Beam((get_particle("pi+"),), Spectrum("fixed", (1000.0,))).sample(
        1, np.random.default_rng(0))
    assert pi.momentum[0] == pytest.approx(math.sqrt(1000.0 * (1000.0 + 2 * 139.57039)))


def test_spectra_parse_and_sample():
    rng = np.random.default_rng(0)
    assert Spectrum.parse("50") == Spectrum("fixed", (50000.0,))
    s = Spectrum.parse("1:1000")
    assert s.kind == "log-uniform"
    x = s.sample(20000, rng)
    assert x.min() >= 1000 and x.max() <= 1e6
    assert np.median(np.log10(x)) == pytest.approx(4.5, abs=0.05)
    u = Spectrum.parse("1:20", "uniform").sample(20000, rng)
    assert u.mean() == pytest.approx(10500, rel=0.02)
    d = Spectrum.parse("64,128,256")
    assert d.kind == "discrete" and set(d.sample(500, rng)) == {64000.0, 128000.0, 256000.0}
    for bad in ("abc", "10:1", "-5", "0"):
        with pytest.raises(InputError):
            Spectrum.parse(bad)
    with pytest.raises(InputError):
        Spectrum.parse("1:10", "discrete")
    assert parse_angle("70:90", (0, 0)) == pytest.approx((math.radians(70), math.pi / 2))
    with pytest.raises(InputError):
        parse_angle("north", (0, 0))


def test_particles():
    assert get_particle("photon").pdg == 22
    assert get_particle(2212).name == "proton"
    assert get_particle("p").name == "proton"
    with pytest.raises(InputError, match="cannot be simulated"):
        get_particle("mu-")


def test_every_preset_simulates():
    for name, spec in DATASETS.items():
        s = simulate(name, 6, seed=1)
        assert len(s) == 6
        c = s.conditions
        assert set(c.extra) >= {"momentum", "e_deposited", "e_leaked", "e_invisible",
                                "start_depth", "shower_index"}
        assert np.all(np.isin(c.pdg, [get_particle(p).pdg for p in spec.particles]))


def test_presets_conditions():
    par04 = simulate("par04", 64, seed=3)
    theta = np.degrees(par04.conditions.theta)
    assert theta.min() >= 70 - 1e-4 and theta.max() <= 90 + 1e-4
    assert set(np.round(par04.conditions.energy)) <= {64000, 128000, 256000}
    protons = simulate("sandwich64", 16, seed=3)
    p = protons.conditions.extra["momentum"]
    assert p.min() >= 1000 and p.max() <= 20000
    m = 938.27209
    np.testing.assert_allclose(protons.conditions.energy, np.sqrt(p**2 + m**2) - m)


def test_bad_options_raise_input_errors():
    with pytest.raises(InputError):
        Simulator("ds9")
    with pytest.raises(InputError):
        Simulator("ds2", particle="kaon")
    with pytest.raises(InputError):
        Simulator("ds2", theta="200")
    with pytest.raises(InputError):
        Simulator("ds2", seed=-1)
    with pytest.raises(InputError, match="shard"):
        simulate("ds2", 10, shard="2/2")
    with pytest.raises(InputError):
        simulate("ds2", 0)


def test_write_calochallenge_file_round_trip(tmp_path):
    from showerformer.io.calochallenge import read_calochallenge

    path = tmp_path / "ds2.h5"
    summary = simulate_to_file(path, "ds2", n=1100, seed=4, shard=(1, 2), progress=False,
                               chunk_size=600)
    ref = simulate("ds2", 1100, seed=4, shard=(1, 2))
    assert summary["showers"] == len(ref)
    back = read_calochallenge(path)
    assert back.energies.tobytes() == ref.energies.tobytes()
    np.testing.assert_array_equal(back.conditions.energy, ref.conditions.energy)
    np.testing.assert_array_equal(back.conditions.extra["e_leaked"],
                                  ref.conditions.extra["e_leaked"])
    assert not list(tmp_path.glob(".*tmp"))


def test_write_pointcloud_file_round_trip(tmp_path):
    from showerformer.io.pointcloud import read_pointcloud

    path = tmp_path / "multi.h5"
    simulate_to_file(path, "multi", n=40, seed=4, progress=False, chunk_size=8)
    ref = simulate("multi", 40, seed=4)
    back = read_pointcloud(path)
    assert len(back) == 40
    np.testing.assert_array_equal(back.n_points, ref.n_points)
    got = np.concatenate(back.to_ragged())
    want = np.concatenate(ref.to_ragged())
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=1e-6)
    np.testing.assert_array_equal(got[:, 4], want[:, 4])
    np.testing.assert_array_equal(back.conditions.pdg, ref.conditions.pdg)


def test_cli_simulate(tmp_path):
    from typer.testing import CliRunner

    from showerformer.cli import app

    out = tmp_path / "p.h5"
    r = CliRunner().invoke(app, ["simulate", "sandwich64", "--n", "20", "--seed", "3",
                                 "--shard", "0/2", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert out.exists() and "wrote" in r.output
    from showerformer.commands.simulate import DATASET_NAMES

    assert set(DATASET_NAMES) == set(DATASETS)
    bad = CliRunner().invoke(app, ["simulate", "ds2", "--energy", "x:y", "--out",
                                   str(tmp_path / "x.h5")])
    assert bad.exit_code != 0
    assert isinstance(bad.exception, InputError)


def test_ds1_energies_are_exact_powers_of_two():
    from showerformer.simulation import Simulator

    e = Simulator("ds1-photons", seed=0).block(0).conditions.energy  # MeV
    assert np.array_equal(np.log2(e), np.round(np.log2(e)))
    assert set(np.unique(e)) <= {2.0**k for k in range(8, 23)}


@pytest.mark.parametrize(("dataset", "n"), [("ds2", 512), ("sandwich32", 512), ("multi", 64)])
def test_estimate_file_bytes_matches_the_file(tmp_path, dataset, n):
    """The size estimate of simulate_to_file (gzip of the writers' arrays for the first block)
    is close to the file written: one writer per output kind (voxels, hit lists, points)."""
    path = tmp_path / "out.h5"
    summary = simulate_to_file(path, dataset, n=n, seed=5, progress=False)
    ratio = summary["estimated_bytes"] / path.stat().st_size
    assert 0.8 < ratio < 1.25, ratio
