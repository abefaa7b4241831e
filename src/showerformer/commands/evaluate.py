"""Evaluation commands: ``showerformer evaluate`` and ``showerformer evaluate-regression``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["evaluate", "evaluate_regression", "headline_rows"]


def _num(value: Any, digits: int = 4) -> str:
    from showerformer.evaluation.report import fmt

    return fmt(value, digits)


def headline_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows of the headline table printed by ``showerformer evaluate``.

    Arguments:
        metrics: the result of :func:`showerformer.evaluation.pipeline.evaluate_files`.

    Returns:
        Rows for the classifier AUC and JSD per input kind, FPD and KPD (x 10^3) and the mean
        and worst separation powers.
    """
    rows: list[tuple[str, str]] = []
    cls = metrics.get("classifier", {})
    for kind in ("low", "low_normed", "high"):
        r = cls.get(kind)
        if isinstance(r, dict) and "auc_mean" in r:
            rows.append((f"classifier AUC ({kind})",
                         f"{_num(r['auc_mean'])} ± {_num(r['auc_std'], 2)}"))
            rows.append((f"classifier JSD ({kind})",
                         f"{_num(r['jsd_mean'])} ± {_num(r['jsd_std'], 2)}"))
    if cls.get("description"):
        rows.append(("classifier settings", str(cls["description"])))
    for key in ("fpd", "kpd"):
        r = metrics.get(key, {})
        if r.get("value_x1e3") is not None:
            rows.append((f"{key.upper()} x 10^3",
                         f"{_num(r['value_x1e3'])} ± {_num(r['error_x1e3'], 2)}"))
    sp = metrics.get("separation_power", {})
    if sp.get("mean_official") is not None:
        rows.append(("separation power (mean, official histograms)", _num(sp["mean_official"])))
    if sp.get("mean") is not None:
        rows.append(("separation power (mean, all histograms)", _num(sp["mean"])))
    worst = sp.get("worst") or []
    if worst:
        rows.append(("worst histograms", ", ".join(f"{n} {_num(v, 3)}" for n, v in worst[:3])))
    return rows


def evaluate(
    reference: Annotated[Path, typer.Option(
        help="Reference sample (e.g. Geant4): CaloChallenge, Par04, point-cloud or EDM4hep "
             "file.")],
    generated: Annotated[Path, typer.Option(help="Generated sample, any supported format.")],
    geometry: Annotated[str | None, typer.Option(
        help="Geometry preset (ds1-photons, ds1-pions, ds2, ds3, ...) or binning XML; default "
             "from the files. Point clouds are voxelized into it.")] = None,
    out: Annotated[Path, typer.Option(
        help="Output folder for metrics.json, the PNG plots and report.html.")] = Path(
        "evaluation"),
    classifier: Annotated[str, typer.Option(
        help="Classifier test: cpu (small network, settings printed), full (official "
             "settings, needs a GPU for large samples) or none.")] = "cpu",
    repeats: Annotated[int | None, typer.Option(
        help="Classifier repetitions for mean and std (default 3).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the classifier splits and networks.")] = 0,
    threshold: Annotated[float | None, typer.Option(
        help="Voxel threshold in MeV (default 1 for ds1, 0.01515 for ds2/ds3).")] = None,
    max_showers: Annotated[int | None, typer.Option(
        help="Use only the first N showers of each sample.")] = None,
    no_plots: Annotated[bool, typer.Option(
        "--no-plots", help="Skip the PNG plots (metrics and report only).")] = False,
    fpd_kpd: Annotated[bool, typer.Option(
        help="Compute FPD and KPD (JetNet designs; about a minute for 100k showers).")] = True,
    embed_images: Annotated[bool, typer.Option(
        "--embed-images", help="Embed the plots in report.html (one self-contained file).")]
        = False,
) -> None:
    """Compare a generated shower sample with a reference: CaloChallenge features, separation
    powers, FPD/KPD and classifier AUCs; writes metrics.json, plots and report.html."""
    from rich.console import Console
    from rich.table import Table

    from showerformer.evaluation.pipeline import evaluate_files

    console = Console()
    with console.status("evaluating") as status:
        metrics = evaluate_files(
            reference, generated, geometry=geometry, out_dir=out, classifier=classifier,
            n_repeats=repeats, seed=seed, threshold=threshold, max_showers=max_showers,
            plots=not no_plots, distances=fpd_kpd, embed_images=embed_images,
            progress=lambda msg: status.update(f"evaluating: {msg}"),
        )
    inputs = metrics["inputs"]
    table = Table(title=f"{generated} vs {reference} ({inputs['geometry']}, "
                        f"{inputs['reference']['n_showers']:,} / "
                        f"{inputs['generated']['n_showers']:,} showers)",
                  title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value")
    for name, value in headline_rows(metrics):
        table.add_row(name, value)
    console.print(table)
    for w in metrics.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    console.print(f"metrics: {out / 'metrics.json'}", highlight=False)
    console.print(f"report:  {out / 'report.html'}", highlight=False)


def evaluate_regression(
    predictions: Annotated[Path, typer.Argument(
        help="HDF5 file with datasets 'true' (N,) and 'pred' (N,) or (M, N), optional "
             "'method' names and 'bins' edges, attributes 'quantity' and 'unit'.")],
    out: Annotated[Path, typer.Option(
        help="Output folder for metrics.json, the PNG plots and report.html.")] = Path(
        "regression_evaluation"),
    bins: Annotated[int | None, typer.Option(
        help="Number of equal-width true-value bins (default: the file's 'bins', else 10).")]
        = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap uncertainties.")] = 0,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    embed_images: Annotated[bool, typer.Option(
        "--embed-images", help="Embed the plots in report.html.")] = False,
) -> None:
    """Evaluate regression predictions: MAE, RMSE, MAPE, bias and sigma68 overall and per bin,
    and the resolution fit sigma/E = a/sqrt(E) (+) b (+) c/E."""
    from rich.console import Console
    from rich.table import Table

    from showerformer.evaluation.regression import evaluate_regression_file

    result = evaluate_regression_file(predictions, out, bins=bins, seed=seed,
                                      plots=not no_plots, embed_images=embed_images)
    unit = result.get("unit") or ""
    u = f" [{unit}]" if unit else ""
    table = Table(title=f"{predictions}: {result['quantity']}, {result['n']:,} entries",
                  title_justify="left")
    for col in ("method", f"MAE{u}", f"RMSE{u}", "MAPE [%]", f"bias{u}", f"sigma68{u}",
                "a (stoch.)", "b (const.)", "c (noise)"):
        table.add_column(col, style="bold" if col == "method" else None)
    for name, m in result["methods"].items():
        fit = m.get("resolution_fit") or {}
        terms = ([f"{_num(fit[k])} ± {_num(fit[k + '_err'], 2)}" for k in "abc"]
                 if "a" in fit else ["n/a"] * 3)
        table.add_row(name, _num(m["mae"]), _num(m["rmse"]), _num(m["mape"]), _num(m["bias"]),
                      _num(m["sigma68"]), *terms)
    console = Console()
    console.print(table)
    console.print(f"metrics: {out / 'metrics.json'}", highlight=False)
    console.print(f"report:  {out / 'report.html'}", highlight=False)
