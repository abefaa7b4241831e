"""Data kinds: how a family's training files become datasets, with their ``data:`` settings.

A family names its kind (``data_kind``); the generic run (:mod:`showerformer.training.run`) reads
the ``data:`` section against the kind's keys plus the family's own (``data_keys``), then loads
the training and validation datasets through the kind. Every setting is checked before any
file is read, and errors name the config file and ``data.<key>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from showerformer.errors import InputError
from showerformer.training.config import check_setting, check_val_fraction

__all__ = ["DATA_KINDS", "DataKind", "read_data_settings"]


@dataclass(frozen=True)
class DataKind:
    """A way of reading training files.

    Attributes:
        name: the ``data_kind`` families name.
        keys: the kind's settings of the ``data:`` section, ``{key: (type, default)}``.
        load: ``(data, val_data, settings, seed) -> (train, val or None)``.
        describe: ``(train, val) -> dict`` stored as the checkpoint's ``metadata.data``.
        minimum: per key, the smallest allowed value of integer settings.
    """

    name: str
    keys: dict[str, tuple[Any, Any]]
    load: Callable[..., tuple[Any, Any]]
    describe: Callable[[Any, Any], dict[str, Any]]
    minimum: dict[str, int]


def _load_sparse_voxels(data: str | os.PathLike[str], val_data: str | os.PathLike[str] | None,
                        settings: Mapping[str, Any], seed: int) -> tuple[Any, Any]:
    from showerformer.training.regressor import regression_datasets

    return regression_datasets(data, val_data=val_data, val_fraction=settings["val_fraction"],
                               target_key=settings["target_key"],
                               target_scale=settings["target_scale"], seed=seed,
                               in_memory=settings["in_memory"])


def _load_points(data: str | os.PathLike[str], val_data: str | os.PathLike[str] | None,
                 settings: Mapping[str, Any], seed: int) -> tuple[Any, Any]:
    from showerformer.training.point_flow import point_flow_datasets

    return point_flow_datasets(data, val_data=val_data, val_fraction=settings["val_fraction"],
                               seed=seed, max_showers=settings["max_showers"],
                               threshold=settings["threshold"])


def _describe_sparse_voxels(train: Any, val: Any) -> dict[str, Any]:
    return {"n_train": len(train), "n_val": 0 if val is None else len(val),
            "shape": list(train.shape)}


def _describe_points(train: Any, val: Any) -> dict[str, Any]:
    return {"n_train": len(train), "n_val": 0 if val is None else len(val),
            "mean_points": float(train.sizes.mean()) if len(train) else 0.0,
            "source_format": train.source_format}


DATA_KINDS: dict[str, DataKind] = {
    "sparse-voxels": DataKind(
        "sparse-voxels",
        {"val_fraction": (float, 0.1), "target_key": (str, "momentum"),
         "target_scale": (float, 1e-3), "in_memory": (bool, True)},
        _load_sparse_voxels, _describe_sparse_voxels, {}),
    "points": DataKind(
        "points",
        {"val_fraction": (float, 0.05), "max_showers": (int | None, None),
         "threshold": (float | None, None)},
        _load_points, _describe_points, {"max_showers": 1}),
}
"""The built-in data kinds: labelled voxel grids (regression) and point clouds (voxel files are
dequantized to one point per cell above the readout threshold)."""


def read_data_settings(kind: DataKind | None, family_keys: Mapping[str, tuple[Any, ...]],
                       data: Mapping[str, Any], path: str | os.PathLike[str] | None = None,
                       *, family: str = "") -> dict[str, Any]:
    """The ``data:`` section checked against the kind's and the family's keys, with defaults.

    ``family_keys`` maps a key to ``(type, default)`` or ``(type, default, minimum)``.

    Raises:
        InputError: an unknown key, a value of the wrong type, a ``val_fraction`` outside
            [0, 1), a negative threshold or an integer below its minimum, naming ``path`` and
            ``data.<key>``.
    """
    keys: dict[str, tuple[Any, ...]] = dict(kind.keys if kind is not None
                                            else {"val_fraction": (float, 0.1)})
    keys.update(family_keys)
    minimum = dict(kind.minimum if kind is not None else {})
    minimum.update({k: v[2] for k, v in family_keys.items() if len(v) > 2})
    for key in data:
        if key not in keys:
            owner = f" of {family}" if family else ""
            raise InputError("unknown setting", path=path, key=f"data.{key}",
                             expected=f"one of {', '.join(sorted(keys))} (the data settings"
                                      f"{owner})")
    out = {key: check_setting(data.get(key, spec[1]), spec[0], f"data.{key}", path)
           for key, spec in keys.items()}
    check_val_fraction(out["val_fraction"], path=path, key="data.val_fraction")
    for key, value in out.items():
        lowest = minimum.get(key)
        if lowest is not None and value is not None and value < lowest:
            raise InputError(f"{value!r}", path=path, key=f"data.{key}",
                             expected=f"an integer >= {lowest}")
    if out.get("threshold") is not None and out["threshold"] < 0:
        raise InputError(f"{out['threshold']!r}", path=path, key="data.threshold",
                         expected="a non-negative cell energy in MeV, or null for the "
                                  "geometry's readout threshold")
    if "target_scale" in out and not out["target_scale"] > 0:
        raise InputError(f"{out['target_scale']!r}", path=path, key="data.target_scale",
                         expected="a positive factor (1e-3: MeV -> GeV)")
    return out
