"""``showerformer evaluate`` and ``evaluate-regression`` on bad input: one line, exit status 2,
refused before any heavy work, no existing file changed; an output folder of another comparison
refused unless ``--replace``."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_in_process, snapshot

from showerformer.io.calochallenge import write_calochallenge
from showerformer.simulation import simulate

_FAST = ("--classifier", "none", "--no-plots", "--no-fpd-kpd")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ds2 files of the built-in simulator and broken variants of them."""
    d = tmp_path_factory.mktemp("evaluate_inputs")
    ref = simulate("ds2", 260, seed=1)
    gen = simulate("ds2", 260, seed=2)
    files = {"ref": write_calochallenge(d / "ref.h5", ref),
             "gen": write_calochallenge(d / "gen.h5", gen),
             "few": write_calochallenge(d / "few.h5", gen[:30])}
    energies = ref.energies[:6].copy()
    energies[3, 17] = np.nan
    with h5py.File(d / "nan.h5", "w") as f:
        f["incident_energies"] = ref.conditions.energy[:6].reshape(-1, 1)
        f["showers"] = energies
    files["nan"] = d / "nan.h5"
    with h5py.File(d / "key.h5", "w") as f:
        f["incident_energy"] = ref.conditions.energy[:6].reshape(-1, 1)
        f["showers"] = ref.energies[:6]
    files["key"] = d / "key.h5"
    with h5py.File(d / "zero.h5", "w") as f:
        f["incident_energies"] = np.zeros((0, 1))
        f["showers"] = np.zeros((0, ref.geometry.n_cells), np.float32)
    files["zero"] = d / "zero.h5"
    files["text"] = d / "text.h5"
    files["text"].write_text("not an HDF5 file\n")
    return files


def _unwritable(tmp_path: Path) -> Path:
    """A folder nobody can create files in (root ignores permission bits: use /proc)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    probe = folder / "probe"
    try:
        probe.write_text("")
    except OSError:
        return folder / "out"
    probe.unlink()
    if Path("/proc/self").is_dir():
        return Path("/proc/self/showerformer-evaluation")
    pytest.skip("no unwritable folder on this system")


def _another_comparison(tmp_path: Path, samples: dict[str, Path]) -> Path:
    """An output folder with the results of another comparison (another generated file)."""
    out = tmp_path / "earlier"
    out.mkdir()
    metrics = {"format": "showerformer-evaluation",
               "comparison": {"reference": str(samples["ref"].resolve()),
                              "generated": "/elsewhere/other.h5"},
               "plots": {"features": ["hist_E_layer.png"]}, "report": "report.html"}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "report.html").write_text("<html></html>\n")
    (out / "hist_E_layer.png").write_bytes(b"png")
    return out


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every PNG write fails as on a full disk."""
    from matplotlib.figure import Figure

    def savefig(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig)


