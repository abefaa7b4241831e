"""Benchmark commands: ``showerformer benchmark regression``, ``point-flow``, ``regressor-speed``
and ``mean-field``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "benchmark_app",
    "mean_field",
    "mean_field_table",
    "point_flow",
    "point_flow_tables",
    "print_point_flow_tables",
    "print_regression_table",
    "regression",
    "regression_tables",
    "regressor_speed",
    "regressor_speed_table",
]

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


def regression_tables(summary: dict[str, Any]) -> list[Any]:
    """The benchmark's two tables as :class:`~showerformer.commands.tables.ResultTable`:
    overall metrics (with how each network was trained) and per-bin RMSE / MAPE."""
    from showerformer.commands.tables import ResultTable

    ref = summary["seed_reference"]
    table = ResultTable(
        f"momentum regression, {summary['dataset']}: {summary['n_train']:,} training / "
        f"{summary['n_test']:,} test events (GeV)",
        ["method", "MAE", "RMSE", "sigma68", "MAPE %", "a (stoch.)", "b (const.)", "c (noise)",
         "train ev/s", "infer ev/s", "params"], left=frozenset({"method"}))
    for r in summary["rows"]:
        table.add_row(r["method"], _f(r["mae"]), _f(r["rmse"]), _f(r["sigma68"]),
                      _f(r["mape"], 1), _f(r["a"]), _f(r["b"]), _f(r["c"]),
                      _f(r["train_events_per_s"], 1), _f(r["infer_events_per_s"], 1),
                      f"{r['parameters']:,}" if r.get("parameters") else "-")
    table.add_row("seed 000 (its own detector)", _f(ref["mae"]), _f(ref["rmse"]),
                  *(["-"] * 8), dim=True)
    for r in summary["rows"]:
        if r.get("steps") is not None:
            table.notes.append(
                f"{r['method']}: {r['steps']:,} steps, {r['epochs']} epochs, "
                f"{r['events_seen'] or 0:,} events seen in {r['train_seconds']:.0f} s on "
                f"{r.get('device')}")
    first = summary["rows"][0]["bins"]
    per_bin = ResultTable("RMSE [GeV] / MAPE [%] per true-momentum bin",
                          ["p bin centre", *(r["method"] for r in summary["rows"])])
    for i, centre in enumerate(first["center"]):
        per_bin.add_row(f"{centre:.1f}", *(f"{_f(r['bins']['rmse'][i])} / "
                                           f"{_f(r['bins']['mape'][i], 1)}"
                                           for r in summary["rows"]))
    per_bin.notes.append(f"report: {summary['report']}")
    tables = [table, per_bin]
    curve = summary.get("learning_curve")
    if curve and curve.get("points"):
        lc = ResultTable(f"learning curve on the first {curve['n_events']:,} test events (GeV)",
                         ["step", "events seen", "MAE", "RMSE"])
        for pt in curve["points"]:
            lc.add_row(f"{pt['step']:,}", f"{pt['events_seen']:,}", _f(pt["mae"]),
                       _f(pt["rmse"]))
        for name, ref in curve.get("baselines", {}).items():
            lc.add_row(name, "-", _f(ref["mae"]), _f(ref["rmse"]), dim=True)
        trend = curve.get("trend") or {}
        if trend:
            lc.notes.append("power-law fit y = y_inf + b (n / n_last)^-c: " + "; ".join(
                f"{k.upper()} -> "
                + (f"{v['asymptote']:.3f}" if v.get("asymptote_constrained", True)
                   else "not constrained yet")
                + f" (c = {v['exponent']:.2f}; {v['at_2x_events']:.3f} at twice the events)"
                for k, v in trend.items()))
        tables.append(lc)
    return tables


def print_regression_table(summary: dict[str, Any], console: Any = None) -> list[Any]:
    """Print the benchmark's two tables (rich on a terminal, Markdown in a log); returns them."""
    from showerformer.commands.tables import show_table

    tables = regression_tables(summary)
    for t in tables:
        show_table(t, console)
    return tables


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
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="Change one value of the network's config, e.g. --set "
             "model.energy_scale_mev=30 (repeatable).")] = None,
    max_steps: Annotated[int | None, typer.Option(
        help="Stop the network's training after this many steps.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the config's epochs.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    no_model: Annotated[bool, typer.Option("--no-model",
                                           help="Baselines only.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data and the baselines.")] = 0,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    budget_minutes: Annotated[float | None, typer.Option(
        help="Train the network for about this many minutes (steps from a timed probe).")
    ] = None,
    curve_points: Annotated[int, typer.Option(
        help="Checkpoints of the learning curve (MAE, RMSE against events seen); 0: none.")
    ] = 0,
    curve_events: Annotated[int, typer.Option(
        help="Test events per learning-curve point.")] = 1000,
) -> None:
    """Train the classical baselines and ParticleCNNTransformer on one simulated proton dataset
    and compare them on one held-out test set (MAE, RMSE, sigma68, per-bin RMSE and MAPE,
    resolution fit, events/s)."""
    from rich.console import Console

    from showerformer.benchmark import run_regression_benchmark

    console = Console()
    summary = run_regression_benchmark(
        out, train=train, test=test, dataset=dataset, n_train=n_train, n_test=n_test,
        seed=seed, config=config, overrides=tuple(set_ or ()), max_steps=max_steps,
        epochs=epochs, device=device, model=not no_model, plots=not no_plots,
        budget_minutes=budget_minutes,
        curve_points=curve_points, curve_events=curve_events,
        say=lambda msg: console.rule(msg, style="dim"))
    print_regression_table(summary, console)


