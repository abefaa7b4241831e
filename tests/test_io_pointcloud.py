"""Tests of the CaloClouds point-cloud reader and writer and of the ILD ECAL description."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.ild import ILD_ECAL, ILDEcal, ILDGeometry
from showerformer.io.pointcloud import (
    PointCloudLayout,
    iter_pointcloud,
    pointcloud_layout,
    read_pointcloud,
    write_pointcloud,
)
from showerformer.showers import Conditions, PointShowers, VoxelShowers


@pytest.fixture(scope="module")
def mini(shared_dir: Path) -> Path:
    path = shared_dir / "real" / "cc3_mini_data_sample.hdf5"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def _raw(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def _assert_same(a: PointShowers, b: PointShowers) -> None:
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.conditions.energy, b.conditions.energy)
    np.testing.assert_array_equal(a.conditions.pdg, b.conditions.pdg)
    np.testing.assert_array_equal(a.conditions.theta, b.conditions.theta)
    np.testing.assert_array_equal(a.conditions.phi, b.conditions.phi)
    assert a.conditions.extra.keys() == b.conditions.extra.keys()
    for k in a.conditions.extra:
        np.testing.assert_array_equal(a.conditions.extra[k], b.conditions.extra[k])


# ---------------------------------------------------------------------------- the ILD ECAL
def test_ild_layers_match_the_detector_description(shared_dir: Path) -> None:
    path = shared_dir / "real" / "cc3_Geant_4_metrics.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with np.load(path) as m:
        np.testing.assert_allclose(ILD_ECAL.layer_bottom, m["layer_bottom_pos"], atol=1e-6)
        assert ILD_ECAL.sensor_thickness == float(m["cell_thickness"])
        # the box's radial range ends at the back of the last sensor
        back = ILD_ECAL.layer_bottom[-1] + ILD_ECAL.sensor_thickness
        assert back == pytest.approx(m["xyz_limits"][1][1], abs=1e-3)


def test_ild_layer_coordinate_inverts() -> None:
    rng = np.random.default_rng(1)
    u = (rng.integers(0, 30, 1000) + rng.random(1000)).astype(np.float32)
    z, layer = ILD_ECAL.depth_from_layer_units(u)
    np.testing.assert_array_equal(layer, np.floor(u))
    assert ((z >= ILD_ECAL.sensor_depth[layer])
            & (z <= ILD_ECAL.sensor_depth[layer] + ILD_ECAL.sensor_thickness)).all()
    np.testing.assert_array_equal(ILD_ECAL.layer_of_depth(z), layer)
    back = ILD_ECAL.layer_units_from_depth(z.astype(np.float32), layer)
    assert np.abs(back - u).max() < 2e-5
    np.testing.assert_array_equal(np.floor(back), layer)
    # depths outside the sensor are clipped into its layer
    out = ILD_ECAL.layer_units_from_depth(np.array([0.0, 500.0, 50.0]), np.array([3, 3, 29]))
    np.testing.assert_array_equal(np.floor(out), [3, 3, 29])


def test_ild_geometry_cells() -> None:
    geo = ILDGeometry()
    assert geo.n_layers == 30 and (geo.nx, geo.ny) == (99, 79)
    assert geo.n_cells == 30 * 99 * 79
    cells = np.array([0, 12345, geo.n_cells - 1])
    centres = geo.cell_centers()[cells]
    np.testing.assert_array_equal(geo.locate(*centres.T), cells)
    pts = geo.dequantize(np.repeat(cells, 50), rng=0)
    np.testing.assert_array_equal(geo.locate(*pts.T), np.repeat(cells, 50))
    assert ILDGeometry.from_dict(geo.to_dict()) == geo
    assert ILDGeometry.from_dict(get_geometry("ds2").to_dict()).same_cells(get_geometry("ds2"))
    with pytest.raises(InputError, match="layer_bottom"):
        ILDEcal((10.0, 10.1), 0.5, 5.0, 0.0)


# ---------------------------------------------------------------------------- the real sample
def test_real_sample_reads(mini: Path) -> None:
    raw = _raw(mini)
    showers = read_pointcloud(mini)
    assert len(showers) == 2
    np.testing.assert_array_equal(showers.n_points, [163, 236])
    # incident energies: float32 GeV on disk, float64 MeV in memory, no precision lost
    np.testing.assert_array_equal(showers.conditions.energy,
                                  raw["energy"][:, 0].astype(np.float64) * 1000.0)
    np.testing.assert_allclose(showers.conditions.energy, [15620.06, 41926.82], atol=0.01)
    assert isinstance(showers.geometry, ILDGeometry)
    # hit energies in MeV: 47.3 and 97.8 MeV, 0.2-0.3 % of the photon energy (a sparse subset of
    # a full shower whose silicon sees about 2.3 %)
    e_sum = showers.points[..., 3].sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(e_sum, [47.2946, 97.7577], rtol=1e-4)
    assert np.all((e_sum / showers.conditions.energy > 0.002)
                  & (e_sum / showers.conditions.energy < 0.023))
    # the direction comes from p_norm_local (local x = beam axis, z = depth)
    p = raw["p_norm_local"]  # (3, N)
    np.testing.assert_allclose(np.cos(showers.conditions.theta), p[0], atol=1e-6)
    np.testing.assert_allclose(showers.conditions.phi, np.arctan2(p[2], p[1]), atol=1e-6)


def test_real_sample_layout_is_detected(mini: Path) -> None:
    lay = pointcloud_layout(mini)
    assert (lay.depth_axis, lay.depth_unit, lay.hit_unit, lay.incident_unit) == (
        "y", "layer", "GeV", "GeV")
    assert lay.channels_last and lay.padding == "front" and lay.p_norm_transposed


def test_real_sample_frame_and_layers(mini: Path) -> None:
    raw = _raw(mini)["events"]
    showers = read_pointcloud(mini)
    for i in range(2):
        file_pts = raw[i][raw[i][:, 3] != 0]  # stored order, front padding
        pts = showers.points[i][showers.mask[i]]
        np.testing.assert_array_equal(pts[:, 0], file_pts[:, 2])  # local x = file z
        np.testing.assert_array_equal(pts[:, 1], file_pts[:, 0])  # local y = file x
        layer = pts[:, 4].astype(np.int64)
        assert np.array_equal(layer, pts[:, 4]) and layer.min() >= 0 and layer.max() <= 29
        np.testing.assert_array_equal(layer, np.floor(file_pts[:, 1]))
        np.testing.assert_array_equal(layer, ILD_ECAL.layer_of_depth(pts[:, 2]))
        np.testing.assert_array_equal(layer, showers.geometry.layer_of_z(pts[:, 2]))
        # depth inside the layer's silicon sensor
        front = ILD_ECAL.sensor_depth[layer]
        assert np.all((pts[:, 2] >= front - 1e-4)
                      & (pts[:, 2] <= front + ILD_ECAL.sensor_thickness + 1e-4))
    vox = showers.to_voxels()
    np.testing.assert_allclose(vox.energies.sum(axis=1), showers.points[..., 3].sum(axis=1),
                               rtol=1e-5)


def test_real_sample_write_reproduces_the_file(mini: Path, tmp_path: Path) -> None:
    raw = _raw(mini)
    out = write_pointcloud(tmp_path / "copy.h5", read_pointcloud(mini),
                           layout=pointcloud_layout(mini), max_points=raw["events"].shape[1])
    new = _raw(out)
    a, b = raw["events"], new["events"]
    assert a.shape == b.shape and b.dtype == np.float32
    real = a[..., 3] != 0
    np.testing.assert_array_equal(real, b[..., 3] != 0)  # same padding slots
    np.testing.assert_array_equal(a[~real], b[~real])
    np.testing.assert_array_equal(a[..., 0], b[..., 0])  # transverse: bit-exact
    np.testing.assert_array_equal(a[..., 2], b[..., 2])
    # energies GeV -> MeV -> GeV: float32 scaling by 1000 is not injective, 1 ulp at most
    ea, eb = a[..., 3][real], b[..., 3][real]
    ulps = np.abs(ea.view(np.int32).astype(np.int64) - eb.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1 and (ulps == 0).mean() > 0.95
    # layer coordinate: same layer, within float32 resolution of a depth in mm
    ya, yb = a[..., 1][real], b[..., 1][real]
    np.testing.assert_array_equal(np.floor(ya), np.floor(yb))
    assert np.abs(ya.astype(np.float64) - yb).max() < 2e-5
    np.testing.assert_array_equal(raw["energy"], new["energy"])
    assert new["energy"].dtype == raw["energy"].dtype
    np.testing.assert_array_equal(raw["p_norm_local"], new["p_norm_local"])


@pytest.mark.parametrize("layout", [None, "local"])
def test_read_write_read_is_exact(mini: Path, tmp_path: Path, layout: str | None) -> None:
    showers = read_pointcloud(mini)
    lay = PointCloudLayout.local() if layout == "local" else None
    out = write_pointcloud(tmp_path / "s.h5", showers, layout=lay)
    back = read_pointcloud(out)
    _assert_same(showers, back)
    assert back.geometry == showers.geometry


def test_streaming_matches_slices(mini: Path) -> None:
    whole = read_pointcloud(mini)
    chunks = list(iter_pointcloud(mini, chunk_size=1))
    assert [len(c) for c in chunks] == [1, 1]
    for i, chunk in enumerate(chunks):
        n = int(chunk.n_points[0])
        np.testing.assert_array_equal(chunk.points[0, :n], whole.points[i, :n])
    second = read_pointcloud(mini, start=1)
    np.testing.assert_array_equal(second.points[0], whole.points[1])
    assert len(read_pointcloud(mini, start=1, stop=1)) == 0


# ---------------------------------------------------------------------------- other layouts
def test_other_geometry_round_trip(tmp_path: Path) -> None:
    geo = get_geometry("ds2")
    rng = np.random.default_rng(0)
    e = rng.exponential(1.0, (3, geo.n_cells)).astype(np.float32)
    e[e < 2.0] = 0.0
    cond = Conditions(np.array([1000.0, 2e4, 1e6 + 0.125]), pdg=[22, 11, -211],
                      theta=[1.0, 1.5, 2.0], phi=[0.1, 0.2, -3.0],
                      extra={"momentum": np.array([1.0, 2.0, 3.0])})
    showers = VoxelShowers(e, cond, geo).to_points(dequantize=True, rng=1)
    out = write_pointcloud(tmp_path / "ds2.h5", showers)
    with h5py.File(out, "r") as f:
        assert f["layer"].dtype == np.int16 and f["layer"].shape == f["events"].shape[:2]
        assert f["energy"].dtype == np.float64 and f.attrs["energy_unit"] == "MeV"
    back = read_pointcloud(out)
    _assert_same(showers, back)
    assert back.geometry == geo


def test_global_mm_file_is_bit_exact(tmp_path: Path) -> None:
    """A foreign CaloClouds file with depth in global mm (no layout attribute)."""
    rng = np.random.default_rng(3)
    n, p = 4, 50
    layer = rng.integers(0, 30, (n, p))
    y = (np.asarray(ILD_ECAL.layer_bottom)[layer]
         + rng.random((n, p)) * ILD_ECAL.sensor_thickness)
    ev = np.stack([rng.uniform(-200, 200, (n, p)), y, rng.uniform(-260, 140, (n, p)),
                   rng.exponential(1e-3, (n, p))], axis=-1).astype(np.float32)
    ev[:, :10] = 0.0  # front padding
    path = tmp_path / "global.h5"
    with h5py.File(path, "w") as f:
        f["events"] = ev
        f["energy"] = rng.uniform(10, 100, (n, 1)).astype(np.float32)
    lay = pointcloud_layout(path)
    assert (lay.depth_unit, lay.depth_axis, lay.padding) == ("mm", "y", "front")
    assert lay.depth_offset == pytest.approx(1804.7, abs=1e-4)
    showers = read_pointcloud(path)
    np.testing.assert_array_equal(showers.points[..., 4][showers.mask], layer[:, 10:].ravel())
    out = write_pointcloud(tmp_path / "copy.h5", showers, layout=lay, max_points=p)
    back = _raw(out)["events"]
    np.testing.assert_array_equal(back[..., :3], ev[..., :3])  # depth offset exact in float32


def test_channels_first_and_flat_energy(tmp_path: Path) -> None:
    ev = np.zeros((2, 4, 7), dtype=np.float32)  # (N, 4, P), back padding
    ev[0, :, :3] = [[1, 2, 3], [0.5, 1.5, 29.5], [-4, 5, 6], [1e-3, 2e-3, 3e-3]]
    ev[1, :, :1] = [[7], [10.25], [8], [4e-3]]
    path = tmp_path / "cf.h5"
    with h5py.File(path, "w") as f:
        f["events"] = ev
        f["energy"] = np.array([20.0, 50.0], dtype=np.float32)
    showers = read_pointcloud(path)
    np.testing.assert_array_equal(showers.n_points, [3, 1])
    np.testing.assert_array_equal(showers.points[0, :, 4], [0, 1, 29])
    np.testing.assert_array_equal(showers.points[0, :, 0], [-4, 5, 6])
    np.testing.assert_allclose(showers.points[0, :, 3], [1, 2, 3])
    lay = pointcloud_layout(path)
    assert not lay.channels_last and lay.energy_shape == "flat" and lay.padding == "back"
    out = write_pointcloud(tmp_path / "copy.h5", showers, layout=lay, max_points=7)
    new = _raw(out)
    assert new["events"].shape == ev.shape and new["energy"].shape == (2,)
    np.testing.assert_array_equal(new["events"][:, [0, 2]], ev[:, [0, 2]])


def test_writer_checks(tmp_path: Path) -> None:
    showers = PointShowers.from_ragged([np.ones((3, 5))], Conditions([1.0]))
    with pytest.raises(InputError, match="max_points"):
        write_pointcloud(tmp_path / "x.h5", showers, max_points=2)
    bad = PointShowers.from_ragged([np.ones((3, 5))], Conditions([1.0], extra={"pdg": [1]}))
    with pytest.raises(InputError, match="pdg"):
        write_pointcloud(tmp_path / "x.h5", bad)
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------------------- bad input
def _good(path: Path, **over: np.ndarray) -> Path:
    ev = np.zeros((2, 5, 4), dtype=np.float32)
    ev[:, :2] = [[1.0, 3.5, 2.0, 1e-3], [2.0, 4.5, 3.0, 2e-3]]
    data = {"events": ev, "energy": np.array([[10.0], [20.0]], dtype=np.float32)}
    data.update(over)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f[k] = v
    return path


def _events_with(col: int, value: float) -> np.ndarray:
    ev = np.zeros((2, 5, 4), dtype=np.float32)
    ev[:, :2] = [[1.0, 3.5, 2.0, 1e-3], [2.0, 4.5, 3.0, 2e-3]]
    ev[1, 1, col] = value
    return ev


@pytest.mark.parametrize(
    ("case", "key", "message"),
    [
        ("missing events", "events", "missing"),
        ("missing energy", "energy", "missing"),
        ("wrong shape", "events", "shape"),
        ("energy count", "energy", "shape"),
        ("NaN energy", "events", "NaN"),
        ("NaN position", "events", "NaN"),
        ("negative energy", "events", "negative"),
        ("NaN incident", "energy", "NaN"),
        ("negative incident", "energy", "negative"),
        ("empty HDF5", "events", "no datasets"),
        ("bad p_norm", "p_norm_local", "shape"),
    ],
)
def test_bad_input(tmp_path: Path, case: str, key: str, message: str) -> None:
    path = tmp_path / "bad.h5"
    over: dict[str, np.ndarray | None] = {
        "missing events": {"events": None},
        "missing energy": {"energy": None},
        "wrong shape": {"events": np.zeros((2, 5, 3), np.float32)},
        "energy count": {"energy": np.ones((3, 1), np.float32)},
        "NaN energy": {"events": _events_with(3, np.nan)},
        "NaN position": {"events": _events_with(1, np.nan)},
        "negative energy": {"events": _events_with(3, -1e-3)},
        "NaN incident": {"energy": np.array([[10.0], [np.nan]], np.float32)},
        "negative incident": {"energy": np.array([[10.0], [-5.0]], np.float32)},
        "empty HDF5": {"events": None, "energy": None},
        "bad p_norm": {"p_norm_local": np.zeros((2, 2))},
    }[case]
    _good(path, **over)
    with pytest.raises(InputError, match=message) as err:
        read_pointcloud(path)
    assert err.value.path == str(path) and err.value.key == key


def test_missing_empty_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as err:
        read_pointcloud(tmp_path / "nope.h5")
    assert err.value.path == str(tmp_path / "nope.h5")
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_pointcloud(empty)
    text = tmp_path / "text.h5"
    text.write_text("x, y, z, E\n")
    with pytest.raises(InputError, match="not a readable HDF5"):
        read_pointcloud(text)


def test_truncated_file(tmp_path: Path) -> None:
    path = _good(tmp_path / "full.h5", events=np.ones((64, 512, 4), np.float32),
                 energy=np.ones((64, 1), np.float32))
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_pointcloud(cut)
    assert err.value.path == str(cut)


# ---------------------------------------------------------------------------- geometry checks
def _ild_points(n: int = 3) -> PointShowers:
    """Points inside the ILD ECAL: layer l at the middle of its sensor, on the cell grid."""
    rng = np.random.default_rng(11)
    showers = []
    for _ in range(n):
        layer = rng.integers(0, ILD_ECAL.n_layers, 6)
        z = ILD_ECAL.sensor_depth[layer] + ILD_ECAL.sensor_thickness / 2
        showers.append(np.stack([rng.uniform(-100, 100, 6), rng.uniform(-100, 100, 6), z,
                                 rng.uniform(0.1, 2.0, 6), layer], axis=1))
    return PointShowers.from_ragged(showers, Conditions([1e4, 2e4, 3e4][:n]), ILDGeometry())


@pytest.mark.parametrize("depth", [30.5, -0.25, 1e9])
def test_layer_coordinate_beyond_the_layers_is_outside(tmp_path: Path, depth: float) -> None:
    path = write_pointcloud(tmp_path / "ild.h5", _ild_points())
    assert pointcloud_layout(path).depth_unit == "layer"
    with h5py.File(path, "a") as f:
        ev = f["events"][()]
        filled = np.flatnonzero(ev[1, :, 3])
        ev[1, filled[2], 1] = depth  # the layer coordinate (file y) of one point
        f["events"][...] = ev
    showers = read_pointcloud(path)
    assert showers.points[1, showers.mask[1], 4][2] == -1  # no layer, not the nearest one
    energy = float(showers.points[1, showers.mask[1], 3][2])
    assert showers.count_outside() == (1, pytest.approx(energy))
    with pytest.raises(InputError, match="outside geometry ild-ecal"):
        showers.to_voxels()
    from showerformer.io import summarize

    with pytest.raises(InputError, match=r"1 point holding .* in 1 of 3 showers") as err:
        summarize(path)
    assert err.value.key == "events" and err.value.path == str(path)


def test_stored_layers_must_be_whole_numbers(tmp_path: Path) -> None:
    geo = get_geometry("ds2")
    e = np.zeros((2, geo.n_cells), np.float32)
    e[:, [5, 700, 3000]] = 1.0
    path = write_pointcloud(tmp_path / "ds2.h5",
                            VoxelShowers(e, Conditions([1e3, 2e3]), geo).to_points())
    with h5py.File(path, "a") as f:
        layer = f["layer"][()].astype(np.float32)
        del f["layer"]
        layer[1, 1] = np.nan
        f["layer"] = layer
    with pytest.raises(InputError, match="layer index nan at shower 1, point 1") as err:
        read_pointcloud(path)
    assert err.value.key == "layer"
    with h5py.File(path, "a") as f:
        layer[1, 1] = 2.5
        f["layer"][...] = layer
    with pytest.raises(InputError, match=r"layer index 2\.5"):
        read_pointcloud(path)
    with h5py.File(path, "a") as f:
        layer[1, 1] = 999.0  # whole but outside: read, then counted as outside
        f["layer"][...] = layer
    assert read_pointcloud(path).count_outside() == (1, 1.0)


def test_zero_showers_and_negative_ranges(tmp_path: Path) -> None:
    empty = _good(tmp_path / "empty.h5", events=np.zeros((0, 5, 4), np.float32),
                  energy=np.zeros((0, 1), np.float32))
    for call in (lambda: read_pointcloud(empty), lambda: list(iter_pointcloud(empty))):
        with pytest.raises(InputError, match="the file holds 0 showers") as err:
            call()
        assert err.value.key == "events" and err.value.path == str(empty)
    path = _good(tmp_path / "good.h5")
    for kw, key in (({"stop": -1}, "stop"), ({"start": -1}, "start"), ({"stop": 1.5}, "stop")):
        with pytest.raises(InputError, match=f"{key}=") as err:
            read_pointcloud(path, **kw)
        assert err.value.key == key and err.value.path == str(path)
        with pytest.raises(InputError, match=f"{key}="):
            list(iter_pointcloud(path, **kw))
    assert len(read_pointcloud(path, stop=1)) == 1


def test_writer_refuses_empty_samples_and_points_in_no_layer(tmp_path: Path) -> None:
    target = tmp_path / "out.h5"
    none = PointShowers.from_ragged([], Conditions(np.zeros(0)), ILDGeometry())
    with pytest.raises(InputError, match="no showers") as err:
        write_pointcloud(target, none)
    assert err.value.path == str(target)
    showers = _ild_points()
    showers.points[0, 1, 4] = -1  # no layer column and a depth behind the calorimeter
    showers.points[0, 1, 2] = 1e9
    with pytest.raises(InputError, match=r"1 point \(.* MeV\) in no layer of ild-ecal") as err:
        write_pointcloud(target, showers)
    assert err.value.key == "layer"
    assert not target.exists() and list(tmp_path.iterdir()) == []
    showers.points[0, 1, 2] = 10.0  # a depth inside a layer gives the layer
    back = read_pointcloud(write_pointcloud(target, showers))
    assert back.points[0, 1, 4] == ILD_ECAL.layer_of_depth(np.array([10.0]))[0]