Case = Callable[[Path, dict[str, Path]], tuple[list[str], list[str]]]
EVALUATE_CASES: dict[str, Case] = {
    "missing reference": lambda t, s: (
        ["--reference", str(t / "missing.h5"), "--generated", str(s["gen"]), *_FAST],
        ["missing.h5", "no such file"]),
    "reference is a folder": lambda t, s: (
        ["--reference", str(t), "--generated", str(s["gen"]), *_FAST],
        [str(t), "directory"]),
    "not HDF5": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["text"]), *_FAST],
        ["text.h5", "not a readable HDF5 file"]),
    "NaN energies": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["nan"]), *_FAST],
        ["nan.h5", "key 'showers'", "NaN", "shower 3"]),
    "wrong key": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["key"]), *_FAST],
        ["key.h5", "key 'incident_energies'", "missing"]),
    "zero showers": lambda t, s: (
        ["--reference", str(s["zero"]), "--generated", str(s["gen"]), *_FAST],
        ["zero.h5", "0 showers", "at least one shower"]),
    "too few for the classifier": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["few"]), "--no-plots"],
        ["key 'classifier'", "too few showers", "--classifier none"]),
    "max showers -1": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--max-showers", "-1"],
        ["--max-showers", "-1", "positive number of showers"]),
    "max showers 0": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--max-showers", "0"],
        ["--max-showers", "positive number of showers"]),
    "repeats 0": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--repeats", "0"],
        ["--repeats", "at least 1"]),
    "negative threshold": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--threshold", "-1"],
        ["--threshold", ">= 0 MeV"]),
    "NaN threshold": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--threshold", "nan"],
        ["--threshold", ">= 0 MeV"]),
    "unknown classifier": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--classifier", "gpu"],
        ["--classifier", "'gpu'", "'cpu' or 'full' or 'none'"]),
    "negative seed": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--seed", "-1"],
        ["--seed", ">= 0"]),
    "unknown geometry": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--geometry", "ds9"],
        ["--geometry", "ds9"]),
    "other geometry": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--geometry", "ds3",
         *_FAST], ["ref.h5", "key 'showers'", "ds3"]),
    "out is a file": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--out", str(s["text"]),
         *_FAST], ["--out", "text.h5", "is a file"]),
    "out inside a file": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--out",
         str(s["text"] / "eval"), *_FAST], ["--out", "text.h5", "cannot be created"]),
    "out not writable": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--out",
         str(_unwritable(t)), *_FAST], ["--out", "cannot create files"]),
    "cache dir is a file": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--cache-dir",
         str(s["text"]), "--no-plots", "--no-fpd-kpd", "--repeats", "1"],
        ["--cache-dir", "text.h5", "is a file"]),
    "cache without room": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--cache-dir", str(t),
         "--no-plots", "--no-fpd-kpd", "--repeats", "1"],
        ["--cache-dir", str(t), "needs about 14.2 MB"]),
    "another comparison": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--out",
         str(_another_comparison(t, s)), *_FAST],
        ["--out", "earlier", "another comparison", "generated", "--replace"]),
    "full disk": lambda t, s: (
        ["--reference", str(s["ref"]), "--generated", str(s["gen"]), "--classifier", "none",
         "--no-fpd-kpd", "--max-showers", "20"], ["disk became full"]),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_bad_input(case, samples, tmp_path, capsys, monkeypatch):
    args, fragments = EVALUATE_CASES[case](tmp_path, samples)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "eval")]
    if case == "full disk":
        _full_disk(monkeypatch)
    if case == "cache without room":  # 1 MB free: the cache of 2 x 260 ds2 showers is 13.5 MB
        import showerformer._paths as paths

        monkeypatch.setattr(paths, "free_bytes", lambda path: 1_000_000)
    before = snapshot(tmp_path, *samples.values())
    res = run_in_process(capsys, "evaluate", *args)
    assert_one_line_error(res, *fragments)
    assert snapshot(tmp_path, *samples.values()) == before  # nothing changed, nothing new
    if case != "full disk":  # refused before any work: no output folder
        assert not (tmp_path / "eval").exists()


def test_evaluate_replace_and_rerun(samples, tmp_path, capsys):
    out = _another_comparison(tmp_path, samples)
    keep = out / "notes.txt"
    keep.write_text("mine\n")
    args = ["evaluate", "--reference", str(samples["ref"]), "--generated", str(samples["gen"]),
            "--out", str(out), *_FAST, "--max-showers", "50"]
    res = run_in_process(capsys, *args, "--replace")
    assert res.code == 0, res.stderr
    assert not (out / "hist_E_layer.png").exists()  # the other comparison's plot is gone
    assert keep.read_text() == "mine\n"  # an unrelated file stays
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["comparison"]["generated"] == str(samples["gen"].resolve())
    # the same comparison again: allowed without --replace, its files replaced
    res = run_in_process(capsys, *args)
    assert res.code == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt",
                                                     "report.html"]
    # the same files with another option are another comparison
    before = snapshot(out)
    res = run_in_process(capsys, *args[:-1], "40")
    assert_one_line_error(res, "another comparison", "max_showers 50 instead of 40")
    assert snapshot(out) == before


# ---------------------------------------------------------------------------- regression
def _predictions(path: Path, **datasets) -> Path:
    rng = np.random.default_rng(0)
    true = rng.uniform(1.0, 100.0, 200)
    content = {"true": true, "pred": true * rng.normal(1.0, 0.05, 200)}
    content.update(datasets)
    with h5py.File(path, "w") as f:
        for key, value in content.items():
            if value is None:
                continue
            if isinstance(value, dict):
                f.create_group(key)
            else:
                f[key] = value
    return path