def point_flow_tables(summary: dict[str, Any]) -> list[Any]:
    """The point-flow benchmark's tables: quality per dataset and particle, sampling speed, and
    the attention cost (a text block) when measured."""
    from showerformer.commands.tables import ResultTable

    def pm(row: dict[str, Any], key: str) -> str:
        v, e = row.get(key), row.get(f"{key}_err")
        return _f(v) if e is None or v is None else f"{_f(v)} ± {_f(e)}"

    q = ResultTable(f"generator quality vs held-out simulator showers ({summary['n_test']:,} "
                    "each; AUC 0.5 = indistinguishable)",
                    ["model", "dataset", "particle", "AUC low", "AUC low normed", "AUC high", "FPD x1e3",
                     "KPD x1e3", "mean sep. power", "steps", "train min", "params"],
                    left=frozenset({"model", "dataset", "particle"}))
    for name, d in summary["datasets"].items():
        for particle, ev in d["evaluation"].items():
            q.add_row(d.get("family", "point-flow"), name, particle, pm(ev, "auc_low"), pm(ev, "auc_low_normed"),
                      pm(ev, "auc_high"), pm(ev, "fpd_x1e3"), pm(ev, "kpd_x1e3"),
                      _f(ev.get("separation_mean")), f"{d['steps']:,}",
                      "?" if d.get("train_seconds") is None else f"{d['train_seconds'] / 60:.1f}",
                      f"{d['parameters']['total']:,}")
    speed = ResultTable("sampling speed (count model + shower model, midpoint 16 steps unless "
                        "set; + voxelization into the cells)",
                        ["model", "dataset", "batch", "chunk", "ms/shower", "+ voxels ms/shower",
                         "points/shower",
                         "peak memory GiB", "before GiB", "memory", "device"],
                        left=frozenset({"model", "dataset", "memory", "device"}))
    for name, d in summary["datasets"].items():
        for r in d.get("speed", []):
            speed.add_row(d.get("family", "point-flow"), name, f"{r['batch']:,}",
                          f"{r['chunk']:,}", _f(r["ms_per_shower"]),
                          _f(r.get("ms_per_shower_voxelized")),
                          _f(r["mean_points"], 4), _f(r["peak_memory_gib"]),
                          _f(r.get("baseline_memory_gib")), r["memory_kind"], r["device"])
    out: list[Any] = [q, speed]
    for name, d in summary["datasets"].items():
        if d.get("energy_dependence"):
            out.append(energy_dependence_table(d["energy_dependence"],
                                               f"{d.get('family', 'point-flow')} on {name}"))
    if summary.get("attention"):
        from showerformer.benchmark.attention import format_attention_table

        out.append(format_attention_table(summary["attention"]))
    return out


