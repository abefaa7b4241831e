"""Shower containers: conditions, voxel <-> point conversion, ragged form, validation."""

from __future__ import annotations

import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.showers import Conditions, PointShowers, VoxelShowers, particle_pdg


def _random_voxels(name: str, n: int = 20, occupancy: float = 0.05, seed: int = 0) -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = rng.lognormal(0.0, 2.0, size=(n, geo.n_cells)).astype(np.float32)
    e[rng.random(e.shape) > occupancy] = 0.0
    cond = Conditions(rng.uniform(1e3, 1e6, n), pdg=11, theta=np.pi / 2, phi=0.0)
    return VoxelShowers(e, cond, geo)


@pytest.mark.parametrize("name", ["ds1-photons", "ds1-pions", "ds2", "ds3", "sandwich32"])
@pytest.mark.parametrize("dequantize", [False, True])
def test_voxels_points_voxels_exact(name, dequantize):
    vox = _random_voxels(name, n=6 if name == "ds3" else 20)
    pts = vox.to_points(dequantize=dequantize, rng=3)
    assert pts.points.dtype == np.float32
    assert (pts.n_points == (vox.energies > 0).sum(axis=1)).all()
    back = pts.to_voxels()
    assert np.array_equal(back.energies, vox.energies)  # exact per cell
    back_z = pts.to_voxels(use_layer=False)  # locating by depth gives the same cells
    assert np.array_equal(back_z.energies, vox.energies)
    np.testing.assert_array_equal(back.conditions.energy, vox.conditions.energy)


