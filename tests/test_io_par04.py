"""Par04 images: (N, r, phi, z) <-> (N, z, phi, r) cells, units, both layouts, validation."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.io.par04 import Par04Writer, iter_par04, read_par04, write_par04
from showerformer.showers import Conditions, VoxelShowers

R, PHI, Z = 18, 50, 45


def named_file(path: Path, images: np.ndarray, energy: np.ndarray, **more) -> Path:
    """A named-layout file as the Par04 conversion scripts write it (float32 everywhere)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("showers", data=images.astype(np.float32))
        f.create_dataset("incident_energy", data=np.asarray(energy, np.float32))
        for k, v in more.items():
            f.create_dataset(k, data=v)
    return path


def make_showers(name: str = "par04", n: int = 6, seed: int = 0) -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = rng.exponential(1.0, (n, geo.n_cells)).astype(np.float32)
    e[rng.random(e.shape) > 0.05] = 0
    cond = Conditions(10 ** rng.uniform(3, 6, n), pdg=11, theta=rng.uniform(0.8, 1.6, n),
                      phi=rng.uniform(-3, 3, n), extra={"momentum": rng.random(n)})
    return VoxelShowers(e, cond, geo)


def test_single_cell_lands_at_the_right_place(tmp_path):
    images = np.zeros((2, R, PHI, Z), np.float32)
    images[0, 3, 7, 11] = 5.0  # r = 3, phi = 7, z = 11
    images[1, 17, 49, 44] = 2.0  # the last cell
    path = named_file(tmp_path / "one.h5", images, [1e4, 2e4])
    vox = read_par04(path)
    geo = vox.geometry
    assert geo.name == "par04" and vox.energies.shape == (2, 40500)
    cell = 11 * (PHI * R) + 7 * R + 3  # (layer, alpha, r), r fastest
    assert np.flatnonzero(vox.energies[0]).tolist() == [cell]
    assert vox.energies[0, cell] == 5.0
    assert np.flatnonzero(vox.energies[1]).tolist() == [40499]
    assert (geo.layer_of_cell[cell], geo.alpha_bin[cell], geo.r_bin[cell]) == (11, 7, 3)
    r_mid, alpha = 3.5 * 2.325, -math.pi + 7.5 * 2 * math.pi / PHI
    np.testing.assert_allclose(geo.cell_centers()[cell],
                               [r_mid * math.cos(alpha), r_mid * math.sin(alpha), 11.5 * 3.4],
                               rtol=1e-9, atol=1e-9)
    # and back: writing puts the cell at (r, phi, z) = (3, 7, 11) again
    out = write_par04(tmp_path / "back.h5", vox)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["showers"][:], images)


def test_same_cell_order_as_the_calochallenge_dataset_creation(tmp_path):
    """ds3 was made from these images with two moveaxis calls; the cells must agree."""
    rng = np.random.default_rng(1)
    images = (1e-3 * rng.random((3, R, PHI, Z))).astype(np.float32)  # ~20 MeV per shower
    path = named_file(tmp_path / "x.h5", images, [1e3, 1e4, 1e5])
    flat = np.moveaxis(np.moveaxis(images, 3, 1), 3, 2).reshape(3, -1)
    np.testing.assert_array_equal(read_par04(path).energies, flat)


