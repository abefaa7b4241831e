"""Result tables: rich on a terminal, Markdown with every digit in logs and summary files."""

from __future__ import annotations

import io

from rich.console import Console

from showerformer.commands.tables import ResultTable, show_table, write_summary


def _table() -> ResultTable:
    t = ResultTable("momentum regression (GeV)",
                    ["method", *(f"metric number {i}" for i in range(10))],
                    left=frozenset({"method"}))
    t.add_row("calibrated energy sum | linear", *(f"{1.0 + i / 7:.6f}" for i in range(10)))
    t.add_row("seed reference", "1.085", dim=True)
    t.notes.append("network: 400 steps in 212 s")
    return t


def test_log_output_is_markdown_with_every_digit():
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=False)
    show_table(_table(), console)
    text = buf.getvalue()
    assert "…" not in text
    for i in range(10):
        assert f"{1.0 + i / 7:.6f}" in text
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("| method"))
    assert len(header) > 80  # not wrapped to the console width
    rule = lines[lines.index(header) + 1]
    assert rule.startswith("|--") and rule.endswith(":|")  # method left, numbers right
    assert r"calibrated energy sum \| linear" in text  # pipes escaped
    assert "network: 400 steps in 212 s" in text
    # every row has as many cells as the header
    rows = [ln for ln in lines if ln.startswith("| ")]
    assert {ln.count(" | ") for ln in rows} == {10}


def test_terminal_output_is_a_rich_table():
    buf = io.StringIO()
    console = Console(file=buf, width=250, force_terminal=True, color_system=None)
    show_table(_table(), console)
    text = buf.getvalue()
    assert "┃" in text or "│" in text
    assert "1.142857" in text and "network: 400 steps" in text


def test_write_summary(tmp_path):
    path = write_summary(tmp_path / "summary.md", "demo",
                         [("1. simulate", ["wrote 10 showers"]), ("2. compare", [_table()])])
    text = path.read_text()
    assert text.startswith("# demo\n")
    assert "## 1. simulate" in text and "wrote 10 showers" in text
    assert "## 2. compare" in text and "**momentum regression (GeV)**" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_demo_regression_verdict() -> None:
    from showerformer.commands.demo import regression_verdict

    rows = [{"method": "calibrated-energy-sum", "mae": 1.35, "rmse": 1.76},
            {"method": "gradient-boosted-trees", "mae": 0.98, "rmse": 1.28},
            {"method": "particle-cnn-transformer", "mae": 0.95, "rmse": 1.35, "steps": 900,
             "events_seen": 14400, "train_seconds": 190.4}]
    text = regression_verdict({"rows": rows})
    assert "900 steps, 14,400 events seen in 190 s" in text
    assert "MAE 0.950 GeV beats the best baseline (gradient-boosted-trees, 0.980 GeV)" in text
    assert "RMSE 1.350 GeV trails the best baseline (gradient-boosted-trees, 1.280 GeV)" in text
    assert regression_verdict({"rows": rows[:2]}) == "No network was trained."
