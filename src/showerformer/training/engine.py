"""The trainer shared by every model family: AMP, clipping, EMA, checkpoint/resume, DDP, logs.

The model contract is a single method, ``model.loss(batch: dict[str, Tensor]) -> Tensor``
(a scalar, the mean over the batch). The loop is deterministic: the data order depends only on
``(seed, epoch)`` (:class:`~showerformer.training.data.EpochBatchSampler`), every random state
is saved in the checkpoints, and a resumed run reproduces the uninterrupted one bit for bit on
the same hardware.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import numbers
import os
import random
import shutil
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from showerformer._atomic import atomic_path
from showerformer._paths import check_output_dir, disk_full_error
from showerformer.errors import InputError, OutputError, ShowerformerError
from showerformer.models.config import coerce_value
from showerformer.training import checkpoint as ckpt
from showerformer.training.data import EpochBatchSampler
from showerformer.training.distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
    wrap_ddp,
)
from showerformer.training.ema import EMA
from showerformer.training.optim import WarmupCosine, build_optimizer, clip_grad_norm

__all__ = [
    "LOG_COLUMNS",
    "PRECISIONS",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "autocast_dtype",
    "check_count",
    "check_device",
    "check_enough_samples",
    "check_max_steps",
    "check_run_folder",
    "check_setting",
    "check_val_fraction",
    "load_run_config",
    "load_yaml",
    "seed_everything",
]

PRECISIONS = ("fp32", "bf16", "auto")
LOG_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "val_loss",
               "best_val_loss")
"""Columns of ``log.csv``: training rows leave ``val_loss`` empty, validation rows the
training columns (``epoch`` is 0-based; a validation row's is the epoch just finished)."""


class TrainingError(ShowerformerError):
    """Training cannot go on (e.g. a non-finite loss); the message says where."""


# ---------------------------------------------------------------------------- configuration


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML file's top-level mapping (an empty file gives ``{}``).

    Raises:
        InputError: a missing file, a YAML syntax error or a top level that is not a mapping.
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path=p,
                         expected="a YAML config file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"YAML syntax error{where}", path=p, expected="valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"top level is a {type(data).__name__}", path=p,
                         expected="a mapping of sections (model:, train:, data:)")
    return data


def check_setting(value: Any, tp: Any, key: str,
                  path: str | os.PathLike[str] | None = None) -> Any:
    """A config value checked against the simple annotation ``tp`` and converted where
    lossless (see :func:`~showerformer.models.config.coerce_value`).

    Raises:
        InputError: naming ``path`` (the config file) and ``key``.
    """
    try:
        return coerce_value(value, tp, key)
    except InputError as exc:
        raise InputError(exc.what, path=path, key=key, expected=exc.expected) from None


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (the ``train:`` section of a YAML config).

    Attributes:
        lr: peak learning rate.
        min_lr_ratio: floor of the cosine decay as a fraction of ``lr``.
        weight_decay: AdamW decoupled decay of the linear / conv weights (norms, biases,
            LayerScale gains, embeddings and learned tokens are exempt).
        betas: Adam moment coefficients.
        eps: Adam denominator floor.
        warmup_steps: linear warmup length in optimizer steps.
        max_steps: stop after this many steps (None: ``epochs`` decides).
        epochs: stop after this many epochs (None: ``max_steps`` decides); with both the
            earlier stop wins. The cosine reaches its floor at the stop.
        batch_size: global batch size (split equally over the processes under torchrun).
        val_batch_size: validation / prediction batch size per process (None: ``batch_size``).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"`` (bf16 on CUDA when the GPU
            supports it, fp32 otherwise).
        ema_decay: keep an exponential moving average of the weights (None: off); validation
            and prediction then use the averaged weights.
        checkpoint_every: save every this many steps (None: only at improvements and the end).
        keep_checkpoints: keep the newest this many checkpoint folders (the best is never
            deleted).
        val_every: validate every this many steps (None: at the end of every epoch).
        early_stopping_patience: stop after this many validations without improvement of the
            validation loss (None: off).
        seed: seed of the data order, dropout and every other random step.
        num_workers: data-loader worker processes.
        log_every: write a log row every this many steps.
        out_dir: run folder (``log.csv``, ``checkpoints/``, ``tensorboard/``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        tensorboard: also log to TensorBoard when it is installed.
    """

    lr: float = 3e-4
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 32
    val_batch_size: int | None = None
    grad_clip: float | None = 1.0
    precision: str = "auto"
    ema_decay: float | None = None
    checkpoint_every: int | None = 1000
    keep_checkpoints: int = 3
    val_every: int | None = None
    early_stopping_patience: int | None = None
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    out_dir: str = "runs/train"
    device: str = "auto"
    tensorboard: bool = True

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> InputError:
            return InputError(f"{key}={getattr(self, key)!r}", key=key, expected=expected)

        if self.max_steps is None and self.epochs is None:
            raise bad("max_steps", "max_steps or epochs (or both) to be set")
        for key in ("max_steps", "epochs", "checkpoint_every", "val_every", "val_batch_size",
                    "early_stopping_patience"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise bad(key, "a positive integer or null")
        if not self.lr > 0:
            raise bad("lr", "a positive learning rate")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise bad("min_lr_ratio", "a fraction in [0, 1]")
        if self.weight_decay < 0:
            raise bad("weight_decay", "a non-negative number")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", "a non-negative integer")
        if self.batch_size < 1:
            raise bad("batch_size", "a positive integer")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "a positive norm or null")
        if self.precision not in PRECISIONS:
            raise bad("precision", " or ".join(PRECISIONS))
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "a decay in [0, 1) or null")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", "at least 1")
        if self.num_workers < 0:
            raise bad("num_workers", "a non-negative integer")
        if self.seed < 0:
            raise bad("seed", "a non-negative integer")
        if self.log_every < 1:
            raise bad("log_every", "a positive integer")

    def to_dict(self) -> dict[str, Any]:
        """JSON / YAML-ready dictionary (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None,
                  section: str | None = None) -> TrainConfig:
        """Build from a mapping, checking keys and value types.

        Arguments:
            data: ``{field: value}``; missing fields keep their defaults.
            path: the file the mapping came from (named in errors).
            section: the section name, prefixed to keys in errors (e.g. ``"train"``).

        Raises:
            InputError: an unknown key or a value of the wrong type or range, naming the file
                and the key.
        """
        p = None if path is None else Path(path)
        prefix = f"{section}." if section else ""
        if not isinstance(data, Mapping):
            raise InputError(f"a {type(data).__name__}", path=p, key=section or "train",
                             expected="a mapping of training settings")
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for key, value in data.items():
            if key not in hints:
                raise InputError("unknown setting", path=p, key=f"{prefix}{key}",
                                 expected="one of " + ", ".join(known))
            values[key] = check_setting(value, hints[key], f"{prefix}{key}", p)
        try:
            return cls(**values)
        except InputError as exc:
            raise InputError(exc.what, path=p, key=f"{prefix}{exc.key}",
                             expected=exc.expected) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], section: str | None = "train") -> TrainConfig:
        """Read the ``section`` of a YAML file (the whole file when ``section`` is None)."""
        data = load_yaml(path)
        if section is not None:
            data = data.get(section) or {}
        return cls.from_dict(data, path=path, section=section)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (validated)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, *, out_dir: str | os.PathLike[str] | None = None,
                       max_steps: int | None = None, device: str | None = None) -> TrainConfig:
        """A copy with the command line's ``--out``, ``--max-steps`` and ``--device`` applied
        (None leaves a setting as configured)."""
        changes: dict[str, Any] = {}
        if out_dir is not None:
            changes["out_dir"] = str(out_dir)
        if max_steps is not None:
            changes["max_steps"] = int(max_steps)
        if device is not None:
            changes["device"] = device
        return self.replace(**changes) if changes else self


