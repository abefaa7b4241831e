"""The training loop shared by every model family: AMP, clipping, EMA, checkpoints, resume, DDP.

A family plugs in through the contract of :mod:`showerformer.models.family`: the default step is
``loss(batch) -> backward -> clip -> optimizer step``; a family that needs more (a GAN's
alternating critic and generator updates) supplies ``configure_optimizers`` and
``training_step(batch, step, optimizers)``, and may supply ``validation_metric`` to pick the best
checkpoint. The loop is deterministic: the data order depends only on ``(seed, epoch)``
(:class:`~showerformer.training.data.EpochBatchSampler`), every random state is saved in the
checkpoints, and a resumed run reproduces the uninterrupted one bit for bit on the same hardware.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from showerformer._atomic import atomic_path
from showerformer._paths import check_output_dir, disk_full_error
from showerformer.errors import InputError, OutputError, ShowerformerError
from showerformer.training import checkpoint as ckpt
from showerformer.training.config import PRECISIONS, TrainConfig
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
from showerformer.training.log import RunLog
from showerformer.training.optim import WarmupCosine, build_optimizer, clip_grad_norm, warmup_cosine

__all__ = [
    "Optimizers",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "autocast_dtype",
    "check_run_folder",
    "seed_everything",
]


class TrainingError(ShowerformerError):
    """Training cannot go on (e.g. a non-finite loss); the message says where."""



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


def _metric(metrics: Any, key: str, owner: str) -> Tensor:
    """``metrics[key]`` of a ``training_step`` as a detached 0-d tensor."""
    if not isinstance(metrics, Mapping) or key not in metrics:
        raise TypeError(f"{owner}.training_step() must return a dict with {key!r}")
    value = metrics[key]
    if isinstance(value, Tensor):
        return value.detach().reshape(()).double()
    return torch.tensor(float(value), dtype=torch.float64)


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


class Optimizers(Sequence[torch.optim.Optimizer]):
    """The optimizers of a run, handed to a family's ``training_step``.

    Index them by position or by name (``optimizers["critic"]``). :meth:`step` performs one
    update of one optimizer the way the default step does (zero the gradients, backward,
    average the gradients over the processes under torchrun, clip, step) and returns the
    gradient norm before clipping.

    Arguments:
        optimizers: the optimizers, in the order of ``configure_optimizers``.
        names: one name each (default ``"0"``, ``"1"``, ...).
        grad_clip: clip each optimizer's gradient norm to this (None: no clipping).
        env: the process group (gradients are averaged over it when it has several ranks).
        device_type: the autocast device type; backward runs outside autocast.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer],
                 names: Sequence[str] | None = None, *, grad_clip: float | None = None,
                 env: DistEnv | None = None, device_type: str = "cpu") -> None:
        self._optimizers = list(optimizers)
        self.names = [str(n) for n in (names or range(len(self._optimizers)))]
        if len(self.names) != len(self._optimizers) or len(set(self.names)) != len(self.names):
            raise ValueError("one distinct name per optimizer expected")
        self.grad_clip = grad_clip
        self.env = env or DistEnv()
        self.device_type = device_type
        self.grad_norms: dict[str, Tensor] = {}
        self._pending = [False] * len(self._optimizers)

    def __len__(self) -> int:
        return len(self._optimizers)

    def __getitem__(self, which: int | str) -> torch.optim.Optimizer:  # type: ignore[override]
        return self._optimizers[self.index(which)]

    def index(self, which: int | str) -> int:
        """Position of an optimizer given by position or name."""
        if isinstance(which, str):
            try:
                return self.names.index(which)
            except ValueError:
                raise KeyError(f"no optimizer named {which!r} (have {self.names})") from None
        return int(which)

    @staticmethod
    def trainable(optimizer: torch.optim.Optimizer) -> list[Tensor]:
        """The parameters of ``optimizer`` that require gradients."""
        return [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]

    def step(self, loss: Tensor, which: int | str = 0, *, retain_graph: bool = False,
             update: bool = True) -> Tensor:
        """Back-propagate ``loss`` for optimizer ``which`` and, with ``update``, update it;
        returns the gradient norm of the update (0 while gradients are being accumulated).

        Gradients left on the parameters by an earlier backward (e.g. the generator's
        parameters after the critic's loss) are cleared first, so each update sees only its
        own losses. With ``update=False`` the gradients are kept and the next call adds to them
        (gradient accumulation over several batches; scale the losses accordingly).
        """
        i = self.index(which)
        opt = self._optimizers[i]
        params = self.trainable(opt)
        if not self._pending[i]:
            opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device_type, enabled=False):
            loss.backward(retain_graph=retain_graph)
        if not update:
            self._pending[i] = True
            return torch.zeros(())
        self._pending[i] = False
        if self.env.world_size > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(all_reduce_sum(p.grad, self.env) / self.env.world_size)
        gnorm = clip_grad_norm(params, self.grad_clip)
        opt.step()
        self.grad_norms[self.names[i]] = gnorm.detach()
        return gnorm


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
    """Train any model family (see :mod:`showerformer.models.family`).

    The default step is ``loss(batch) -> backward -> clip -> step`` with one AdamW over the
    trainable parameters. A family may instead supply ``configure_optimizers(train_config)``
    (optimizers, or a mapping name -> optimizer) and ``training_step(batch, step, optimizers)
    -> dict[str, float | Tensor]`` (it must report ``"loss"``; further keys are logged when the
    family lists them in ``log_metrics``); the step runs under the configured autocast and
    updates through :meth:`Optimizers.step`. Every optimizer follows the warmup + cosine
    schedule, scaled to the learning rate of each of its groups. A family with
    ``validation_metric(batches) -> float`` (lower is better) picks the best checkpoint and
    early stopping by it instead of the mean validation loss. Parameters with
    ``requires_grad=False`` (a frozen sub-model) are left out of the default optimizer and of
    gradient clipping, and still saved in every checkpoint.

    Arguments:
        model: the network; its ``loss`` / ``training_step`` gets a dict of tensors (already on
            the device).
        train_dataset: a map-style dataset of dict items.
        val_dataset: validation data (None: no validation, no early stopping).
        config: the training settings.
        collate_fn: builds a batch dict from a list of items (default: the dataset's
            ``collate_fn`` attribute if any, else torch's ``default_collate``).
        val_collate_fn: the same for the validation data (default: as for training).
        progress: show a rich progress bar (main process only).
        metadata: JSON-ready data stored in every checkpoint (e.g. where the data came from).
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
        TypeError: a model with neither ``loss`` nor ``training_step``.
    """

    def __init__(self, model: nn.Module, train_dataset: Dataset, val_dataset: Dataset | None,
                 config: TrainConfig, collate_fn: Callable[[list[Any]], Any] | None = None, *,
                 val_collate_fn: Callable[[list[Any]], Any] | None = None, progress: bool = True,
                 metadata: Mapping[str, Any] | None = None, verbose: bool | None = None,
                 batch_sampler: Callable[..., Any] | None = None,
                 run_config: Mapping[str, Any] | None = None) -> None:
        self.custom_step = callable(getattr(model, "training_step", None))
        if not (self.custom_step or callable(getattr(model, "loss", None))):
            raise TypeError(f"{type(model).__name__} has neither loss(batch) nor "
                            "training_step(batch, step, optimizers)")
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
        self.optimizers: Optimizers | None = None
        self.ema: EMA | None = None
        self.schedule = WarmupCosine(config.lr, config.warmup_steps, self.total_steps,
                                     config.min_lr_ratio)
        self._last_saved: Path | None = None
        self._last_saved_step = -1
        self._log: RunLog | None = None

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The first (for most families the only) optimizer; None before :meth:`fit`."""
        return None if self.optimizers is None else self.optimizers[0]

    def _build_optimizers(self) -> Optimizers:
        """The family's ``configure_optimizers`` (or one AdamW over the trainable parameters),
        each group remembering its peak learning rate as ``base_lr`` for the schedule."""
        cfg, model = self.config, self.model
        configure = getattr(model, "configure_optimizers", None)
        if callable(configure):
            made = configure(cfg)
            if isinstance(made, torch.optim.Optimizer):
                made = [made]
            if isinstance(made, Mapping):
                names, opts = [str(k) for k in made], list(made.values())
            else:
                opts = list(made)
                names = [str(i) for i in range(len(opts))]
            if not opts or not all(isinstance(o, torch.optim.Optimizer) for o in opts):
                raise TypeError(f"{type(model).__name__}.configure_optimizers() must return "
                                "optimizers (a list or a name -> optimizer mapping)")
        else:
            opts = [build_optimizer(model, cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.eps)]
            names = ["0"]
        for opt in opts:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
        return Optimizers(opts, names, grad_clip=cfg.grad_clip, env=self.env,
                          device_type=self.device.type)

    def _apply_schedule(self, step: int) -> float:
        """Set every group's learning rate for update ``step``: ``base_lr`` times the warmup +
        cosine factor; returns the first group's."""
        assert self.optimizers is not None
        cfg = self.config
        factor = warmup_cosine(step, cfg.warmup_steps, self.total_steps, cfg.min_lr_ratio)
        first = None
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group.get("base_lr", cfg.lr) * factor
                first = group["lr"] if first is None else first
        return float(first if first is not None else cfg.lr * factor)

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
            "preprocessing": self._data_state(),
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
        if self.optimizers is not None and len(self.optimizers) > 1:
            info["optimizer_names"] = list(self.optimizers.names)
        return info

    def _data_state(self) -> Any:
        """What the checkpoint stores as ``preprocessing``: the family's fitted state
        (``data_state()``), or the ``preprocessing`` entry of ``metadata`` for a model that
        has none."""
        state = getattr(self.model, "data_state", None)
        own = state() if callable(state) else None
        return own if own else self.metadata.get("preprocessing")

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
                                        info=info, optimizer=self.optimizers, ema=self.ema,
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
        assert self.optimizers is not None
        self._check_resumable(ckpt.read_checkpoint_info(folder), folder / ckpt.CHECKPOINT_JSON)
        info = ckpt.load_training_state(folder, self.model, list(self.optimizers), self.ema,
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
        names = list(self.optimizers.names) if self.optimizers is not None else ["0"]
        saved_names = info.get("optimizer_names") or ["0"]
        if len(saved_names) != len(names):
            raise InputError(f"{len(saved_names)} optimizer(s) in the checkpoint, {len(names)} "
                             "now", path=jpath, key="optimizer_names",
                             expected="the optimizers of the run being resumed")
        wanted = [("model", ckpt.MODEL_FILE)] + [(ckpt.optimizer_key(i), None)
                                                 for i in range(len(names))]
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
        """The validation score (EMA weights when enabled; lower is better).

        The family's ``validation_metric(batches)`` when it has one, computed by the main
        process over the whole validation set and shared with the others; otherwise the mean
        validation loss, where every sample counts once: each process takes an interleaved share
        of the validation set and the per-sample sums are added over the processes. None when
        there is no validation data, or the family has neither a metric nor a ``loss``.
        """
        if self.val_dataset is None or len(self.val_dataset) == 0:  # type: ignore[arg-type]
            return None
        net = self.ema.module if self.ema is not None else self.model
        if callable(getattr(net, "validation_metric", None)):
            return self._validation_metric(net)
        if not callable(getattr(net, "loss", None)):
            return None
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

    def _validation_metric(self, net: nn.Module) -> float:
        """``net.validation_metric`` over all validation batches, on the main process."""
        value = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.env.is_main:
            n = len(self.val_dataset)  # type: ignore[arg-type]
            size = self.config.val_batch_size or self.config.batch_size
            loader = DataLoader(self.val_dataset,  # type: ignore[arg-type]
                                batch_sampler=_Chunks(np.arange(n, dtype=np.int64), size),
                                collate_fn=self.val_collate_fn, generator=torch.Generator())
            dt = autocast_dtype(self.config.precision, self.device)
            was_training = net.training
            net.eval()
            try:
                with torch.no_grad(), self._autocast(dt):
                    got = net.validation_metric(  # type: ignore[operator]
                        _to_device(b, self.device) for b in loader)
            finally:
                net.train(was_training)
            value += float(got)
        value = float(all_reduce_sum(value, self.env).item())
        if not math.isfinite(value):
            raise TrainingError(f"non-finite validation metric at step {self.step}")
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
        self.optimizers = self._build_optimizers()
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        # everything that can refuse the run is checked before the first write
        check_run_folder(self.out_dir, resume, overwrite=overwrite)
        barrier(env)
        info = self._resume(resume) if resume else None
        self._log = log = RunLog(self.out_dir, env.is_main, cfg.tensorboard, self._say,
                                 extra_columns=tuple(getattr(model, "log_metrics", ())))
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
        # the default step runs through DDP's wrapper; a family's own step averages its
        # gradients in Optimizers.step
        net = None if self.custom_step else wrap_ddp(_LossModule(model), env)
        try:
            stopped_early, interrupted = self._loop(net, log, stop_at_step)
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

    def _loop(self, net: nn.Module | None, log: RunLog,
              stop_at_step: int | None) -> tuple[bool, bool]:
        cfg, env, model = self.config, self.env, self.model
        assert self.optimizers is not None
        optimizer = self.optimizers[0]
        extra = tuple(getattr(model, "log_metrics", ()))
        win_extra = {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in extra}
        n = len(self.train_dataset)  # type: ignore[arg-type]
        dt = autocast_dtype(cfg.precision, self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        win_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        win_gnorm = torch.zeros((), dtype=torch.float64, device=self.device)
        win_steps = win_samples = 0
        win_time = 0.0
        lr = self.schedule(self.step)
        optimizers = self.optimizers
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
                    lr = self._apply_schedule(self.step)
                    batch = _to_device(batch, self.device)
                    if net is None:  # the family's own step
                        optimizers.grad_norms.clear()
                        with self._autocast(dt):
                            metrics = model.training_step(batch, self.step, optimizers)  # type: ignore[operator]
                        loss = _metric(metrics, "loss", type(model).__name__)
                        gnorm = (torch.stack([g.float().cpu() for g in
                                              optimizers.grad_norms.values()]).norm()
                                 if optimizers.grad_norms else torch.zeros(()))
                        for k in extra:
                            win_extra[k] += _metric(metrics, k, type(model).__name__).to(
                                win_extra[k].device, torch.float64)
                    else:
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
                                              win_time, lr, win_extra)
                        log.row(row)
                        if bar is not None:
                            bar.update(task, completed=self.step, info=(
                                f"epoch {self.epoch} loss {row['loss']:.4g} lr {lr:.2e} "
                                f"{row['samples_per_s']:.0f} samples/s"))
                        win_loss.zero_()
                        win_gnorm.zero_()
                        for v in win_extra.values():
                            v.zero_()
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
                   seconds: float, lr: float,
                   win_extra: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
        extra = dict(win_extra or {})
        both = all_reduce_sum(torch.stack([win_loss, win_gnorm, *extra.values()]), self.env)
        scale = steps * self.env.world_size
        loss = float(both[0].item()) / scale
        gnorm = float(both[1].item()) / scale
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite training loss at step {self.step} (epoch "
                                f"{self.epoch}); lower lr or enable grad_clip")
        row = {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr,
               "grad_norm": gnorm, "samples_per_s": samples / max(seconds, 1e-9),
               "val_loss": None, "best_val_loss": self.best_val_loss}
        for i, key in enumerate(extra):
            row[key] = float(both[2 + i].item()) / scale
        return row

    def _validate_and_log(self, log: RunLog) -> bool:
        value = self.validate()
        if value is None:
            return False
        improved = self._after_validation(value)
        log.row({"step": self.step, "epoch": self.epoch, "val_loss": value,
                 "best_val_loss": self.best_val_loss})
        return improved
