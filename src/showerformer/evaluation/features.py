"""High-level shower features as the CaloChallenge evaluation defines them, computed in chunks.

Definitions follow the official CaloChallenge evaluation code (CaloChallenge/homepage,
``code/HighLevelFeatures.py`` and ``code/evaluate.py``), in the version of its
``more_evaluations`` branch (the one that adds FPD/KPD):

- voxels below the readout threshold are set to zero *before* every feature, histogram and
  classifier input (``np.where(shower < min_energy, 0, shower)``; the one official exception, the
  voxels of the normalized low-level classifier input, is reproduced); the thresholds are 1 MeV
  for dataset 1 and 0.5 keV / 0.033 (sampling fraction) = 15.15 keV for datasets 2 and 3;
- ``E_tot/E_inc``, the energy per layer, and per layer the energy-weighted centre
  ``EC_x = sum(x E) / (sum(E) + 1e-16)`` and width
  ``width_x = sqrt(max(sum(x^2 E) / (sum(E) + 1e-16) - EC_x^2, 0))`` in ``x = eta, phi`` (layers
  with more than one angular bin only) and in ``x = r`` (every non-empty layer), with
  ``eta = r cos(alpha)``, ``phi = r sin(alpha)`` at the bin centres (mm);
- ``sparsity_l`` = the fraction of layer-``l`` voxels that are zero after the threshold.

The main branch of the official code does not zero the voxels (it uses the thresholds, 10 MeV for
dataset 1, only as the lower edge of the logarithmic binnings); ``threshold=0.0`` reproduces its
features, ``floor=`` of :func:`official_binning` its binnings.

A :class:`FeatureAccumulator` keeps only per-shower features, the summed shower and the voxel
energy spectrum, so samples of any size are processed chunk by chunk with bounded memory.
The voxel spectrum is accumulated on a fixed fine grid (the float32 exponent and the leading
12 mantissa bits, relative bin width 2.4e-4) and rebinned onto any binning afterwards: counts
are exact at the grid's edges and at the sample's smallest and largest voxel, and log-linearly
interpolated inside one fine bin elsewhere (an error far below a single count's weight in the
50-bin official histogram).

References:
    CaloChallenge 2022 evaluation, https://github.com/CaloChallenge/homepage (code/),
    arXiv:2410.21611.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from showerformer._atomic import atomic_path
from showerformer.errors import InputError
from showerformer.geometry import (
    DS23_THRESHOLD,
    READOUT_THRESHOLDS,
    CartesianGeometry,
    CylindricalGeometry,
    Geometry,
    get_geometry,
)
from showerformer.showers import PointShowers, VoxelShowers

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DS23_THRESHOLD",
    "EPS",
    "LOG_EPS",
    "VOXEL_KEY",
    "ClassifierKind",
    "FeatureAccumulator",
    "FeatureSet",
    "classifier_inputs",
    "classifier_inputs_streaming",
    "compute_features",
    "compute_features_streaming",
    "dataset_kind",
    "default_threshold",
    "ds1_energy_bins",
    "high_level_matrix",
    "high_level_names",
    "histogram_names",
    "official_binning",
    "voxel_grid_edges",
]

EPS = 1e-16
"""Added to every energy sum that divides (``EC = sum(x E) / (sum(E) + EPS)``), as officially."""
LOG_EPS = 1e-8
"""Added before ``log10`` of layer and total energies in classifier inputs, as officially."""
DEFAULT_THRESHOLDS: dict[str, float] = dict(READOUT_THRESHOLDS)
"""Default voxel thresholds (MeV) by geometry name, the readout thresholds of the presets
(:data:`showerformer.geometry.READOUT_THRESHOLDS`); other geometries default to 0."""
_DATASETS = ("ds1-photons", "ds1-pions", "ds2", "ds3")

VOXEL_KEY = "voxel_energy"
"""Name of the voxel energy spectrum in histogram and separation-power dictionaries."""

ClassifierKind = Literal["low", "low_normed", "high"]
_LOW_KINDS = ("low", "low_normed")

# Fine grid of the voxel spectrum: float32 bit patterns truncated to 12 mantissa bits.
_GRID_BITS = 12
_GRID_SHIFT = 23 - _GRID_BITS
_GRID_MIN_EXP = -30  # 2^-30 MeV ~ 1e-9 MeV: everything below goes to the underflow bin
_GRID_MAX_EXP = 30  # 2^30 MeV ~ 1e9 MeV: everything above goes to the overflow bin
_GRID_KEY0 = (127 + _GRID_MIN_EXP) << _GRID_BITS
_GRID_NBINS = (_GRID_MAX_EXP - _GRID_MIN_EXP) << _GRID_BITS
_BLOCK_BYTES = 128 << 20  # float32 voxel bytes processed at once inside one update

_DS1_TARGET_EXPONENTS = np.arange(8, 24)  # ds1 incident energies 2^8 ... 2^22 MeV


def voxel_grid_edges() -> np.ndarray:
    """Edges (MeV) of the fine voxel-spectrum grid, (n_fine + 1,); under/overflow bins excluded."""
    k = np.arange(_GRID_NBINS + 1, dtype=np.int64)
    exponent = _GRID_MIN_EXP + (k >> _GRID_BITS)
    mantissa = 1.0 + (k & ((1 << _GRID_BITS) - 1)) / float(1 << _GRID_BITS)
    return np.ldexp(mantissa, exponent)


def dataset_kind(geometry: str | Geometry) -> str | None:
    """The CaloChallenge dataset whose official binnings apply: ``"ds1-photons"``, ``"ds1-pions"``,
    ``"ds2"``, ``"ds3"`` (also for ``"par04"``, the same cells), or None for other geometries."""
    name = geometry.name if isinstance(geometry, Geometry) else str(geometry)
    name = name.lower()
    aliases = {"1-photons": "ds1-photons", "1-pions": "ds1-pions", "2": "ds2", "3": "ds3",
               "par04": "ds3"}
    name = aliases.get(name, name)
    return name if name in _DATASETS else None


def default_threshold(geometry: str | Geometry) -> float:
    """The official voxel threshold (MeV) for a geometry: 1 for ds1, 15.15e-3 for ds2/ds3, else 0.

    A :class:`Geometry` carries its own (``readout_threshold_mev``, set by the presets); a name
    gives the threshold of the preset of that name.
    """
    if isinstance(geometry, Geometry):
        return float(geometry.readout_threshold_mev)
    return READOUT_THRESHOLDS.get(str(geometry).lower(), 0.0)


def ds1_energy_bins() -> list[tuple[float, float]]:
    """The 15 incident-energy ranges [2^(8+i), 2^(9+i)) MeV of the dataset-1 E_tot/E_inc plots."""
    e = 2.0 ** _DS1_TARGET_EXPONENTS.astype(np.float64)
    return [(float(e[i]), float(e[i + 1])) for i in range(len(e) - 1)]


# ---------------------------------------------------------------------------- geometry layout
class _Layout:
    """Per-geometry constants: which layers carry which features, and per-cell weights."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        if isinstance(geometry, CylindricalGeometry):
            eta, phi, r = geometry.eta, geometry.phi, geometry.r_mid
            self.layers = list(geometry.relevant_layers)
            self.alpha_layers = list(geometry.alpha_binned_layers)
        elif isinstance(geometry, CartesianGeometry):
            centres = geometry.cell_centers()
            eta, phi = centres[:, 0], centres[:, 1]
            r = np.hypot(eta, phi)
            self.layers = list(range(geometry.n_layers))
            self.alpha_layers = list(self.layers)
        else:
            raise InputError(f"no shower features for geometry type {type(geometry).__name__}",
                             key="geometry", expected="a cylindrical or Cartesian geometry")
        self.eta = np.asarray(eta, dtype=np.float64)
        self.phi = np.asarray(phi, dtype=np.float64)
        self.r = np.asarray(r, dtype=np.float64)
        # (n_cells, 7): 1, eta, phi, eta^2, phi^2, r, r^2
        cols = np.stack([np.ones_like(self.r), self.eta, self.phi, self.eta**2, self.phi**2,
                         self.r, self.r**2], axis=1)
        self.slices = [geometry.layer_slice(lid) for lid in self.layers]
        self.cell_counts = np.array([s.stop - s.start for s in self.slices], dtype=np.int64)
        self.weights = [cols[s] for s in self.slices]
        counts = set(self.cell_counts.tolist())
        self.uniform = (
            len(self.layers) == geometry.n_layers
            and len(counts) == 1
            and all(np.array_equal(w, self.weights[0]) for w in self.weights[1:])
        )
        self.alpha_index = np.array([self.layers.index(lid) for lid in self.alpha_layers],
                                    dtype=np.int64)
        self.kind = dataset_kind(geometry)
        names = ["E_tot", "E_tot/E_inc", "n_hits"] + [f"E_layer_{lid}" for lid in self.layers]
        for lid in self.alpha_layers:
            names += [f"EC_eta_{lid}", f"EC_phi_{lid}", f"width_eta_{lid}", f"width_phi_{lid}"]
        for lid in self.layers:
            names += [f"EC_r_{lid}", f"width_r_{lid}", f"sparsity_{lid}"]
        self.feature_names = names

    def derive(self, moments: np.ndarray, nnz: np.ndarray, einc: np.ndarray) -> np.ndarray:
        """Per-shower features (b, n_features), in the order of ``feature_names``, from the
        energy moments per layer (b, n_rel, 7) and the non-zero cell counts (b, n_rel)."""
        b, n_rel = nnz.shape
        e_layer = moments[:, :, 0]
        denom = (e_layer + EPS)[:, :, None]
        centre = moments[:, :, [1, 2, 5]] / denom  # eta, phi, r
        width = np.sqrt(np.clip(moments[:, :, [3, 4, 6]] / denom - centre**2, 0.0, None))
        etot = e_layer.sum(axis=1)
        a = self.alpha_index
        blocks = [
            etot[:, None], (etot / einc)[:, None], nnz.sum(axis=1)[:, None], e_layer,
            np.stack([centre[:, a, 0], centre[:, a, 1], width[:, a, 0], width[:, a, 1]],
                     axis=2).reshape(b, 4 * len(a)),
            np.stack([centre[:, :, 2], width[:, :, 2], 1.0 - nnz / self.cell_counts],
                     axis=2).reshape(b, 3 * n_rel),
        ]
        return np.concatenate(blocks, axis=1)

    def r_max(self, layer: int) -> float:
        return float(self.r[self.geometry.layer_slice(layer)].max())

    def xy_max(self, layer: int) -> float:
        sl = self.geometry.layer_slice(layer)
        return float(max(np.abs(self.eta[sl]).max(), np.abs(self.phi[sl]).max()))

    def radial_map(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(edges, cell, bin, fraction): how each cell's energy spreads over common r bins.

        Cylindrical cells split over the union of all layers' radial edges in proportion to
        their area (energy assumed uniform inside a cell); Cartesian cells go whole to the bin
        of their centre radius.
        """
        geo = self.geometry
        if isinstance(geo, CylindricalGeometry):
            edges = np.unique(np.concatenate(
                [geo.layers[lid].r_edges for lid in self.layers] or [np.zeros(1)]))
            lo, hi = geo.r_lo, geo.r_hi
            cells, bins, fracs = [], [], []
            area = hi**2 - lo**2
            for b in range(len(edges) - 1):
                top = np.minimum(hi, edges[b + 1])
                bottom = np.maximum(lo, edges[b])
                overlap = np.where(top > bottom, top**2 - bottom**2, 0.0)
                idx = np.flatnonzero(overlap > 0)
                cells.append(idx)
                bins.append(np.full(len(idx), b))
                fracs.append(overlap[idx] / area[idx])
            return (edges, np.concatenate(cells), np.concatenate(bins), np.concatenate(fracs))
        assert isinstance(geo, CartesianGeometry)
        step = min(geo.dx, geo.dy)
        n_bins = max(1, math.ceil(float(self.r.max()) / step + 1e-9))
        edges = np.arange(n_bins + 1) * step
        bins = np.clip(np.searchsorted(edges, self.r, side="right") - 1, 0, n_bins - 1)
        cells = np.arange(geo.n_cells)
        return edges, cells, bins, np.ones(geo.n_cells)


_LAYOUTS: dict[int, _Layout] = {}


def _layout(geometry: Geometry) -> _Layout:
    key = id(geometry)
    lay = _LAYOUTS.get(key)
    if lay is None or lay.geometry is not geometry:
        lay = _Layout(geometry)
        if len(_LAYOUTS) > 16:
            _LAYOUTS.clear()
        _LAYOUTS[key] = lay
    return lay


# ---------------------------------------------------------------------------- feature set
def _check_bins(bins: Any, name: str) -> np.ndarray:
    """Bin edges as float64, (n_edges,), refused unless finite and increasing."""
    e = np.asarray(bins, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or not np.isfinite(e).all() or (np.diff(e) <= 0).any():
        raise InputError(f"bin edges of {name} {e.reshape(-1)[:4].tolist()}...", key="bins",
                         expected="at least two finite, increasing edges")
    return e


@dataclass
class FeatureSet:
    """Per-shower high-level features and accumulated summaries of one sample.

    Attributes:
        features: per-shower (N,) arrays by name: ``"E_tot"``, ``"E_tot/E_inc"``, ``"n_hits"``
            (cells above threshold), and per layer id ``l``: ``"E_layer_l"``, ``"EC_r_l"``,
            ``"width_r_l"``, ``"sparsity_l"`` (non-empty layers) and ``"EC_eta_l"``,
            ``"EC_phi_l"``, ``"width_eta_l"``, ``"width_phi_l"`` (layers binned in angle).
            Energies in MeV, positions in mm.
        incident_energy: (N,) MeV.
        voxel_hist: counts of non-zero voxel energies on the fine grid of
            :func:`voxel_grid_edges`, with an underflow bin first and an overflow bin last,
            (n_fine + 2,) int64; rebin with :meth:`voxel_histogram`.
        voxel_min, voxel_max: smallest and largest non-zero voxel energy (MeV), NaN if none.
        n_voxels: number of voxels seen, zeros included (N * n_cells).
        mean_shower: the average shower, (n_cells,) MeV.
        longitudinal_profile: mean energy per layer, (n_layers,) MeV (empty layers 0).
        radial_profile: mean energy per radial bin summed over layers, (n_r,) MeV.
        radial_edges: the radial bin edges in mm, (n_r + 1,).
        geometry: the cells' geometry.
        threshold: the voxel threshold applied (MeV).
        low_level: classifier inputs collected on request (``"low"``, ``"low_normed"``), (N, d).
    """

    features: dict[str, np.ndarray]
    incident_energy: np.ndarray
    voxel_hist: np.ndarray
    voxel_min: float
    voxel_max: float
    n_voxels: int
    mean_shower: np.ndarray
    longitudinal_profile: np.ndarray
    radial_profile: np.ndarray
    radial_edges: np.ndarray
    geometry: Geometry
    threshold: float
    low_level: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.incident_energy)

    @property
    def layers(self) -> list[int]:
        """Non-empty layer ids (energy, r and sparsity features)."""
        return list(_layout(self.geometry).layers)

    @property
    def alpha_layers(self) -> list[int]:
        """Layer ids binned in angle (eta and phi features)."""
        return list(_layout(self.geometry).alpha_layers)

    def values(self, name: str) -> np.ndarray:
        """Per-shower values of a feature, also ``"E_tot/E_inc_at_E_<E>"`` (the showers with an
        incident energy in the dataset-1 range starting at E MeV)."""
        if name in self.features:
            return self.features[name]
        m = re.fullmatch(r"E_tot/E_inc_at_E_(\d+)", name)
        if m:
            lo = float(m.group(1))
            sel = (self.incident_energy >= lo) & (self.incident_energy < 2 * lo)
            return self.features["E_tot/E_inc"][sel]
        raise InputError(f"no feature {name!r}", key="feature",
                         expected=f"one of {', '.join(list(self.features)[:6])}, ...")

    def histogram(self, name: str, bins: np.ndarray) -> np.ndarray:
        """Counts of a feature (or of ``"voxel_energy"``) in ``bins`` (edges), float64.

        Entries outside the edges are dropped, as ``np.histogram`` and the official plots do.

        Raises:
            InputError: edges that are not finite and increasing, an unknown feature.
        """
        bins = _check_bins(bins, name)
        if name == VOXEL_KEY:
            return self.voxel_histogram(bins)
        counts, _ = np.histogram(self.values(name), bins=bins)
        return counts.astype(np.float64)

    def voxel_histogram(self, bins: np.ndarray) -> np.ndarray:
        """Counts of non-zero voxel energies in ``bins`` (MeV edges), rebinned from the fine grid.

        The last bin includes its right edge, as in ``np.histogram``. Exact wherever an edge
        lies on a grid edge or outside [voxel_min, voxel_max]; elsewhere the one fine bin that
        holds the edge is split log-linearly.
        """
        bins = _check_bins(bins, VOXEL_KEY)
        below = self._count_below(bins)  # (n_edges,)
        total = float(self.voxel_hist.sum())
        if len(bins) and (bins[-1] >= self.voxel_max or not np.isfinite(self.voxel_max)):
            below[-1] = total  # right edge inclusive: everything up to the max is in
        return np.diff(below)

    def _count_below(self, t: np.ndarray) -> np.ndarray:
        """Number of non-zero voxels with energy < t for each edge t (interpolated in a fine bin)."""
        hist = self.voxel_hist.astype(np.float64)  # underflow, n_fine bins, overflow
        cum = np.concatenate([[0.0], np.cumsum(hist)])  # cum[i] = sum(hist[:i])
        total = cum[-1]
        t = np.asarray(t, dtype=np.float64)
        if not np.isfinite(self.voxel_min):
            return np.zeros(len(t))
        frac, exp2 = np.frexp(np.where(t > 0, t, 1.0))  # t = frac * 2^exp2, frac in [0.5, 1)
        e = exp2.astype(np.int64) - 1
        per_octave = 1 << _GRID_BITS
        j = np.floor((2.0 * frac - 1.0) * per_octave).astype(np.int64)
        inside = (e >= _GRID_MIN_EXP) & (e < _GRID_MAX_EXP)
        k = np.where(inside, (e - _GRID_MIN_EXP) * per_octave + j, 0)  # fine bin holding t
        lo_edge = np.ldexp(1.0 + j / per_octave, e)
        hi_edge = np.ldexp(1.0 + (j + 1) / per_octave, e)
        w = np.log(np.where(inside, t, 1.0) / np.where(inside, lo_edge, 1.0)) / np.log(
            np.where(inside, hi_edge / lo_edge, 2.0))
        out = np.where(inside, cum[k + 1] + w * hist[k + 1], 0.0)
        out = np.where(e >= _GRID_MAX_EXP, cum[-2], out)
        out = np.where(t <= self.voxel_min, 0.0, out)
        return np.where(t > self.voxel_max, total, out)

    def names(self) -> list[str]:
        """Names of the per-shower features."""
        return list(self.features)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to a ``.npz`` file (atomically), e.g. to cache a reference sample's features."""
        names = list(self.features)
        arrays: dict[str, np.ndarray] = {f"feature_{i}": self.features[n]
                                         for i, n in enumerate(names)}
        low = list(self.low_level)
        arrays.update({f"low_{i}": self.low_level[k] for i, k in enumerate(low)})
        meta = {"format": "showerformer-features", "version": 1, "names": names,
                "low_level": low, "geometry": self.geometry.to_dict(),
                "threshold": self.threshold, "voxel_min": self.voxel_min,
                "voxel_max": self.voxel_max, "n_voxels": self.n_voxels}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), incident_energy=self.incident_energy,
                     voxel_hist=self.voxel_hist, mean_shower=self.mean_shower,
                     longitudinal_profile=self.longitudinal_profile,
                     radial_profile=self.radial_profile, radial_edges=self.radial_edges,
                     **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureSet:
        """Read a file written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != "showerformer-features":
                    raise KeyError("meta")
                feats = {n: z[f"feature_{i}"] for i, n in enumerate(meta["names"])}
                low = {k: z[f"low_{i}"] for i, k in enumerate(meta["low_level"])}
                return cls(
                    features=feats, incident_energy=z["incident_energy"],
                    voxel_hist=z["voxel_hist"], voxel_min=float(meta["voxel_min"]),
                    voxel_max=float(meta["voxel_max"]), n_voxels=int(meta["n_voxels"]),
                    mean_shower=z["mean_shower"],
                    longitudinal_profile=z["longitudinal_profile"],
                    radial_profile=z["radial_profile"], radial_edges=z["radial_edges"],
                    geometry=Geometry.from_dict(meta["geometry"]),
                    threshold=float(meta["threshold"]), low_level=low,
                )
        except FileNotFoundError:
            raise InputError("no such file", path=path, expected="a feature file") from None
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(f"not a showerformer feature file ({exc})", path=path,
                             expected="a .npz written by FeatureSet.save") from None


# ---------------------------------------------------------------------------- accumulation
class FeatureAccumulator:
    """Computes features chunk by chunk: ``update(showers)`` per chunk, then ``result()``.

    Keeps the per-shower features (a few hundred floats per shower), the summed shower and the
    fine voxel spectrum; never more than one block of voxels (about 128 MB of float32) at once.

    Arguments:
        geometry: the showers' geometry.
        threshold: voxels below it (MeV) are set to zero first; default the geometry's
            readout threshold (``readout_threshold_mev``, see :data:`DEFAULT_THRESHOLDS`).
        collect: low-level classifier inputs to keep as well, ``"low"`` and/or ``"low_normed"``
            (N x n_cells floats each: for large samples these dominate the memory).
        low_dtype: dtype of the collected low-level inputs.
    """

    def __init__(
        self,
        geometry: Geometry | str,
        *,
        threshold: float | None = None,
        collect: Sequence[str] = (),
        low_dtype: Any = np.float32,
    ) -> None:
        self.geometry = get_geometry(geometry)
        self.layout = _layout(self.geometry)
        if threshold is None:
            threshold = default_threshold(self.geometry)
        threshold = float(threshold)
        if not math.isfinite(threshold) or threshold < 0:
            raise InputError(f"threshold {threshold}", key="threshold",
                             expected="a voxel energy >= 0 MeV")
        self.threshold = threshold
        self._thr32 = np.float32(threshold)
        bad = [c for c in collect if c not in _LOW_KINDS]
        if bad:
            raise InputError(f"cannot collect {bad}", key="collect",
                             expected="'low' and/or 'low_normed'")
        self.collect = tuple(dict.fromkeys(collect))
        self.low_dtype = np.dtype(low_dtype)
        self._n = 0
        self._einc: list[np.ndarray] = []
        self._blocks: list[np.ndarray] = []  # (b, n_features) per block
        self._low: dict[str, list[np.ndarray]] = {k: [] for k in self.collect}
        self._sum = np.zeros(self.geometry.n_cells, dtype=np.float64)
        self._hist = np.zeros(_GRID_NBINS + 2, dtype=np.int64)
        self._vmin = math.inf
        self._vmax = -math.inf
        self._buf: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._n

    def update(self, showers: VoxelShowers | PointShowers) -> None:
        """Add a chunk of showers (point clouds are voxelized through the geometry first)."""
        if isinstance(showers, PointShowers):
            showers = showers.to_voxels(showers.geometry or self.geometry)
        if not isinstance(showers, VoxelShowers):
            raise InputError(f"cannot compute features of {type(showers).__name__}",
                             expected="VoxelShowers or PointShowers")
        if not showers.geometry.same_cells(self.geometry):
            raise InputError(f"showers of geometry {showers.geometry.name} "
                             f"({showers.geometry.n_cells} cells)", key="geometry",
                             expected=f"{self.geometry.name} ({self.geometry.n_cells} cells)")
        einc = np.asarray(showers.conditions.energy, dtype=np.float64)
        if len(einc) and (not np.isfinite(einc).all() or (einc <= 0).any()):
            i = int(np.flatnonzero(~np.isfinite(einc) | (einc <= 0))[0])
            raise InputError(f"incident energy {einc[i]!r} at shower {self._n + i}",
                             key="incident_energies", expected="finite energies > 0 MeV")
        x = showers.energies
        rows = max(1, _BLOCK_BYTES // max(1, 4 * self.geometry.n_cells))
        for start in range(0, len(x), rows):
            self._update_block(x[start:start + rows], einc[start:start + rows])

    def _buffers(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reused (b, n_cells) float32, float64 and bool work arrays (no page faults per block)."""
        if self._buf is None or len(self._buf[0]) < b:
            n = self.geometry.n_cells
            self._buf = (np.empty((b, n), np.float32), np.empty((b, n), np.float64),
                         np.empty((b, n), bool))
        return self._buf[0][:b], self._buf[1][:b], self._buf[2][:b]

    def _update_block(self, x: np.ndarray, einc: np.ndarray) -> None:
        lay = self.layout
        b = len(x)
        xt, x64, mask = self._buffers(b)
        # validate before any arithmetic: NaN or inf would reach the matmul below (and warn)
        np.isfinite(x, out=mask)
        if not mask.all():
            i = int(np.flatnonzero(~mask.all(axis=1))[0])
            raise InputError(f"shower {self._n + i} contains NaN or inf", key="showers",
                             expected="finite voxel energies")
        # threshold as the official np.where(shower < min_energy, 0, shower), in float32
        np.less(x, self._thr32, out=mask)
        np.copyto(xt, x)
        np.copyto(xt, np.float32(0.0), where=mask)
        np.copyto(x64, xt)
        np.greater(xt, 0, out=mask)
        n_rel = len(lay.layers)
        if lay.uniform:
            c = int(lay.cell_counts[0])
            moments = (x64.reshape(b * n_rel, c) @ lay.weights[0]).reshape(b, n_rel, 7)
            nnz = np.count_nonzero(mask.reshape(b, n_rel, c), axis=2)
        else:
            moments = np.empty((b, n_rel, 7))
            nnz = np.empty((b, n_rel), dtype=np.int64)
            for i, (sl, w) in enumerate(zip(lay.slices, lay.weights, strict=True)):
                moments[:, i] = x64[:, sl] @ w
                nnz[:, i] = np.count_nonzero(mask[:, sl], axis=1)
        self._einc.append(einc.copy())
        self._blocks.append(lay.derive(moments, nnz, einc))
        self._sum += x64.sum(axis=0)
        pos = xt[mask]
        if pos.size:
            self._vmin = min(self._vmin, float(pos.min()))
            self._vmax = max(self._vmax, float(pos.max()))
            idx = (pos.view(np.int32) >> _GRID_SHIFT) - _GRID_KEY0
            np.clip(idx, -1, _GRID_NBINS, out=idx)
            idx += 1
            self._hist += np.bincount(idx, minlength=_GRID_NBINS + 2)
        if self.collect:
            log_e = np.log10(einc)[:, None]
            if "low" in self.collect:
                self._low["low"].append(np.concatenate(
                    [log_e, x64 / einc[:, None]], axis=1).astype(self.low_dtype))
            if "low_normed" in self.collect:
                e_layer = moments[:, :, 0]
                rep = np.repeat(e_layer, lay.cell_counts, axis=1)  # (b, n_cells)
                raw = np.maximum(x.astype(np.float64), 0.0)
                self._low["low_normed"].append(np.concatenate(
                    [log_e, raw / (rep + EPS), np.log10(e_layer + LOG_EPS)],
                    axis=1).astype(self.low_dtype))
        self._n += b

    def result(self) -> FeatureSet:
        """The :class:`FeatureSet` of all showers added so far."""
        if self._n == 0:
            raise InputError("no showers", expected="a sample with at least one shower")
        lay = self.layout
        einc = np.concatenate(self._einc)
        names = lay.feature_names
        table = np.empty((len(names), self._n))  # feature-major: each feature contiguous
        start = 0
        for block in self._blocks:
            table[:, start:start + len(block)] = block.T
            start += len(block)
        feats = {name: table[i] for i, name in enumerate(names)}
        mean_shower = self._sum / self._n
        geo = self.geometry
        longitudinal = np.bincount(geo.layer_of_cell, weights=mean_shower,
                                   minlength=geo.n_layers)
        edges, cell, rbin, frac = lay.radial_map()
        radial = np.bincount(rbin, weights=mean_shower[cell] * frac, minlength=len(edges) - 1)
        low = {k: np.concatenate(v) for k, v in self._low.items()}
        return FeatureSet(
            features=feats, incident_energy=einc, voxel_hist=self._hist.copy(),
            voxel_min=self._vmin if self._vmax >= self._vmin else math.nan,
            voxel_max=self._vmax if self._vmax >= self._vmin else math.nan,
            n_voxels=self._n * geo.n_cells, mean_shower=mean_shower,
            longitudinal_profile=longitudinal, radial_profile=radial, radial_edges=edges,
            geometry=geo, threshold=self.threshold, low_level=low,
        )


