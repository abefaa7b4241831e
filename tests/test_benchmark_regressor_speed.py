"""Tests of the ParticleCNNTransformer speed benchmark (plain vs fast convolution path)."""

from __future__ import annotations

import json

import pytest
import yaml
from cli_helpers import assert_one_line_error, run_in_process
from training_helpers import tiny_regressor_config
from typer.testing import CliRunner

from showerformer.benchmark.regressor_speed import measure_speed, regressor_speed
from showerformer.cli import app
from showerformer.commands.benchmark import regressor_speed_table
from showerformer.errors import InputError

TINY = tiny_regressor_config()["model"]


def test_measure_speed_row() -> None:
    r = measure_speed(16, 2, "fast", steps=2, warmup=1, max_seconds=30, model_config=TINY)
    assert (r["grid"], r["batch"], r["path"], r["precision"]) == (16, 2, "fast", "fp32")
    assert r["train_steps"] == 2 and r["infer_batches"] == 2
    assert r["train_events_per_s"] == pytest.approx(2 / r["train_step_s"])
    assert r["infer_events_per_s"] > 0 and r["peak_mb"] is not None and r["peak_mb"] >= 0
    assert 1_000 < r["parameters"] < 20_000


def test_a_single_slow_repetition_is_reported_alone() -> None:
    r = measure_speed(16, 2, "plain", steps=5, warmup=1, max_seconds=1e-6, model_config=TINY,
                      infer=False)
    assert r["train_steps"] == 1 and "infer_events_per_s" not in r


def test_regressor_speed_grid_and_speedups() -> None:
    seen = []
    rows = regressor_speed((16,), (2, 3), ("plain", "fast"), steps=1, warmup=0,
                           model_config=TINY, isolate=False, on_result=seen.append,
                           background_load=1)
    assert [(r["batch"], r["path"]) for r in rows] == [(2, "plain"), (2, "fast"), (3, "plain"),
                                                       (3, "fast")]
    assert seen == rows and all(r["background_load"] == 1 for r in rows)
    for plain, fast in (rows[0:2], rows[2:4]):
        assert "speedup_train" not in plain
        assert fast["speedup_train"] == pytest.approx(
            fast["train_events_per_s"] / plain["train_events_per_s"])
    table = regressor_speed_table(rows)
    assert "1 busy processes" in table.title and len(table.rows) == 4


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"paths": ("quick",)}, "--paths"),
    ({"grids": ()}, "--grids"),
    ({"batches": (0,)}, "--batches"),
    ({"precision": "fp8"}, "--precision"),
    ({"background_load": -1}, "--background-load"),
])
def test_bad_options(kwargs, key) -> None:
    with pytest.raises(InputError, match=key):
        regressor_speed(**{"model_config": TINY, "isolate": False, **kwargs})


def test_command(tmp_path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY}))
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(app, [
        "benchmark", "regressor-speed", "--grids", "16", "--batches", "2", "--steps", "1",
        "--warmup", "0", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == ["plain", "fast"] and rows[1]["speedup_train"] > 0
    assert "16^3" in result.output and "speed-up" in result.output
    for option, value in (("--grids", "8,x"), ("--steps", "0"), ("--max-seconds", "0")):
        bad = run_in_process(capsys, "benchmark", "regressor-speed", option, value)
        assert_one_line_error(bad, option)
