"""``showerformer info`` and ``convert`` on bad input: one line, exit status 2, no file changed."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_in_process, snapshot, write_zero_shower_file

from showerformer.geometry import get_geometry
from showerformer.io import read_showers, write_showers
from showerformer.io.par04 import write_par04
from showerformer.showers import Conditions, VoxelShowers


def _voxels(name: str = "ds2", n: int = 4, seed: int = 0) -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = np.zeros((n, geo.n_cells), np.float32)
    for i in range(n):
        cells = rng.choice(geo.n_cells, 25, replace=False)
        e[i, cells] = rng.gamma(2.0, 5.0, 25).astype(np.float32)
    return VoxelShowers(e, Conditions(rng.uniform(1e3, 1e4, n), pdg=11), geo)


def _edit(src: Path, dst: Path, key: str, index: tuple, value: float) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f[key][index] = value
    return dst


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Good files of each format and the bad files of the cases, all in ``tmp_path / "in"``."""
    d = tmp_path / "in"
    d.mkdir()
    vox = _voxels()
    out: dict[str, Path] = {
        "voxels": write_showers(d / "voxels.h5", vox),
        "points": write_showers(d / "points.h5", vox.to_points(), format="pointcloud"),
        "sparse": write_showers(d / "sparse.h5", vox, format="sparse-voxels"),
    }
    out["missing"] = d / "missing.h5"
    out["not_hdf5"] = d / "text.h5"
    out["not_hdf5"].write_text("x, y, z, E\n")
    out["wrong_key"] = d / "wrong_key.h5"
    with h5py.File(out["wrong_key"], "w") as f:
        f["incident_energies"] = np.ones((2, 1))
        f["shower"] = np.ones((2, 6480), np.float32)
    out["nan"] = _edit(out["voxels"], d / "nan.h5", "showers", (1, 17), np.nan)
    out["negative"] = _edit(out["voxels"], d / "negative.h5", "showers", (2, 5), -3.0)
    out["cell_1e8"] = _edit(out["sparse"], d / "cell_1e8.h5", "cell", (5,), 1e8)
    out["cell_-3"] = _edit(out["sparse"], d / "cell_m3.h5", "cell", (5,), -3)
    out["hit_nan"] = _edit(out["sparse"], d / "hit_nan.h5", "energy", (7,), np.nan)
    out["hit_negative"] = _edit(out["sparse"], d / "hit_neg.h5", "energy", (7,), -1.0)
    out["layer_999"] = _edit(out["points"], d / "layer_999.h5", "layer", (1, 0), 999)
    out["layer_-7"] = _edit(out["points"], d / "layer_m7.h5", "layer", (2, 3), -7)
    out["x_1e9"] = _edit(out["points"], d / "x_1e9.h5", "events", (0, 2, 0), 1e9)
    for fmt in ("calochallenge", "par04", "pointcloud", "sparse-voxels"):
        out[f"zero_{fmt}"] = write_zero_shower_file(d / f"zero_{fmt}.h5", fmt)
    return out


# case: (file, extra arguments, fragments besides the file name)
BAD_FILES = {
    "missing": ("missing", [], ["no such file"]),
    "not HDF5": ("not_hdf5", [], ["not a readable HDF5 file"]),
    "wrong key": ("wrong_key", [], ["'showers'", "missing"]),
    "NaN": ("nan", [], ["'showers'", "NaN"]),
    "negative energy": ("negative", [], ["'showers'", "negative energy", "-3.0"]),
    "cell index 1e8": ("cell_1e8", [], ["'cell'", "cell index 100000000", "[0, 6480)"]),
    "cell index -3": ("cell_-3", [], ["'cell'", "cell index -3"]),
    "NaN hit energy": ("hit_nan", [], ["'energy'", "nan", "non-negative"]),
    "negative hit energy": ("hit_negative", [], ["'energy'", "-1.0", "non-negative"]),
    "layer 999": ("layer_999", [], ["'events'", "outside geometry ds2", "1 point", "MeV",
                                    "1 of 4 showers", "--drop-outside"]),
    "layer -7": ("layer_-7", [], ["'events'", "outside geometry ds2", "1 point", "MeV",
                                  "--drop-outside"]),
    "x 1e9": ("x_1e9", [], ["'events'", "outside geometry ds2", "1 point", "MeV",
                            "--drop-outside"]),
    "0 calochallenge showers": ("zero_calochallenge", [], ["'showers'", "0 showers"]),
    "0 par04 showers": ("zero_par04", [], ["'showers'", "0 showers"]),
    "0 pointcloud showers": ("zero_pointcloud", [], ["'events'", "0 showers"]),
    "0 sparse showers": ("zero_sparse-voxels", [], ["'offsets'", "0 showers"]),
}