def test_units_and_angles(tmp_path):
    images = np.full((2, R, PHI, Z), 1e-3)  # 40.5 MeV deposited per shower
    path = named_file(tmp_path / "a.h5", images, [1e3, 5e5],
                      incident_theta=np.array([math.pi / 2, 1.0]),
                      incident_phi=np.array([0.5, -0.5]))
    c = read_par04(path).conditions
    np.testing.assert_array_equal(c.energy, [1e3, 5e5])
    np.testing.assert_allclose(c.theta, [math.pi / 2, 1.0], rtol=1e-7)
    np.testing.assert_allclose(c.phi, [0.5, -0.5], rtol=1e-7)
    # energies in GeV and angles in degrees, declared by attributes
    path = named_file(tmp_path / "b.h5", images, [1.0, 500.0],
                      incident_theta=np.array([90.0, 60.0]))
    with h5py.File(path, "a") as f:
        f["incident_energy"].attrs["unit"] = "GeV"
        f["incident_theta"].attrs["unit"] = "deg"
    c = read_par04(path).conditions
    np.testing.assert_array_equal(c.energy, [1e3, 5e5])
    np.testing.assert_allclose(c.theta, [math.pi / 2, math.pi / 3], rtol=1e-6)
    # degrees without a declaration are refused, unless the caller says so
    path = named_file(tmp_path / "c.h5", images, [1e3, 2e3], incident_theta=np.array([90., 60.]))
    with pytest.raises(InputError, match=r"incident_theta.*degrees"):
        read_par04(path)
    np.testing.assert_allclose(read_par04(path, angle_unit="deg").conditions.theta,
                               [math.pi / 2, math.pi / 3], rtol=1e-6)
    theta = read_par04(path, angle_unit="deg", theta=0.25).conditions.theta
    assert (theta == np.float32(0.25)).all()


def test_per_energy_zenodo_layout(tmp_path):
    path = tmp_path / "SiW_angle_70.h5"
    rng = np.random.default_rng(2)
    images = {k: 1e-3 * rng.random((n, R, PHI, Z)) for k, n in (("4", 2), ("1", 3), ("2", 1))}
    with h5py.File(path, "w") as f:
        for k, v in images.items():  # not in energy order, float64 as np.zeros makes them
            f.create_dataset(k, data=v)
    vox = read_par04(path)
    assert len(vox) == 6 and vox.geometry.name == "par04"
    np.testing.assert_array_equal(vox.conditions.energy, [1e3] * 3 + [2e3] + [4e3] * 2)
    np.testing.assert_allclose(vox.conditions.theta, math.radians(70), rtol=1e-7)
    stacked = np.concatenate([images["1"], images["2"], images["4"]])
    flat = np.moveaxis(np.moveaxis(stacked, 3, 1), 3, 2).reshape(6, -1).astype(np.float32)
    np.testing.assert_array_equal(vox.energies, flat)
    part = read_par04(path, start=2, stop=5, chunk_size=1)
    np.testing.assert_array_equal(part.energies, flat[2:5])
    np.testing.assert_array_equal(part.conditions.energy, [1e3, 2e3, 4e3])


def test_incident_energies_in_the_wrong_unit_are_refused(tmp_path):
    """Undeclared GeV energies would make showers deposit 1000x too much: caught."""
    images = np.full((3, R, PHI, Z), 1e-3)  # 40.5 MeV deposited per shower
    path = named_file(tmp_path / "gev.h5", images, [5.0, 10.0, 8.0])  # GeV, undeclared
    with pytest.raises(InputError, match=r"'incident_energy'.*deposit 5.06 x"):
        read_par04(path)
    np.testing.assert_array_equal(read_par04(path, energy_unit="GeV").conditions.energy,
                                  [5e3, 1e4, 8e3])


@pytest.mark.parametrize("name", ["par04", "ds2"])
def test_round_trip_exact(tmp_path, name):
    vox = make_showers(name, 5)
    path = write_par04(tmp_path / "rt.h5", vox)
    with h5py.File(path) as f:
        geo = vox.geometry
        n_layers, n_alpha, n_r = geo.shape
        assert f["showers"].shape == (5, n_r, n_alpha, n_layers)
        assert f["showers"].dtype == np.float32
        assert f["incident_energy"].shape == (5,) and f["incident_energy"].dtype == np.float64
        assert f["incident_theta"].dtype == np.float32 and f.attrs["angle_unit"] == "rad"
    back = read_par04(path)
    assert back.geometry == vox.geometry
    np.testing.assert_array_equal(back.energies, vox.energies)
    for field in ("energy", "pdg", "theta", "phi"):
        np.testing.assert_array_equal(getattr(back.conditions, field),
                                      getattr(vox.conditions, field))
    np.testing.assert_array_equal(back.conditions.extra["momentum"],
                                  vox.conditions.extra["momentum"])


