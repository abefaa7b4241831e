"""Tests of the mean-field vs full self-attention cost benchmark: rows, skips, table, command."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, run_in_process
from typer.testing import CliRunner

from showerformer.benchmark.mean_field import MEAN_FIELD_KINDS, mean_field_cost
from showerformer.cli import app
from showerformer.commands.benchmark import mean_field_table
from showerformer.errors import InputError

KEYS = {"kind", "points", "batch", "dim", "n_heads", "status", "forward_ms", "backward_ms",
        "forward_calls", "backward_calls", "forward_peak_mb", "backward_peak_mb", "memory",
        "scores_mb", "parameters", "device", "threads"}


def test_rows_structure() -> None:
    threads = torch.get_num_threads()
    rows = mean_field_cost(points=(64, 256), dim=16, n_heads=4, batch=2, repeats=2,
                           time_cap_s=60.0, threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert [(r["kind"], r["points"]) for r in rows] == [
        (k, p) for p in (64, 256) for k in MEAN_FIELD_KINDS]
    for r in rows:
        assert set(r) == KEYS and r["status"] == "ok"
        assert (r["batch"], r["dim"], r["n_heads"], r["device"], r["threads"]) == (
            2, 16, 4, "cpu", 1)
        assert r["forward_ms"] > 0 and r["backward_ms"] > 0
        assert 1 <= r["forward_calls"] <= 2 and 1 <= r["backward_calls"] <= 2
        assert r["memory"] == "peak RSS increase"
        for key in ("forward_peak_mb", "backward_peak_mb"):
            assert r[key] is None or r[key] >= 0
        assert r["parameters"] == 4 * (16 * 16 + 16)  # the same for both kinds
        per_head = r["points"] ** 2 if r["kind"] == "full" else r["points"]
        assert r["scores_mb"] == pytest.approx(2 * 4 * per_head * 4 / 2**20)
    table = mean_field_table(rows)
    assert len(table.rows) == 4 and "1 thread;" in table.title
    text = table.to_markdown()
    assert "| mean-field |" in text and "| full" in text and "1,088 parameters each" in text


def test_slow_kinds_are_skipped_at_larger_sizes() -> None:
    rows = mean_field_cost(points=(32, 64, 128), dim=8, n_heads=2, backward=False, repeats=1,
                           time_cap_s=1e-9, kinds=("full",))
    assert [r["points"] for r in rows] == [32, 64, 128]
    first, *rest = rows
    assert first["status"] == "ok" and first["forward_calls"] == 0  # the warm-up alone
    assert first["backward_ms"] is None and first["backward_calls"] is None
    for r in rest:
        assert r["status"].startswith("skipped: one call at 32 points took")
        assert "time cap" in r["status"]
        assert r["forward_ms"] is None and r["forward_peak_mb"] is None
    assert "skipped" in mean_field_table(rows).to_markdown()


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"points": ()}, "--points"),
    ({"points": (0,)}, "--points"),
    ({"n_heads": 5}, "--heads"),
    ({"batch": 0}, "--batch"),
    ({"repeats": 0}, "--repeats"),
    ({"time_cap_s": 0.0}, "--time-cap"),
    ({"kinds": ("sparse",)}, "--kinds"),
])
def test_bad_arguments(kwargs, key) -> None:
    with pytest.raises(InputError, match=key):
        mean_field_cost(**{"points": (8,), **kwargs})


def test_command(tmp_path, capsys) -> None:
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(app, [
        "benchmark", "mean-field", "--points", "64", "256", "--dim", "16", "--heads", "4",
        "--repeats", "1", "--threads", "1", "--no-backward", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(r["kind"], r["points"]) for r in rows] == [
        (k, p) for p in (64, 256) for k in MEAN_FIELD_KINDS]
    assert all(r["backward_ms"] is None for r in rows)
    # not a terminal: a Markdown table with every row
    assert "| kind" in result.output and result.output.count("| mean-field |") == 2
    for args, option in ((["--points", "64,x"], "--points"), (["64"], "--points"),
                         (["--points", "64", "--heads", "5"], "--heads"),
                         (["--points", "64", "--device", "tpu"], "--device")):
        bad = run_in_process(capsys, "benchmark", "mean-field", *args)
        assert_one_line_error(bad, option)
