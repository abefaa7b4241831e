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

from showerformer.data.batching import size_sorted, split_indices
from showerformer.data.points import PointCloudDataset, load_point_dataset
from showerformer.errors import InputError
from showerformer.training.config import check_count, check_setting, check_val_fraction

__all__ = ["DATA_KINDS", "DataKind", "point_datasets", "read_data_settings", "voxel_datasets"]


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
    return point_datasets(data, val_data=val_data, val_fraction=settings["val_fraction"],
                          seed=seed, max_showers=settings["max_showers"],
                          threshold=settings["threshold"])


def point_datasets(
    data: str | os.PathLike[str],
    *,
    val_data: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    max_showers: int | None = None,
    threshold: float | None = None,
) -> tuple[PointCloudDataset, PointCloudDataset | None]:
    """Training and validation point clouds from shower files (voxels are dequantized).

    Arguments:
        data: training file, any format :func:`~showerformer.io.detect_format` knows.
        val_data: a separate validation file (takes precedence over ``val_fraction``).
        val_fraction: hold out this seeded share of ``data`` (0 or None: no validation).
        seed: seed of the split and the dequantization.
        max_showers: read at most this many showers from each file.
        threshold: voxel energy (MeV) that makes a point (default: the geometry's).

    Returns:
        ``(train, val)``; the validation showers are sorted by size (little padding).

    Raises:
        InputError: a file without showers, a validation file of another geometry, a
            ``val_fraction`` outside [0, 1) or a ``max_showers`` below 1.
    """
    check_val_fraction(val_fraction)
    _check_max_showers(max_showers)
    full = _with_showers(load_point_dataset(data, seed=seed, max_showers=max_showers,
                                            threshold=threshold), data)
    if val_data is not None:
        val = _with_showers(load_point_dataset(val_data, seed=seed + 1, max_showers=max_showers,
                                               threshold=threshold), val_data)
        if (full.geometry is not None and val.geometry is not None
                and not val.geometry.same_cells(full.geometry)):
            raise InputError(f"geometry {val.geometry.name}", path=val_data, key="geometry",
                             expected=f"{full.geometry.name} as in {data}")
        return full, size_sorted(val)
    train, val = _split_off_validation(full, data, val_fraction, seed)
    return train, None if val is None else size_sorted(val)


def _split_off_validation(full: Any, data: str | os.PathLike[str], val_fraction: float | None,
                          seed: int) -> tuple[Any, Any]:
    """``full`` split into training and a seeded validation share (None without one).

    Raises:
        InputError: a single shower to split, naming the file.
    """
    if not val_fraction:
        return full, None
    if len(full) < 2:
        raise InputError("1 shower cannot be split into training and validation", path=data,
                         key="showers", expected="at least two showers, or a separate --val-data")
    train_idx, val_idx = split_indices(len(full), float(val_fraction), seed)
    return full.subset(train_idx), full.subset(val_idx)


def _check_max_showers(max_showers: int | None) -> None:
    if max_showers is not None:
        check_count(max_showers, "--max-showers", "a positive number of showers")


def _with_showers(ds: PointCloudDataset, path: str | os.PathLike[str]) -> PointCloudDataset:
    if len(ds) == 0:
        raise InputError("no showers", path=path, key="showers", expected="at least one shower")
    return ds


def _load_voxels(data: str | os.PathLike[str], val_data: str | os.PathLike[str] | None,
                 settings: Mapping[str, Any], seed: int) -> tuple[Any, Any]:
    return voxel_datasets(data, val_data=val_data, val_fraction=settings["val_fraction"],
                          seed=seed, max_showers=settings["max_showers"])


def voxel_datasets(
    data: str | os.PathLike[str],
    *,
    val_data: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    max_showers: int | None = None,
) -> tuple[Any, Any]:
    """Training and validation showers as dense voxel grids (the voxel transformers' data).

    Arguments:
        data: training file (CaloChallenge or Par04 HDF5).
        val_data: a separate validation file (takes precedence over ``val_fraction``).
        val_fraction: hold out this seeded share of ``data`` (0 or None: no validation).
        seed: seed of the split.
        max_showers: read at most this many showers from each file.

    Returns:
        ``(train, val)`` :class:`~showerformer.data.voxels.VoxelGridDataset` (val None without
        validation).

    Raises:
        InputError: a file without showers or of another format, a validation file of other
            cells, a ``val_fraction`` outside [0, 1) or a ``max_showers`` below 1.
    """
    from showerformer.data.voxels import load_voxel_dataset

    check_val_fraction(val_fraction)
    _check_max_showers(max_showers)
    full = load_voxel_dataset(data, max_showers=max_showers)
    if len(full) == 0:
        raise InputError("no showers", path=data, key="showers", expected="at least one shower")
    if val_data is not None:
        val = load_voxel_dataset(val_data, max_showers=max_showers)
        if not val.geometry.same_cells(full.geometry):
            raise InputError(f"geometry {val.geometry.name}", path=val_data, key="geometry",
                             expected=f"{full.geometry.name} as in {data}")
        return full, val
    return _split_off_validation(full, data, val_fraction, seed)


def _describe_voxels(train: Any, val: Any) -> dict[str, Any]:
    return {"n_train": len(train), "n_val": 0 if val is None else len(val),
            "shape": list(train.shape), "geometry": train.geometry.name}


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
    "voxels": DataKind(
        "voxels",
        {"val_fraction": (float, 0.1), "max_showers": (int | None, None)},
        _load_voxels, _describe_voxels, {"max_showers": 1}),
}
"""The built-in data kinds: labelled voxel grids (regression), point clouds (voxel files are
dequantized to one point per cell above the readout threshold) and dense voxel grids with their
incident energy and angle (the voxel-sequence transformers)."""


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