def print_point_flow_tables(summary: dict[str, Any], console: Any = None) -> list[Any]:
    """Print the point-flow benchmark's tables (rich on a terminal, Markdown in a log)."""
    from rich.console import Console

    from showerformer.commands.tables import ResultTable, show_table

    console = console or Console()
    tables = point_flow_tables(summary)
    for t in tables:
        if isinstance(t, ResultTable):
            show_table(t, console)
        else:
            console.print(t, highlight=False, markup=False, soft_wrap=True)
    return tables


@benchmark_app.command("point-flow")
def point_flow(
    out: Annotated[Path, typer.Option(help="Output folder (data, runs, samples, reports).")
                   ] = Path("benchmark_point_flow"),
    datasets: Annotated[str, typer.Option(
        help="Comma-separated: ds2 (ds2-like electrons) and/or multi (e-, gamma, pi+, p).")
                        ] = "ds2,multi",
    n_train: Annotated[int, typer.Option(help="Training showers to simulate.")] = 20_000,
    n_test: Annotated[int, typer.Option(help="Held-out showers to simulate and generate.")
                      ] = 2_000,
    budget_minutes: Annotated[float, typer.Option(
        help="Training wall time per dataset (the schedule is fitted to it).")] = 120.0,
    config: Annotated[list[str] | None, typer.Option(
        help="DATASET=CONFIG (YAML path or name in configs/), repeatable; default "
             "point_flow_ds2 / point_flow_multi.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    speed_batches: Annotated[str | None, typer.Option(
        help="Comma-separated batch sizes of the speed test (default 1,100 and 10000 on a "
             "GPU).")] = None,
    attention_points: Annotated[str, typer.Option(
        help="Comma-separated point counts of the attention-cost table ('' to skip).")
                                ] = "1000,4000,16000",
    classifier: Annotated[str, typer.Option(help="cpu, full or none.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of data, training and sampling.")] = 0,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the evaluation plots.")
                        ] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted benchmark in --out: reuse its data, continue "
                         "each training from its last checkpoint, skip finished ones.")
                      ] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=VALUE change of every dataset's run config (YAML value), "
                      "repeatable, e.g. --set model.sde=vp.")] = None,
) -> None:
    """Train PanShower + PointCountFM on ds2-like electrons and on the multi-particle set within
    a time budget, sample, and evaluate against held-out showers; time sampling and attention."""
    from rich.console import Console

    from showerformer.benchmark import run_point_flow_benchmark
    from showerformer.errors import InputError

    configs = {}
    for item in config or []:
        if "=" not in item:
            raise InputError(f"--config {item!r}", key="config", expected="DATASET=CONFIG")
        k, v = item.split("=", 1)
        configs[k.strip()] = v.strip()

    def ints(text: str | None) -> list[int] | None:
        if not text:
            return None
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"{text!r}", key="batches",
                             expected="comma-separated integers") from None

    console = Console()
    summary = run_point_flow_benchmark(
        out, datasets=[d.strip() for d in datasets.split(",") if d.strip()], n_train=n_train,
        n_test=n_test, budget_minutes=budget_minutes, configs=configs, device=device, seed=seed,
        speed_batches=ints(speed_batches), attention_points=ints(attention_points) or (),
        classifier=classifier, plots=not no_plots, resume=resume, overrides=tuple(set_ or ()),
        say=lambda msg: console.rule(msg, style="dim"))
    print_point_flow_tables(summary, console)


def regressor_speed_table(results: list[dict[str, Any]]) -> Any:
    """The speed benchmark's rows as one :class:`~showerformer.commands.tables.ResultTable`."""
    from showerformer.commands.tables import ResultTable

    first = results[0] if results else {}
    table = ResultTable(
        f"ParticleCNNTransformer speed on {first.get('device', 'cpu')} "
        f"({first.get('precision', 'fp32')}, {first.get('threads', '?')} threads"
        + (f", {first['background_load']} busy processes beside it"
           if first.get("background_load") else "")
        + "): plain vs fast convolution path",
        ["grid", "batch", "path", "train ev/s", "train speed-up", "infer ev/s", "infer speed-up",
         "peak MB", "params"], left=frozenset({"path"}))
    for r in results:
        table.add_row(f"{r['grid']}^3", str(r["batch"]), r["path"],
                      _f(r.get("train_events_per_s"), 2), _speedup(r.get("speedup_train")),
                      _f(r.get("infer_events_per_s"), 2), _speedup(r.get("speedup_infer")),
                      _f(r.get("peak_mb"), 0), f"{r['parameters']:,}")
    counts = sorted({(r.get("train_steps"), r.get("infer_batches")) for r in results},
                    key=str)
    table.notes.append("train: forward + loss + backward + AdamW step in training mode; infer: "
                       "predict without gradients; peak MB: growth of the peak resident memory "
                       "(CPU) or of the peak allocated memory (CUDA) during the measurement; "
                       f"timed repetitions (train, infer) per row: {counts}")
    return table