def compute_features(
    showers: VoxelShowers | PointShowers,
    *,
    threshold: float | None = None,
    geometry: Geometry | str | None = None,
    collect: Sequence[str] = (),
) -> FeatureSet:
    """High-level features of a sample held in memory (processed internally in blocks).

    Arguments:
        showers: voxel showers, or point clouds (voxelized through their or the given geometry).
        threshold: voxel threshold in MeV; default from the geometry (1 for ds1, 15.15e-3 for
            ds2/ds3, 0 otherwise).
        geometry: needed only for point clouds without a geometry.
        collect: low-level classifier inputs to keep (``"low"``, ``"low_normed"``).

    Returns:
        The :class:`FeatureSet`.

    References:
        CaloChallenge evaluation, ``HighLevelFeatures.py`` (arXiv:2410.21611).
    """
    return compute_features_streaming([showers], threshold=threshold, geometry=geometry,
                                      collect=collect)


def compute_features_streaming(
    chunks: Iterable[VoxelShowers | PointShowers],
    *,
    threshold: float | None = None,
    geometry: Geometry | str | None = None,
    collect: Sequence[str] = (),
) -> FeatureSet:
    """High-level features of a sample given as an iterable of chunks, in bounded memory.

    Arguments:
        chunks: e.g. ``iter_calochallenge(path, chunk_size=...)``; all of one geometry.
        threshold, geometry, collect: as in :func:`compute_features`.

    Returns:
        The :class:`FeatureSet`, equal to :func:`compute_features` of the concatenation.
    """
    acc: FeatureAccumulator | None = None
    for chunk in chunks:
        if acc is None:
            geo = geometry if geometry is not None else chunk.geometry
            if geo is None:
                raise InputError("point clouds without a geometry", key="geometry",
                                 expected="a geometry (e.g. ds2) to voxelize them")
            acc = FeatureAccumulator(geo, threshold=threshold, collect=collect)
        acc.update(chunk)
    if acc is None or len(acc) == 0:
        raise InputError("empty sample: no showers", expected="at least one shower")
    return acc.result()