def test_chunked_and_streamed_equal_full(tmp_path):
    vox = make_showers("par04", 7)
    with Par04Writer(tmp_path / "s.h5") as w:
        w.append(vox[:3])
        w.append(vox[3:])
    full = read_par04(tmp_path / "s.h5")
    np.testing.assert_array_equal(full.energies, vox.energies)
    np.testing.assert_array_equal(read_par04(tmp_path / "s.h5", chunk_size=2).energies,
                                  vox.energies)
    chunks = list(iter_par04(tmp_path / "s.h5", chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    np.testing.assert_array_equal(VoxelShowers.concatenate(chunks).energies, vox.energies)


def _bad(tmp_path: Path, case: str) -> tuple[Path, str | None]:
    path = tmp_path / f"{case}.h5"
    ok = np.zeros((2, R, PHI, Z), np.float32)
    if case == "missing_energy":
        with h5py.File(path, "w") as f:
            f["showers"] = ok
        return path, "incident_energy"
    if case == "showers_3d":
        with h5py.File(path, "w") as f:
            f["showers"] = np.zeros((2, R, PHI))
            f["incident_energy"] = np.ones(2)
        return path, None  # not a Par04 layout any more; the reader names 'showers'
    if case == "unknown_grid":
        return named_file(path, np.zeros((2, 10, 10, 10)), [1e3, 1e3]), "showers"
    if case == "mismatched_n":
        return named_file(path, ok, [1e3, 1e3, 1e3]), "incident_energy"
    if case in ("nan", "negative"):
        bad = ok.copy()
        bad[1, 3, 7, 11] = np.nan if case == "nan" else -2.0
        return named_file(path, bad, [1e3, 1e3]), "showers"
    if case == "zero_energy":
        return named_file(path, ok, [1e3, 0.0]), "incident_energy"
    if case == "zero_showers":
        return named_file(path, np.zeros((0, R, PHI, Z)), np.zeros(0)), "showers"
    if case == "unknown_unit":
        named_file(path, ok, [1.0, 2.0])
        with h5py.File(path, "a") as f:
            f["incident_energy"].attrs["unit"] = "furlong"
        return path, "incident_energy"
    if case == "per_energy_shapes":
        with h5py.File(path, "w") as f:
            f["1"] = np.zeros((2, R, PHI, Z))
            f["2"] = np.zeros((2, 9, 16, 45))
        return path, "2"
    if case == "empty":
        path.write_bytes(b"")
        return path, None
    if case == "no_datasets":
        h5py.File(path, "w").close()
        return path, "showers"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_energy", "showers_3d", "unknown_grid", "mismatched_n",
                                  "nan", "negative", "zero_energy", "zero_showers",
                                  "unknown_unit", "per_energy_shapes", "empty", "no_datasets"])
def test_bad_input(tmp_path, case):
    path, key = _bad(tmp_path, case)
    with pytest.raises(InputError) as exc:
        read_par04(path)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    if key is not None:
        assert f"'{key}'" in msg, msg
    if case in ("nan", "negative"):
        assert "shower 1, cell (r, phi, z) = (3, 7, 11)" in msg


def test_geometry_must_fit_the_images(tmp_path):
    path = named_file(tmp_path / "x.h5", np.zeros((1, R, PHI, Z)), [1e3])
    assert read_par04(path, "ds3").geometry.name == "ds3"
    with pytest.raises(InputError, match="ds2"):
        read_par04(path, "ds2")
    with pytest.raises(InputError, match="sandwich32"):
        read_par04(path, "sandwich32")
    with pytest.raises(InputError, match="regular"):
        Par04Writer(tmp_path / "y.h5", "ds1-photons")
