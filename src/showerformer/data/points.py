"""Point clouds for the generators: the invertible point preprocessing, padded batches, datasets.

Read top to bottom:

1. :class:`PointPreprocessing` (fitted on data, invertible, a plain dict in checkpoints): a
   point ``(x, y, z, E, layer)`` in mm and MeV becomes three continuous features through
   :mod:`showerformer.preprocessing` transforms, one per column of ``(x, y, E)`` with the layer
   as group label; by default ``x`` and ``y`` standardized per layer and ``E`` as ``log E``
   standardized per layer. ``z`` is not modelled: the inverse puts every point at its layer's
   depth. The incident energy becomes ``log E`` standardized.
2. :func:`make_batch`: showers -> the batch dict of the point-cloud families (points sorted by
   layer, per-layer counts, particle index, normalized incident energy, angles);
   :func:`layers_from_counts` and :func:`counts_per_layer` go between points per layer and the
   layer of every point.
3. :class:`PointCloudDataset` (ragged showers in memory), :func:`load_point_dataset` (any file
   format; voxels are dequantized to points) and :class:`PointCollate` (items -> batch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from showerformer.data.conditions import DEFAULT_PARTICLES, condition_tensors
from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.preprocessing import (
    Chain,
    Clip,
    Columns,
    Log,
    Standardize,
    Transform,
    iter_transforms,
    transform_from_dict,
)
from showerformer.showers import Conditions, PointShowers, VoxelShowers

__all__ = [
    "VOXEL_FORMATS",
    "PointCloudDataset",
    "PointCollate",
    "PointPreprocessing",
    "Preprocessing",
    "counts_per_layer",
    "layers_from_counts",
    "load_point_dataset",
    "make_batch",
]

VOXEL_FORMATS = ("calochallenge", "par04", "sparse-voxels")
"""Formats whose showers are turned into points by dequantization inside the cells."""

INCIDENT_ENERGY_FLOOR = 1e-12
"""Smallest incident energy (MeV) before the log."""

_LEGACY_KEYS = ("mean", "std", "layer_z", "energy_floor", "incident_log_mean",
                "incident_log_std", "per_layer", "log_energy_max")
"""Keys of the dicts of the first layout (``"kind": "panshower"``, one (L, 3) table)."""


# ----------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(eq=False)
class PointPreprocessing:
    """Invertible map between physical points and the model's normalized features.

    ``features = features_transform.forward((x, y, E), groups=layer)``; the inverse returns
    ``x, y`` in mm, ``E`` in MeV, ``z = layer_z[layer]`` and the layer. The default transform
    (:meth:`fit`) is ``Columns([Standardize per layer, Standardize per layer, Chain([Log(floor),
    Clip(hi=log_energy_max), Standardize per layer])])``: ``(x, y, log max(E, floor))``
    standardized per layer, generated ``log E`` clipped to ``log_energy_max`` on the way back.
    The incident energy goes through ``incident`` (default ``Chain([Log(1e-12), Standardize])``).

    Attributes:
        features: one transform per column of ``(x, y, E)``; the layer labels the groups.
        incident: transform of the incident energy (MeV) to the model's condition.
        layer_z: depth assigned to the points of each layer, mm.  # (L,)
    """

    features: Columns
    incident: Transform
    layer_z: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.features, Columns) or len(self.features.columns) != 3:
            raise InputError(f"features transform {self.features!r}"[:120], key="features",
                             expected="Columns of three transforms, for x, y and E")
        if not isinstance(self.incident, Transform):
            raise InputError(f"a {type(self.incident).__name__}", key="incident",
                             expected="a transform of the incident energy")
        self.layer_z = np.asarray(self.layer_z, dtype=np.float64).reshape(-1)
        n = len(self.layer_z)
        if n == 0 or not np.all(np.isfinite(self.layer_z)):
            raise InputError(f"{n} layer depths", key="layer_z",
                             expected="the finite depth of every layer (L > 0)")
        for t in iter_transforms(self.features):
            if isinstance(t, Standardize) and t.per_group and t.n_groups not in (None, n):
                raise InputError(f"statistics for {t.n_groups} layers and {n} layer depths",
                                 key="preprocessing", expected="one set of statistics per layer")

    # -- the statistics of the default transform --------------------------------------------

    @property
    def n_layers(self) -> int:
        """Number of calorimeter layers ``L``."""
        return len(self.layer_z)

    def _part(self, transform: Transform, cls: type, last: bool = False) -> Any:
        found = [t for t in iter_transforms(transform) if isinstance(t, cls)]
        if not found:
            raise AttributeError(f"{cls.__name__} not part of {transform!r}")
        return found[-1] if last else found[0]

    def _table(self, name: str) -> np.ndarray:
        cols = []
        for col in self.features.columns:
            st = self._part(col, Standardize, last=True)
            if st.per_group and st.group_mean is not None:
                cols.append(st.group_mean if name == "mean" else st.group_std)
            else:
                cols.append(np.full(self.n_layers, st.mean if name == "mean" else st.std))
        return np.stack(cols, axis=1)

    @property
    def mean(self) -> np.ndarray:
        """Feature means per layer of the standardizations.  # (L, 3), rows equal when global"""
        return self._table("mean")

    @property
    def std(self) -> np.ndarray:
        """Feature standard deviations per layer.  # (L, 3)"""
        return self._table("std")

    @property
    def per_layer(self) -> bool:
        """Whether feature statistics are per layer (a per-group :class:`Standardize`)."""
        return any(isinstance(t, Standardize) and t.per_group
                   for t in iter_transforms(self.features))

    @property
    def energy_floor(self) -> float:
        """Smallest point energy before the log, MeV."""
        return float(self._part(self.features.columns[2], Log).floor)

    @property
    def log_energy_max(self) -> float | None:
        """Largest point ``log E`` (log MeV) the inverse returns (None: no limit but 700)."""
        try:
            return self._part(self.features.columns[2], Clip).hi
        except AttributeError:
            return None

    @property
    def incident_log_mean(self) -> float:
        """Mean of log incident energy (log MeV)."""
        return float(self._part(self.incident, Standardize, last=True).mean)

    @property
    def incident_log_std(self) -> float:
        """Standard deviation of log incident energy."""
        return float(self._part(self.incident, Standardize, last=True).std)

    # -- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        showers: PointShowers,
        *,
        n_layers: int | None = None,
        per_layer: bool = True,
        min_points: int = 10,
    ) -> PointPreprocessing:
        """Fit the default transforms on showers.

        Arguments:
            showers: training showers (points in mm and MeV, layer in column 4).
            n_layers: number of calorimeter layers; default: the geometry's, else the largest
                layer index + 1.
            per_layer: standardize every layer with its own statistics (layers with fewer than
                ``min_points`` points use the global ones).
            min_points: see ``per_layer``.

        Returns:
            The fitted :class:`PointPreprocessing`. ``layer_z`` is the middle of each layer of
            the showers' geometry when it has ``n_layers`` layers, else the mean ``z`` of the
            points of each layer (interpolated for empty layers).

        Raises:
            InputError: no points, or layer indices outside ``0 .. n_layers - 1``.
        """
        return cls.fit_points(showers.points[showers.mask], showers.conditions.energy,
                              geometry=showers.geometry, n_layers=n_layers, per_layer=per_layer,
                              min_points=min_points)

    @classmethod
    def fit_points(
        cls,
        points: np.ndarray,
        incident_energy: np.ndarray,
        *,
        geometry: Geometry | None = None,
        n_layers: int | None = None,
        per_layer: bool = True,
        min_points: int = 10,
    ) -> PointPreprocessing:
        """Fit the default transforms on the real points of all showers stacked (no padding).

        Arguments:
            points: x, y, z (mm), E (MeV), layer of every real point.  # (M, 5)
            incident_energy: incident energies of the showers, MeV.  # (N,)
            geometry, n_layers, per_layer, min_points: as in :meth:`fit`.

        Returns:
            The fitted :class:`PointPreprocessing`; the largest ``log E`` it returns is the
            training maximum plus log 2.

        Raises:
            InputError: no points, or layer indices outside ``0 .. n_layers - 1``.
        """
        geo = geometry
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 5)  # (M, 5)
        if len(pts) == 0:
            raise InputError("no points to fit the preprocessing on", key="points",
                             expected="at least one real point")
        layer = np.rint(pts[:, 4]).astype(np.int64)  # (M,)
        if n_layers is None:
            n_layers = geo.n_layers if geo is not None else int(layer.max()) + 1
        if layer.min() < 0 or layer.max() >= n_layers:
            raise InputError(f"layer indices from {layer.min()} to {layer.max()}", key="layer",
                             expected=f"0 .. {n_layers - 1}")

        def standardize() -> Standardize:
            return Standardize(per_group=per_layer, min_count=min_points,
                               n_groups=n_layers if per_layer else None)

        log = Log().fit(pts[:, 3])
        log_e = log.forward(pts[:, 3])  # (M,)
        energy = Chain([log, Clip(hi=float(log_e.max() + np.log(2.0))), standardize()])
        features = Columns([standardize(), standardize(), energy])
        features.fit(pts[:, [0, 1, 3]], groups=layer)
        counts = np.bincount(layer, minlength=n_layers)
        if geo is not None and geo.n_layers == n_layers:
            layer_z = 0.5 * (geo.z_edges[:-1] + geo.z_edges[1:])
        else:
            filled = np.flatnonzero(counts > 0)
            z_mean = np.bincount(layer, weights=pts[:, 2], minlength=n_layers)[filled] / counts[filled]
            layer_z = np.interp(np.arange(n_layers), filled, z_mean)
        incident = Chain([Log(INCIDENT_ENERGY_FLOOR), Standardize()])
        incident.fit(np.asarray(incident_energy, dtype=np.float64).reshape(-1))
        return cls(features=features, incident=incident, layer_z=layer_z)

    @classmethod
    def from_statistics(
        cls,
        mean: Any,
        std: Any,
        layer_z: Any,
        *,
        energy_floor: float = 1e-6,
        incident_log_mean: float = 0.0,
        incident_log_std: float = 1.0,
        per_layer: bool = True,
        log_energy_max: float | None = None,
    ) -> PointPreprocessing:
        """The default transforms with given statistics (the layout of the first version).

        Arguments:
            mean: feature means per layer.  # (L, 3)
            std: feature standard deviations per layer.  # (L, 3)
            layer_z: depth of the points of each layer, mm.  # (L,)
            energy_floor: smallest point energy before the log, MeV.
            incident_log_mean, incident_log_std: statistics of log incident energy.
            per_layer: whether ``mean`` and ``std`` differ per layer (global otherwise: the
                rows are equal).
            log_energy_max: largest ``log E`` the inverse returns (None: no limit but 700).

        Returns:
            The :class:`PointPreprocessing`.

        Raises:
            InputError: tables of different layer counts, non-positive spreads or floor.
        """
        try:
            mean = np.asarray(mean, dtype=np.float64).reshape(-1, 3)
            std = np.asarray(std, dtype=np.float64).reshape(-1, 3)
            layer_z = np.asarray(layer_z, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError("statistics that are not (L, 3) tables of numbers",
                             key="preprocessing",
                             expected="mean (L, 3), std (L, 3) and layer_z (L,)") from None
        if not (len(mean) == len(std) == len(layer_z) > 0):
            raise InputError(f"statistics for {len(mean)}, {len(std)} and {len(layer_z)} layers",
                             key="preprocessing",
                             expected="mean (L, 3), std (L, 3) and layer_z (L,) for one L")
        if not (np.all(std > 0) and incident_log_std > 0 and energy_floor > 0):
            raise InputError("non-positive spread or energy floor", key="preprocessing",
                             expected="positive std, incident_log_std and energy_floor")
        global_rows = bool(np.all(mean == mean[0]) and np.all(std == std[0]))

        def standardize(j: int) -> Standardize:
            if not per_layer and global_rows:
                return Standardize(mean=float(mean[0, j]), std=float(std[0, j]))
            return Standardize(per_group=True, n_groups=len(mean), group_mean=mean[:, j],
                               group_std=std[:, j])

        energy = Chain([Log(float(energy_floor)), Clip(hi=log_energy_max), standardize(2)])
        incident = Chain([Log(INCIDENT_ENERGY_FLOOR),
                          Standardize(mean=float(incident_log_mean), std=float(incident_log_std))])
        return cls(features=Columns([standardize(0), standardize(1), energy]),
                   incident=incident, layer_z=layer_z)

    # -- applying -------------------------------------------------------------------------------

    def transform(self, points: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Physical points -> normalized features and layers.

        Arguments:
            points: x, y, z (mm), E (MeV), layer.  # (N, P, 5)
            mask: True for real points.  # (N, P)

        Returns:
            ``(features, layer)``: ``(N, P, 3)`` float32 (zero on padding) and ``(N, P)`` int64
            (zero on padding).

        Raises:
            InputError: a layer index outside ``0 .. L - 1``.
        """
        points = np.asarray(points, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        layer = np.where(mask, np.rint(points[..., 4]), 0).astype(np.int64)  # (N, P)
        if layer.size and (layer.min() < 0 or layer.max() >= self.n_layers):
            raise InputError(f"layer indices from {layer.min()} to {layer.max()}", key="layer",
                             expected=f"0 .. {self.n_layers - 1}")
        out = np.zeros((*mask.shape, 3))  # (N, P, 3)
        out[mask] = self.features.forward(points[mask][:, [0, 1, 3]], groups=layer[mask])
        return out.astype(np.float32), layer

    def inverse(self, features: Any, layer: Any, mask: Any) -> np.ndarray:
        """Normalized features -> physical points (inverse of :meth:`transform`).

        Arguments:
            features: the normalized features.  # (N, P, 3), NumPy or torch
            layer: layer of every point (clipped to ``0 .. L - 1``).  # (N, P)
            mask: True for real points.  # (N, P)

        Returns:
            ``(N, P, 5)`` float32 = x, y, z (mm), E (MeV), layer; zero on padding.
        """
        feats = _numpy(features).astype(np.float64)
        layer = np.clip(_numpy(layer).astype(np.int64), 0, self.n_layers - 1)
        mask = _numpy(mask).astype(bool)
        real = layer[mask]  # (M,)
        phys = self.features.inverse(feats[mask], groups=real)  # (M, 3): x, y, E
        out = np.zeros((*mask.shape, 5))  # (N, P, 5)
        out[mask] = np.stack([phys[:, 0], phys[:, 1], self.layer_z[real], phys[:, 2],
                              real.astype(np.float64)], axis=-1)
        return out.astype(np.float32)

    def transform_incident(self, energy: Any) -> np.ndarray:
        """Incident energy in MeV -> the model's condition (``(log E - mean) / std``), (N,)
        float32."""
        return self.incident.forward(_numpy(energy)).astype(np.float32)

    def inverse_incident(self, value: Any) -> np.ndarray:
        """Inverse of :meth:`transform_incident`: MeV, (N,) float64."""
        return self.incident.inverse(_numpy(value))

    # -- serialization ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (for checkpoints): ``{"kind": "points", "features",
        "incident", "layer_z"}``."""
        return {"kind": "points", "features": self.features.to_dict(),
                "incident": self.incident.to_dict(), "layer_z": self.layer_z.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PointPreprocessing:
        """Inverse of :meth:`to_dict`; also reads the first layout (``"kind": "panshower"``:
        ``mean``, ``std`` (L, 3), ``layer_z``, ``energy_floor``, ``incident_log_mean``,
        ``incident_log_std``, ``per_layer``, ``log_energy_max``), with the same results.

        Raises:
            InputError: another kind, a missing or unknown key, or a bad transform, naming the
                key.
        """
        if not isinstance(data, Mapping):
            raise InputError(f"a {type(data).__name__}", key="preprocessing",
                             expected="the dict written by PointPreprocessing.to_dict")
        data = dict(data)
        kind = data.pop("kind", None)
        if kind == "panshower" or (kind is None and "features" not in data):
            return cls._from_first_layout(data)
        if kind not in (None, "points"):
            raise InputError(f"preprocessing of kind {kind!r}", key="kind",
                             expected="'points' (or 'panshower', the first layout)")
        known = ("features", "incident", "layer_z")
        unknown = sorted(str(k) for k in set(data) - set(known))
        if unknown:
            raise InputError(f"unknown preprocessing key {unknown[0]!r}", key=unknown[0],
                             expected="one of " + ", ".join(known))
        for key in known:
            if key not in data:
                raise InputError("missing preprocessing entry", key=key,
                                 expected="the dict written by PointPreprocessing.to_dict")
        parts: dict[str, Any] = {}
        for key in ("features", "incident"):
            try:
                parts[key] = transform_from_dict(data[key])
            except InputError as exc:
                raise InputError(exc.what, key=f"{key}.{exc.key}", expected=exc.expected) from None
        return cls(features=parts["features"], incident=parts["incident"], layer_z=data["layer_z"])

    @classmethod
    def _from_first_layout(cls, data: dict[str, Any]) -> PointPreprocessing:
        unknown = sorted(str(k) for k in set(data) - set(_LEGACY_KEYS))
        if unknown:
            raise InputError(f"unknown preprocessing key {unknown[0]!r}", key=unknown[0],
                             expected="one of " + ", ".join(sorted(_LEGACY_KEYS)))
        for key in ("mean", "std", "layer_z"):
            if key not in data:
                raise InputError("missing preprocessing entry", key=key,
                                 expected="the dict written by Preprocessing.to_dict")
        return cls.from_statistics(data.pop("mean"), data.pop("std"), data.pop("layer_z"), **data)


Preprocessing = PointPreprocessing
"""The name of :class:`PointPreprocessing` in the first version."""


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


# ----------------------------------------------------------------------------------------------
# Batches


def make_batch(
    showers: PointShowers,
    preprocessing: PointPreprocessing,
    particles: tuple[int, ...] = DEFAULT_PARTICLES,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """The batch dict of the point-cloud families' ``loss`` from showers.

    The points of every shower are sorted by layer, padding last (FlexAttention then skips the
    tiles outside the layer band; the result does not depend on the order).

    Arguments:
        showers: physical point clouds with their conditions.
        preprocessing: the fitted transform.
        particles: the model's particle list.
        device: where to put the tensors.

    Returns:
        ``{"x": (N, P, 3) float32, "layer": (N, P) int64, "mask": (N, P) bool,
        "counts": (N, L) int64, "particle", "energy", "theta", "phi": (N,)}``.

    Raises:
        InputError: a layer outside the preprocessing's layers, or an unknown particle.
    """
    feats, layer = preprocessing.transform(showers.points, showers.mask)
    mask = showers.mask.astype(bool)
    key = np.where(mask, layer, preprocessing.n_layers)
    order = np.argsort(key, axis=1, kind="stable")  # (N, P)
    feats = np.take_along_axis(feats, order[..., None], axis=1)
    layer = np.take_along_axis(layer, order, axis=1)
    mask = np.take_along_axis(mask, order, axis=1)
    n, L = len(showers), preprocessing.n_layers
    rows = np.repeat(np.arange(n), mask.sum(axis=1))
    counts = np.bincount(rows * L + layer[mask], minlength=n * L).reshape(n, L)
    batch = {
        "x": torch.as_tensor(feats, device=device),
        "layer": torch.as_tensor(layer, device=device),
        "mask": torch.as_tensor(mask, device=device),
        "counts": torch.as_tensor(counts.astype(np.int64), device=device),
    }
    batch.update(condition_tensors(showers.conditions, preprocessing, particles, device))
    return batch


def layers_from_counts(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Layer index and mask of the points of showers with given points per layer.

    Arguments:
        counts: points per layer.  # (B, L) integer, >= 0

    Returns:
        ``(layer, mask)``: ``(B, P)`` int64 and bool with ``P = max(1, max total)``; the real
        points come first, sorted by layer (``counts[b, l]`` points of layer ``l``); padding has
        layer ``L - 1`` and mask False.
    """
    counts = counts.long().clamp_min(0)
    total = counts.sum(dim=1)  # (B,)
    p = max(1, int(total.max().item()) if counts.numel() else 1)
    cum = counts.cumsum(dim=1)  # (B, L)
    idx = torch.arange(p, device=counts.device).expand(counts.shape[0], p).contiguous()  # (B, P)
    layer = torch.searchsorted(cum, idx, right=True).clamp_max(counts.shape[1] - 1)  # (B, P)
    return layer, idx < total[:, None]


def counts_per_layer(layer: Tensor, mask: Tensor, n_layers: int) -> Tensor:
    """Points per layer of every shower (the inverse of :func:`layers_from_counts`).

    Arguments:
        layer: layer of every point (clamped to ``0 .. n_layers - 1``).  # (B, P) int64
        mask: True for real points.  # (B, P) bool
        n_layers: number of calorimeter layers ``L``.

    Returns:
        ``(B, L)`` int64.
    """
    b = layer.shape[0]
    flat = torch.arange(b, device=layer.device)[:, None] * n_layers + layer.clamp(0, n_layers - 1)
    out = torch.zeros(b * n_layers, dtype=torch.long, device=layer.device)
    out.index_add_(0, flat[mask], torch.ones_like(flat[mask]))
    return out.view(b, n_layers)


# ----------------------------------------------------------------------------------------------
# Datasets


@dataclass
class PointCloudDataset(Dataset):
    """Showers as ragged point clouds kept in memory: all points stacked plus offsets.

    Item ``i`` is ``{"points": (n_i, 5) float32, "energy", "pdg", "theta", "phi"}`` (points are
    x, y, z in mm, E in MeV and the layer index, as in :class:`PointShowers`).

    Attributes:
        points: the points of all showers, shower-major.  # (M, 5) float32
        offsets: shower ``i`` owns ``points[offsets[i]:offsets[i + 1]]``.  # (N + 1,) int64
        conditions: the incident particles.  # length N
        geometry: the geometry the points live in (voxelization, layer depths), or None.
        source_format: the format of the file the showers came from (``"pointcloud"``,
            ``"calochallenge"``, ...); voxel formats were dequantized.
        path: that file, named in errors about its showers (None: not from a file).
    """

    points: np.ndarray
    offsets: np.ndarray
    conditions: Conditions
    geometry: Geometry | None = None
    source_format: str = "pointcloud"
    path: str | None = None

    def __post_init__(self) -> None:
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 5)
        self.offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1)
        if (len(self.offsets) != len(self.conditions) + 1 or self.offsets[0] != 0
                or self.offsets[-1] != len(self.points) or np.any(np.diff(self.offsets) < 0)):
            raise InputError(f"{len(self.offsets)} offsets for {len(self.conditions)} showers and "
                             f"{len(self.points)} points", path=self.path, key="offsets",
                             expected="N + 1 non-decreasing offsets from 0 to the number of points")

    @classmethod
    def from_showers(cls, showers: PointShowers, source_format: str = "pointcloud",
                     path: str | os.PathLike[str] | None = None) -> PointCloudDataset:
        """From padded point clouds (the padding is dropped)."""
        counts = showers.mask.sum(axis=1).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return cls(showers.points[showers.mask], offsets, showers.conditions, showers.geometry,
                   source_format, None if path is None else str(path))

    def __len__(self) -> int:
        return len(self.conditions)

    @property
    def sizes(self) -> np.ndarray:
        """Points per shower, (N,) int64."""
        return np.diff(self.offsets)

    def layer_counts(self, n_layers: int) -> np.ndarray:
        """Points per calorimeter layer of every shower, (N, n_layers) int64."""
        rows = np.repeat(np.arange(len(self)), self.sizes)
        layer = np.clip(np.rint(self.points[:, 4]).astype(np.int64), 0, n_layers - 1)
        return np.bincount(rows * n_layers + layer,
                           minlength=len(self) * n_layers).reshape(len(self), n_layers)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c = self.conditions
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return {"points": self.points[lo:hi], "energy": float(c.energy[i]), "pdg": int(c.pdg[i]),
                "theta": float(c.theta[i]), "phi": float(c.phi[i])}

    def subset(self, indices: Sequence[int] | np.ndarray) -> PointCloudDataset:
        """The showers ``indices`` (in that order), copied."""
        idx = np.asarray(indices, dtype=np.int64)
        sizes = self.sizes[idx]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        if len(idx):
            take = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
        else:
            take = np.zeros(0, dtype=np.int64)
        return PointCloudDataset(self.points[take], offsets, self.conditions[idx], self.geometry,
                                 self.source_format, self.path)

    def to_showers(self, indices: Sequence[int] | np.ndarray | None = None) -> PointShowers:
        """Padded :class:`PointShowers` of ``indices`` (all when None)."""
        sub = self if indices is None else self.subset(indices)
        return PointShowers.from_flat(sub.points, sub.sizes, sub.conditions, sub.geometry)


def load_point_dataset(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_showers: int | None = None,
    threshold: float | None = None,
    geometry: Any = None,
) -> PointCloudDataset:
    """Read a shower file of any supported format as point clouds.

    Point-cloud files are taken as they are. Voxel files (CaloChallenge, Par04, sparse voxels)
    become one point per cell above ``threshold``, placed uniformly inside its cell
    (dequantization, as for the mean-field attention GAN of seed document 002); voxelizing the
    points through the same geometry gives the voxels back exactly.

    Arguments:
        path: the file.
        seed: seed of the dequantization.
        max_showers: read at most this many showers (the first ones).
        threshold: cell energy (MeV) a voxel needs to become a point; default: the
            geometry's ``readout_threshold_mev`` (e.g. 15.15 keV for ds2/ds3).
        geometry: passed to the reader (needed for files that do not name theirs).

    Returns:
        The :class:`PointCloudDataset` (``source_format`` records the file's format, ``path``
        the file).

    Raises:
        InputError: a ``max_showers`` below 1, or a file the readers reject.
    """
    from showerformer.io import SparseVoxelFile, detect_format, read_showers

    if max_showers is not None and (isinstance(max_showers, bool)
                                    or not isinstance(max_showers, int | np.integer)
                                    or max_showers < 1):
        raise InputError(f"{max_showers!r}", key="max_showers",
                         expected="a positive number of showers, or none for all")
    p = Path(path)
    fmt = detect_format(p)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDE9A]))
    if fmt == "sparse-voxels":
        with SparseVoxelFile(p, geometry=geometry, in_memory=False) as f:
            n = len(f) if max_showers is None else min(len(f), int(max_showers))
            geo = f.geometry
            cells, energies = f.hit_range(0, int(f.offsets[n]))
            counts = f.counts[:n]
            conditions = f.conditions[:n]
        thr = _threshold(geo, threshold)
        keep = energies > thr
        rows = np.repeat(np.arange(n), counts)[keep]
        cells, energies = cells[keep], energies[keep]
        xyz = geo.dequantize(cells, rng)
        flat = np.concatenate([xyz, energies[:, None], geo.layer_of_cell[cells][:, None]], axis=1)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
        return PointCloudDataset(flat, offsets, conditions, geo, fmt, str(p))
    stop = {} if max_showers is None or fmt == "edm4hep" else {"stop": int(max_showers)}
    showers = read_showers(p, geometry, **stop)
    if isinstance(showers, VoxelShowers):
        thr = _threshold(showers.geometry, threshold)
        return PointCloudDataset.from_showers(
            showers.to_points(dequantize=True, rng=rng, threshold=thr), fmt, p)
    if max_showers is not None:
        showers = showers[: int(max_showers)]
    return PointCloudDataset.from_showers(showers, fmt, p)


def _threshold(geometry: Geometry, threshold: float | None) -> float:
    return float(geometry.readout_threshold_mev if threshold is None else threshold)


class PointCollate:
    """Items of :class:`PointCloudDataset` -> the batch dict of PanShower / PointCountFM.

    Pads to the largest shower of the batch (rounded up to ``pad_multiple``), sorts the points
    of every shower by layer and normalizes them with the fitted preprocessing (see
    :func:`make_batch`). A class so that data-loader workers can pickle it.

    Arguments:
        preprocessing: a fitted :class:`PointPreprocessing`.
        particles: the model's particle list.
        pad_multiple: pad the point dimension to a multiple of this (128 keeps the number of
            FlexAttention shapes small on GPUs).
    """

    def __init__(self, preprocessing: PointPreprocessing, particles: Sequence[int],
                 pad_multiple: int = 1) -> None:
        self.preprocessing = preprocessing
        self.particles = tuple(int(p) for p in particles)
        self.pad_multiple = max(1, int(pad_multiple))

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        sizes = np.array([len(it["points"]) for it in items], dtype=np.int64)
        p = max(1, int(sizes.max(initial=0)))
        p = math.ceil(p / self.pad_multiple) * self.pad_multiple
        flat = (np.concatenate([it["points"] for it in items]) if len(items)
                else np.zeros((0, 5), np.float32))
        cond = Conditions(np.array([it["energy"] for it in items]),
                          np.array([it["pdg"] for it in items]),
                          np.array([it["theta"] for it in items]),
                          np.array([it["phi"] for it in items]))
        showers = PointShowers.from_flat(flat, sizes, cond, None, max_points=p)
        return make_batch(showers, self.preprocessing, self.particles)