def _with_nan(key: str, value: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arr = rng.uniform(1.0, 100.0, 200)
    arr[7] = value
    return {key: arr}


REGRESSION_CASES: dict[str, Case] = {
    "missing file": lambda t, s: ([str(t / "missing.h5")], ["missing.h5", "no such file"]),
    "a folder": lambda t, s: ([str(t)], [str(t), "is a directory"]),
    "not HDF5": lambda t, s: ([str(s["text"])], ["text.h5", "not a readable HDF5 file"]),
    "NaN prediction": lambda t, s: (
        [str(_predictions(t / "p.h5", **_with_nan("pred", np.nan)))],
        ["p.h5", "key 'pred'", "non-finite", "finite numbers"]),
    "inf true value": lambda t, s: (
        [str(_predictions(t / "p.h5", **_with_nan("true", np.inf)))],
        ["p.h5", "key 'true'", "non-finite"]),
    "wrong key": lambda t, s: (
        [str(_predictions(t / "p.h5", pred=None, prediction=np.ones(200)))],
        ["p.h5", "key 'pred'", "missing"]),
    "group instead of data": lambda t, s: (
        [str(_predictions(t / "p.h5", true={}))], ["p.h5", "key 'true'", "group"]),
    "zero entries": lambda t, s: (
        [str(_predictions(t / "p.h5", true=np.zeros(0), pred=np.zeros(0)))],
        ["p.h5", "key 'true'", "N >= 1"]),
    "wrong shape": lambda t, s: (
        [str(_predictions(t / "p.h5", pred=np.ones((2, 3, 200))))],
        ["p.h5", "key 'pred'", "(2, 3, 200)"]),
    "text values": lambda t, s: (
        [str(_predictions(t / "p.h5", true=np.array([b"a", b"b"])))],
        ["p.h5", "key 'true'", "numbers"]),
    "bad bins in the file": lambda t, s: (
        [str(_predictions(t / "p.h5", bins=np.array([3.0, 2.0, 1.0])))],
        ["p.h5", "key 'bins'", "increasing"]),
    "bins 0": lambda t, s: (
        [str(_predictions(t / "p.h5")), "--bins", "0"], ["--bins", "positive number of bins"]),
    "negative seed": lambda t, s: (
        [str(_predictions(t / "p.h5")), "--seed", "-2"], ["--seed", ">= 0"]),
    "out is a file": lambda t, s: (
        [str(_predictions(t / "p.h5")), "--out", str(s["text"])],
        ["--out", "text.h5", "is a file"]),
    "out inside a file": lambda t, s: (
        [str(_predictions(t / "p.h5")), "--out", str(s["text"] / "r")],
        ["--out", "cannot be created"]),
    "out not writable": lambda t, s: (
        [str(_predictions(t / "p.h5")), "--out", str(_unwritable(t))],
        ["--out", "cannot create files"]),
    "full disk": lambda t, s: ([str(_predictions(t / "p.h5"))], ["disk became full"]),
}


@pytest.mark.parametrize("case", list(REGRESSION_CASES))
def test_evaluate_regression_bad_input(case, samples, tmp_path, capsys, monkeypatch):
    args, fragments = REGRESSION_CASES[case](tmp_path, samples)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "regression")]
    if case == "full disk":
        _full_disk(monkeypatch)
    before = snapshot(tmp_path, samples["text"])
    res = run_in_process(capsys, "evaluate-regression", *args)
    assert_one_line_error(res, *fragments)
    assert snapshot(tmp_path, samples["text"]) == before
    if case != "full disk":
        assert not (tmp_path / "regression").exists()


def test_regression_full_disk_keeps_earlier_results(tmp_path, capsys, monkeypatch):
    pred = _predictions(tmp_path / "p.h5")
    out = tmp_path / "regression"
    assert run_in_process(capsys, "evaluate-regression", str(pred), "--out", str(out)).code == 0
    before = snapshot(out)
    _full_disk(monkeypatch)
    res = run_in_process(capsys, "evaluate-regression", str(pred), "--out", str(out))
    assert_one_line_error(res, "disk became full")
    assert snapshot(out) == before  # every earlier file intact, no temporary file left
    shutil.rmtree(out)


def test_evaluate_points_outside_the_geometry_refused_or_dropped_and_reported(
        capsys, tmp_path, samples):
    from showerformer.io import read_showers, write_showers

    gen = read_showers(samples["gen"])[:40].to_points()
    gen.points[2, 0, 0] = 1e9  # one point far beside the calorimeter (x, mm)
    dropped = float(gen.points[2, 0, 3])
    src = write_showers(tmp_path / "points_outside.h5", gen, format="pointcloud")
    args = ("evaluate", "--reference", samples["ref"], "--generated", src, *_FAST)

    before = snapshot(tmp_path)
    refused = run_in_process(capsys, *args, "--out", tmp_path / "refused")
    assert_one_line_error(refused, str(src), "outside geometry ds2", "1 point",
                          "1 of 40 showers", "--drop-outside")
    assert snapshot(tmp_path) == before

    out = tmp_path / "dropped"
    res = run_in_process(capsys, *args, "--out", out, "--drop-outside")
    assert res.code == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["inputs"]["generated"]["dropped_outside_geometry"]
    assert info["points"] == 1 and info["showers"] == 1
    assert info["energy_mev"] == pytest.approx(dropped, rel=1e-6)
    assert metrics["inputs"]["reference"]["dropped_outside_geometry"] == {
        "points": 0, "energy_mev": 0.0, "showers": 0}
    warning = next(w for w in metrics["warnings"] if "outside geometry" in w)
    assert "1 point holding" in warning and "in 1 of 40 showers" in warning
    assert "1 point holding" in res.stdout  # printed with the table
