"""Benchmark commands: ``showerformer benchmark regression``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["benchmark_app", "print_regression_table", "regression"]

benchmark_app = typer.Typer(help="End-to-end benchmarks on the built-in simulator.",
                            no_args_is_help=True)


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v != v:  # NaN
        return "n/a"
    if abs(v) >= 1e4:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}" if abs(v) < 1e-2 else f"{v:.{digits}f}"


def print_regression_table(summary: dict[str, Any], console: Any = None) -> None:
    """Print the benchmark's two tables: overall metrics and per-bin RMSE / MAPE."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ref = summary["seed_reference"]
    table = Table(title=f"momentum regression, {summary['dataset']}: {summary['n_train']:,} "
                        f"training / {summary['n_test']:,} test events (GeV)",
                  title_justify="left")
    for col in ("method", "MAE", "RMSE", "sigma68", "MAPE %", "a (stoch.)", "b (const.)",
                "c (noise)", "train ev/s", "infer ev/s", "params"):
        table.add_column(col, style="bold" if col == "method" else None,
                         justify="left" if col == "method" else "right")
    for r in summary["rows"]:
        table.add_row(r["method"], _f(r["mae"]), _f(r["rmse"]), _f(r["sigma68"]),
                      _f(r["mape"], 1), _f(r["a"]), _f(r["b"]), _f(r["c"]),
                      _f(r["train_events_per_s"], 1), _f(r["infer_events_per_s"], 1),
                      f"{r['parameters']:,}" if r.get("parameters") else "-")
    table.add_row("seed 000 (its own detector)", _f(ref["mae"]), _f(ref["rmse"]),
                  *(["-"] * 8), style="dim")
    console.print(table)
    first = summary["rows"][0]["bins"]
    per_bin = Table(title="RMSE [GeV] / MAPE [%] per true-momentum bin", title_justify="left")
    per_bin.add_column("p bin centre", justify="right")
    for r in summary["rows"]:
        per_bin.add_column(r["method"], justify="right")
    for i, centre in enumerate(first["center"]):
        per_bin.add_row(f"{centre:.1f}", *(f"{_f(r['bins']['rmse'][i])} / "
                                           f"{_f(r['bins']['mape'][i], 1)}"
                                           for r in summary["rows"]))
    console.print(per_bin)
    for r in summary["rows"]:
        if r.get("steps") is not None:
            console.print(f"{r['method']}: {r['steps']:,} steps, {r['epochs']} epochs, "
                          f"{r['events_seen'] or 0:,} events seen in {r['train_seconds']:.0f} s "
                          f"on {r.get('device')}", highlight=False)
    console.print(f"report: {summary['report']}", highlight=False)


@benchmark_app.command()
def regression(
    out: Annotated[Path, typer.Option(help="Output folder (data, models, predictions, report).")
                   ] = Path("benchmark_regression"),
    train: Annotated[Path | None, typer.Option(
        help="Training file (sparse voxels); simulated when omitted.")] = None,
    test: Annotated[Path | None, typer.Option(
        help="Test file (sparse voxels); simulated with another seed when omitted.")] = None,
    dataset: Annotated[str, typer.Option(
        help="Simulator preset: sandwich64 (the benchmark) or sandwich32 (quick CPU run).")
                       ] = "sandwich64",
    n_train: Annotated[int, typer.Option(help="Training events to simulate.")] = 50_000,
    n_test: Annotated[int, typer.Option(help="Test events to simulate.")] = 10_000,
    config: Annotated[str, typer.Option(
        help="Run config of the network: a YAML path or a name in configs/ "
             "(regressor_64, regressor_32_cpu).")] = "regressor_64",
    max_steps: Annotated[int | None, typer.Option(
        help="Stop the network's training after this many steps.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the config's epochs.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    no_model: Annotated[bool, typer.Option("--no-model",
                                           help="Baselines only.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data and the baselines.")] = 0,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
) -> None:
    """Train the classical baselines and ParticleCNNTransformer on one simulated proton dataset
    and compare them on one held-out test set (MAE, RMSE, sigma68, per-bin RMSE and MAPE,
    resolution fit, events/s)."""
    from rich.console import Console

    from showerformer.benchmark import run_regression_benchmark

    console = Console()
    summary = run_regression_benchmark(
        out, train=train, test=test, dataset=dataset, n_train=n_train, n_test=n_test,
        seed=seed, config=config, max_steps=max_steps, epochs=epochs, device=device,
        model=not no_model, plots=not no_plots,
        say=lambda msg: console.rule(msg, style="dim"))
    print_regression_table(summary, console)
