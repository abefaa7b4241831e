"""Training commands: ``showerformer train regressor`` and ``showerformer predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["predict", "regressor", "train_app"]


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
                               "no --val-data (default: the config's, else 0.1).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder for log.csv and checkpoints/ (default: the config's "
                            "train.out_dir).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the run folder's last checkpoint (a fresh run starts "
                         "when there is none).")] = False,
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
                             resume=resume, max_steps=max_steps, device=device,
                             progress=progress)
    if result.checkpoint is not None:  # rank 0 only under torchrun
        best = ("-" if result.best_val_loss is None else f"{result.best_val_loss:.5g}")
        how = ("early stopping" if result.stopped_early else "done")
        typer.echo(f"{how}: {result.step} steps, {result.epoch} epochs, best validation loss "
                   f"{best}; checkpoint {result.checkpoint}; log {result.out_dir / 'log.csv'}")


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
) -> None:
    """Predict the regression target of every event of a file with a trained checkpoint."""
    from showerformer.training.regressor import predict_file

    s = predict_file(checkpoint, data, out, batch_size=batch_size, device=device,
                     which="best" if best else "last", ema=not no_ema)
    line = (f"wrote {s['events']:,} predictions ({s['quantity']} in {s['unit']}, "
            f"{s['weights']} weights of {s['checkpoint']}) to {s['path']}")
    if "mae" in s:
        line += f"; MAE {s['mae']:.4g} {s['unit']}, RMSE {s['rmse']:.4g} {s['unit']}"
    typer.echo(line)


train_app = typer.Typer(name="train", help="Train a model family on a data file.",
                        no_args_is_help=True)
"""The ``train`` command group (``app.add_typer(train_app, name="train")``)."""
train_app.command("regressor")(regressor)