# ---------------------------------------------------------------------------- binnings
def histogram_names(geometry: Geometry | str, *, extra: bool = True) -> list[str]:
    """Names of the histograms compared per feature, in the official order.

    The official list (``extra=False``): ``E_tot/E_inc``, ``E_layer_l``, ``EC_eta_l``,
    ``EC_phi_l``, ``width_eta_l``, ``width_phi_l``, for dataset 1 the 15
    ``E_tot/E_inc_at_E_<E>``, and ``voxel_energy``. ``extra=True`` appends ours: ``E_tot``,
    ``n_hits``, ``EC_r_l``, ``width_r_l``, ``sparsity_l``.
    """
    geo = get_geometry(geometry)
    lay = _layout(geo)
    names = ["E_tot/E_inc"] + [f"E_layer_{lid}" for lid in lay.layers]
    for stem in ("EC_eta", "EC_phi", "width_eta", "width_phi"):
        names += [f"{stem}_{lid}" for lid in lay.alpha_layers]
    if lay.kind is not None and lay.kind.startswith("ds1"):
        names += [f"E_tot/E_inc_at_E_{int(lo)}" for lo, _ in ds1_energy_bins()]
    names.append(VOXEL_KEY)
    if extra:
        names += ["E_tot", "n_hits"]
        for stem in ("EC_r", "width_r", "sparsity"):
            names += [f"{stem}_{lid}" for lid in lay.layers]
    return names


