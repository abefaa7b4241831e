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