def _speedup(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}x"


@benchmark_app.command("regressor-speed")
def regressor_speed(
    grids: Annotated[str, typer.Option(help="Voxels per axis, comma-separated.")] = "64,32",
    batches: Annotated[str, typer.Option(help="Events per step, comma-separated.")] = "8,32",
    paths: Annotated[str, typer.Option(help="Backbone paths: plain and/or fast.")
                     ] = "plain,fast",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str | None, typer.Option(
        help="fp32 or bf16 (default: bf16 on CUDA, fp32 on a CPU).")] = None,
    steps: Annotated[int, typer.Option(help="Timed repetitions per measurement.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed repetitions first.")] = 1,
    max_seconds: Annotated[float, typer.Option(
        help="Time per measurement after which no further repetition starts.")] = 60.0,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")
                       ] = None,
    config: Annotated[str | None, typer.Option(
        help="Run config whose model to time (default: the seed's architecture).")] = None,
    background_load: Annotated[int, typer.Option(
        help="Busy processes beside every measurement (a CPU shared with data-loading "
             "workers or another job).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the rows to this JSON file.")
                   ] = None,
) -> None:
    """Training and inference events/s and peak memory of ParticleCNNTransformer at each grid
    and batch size, plain vs fast (channels-last) convolution path, each in a fresh process."""
    import json

    from showerformer._atomic import atomic_path
    from showerformer._paths import check_output_file
    from showerformer.benchmark.regressor_speed import regressor_speed as run
    from showerformer.commands.tables import show_table
    from showerformer.errors import InputError
    from showerformer.training.config import check_count, check_device

    def ints(text: str, key: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise InputError(f"{text!r}", key=key, expected="comma-separated positive integers")
        return values

    grid_list, batch_list = ints(grids, "--grids"), ints(batches, "--batches")
    check_count(steps, "--steps", "at least 1 timed repetition")
    if warmup < 0:
        raise InputError(f"{warmup}", key="--warmup", expected="0 or more repetitions")
    if not max_seconds > 0:
        raise InputError(f"{max_seconds}", key="--max-seconds", expected="a positive time")
    check_device(device)
    if out is not None:
        out = check_output_file(out, option="--out")
    model_config = None
    if config is not None:
        from showerformer.benchmark.regression import default_config_path
        from showerformer.training.config import load_yaml

        cfg_path = default_config_path(config)
        model_config = dict(load_yaml(cfg_path).get("model") or {})
    rows: list[dict[str, Any]] = []

    def progress(r: dict[str, Any]) -> None:
        rows.append(r)
        typer.echo(f"{r['grid']}^3 batch {r['batch']} {r['path']}: train "
                   f"{_f(r.get('train_events_per_s'), 2)} ev/s, infer "
                   f"{_f(r.get('infer_events_per_s'), 2)} ev/s, peak {_f(r.get('peak_mb'), 0)} MB")

    results = run(grid_list, batch_list, [p.strip() for p in paths.split(",") if p.strip()],
                  device=device, precision=precision, steps=steps, warmup=warmup,
                  max_seconds=max_seconds, threads=threads, model_config=model_config,
                  background_load=background_load, on_result=progress)
    show_table(regressor_speed_table(results))
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(results, indent=1) + "\n")


