"""Command line: help without torch, info and convert, one-line errors with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from showerformer.cli import main
from showerformer.geometry import get_geometry
from showerformer.io.calochallenge import write_calochallenge
from showerformer.showers import Conditions, VoxelShowers


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "showerformer", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_help_does_not_import_torch():
    code = ("import sys\nfrom showerformer.cli import app\nfrom typer.testing import CliRunner\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "for cmd in ('info', 'convert', 'simulate', 'evaluate', 'evaluate-regression', 'demo'):\n"
            "    assert CliRunner().invoke(app, [cmd, '--help']).exit_code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'\nprint(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "info" in out.stdout and "convert" in out.stdout


def test_info_real_pointcloud_sample(shared_dir):
    res = run_cli("info", str(shared_dir / "real" / "cc3_mini_data_sample.hdf5"))
    assert res.returncode == 0, res.stderr
    assert "pointcloud" in res.stdout
    assert "15.62 - 41.93 GeV" in res.stdout
    lines = [ln for ln in res.stdout.splitlines() if "showers" in ln]
    assert any(ln.strip(" │|").split()[-1:] == ["2"] for ln in lines)


def _voxel_file(path: Path, n: int = 5) -> VoxelShowers:
    geo = get_geometry("ds2")
    rng = np.random.default_rng(0)
    e = rng.exponential(1.0, (n, geo.n_cells)).astype(np.float32)
    e[rng.random(e.shape) < 0.9] = 0
    vox = VoxelShowers(e, Conditions(np.geomspace(1e3, 1e6, n)), geo)
    write_calochallenge(path, vox)
    return vox


def test_info_calochallenge(tmp_path):
    path = tmp_path / "ds2.h5"
    vox = _voxel_file(path)
    res = run_cli("info", str(path))
    assert res.returncode == 0, res.stderr
    assert "calochallenge" in res.stdout and "ds2" in res.stdout
    assert "1 - 1000 GeV" in res.stdout
    sparsity = 1 - (vox.energies > 0).mean()
    assert f"{sparsity:.4f}" in res.stdout


def test_convert_voxels_points_voxels(tmp_path):
    src, pts, back = tmp_path / "v.h5", tmp_path / "p.h5", tmp_path / "b.h5"
    vox = _voxel_file(src)
    assert run_cli("convert", str(src), str(pts), "--dequantize", "--seed", "3").returncode == 0
    res = run_cli("convert", str(pts), str(back), "--geometry", "ds2")
    assert res.returncode == 0, res.stderr
    with h5py.File(back) as f:
        np.testing.assert_array_equal(f["showers"][:], vox.energies)


@pytest.mark.parametrize("case", ["missing_path", "missing_key", "wrong_shape", "unknown_count",
                                  "nan", "negative", "empty", "truncated", "not_hdf5"])
def test_bad_input_one_line_exit_2(tmp_path, case):
    path = tmp_path / f"{case}.h5"
    key = "showers"
    if case == "missing_path":
        key = None
    elif case == "missing_key":
        with h5py.File(path, "w") as f:
            f["incident_energies"] = np.ones((2, 1))
    elif case == "wrong_shape":
        with h5py.File(path, "w") as f:
            f["incident_energies"] = np.ones((2, 1))
            f["showers"] = np.ones((2, 6480, 2))
    elif case == "unknown_count":
        with h5py.File(path, "w") as f:
            f["incident_energies"] = np.ones((2, 1))
            f["showers"] = np.ones((2, 1234))
    elif case in ("nan", "negative"):
        with h5py.File(path, "w") as f:
            f["incident_energies"] = np.ones((2, 1))
            s = np.ones((2, 6480), np.float32)
            s[1, 5] = np.nan if case == "nan" else -3.0
            f["showers"] = s
    elif case == "empty":
        path.write_bytes(b"")
        key = None
    elif case == "truncated":
        _voxel_file(tmp_path / "full.h5")
        data = (tmp_path / "full.h5").read_bytes()
        path.write_bytes(data[: len(data) // 3])
        key = None
    elif case == "not_hdf5":
        path.write_text("hello")
        key = None
    res = run_cli("info", str(path))
    assert res.returncode == 2, (res.stdout, res.stderr)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert err.startswith("error: ") and str(path) in err
    if key is not None:
        assert key in err
    debug = run_cli("--debug", "info", str(path))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_main_function_exit_status(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info", str(tmp_path / "missing.h5")])
    assert exc.value.code == 2
    assert "missing.h5" in capsys.readouterr().err