@dataclass(frozen=True)
class RunConfig:
    """A whole YAML run config: ``model:`` (family + config overrides), ``train:`` and ``data:``.

    Attributes:
        family: the model family (registry name).
        model: config overrides of the family (the keys of its config dataclass).
        train: the training settings.
        data: data settings (e.g. ``target_key``, ``target_scale``, ``val_fraction``).
        path: the file it was read from, if any.
    """

    family: str
    model: dict[str, Any]
    train: TrainConfig
    data: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


_RUN_SECTIONS = ("model", "train", "data")


def load_run_config(source: str | os.PathLike[str] | Mapping[str, Any],
                    data_keys: tuple[str, ...] | None = None) -> RunConfig:
    """Read and check a run config from a YAML file or a mapping of the same layout.

    Arguments:
        source: YAML path or dict ``{"model": {"family": ..., **overrides}, "train": {...},
            "data": {...}}``.
        data_keys: the allowed keys of the ``data:`` section (None: any).

    Raises:
        InputError: unknown sections or keys, a missing family, wrong value types, naming the
            file and the key.
    """
    path = None
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        raw = load_yaml(path)
    for key in raw:
        if key not in _RUN_SECTIONS:
            raise InputError("unknown section", path=path, key=str(key),
                             expected="one of " + ", ".join(_RUN_SECTIONS))
    model = raw.get("model") or {}
    if not isinstance(model, Mapping):
        raise InputError(f"a {type(model).__name__}", path=path, key="model",
                         expected="a mapping with 'family' and config overrides")
    model = dict(model)
    family = model.pop("family", None)
    if not isinstance(family, str) or not family:
        raise InputError("no model family", path=path, key="model.family",
                         expected="a registered family name, e.g. particle-cnn-transformer")
    train = TrainConfig.from_dict(raw.get("train") or {}, path=path, section="train")
    data = raw.get("data") or {}
    if not isinstance(data, Mapping):
        raise InputError(f"a {type(data).__name__}", path=path, key="data",
                         expected="a mapping of data settings")
    if data_keys is not None:
        for key in data:
            if key not in data_keys:
                raise InputError("unknown setting", path=path, key=f"data.{key}",
                                 expected="one of " + ", ".join(data_keys))
    return RunConfig(family=family, model=model, train=train, data=dict(data),
                     path=None if path is None else str(path))


