"""Training and inference commands: ``train`` (any family; ``train regressor`` and
``train point-flow`` are aliases), ``predict`` and ``sample``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["point_flow", "predict", "regressor", "sample", "train", "train_app"]


def _report(result: Any) -> None:
    """One line on a finished run (rank 0 only under torchrun: the others have no checkpoint)."""
    if result.checkpoint is not None:
        best = "-" if result.best_val_loss is None else f"{result.best_val_loss:.5g}"
        how = "early stopping" if result.stopped_early else "done"
        typer.echo(f"{how}: {result.step} steps, {result.epoch} epochs, best validation loss "
                   f"{best}; checkpoint {result.checkpoint}; log {result.out_dir / 'log.csv'}")


_RESUME_HELP = ("Continue the run in --out from its last checkpoint (a folder without any "
                "checkpoint starts fresh; damaged or mismatching checkpoint metadata is an error "
                "and changes nothing).")
_OVERWRITE_HELP = ("Start afresh in an --out that holds the checkpoints of an earlier run, "
                   "deleting them (without --resume or --overwrite such a folder is refused).")


def regressor(
    data: Annotated[Path, typer.Option(
        "--data", help="Training data: a sparse voxel HDF5 file (e.g. from "
                       "'showerformer simulate sandwich64').")],
    config: Annotated[Path, typer.Option(
        "--config", help="YAML run config with model:, train: and data: sections "
                         "(see configs/regressor_64.yaml).")],
    val_data: Annotated[Path | None, typer.Option(
        "--val-data", help="Separate validation file (default: hold out --val-fraction).")
    ] = None,
    val_fraction: Annotated[float | None, typer.Option(
        "--val-fraction", help="Seeded held-out share of --data for validation when there is "
                               "no --val-data, in [0, 1) (0: no validation; default: the "
                               "config's, else 0.1).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder for log.csv and checkpoints/ (default: the config's "
                            "train.out_dir).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help=_RESUME_HELP)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP)] = False,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", help="Stop after N optimizer steps (the schedule ends there too).")
    ] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N (default: the config's).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="Show a progress bar.")] = True,
) -> None:
    """Train a momentum regressor (e.g. ParticleCNNTransformer) on sparse voxel showers.

    Under torchrun (torchrun --nproc_per_node N -m showerformer train regressor ...) the global
    batch size is split over the processes; rank 0 writes the logs and checkpoints.
    """
    from showerformer.training.regressor import train_regressor

    result = train_regressor(data, config, out, val_data=val_data, val_fraction=val_fraction,
                             resume=resume, overwrite=overwrite, max_steps=max_steps,
                             device=device, progress=progress)
    _report(result)


def point_flow(
    data: Annotated[Path, typer.Option(
        "--data", help="Training showers: point clouds (e.g. 'showerformer simulate multi') or "
                       "voxels (CaloChallenge, Par04, sparse; dequantized to one point per "
                       "cell).")],
    config: Annotated[Path, typer.Option(
        "--config", help="YAML run config (see configs/point_flow_ds2.yaml).")],
    val_data: Annotated[Path | None, typer.Option(
        "--val-data", help="Separate validation file (default: hold out --val-fraction).")
    ] = None,
    val_fraction: Annotated[float | None, typer.Option(
        "--val-fraction", help="Seeded held-out share of --data, in [0, 1) (0: no "
                               "validation; default: the config's, else 0.05).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder (default: the config's train.out_dir).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help=_RESUME_HELP)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP)] = False,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", help="Stop after N optimizer steps (the schedule ends there too).")
    ] = None,
    max_showers: Annotated[int | None, typer.Option(
        "--max-showers", help="Read at most N >= 1 showers of each file.")] = None,
    layer_window: Annotated[str | None, typer.Option(
        "--layer-window", metavar="K|none",
        help="Attention only between points at most K >= 0 layers apart (layers q-K..q+K; "
             "overrides the config); 'none' (or -1): no limit.")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N (default: the config's).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="Show a progress bar.")] = True,
) -> None:
    """Train the point-cloud generator: PanShower (flow matching over points) with PointCountFM.

    One model for every particle type in the data. An alias of 'showerformer train' that
    refuses other families; --layer-window K is --set model.shower.layer_window=K and
    --max-showers N is --set data.max_showers=N.
    """
    from showerformer.errors import InputError
    from showerformer.training.config import check_count, load_run_config
    from showerformer.training.run import train as train_family

    overrides = []
    window = _layer_window(layer_window)
    if window is not None:
        overrides.append(f"model.shower.layer_window={'null' if window < 0 else window}")
    if max_showers is not None:
        check_count(max_showers, "--max-showers", "a positive number of showers")
        overrides.append(f"data.max_showers={max_showers}")
    run = load_run_config(config, overrides=overrides)
    if run.family != "point-flow":
        raise InputError(f"family '{run.family}'", path=run.path, key="model.family",
                         expected="'point-flow' (PanShower with PointCountFM)")
    result = train_family(config, data, out, overrides=overrides, val_data=val_data,
                          val_fraction=val_fraction, resume=resume, overwrite=overwrite,
                          max_steps=max_steps, device=device, progress=progress)
    _report(result)


def _layer_window(text: str | None) -> int | None:
    """``--layer-window``: None (as configured), ``"none"`` or ``"-1"`` (no limit: -1) or
    K >= 0."""
    from showerformer.errors import InputError

    if text is None:
        return None
    t = text.strip().lower()
    if t in ("none", "-1"):
        return -1
    if t.isdigit():
        return int(t)
    raise InputError(f"{text!r}", key="--layer-window",
                     expected="a number of layers K >= 0, or 'none' (also -1) for no limit")


def sample(
    checkpoint: Annotated[Path, typer.Argument(
        help="Checkpoint folder of any generator family, or a run folder (its last "
             "checkpoint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output HDF5 file.")
                   ] = Path("generated.h5"),
    n: Annotated[int, typer.Option("--n", "-n", help="Number of showers.")] = 1000,
    particle: Annotated[str | None, typer.Option(
        "--particle", help="e-, gamma, pi+, proton (or PDG ids), comma-separated for a mix "
                           "(default: the training particles).")] = None,
    energy: Annotated[str | None, typer.Option(
        "--energy", help="Incident energy in GeV: '50', a range '1-1000' (log-uniform unless "
                         "--spectrum) or a list '64,128,256' (default: the training range).")
    ] = None,
    spectrum: Annotated[str | None, typer.Option(
        "--spectrum", help="fixed, uniform, log-uniform or discrete.")] = None,
    theta: Annotated[str | None, typer.Option(
        "--theta", help="Polar angle in degrees, '90' or '70:90' (default: the training "
                        "range).")] = None,
    phi: Annotated[str | None, typer.Option(
        "--phi", help="Azimuth in degrees (default: the training range).")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="calochallenge (voxelized through the training geometry), "
                         "pointcloud, or auto (voxels when trained on voxels).")] = "auto",
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Steps of the family's sampler (point-flow: ODE steps, default 16; "
                        "score-diffusion: diffusion steps, default from its config).")] = None,
    sampler: Annotated[str | None, typer.Option(
        "--sampler", help="The family's sampler (point-flow: midpoint (default), heun, euler "
                          "or adaptive; score-diffusion: pc, euler-maruyama, or those four "
                          "for the probability-flow ODE).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Showers per network call (default: the family's).")] = None,
    temperature: Annotated[float | None, typer.Option(
        "--temperature", help="Token sampling temperature of an autoregressive family "
                              "(vq-prior; 0: greedy; default: its config's).")] = None,
    top_k: Annotated[int | None, typer.Option(
        "--top-k", help="Keep the k most probable tokens (vq-prior).")] = None,
    top_p: Annotated[float | None, typer.Option(
        "--top-p", help="Nucleus filter: the most probable tokens holding this share "
                        "(vq-prior).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of conditions and noise.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
                      ] = "auto",
    best: Annotated[bool, typer.Option(
        "--best", help="With a run folder: the best-validation checkpoint.")] = False,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Use the raw weights.")] = False,
) -> None:
    """Generate showers with a trained generator of any family (the checkpoint names it)."""
    from showerformer.generation import sample_file

    s = sample_file(checkpoint, out, n=n, particle=particle, energy=energy, spectrum=spectrum,
                    theta=theta, phi=phi, format=fmt, seed=seed, steps=steps, sampler=sampler,
                    batch_size=batch_size, temperature=temperature, top_k=top_k, top_p=top_p,
                    device=device, ema=not no_ema, which="best" if best else "last")
    points = "" if s["mean_points"] is None else f", {s['mean_points']:.1f} points on average"
    typer.echo(f"wrote {s['showers']:,} showers ({s['format']}{points}, {s['family']}) to "
               f"{s['path']} in {s['seconds']:.1f} s ({s['ms_per_shower']:.2f} ms/shower, "
               f"{s['weights']} weights)")
    if s.get("outside"):
        typer.echo(f"note: {s['outside']} fell outside the cells of the geometry and are not "
                   "in the voxels (--format pointcloud keeps every point)")


def predict(
    checkpoint: Annotated[Path, typer.Argument(
        help="Checkpoint folder, or a run folder (its last checkpoint).")],
    data: Annotated[Path, typer.Option("--data", help="Sparse voxel HDF5 file to predict.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Predictions HDF5 file (true, pred; read by "
                            "'showerformer evaluate-regression').")] = Path("predictions.h5"),
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Events per batch (default: the run's).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
                      ] = "auto",
    best: Annotated[bool, typer.Option(
        "--best", help="With a run folder: use the best-validation checkpoint.")] = False,
    no_ema: Annotated[bool, typer.Option(
        "--no-ema", help="Use the raw weights even when the checkpoint has EMA weights.")
    ] = False,
    analysis: Annotated[bool, typer.Option(
        "--analysis", help="Also store the network's final CLS token and cross-scale attention "
                           "per event; 'evaluate-regression' plots them (PCA, block x scale).")
    ] = False,
) -> None:
    """Predict the regression target of every event of a file with a trained checkpoint."""
    from showerformer.training.regressor import predict_file

    s = predict_file(checkpoint, data, out, batch_size=batch_size, device=device,
                     which="best" if best else "last", ema=not no_ema, analysis=analysis)
    line = (f"wrote {s['events']:,} predictions ({s['quantity']} in {s['unit']}, "
            f"{s['weights']} weights of {s['checkpoint']}) to {s['path']}")
    if "mae" in s:
        line += f"; MAE {s['mae']:.4g} {s['unit']}, RMSE {s['rmse']:.4g} {s['unit']}"
    typer.echo(line)


def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML run config: model: (family: and its keys), train: and data: "
                         "(see configs/).")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Training data file, in a format the family reads (sparse voxels for "
                       "regressors; point clouds or voxels for point-cloud generators).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="Override one config value, e.g. --set model.d_model=64 --set train.lr=1e-3 "
             "--set model.shower.layer_window=null (repeatable; YAML values).")] = None,
    val_data: Annotated[Path | None, typer.Option(
        "--val-data", help="Separate validation file (default: hold out --val-fraction).")
    ] = None,
    val_fraction: Annotated[float | None, typer.Option(
        "--val-fraction", help="Seeded held-out share of --data, in [0, 1) (0: no validation; "
                               "default: the config's data.val_fraction).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder for log.csv and checkpoints/ (default: the config's "
                            "train.out_dir).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help=_RESUME_HELP)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP)] = False,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", help="Start from the weights of this checkpoint or run folder of the same "
                            "family and sizes (fine-tuning; the preprocessing is fitted on "
                            "--data).")] = None,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", help="Stop after N optimizer steps (the schedule ends there too).")
    ] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N (default: the config's).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="Show a progress bar.")] = True,
) -> None:
    """Train any model family: the config's model.family picks it, --set changes any value.

    Under torchrun (torchrun --nproc_per_node N -m showerformer train ...) the global batch is
    split over the processes; rank 0 writes the logs and checkpoints.
    """
    if ctx.invoked_subcommand is not None:
        return
    from showerformer.errors import InputError
    from showerformer.training.run import train as train_family

    for option, value in (("--config", config), ("--data", data)):
        if value is None:
            raise InputError("missing option", key=option,
                             expected="showerformer train --config FILE --data FILE")
    assert config is not None and data is not None
    result = train_family(config, data, out, overrides=tuple(set_ or ()), val_data=val_data,
                          val_fraction=val_fraction, resume=resume, overwrite=overwrite,
                          max_steps=max_steps, device=device, progress=progress,
                          init_from=init_from)
    _report(result)


train_app = typer.Typer(name="train", help="Train a model family on a data file.",
                        invoke_without_command=True, no_args_is_help=True)
"""The ``train`` command (``app.add_typer(train_app, name="train")``): generic through its
options; ``regressor`` and ``point-flow`` remain as aliases."""
train_app.callback()(train)
train_app.command("regressor", help="Alias of 'showerformer train' for regressor configs.")(
    regressor)
train_app.command("point-flow", help="Alias of 'showerformer train' for point-flow configs "
                  "(--layer-window is --set model.shower.layer_window=K).")(point_flow)
