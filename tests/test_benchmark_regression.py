"""The regression benchmark end to end on a tiny simulated dataset: one table, one report."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from showerformer.errors import InputError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from showerformer.simulation import simulate_to_file

    d = tmp_path_factory.mktemp("bench")
    train = simulate_to_file(d / "train.h5", "sandwich32", n=400, seed=1, progress=False)["path"]
    test = simulate_to_file(d / "test.h5", "sandwich32", n=120, seed=2, progress=False)["path"]
    return train, test


def _tiny_config(out_dir):
    return {
        "model": {"family": "particle-cnn-transformer", "grid": 32, "d_model": 24,
                  "n_heads": 1, "mlp_ratio": 2, "cnn_channels": [4, 8, 16, 24],
                  "cnn_depths": [1, 1, 1, 1], "head_hidden": [24], "drop_path": 0.0},
        "train": {"lr": 1e-3, "max_steps": 3, "batch_size": 8, "warmup_steps": 1,
                  "precision": "fp32", "checkpoint_every": None, "device": "cpu",
                  "out_dir": str(out_dir), "log_every": 1},
        "data": {"val_fraction": 0.05},
    }


def test_benchmark_compares_every_method_on_one_test_set(files, tmp_path, capsys):
    from showerformer.benchmark import SEED_REFERENCE, run_regression_benchmark
    from showerformer.commands.benchmark import print_regression_table

    train, test = files
    out = tmp_path / "bench"
    summary = run_regression_benchmark(out, train=train, test=test,
                                       config=_tiny_config(tmp_path / "unused"), bins=4,
                                       plots=False, progress=False)
    methods = [r["method"] for r in summary["rows"]]
    assert methods == ["calibrated-energy-sum", "per-layer-linear", "gradient-boosted-trees",
                       "particle-cnn-transformer"]
    with h5py.File(summary["predictions"]) as f:
        assert f["pred"].shape == (4, 120) and f["true"].shape == (120,)
        true = f["true"][:]
        np.testing.assert_allclose(true, h5py.File(test)["momentum"][:] / 1e3)
        for row, pred in zip(summary["rows"], f["pred"][:], strict=True):
            assert row["mae"] == pytest.approx(np.mean(np.abs(pred - true)))
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["calibrated-energy-sum"]["mae"] < 2.5  # physics, not a constant guess
    net = rows["particle-cnn-transformer"]
    assert net["steps"] == 3 and net["events_seen"] == 24 and net["parameters"] > 1000
    assert all(r["infer_events_per_s"] > 0 for r in summary["rows"])
    assert summary["seed_reference"] == SEED_REFERENCE
    assert json.loads((out / "benchmark.json").read_text())["n_test"] == 120
    assert (out / "report" / "report.html").exists()
    # the seed's analyses of the network come with the predictions
    with h5py.File(summary["predictions"]) as f:
        assert f["analysis"].attrs["method"] == "particle-cnn-transformer"
        assert f["analysis/cls"].shape == (120, 24)
        assert f["analysis/cross_scale_attention"].shape == (120, 8, 5)
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert report["analysis"]["cross_scale_attention"]["keys"] == [
        "query", "32^3", "16^3", "8^3", "8^3"]
    assert summary["learning_curve"] is None
    print_regression_table(summary)
    text = capsys.readouterr().out
    assert "seed 000" in text and "gradient-boosted-trees" in text and "per true-momentum" in text


def test_benchmark_bad_options(files, tmp_path):
    from showerformer.benchmark import run_regression_benchmark

    train, test = files
    with pytest.raises(InputError, match="unknown baseline"):
        run_regression_benchmark(tmp_path, train=train, test=test, baselines=["knn"],
                                 model=False)
    with pytest.raises(InputError, match="unknown config"):
        run_regression_benchmark(tmp_path, train=train, test=test, baselines=[],
                                 config="nope")


def test_budget_and_learning_curve(files, tmp_path, capsys):
    from showerformer.benchmark import run_regression_benchmark
    from showerformer.commands.benchmark import print_regression_table

    train, test = files
    cfg = _tiny_config(tmp_path / "unused")
    cfg["train"]["max_steps"] = 12
    summary = run_regression_benchmark(
        tmp_path / "b", train=train, test=test, config=cfg, baselines=["calibrated-energy-sum"],
        budget_minutes=10.0, curve_points=4, curve_events=50, max_steps=12, bins=4,
        progress=False, overrides=["model.head_hidden=[5]"])
    net = summary["rows"][-1]
    from showerformer.training.checkpoint import read_checkpoint_info

    assert read_checkpoint_info(tmp_path / "b" / "model")["model_config"]["head_hidden"] == [5]
    assert net["budget"]["minutes"] == 10.0 and net["budget"]["step_seconds"] > 0
    assert net["budget"]["steps"] == 12 == net["steps"]  # the cap wins over a generous budget
    assert not (tmp_path / "b" / "model_probe").exists()
    curve = summary["learning_curve"]
    assert curve["n_events"] == 50
    assert [p["step"] for p in curve["points"]] == [3, 6, 9, 12]
    assert [p["events_seen"] for p in curve["points"]] == [24, 48, 72, 96]
    with h5py.File(summary["predictions"]) as f:
        true, pred = f["true"][:50], f["pred"][:, :50]
    assert list(curve["baselines"]) == ["calibrated-energy-sum"]  # not the network itself
    ref = curve["baselines"]["calibrated-energy-sum"]
    assert ref["mae"] == pytest.approx(np.mean(np.abs(pred[0] - true)))
    last = curve["points"][-1]
    assert last["mae"] == pytest.approx(np.mean(np.abs(pred[1] - true)), rel=1e-5)
    assert (tmp_path / "b" / "report" / "learning_curve.png").stat().st_size > 5000
    print_regression_table(summary)
    assert "learning curve on the first 50 test events" in capsys.readouterr().out
    with pytest.raises(InputError, match="curve_events"):
        run_regression_benchmark(tmp_path / "c", train=train, test=test, curve_events=0)
    with pytest.raises(InputError, match="budget_minutes"):
        run_regression_benchmark(tmp_path / "c", train=train, test=test, config=cfg,
                                 baselines=[], budget_minutes=0)


def test_power_law_trend_recovers_the_asymptote():
    from showerformer.benchmark.regression import _power_law_trend

    n = np.array([500, 1000, 2000, 4000, 8000], dtype=float)
    pts = [{"events_seen": int(x), "mae": 0.9 + 0.5 * (x / 8000) ** -0.6,
            "rmse": 1.2 + 0.8 * (x / 8000) ** -0.4} for x in n]
    trend = _power_law_trend(pts)
    assert trend["mae"]["asymptote"] == pytest.approx(0.9, abs=1e-3)
    assert trend["mae"]["exponent"] == pytest.approx(0.6, abs=1e-2)
    assert trend["mae"]["asymptote_constrained"]
    assert trend["rmse"]["at_2x_events"] == pytest.approx(1.2 + 0.8 * 2**-0.4, rel=1e-3)
    assert _power_law_trend(pts[:3]) is None