def test_points_carry_layer_and_position():
    vox = _random_voxels("ds2", n=3)
    pts = vox.to_points()
    geo = vox.geometry
    for shower, energies in zip(pts.to_ragged(), vox.energies, strict=True):
        cells = np.flatnonzero(energies)
        np.testing.assert_array_equal(shower[:, 4], geo.layer_of_cell[cells])
        np.testing.assert_allclose(shower[:, :3], geo.cell_centers()[cells], rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(shower[:, 3], energies[cells])


def test_ragged_round_trip_and_padding():
    rng = np.random.default_rng(5)
    showers = [rng.random((k, 5)).astype(np.float32) for k in (3, 0, 7)]
    cond = Conditions([1e3, 2e3, 3e3])
    pts = PointShowers.from_ragged(showers, cond)
    assert pts.points.shape == (3, 7, 5)
    assert pts.n_points.tolist() == [3, 0, 7]
    assert (pts.points[~pts.mask] == 0).all()
    for a, b in zip(pts.to_ragged(), showers, strict=True):
        np.testing.assert_array_equal(a, b)


def test_layer_energies_with_empty_layers():
    vox = _random_voxels("ds1-photons", n=4, occupancy=0.5)
    le = vox.layer_energies()
    assert le.shape == (4, 24)
    geo = vox.geometry
    for layer in range(24):
        expected = vox.energies[:, geo.layer_slice(layer)].sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(le[:, layer], expected, rtol=1e-6)
    assert (le[:, 4:12] == 0).all()


def test_slicing_and_concatenation():
    vox = _random_voxels("ds2", n=10)
    a, b = vox[:4], vox[4:]
    both = VoxelShowers.concatenate([a, b])
    np.testing.assert_array_equal(both.energies, vox.energies)
    np.testing.assert_array_equal(both.conditions.energy, vox.conditions.energy)
    assert len(vox[3]) == 1
    with pytest.raises(InputError, match="cannot concatenate"):
        VoxelShowers.concatenate([a, _random_voxels("ds3", n=1)])


def test_conditions_defaults_and_particles():
    c = Conditions([1.0, 2.0], pdg=22, extra={"momentum": [3.0, 4.0]})
    assert c.pdg.tolist() == [22, 22]
    assert np.allclose(c.theta, np.pi / 2)
    assert c[1:].extra["momentum"].tolist() == [4.0]
    assert particle_pdg("e-") == 11 and particle_pdg("gamma") == 22 and particle_pdg("pi+") == 211
    assert particle_pdg("proton") == 2212 and particle_pdg(-211) == -211
    with pytest.raises(InputError, match="unknown particle"):
        particle_pdg("graviton")
    with pytest.raises(InputError, match="momentum"):
        Conditions([1.0, 2.0], extra={"momentum": [1.0]})


@pytest.mark.parametrize("bad,msg", [(np.nan, "NaN"), (np.inf, "inf"), (-1.0, "negative")])
def test_validation_rejects_bad_energies(bad, msg):
    vox = _random_voxels("ds2", n=2)
    vox.energies[1, 17] = bad
    with pytest.raises(InputError, match=msg):
        vox.validate(path="file.h5")


def test_shape_mismatches_are_input_errors():
    geo = get_geometry("ds2")
    with pytest.raises(InputError, match=r"\(N, 6480\)"):
        VoxelShowers(np.zeros((2, 100)), Conditions([1.0, 2.0]), geo)
    with pytest.raises(InputError, match="conditions"):
        VoxelShowers(np.zeros((2, 6480)), Conditions([1.0]), geo)
    with pytest.raises(InputError, match="without a geometry"):
        PointShowers.from_ragged([np.zeros((1, 5))], Conditions([1.0])).to_voxels()


def _points_with_outsiders():
    """ds2 voxels as points, then one point moved to layer 999, one to layer -7, one to
    x = 1e9 and one to a depth of 1e9 mm (layer column kept)."""
    vox = _random_voxels("ds2", n=5, seed=2)
    pts = vox.to_points(dequantize=True, rng=1)
    moved = [(0, 0, 4, 999.0), (1, 2, 4, -7.0), (3, 1, 0, 1e9), (3, 2, 2, 1e9)]
    for shower, slot, column, value in moved:
        pts.points[shower, slot, column] = value
    return vox, pts, moved


def test_to_voxels_refuses_points_outside_and_says_how_much():
    _, pts, moved = _points_with_outsiders()
    lost = sum(float(pts.points[s, k, 3]) for s, k, _, _ in moved)
    assert pts.count_outside() == (4, pytest.approx(lost, rel=1e-12))
    assert pts.count_outside(get_geometry("ds3")) == (4, pytest.approx(lost, rel=1e-12))
    with pytest.raises(InputError) as err:
        pts.to_voxels()
    msg = str(err.value)
    assert f"4 points holding {lost:.4g} MeV in 3 of 5 showers" in msg
    assert "outside geometry ds2" in msg and "--drop-outside" in msg
    assert err.value.key == "points"
    with pytest.raises(InputError, match="outside"):
        pts.to_voxels(outside="keep")
    assert pts.describe_outside() == f"4 points holding {lost:.4g} MeV in 3 of 5 showers"


def test_to_voxels_drops_exactly_the_points_outside():
    vox, pts, moved = _points_with_outsiders()
    geo = vox.geometry
    expected = vox.energies.copy()
    for shower, slot, _, _ in moved:  # every cell holds one point: its energy goes
        cells = np.flatnonzero(vox.energies[shower])
        expected[shower, cells[slot]] = 0.0
    back = pts.to_voxels(outside="drop")
    np.testing.assert_array_equal(back.energies, expected)
    mask = pts.outside_mask()
    assert mask.shape == pts.mask.shape and mask.sum() == 4
    assert sorted(zip(*np.nonzero(mask), strict=True)) == sorted((s, k) for s, k, _, _ in moved)
    inside = pts.drop_outside()
    assert inside.n_points.tolist() == (pts.n_points - mask.sum(axis=1)).tolist()
    assert inside.count_outside() == (0, 0.0) and inside.describe_outside() is None
    np.testing.assert_array_equal(inside.to_voxels().energies, expected)
    assert inside.geometry is geo


def test_count_outside_ignores_padding_and_needs_a_geometry():
    vox = _random_voxels("ds2", n=3)
    pts = vox.to_points()
    pts.points[~pts.mask] = 1e9  # garbage in the padding is never a point
    assert pts.count_outside() == (0, 0.0)
    np.testing.assert_array_equal(pts.to_voxels().energies, vox.energies)
    bare = PointShowers.from_ragged([np.zeros((1, 5))], Conditions([1.0]))
    with pytest.raises(InputError, match="without a geometry"):
        bare.count_outside()


@pytest.mark.parametrize("value", [1e30, -1e30, 3e38])
def test_absurd_positions_and_layers_are_outside_without_warnings(value):
    pts = _random_voxels("sandwich32", n=2).to_points()
    pts.points[0, 0, 0] = value  # x
    pts.points[1, 0, 4] = value  # layer
    assert pts.count_outside()[0] == 2


def test_validate_rejects_fractional_layers():
    pts = _random_voxels("ds2", n=2).to_points()
    pts.validate()
    pts.points[1, 0, 4] = 2.5
    with pytest.raises(InputError, match=r"layer index 2\.5") as err:
        pts.validate(path="p.h5")
    assert err.value.path == "p.h5"
