"""Run configs: YAML loading, the ``train:`` settings, ``--set`` overrides and option checks.

Configs are checked by hand-written dataclass checks (:func:`~showerformer.models.config.coerce_value`)
rather than a schema library: every error is one line naming the file, the dotted key and what was
expected, and the same checks serve the model configs, the training settings and the command line.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from showerformer.errors import InputError
from showerformer.models.config import coerce_value

__all__ = [
    "PRECISIONS",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "check_count",
    "check_device",
    "check_enough_samples",
    "check_max_steps",
    "check_setting",
    "check_val_fraction",
    "load_run_config",
    "load_yaml",
    "parse_override",
]

PRECISIONS = ("fp32", "bf16", "auto")

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


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.shower.layer_window=2"`` -> ``(["model", "shower", "layer_window"], 2)``.

    The value is read as a YAML scalar or flow collection (``2``, ``3e-4``, ``null``,
    ``true``, ``[24, 48]``, ``{a: 1}``); the key is a dotted path whose first part is a section
    of the run config (``model``, ``train`` or ``data``).

    Raises:
        InputError: naming ``--set`` when the text has no ``=``, the key no section or an empty
            part, or the value is not valid YAML.
    """
    import yaml

    key, sep, value = str(text).partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not sep or len(parts) < 2 or not all(parts) or parts[0] not in _RUN_SECTIONS:
        raise InputError(f"{text!r}", key="--set",
                         expected="KEY=VALUE with a dotted key below model., train. or data. "
                                  "(e.g. model.d_model=64, train.lr=1e-3)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise InputError(f"{text!r}: the value is not valid YAML", key="--set",
                         expected="a YAML value, e.g. 64, 3e-4, null, true or [24, 48]") from None
    return parts, parsed


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the run-config mapping ``raw`` with every ``--set KEY=VALUE`` applied in order.

    Intermediate sections are created when missing (``--set model.shower.layer_window=2``
    works on a config without ``shower:``); the result is checked later like a config file.

    Raises:
        InputError: a malformed override (see :func:`parse_override`), or one that goes through
            a value that is not a mapping, naming ``--set``.
    """
    import copy

    out: dict[str, Any] = copy.deepcopy(dict(raw))
    for text in overrides:
        parts, value = parse_override(text)
        node: dict[str, Any] = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[:depth + 1])
                raise InputError(f"{text!r}: {where} is {child!r}, not a section", key="--set",
                                 expected=f"a key below a mapping (set {where}=... instead)")
            node = child
        node[parts[-1]] = value
    return out


def load_run_config(source: str | os.PathLike[str] | Mapping[str, Any],
                    data_keys: tuple[str, ...] | None = None,
                    overrides: Sequence[str] = ()) -> RunConfig:
    """Read and check a run config from a YAML file or a mapping of the same layout.

    Arguments:
        source: YAML path or dict ``{"model": {"family": ..., **overrides}, "train": {...},
            "data": {...}}``.
        data_keys: the allowed keys of the ``data:`` section (None: any).
        overrides: ``KEY=VALUE`` texts of ``--set`` (see :func:`apply_overrides`), applied
            before any check.

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
    if overrides:
        raw = apply_overrides(raw, overrides)
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
