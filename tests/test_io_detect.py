"""Format detection, dispatching readers and writers, and file summaries."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import write_zero_shower_file

from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.io.calochallenge import read_calochallenge, write_calochallenge
from showerformer.io.detect import detect_format, read_showers, summarize, write_showers
from showerformer.io.par04 import write_par04
from showerformer.showers import Conditions, PointShowers, VoxelShowers


def voxels(name: str = "ds2", n: int = 6, seed: int = 0) -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = rng.exponential(1.0, (n, geo.n_cells)).astype(np.float32)
    e[rng.random(e.shape) < 0.9] = 0
    return VoxelShowers(e, Conditions(np.geomspace(1e3, 1e6, n), pdg=[11] * (n - 1) + [22]), geo)


def points(n: int = 3) -> PointShowers:
    rng = np.random.default_rng(1)
    showers = [rng.random((k, 5)).astype(np.float32) for k in (4, 1, 7)[:n]]
    return PointShowers.from_ragged(showers, Conditions(np.array([1e4, 2e4, 3e4])[:n]))


@pytest.fixture
def fake_point_modules(monkeypatch):
    """Stand-ins for the point-cloud and EDM4hep readers, recording how they are called."""
    calls: list[tuple] = []
    pc = types.ModuleType("showerformer.io.pointcloud")
    pc.read_pointcloud = lambda path, geometry=None: calls.append(("read_pc", path, geometry)) \
        or points()
    pc.write_pointcloud = lambda path, showers: calls.append(("write_pc", path, len(showers)))
    ed = types.ModuleType("showerformer.io.edm4hep")
    ed.read_edm4hep = lambda path, geometry=None: calls.append(("read_edm", path, geometry)) \
        or points(1)
    monkeypatch.setitem(sys.modules, "showerformer.io.pointcloud", pc)
    monkeypatch.setitem(sys.modules, "showerformer.io.edm4hep", ed)
    return calls


def pointcloud_file(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["events"] = np.zeros((2, 10, 4), np.float32)
        f["energy"] = np.array([[15.0], [40.0]], np.float32)
    return path


def test_detect_each_layout(tmp_path):
    cc = write_calochallenge(tmp_path / "cc.hdf5", voxels())
    par = write_par04(tmp_path / "par.h5", voxels("par04", 2))
    zenodo = tmp_path / "SiW_angle_90.h5"
    with h5py.File(zenodo, "w") as f:
        f["64"] = np.zeros((2, 18, 50, 45))
    pc = pointcloud_file(tmp_path / "pc.hdf5")
    root = tmp_path / "event.root"
    root.write_bytes(b"root" + bytes(60))
    assert [detect_format(p) for p in (cc, par, zenodo, pc, root)] == \
        ["calochallenge", "par04", "par04", "pointcloud", "edm4hep"]
    # an incomplete CaloChallenge file is still CaloChallenge: its reader says what is wrong
    half = tmp_path / "half.h5"
    with h5py.File(half, "w") as f:
        f["incident_energies"] = np.ones((2, 1))
    assert detect_format(half) == "calochallenge"


def test_detect_real_files(shared_dir):
    assert detect_format(shared_dir / "real" / "cc3_mini_data_sample.hdf5") == "pointcloud"
    assert detect_format(shared_dir / "real" / "cc3_single_event_example.edm4hep.root") == \
        "edm4hep"


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "fake_root",
                                  "no_datasets", "unknown_layout"])
def test_detect_errors(tmp_path, case):
    path = tmp_path / ("x.root" if case == "fake_root" else "x.h5")
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case in ("text", "fake_root"):
        path.write_text("not a shower file")
    elif case == "no_datasets":
        h5py.File(path, "w").close()
    elif case == "unknown_layout":
        with h5py.File(path, "w") as f:
            f["images"] = np.zeros((2, 3))
            f.create_group("meta")
    with pytest.raises(InputError) as exc:
        detect_format(path)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    if case == "unknown_layout":  # names the keys found and the layouts expected
        assert "'images' (2, 3)" in msg and "'meta' (group)" in msg
        for name in ("calochallenge", "par04", "pointcloud", "edm4hep", "incident_energies"):
            assert name in msg


def test_read_showers_dispatches(tmp_path, fake_point_modules):
    vox = voxels()
    cc = write_calochallenge(tmp_path / "cc.h5", vox)
    np.testing.assert_array_equal(read_showers(cc).energies, vox.energies)
    assert len(read_showers(cc, start=2)) == 4
    par = write_par04(tmp_path / "p.h5", voxels("par04", 2))
    assert read_showers(par).geometry.name == "par04"
    pc = pointcloud_file(tmp_path / "pc.h5")
    assert isinstance(read_showers(pc, geometry="ds2"), PointShowers)
    root = tmp_path / "e.root"
    root.write_bytes(b"root" + bytes(10))
    read_showers(root)
    assert fake_point_modules == [("read_pc", pc, "ds2"), ("read_edm", root, None)]


def test_write_showers_by_format_and_extension(tmp_path, fake_point_modules):
    vox = voxels()
    write_showers(tmp_path / "a.hdf5", vox)
    assert detect_format(tmp_path / "a.hdf5") == "calochallenge"
    write_showers(tmp_path / "b.h5", voxels("par04", 2), format="par04")
    assert detect_format(tmp_path / "b.h5") == "par04"
    write_showers(tmp_path / "c.h5", points())
    assert fake_point_modules == [("write_pc", tmp_path / "c.h5", 3)]
    with pytest.raises(InputError, match="PointShowers"):
        write_showers(tmp_path / "d.h5", vox, format="pointcloud")
    with pytest.raises(InputError, match="VoxelShowers"):
        write_showers(tmp_path / "d.h5", points(), format="calochallenge")
    with pytest.raises(InputError, match="EDM4hep"):
        write_showers(tmp_path / "d.root", vox)
    with pytest.raises(InputError, match="'format'"):
        write_showers(tmp_path / "d.h5", vox, format="csv")
    with pytest.raises(InputError, match="extension"):
        write_showers(tmp_path / "d.csv", vox)
    assert not (tmp_path / "d.h5").exists()


def test_summarize_calochallenge_streams_exactly(tmp_path):
    vox = voxels("ds2", 9)
    path = write_calochallenge(tmp_path / "s.h5", vox)
    s = summarize(path, chunk_size=2)
    full = summarize(path)
    assert s["energy_mean_mev"] == pytest.approx(full.pop("energy_mean_mev"), rel=1e-14)
    assert {k: v for k, v in s.items() if k != "energy_mean_mev"} == full  # chunking is exact
    assert s["format"] == "calochallenge" and s["geometry"] == "ds2"
    assert "45 layers" in s["geometry_description"]
    assert s["n_showers"] == 9 and s["size_bytes"] == path.stat().st_size
    e = vox.conditions.energy
    assert (s["energy_min_mev"], s["energy_max_mev"]) == (e.min(), e.max())
    assert s["energy_mean_mev"] == pytest.approx(e.mean(), rel=1e-12)
    assert s["sparsity"] == pytest.approx(1 - (vox.energies > 0).mean(), abs=1e-12)
    assert s["particles"] == "e- (11): 8, gamma (22): 1"
    assert "mean_points" not in s


def test_summarize_par04_and_points(tmp_path, fake_point_modules):
    vox = voxels("par04", 3)
    s = summarize(write_par04(tmp_path / "p.h5", vox))
    assert s["format"] == "par04" and s["n_showers"] == 3
    assert s["sparsity"] == pytest.approx(1 - (vox.energies > 0).mean(), abs=1e-12)
    s = summarize(pointcloud_file(tmp_path / "pc.h5"))
    assert s["format"] == "pointcloud" and s["geometry"] == "none"
    assert (s["mean_points"], s["min_points"], s["max_points"]) == (4.0, 1, 7)
    assert s["energy_mean_mev"] == pytest.approx(2e4) and "sparsity" not in s


def test_summarize_reports_bad_files(tmp_path):
    path = tmp_path / "bad.h5"
    s = np.ones((3, 6480), np.float32)
    s[2, 0] = -1
    with h5py.File(path, "w") as f:
        f["incident_energies"] = np.ones((3, 1))
        f["showers"] = s
    with pytest.raises(InputError, match=r"'showers'.*shower 2"):
        summarize(path, chunk_size=1)
    assert len(read_calochallenge(path, stop=2)) == 2


@pytest.mark.parametrize(("fmt", "key"), [("calochallenge", "showers"), ("par04", "showers"),
                                          ("pointcloud", "events"), ("sparse-voxels", "offsets")])
def test_zero_showers_is_an_input_error(tmp_path, fmt, key):
    path = write_zero_shower_file(tmp_path / f"{fmt}.h5", fmt)
    assert detect_format(path) == fmt
    for call in (read_showers, summarize):
        with pytest.raises(InputError, match="the file holds 0 showers") as err:
            call(path)
        assert err.value.key == key and err.value.path == str(path)
        assert "at least one shower" in str(err.value)


def test_summarize_describes_points_without_geometry_and_refuses_them_outside(tmp_path):
    vox = voxels("ds2", 3)
    path = write_showers(tmp_path / "p.h5", vox.to_points(), format="pointcloud")
    s = summarize(path)
    assert (s["layer_min"], s["layer_max"]) == (0, 44)
    assert (s["outside_points"], s["outside_energy_mev"], s["outside_showers"]) == (0, 0.0, 0)
    with h5py.File(path, "a") as f:
        f["layer"][0, 0] = 999
        f["layer"][2, 1] = -7
        e = float(f["events"][0, 0, 3]) + float(f["events"][2, 1, 3])
    with pytest.raises(InputError) as err:
        summarize(path)
    assert err.value.key == "events" and err.value.path == str(path)
    msg = str(err.value)
    assert f"points outside geometry ds2: 2 points holding {e:.4g} MeV in 2 of 3 showers" in msg
    assert "2 of them with a layer index outside 0..44" in msg and "--drop-outside" in msg
    with h5py.File(path, "a") as f:  # without a geometry the points are only described
        del f.attrs["geometry"], f.attrs["geometry_json"]
    s = summarize(path)
    assert s["geometry"] == "none" and (s["layer_min"], s["layer_max"]) == (-7, 999)
    assert "outside_points" not in s
    with pytest.raises(InputError, match="outside geometry ds2"):
        summarize(path, geometry="ds2")


@pytest.mark.parametrize("kw", [{"stop": -1}, {"start": -1}])
def test_negative_ranges_are_refused_by_every_voxel_reader(tmp_path, kw):
    key = next(iter(kw))
    for path in (write_calochallenge(tmp_path / "c.h5", voxels("ds2", 3)),
                 write_par04(tmp_path / "p.h5", voxels("par04", 2)),
                 write_showers(tmp_path / "s.h5", voxels("ds2", 3), format="sparse-voxels")):
        with pytest.raises(InputError, match=f"{key}=-1") as err:
            read_showers(path, **kw)
        assert err.value.key == key and err.value.path == str(path)


_FULL_DISK_SCRIPT = '''
import errno, os, sys
import numpy as np
from showerformer.errors import OutputError
from showerformer.geometry import get_geometry
from showerformer.io import write_showers
from showerformer.showers import Conditions, VoxelShowers

geo = get_geometry("ds2")
rng = np.random.default_rng(0)
vox = VoxelShowers(rng.random((20, geo.n_cells)).astype(np.float32), Conditions(np.ones(20)), geo)
real, budget = os.pwrite, [30_000]

def pwrite(fd, data, offset):  # the disk fills up after 30 kB
    if len(data) > budget[0]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    budget[0] -= len(data)
    return real(fd, data, offset)

os.pwrite = pwrite
target = sys.argv[1]
for fmt in ("calochallenge", "par04", "sparse-voxels", "pointcloud"):
    budget[0] = 30_000
    showers = vox.to_points() if fmt == "pointcloud" else vox
    try:
        write_showers(target, showers, format=fmt, compression=None) if fmt != "pointcloud" \\
            else write_showers(target, showers, format=fmt)
    except OutputError as exc:
        assert "disk became full" in str(exc), exc
        print(fmt, "refused")
    else:
        raise AssertionError(fmt + " wrote a file on a full disk")
'''


def test_full_disk_gives_one_error_and_keeps_the_earlier_file(tmp_path):
    """A real process: HDF5 must close cleanly after ENOSPC (no messages at exit, no crash)."""
    import subprocess
    import sys

    target = tmp_path / "out.h5"
    target.write_bytes(b"earlier")
    res = subprocess.run([sys.executable, "-c", _FULL_DISK_SCRIPT, str(target)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # nothing from HDF5 when the half-written file is closed
    assert res.stdout.split() == ["calochallenge", "refused", "par04", "refused",
                                  "sparse-voxels", "refused", "pointcloud", "refused"]
    assert target.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]  # no temporary file left