@pytest.mark.parametrize("case", [*BAD_FILES, "bad geometry option", "XML geometry missing"])
def test_info_bad_input(capsys, tmp_path, files, case):
    before = snapshot(tmp_path)
    if case == "bad geometry option":
        path, args, fragments = files["voxels"], ["--geometry", "ds7"], ["--geometry", "'ds7'"]
        fragments = [*fragments, "ds2"]  # names the presets
    elif case == "XML geometry missing":
        xml = tmp_path / "nope.xml"
        path, args, fragments = files["points"], ["--geometry", str(xml)], [str(xml)]
        fragments = [*fragments, "no such file"]
    else:
        name, args, fragments = BAD_FILES[case]
        path = files[name]
        fragments = [str(path), *fragments]
    res = run_in_process(capsys, "info", path, *args)
    assert_one_line_error(res, *fragments)
    assert res.stdout == ""
    assert snapshot(tmp_path) == before


def _fill_disk_after(monkeypatch, budget: int) -> None:
    """Make every write through the HDF5 writers fail with ENOSPC once ``budget`` bytes are
    written, as on a full disk."""
    real = os.pwrite
    written = [0]

    def pwrite(fd, data, offset):
        if written[0] + len(data) > budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(data)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)


OUTPUT_CASES = {
    "target is a directory": (lambda t: t / "out", ["TARGET", "is a directory"]),
    "file in the way of the folder": (lambda t: t / "in" / "voxels.h5" / "sub" / "x.h5",
                                      ["TARGET", "is a file", "cannot be created"]),
    "unwritable place": (lambda t: Path("/proc/x.h5"), ["TARGET", "/proc/x.h5", "cannot create"]),
    "target is the source": (lambda t: t / "in" / "voxels.h5", ["TARGET", "is the source"]),
    "target through a link to the source": (lambda t: t / "in" / "link.h5",
                                            ["TARGET", "is the source"]),
    "not an HDF5 name": (lambda t: t / "out.txt", ["TARGET", "'.txt'", ".h5"]),
}
OPTION_CASES = {
    "unknown --to": (["--to", "root"], "voxels", ["--to", "'root'", "pointcloud"]),
    "unknown --geometry": (["--geometry", "ds7"], "points", ["--geometry", "'ds7'"]),
    "negative --seed": (["--dequantize", "--seed", "-1"], "voxels", ["--seed", ">= 0"]),
    "--seed without --dequantize": (["--seed", "3"], "voxels", ["--seed", "--dequantize"]),
    "--dequantize on points": (["--dequantize"], "points", ["--dequantize", "pointcloud"]),
    "--dequantize to voxels": (["--dequantize", "--to", "par04"], "voxels", ["--dequantize"]),
    "--drop-outside on voxels": (["--drop-outside"], "voxels", ["--drop-outside"]),
    "points outside kept as points": (["--to", "pointcloud"], "layer_999",
                                      ["'events'", "outside geometry ds2", "1 point",
                                       "--drop-outside"]),
}


@pytest.mark.parametrize("case", [*BAD_FILES, *OUTPUT_CASES, *OPTION_CASES, "disk full",
                                  "points without a geometry"])
