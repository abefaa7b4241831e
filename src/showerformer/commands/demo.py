"""``showerformer demo``: the main job end to end on the built-in simulator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["demo"]


def demo(
    out: Annotated[Path, typer.Option(help="Folder for every file the demo writes.")] = Path(
        "demo_output"),
    n: Annotated[int, typer.Option(help="Showers per simulated sample.")] = 4000,
    seed: Annotated[int, typer.Option(help="Seed of the whole demo.")] = 1,
    n_regression: Annotated[int, typer.Option(
        help="Simulated 32^3 proton events for the regression step.")] = 8000,
    regression_steps: Annotated[int, typer.Option(
        help="Training steps of the demo's small regressor (about 0.27 s each on 2 cores).")
    ] = 1500,
    flow_steps: Annotated[int, typer.Option(
        help="Training steps of the demo's point-flow generator.")] = 300,
    n_flow: Annotated[int, typer.Option(
        help="Simulated 1-5 GeV electrons to train the generator step on (400 more are held "
             "out).")] = 3000,
) -> None:
    """Simulate, inspect, convert and evaluate ds2-like electrons; train and compare momentum
    regressors on simulated protons.

    Steps: (1) simulate a reference and a second independent sample of ds2-like electrons
    (log-uniform 1 GeV - 1 TeV) with the built-in simulator; (2) summarize the files; (3) convert
    voxels to a point cloud and back; (4) run the CaloChallenge evaluation of one sample against
    the other (two samples of the same simulator: the classifier AUC is expected near 0.5) and
    write the HTML report; (5) train the classical baselines and a small ParticleCNNTransformer
    on simulated 32^3 protons and print the regression table; (6) train a small point-flow
    generator (PanShower + PointCountFM) on ds2-like 1-5 GeV electrons, generate showers with
    the incident energies of held-out ones and evaluate them like step 4.
    """
    from rich.console import Console

    from showerformer.benchmark import run_regression_benchmark
    from showerformer.commands.benchmark import print_regression_table
    from showerformer.commands.evaluate import headline_rows
    from showerformer.commands.files import info_table
    from showerformer.commands.tables import ResultTable, show_table, write_summary
    from showerformer.evaluation.pipeline import evaluate_files
    from showerformer.io import read_showers, write_showers
    from showerformer.simulation import simulate_to_file

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    sections: list[tuple[str, list[Any]]] = []

    def record(*items: Any) -> None:
        """Keep tables and lines for summary.md (rewritten after every step)."""
        sections[-1][1].extend(items)
        write_summary(out / "summary.md", "showerformer demo", sections)

    def evaluate(reference: Path, generated: Path, out_dir: Path, kinds: tuple[str, ...],
                 title: str) -> None:
        """CaloChallenge metrics of two ds2 files, printed as the headline table."""
        with console.status("evaluating") as status:
            metrics = evaluate_files(reference, generated, geometry="ds2", out_dir=out_dir,
                                     classifier="cpu", n_repeats=1, seed=seed, kinds=kinds,
                                     progress=lambda msg: status.update(f"evaluating: {msg}"))
        table = ResultTable(title, ["metric", "value"], left=frozenset({"metric", "value"}))
        for name, value in headline_rows(metrics):
            table.add_row(name, value)
        table.notes.append(f"report: {out_dir / 'report.html'}")
        show_table(table, console)
        record(table)

    def say(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
        record(line)

    def step(text: str) -> None:
        elapsed = f"{time.perf_counter() - t0:.0f} s"
        console.rule(f"[bold]{text}[/] [dim]({elapsed})[/]")
        sections.append((text, [f"_started after {elapsed}_"]))
        write_summary(out / "summary.md", "showerformer demo", sections)

    step("1. simulate ds2-like electrons, 1 GeV - 1 TeV (built-in simulator)")
    reference = out / "ds2_reference.h5"
    sample = out / "ds2_sample.h5"
    simulate_to_file(reference, "ds2", n=n, seed=seed)
    simulate_to_file(sample, "ds2", n=n, seed=seed + 1000)

    step("2. inspect the files")
    table = info_table(reference)
    show_table(table, console)
    record(table)

    step("3. convert voxels -> point cloud -> voxels")
    points_path = out / "ds2_reference_points.h5"
    voxels = read_showers(reference)
    write_showers(points_path, voxels.to_points(dequantize=True, rng=seed), format="pointcloud")
    back = read_showers(points_path, geometry="ds2").to_voxels()
    exact = bool((back.energies == voxels.energies).all())
    say(f"point cloud written to {points_path}; round trip exact per cell: {exact}")

    step("4. evaluate: second simulated sample vs reference (CaloChallenge metrics)")
    evaluate(reference, sample, out / "evaluation", ("low", "low_normed", "high"),
             "second simulated sample vs reference (expected: AUC near 0.5, separation powers "
             "and FPD/KPD near 0)")

    step("5. regression: baselines vs a small ParticleCNNTransformer (32^3 protons, p 1-20 GeV)")
    summary = run_regression_benchmark(
        out / "regression", dataset="sandwich32", n_train=n_regression, n_test=1000,
        seed=seed, config="regressor_32_cpu", max_steps=regression_steps, device="cpu",
        say=lambda msg: console.print(f"[dim]{msg}[/]"))
    record(*print_regression_table(summary, console))
    say(regression_verdict(summary))
    step("6. generate: a small PanShower + PointCountFM on ds2-like electrons, 1-5 GeV")
    from showerformer.benchmark.regression import default_config_path
    from showerformer.generation import generate, load_generator
    from showerformer.training.run import train

    flow_train, flow_test = out / "flow_train.h5", out / "flow_heldout.h5"
    simulate_to_file(flow_train, "ds2", n=n_flow, seed=seed + 2000, energy="1:5",
                     progress=False)
    simulate_to_file(flow_test, "ds2", n=400, seed=seed + 3000, energy="1:5", progress=False)
    run = train(default_config_path("point_flow_demo"), flow_train, out / "flow_run",
                max_steps=flow_steps, device="cpu", overwrite=True)
    model, _ = load_generator(run.out_dir, device="cpu")
    held_out = read_showers(flow_test)
    t1 = time.perf_counter()
    points = generate(model, held_out.conditions, seed=seed, progress=True)
    ms = 1e3 * (time.perf_counter() - t1) / len(held_out)
    outside = points.describe_outside()  # generated points in no cell are left out, and said so
    generated = points.to_voxels(outside="drop")
    write_showers(out / "flow_generated.h5", generated)
    say(f"generated {len(generated):,} showers in {ms:.1f} ms/shower "
        f"({model.n_parameters()['total']:,} parameters, {run.step} training steps)"
        + (f"; {outside} fell outside the cells and are left out" if outside else ""))
    evaluate(flow_test, out / "flow_generated.h5", out / "flow_evaluation", ("high",),
             "generated vs held-out simulated showers (a few CPU minutes of training: far from "
             "converged; AUC 0.5 would be perfect)")
    say("'showerformer benchmark point-flow' trains longer")
    step(f"done: everything is in {out}/")
    say(f"summary of the tables: {out / 'summary.md'}")


def regression_verdict(summary: dict[str, Any]) -> str:
    """One sentence: how the demo's network compares with the best baseline on MAE and RMSE."""
    rows = summary["rows"]
    net = next((r for r in rows if r.get("steps") is not None), None)
    if net is None:
        return "No network was trained."
    others = [r for r in rows if r is not net]
    parts = []
    for key in ("mae", "rmse"):
        best = min(others, key=lambda r: r[key])
        verb = "beats" if net[key] < best[key] else "trails"
        parts.append(f"{key.upper()} {net[key]:.3f} GeV {verb} the best baseline "
                     f"({best['method']}, {best[key]:.3f} GeV)")
    return (f"The network ({net['steps']:,} steps, {net['events_seen']:,} events seen in "
            f"{net['train_seconds']:.0f} s): " + "; ".join(parts) + ". 'showerformer benchmark "
            "regression' runs the full 64^3 comparison (docs/regression.md).")