# ---------------------------------------------------------------------------- run folders


def check_run_folder(out_dir: str | os.PathLike[str],
                     resume: bool | str | os.PathLike[str] = False, *,
                     overwrite: bool = False) -> Path | None:
    """Check a run folder before any work, reading only.

    The folder must be (or become) a writable directory. A fresh run must not silently replace
    the checkpoints of an earlier run: into a folder that holds any (see
    :func:`~showerformer.training.checkpoint.has_checkpoints`) it is refused unless
    ``overwrite`` (then :meth:`Trainer.fit` deletes them once every check has passed). With
    ``resume=True`` the checkpoint pointers must read cleanly (see
    :func:`~showerformer.training.checkpoint.resume_folder`); only a folder without any
    checkpoint starts fresh.

    Arguments:
        out_dir: the run folder (``--out``).
        resume: as in :meth:`Trainer.fit`.
        overwrite: a fresh run may replace the checkpoints of an earlier one.

    Returns:
        The checkpoint folder a resumed run continues from (None: a fresh run, or ``resume``
        names a checkpoint elsewhere).

    Raises:
        OutputError: the folder cannot be used, or a fresh run would replace checkpoints.
        InputError: damaged checkpoint pointers of a resumed run (naming the file and the
            key), or ``resume`` together with ``overwrite``.
    """
    if resume is not False and resume is not None and overwrite:
        raise InputError("--resume together with --overwrite", key="--overwrite",
                         expected="one of them: --resume continues the run, --overwrite "
                                  "replaces it")
    out = check_output_dir(out_dir, option="--out")
    root = check_output_dir(out / "checkpoints", option="--out")
    if resume is False or resume is None:
        if ckpt.has_checkpoints(root) and not overwrite:
            found = ckpt.list_checkpoints(root)
            what = (f"holds the checkpoints of an earlier run (up to {found[-1].name})"
                    if found else "holds checkpoint files of an earlier run")
            raise OutputError(what, path=out, option="--out",
                              expected="--resume to continue that run, --overwrite to replace "
                                       "it, or another --out")
        return None
    if resume is True:
        return ckpt.resume_folder(root)
    return None