def mean_field_table(rows: list[dict[str, Any]]) -> Any:
    """The rows of :func:`~showerformer.benchmark.mean_field.mean_field_cost` as one
    :class:`~showerformer.commands.tables.ResultTable`."""
    from showerformer.commands.tables import ResultTable

    first = rows[0] if rows else {}
    table = ResultTable(
        f"mean-field vs full self-attention, one call on {first.get('device', 'cpu')} "
        f"({first.get('threads', '?')} thread{'' if first.get('threads') == 1 else 's'}; batch {first.get('batch', '?')}, width "
        f"{first.get('dim', '?')}, {first.get('n_heads', '?')} heads)",
        ["kind", "points", "fwd ms", "fwd+bwd ms", "fwd peak MB", "fwd+bwd peak MB",
         "scores MB*", "status"], left=frozenset({"kind", "status"}))

    def calls(n: Any) -> str:
        return " (warm-up)" if n == 0 else ""

    for r in rows:
        table.add_row(r["kind"], f"{r['points']:,}",
                      _f(r["forward_ms"], 2) + calls(r["forward_calls"]),
                      _f(r["backward_ms"], 2) + calls(r["backward_calls"]),
                      _f(r["forward_peak_mb"], 1), _f(r["backward_peak_mb"], 1),
                      _f(r["scores_mb"], 2), r["status"])
    if rows:
        table.notes.append(
            f"times: shortest of up to the requested timed calls after a warm-up ('(warm-up)': "
            f"that call alone, longer than the time cap); peak MB: {first['memory']} during one "
            "call; * analytic: the B*H*scores matrix of an unfused kernel (N^2 per head for "
            f"full attention, N for the mean field); {first['parameters']:,} parameters each")
    return table


@benchmark_app.command("mean-field", context_settings={"allow_extra_args": True})
def mean_field(
    ctx: typer.Context,
    points: Annotated[list[str] | None, typer.Option(
        help="Shower sizes, ascending: --points 1000 4000 16000 64000 (or comma-separated).")
                      ] = None,
    dim: Annotated[int, typer.Option(help="Channels of the points and the mean field.")] = 48,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 16,
    batch: Annotated[int, typer.Option(help="Showers per call.")] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    backward: Annotated[bool, typer.Option(
        "--backward/--no-backward", help="Also time forward + backward.")] = True,
    repeats: Annotated[int, typer.Option(help="Timed calls per measurement at most.")] = 3,
    time_cap: Annotated[float, typer.Option(
        help="Seconds per measurement after which no timed call starts; a kind whose call "
             "took longer is skipped at the larger sizes.")] = 10.0,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")
                       ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the rows to this JSON file.")
                   ] = None,
) -> None:
    """Time one mean-field attention call (one query per shower, linear in the points) against
    one full self-attention call (quadratic) at each shower size: forward, forward + backward
    and peak memory."""
    import json

    from showerformer._atomic import atomic_path
    from showerformer._paths import check_output_file
    from showerformer.benchmark.mean_field import mean_field_cost
    from showerformer.commands.tables import show_table
    from showerformer.errors import InputError
    from showerformer.training.config import check_device

    if ctx.args and points is None:
        raise InputError(f"unexpected argument {ctx.args[0]!r}", key="--points",
                         expected="point counts after --points")
    texts = [t for item in [*(points or []), *ctx.args] for t in item.split(",") if t.strip()]
    try:
        sizes = [int(t) for t in texts] if texts else [1000, 4000, 16000, 64000]
    except ValueError:
        raise InputError(f"{' '.join(texts)!r}", key="--points",
                         expected="positive integers") from None
    check_device(device)
    if threads is not None and threads < 1:
        raise InputError(f"{threads}", key="--threads", expected="at least 1 thread")
    if out is not None:
        out = check_output_file(out, option="--out")
    rows = mean_field_cost(sizes, dim, heads, batch, backward, repeats, time_cap, device=device,
                           threads=threads)
    show_table(mean_field_table(rows))
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(rows, indent=1) + "\n")


def energy_dependence_table(rows: list[dict[str, Any]], what: str) -> Any:
    """Hits and mean radius per incident-energy bin, reference against generated."""
    from showerformer.commands.tables import ResultTable

    t = ResultTable(f"hits and radius per incident energy ({what}; radius: energy-weighted mean "
                    "distance from the axis)",
                    ["energy", "showers", "hits ref", "hits gen", "hits sep. power",
                     "radius ref mm", "radius gen mm", "radius gen/ref - 1"],
                    left=frozenset({"energy"}))
    for r in rows:
        rel = r.get("radius_rel_diff")
        t.add_row(r["bin"], f"{r['n']:,}", _f(r.get("hits_ref"), 1), _f(r.get("hits_gen"), 1),
                  _f(r.get("hits_separation")), _f(r.get("radius_ref"), 1),
                  _f(r.get("radius_gen"), 1), "-" if rel is None else f"{100 * rel:+.1f} %")
    return t