def _log_edges(lo: float, hi: float, n_edges: int, what: str) -> np.ndarray:
    if not (lo > 0 and math.isfinite(hi) and hi > lo):
        raise InputError(f"no logarithmic binning for {what}: range [{lo:g}, {hi:g}] MeV",
                         expected="reference values above the threshold")
    return np.logspace(np.log10(lo), np.log10(hi), n_edges)


def official_binning(
    name: str,
    geometry: Geometry | str,
    *,
    reference: FeatureSet | None = None,
    threshold: float | None = None,
    floor: float | None = None,
) -> np.ndarray:
    """Bin edges of one histogram as the official evaluation draws it (ours where it has none).

    Official (``code/evaluate_plotting_helper.py``), all with ``density=True``:

    - ``E_tot/E_inc``: ``linspace(0.5, 1.5, 101)``; dataset 1 per incident energy
      (``E_tot/E_inc_at_E_<E>``): ``linspace(0.4, 1.4, 21)``, photons from the 5th energy on
      ``linspace(0.9, 1.1, 21)``;
    - ``E_layer_l``: ``logspace(log10(threshold), log10(max of the reference), 40)``;
    - ``EC_eta_l``, ``EC_phi_l``: ``linspace(-30, 30, 101)`` for ds2/ds3; ds1 ``(-500, 500)``
      for layers 12 and 13, else ``(-100, 100)``;
    - ``width_eta_l``, ``width_phi_l``: ``(0, 30)``, ``(0, 400)``, ``(0, 100)``, 101 edges;
    - ``voxel_energy``: ``logspace(log10(threshold), log10(largest reference voxel), 50)``.

    Ours (no official histogram): ``sparsity_l`` ``linspace(0, 1, 101)``; ``EC_r_l``,
    ``width_r_l`` ``linspace(0, r_max, 101)`` with r_max the layer's outermost bin centre;
    ``E_tot`` 40 log bins up to the reference maximum; ``n_hits`` at most 100 integer-aligned
    bins over the reference range. For other geometries than ds1/ds2/ds3 (par04 counts as ds3)
    the eta/phi ranges are +-(largest |x| of the layer's cell centres) and (0, that).

    Arguments:
        name: a histogram name (see :func:`histogram_names`).
        geometry: geometry or its name.
        reference: the reference sample, needed for the data-driven ranges.
        threshold: lower edge of the logarithmic binnings; default the reference's threshold,
            else the geometry's default.
        floor: overrides that lower edge (e.g. 10 MeV to mimic the main branch on ds1); when
            the threshold is 0 the reference's smallest positive value is used.

    Returns:
        The edges, float64.
    """
    geo = get_geometry(geometry)
    lay = _layout(geo)
    kind = lay.kind
    if threshold is None:
        threshold = reference.threshold if reference is not None else default_threshold(geo)
    lo = float(floor) if floor is not None else float(threshold)

    def need_ref() -> FeatureSet:
        if reference is None:
            raise InputError(f"the binning of {name} depends on the reference sample",
                             key="reference", expected="a reference FeatureSet")
        return reference

    def positive_floor(values: np.ndarray) -> float:
        if lo > 0:
            return lo
        pos = values[values > 0]
        return float(pos.min()) if pos.size else 0.0

    if name == "E_tot/E_inc":
        return np.linspace(0.5, 1.5, 101)
    m = re.fullmatch(r"E_tot/E_inc_at_E_(\d+)", name)
    if m:
        if kind is None or not kind.startswith("ds1"):
            raise InputError(f"{name} exists for dataset 1 only", key="feature")
        i = round(math.log2(float(m.group(1)))) - 8
        if kind == "ds1-photons" and i > 3:
            return np.linspace(0.9, 1.1, 21)
        return np.linspace(0.4, 1.4, 21)
    if name == VOXEL_KEY:
        ref = need_ref()
        floor_v = lo if lo > 0 else ref.voxel_min
        return _log_edges(floor_v, ref.voxel_max, 50, "voxel_energy")
    if name == "E_tot":
        v = need_ref().features["E_tot"]
        return _log_edges(positive_floor(v), float(v.max()), 40, name)
    if name == "n_hits":
        v = need_ref().features["n_hits"]
        a, b = float(v.min()), float(v.max())
        if b - a + 1 <= 100:
            return np.arange(a - 0.5, b + 1.0, 1.0)
        return np.linspace(a - 0.5, b + 0.5, 101)
    m = re.fullmatch(r"(E_layer|EC_eta|EC_phi|width_eta|width_phi|EC_r|width_r|sparsity)_(\d+)",
                     name)
    if not m:
        raise InputError(f"no histogram {name!r}", key="feature",
                         expected="a name from histogram_names()")
    stem, layer = m.group(1), int(m.group(2))
    valid = lay.alpha_layers if stem in ("EC_eta", "EC_phi", "width_eta", "width_phi") \
        else lay.layers
    if layer not in valid:
        raise InputError(f"no histogram {name!r} in geometry {geo.name}", key="feature",
                         expected=f"layers {valid}")
    if stem == "E_layer":
        v = need_ref().features[name]
        return _log_edges(positive_floor(v), float(v.max()), 40, name)
    if stem == "sparsity":
        return np.linspace(0.0, 1.0, 101)
    if stem in ("EC_r", "width_r"):
        return np.linspace(0.0, lay.r_max(layer), 101)
    if kind in ("ds2", "ds3"):
        centre_lim = width_lim = 30.0
    elif kind is not None:  # dataset 1
        centre_lim, width_lim = (500.0, 400.0) if layer in (12, 13) else (100.0, 100.0)
    else:
        centre_lim = width_lim = lay.xy_max(layer)
    if stem.startswith("EC"):
        return np.linspace(-centre_lim, centre_lim, 101)
    return np.linspace(0.0, width_lim, 101)


