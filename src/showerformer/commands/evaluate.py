"""Evaluation commands: ``showerformer evaluate`` and ``showerformer evaluate-regression``."""

from __future__ import annotations

import math
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


def _check_options(**values: Any) -> None:
    """Refuse bad option values before any work, naming the option."""
    from showerformer.errors import InputError

    modes = ("cpu", "full", "none")
    checks = {
        "classifier": (lambda v: v in modes, " or ".join(repr(m) for m in modes)),
        "repeats": (lambda v: v >= 1, "at least 1 repetition"),
        "seed": (lambda v: v >= 0, "an integer >= 0"),
        "threshold": (lambda v: math.isfinite(v) and v >= 0, "a voxel energy >= 0 MeV"),
        "max_showers": (lambda v: v >= 1, "a positive number of showers"),
        "bins": (lambda v: v >= 1, "a positive number of bins"),
    }
    for name, value in values.items():
        ok, expected = checks[name]
        if value is not None and not ok(value):
            option = "--" + name.replace("_", "-")
            raise InputError(f"{option} {value!r}", key=option, expected=expected)


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
    replace: Annotated[bool, typer.Option(
        "--replace", help="--out holds another comparison's results: remove them (its "
                          "metrics.json, report.html and plots, nothing else) and write these.")]
        = False,
    drop_outside: Annotated[bool, typer.Option(
        "--drop-outside", help="Leave out points of point clouds that lie outside the geometry "
                               "and report how many, and their energy (default: refuse such "
                               "files).")] = False,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Folder of the temporary voxel cache of the low-level classifier tests (4 bytes "
             "per voxel and shower, removed at the end; default the system temporary "
             "folder).")] = None,
) -> None:
    """Compare a generated shower sample with a reference: CaloChallenge features, separation
    powers, FPD/KPD and classifier AUCs; writes metrics.json, plots and report.html."""
    _check_options(classifier=classifier, repeats=repeats, seed=seed, threshold=threshold,
                   max_showers=max_showers)
    from showerformer._paths import check_output_dir
    from showerformer.errors import InputError
    from showerformer.geometry import get_geometry

    check_output_dir(out, option="--out")
    if geometry is not None:
        try:
            get_geometry(geometry)
        except InputError as exc:
            if exc.path is not None:  # a binning XML that cannot be read names itself
                raise
            raise InputError(exc.what, key="--geometry", expected=exc.expected) from None
    from rich.console import Console

    from showerformer.commands.tables import ResultTable, show_table
    from showerformer.evaluation.pipeline import evaluate_files

    console = Console()
    with console.status("evaluating") as status:
        metrics = evaluate_files(
            reference, generated, geometry=geometry, out_dir=out, classifier=classifier,
            n_repeats=repeats, seed=seed, threshold=threshold, max_showers=max_showers,
            plots=not no_plots, distances=fpd_kpd, embed_images=embed_images,
            replace=replace, cache_dir=cache_dir, outside="drop" if drop_outside else "error",
            progress=lambda msg: status.update(f"evaluating: {msg}"),
        )
    inputs = metrics["inputs"]
    table = ResultTable(f"{generated} vs {reference} ({inputs['geometry']}, "
                        f"{inputs['reference']['n_showers']:,} / "
                        f"{inputs['generated']['n_showers']:,} showers)",
                        ["metric", "value"], left=frozenset({"metric", "value"}))
    for name, value in headline_rows(metrics):
        table.add_row(name, value)
    show_table(table, console)
    for w in metrics.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
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
    _check_options(bins=bins, seed=seed)
    from showerformer._paths import check_output_dir

    check_output_dir(out, option="--out")
    from rich.console import Console

    from showerformer.commands.tables import ResultTable, show_table
    from showerformer.evaluation.regression import evaluate_regression_file

    result = evaluate_regression_file(predictions, out, bins=bins, seed=seed,
                                      plots=not no_plots, embed_images=embed_images)
    unit = result.get("unit") or ""
    u = f" [{unit}]" if unit else ""
    table = ResultTable(f"{predictions}: {result['quantity']}, {result['n']:,} entries",
                        ["method", f"MAE{u}", f"RMSE{u}", "MAPE [%]", f"bias{u}",
                         f"sigma68{u}", "a (stoch.)", "b (const.)", "c (noise)"],
                        left=frozenset({"method"}))
    for name, m in result["methods"].items():
        fit = m.get("resolution_fit") or {}
        terms = ([f"{_num(fit[k])} ± {_num(fit[k + '_err'], 2)}" for k in "abc"]
                 if "a" in fit else ["n/a"] * 3)
        table.add_row(name, _num(m["mae"]), _num(m["rmse"]), _num(m["mape"]), _num(m["bias"]),
                      _num(m["sigma68"]), *terms)
    console = Console()
    show_table(table, console)
    console.print(f"metrics: {out / 'metrics.json'}", highlight=False)
    console.print(f"report:  {out / 'report.html'}", highlight=False)