def test_convert_bad_input(capsys, monkeypatch, tmp_path, files, case):
    target = tmp_path / "out.h5"
    args: list[str] = []
    if case in BAD_FILES:
        name, args, fragments = BAD_FILES[case]
        source = files[name]
        fragments = [str(source), *fragments]
    elif case in OUTPUT_CASES:
        make, fragments = OUTPUT_CASES[case]
        source, target = files["voxels"], make(tmp_path)
        (tmp_path / "out").mkdir()
        (tmp_path / "in" / "link.h5").symlink_to(source)
        fragments = [str(target), *fragments]
    elif case in OPTION_CASES:
        args, name, fragments = OPTION_CASES[case]
        source = files[name]
    elif case == "disk full":
        source = files["voxels"]
        target.write_bytes(b"earlier file")
        _fill_disk_after(monkeypatch, 4096)
        fragments = [str(target), "disk became full", "unchanged"]
    else:  # a local point cloud that names no geometry
        source = tmp_path / "in" / "no_geometry.h5"
        shutil.copy(files["points"], source)
        with h5py.File(source, "r+") as f:
            del f.attrs["geometry"], f.attrs["geometry_json"]
        fragments = [str(source), "--geometry", "no geometry"]
    before = snapshot(tmp_path)
    res = run_in_process(capsys, "convert", source, target, *args)
    assert_one_line_error(res, *fragments)
    assert snapshot(tmp_path) == before  # no file changed, none created, none left behind


def test_convert_drop_outside_reports_and_drops_exactly(capsys, tmp_path, files):
    src = tmp_path / "in" / "outside.h5"
    shutil.copy(files["points"], src)
    with h5py.File(src, "r+") as f:
        e = f["events"][:, :, 3]
        f["layer"][1, 0] = 999  # one point in no layer
        f["events"][3, 4, 1] = 1e9  # one point far beside the calorimeter
        dropped = float(np.float32(e[1, 0])) + float(np.float32(e[3, 4]))
    vox = read_showers(files["voxels"])
    expected = vox.energies.copy()
    pts = read_showers(files["points"])
    for shower, slot in ((1, 0), (3, 4)):  # the cells of the two points lose exactly their energy
        cell = get_geometry("ds2").locate(*pts.points[shower, slot, :2, None],
                                          layer=pts.points[shower, slot, 4:5])[0]
        expected[shower, cell] = 0.0

    refused = run_in_process(capsys, "convert", src, tmp_path / "refused.h5")
    assert_one_line_error(refused, str(src), "2 points", f"{dropped:.4g} MeV", "2 of 4 showers",
                          "--drop-outside")
    assert not (tmp_path / "refused.h5").exists()

    out = tmp_path / "voxels.h5"
    res = run_in_process(capsys, "convert", src, out, "--drop-outside")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == (f"dropped 2 points holding {dropped:.4g} MeV in 2 of 4 showers "
                        "outside geometry ds2")
    assert lines[1].startswith("wrote 4 showers")
    back = read_showers(out)
    np.testing.assert_array_equal(back.energies, expected)
    assert float(vox.energies.sum(dtype=np.float64) - back.energies.sum(dtype=np.float64)) \
        == pytest.approx(dropped, rel=1e-6)

    # point clouds to point clouds: the points outside go, all others stay bit for bit
    kept = tmp_path / "kept.h5"
    res = run_in_process(capsys, "convert", src, kept, "--to", "pointcloud", "--drop-outside")
    assert res.code == 0 and "dropped 2 points" in res.stdout, res.stderr
    again = read_showers(kept)
    assert again.n_points.tolist() == [n - (i in (1, 3)) for i, n in enumerate(pts.n_points)]
    assert again.count_outside() == (0, 0.0)
    np.testing.assert_array_equal(again.to_voxels().energies, expected)


def test_convert_and_info_accept_good_files(capsys, tmp_path, files):
    par = write_par04(tmp_path / "par.h5", _voxels("par04", 2))
    for src, args in ((files["voxels"], ["--to", "par04"]), (files["sparse"], []),
                      (par, ["--to", "sparse-voxels"]), (files["points"], ["--geometry", "ds2"])):
        res = run_in_process(capsys, "convert", src, tmp_path / "x.h5", *args)
        assert res.code == 0, res.stderr
        res = run_in_process(capsys, "info", tmp_path / "x.h5")
        assert res.code == 0 and res.stderr == "", res.stderr
    res = run_in_process(capsys, "info", files["points"])
    assert res.code == 0 and "layer indices" in res.stdout