# ---------------------------------------------------------------------------- classifier inputs
def high_level_matrix(fs: FeatureSet) -> np.ndarray:
    """The high-level classifier / FPD / KPD inputs of the official ``more_evaluations`` code.

    Columns: ``log10(E_inc)``; ``log10(E_layer + 1e-8)`` per non-empty layer; ``EC_eta/100``,
    ``EC_phi/100``, ``width_eta/100``, ``width_phi/100`` per angle-binned layer (all layers of
    one quantity, then the next); ``log10(E_tot + 1e-8)``; ``sparsity`` per non-empty layer;
    ``EC_r/100`` and ``width_r/100`` per non-empty layer. 362 columns for ds2/ds3.

    Returns:
        (N, d) float64.
    """
    f = fs.features
    lay = _layout(fs.geometry)
    cols = [np.log10(fs.incident_energy)]
    cols += [np.log10(f[f"E_layer_{lid}"] + LOG_EPS) for lid in lay.layers]
    for stem in ("EC_eta", "EC_phi", "width_eta", "width_phi"):
        cols += [f[f"{stem}_{lid}"] / 1e2 for lid in lay.alpha_layers]
    cols.append(np.log10(f["E_tot"] + LOG_EPS))
    cols += [f[f"sparsity_{lid}"] for lid in lay.layers]
    cols += [f[f"EC_r_{lid}"] / 1e2 for lid in lay.layers]
    cols += [f[f"width_r_{lid}"] / 1e2 for lid in lay.layers]
    return np.stack(cols, axis=1)


