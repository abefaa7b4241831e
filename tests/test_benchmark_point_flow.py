"""The point-flow benchmark end to end at toy size: data, budgeted training, sampling, evaluation,
speed rows, attention rows and the printed tables."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from showerformer.benchmark import run_point_flow_benchmark
from showerformer.commands.benchmark import print_point_flow_tables
from showerformer.errors import InputError

TINY = {
    "model": {"family": "point-flow", "shower": {"d_model": 16, "n_heads": 2, "n_blocks": 1},
              "counts": {"d_model": 16, "n_blocks": 1}},
    "train": {"lr": 1e-3, "max_steps": 4, "batch_size": 8, "tensorboard": False,
              "precision": "fp32", "device": "cpu"},
    "data": {"val_fraction": 0.1},
}


def test_point_flow_benchmark_tiny(tmp_path: Path) -> None:
    from rich.console import Console

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    summary = run_point_flow_benchmark(
        tmp_path / "bench", datasets=("multi",), n_train=64, n_test=24, budget_minutes=0.05,
        configs={"multi": cfg}, device="cpu", speed_batches=(1, 3), attention_points=(64,),
        classifier="none", steps=2, plots=False)
    row = summary["datasets"]["multi"]
    assert 1 <= row["steps"] <= 4  # capped by the config's max_steps
    assert row["parameters"]["total"] == row["parameters"]["shower"] + row["parameters"]["counts"]
    assert set(row["evaluation"]) <= {"e-", "gamma", "pi+", "proton"} and row["evaluation"]
    for ev in row["evaluation"].values():
        assert ev["auc_high"] is None and ev["separation_mean"] is not None
    assert [r["batch"] for r in row["speed"]] == [1, 3]
    assert all(r["ms_per_shower"] > 0 and r["peak_memory_gib"] > 0 for r in row["speed"])
    assert all(0 < r["baseline_memory_gib"] <= r["peak_memory_gib"] + 1e-6 for r in row["speed"])
    assert {r["backend"] for r in summary["attention"]} >= {"full", "dense", "blocked"}
    on_disk = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert on_disk["datasets"]["multi"]["steps"] == row["steps"]
    buf = io.StringIO()
    print_point_flow_tables(summary, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "generator quality" in text and "sampling speed" in text and "blocked" in text
    assert "+ voxels ms/shower" in text and row["family"] == "point-flow"


def test_point_flow_benchmark_resume_continues_training(tmp_path: Path) -> None:
    """--resume keeps the plan, continues an unfinished run to its planned steps and does not
    retrain a finished one; an interrupted part makes the training time unknown."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    kw = dict(datasets=("multi",), n_train=48, n_test=24, budget_minutes=0.05,
              configs={"multi": cfg}, device="cpu", speed_batches=(1,), attention_points=(),
              classifier="none", steps=2, plots=False)
    out = tmp_path / "bench"
    first = run_point_flow_benchmark(out, **kw)["datasets"]["multi"]
    run_dir = out / "multi_run"
    plan = json.loads((run_dir / "benchmark_plan.json").read_text())
    assert plan["max_steps"] == first["steps"] and plan["train_seconds"] > 0
    weights = (run_dir / "checkpoints" / "last.json").read_text()
    again = run_point_flow_benchmark(out, resume=True, **kw)["datasets"]["multi"]
    assert again["steps"] == first["steps"]
    assert (run_dir / "checkpoints" / "last.json").read_text() == weights  # not retrained
    assert again["train_seconds"] >= plan["train_seconds"]
    # a run folder without a plan (interrupted before plans were kept): its training time is
    # unknown, the planned steps come from its run_config.json
    (run_dir / "benchmark_plan.json").unlink()
    third = run_point_flow_benchmark(out, resume=True, **kw)["datasets"]["multi"]
    assert third["steps"] == first["steps"] and third["train_seconds"] is None


def test_point_flow_benchmark_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="datasets"):
        run_point_flow_benchmark(tmp_path, datasets=("ds9",))
    with pytest.raises(InputError, match="budget"):
        run_point_flow_benchmark(tmp_path, datasets=("ds2",), budget_minutes=0)
    (tmp_path / "ds2_run").mkdir()
    (tmp_path / "ds2_run" / "benchmark_plan.json").write_text("{not json")
    with pytest.raises(InputError, match=r"benchmark_plan\.json"):
        run_point_flow_benchmark(tmp_path, datasets=("ds2",), n_train=16, n_test=4,
                                 resume=True)


def test_batch_shapes_follow_the_trainer_batches() -> None:
    """The budget probe's cost model sees the trainer's batches: same order, same padding."""
    import numpy as np

    from showerformer.benchmark.point_flow import _batch_shapes, _step_cost_features
    from showerformer.data.batching import BucketBatchSampler

    sizes = np.random.default_rng(3).integers(5, 3000, 100)
    shapes = _batch_shapes(sizes, 8, 4, 16, seed=2, min_batches=30)
    assert len(shapes) == 36  # three epochs of 12 batches
    expected = []
    for epoch in range(3):
        for b in BucketBatchSampler(sizes, 8, seed=2, epoch=epoch, bucket_batches=4):
            expected.append((len(b), -(-int(sizes[b].max()) // 16) * 16))
    np.testing.assert_array_equal(shapes, np.array(expected, dtype=float))
    # a step time linear in the regressors is recovered exactly by the probe's fit
    from scipy.optimize import nnls

    x = _step_cost_features(shapes)
    coef, _ = nnls(x, x @ np.array([0.05, 0.3, 0.02]))
    np.testing.assert_allclose(coef, [0.05, 0.3, 0.02], rtol=1e-8)
    with pytest.raises(InputError, match="batch_size"):
        _batch_shapes(sizes[:5], 8, 4, 16, seed=2)