def sampler_tables(summary: dict[str, Any]) -> list[Any]:
    """The sampler benchmark's tables: quality against network evaluations, speed, and the
    energy dependence of every sampler."""
    from showerformer.commands.tables import ResultTable

    def pm(row: dict[str, Any], key: str) -> str:
        v, e = row.get(key), row.get(f"{key}_err")
        return _f(v) if e is None or v is None else f"{_f(v)} ± {_f(e)}"

    q = ResultTable(f"{summary['family']} samplers vs {summary['n_showers']:,} held-out showers "
                    f"({summary['device']}, {summary['torch_threads']} threads)",
                    ["sampler", "steps", "evaluations", "AUC high", "FPD x1e3", "KPD x1e3",
                     "mean sep. power", "hits sep. (top bin)", "radius gen/ref - 1 (top bin)",
                     "generate ms/shower"], left=frozenset({"sampler"}))
    speed = ResultTable("sampling speed per sampler (count model included)",
                        ["sampler", "steps", "batch", "ms/shower", "+ voxels ms/shower"],
                        left=frozenset({"sampler"}))
    for r in summary["samplers"]:
        ev, top = r["evaluation"], (r.get("energy_dependence") or [{}])[-1]
        rel = top.get("radius_rel_diff")
        steps = "default" if r["steps"] is None else str(r["steps"])
        q.add_row(r["sampler"], steps, _f(r.get("evaluations"), 0), pm(ev, "auc_high"),
                  pm(ev, "fpd_x1e3"), pm(ev, "kpd_x1e3"), _f(ev.get("separation_mean")),
                  _f(top.get("hits_separation")), "-" if rel is None else f"{100 * rel:+.1f} %",
                  _f(r["generate_ms_per_shower"]))
        for s in r.get("speed", []):
            speed.add_row(r["sampler"], steps, f"{s['batch']:,}", _f(s["ms_per_shower"]),
                          _f(s.get("ms_per_shower_voxelized")))
    return [q, speed]


@benchmark_app.command("samplers")
def samplers(
    checkpoint: Annotated[Path, typer.Argument(help="Run folder or checkpoint of a point-cloud "
                                                    "generator.")],
    data: Annotated[Path, typer.Option("--data", help="Held-out voxel showers (e.g. the "
                                                      "ds2_test.h5 of benchmark point-flow).")],
    out: Annotated[Path, typer.Option(help="Output folder (samplers.json, reports).")
                   ] = Path("benchmark_samplers"),
    sampler: Annotated[list[str] | None, typer.Option(
        "--sampler", help="NAME:STEPS or NAME, repeatable (default: pc:50, pc:100, pc:200, "
                          "pc:500, euler:8, euler:16, euler:32, adaptive).")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Held-out showers to generate (default: "
                                                      "all; at least 250 with a classifier).")
                 ] = None,
    speed_batches: Annotated[str, typer.Option(
        help="Comma-separated batch sizes of the speed test ('' to skip).")] = "1,100",
    classifier: Annotated[str, typer.Option(help="cpu, full or none.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Quality (AUC, FPD, KPD, separation powers, hits and radius per energy) and speed of a
    generator's samplers against their number of network evaluations."""
    from rich.console import Console

    from showerformer.benchmark.samplers import run_sampler_benchmark
    from showerformer.commands.tables import ResultTable, show_table
    from showerformer.errors import InputError

    try:
        batches = [int(x) for x in speed_batches.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{speed_batches!r}", key="--speed-batches",
                         expected="comma-separated integers") from None
    console = Console()
    kwargs = {} if not sampler else {"samplers": sampler}
    summary = run_sampler_benchmark(checkpoint, data, out, n_showers=n, speed_batches=batches,
                                    classifier=classifier, seed=seed, device=device,
                                    say=lambda msg: console.rule(msg, style="dim"), **kwargs)
    tables = sampler_tables(summary)
    for r in summary["samplers"]:
        label = r["sampler"] + ("" if r["steps"] is None else f":{r['steps']}")
        tables.append(energy_dependence_table(r["energy_dependence"], label))
    for t in tables:
        if isinstance(t, ResultTable):
            show_table(t, console)
