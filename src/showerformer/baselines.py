"""Classical baselines for hadron momentum regression: calibrated energy sum, layer weighting, boosted trees.

Every baseline shares one interface: ``fit(data, indices=None) -> self``, ``predict(data,
indices=None) -> (N,) momentum in GeV``, ``save(path)`` / ``load(path)``, a ``name`` and a
``summary()`` of the fitted constants. ``data`` is a :class:`~showerformer.io.sparse.SparseVoxelFile`
(the fast path: per-shower quantities come straight from the CSR hit lists), a
:class:`~showerformer.showers.VoxelShowers`, or any object with ``.conditions``, ``.geometry``
and ``.dense(indices)`` (densified in bounded chunks); ``indices`` picks rows (a train/test
split).

The true momentum is read from ``conditions.extra["momentum"]`` (MeV, as the simulator's
``sandwich64`` / ``sandwich32`` presets write it) and predictions are in GeV. A calorimeter
measures the kinetic energy ``T`` of a proton, not its momentum, so the linear baselines are
calibrated to ``T = sqrt(p^2 + m^2) - m`` and convert back with ``p = sqrt(T^2 + 2 T m)``
(``m`` = 938.272 MeV for protons).

References:
    R. Wigmans, Calorimetry (Oxford, 2nd ed. 2017), non-compensation and e/h;
    D. E. Groom, Nucl. Instrum. Meth. A 572 (2007) 633, the power-law energy dependence of the
    hadron response; H1 Calorimeter Group, Nucl. Instrum. Meth. A 336 (1993) 499, layer
    weighting; C. W. Fabjan and F. Gianotti, Rev. Mod. Phys. 75 (2003) 1243.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from showerformer._atomic import atomic_path
from showerformer.errors import InputError, require
from showerformer.geometry import Geometry

__all__ = [
    "BASELINES",
    "PROTON_MASS_MEV",
    "Baseline",
    "CalibratedEnergySum",
    "GradientBoostedTrees",
    "PerLayerLinear",
    "high_level_features",
    "kinetic_to_momentum",
    "layer_energies",
    "load_baseline",
    "momentum_to_kinetic",
    "true_momentum",
]

PROTON_MASS_MEV = 938.27209
"""The proton mass in MeV (PDG 2022, 938.27208816; the simulator's value)."""

_FORMAT = "showerformer-baseline"
_FORMAT_VERSION = 1
_SKLEARN_EXTRA = "test"  # scikit-learn is a core dependency; the extra only names an install
_SPARSE_CHUNK = 16384  # showers per chunk read from hit lists
_DENSE_BUDGET = 1 << 25  # floats per densified chunk (128 MB of float32)


# ---------------------------------------------------------------------------- kinematics
def momentum_to_kinetic(p: Any, mass: float = PROTON_MASS_MEV) -> np.ndarray:
    """Kinetic energy ``T = sqrt(p^2 + m^2) - m`` (any unit, the mass in the same unit).

    Computed as ``p^2 / (sqrt(p^2 + m^2) + m)``, exact also where ``p << m``.
    """
    p = np.asarray(p, dtype=np.float64)
    return p**2 / (np.sqrt(p**2 + mass**2) + mass)


def kinetic_to_momentum(t: Any, mass: float = PROTON_MASS_MEV) -> np.ndarray:
    """Momentum ``p = sqrt(T^2 + 2 T m)``; negative ``T`` gives 0."""
    t = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
    return np.sqrt(t**2 + 2.0 * t * mass)


# ---------------------------------------------------------------------------- data access
def _data_path(data: Any) -> Any:
    return getattr(data, "path", None)


def _check_data(data: Any) -> tuple[Geometry, int]:
    cond = getattr(data, "conditions", None)
    geo = getattr(data, "geometry", None)
    if cond is None or not isinstance(geo, Geometry):
        raise InputError(f"{type(data).__name__} without conditions and a geometry",
                         path=_data_path(data), key="data",
                         expected="a SparseVoxelFile, VoxelShowers or an object with "
                         ".conditions, .geometry and .dense(indices)")
    n = len(cond)
    if n == 0:
        raise InputError("no showers", path=_data_path(data), key="data",
                         expected="at least one shower")
    return geo, n


def _rows(data: Any, indices: Any) -> np.ndarray:
    """Validated row indices into ``data`` (all rows when ``indices`` is None), (n,) int64."""
    _, n = _check_data(data)
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise InputError(f"boolean mask of shape {idx.shape} for {n} showers",
                             path=_data_path(data), key="indices", expected=f"shape ({n},)")
        idx = np.flatnonzero(idx)
    elif idx.dtype.kind not in "iu" or idx.ndim > 1:
        raise InputError(f"indices of dtype {idx.dtype} and shape {idx.shape}",
                         path=_data_path(data), key="indices",
                         expected="a 1-D array of integer row indices or a boolean mask")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size == 0:
        raise InputError("no showers selected", path=_data_path(data), key="indices",
                         expected="at least one row index")
    if idx.min() < 0 or idx.max() >= n:
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise InputError(f"row index {bad} out of range", path=_data_path(data),
                         key="indices", expected=f"indices in [0, {n})")
    return idx


@dataclass
class _Chunk:
    """The hits of a group of showers, grouped by shower (CSR order)."""

    rows: np.ndarray  # (n,) output positions of the showers of the chunk
    event: np.ndarray  # (H,) shower of each hit, 0..n-1, non-decreasing
    cells: np.ndarray  # (H,) int64 flat cell indices
    energy: np.ndarray  # (H,) float64 MeV, > 0

    @property
    def n(self) -> int:
        return len(self.rows)


def _check_hits(data: Any, geo: Geometry, cells: np.ndarray, e: np.ndarray) -> None:
    if len(cells) != len(e):
        raise InputError(f"{len(cells)} cells for {len(e)} energies", path=_data_path(data),
                         key="hits", expected="one energy per hit cell")
    if len(cells) and (cells.min() < 0 or cells.max() >= geo.n_cells):
        raise InputError(f"cell indices in [{cells.min()}, {cells.max()}]",
                         path=_data_path(data), key="cell",
                         expected=f"indices in [0, {geo.n_cells}) of {geo.name}")
    if not np.isfinite(e).all():
        raise InputError("non-finite cell energies", path=_data_path(data), key="energy",
                         expected="finite energies in MeV")


def _from_dense(data: Any, rows: np.ndarray, dense: np.ndarray) -> _Chunk:
    if not np.isfinite(dense).all():
        raise InputError("non-finite cell energies", path=_data_path(data), key="energies",
                         expected="finite energies in MeV")
    ev, cells = np.nonzero(dense > 0)  # row-major: grouped by shower
    return _Chunk(rows, ev.astype(np.int64), cells.astype(np.int64),
                  dense[ev, cells].astype(np.float64))


def _iter_chunks(data: Any, idx: np.ndarray, chunk: int | None = None) -> Iterator[_Chunk]:
    """Yield the hits of showers ``idx`` chunk by chunk, in increasing row order.

    Sparse files are read hit range by hit range (no densification); dense inputs are cut into
    chunks of at most ``_DENSE_BUDGET`` floats.
    """
    geo, _ = _check_data(data)
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    offsets = getattr(data, "offsets", None)
    hit_range = getattr(data, "hit_range", None)
    energies = getattr(data, "energies", None)
    if offsets is not None and (hit_range is not None or hasattr(data, "hits")):
        offsets = np.asarray(offsets, dtype=np.int64)
        step = int(chunk or _SPARSE_CHUNK)
        for a in range(0, len(sidx), step):
            sel, rows = sidx[a:a + step], order[a:a + step]
            counts = offsets[sel + 1] - offsets[sel]
            ev = np.repeat(np.arange(len(sel), dtype=np.int64), counts)
            if hit_range is not None:  # one contiguous read spanning the chunk
                lo, hi = int(offsets[sel[0]]), int(offsets[sel[-1] + 1])
                cells_span, e_span = hit_range(lo, hi)
                first = np.cumsum(counts) - counts  # position of each shower's first hit
                gather = (np.arange(int(counts.sum()), dtype=np.int64)
                          - np.repeat(first, counts) + np.repeat(offsets[sel] - lo, counts))
                cells, e = cells_span[gather], e_span[gather]
            else:
                pairs = [data.hits(int(i)) for i in sel]
                cells = np.concatenate([c for c, _ in pairs]) if pairs else np.zeros(0, int)
                e = np.concatenate([v for _, v in pairs]) if pairs else np.zeros(0)
            cells = np.asarray(cells, dtype=np.int64)
            e = np.asarray(e, dtype=np.float64)
            _check_hits(data, geo, cells, e)
            keep = e > 0
            yield _Chunk(rows, ev[keep], cells[keep], e[keep])
        return
    step = max(1, min(int(chunk or _SPARSE_CHUNK), _DENSE_BUDGET // max(geo.n_cells, 1)))
    if isinstance(energies, np.ndarray) and energies.ndim == 2:
        if energies.shape[1] != geo.n_cells:
            raise InputError(f"energies of shape {energies.shape}", path=_data_path(data),
                             key="energies", expected=f"(N, {geo.n_cells}) for {geo.name}")
        for a in range(0, len(sidx), step):
            yield _from_dense(data, order[a:a + step], np.asarray(energies[sidx[a:a + step]]))
        return
    if not callable(getattr(data, "dense", None)):
        raise InputError(f"{type(data).__name__} gives no access to cell energies",
                         path=_data_path(data), key="data",
                         expected="a SparseVoxelFile, VoxelShowers or an object with "
                         ".dense(indices)")
    for a in range(0, len(sidx), step):
        dense = np.asarray(data.dense(sidx[a:a + step]))
        if dense.shape != (len(sidx[a:a + step]), geo.n_cells):
            raise InputError(f"dense() gave shape {dense.shape}", path=_data_path(data),
                             key="dense", expected=f"(B, {geo.n_cells}) for {geo.name}")
        yield _from_dense(data, order[a:a + step], dense)


def true_momentum(data: Any, indices: Any = None, *, key: str = "momentum") -> np.ndarray:
    """The true momentum of showers ``indices`` in GeV, (N,).

    Arguments:
        data: the showers (see the module docstring).
        indices: row indices or a boolean mask; None for all.
        key: the condition holding the momentum in MeV.

    Raises:
        InputError: no such condition, or non-finite / non-positive values.
    """
    idx = _rows(data, indices)
    extra = getattr(data.conditions, "extra", {}) or {}
    if key not in extra:
        have = ", ".join(repr(k) for k in sorted(extra)) or "none"
        raise InputError(f"no condition {key!r} (conditions: {have})", path=_data_path(data),
                         key=key, expected="the true momentum in MeV per shower")
    p = np.asarray(extra[key], dtype=np.float64).reshape(-1)[idx]
    if not (np.isfinite(p).all() and (p > 0).all()):
        raise InputError("non-finite or non-positive momenta", path=_data_path(data), key=key,
                         expected="positive momenta in MeV")
    return p / 1000.0


# ---------------------------------------------------------------------------- summaries
def layer_energies(data: Any, indices: Any = None) -> np.ndarray:
    """Energy per longitudinal layer of every shower, (N, n_layers) float64 MeV.

    Computed from the hit lists (``np.bincount`` over shower x layer), never from dense grids
    of a sparse file.
    """
    geo, _ = _check_data(data)
    idx = _rows(data, indices)
    n_layers = geo.n_layers
    lay_of_cell = geo.layer_of_cell
    out = np.zeros((len(idx), n_layers), dtype=np.float64)
    for ch in _iter_chunks(data, idx):
        key = ch.event * n_layers + lay_of_cell[ch.cells]
        out[ch.rows] = np.bincount(key, ch.energy, minlength=ch.n * n_layers).reshape(
            ch.n, n_layers)
    return out


def _energy_sums(data: Any, indices: Any = None) -> np.ndarray:
    idx = _rows(data, indices)
    out = np.zeros(len(idx), dtype=np.float64)
    for ch in _iter_chunks(data, idx):
        out[ch.rows] = np.bincount(ch.event, ch.energy, minlength=ch.n)
    return out


def _group_max(values: np.ndarray, event: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float64)
    if len(values):
        starts = np.flatnonzero(np.r_[True, event[1:] != event[:-1]])
        out[event[starts]] = np.maximum.reduceat(values, starts)
    return out


def _group_median(values: np.ndarray, event: np.ndarray, n: int) -> np.ndarray:
    """Lower median of ``values`` per group (0 for empty groups)."""
    out = np.zeros(n, dtype=np.float64)
    if len(values):
        order = np.lexsort((values, event))
        counts = np.bincount(event, minlength=n)
        first = np.cumsum(counts) - counts
        has = counts > 0
        out[has] = values[order[first[has] + (counts[has] - 1) // 2]]
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def high_level_features(
    data: Any,
    indices: Any = None,
    *,
    n_sections: int = 8,
    core_radius_mm: float = 30.0,
    start_fraction: float = 0.2,
    dense_factor: float = 5.0,
) -> tuple[np.ndarray, list[str]]:
    """High-level shower features per shower, computed from the hit lists.

    Depths are cell-centre ``z`` (mm from the front face), transverse positions cell-centre
    ``x, y`` (mm); "layer" is the longitudinal layer of the geometry. The features, in order:

    - ``e_total`` (MeV): sum of the cell energies (EM scale);
    - ``n_hits``: cells with energy; ``n_layers_hit``: layers with energy;
    - ``e_mean_hit`` (MeV): ``e_total / n_hits``; ``e_median_hit`` (MeV): the median cell
      energy, about the MIP scale in a hadron shower;
    - ``log_e_hit`` : energy-weighted mean of ``ln(E_cell / MeV)`` (energy density);
    - ``f_dense``: fraction of ``e_total`` in cells above ``dense_factor`` x the shower's median
      cell energy (dense, EM-like deposits: the idea behind software compensation);
    - ``f_max_cell``: fraction of ``e_total`` in the hottest cell;
    - ``f_core``: fraction of ``e_total`` within ``core_radius_mm`` (transverse) of the
      shower's energy-weighted axis;
    - ``r_rms`` (mm): energy-weighted transverse RMS radius about that axis;
    - ``z_mean``, ``z_rms`` (mm): energy-weighted mean depth and longitudinal RMS;
    - ``z_start`` (mm): depth of the first layer with at least ``start_fraction`` of the
      largest layer energy, a proxy for the first hadronic interaction (a charged hadron lights
      every layer before it as a MIP, so "the first layer with energy" would always be 0);
      the back face for a shower without energy;
    - ``e_before_start`` (MeV): energy in the layers in front of ``z_start`` (the MIP track);
    - ``e_layer_max`` (MeV) and ``z_layer_max`` (mm): the largest layer energy and its depth;
    - ``e_section_k`` (MeV), k = 0..n_sections-1: energy in ``n_sections`` consecutive groups
      of layers of (nearly) equal size, front to back; the last one measures leakage.

    Arguments:
        data: the showers (see the module docstring).
        indices: row indices or a boolean mask; None for all.
        n_sections: longitudinal sections (1 to n_layers).
        core_radius_mm: radius of the core in mm.
        start_fraction: threshold of the shower start, relative to the largest layer energy.
        dense_factor: threshold of ``f_dense`` in units of the median cell energy.

    Returns:
        ``(features (N, F) float64, names (F,))``; a shower without energy gets zeros (and
        ``z_start`` at the back face).

    Raises:
        InputError: bad data, indices or options.
    """
    geo, _ = _check_data(data)
    idx = _rows(data, indices)
    n_layers = geo.n_layers
    if not 1 <= int(n_sections) <= n_layers:
        raise InputError(f"n_sections={n_sections}", key="n_sections",
                         expected=f"an integer in [1, {n_layers}] for {geo.name}")
    if not (core_radius_mm > 0 and 0 < start_fraction <= 1 and dense_factor > 0):
        raise InputError(f"core_radius_mm={core_radius_mm}, start_fraction={start_fraction}, "
                         f"dense_factor={dense_factor}", key="options",
                         expected="core_radius_mm > 0, 0 < start_fraction <= 1, "
                         "dense_factor > 0")
    names = ["e_total", "n_hits", "n_layers_hit", "e_mean_hit", "e_median_hit", "log_e_hit",
             "f_dense", "f_max_cell", "f_core", "r_rms", "z_mean", "z_rms", "z_start",
             "e_before_start", "e_layer_max", "z_layer_max",
             *[f"e_section_{k}" for k in range(n_sections)]]
    centers = geo.cell_centers()  # (n_cells, 3) mm
    lay_of_cell = geo.layer_of_cell
    z_layer = 0.5 * (geo.z_edges[1:] + geo.z_edges[:-1])  # (n_layers,)
    edges = np.linspace(0, n_layers, int(n_sections) + 1).round().astype(np.int64)
    out = np.zeros((len(idx), len(names)), dtype=np.float64)
    for ch in _iter_chunks(data, idx):
        n, ev, e = ch.n, ch.event, ch.energy
        xyz = centers[ch.cells]  # (H, 3)
        lay = lay_of_cell[ch.cells]
        e_tot = np.bincount(ev, e, minlength=n)
        n_hits = np.bincount(ev, minlength=n).astype(np.float64)
        le = np.bincount(ev * n_layers + lay, e, minlength=n * n_layers).reshape(n, n_layers)

        def wsum(v: np.ndarray, ev: np.ndarray = ev, e: np.ndarray = e, n: int = n
                 ) -> np.ndarray:  # energy-weighted sum per shower
            return np.bincount(ev, e * v, minlength=n)

        x_m, y_m = _ratio(wsum(xyz[:, 0]), e_tot), _ratio(wsum(xyz[:, 1]), e_tot)
        r2 = (xyz[:, 0] - x_m[ev]) ** 2 + (xyz[:, 1] - y_m[ev]) ** 2
        z_m = _ratio(le @ z_layer, e_tot)
        z_var = _ratio(le @ z_layer**2, e_tot) - z_m**2
        median = _group_median(e, ev, n)
        dense = e > dense_factor * median[ev]
        l_max = le.max(axis=1)
        above = le >= start_fraction * l_max[:, None]
        start = np.where(e_tot > 0, np.argmax(above, axis=1), n_layers)
        before = np.where(np.arange(n_layers)[None, :] < start[:, None], le, 0.0).sum(axis=1)
        z_start = np.where(start < n_layers, z_layer[np.minimum(start, n_layers - 1)],
                           geo.z_edges[-1])
        cols = [
            e_tot, n_hits, (le > 0).sum(axis=1).astype(np.float64), _ratio(e_tot, n_hits),
            median, _ratio(wsum(np.log(e)), e_tot),
            _ratio(np.bincount(ev, e * dense, minlength=n), e_tot),
            _ratio(_group_max(e, ev, n), e_tot),
            _ratio(np.bincount(ev, e * (r2 <= core_radius_mm**2), minlength=n), e_tot),
            np.sqrt(np.maximum(_ratio(wsum(r2), e_tot), 0.0)),
            z_m, np.sqrt(np.maximum(z_var, 0.0)), z_start, before, l_max,
            np.where(e_tot > 0, z_layer[np.argmax(le, axis=1)], 0.0),
        ]
        sections = np.add.reduceat(le, edges[:-1], axis=1)  # (n, n_sections)
        out[ch.rows] = np.column_stack([*cols, sections])
    return out, names


# ---------------------------------------------------------------------------- baselines
class Baseline(ABC):
    """A momentum regressor fitted on showers: the interface all baselines share.

    Arguments:
        target_key: the condition holding the true momentum in MeV.
        mass_mev: the particle mass in MeV (protons by default), for ``p <-> T``.
    """

    name: ClassVar[str]

    def __init__(self, *, target_key: str = "momentum", mass_mev: float = PROTON_MASS_MEV
                 ) -> None:
        if not (isinstance(mass_mev, int | float) and math.isfinite(mass_mev)
                and mass_mev >= 0):
            raise InputError(f"mass_mev={mass_mev!r}", key="mass_mev",
                             expected="a particle mass >= 0 in MeV")
        self.target_key = str(target_key)
        self.mass_mev = float(mass_mev)
        self.geometry: dict[str, Any] | None = None  # the training geometry, to_dict()
        self.n_train = 0

    # -- the interface ------------------------------------------------------------------
    def fit(self, data: Any, indices: Any = None) -> Self:
        """Fit on showers ``indices`` of ``data`` (all when None); returns ``self``."""
        p = true_momentum(data, indices, key=self.target_key)  # GeV, checks the target first
        self._fit(data, indices, p)
        self.geometry = data.geometry.to_dict()
        self.n_train = len(p)
        return self

    def predict(self, data: Any, indices: Any = None) -> np.ndarray:
        """Predicted momenta of showers ``indices`` of ``data`` (all when None), (N,) GeV."""
        if not self.fitted:
            raise InputError(f"{self.name} is not fitted", key="model",
                             expected="fit() or load() before predict()")
        _check_data(data)
        self._check_geometry(data)
        return np.asarray(self._predict(data, indices), dtype=np.float64)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` or :meth:`load` has set the parameters."""
        return self.geometry is not None

    def summary(self) -> dict[str, Any]:
        """The name, settings and fitted constants, JSON-serializable."""
        return {"name": self.name, "target_key": self.target_key, "mass_mev": self.mass_mev,
                "n_train": self.n_train, **self._state()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted baseline atomically (JSON); returns the path."""
        self._require_fitted()
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self._header() | self._state(), indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a baseline written by :meth:`save`.

        Raises:
            InputError: a missing or unreadable file, another format or another baseline.
        """
        model = load_baseline(path)
        if not isinstance(model, cls):
            raise InputError(f"holds a {model.name!r} baseline", path=path, key="name",
                             expected=f"a {cls.name!r} baseline")
        return model

    # -- helpers ------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise InputError(f"{self.name} is not fitted", key="model",
                             expected="fit() before save()")

    def _check_geometry(self, data: Any) -> None:
        """Baselines with per-layer or per-cell inputs need the training geometry."""
        if not self.needs_same_geometry or self.geometry is None:
            return
        trained = Geometry.from_dict(self.geometry)
        if not trained.same_cells(data.geometry):
            raise InputError(f"geometry {data.geometry.name} differs from the training "
                             f"geometry {trained.name}", path=_data_path(data), key="geometry",
                             expected=f"showers of {trained.describe()}")

    needs_same_geometry: ClassVar[bool] = True

    def _header(self) -> dict[str, Any]:
        from showerformer import __version__

        return {"format": _FORMAT, "format_version": _FORMAT_VERSION, "name": self.name,
                "library_version": __version__, "target_key": self.target_key,
                "mass_mev": self.mass_mev, "n_train": self.n_train, "geometry": self.geometry}

    def _restore_header(self, d: dict[str, Any]) -> None:
        self.target_key = str(d["target_key"])
        self.mass_mev = float(d["mass_mev"])
        self.n_train = int(d["n_train"])
        self.geometry = dict(d["geometry"])

    @abstractmethod
    def _fit(self, data: Any, indices: Any, p_gev: np.ndarray) -> None: ...

    @abstractmethod
    def _predict(self, data: Any, indices: Any) -> np.ndarray: ...

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The fitted parameters (JSON-serializable for the linear baselines)."""

    @abstractmethod
    def _restore(self, state: dict[str, Any]) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'fitted' if self.fitted else 'not fitted'}>"


class CalibratedEnergySum(Baseline):
    """The calibrated energy sum: invert a power-law hadron response, then ``T -> p``.

    Cell energies are on the EM scale (visible energy / EM sampling fraction), so an electron
    reads about its energy but a hadron less: part of its energy goes into nuclear binding,
    recoils and neutrons (e/h > 1, non-compensating), and the visible fraction grows with
    energy as the EM fraction of the shower does. The mean response to the kinetic energy
    ``T`` is fitted with a power law, the standard form of this slow rise (Groom),

        <E_sum> = a * (T / 1 GeV)^b  GeV,

    by least squares of ``E_sum`` on ``T`` (the observable as a function of the truth, as a
    calibration from beam tests is done), started from the fit in log space. Prediction
    inverts it, ``T = (E_sum / a)^(1 / b)`` GeV, and returns ``p = sqrt(T^2 + 2 T m)``: the
    prediction is unbiased per bin of true energy (up to the resolution's skew), not pulled
    towards the mean of the training spectrum as a regression of ``T`` on ``E_sum`` would be.
    ``a`` is the response (E_sum / T) at 1 GeV; ``b - 1`` its logarithmic slope.

    Attributes (after fit):
        a: response at T = 1 GeV.
        b: power of the energy dependence.

    References:
        D. E. Groom, Nucl. Instrum. Meth. A 572 (2007) 633; R. Wigmans, Calorimetry (2017).
    """

    name: ClassVar[str] = "calibrated-energy-sum"
    needs_same_geometry: ClassVar[bool] = False  # the sum does not depend on the cells

    def __init__(self, *, target_key: str = "momentum", mass_mev: float = PROTON_MASS_MEV
                 ) -> None:
        super().__init__(target_key=target_key, mass_mev=mass_mev)
        self.a = math.nan
        self.b = math.nan

    def _fit(self, data: Any, indices: Any, p_gev: np.ndarray) -> None:
        from scipy.optimize import curve_fit

        t = momentum_to_kinetic(p_gev, self.mass_mev / 1000.0)  # GeV
        e = _energy_sums(data, indices) / 1000.0  # GeV
        ok = (e > 0) & (t > 0)
        if ok.sum() < 2 or np.ptp(t[ok]) <= 0:
            raise InputError(f"{int(ok.sum())} showers with energy for the calibration",
                             path=_data_path(data), key="data",
                             expected="at least two showers with energy and different momenta")
        b0, log_a0 = np.polyfit(np.log(t[ok]), np.log(e[ok]), 1)
        try:
            (a, b), _ = curve_fit(lambda x, a, b: a * x**b, t, e, p0=[math.exp(log_a0), b0],
                                  bounds=([1e-9, 0.1], [np.inf, 10.0]), max_nfev=10_000)
        except (RuntimeError, ValueError):  # no convergence: keep the log-space fit
            a, b = math.exp(log_a0), b0
        self.a, self.b = float(a), float(b)

    def kinetic_energy(self, e_sum_gev: Any) -> np.ndarray:
        """The calibrated kinetic energy in GeV of energy sums in GeV."""
        e = np.maximum(np.asarray(e_sum_gev, dtype=np.float64), 0.0)
        return (e / self.a) ** (1.0 / self.b)

    def _predict(self, data: Any, indices: Any) -> np.ndarray:
        t = self.kinetic_energy(_energy_sums(data, indices) / 1000.0)
        return kinetic_to_momentum(t, self.mass_mev / 1000.0)

    def _state(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b}

    def _restore(self, state: dict[str, Any]) -> None:
        self.a, self.b = float(state["a"]), float(state["b"])


class PerLayerLinear(Baseline):
    """Layer weighting: ``T = c + sum_l w_l E_l`` with a ridge pull towards a common weight.

    ``E_l`` is the energy of longitudinal layer ``l`` (MeV, EM scale). The weights minimise
    ``sum_i (T_i - c - w . E_i)^2 + lam sum_l (w_l - w0)^2`` over ``c``, ``w`` and the common
    weight ``w0``, the classical layer-weighting fit to the beam energy (H1, ATLAS test
    beams): a strong regularization gives back one weight for all layers (a calibrated linear
    energy sum), a weak one lets layers of different EM fraction or leakage weigh differently.
    ``lam = ridge * trace(X^T X) / n_layers`` for the centred layer energies ``X``, so
    ``ridge`` is dimensionless. The fit targets the kinetic energy, which the deposits are
    linear in (a 1 GeV/c proton has T = 0.43 GeV), and the prediction converts ``T`` to the
    momentum; a fit to ``p`` directly would have to bend a linear model around ``p(T)``.
    As any least-squares fit of the truth on the observables, it pulls low and high energies
    towards the mean of the training spectrum (the intercept); the calibrated energy sum does
    not.

    Arguments:
        ridge: the dimensionless regularization strength (> 0; the results barely change
            between 1e-4 and 1 on the sandwich presets).
        target_key, mass_mev: see :class:`Baseline`.

    Attributes (after fit):
        weights: (n_layers,) per-layer weights (T in MeV per MeV of layer energy).
        intercept: ``c`` in MeV.
        common_weight: ``w0``.

    References:
        H1 Calorimeter Group, Nucl. Instrum. Meth. A 336 (1993) 499; A. E. Hoerl and
        R. W. Kennard, Technometrics 12 (1970) 55 (ridge regression).
    """

    name: ClassVar[str] = "per-layer-linear"

    def __init__(self, *, ridge: float = 1e-2, target_key: str = "momentum",
                 mass_mev: float = PROTON_MASS_MEV) -> None:
        super().__init__(target_key=target_key, mass_mev=mass_mev)
        if not (isinstance(ridge, int | float) and math.isfinite(ridge) and ridge > 0):
            raise InputError(f"ridge={ridge!r}", key="ridge", expected="a number > 0")
        self.ridge = float(ridge)
        self.weights = np.zeros(0)
        self.intercept = math.nan
        self.common_weight = math.nan

    def _fit(self, data: Any, indices: Any, p_gev: np.ndarray) -> None:
        t = momentum_to_kinetic(p_gev * 1000.0, self.mass_mev)  # MeV
        x = layer_energies(data, indices)  # (N, L) MeV
        if len(t) < 2:
            raise InputError(f"{len(t)} shower for a layer-weighting fit",
                             path=_data_path(data), key="data",
                             expected="at least two showers")
        n_layers = x.shape[1]
        x_mean, t_mean = x.mean(axis=0), t.mean()
        xc = x - x_mean
        # unknowns (w_1..w_L, w0); penalty lam * |w - w0 1|^2
        gram = xc.T @ xc  # (L, L)
        lam = self.ridge * max(float(np.trace(gram)) / n_layers, 1e-12)
        a = np.zeros((n_layers + 1, n_layers + 1))
        a[:n_layers, :n_layers] = gram + lam * np.eye(n_layers)
        a[:n_layers, n_layers] = a[n_layers, :n_layers] = -lam
        a[n_layers, n_layers] = lam * n_layers
        rhs = np.zeros(n_layers + 1)
        rhs[:n_layers] = xc.T @ (t - t_mean)
        sol = np.linalg.solve(a, rhs)
        self.weights = sol[:n_layers]
        self.common_weight = float(sol[n_layers])
        self.intercept = float(t_mean - x_mean @ self.weights)

    def kinetic_energy(self, layer_e_mev: Any) -> np.ndarray:
        """Kinetic energy in MeV for layer energies (N, n_layers) in MeV."""
        return self.intercept + np.asarray(layer_e_mev, dtype=np.float64) @ self.weights

    def _predict(self, data: Any, indices: Any) -> np.ndarray:
        t = self.kinetic_energy(layer_energies(data, indices))
        return kinetic_to_momentum(t, self.mass_mev) / 1000.0

    def _state(self) -> dict[str, Any]:
        return {"ridge": self.ridge, "intercept": self.intercept,
                "common_weight": self.common_weight, "weights": self.weights.tolist()}

    def _restore(self, state: dict[str, Any]) -> None:
        self.ridge = float(state["ridge"])
        self.intercept = float(state["intercept"])
        self.common_weight = float(state["common_weight"])
        self.weights = np.asarray(state["weights"], dtype=np.float64)


class GradientBoostedTrees(Baseline):
    """Histogram gradient-boosted trees on :func:`high_level_features`, fitted to ``p`` in GeV.

    scikit-learn's ``HistGradientBoostingRegressor`` with squared-error loss (the quantity
    RMSE measures), seeded, with early stopping on an internal validation split
    (``validation_fraction`` of the training showers, drawn with ``seed``). Trees are invariant
    to monotone transforms of the features, so the features enter in physical units.

    Saved files are Python pickles (a fitted scikit-learn model has no portable format):
    load only files from a trusted source, with a compatible scikit-learn version.

    Arguments:
        max_iter: boosting iterations at most.
        learning_rate: shrinkage.
        max_leaf_nodes: leaves per tree.
        min_samples_leaf: showers per leaf at least.
        l2_regularization: L2 penalty on the leaf values.
        validation_fraction: share of the training showers held out for early stopping.
        n_iter_no_change: patience of early stopping (iterations).
        seed: ``random_state`` of the split and the trees.
        n_threads: OpenMP threads for fitting and prediction (None: scikit-learn's default,
            all cores; 1 is much faster on a loaded shared machine). Results do not depend on
            it.
        feature_options: keyword arguments of :func:`high_level_features`.
        target_key, mass_mev: see :class:`Baseline` (the mass is not used by the trees).

    References:
        J. H. Friedman, Ann. Statist. 29 (2001) 1189; G. Ke et al., LightGBM, NeurIPS 2017.
    """

    name: ClassVar[str] = "gradient-boosted-trees"

    def __init__(self, *, max_iter: int = 1000, learning_rate: float = 0.05,
                 max_leaf_nodes: int = 31, min_samples_leaf: int = 20,
                 l2_regularization: float = 0.0, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 30, seed: int = 0, n_threads: int | None = None,
                 feature_options: dict[str, Any] | None = None,
                 target_key: str = "momentum", mass_mev: float = PROTON_MASS_MEV) -> None:
        super().__init__(target_key=target_key, mass_mev=mass_mev)
        if not 0.0 < validation_fraction < 1.0:
            raise InputError(f"validation_fraction={validation_fraction}",
                             key="validation_fraction", expected="a number in (0, 1)")
        self.params: dict[str, Any] = {
            "max_iter": int(max_iter), "learning_rate": float(learning_rate),
            "max_leaf_nodes": int(max_leaf_nodes), "min_samples_leaf": int(min_samples_leaf),
            "l2_regularization": float(l2_regularization),
            "validation_fraction": float(validation_fraction),
            "n_iter_no_change": int(n_iter_no_change), "seed": int(seed)}
        if n_threads is not None and int(n_threads) < 1:
            raise InputError(f"n_threads={n_threads}", key="n_threads",
                             expected="None or an integer >= 1")
        self.n_threads = None if n_threads is None else int(n_threads)
        self.feature_options = dict(feature_options or {})
        self.feature_names: list[str] = []
        self.model: Any = None

    def _fit(self, data: Any, indices: Any, p_gev: np.ndarray) -> None:
        ensemble = require("sklearn.ensemble", _SKLEARN_EXTRA, "Gradient-boosted tree baselines")
        x, names = high_level_features(data, indices, **self.feature_options)
        q = self.params
        if len(x) < 20 or round(len(x) * q["validation_fraction"]) < 2:
            raise InputError(f"{len(x)} showers for boosted trees with early stopping",
                             path=_data_path(data), key="data",
                             expected="at least 20 showers and 2 for validation")
        model = ensemble.HistGradientBoostingRegressor(
            loss="squared_error", learning_rate=q["learning_rate"], max_iter=q["max_iter"],
            max_leaf_nodes=q["max_leaf_nodes"], min_samples_leaf=q["min_samples_leaf"],
            l2_regularization=q["l2_regularization"], early_stopping=True,
            validation_fraction=q["validation_fraction"],
            n_iter_no_change=q["n_iter_no_change"], random_state=q["seed"])
        with self._threads():
            self.model = model.fit(x, p_gev)
        self.feature_names = names

    def _predict(self, data: Any, indices: Any) -> np.ndarray:
        x, _ = high_level_features(data, indices, **self.feature_options)
        with self._threads():
            return self.model.predict(x)

    def _threads(self) -> Any:
        if self.n_threads is None:
            return contextlib.nullcontext()
        tpc = require("threadpoolctl", _SKLEARN_EXTRA, "Limiting the threads of the trees")
        return tpc.threadpool_limits(limits=self.n_threads, user_api="openmp")

    def _state(self) -> dict[str, Any]:
        n_iter = getattr(self.model, "n_iter_", None)
        return {"params": dict(self.params), "feature_options": dict(self.feature_options),
                "feature_names": list(self.feature_names),
                "n_threads": self.n_threads,
                "n_iter": None if n_iter is None else int(n_iter)}

    def _restore(self, state: dict[str, Any]) -> None:
        self.params = dict(state["params"])
        self.feature_options = dict(state["feature_options"])
        self.feature_names = list(state["feature_names"])
        self.n_threads = state.get("n_threads")
        self.model = state["model"]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted trees atomically as a pickle (see the class docstring)."""
        self._require_fitted()
        payload = self._header() | self._state() | {"model": self.model}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return Path(path)


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (CalibratedEnergySum, PerLayerLinear, GradientBoostedTrees)
}
"""The baselines by name."""


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read any baseline written by its ``save()``: JSON for the linear ones, a pickle for the
    trees (load pickles only from a trusted source).

    Raises:
        InputError: a missing or unreadable file, another format, an unknown baseline.
    """
    p = Path(path)
    expected = f"a {_FORMAT} file (JSON, or a pickle for the trees)"
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path=p,
                         expected=expected) from None
    try:
        if raw[:1] == b"\x80":
            d = pickle.loads(raw)  # documented: trusted files only
        else:
            d = json.loads(raw.decode("utf-8"))
    except Exception as exc:  # any decoding failure is a bad file
        raise InputError(f"not a readable baseline ({type(exc).__name__})", path=p,
                         expected=expected) from None
    if not isinstance(d, dict) or d.get("format") != _FORMAT:
        raise InputError("not a baseline file", path=p, key="format", expected=expected)
    if int(d.get("format_version", -1)) > _FORMAT_VERSION:
        raise InputError(f"format version {d.get('format_version')}", path=p,
                         key="format_version",
                         expected=f"version <= {_FORMAT_VERSION} (a newer showerformer wrote it)")
    cls = BASELINES.get(str(d.get("name")))
    if cls is None:
        raise InputError(f"unknown baseline {d.get('name')!r}", path=p, key="name",
                         expected=f"one of {', '.join(BASELINES)}")
    model = cls()
    try:
        model._restore_header(d)
        model._restore(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"incomplete {cls.name} parameters ({exc})", path=p, key="name",
                         expected=expected) from None
    return model