def high_level_names(fs: FeatureSet) -> list[str]:
    """Names of the columns of :func:`high_level_matrix`, in its order."""
    lay = _layout(fs.geometry)
    names = ["log10(E_inc)"] + [f"log10(E_layer_{lid})" for lid in lay.layers]
    for stem in ("EC_eta", "EC_phi", "width_eta", "width_phi"):
        names += [f"{stem}_{lid}" for lid in lay.alpha_layers]
    names.append("log10(E_tot)")
    names += [f"sparsity_{lid}" for lid in lay.layers]
    names += [f"EC_r_{lid}" for lid in lay.layers] + [f"width_r_{lid}" for lid in lay.layers]
    return names


def classifier_inputs(
    data: FeatureSet | VoxelShowers | PointShowers,
    kind: ClassifierKind,
    *,
    threshold: float | None = None,
) -> np.ndarray:
    """Classifier inputs per shower, exactly as the official ``more_evaluations`` code builds them.

    - ``"low"``: ``[log10(E_inc), E_i / E_inc]`` with the thresholded voxels E_i;
    - ``"low_normed"``: ``[log10(E_inc), E_i / (E_layer + 1e-16), log10(E_layer + 1e-8)]``, with
      the layer energies of the thresholded shower but, as officially, the voxels E_i not
      thresholded (only clipped at 0);
    - ``"high"``: :func:`high_level_matrix`.

    The main branch scaled the low-level voxels by 100 and had a shorter high-level vector;
    scale the columns yourself to reproduce it.

    Arguments:
        data: a :class:`FeatureSet` (low-level kinds only if collected with ``collect=``), or
            showers, whose features are computed here.
        kind: ``"low"``, ``"low_normed"`` or ``"high"``.
        threshold: for showers: the voxel threshold (MeV), default from the geometry.

    Returns:
        (N, d) array: float64 for ``"high"``, float32 for the low-level kinds.
    """
    if kind not in ("low", "low_normed", "high"):
        raise InputError(f"unknown classifier input {kind!r}", key="kind",
                         expected="'low', 'low_normed' or 'high'")
    if not isinstance(data, FeatureSet):
        data = compute_features(data, threshold=threshold,
                                collect=(kind,) if kind in _LOW_KINDS else ())
    if kind == "high":
        return high_level_matrix(data)
    if kind not in data.low_level:
        raise InputError(f"low-level inputs {kind!r} were not collected", key="kind",
                         expected=f"features computed with collect=('{kind}',)")
    return data.low_level[kind]


def classifier_inputs_streaming(
    chunks: Iterable[VoxelShowers | PointShowers],
    kind: ClassifierKind,
    *,
    threshold: float | None = None,
    geometry: Geometry | str | None = None,
) -> np.ndarray:
    """:func:`classifier_inputs` of a chunked sample; the result itself is (N, d) in memory."""
    fs = compute_features_streaming(chunks, threshold=threshold, geometry=geometry,
                                    collect=(kind,) if kind in _LOW_KINDS else ())
    return classifier_inputs(fs, kind)
