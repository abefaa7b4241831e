"""The evaluation pipeline end to end on small synthetic ds2 files, and every bad input it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.evaluation.pipeline import evaluate_files
from showerformer.geometry import get_geometry
from showerformer.io.calochallenge import write_calochallenge
from showerformer.showers import Conditions, VoxelShowers

# tiny FPD / KPD designs: the JetNet defaults draw 20,000-50,000 rows per batch
FAST = {"fpd_options": {"min_samples": 100, "max_samples": 200, "num_batches": 1,
                        "num_points": 3},
        "kpd_options": {"num_batches": 2, "batch_size": 100}}


def toy(name: str = "ds2", n: int = 200, seed: int = 0, scale: float = 1.0,
        energy: tuple[float, float] = (1e3, 1e5), pdg: int = 11) -> VoxelShowers:
    """Toy showers of one simulator configuration: a gamma-like longitudinal profile, an
    exponential radial profile and gamma-distributed cell fluctuations; ``scale`` multiplies
    every deposit (a mis-calibrated generator)."""
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e_inc = np.exp(rng.uniform(np.log(energy[0]), np.log(energy[1]), n))
    z = (geo.layer_of_cell + 0.5) / geo.n_layers
    r = np.hypot(*geo.cell_centers()[:, :2].T)
    shape = z**2 * np.exp(-8 * z) * np.exp(-r / 8.0)
    w = shape[None] * rng.gamma(2.0, 0.5, (n, geo.n_cells))
    w /= w.sum(axis=1, keepdims=True)
    e = e_inc[:, None] * w * scale * rng.uniform(0.9, 1.0, (n, 1))
    e[e < 1e-3] = 0.0
    return VoxelShowers(e.astype(np.float32), Conditions(e_inc, pdg=pdg), geo)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("samples")
    out = {}
    for key, kw in {"ref": {"seed": 1}, "same": {"seed": 2}, "scaled": {"seed": 3, "scale": 1.1},
                    "small": {"seed": 4, "n": 30}}.items():
        out[key] = write_calochallenge(d / f"{key}.h5", toy(**kw))
    return out


def _reject(name: str) -> float:
    raise AssertionError(f"non-standard JSON constant {name}")


def test_end_to_end_without_classifier(files, tmp_path):
    out = tmp_path / "eval"
    m = evaluate_files(files["ref"], files["same"], out_dir=out, classifier="none", plots=False)
    assert json.loads((out / "metrics.json").read_text(), parse_constant=_reject) == m
    inputs = m["inputs"]
    assert inputs["geometry"] == "ds2" and inputs["threshold_mev"] == pytest.approx(0.5e-3 / 0.033)
    assert inputs["reference"]["n_showers"] == 200 and inputs["reference"]["particles"] == "11"
    sp = m["separation_power"]
    assert sp["n_official"] == 1 + 45 * 5 + 1  # E_tot/E_inc, 5 per-layer families, voxels
    # two samples of the same configuration: separation powers at the statistical noise floor
    # of 200 showers in 100-bin histograms (a few 0.01; the sparse integer-valued n_hits and
    # sparsity histograms up to about 0.2)
    assert sp["mean_official"] < 0.03 and sp["mean"] < 0.06
    assert sp["groups"]["E_layer"]["mean"] < 0.05 and sp["groups"]["E_layer"]["max"] < 0.15
    assert set(m["wasserstein"]) == set(m["ks"]) and "E_layer_10" in m["ks"]
    assert 0 <= m["ks"]["E_tot/E_inc"] < 0.2
    # 200 showers for 362 high-level features: no FPD; KPD with batches of the sample size
    assert "singular" in m["fpd"]["skipped"]
    assert m["kpd"]["options"] == {"batch_size": 200} and m["kpd"]["error"] >= 0
    assert abs(m["kpd"]["value"]) < 5 * m["kpd"]["error"] + 1e-3
    assert m["classifier"] == {"skipped": "classifier test not requested"}
    assert m["plots"] == {}
    html = (out / "report.html").read_text()
    assert "separation power" in html and f"{sp['mean_official']:.4g}" in html
    assert any("50,000" in w for w in m["warnings"])  # small-sample FPD/KPD warning


def test_fpd_kpd_dataset1(tmp_path):
    # dataset 1 photons: 34 high-level features, so a few hundred showers give FPD and KPD
    ref, same, scaled = (toy("ds1-photons", n=400, seed=s, scale=c)
                         for s, c in ((1, 1.0), (2, 1.0), (3, 2.0)))
    design = {"fpd_options": {"min_samples": 200, "max_samples": 400, "num_batches": 2,
                              "num_points": 3},
              "kpd_options": {"num_batches": 6, "batch_size": 400}}
    m_same = evaluate_files(ref, same, out_dir=tmp_path / "a", classifier="none", plots=False,
                            **design)
    m_scaled = evaluate_files(ref, scaled, out_dir=tmp_path / "b", classifier="none",
                              plots=False, **design)
    for m in (m_same, m_scaled):
        assert m["fpd"]["options"] == design["fpd_options"]
        assert m["fpd"]["value_x1e3"] == pytest.approx(1e3 * m["fpd"]["value"])
        assert m["kpd"]["error_x1e3"] == pytest.approx(1e3 * m["kpd"]["error"])
    # the same configuration is compatible with zero, twice the energy is not
    assert m_same["kpd"]["value"] < 2 * m_same["kpd"]["error"] + 1e-4
    assert m_scaled["kpd"]["value"] > 3 * m_scaled["kpd"]["error"]
    # FPD from batches of a few hundred showers has large errors; only its order is checked
    assert m_scaled["fpd"]["value"] > m_same["fpd"]["value"] >= 0
    assert m_scaled["kpd"]["value"] > 5 * m_same["kpd"]["value"]


def test_scaled_sample_is_separated(files, tmp_path):
    same = evaluate_files(files["ref"], files["same"], out_dir=tmp_path / "a",
                          classifier="none", plots=False, distances=False)
    scaled = evaluate_files(files["ref"], files["scaled"], out_dir=tmp_path / "b",
                            classifier="none", plots=False, distances=False)
    s_same = same["separation_power"]["per_histogram"]["E_tot/E_inc"]
    s_scaled = scaled["separation_power"]["per_histogram"]["E_tot/E_inc"]
    assert s_same < 0.05 and s_scaled > 0.5
    assert scaled["ks"]["E_tot/E_inc"] > 0.9
    assert scaled["wasserstein"]["E_tot/E_inc"] == pytest.approx(0.1 * 0.95, rel=0.15)
    assert same["fpd"] == {"skipped": "not requested"}


def test_end_to_end_with_classifier_and_plots(files, tmp_path):
    pytest.importorskip("mplhep")
    pytest.importorskip("torch")
    from showerformer.evaluation.classifier import ClassifierConfig

    tiny = ClassifierConfig(hidden=(16,), epochs=2, dtype="float32", min_per_split=20)
    out = tmp_path / "eval"
    m = evaluate_files(files["ref"], files["scaled"], out_dir=out, classifier="cpu",
                       classifier_config=tiny, n_repeats=2, seed=5, plot_layers=[0, 20],
                       n_single_showers=1, distances=False, max_showers=150)
    assert m["inputs"]["reference"]["n_showers"] == 150
    assert m["inputs"]["reference"]["n_showers_in_file"] == 200
    cls = m["classifier"]
    assert cls["settings"]["n_repeats"] == 2 and cls["settings"]["seed"] == 5
    assert cls["settings"]["hidden"] == [16]
    for kind in ("low", "low_normed", "high"):
        r = cls[kind]
        assert len(r["aucs"]) == 2 and 0.0 <= r["auc_mean"] <= 1.0
        assert r["n_per_class"] == 150
    assert cls["low"]["input_dim"] == 6481 and cls["high"]["input_dim"] == 362
    plots = [p for paths in m["plots"].values() for p in paths]
    assert {"hist_E_layer.png", "profile_longitudinal.png", "average_shower_reference.png",
            "showers_generated.png"} <= set(plots)
    for p in plots:
        assert (out / p).stat().st_size > 2000
    html = (out / "report.html").read_text()
    assert f"{cls['high']['auc_mean']:.3f}"[:4] in html
    assert "NOT the official settings" in cls["description"]
    srcs = [s.split('"')[0] for s in html.split('<img src="')[1:]]
    assert sorted(srcs) == sorted(plots)


def test_point_clouds_in_memory(files, tmp_path):
    # the same showers as voxels and as point clouds: identical features, S = 0 everywhere
    vox = toy(n=60, seed=9)
    m = evaluate_files(vox, vox.to_points(dequantize=True, rng=1), out_dir=tmp_path,
                       classifier="none", plots=False, distances=False)
    values = [v for v in m["separation_power"]["per_histogram"].values() if v is not None]
    assert values and max(values) == pytest.approx(0.0, abs=1e-12)
    assert m["inputs"]["generated"]["format"] == "memory (point cloud, voxelized)"
    # point clouds without a geometry take the voxel sample's; two of them cannot be compared
    pts = vox.to_points()
    pts.geometry = None
    m = evaluate_files(pts, vox, out_dir=tmp_path, classifier="none", plots=False,
                       distances=False)
    assert m["inputs"]["geometry"] == "ds2" and m["separation_power"]["mean"] == 0.0
    with pytest.raises(InputError, match="without a geometry"):
        evaluate_files(pts, pts, out_dir=tmp_path, classifier="none")


def _raw_file(path: Path, e_inc: np.ndarray, showers: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["incident_energies"] = e_inc.reshape(-1, 1)
        f["showers"] = showers
    return path


def test_bad_inputs(files, tmp_path):
    ref = files["ref"]

    def run(generated, **kw):
        return evaluate_files(ref, generated, out_dir=tmp_path / "o", classifier="none",
                              plots=False, distances=False, **kw)

    ds1 = write_calochallenge(tmp_path / "ds1.h5", toy("ds1-photons", n=20))
    with pytest.raises(InputError, match=r"different geometries.*ds2.*ds1-photons"):
        run(ds1)
    far = write_calochallenge(tmp_path / "far.h5", toy(energy=(2e5, 1e6), seed=5))
    with pytest.raises(InputError, match="do not overlap"):
        run(far)
    partial = write_calochallenge(tmp_path / "partial.h5", toy(energy=(5e4, 1e6), seed=6))
    with pytest.raises(InputError, match=r"mismatched conditions: only .*% of the reference"):
        run(partial)
    photons = write_calochallenge(tmp_path / "photons.h5", toy(pdg=22, seed=7))
    with pytest.raises(InputError, match=r"particles \(PDG\) \[11\], generated \[22\]"):
        run(photons)
    n_cells = get_geometry("ds2").n_cells
    empty = _raw_file(tmp_path / "empty.h5", np.zeros(0), np.zeros((0, n_cells)))
    with pytest.raises(InputError, match="0 showers"):
        run(empty)
    showers = np.ones((5, n_cells), dtype=np.float32)
    showers[3, 17] = np.nan
    nan = _raw_file(tmp_path / "nan.h5", np.full(5, 1e4), showers)
    with pytest.raises(InputError, match="NaN"):
        run(nan)
    with pytest.raises(InputError, match="no such file"):
        run(tmp_path / "missing.h5")
    with pytest.raises(InputError, match="classifier"):
        evaluate_files(ref, ref, out_dir=tmp_path / "o", classifier="gpu")
    with pytest.raises(InputError, match="max_showers"):
        run(ref, max_showers=0)
    with pytest.raises(InputError, match="6480 voxels"):
        run(ref, geometry="ds3")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_distance_design_follows_the_sample():
    from showerformer.evaluation.pipeline import _distance_design

    assert _distance_design(100_000, None, None) == ({}, {})  # JetNet defaults
    fpd, kpd = _distance_design(1000, None, None)
    assert fpd == {"min_samples": 400, "max_samples": 1000} and kpd == {"batch_size": 1000}
    fpd, kpd = _distance_design(10_000, None, {"batch_size": 7})
    assert fpd["max_samples"] == 10_000 and kpd == {"batch_size": 7}


def test_classifier_modes():
    from showerformer.evaluation.pipeline import _classifier_config

    full = _classifier_config("full", None, 7, None)
    assert full.is_official() and full.seed == 7 and full.hidden == (2048, 2048, 2048)
    cpu = _classifier_config("cpu", 5, 0, None)
    assert not cpu.is_official() and cpu.n_repeats == 5
    assert "NOT the official settings" in cpu.describe()


def test_too_few_showers_for_classifier(files, tmp_path):
    import time

    start = time.perf_counter()
    with pytest.raises(InputError, match="too few showers for the classifier split"):
        evaluate_files(files["ref"], files["small"], out_dir=tmp_path, classifier="cpu")
    assert time.perf_counter() - start < 20  # refused before any training or plotting
    # without the classifier the same pair is fine
    m = evaluate_files(files["ref"], files["small"], out_dir=tmp_path, classifier="none",
                       plots=False, distances=False)
    assert m["inputs"]["generated"]["n_showers"] == 30


def test_evaluate_command(files, tmp_path):
    import typer
    from typer.testing import CliRunner

    from showerformer.commands.evaluate import evaluate

    app = typer.Typer()
    app.command()(evaluate)
    app.command("noop")(lambda: None)
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["evaluate", "--reference", str(files["ref"]), "--generated",
                                   str(files["same"]), "--out", str(out), "--classifier", "none",
                                   "--no-plots", "--no-fpd-kpd", "--max-showers", "100"],
                           env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "separation power" in res.output and "report.html" in res.output
    assert "FPD" not in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["inputs"]["max_showers"] == 100
    bad = CliRunner().invoke(app, ["evaluate", "--reference", str(files["ref"]), "--generated",
                                   str(tmp_path / "nope.h5"), "--out", str(out)])
    assert isinstance(bad.exception, InputError)


def test_commands_import_lightly():
    code = ("import sys\nimport showerformer.commands.evaluate\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'mplhep', 'sklearn') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
