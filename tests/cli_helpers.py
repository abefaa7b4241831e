"""Helpers of the command-line error tests: run a command, check the one-line error, check
that no file existing before the command changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from showerformer.cli import main


@dataclass
class Result:
    """Exit status and output of one command."""

    code: int
    stdout: str
    stderr: str


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """``showerformer ARGS`` through :func:`showerformer.cli.main` in this process (fast)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:  # typer / main end with SystemExit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


def run_subprocess(*args: str, timeout: float = 300, **kwargs) -> Result:
    """``python -m showerformer ARGS`` in a fresh process (for signals and crashes)."""
    env = dict(os.environ, COLUMNS="200")
    res = subprocess.run([sys.executable, "-m", "showerformer", *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=timeout, **kwargs)
    return Result(res.returncode, res.stdout, res.stderr)


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (files or folders), by path."""
    digests: dict[str, str] = {}
    for root in roots:
        paths: Iterable[Path] = [root] if root.is_file() else sorted(root.rglob("*"))
        for p in paths:
            if p.is_file():
                digests[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return digests


def assert_one_line_error(res: Result, *fragments: str, code: int = 2) -> str:
    """The command failed with ``code`` and printed one ``error: ...`` line containing every
    fragment (case-insensitive); returns that line."""
    assert res.code == code, (res.code, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in res.stderr
    for frag in fragments:
        assert frag.lower() in line.lower(), (frag, line)
    return line


def write_zero_shower_file(path: Path, fmt: str) -> Path:
    """A file of format ``fmt`` (calochallenge, par04, pointcloud, sparse-voxels) with every
    dataset present but no shower."""
    with h5py.File(path, "w") as f:
        if fmt == "calochallenge":
            f["incident_energies"] = np.zeros((0, 1))
            f["showers"] = np.zeros((0, 6480), np.float32)
        elif fmt == "par04":
            f["incident_energy"] = np.zeros(0)
            f["showers"] = np.zeros((0, 18, 50, 45), np.float32)
        elif fmt == "pointcloud":
            f["events"] = np.zeros((0, 10, 4), np.float32)
            f["energy"] = np.zeros((0, 1), np.float32)
        else:
            f.attrs["format"] = "sparse-voxels"
            f.attrs["geometry_json"] = ('{"kind": "cartesian", "shape": [4, 4, 4], '
                                        '"cell_size": [1, 1, 1]}')
            f["offsets"] = np.zeros(1, np.int64)
            f["cell"] = np.zeros(0, np.int32)
            f["energy"] = np.zeros(0, np.float32)
            f["incident_energies"] = np.zeros((0, 1))
    return path