def check_device(device: str | None, key: str = "--device",
                 path: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`InputError` naming ``key`` (the option, or ``train.device`` of the config
    file ``path``) unless ``device`` names a device of this machine (see
    :func:`~showerformer.training.distributed.resolve_device`)."""
    from showerformer.training.distributed import resolve_device

    try:
        resolve_device(device)
    except InputError as exc:
        raise InputError(exc.what, path=path, key=key, expected=exc.expected) from None


def check_val_fraction(val_fraction: float | None, *, path: str | os.PathLike[str] | None = None,
                       key: str = "--val-fraction") -> None:
    """Raise :class:`InputError` unless ``val_fraction`` is None or in [0, 1) (0: no
    validation); errors name ``key`` (the option, or ``data.val_fraction`` of ``path``)."""
    if val_fraction is None:
        return
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float)
            or not 0.0 <= float(val_fraction) < 1.0):
        raise InputError(f"{val_fraction!r}", path=path, key=key,
                         expected="a fraction in [0, 1): the held-out share of the data "
                                  "(0: no validation)")


def check_count(value: Any, key: str, expected: str, *, minimum: int = 1,
                path: str | os.PathLike[str] | None = None) -> int:
    """``value`` as an ``int`` when it is a whole number (Python or NumPy integer, not a bool)
    of at least ``minimum``.

    Raises:
        InputError: naming ``key`` (an option such as ``--n``, or a config key of ``path``)
            and saying what was ``expected``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{value!r}", path=path, key=key, expected=expected)
    return int(value)


def check_max_steps(max_steps: int | None) -> None:
    """Raise :class:`InputError` naming ``--max-steps`` unless None or a positive integer."""
    if max_steps is not None:
        check_count(max_steps, "--max-steps", "a positive number of optimizer steps")


def check_enough_samples(n: int, config: TrainConfig, data: str | os.PathLike[str] | None,
                         config_path: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`InputError` naming the data file when ``n`` training samples do not fill
    one batch: the trainer drops incomplete batches, so not a single step could run."""
    if n < config.batch_size:
        where = f" of {config_path}" if config_path else ""
        raise InputError(f"{n} training samples, fewer than train.batch_size="
                         f"{config.batch_size}{where}", path=data, key="showers",
                         expected="at least one full batch (more data, a smaller validation "
                                  "share or a smaller train.batch_size)")


# ---------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global state user code may draw from)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``"auto"`` is bf16 on a CUDA device that supports it and fp32 elsewhere; ``"bf16"`` is bf16
    autocast on CUDA and on CPU.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r}", key="precision",
                         expected=" or ".join(PRECISIONS))
    if precision == "fp32":
        return None
    cuda = device.type == "cuda"
    supported = cuda and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if supported else None
    if cuda and not supported:
        raise InputError("bf16 requested on a GPU without bf16 support", key="precision",
                         expected="fp32 or auto")
    return torch.bfloat16


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, Tensor) else v
            for k, v in batch.items()}


def _batch_size(batch: Mapping[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, Tensor) and v.ndim > 0:
            return int(v.shape[0])
    return 1


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (JSON-normalised values: tuples become lists)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(v, default=str))
    return out


class _LossModule(nn.Module):
    """Makes ``model.loss(batch)`` the forward pass, so DDP's gradient hooks see it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.model.loss(batch)


class _Chunks(torch.utils.data.Sampler[list[int]]):
    """Consecutive chunks of a fixed index list (validation batches of one rank)."""

    def __init__(self, indices: np.ndarray, size: int) -> None:
        self.indices, self.size = indices, int(size)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.size)

    def __iter__(self) -> Iterator[list[int]]:
        for a in range(0, len(self.indices), self.size):
            yield self.indices[a:a + self.size].tolist()


class _RunLog:
    """``log.csv`` (always) and TensorBoard (when importable) of the main process."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool,
                 say: Callable[[str], None]) -> None:
        self.path = out_dir / "log.csv"
        self.enabled = enabled
        self.rows_written = 0
        self.history: list[dict[str, Any]] = []
        self._tb: Any = None
        self._tb_wanted = tensorboard and enabled
        self._tb_dir = out_dir / "tensorboard"
        self._say = say

    def read(self, keep_rows: int | None) -> list[list[str]]:
        """The first ``keep_rows`` rows of an existing log (those a resumed run keeps: the
        rows written before its checkpoint); nothing for a fresh run.

        Raises:
            InputError: an existing log that cannot be read as CSV text.
        """
        if not (self.enabled and keep_rows and self.path.is_file()):
            return []
        try:
            with open(self.path, newline="") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read the run log ({type(exc).__name__})", path=self.path,
                             expected="the CSV log written by the trainer") from None
        if rows and rows[0] != list(LOG_COLUMNS):
            raise InputError(f"header {','.join(rows[0])[:80]!r}", path=self.path,
                             key="header", expected=",".join(LOG_COLUMNS))
        return rows[1:keep_rows + 1]

    def start(self, rows: list[list[str]]) -> None:
        """Write the log afresh with ``rows`` (from :meth:`read`) under the header."""
        if not self.enabled:
            return
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(LOG_COLUMNS)
            w.writerows(rows)
        self.rows_written = len(rows)
        if self._tb_wanted:
            try:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=str(self._tb_dir))
            except ImportError:
                self._say("TensorBoard is not installed: logging to log.csv only")

    def row(self, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.history.append(dict(values))
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow(["" if values.get(c) is None else values[c]
                                     for c in LOG_COLUMNS])
        self.rows_written += 1
        if self._tb is not None:
            step = int(values["step"])
            for key in ("loss", "lr", "grad_norm", "samples_per_s", "val_loss"):
                if values.get(key) is not None:
                    tag = ("val/" if key == "val_loss" else "train/") + key
                    self._tb.add_scalar(tag, float(values[key]), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did.

    Attributes:
        step: optimizer steps taken in total.
        epoch: completed epochs.
        best_val_loss: best validation loss (None without validation).
        last_val_loss: the latest validation loss.
        stopped_early: early stopping ended the run.
        interrupted: ``stop_at_step`` ended the run before the configured end.
        checkpoint: the last checkpoint folder written (None if none).
        out_dir: the run folder.
        history: the log rows written by this process (rank 0 only).
    """

    step: int
    epoch: int
    best_val_loss: float | None
    last_val_loss: float | None
    stopped_early: bool
    interrupted: bool
    checkpoint: Path | None
    out_dir: Path
    history: list[dict[str, Any]]


# ---------------------------------------------------------------------------- trainer


class Trainer:
    """Train any model with a ``loss(batch) -> Tensor`` method.

    Arguments:
        model: the network; its ``loss`` gets a dict of tensors (already on the device).
        train_dataset: a map-style dataset of dict items.
        val_dataset: validation data (None: no validation, no early stopping).
        config: the training settings.
        collate_fn: builds a batch dict from a list of items (default: the dataset's
            ``collate_fn`` attribute if any, else torch's ``default_collate``).
        val_collate_fn: the same for the validation data (default: as for training).
        progress: show a rich progress bar (main process only).
        metadata: JSON-ready data stored in every checkpoint, e.g. ``{"preprocessing": ...}``.
        verbose: print notes (resume, TensorBoard missing, early stop); default ``progress``.
        batch_sampler: factory of the training batch sampler with the signature of
            :class:`~showerformer.training.data.EpochBatchSampler` (``n, batch_size, *, seed,
            epoch, start, rank, world_size``); e.g. a ``functools.partial`` of
            :class:`~showerformer.data.batching.BucketBatchSampler`. Its order must
            depend only on ``(seed, epoch)`` for exact resumption.
        run_config: JSON-ready resolved run config, written to ``run_config.json`` in the run
            folder once :meth:`fit` has checked the folder (None: no such file).

    Raises:
        InputError: fewer training samples than one batch.
    """

    def __init__(self, model: nn.Module, train_dataset: Dataset, val_dataset: Dataset | None,
                 config: TrainConfig, collate_fn: Callable[[list[Any]], Any] | None = None, *,
                 val_collate_fn: Callable[[list[Any]], Any] | None = None, progress: bool = True,
                 metadata: Mapping[str, Any] | None = None, verbose: bool | None = None,
                 batch_sampler: Callable[..., Any] | None = None,
                 run_config: Mapping[str, Any] | None = None) -> None:
        if not callable(getattr(model, "loss", None)):
            raise TypeError(f"{type(model).__name__} has no loss(batch) method")
        self.run_config = None if run_config is None else dict(run_config)
        self.model = model
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.config = config
        self.collate_fn = collate_fn or getattr(train_dataset, "collate_fn", None)
        self.val_collate_fn = (val_collate_fn or getattr(val_dataset, "collate_fn", None)
                               or self.collate_fn)
        self.progress = progress
        self.verbose = progress if verbose is None else verbose
        self.metadata = dict(metadata or {})
        self.batch_sampler = batch_sampler or EpochBatchSampler
        self.out_dir = Path(config.out_dir)
        self.checkpoint_root = self.out_dir / "checkpoints"
        n = len(train_dataset)  # type: ignore[arg-type]
        self.batches_per_epoch = n // config.batch_size
        if self.batches_per_epoch < 1:
            raise InputError(f"{n} training samples for batch_size={config.batch_size}",
                             key="batch_size", expected="at most the number of training samples")
        limits = []
        if config.max_steps is not None:
            limits.append(config.max_steps)
        if config.epochs is not None:
            limits.append(config.epochs * self.batches_per_epoch)
        self.total_steps = min(limits)
        self._reset_state()
        self.env = DistEnv()
        self.device = torch.device("cpu")
        self.optimizer: torch.optim.Optimizer | None = None
        self.ema: EMA | None = None
        self.schedule = WarmupCosine(config.lr, config.warmup_steps, self.total_steps,
                                     config.min_lr_ratio)
        self._last_saved: Path | None = None
        self._last_saved_step = -1
        self._log: _RunLog | None = None

    def _reset_state(self) -> None:
        """The loop position and validation bookkeeping of a fresh run."""
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.samples_seen = 0
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.bad_validations = 0

    # -- messages -----------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if self.verbose and self.env.is_main:
            from rich.console import Console

            Console(stderr=True).print(message, markup=False, highlight=False)

    # -- checkpoints --------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        model = self.model
        config = getattr(model, "config", None)
        info: dict[str, Any] = {
            "family": getattr(model, "family", None),
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
            "preprocessing": self.metadata.get("preprocessing"),
            "train_config": self.config.to_dict(),
            "metadata": {k: v for k, v in self.metadata.items() if k != "preprocessing"},
            "state": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "batches_per_epoch": self.batches_per_epoch,
                "total_steps": self.total_steps,
                "samples_seen": self.samples_seen,
                "best_val_loss": self.best_val_loss,
                "last_val_loss": self.last_val_loss,
                "bad_validations": self.bad_validations,
                "log_rows": self._log.rows_written if self._log is not None else 0,
                "scheduler": self.schedule.state_dict(),
                "world_size": self.env.world_size,
            },
        }
        return info

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Write a checkpoint of the current state (collective under DDP; rank 0 writes).

        Returns:
            The folder on rank 0, None on the other ranks.
        """
        rng = all_gather_objects(ckpt.capture_rng_state(), self.env)
        path = None
        if self.env.is_main:
            info = self._info()
            info["rng"] = rng
            path = ckpt.save_checkpoint(self.checkpoint_root, self.step, model=self.model,
                                        info=info, optimizer=self.optimizer, ema=self.ema,
                                        keep=self.config.keep_checkpoints, best=best)
            self._last_saved = path
        self._last_saved_step = self.step
        barrier(self.env)
        return path

    def _resume(self, resume: bool | str | os.PathLike[str]) -> dict[str, Any] | None:
        """Load the checkpoint to resume from; returns its info (None: nothing to resume)."""
        if resume is True:
            found = ckpt.resume_folder(self.checkpoint_root)
            if found is None:
                self._say(f"no checkpoint in {self.checkpoint_root}: starting a fresh run")
                return None
            folder = found
        else:
            folder = ckpt.resolve_checkpoint(resume)
        assert self.optimizer is not None
        self._check_resumable(ckpt.read_checkpoint_info(folder), folder / ckpt.CHECKPOINT_JSON)
        info = ckpt.load_training_state(folder, self.model, self.optimizer, self.ema,
                                        self.device)
        state = info["state"]
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.samples_seen = int(state.get("samples_seen", 0))
        self.best_val_loss = state.get("best_val_loss")
        self.last_val_loss = state.get("last_val_loss")
        self.bad_validations = int(state.get("bad_validations", 0))
        self._last_saved = folder
        self._last_saved_step = self.step
        self._say(f"resuming from {folder} (step {self.step}, epoch {self.epoch}, batch "
                  f"{self.batch_in_epoch} of {self.batches_per_epoch})")
        return info

    def _check_resumable(self, info: Mapping[str, Any], jpath: Path) -> None:
        """Raise :class:`InputError` (naming ``jpath`` and the key) unless the checkpoint
        belongs to this model and its loop state and random states are complete."""
        family = getattr(self.model, "family", None)
        if family is not None and info.get("family") != family:
            raise InputError(f"a '{info.get('family')}' checkpoint", path=jpath, key="family",
                             expected=f"'{family}', the model being trained")
        config = getattr(self.model, "config", None)
        if hasattr(config, "resolved_dict") and hasattr(config, "from_dict"):
            saved = info.get("model_config")
            if not isinstance(saved, dict):
                raise InputError("no model config", path=jpath, key="model_config",
                                 expected="the config of the model being trained")
            try:  # the checkpoint's config, checked like a config file
                theirs = type(config).from_dict(saved).resolved_dict()
            except InputError as exc:
                raise InputError(exc.what, path=jpath, key=f"model_config.{exc.key}",
                                 expected=exc.expected) from None
            a, b = _flat(theirs), _flat(config.resolved_dict())
            for key in sorted(set(a) | set(b)):
                if a.get(key, "<unset>") != b.get(key, "<unset>"):
                    raise InputError(
                        f"{a.get(key, '<unset>')!r} in the checkpoint, "
                        f"{b.get(key, '<unset>')!r} in this run", path=jpath,
                        key=f"model_config.{key}",
                        expected="the model config of the run being resumed (or another --out "
                                 "for a new run)")
        state = info.get("state")
        if not isinstance(state, dict):
            raise InputError("no training state", path=jpath, key="state",
                             expected="the loop position written by the trainer")
        for key, required in (("step", True), ("epoch", True), ("batch_in_epoch", True),
                              ("batches_per_epoch", True), ("samples_seen", False),
                              ("bad_validations", False), ("log_rows", False)):
            value = state.get(key)
            if value is None and not required:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{value!r}", path=jpath, key=f"state.{key}",
                                 expected="a non-negative integer")
        for key in ("best_val_loss", "last_val_loss"):
            value = state.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise InputError(f"{value!r}", path=jpath, key=f"state.{key}",
                                 expected="a number or null")
        if state["batches_per_epoch"] != self.batches_per_epoch:
            raise InputError(
                f"{state['batches_per_epoch']} batches per epoch in the checkpoint, "
                f"{self.batches_per_epoch} now", path=jpath, key="state.batches_per_epoch",
                expected="the same training data and batch_size as the run being resumed")
        if state["batch_in_epoch"] > self.batches_per_epoch:
            raise InputError(f"{state['batch_in_epoch']}", path=jpath, key="state.batch_in_epoch",
                             expected=f"at most {self.batches_per_epoch} batches per epoch")
        folder = jpath.parent
        files = info.get("files") or {}
        wanted = [("model", ckpt.MODEL_FILE), ("optimizer", None)]
        if self.ema is not None:
            wanted.append(("ema", None))
        for key, default in wanted:
            name = files.get(key, default)
            if name is None:
                raise InputError(f"no {key} file listed", path=jpath, key=f"files.{key}",
                                 expected="a checkpoint written during training"
                                 + (" with ema_decay set" if key == "ema" else ""))
            if not (folder / name).is_file():
                raise InputError(f"missing weights file {name}", path=jpath, key=f"files.{key}",
                                 expected=f"{folder / name} beside checkpoint.json")
        ckpt.check_rng_states(info.get("rng"), jpath)

    # -- validation ---------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean validation loss over all validation samples (EMA weights when enabled).

        Every sample counts once: each process takes an interleaved share of the validation
        set and the per-sample sums are added over the processes.
        """
        if self.val_dataset is None or len(self.val_dataset) == 0:  # type: ignore[arg-type]
            return None
        net = self.ema.module if self.ema is not None else self.model
        was_training = net.training
        net.eval()
        n = len(self.val_dataset)  # type: ignore[arg-type]
        mine = np.arange(self.env.rank, n, self.env.world_size, dtype=np.int64)
        size = self.config.val_batch_size or self.config.batch_size
        loader = DataLoader(self.val_dataset, batch_sampler=_Chunks(mine, size),
                            collate_fn=self.val_collate_fn, num_workers=self.config.num_workers,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator())
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        dt = autocast_dtype(self.config.precision, self.device)
        try:
            for batch in loader:
                batch = _to_device(batch, self.device)
                with self._autocast(dt):
                    loss = net.loss(batch)
                b = _batch_size(batch)
                total += loss.detach().double() * b
                count += b
        finally:
            net.train(was_training)
        total = all_reduce_sum(total, self.env)
        count = all_reduce_sum(count, self.env)
        value = float((total / count.clamp_min(1)).item())
        if not math.isfinite(value):
            raise TrainingError(f"non-finite validation loss at step {self.step}")
        return value

    def _autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _after_validation(self, value: float) -> bool:
        """Update the best loss and the early-stopping counter; True when improved."""
        self.last_val_loss = value
        if self.best_val_loss is None or value < self.best_val_loss:
            self.best_val_loss = value
            self.bad_validations = 0
            return True
        self.bad_validations += 1
        return False

    def _should_stop_early(self) -> bool:
        p = self.config.early_stopping_patience
        return p is not None and self.val_dataset is not None and self.bad_validations >= p

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, resume: bool | str | os.PathLike[str] = False, *,
            stop_at_step: int | None = None, overwrite: bool = False) -> TrainResult:
        """Train until ``max_steps`` / ``epochs`` or early stopping.

        The run folder is checked before anything is written (see :func:`check_run_folder`):
        a fresh run never replaces the checkpoints of an earlier one, and a resumed run whose
        checkpoint metadata is damaged or belongs to another model stops with an error that
        names the file and the key, leaving every file of the run folder as it was.

        Arguments:
            resume: continue from the latest checkpoint of ``out_dir`` (True; a fresh run
                starts only when the folder holds no checkpoint at all) or from a given
                checkpoint path.
            stop_at_step: interrupt after this many steps in total, writing a checkpoint, as a
                preempted job would; the schedule is unchanged, so resuming later continues
                exactly as the uninterrupted run.
            overwrite: a fresh run deletes the checkpoints of an earlier run in ``out_dir``
                (after every check has passed) instead of refusing to start.

        Returns:
            A :class:`TrainResult`.

        Raises:
            InputError: damaged or incompatible checkpoint metadata when resuming.
            OutputError: a fresh run into a folder with checkpoints, an unusable run folder, or
                a disk that became full (the earlier checkpoints stay intact).
            TrainingError: a non-finite loss.
        """
        cfg = self.config
        owns_group = not torch.distributed.is_initialized()
        self.env = init_distributed(cfg.device)
        owns_group = owns_group and torch.distributed.is_initialized()
        try:
            try:
                result = self._fit(resume, stop_at_step, overwrite)
            except OSError as exc:
                err = disk_full_error(exc, self.out_dir)
                if err is None:
                    raise
                raise err from exc
        except BaseException:
            if owns_group:
                cleanup_distributed()
            raise
        if owns_group:  # a group this call created ends with it
            import gc

            gc.collect()  # free the DDP wrapper (it holds the group) before destroying it
            barrier(self.env)
            cleanup_distributed()
        return result

    def _fit(self, resume: bool | str | os.PathLike[str], stop_at_step: int | None,
             overwrite: bool = False) -> TrainResult:
        cfg, env = self.config, self.env
        self._reset_state()
        self._last_saved, self._last_saved_step = None, -1
        self.device = env.device
        model = self.model.to(self.device)
        seed_everything(cfg.seed + env.rank)
        self.optimizer = optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay,
                                                     tuple(cfg.betas), cfg.eps)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        # everything that can refuse the run is checked before the first write
        check_run_folder(self.out_dir, resume, overwrite=overwrite)
        barrier(env)
        info = self._resume(resume) if resume else None
        self._log = log = _RunLog(self.out_dir, env.is_main, cfg.tensorboard, self._say)
        kept = log.read(int(info["state"].get("log_rows", 0)) if info else None)
        if env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if overwrite and not resume and self.checkpoint_root.is_dir():
                self._say(f"replacing the checkpoints in {self.checkpoint_root}")
                shutil.rmtree(self.checkpoint_root)
            ckpt.remove_stale_temporaries(self.checkpoint_root)
            if self.run_config is not None:
                with atomic_path(self.out_dir / "run_config.json") as tmp:
                    tmp.write_text(json.dumps(self.run_config, indent=1) + "\n")
            with atomic_path(self.out_dir / "train_config.json") as tmp:
                tmp.write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        log.start(kept)
        if info is not None:  # last: nothing below may draw random numbers before the loop
            states = list(info.get("rng") or [])
            if len(states) == env.world_size:
                ckpt.restore_rng_state(states[env.rank])
            elif states:
                self._say(f"checkpoint written by {len(states)} processes, resumed by "
                          f"{env.world_size}: random states restarted from rank 0's")
                ckpt.restore_rng_state(states[0])
        net = wrap_ddp(_LossModule(model), env)
        try:
            stopped_early, interrupted = self._loop(net, optimizer, log, stop_at_step)
            if self._last_saved_step != self.step:
                self.save_checkpoint()
        finally:
            log.close()
            del net
        barrier(env)
        return TrainResult(step=self.step, epoch=self.epoch, best_val_loss=self.best_val_loss,
                           last_val_loss=self.last_val_loss, stopped_early=stopped_early,
                           interrupted=interrupted, checkpoint=self._last_saved,
                           out_dir=self.out_dir, history=log.history)

    def _progress_bar(self) -> Any:
        if not (self.progress and self.env.is_main):
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
                        console=Console(stderr=True))

    def _loop(self, net: nn.Module, optimizer: torch.optim.Optimizer, log: _RunLog,
              stop_at_step: int | None) -> tuple[bool, bool]:
        cfg, env, model = self.config, self.env, self.model
        n = len(self.train_dataset)  # type: ignore[arg-type]
        dt = autocast_dtype(cfg.precision, self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        win_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        win_gnorm = torch.zeros((), dtype=torch.float64, device=self.device)
        win_steps = win_samples = 0
        win_time = 0.0
        lr = self.schedule(self.step)
        interrupted = False
        stopped_early = self._should_stop_early()  # a resumed run that had already stopped
        bar = self._progress_bar()
        task = None
        if bar is not None:
            bar.start()
            task = bar.add_task("training", total=self.total_steps, completed=self.step,
                                info="")
        try:
            while self.step < self.total_steps and not (stopped_early or interrupted):
                sampler = self.batch_sampler(n, cfg.batch_size, seed=cfg.seed, epoch=self.epoch,
                                             start=self.batch_in_epoch, rank=env.rank,
                                             world_size=env.world_size)
                loader = DataLoader(self.train_dataset, batch_sampler=sampler,
                                    collate_fn=self.collate_fn, num_workers=cfg.num_workers,
                                    pin_memory=self.device.type == "cuda",
                                    generator=torch.Generator().manual_seed(
                                        cfg.seed * 100_003 + self.epoch))
                model.train()
                t0 = time.perf_counter()  # a step's time includes fetching its batch
                for batch in loader:
                    lr = self.schedule.apply(optimizer, self.step)
                    batch = _to_device(batch, self.device)
                    with self._autocast(dt):
                        loss = net(batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    gnorm = clip_grad_norm(params, cfg.grad_clip)
                    optimizer.step()
                    if self.ema is not None:
                        self.ema.update(model)
                    self.step += 1
                    self.batch_in_epoch += 1
                    self.samples_seen += cfg.batch_size
                    win_loss += loss.detach().double()
                    win_gnorm += gnorm.detach().to(win_gnorm.device, torch.float64)
                    win_steps += 1
                    win_samples += cfg.batch_size
                    win_time += time.perf_counter() - t0

                    last = self.step >= self.total_steps
                    epoch_end = self.batch_in_epoch >= self.batches_per_epoch
                    # validate every val_every steps, and at the very end unless the
                    # end-of-epoch validation below covers it
                    val_due = self.val_dataset is not None and (
                        (cfg.val_every is not None and self.step % cfg.val_every == 0)
                        or (last and not (cfg.val_every is None and epoch_end)))
                    interrupted = stop_at_step is not None and self.step >= stop_at_step and not last
                    if self.step % cfg.log_every == 0 or val_due or last or interrupted:
                        row = self._train_row(win_loss, win_gnorm, win_steps, win_samples,
                                              win_time, lr)
                        log.row(row)
                        if bar is not None:
                            bar.update(task, completed=self.step, info=(
                                f"epoch {self.epoch} loss {row['loss']:.4g} lr {lr:.2e} "
                                f"{row['samples_per_s']:.0f} samples/s"))
                        win_loss.zero_()
                        win_gnorm.zero_()
                        win_steps = win_samples = 0
                        win_time = 0.0
                    elif bar is not None:
                        bar.update(task, completed=self.step)
                    improved = False
                    if val_due:
                        improved = self._validate_and_log(log)
                        stopped_early = self._should_stop_early()
                    periodic = (cfg.checkpoint_every is not None
                                and self.step % cfg.checkpoint_every == 0)
                    # the end of the last epoch is saved after its validation, below
                    if (periodic or improved or interrupted or stopped_early
                            or (last and not epoch_end)):
                        self.save_checkpoint(best=improved)
                    if last or interrupted or stopped_early:
                        break
                    t0 = time.perf_counter()  # validation and checkpoints are not steps
                if interrupted or stopped_early:
                    break
                if self.batch_in_epoch >= self.batches_per_epoch:
                    improved = False
                    if cfg.val_every is None and self.val_dataset is not None:
                        improved = self._validate_and_log(log)
                        stopped_early = self._should_stop_early()
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if improved or stopped_early or self.step >= self.total_steps:
                        self.save_checkpoint(best=improved)
        finally:
            if bar is not None:
                bar.stop()
        if stopped_early:
            self._say(f"early stopping at step {self.step}: no improvement of the validation "
                      f"loss in {self.bad_validations} validations (best {self.best_val_loss:.5g})")
        return stopped_early, interrupted

    def _train_row(self, win_loss: Tensor, win_gnorm: Tensor, steps: int, samples: int,
                   seconds: float, lr: float) -> dict[str, Any]:
        both = all_reduce_sum(torch.stack([win_loss, win_gnorm]), self.env)
        loss = float(both[0].item()) / (steps * self.env.world_size)
        gnorm = float(both[1].item()) / (steps * self.env.world_size)
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite training loss at step {self.step} (epoch "
                                f"{self.epoch}); lower lr or enable grad_clip")
        return {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr,
                "grad_norm": gnorm, "samples_per_s": samples / max(seconds, 1e-9),
                "val_loss": None, "best_val_loss": self.best_val_loss}

    def _validate_and_log(self, log: _RunLog) -> bool:
        value = self.validate()
        if value is None:
            return False
        improved = self._after_validation(value)
        log.row({"step": self.step, "epoch": self.epoch, "val_loss": value,
                 "best_val_loss": self.best_val_loss})
        return improved
