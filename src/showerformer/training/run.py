"""One training entry point for every model family: config + data file -> checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from showerformer.errors import InputError
from showerformer.training.config import (
    RunConfig,
    check_device,
    check_enough_samples,
    check_max_steps,
    check_val_fraction,
    load_run_config,
)
from showerformer.training.datasets import DATA_KINDS, read_data_settings
from showerformer.training.trainer import Trainer, TrainResult, check_run_folder

__all__ = ["family_class", "train"]


def family_class(run: RunConfig) -> type:
    """The registered class of ``run.family``.

    Raises:
        InputError: an unknown family, naming the config file and ``model.family``.
    """
    from showerformer.models import get_model_class

    try:
        return get_model_class(run.family)
    except InputError as exc:
        raise InputError(exc.what, path=run.path, key="model.family",
                         expected=exc.expected) from None


def train(
    config: str | os.PathLike[str] | Mapping[str, Any],
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Sequence[str] = (),
    val_data: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
    init_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train the family a run config names on a data file.

    Steps, each checked before the next and all before the first write: read the config with
    the ``--set`` overrides; look up the family; check the ``data:`` settings against the
    family's data kind and its own keys; check the run folder; read the data; build the model
    with ``from_data`` (which fits the preprocessing the model keeps); train with the shared
    :class:`~showerformer.training.trainer.Trainer`.

    Arguments:
        config: YAML path or mapping with ``model:`` (``family:`` and the keys of its config),
            ``train:`` (:class:`~showerformer.training.config.TrainConfig`) and ``data:``.
        data: training file, in a format the family's data kind reads.
        out_dir: run folder (overrides ``train.out_dir``).
        overrides: ``KEY=VALUE`` texts (``--set model.d_model=64``), applied to the config
            before any check.
        val_data: separate validation file.
        val_fraction: held-out share of ``data`` without ``val_data`` (default: the config's,
            else the data kind's).
        resume: continue from the run folder's last checkpoint.
        overwrite: replace the checkpoints of an earlier run in the run folder.
        max_steps: overrides ``train.max_steps``.
        device: overrides ``train.device``.
        progress: show the progress bar.
        stop_at_step: interrupt (with a checkpoint) after this many steps, as a preempted job.
        init_from: start from the weights of this checkpoint (or run folder) of the same family
            and network sizes (fine-tuning, e.g. a ds2 model on ds3); the preprocessing is
            fitted on the new data, the optimizer and schedule start afresh.

    Returns:
        The :class:`~showerformer.training.trainer.TrainResult`.

    Raises:
        InputError: a bad option, config value (naming the config file and the key) or data
            file (naming the file and the key), all before training starts; damaged or
            incompatible checkpoints with ``resume``.
        OutputError: an unusable run folder, or a fresh run into a folder with checkpoints.
    """
    check_val_fraction(val_fraction)
    check_max_steps(max_steps)
    run = load_run_config(config, overrides=overrides)
    cls = family_class(run)
    train_cfg = run.train.with_overrides(out_dir=out_dir, max_steps=max_steps, device=device)
    if device is not None:
        check_device(device)
    else:
        check_device(train_cfg.device, "train.device", run.path)
    load_data = getattr(cls, "load_data", None)
    kind = None if callable(load_data) else DATA_KINDS.get(cls.data_kind)
    if kind is None and not callable(load_data):
        raise InputError(f"data kind {cls.data_kind!r} of family '{run.family}'", path=run.path,
                         key="model.family", expected="a family whose data kind is one of "
                         + ", ".join(DATA_KINDS))
    settings = read_data_settings(kind, getattr(cls, "data_keys", {}), run.data, run.path,
                                  family=run.family)
    check_run_folder(train_cfg.out_dir, resume, overwrite=overwrite)
    init_weights = _init_weights(init_from, run.family, resume) if init_from is not None else None
    if val_data is not None:
        settings["val_fraction"] = None
    elif val_fraction is not None:
        settings["val_fraction"] = float(val_fraction)
    loader = load_data if callable(load_data) else kind.load  # type: ignore[union-attr]
    train_ds, val_ds = loader(data, val_data, settings, train_cfg.seed)
    check_enough_samples(len(train_ds), train_cfg, data, run.path)
    torch.manual_seed(train_cfg.seed)  # reproducible initial weights
    try:
        model = cls.from_data(run.model, train_ds, settings, val=val_ds)
    except InputError as exc:
        if exc.path is not None:  # about a data file: it names the file already
            raise
        raise InputError(exc.what, path=run.path, key=f"model.{exc.key}",
                         expected=exc.expected) from None
    if init_weights is not None:
        from showerformer.training.checkpoint import load_weights

        load_weights(model, init_weights)
    described = kind.describe(train_ds, val_ds) if kind is not None else {
        "n_train": len(train_ds), "n_val": 0 if val_ds is None else len(val_ds)}
    metadata = {
        "data": {"train": str(data), "val": None if val_data is None else str(val_data),
                 "val_fraction": settings["val_fraction"], **described},
        "run_config": str(run.path) if run.path else None,
        "init_from": None if init_weights is None else str(init_weights.parent),
    }
    resolved = {"model": {"family": run.family, **model.config.to_dict()},
                "train": train_cfg.to_dict(), "data": dict(settings)}
    trainer = Trainer(model, train_ds, val_ds, train_cfg, model.collate_fn(settings),
                      progress=progress, metadata=metadata,
                      batch_sampler=model.batch_sampler(train_ds, settings),
                      run_config=resolved)
    return trainer.fit(resume=resume, stop_at_step=stop_at_step, overwrite=overwrite)


def _init_weights(init_from: str | os.PathLike[str], family: str, resume: bool) -> Any:
    """The weights file of ``init_from`` after checking that it holds the same family.

    Raises:
        InputError: ``--init-from`` together with ``--resume``, no checkpoint there, or one of
            another family, naming ``--init-from`` or the checkpoint's JSON.
    """
    from showerformer.training.checkpoint import (
        CHECKPOINT_JSON,
        MODEL_FILE,
        read_checkpoint_info,
        resolve_checkpoint,
    )

    if resume:
        raise InputError("--init-from together with --resume", key="--init-from",
                         expected="one of them: --resume continues a run, --init-from starts "
                                  "a new one from other weights")
    folder = resolve_checkpoint(init_from)
    info = read_checkpoint_info(folder)
    if info.get("family") != family:
        raise InputError(f"a '{info.get('family')}' checkpoint", path=folder / CHECKPOINT_JSON,
                         key="family", expected=f"a '{family}' checkpoint for --init-from")
    return folder / (info.get("files") or {}).get("model", MODEL_FILE)
