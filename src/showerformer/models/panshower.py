"""PanShower: one conditional flow-matching transformer over point clouds for every particle type.

Read top to bottom:

1. :class:`Preprocessing` (fitted on data, invertible, a plain dict in checkpoints): a point
   ``(x, y, z, E, layer)`` in mm and MeV becomes the three continuous features
   ``(x, y, log E)``, standardized per calorimeter layer (or globally), and its integer layer;
   ``z`` is not modelled, the inverse puts every point at its layer's depth. The incident energy
   becomes ``log E`` standardized.
2. :func:`make_batch`: showers -> the batch dict that :meth:`PanShower.loss` takes (points sorted
   by layer, per-layer counts, particle index, normalized incident energy, angles).
3. :class:`PanShower`, the velocity field ``v(x_t, t | c)``. Every point is a token:
   ``Linear(x_t, log(1 + n_layer))`` plus an embedding of its layer index. A global condition
   vector ``c`` (B, d) sums a particle-type embedding, an MLP of Gaussian Fourier features of the
   flow time and of the normalized log incident energy together with the direction unit vector,
   and an MLP of ``log(1 + n)`` of the per-layer point counts. ``c`` steers every block through
   adaptive layer norm (shift, scale and gate of both residual branches, as in DiT). The blocks
   use layer-window attention: a point attends only to points at most ``layer_window`` layers
   away (FlexAttention on CUDA, key tiles gathered per query tile elsewhere, see
   :mod:`showerformer.nn.layer_window`).
4. :meth:`PanShower.loss`: rectified-flow matching (:mod:`showerformer.methods.flow_matching`),
   the squared error averaged over real points only, with optional per-shower (or per-layer)
   optimal-transport pairing of noise and data points.
5. :meth:`PanShower.sample`: given the conditions and the number of points per layer (from
   :class:`~showerformer.models.point_count_fm.PointCountFM` or from data), build the layer of
   every point (sorted, so FlexAttention skips tiles), draw Gaussian noise and integrate the ODE
   from t = 0 to 1 with a fixed-step sampler (midpoint, 16 steps by default). The result is in the
   normalized space; :meth:`PanShower.generate` returns physical :class:`PointShowers`.

References:
    Buss, Day-Hall, Gaede, Kasieczka, Krüger, "PanShower: One model for all calorimeter
    showers" (seed document 004 of this project); Lipman et al. (flow matching),
    arXiv:2210.02747; Liu et al. (rectified flow), arXiv:2209.03003; Peebles & Xie (DiT,
    adaptive layer norm), arXiv:2212.09748; Perez et al. (FiLM), arXiv:1709.07871; Tancik et al.
    (Fourier features), arXiv:2006.10739; Dong et al. (FlexAttention), arXiv:2412.05496;
    Buhmann et al. (CaloClouds, point counts per layer), arXiv:2305.04847; Buss et al.
    (CaloHadronic), arXiv:2506.21720.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.methods.flow_matching import TIME_DISTRIBUTIONS, masked_mse, sample_path
from showerformer.models import register
from showerformer.models.config import ModelConfig
from showerformer.nn.attention import MLP
from showerformer.nn.embeddings import GaussianFourierFeatures, direction_vector
from showerformer.nn.layer_window import (
    BACKENDS,
    LayerWindowSelfAttention,
    layer_window_mask,
)
from showerformer.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, get_sampler, linear_schedule
from showerformer.showers import Conditions, PointShowers

__all__ = [
    "CONDITION_KEYS",
    "DEFAULT_PARTICLES",
    "PanShower",
    "PanShowerBlock",
    "PanShowerConfig",
    "PanShowerSample",
    "Preprocessing",
    "check_particles",
    "condition_tensors",
    "layers_from_counts",
    "make_batch",
    "particle_indices",
    "size_chunks",
]

DEFAULT_PARTICLES: tuple[int, ...] = (11, 22, 211, 2212)
"""PDG ids of the particle types, in embedding order: e-, gamma, pi+, proton."""

CONDITION_KEYS = ("particle", "energy", "theta", "phi")
"""Per-shower condition tensors shared by PanShower and PointCountFM (see :func:`condition_tensors`)."""

_OT_MODES = ("none", "shower", "layer")


# ----------------------------------------------------------------------------------------------
# Conditions and preprocessing


def particle_indices(pdg: Any, particles: tuple[int, ...] = DEFAULT_PARTICLES) -> np.ndarray:
    """Embedding index of every PDG id.

    Arguments:
        pdg: PDG ids.  # (N,)
        particles: the model's particle list (``config.particles``).

    Returns:
        ``(N,)`` int64 indices into ``particles``.

    Raises:
        InputError: for an id that is not in ``particles``.
    """
    pdg = np.asarray(pdg, dtype=np.int64).reshape(-1)
    lookup = {int(p): i for i, p in enumerate(particles)}
    unknown = sorted({int(p) for p in np.unique(pdg)} - set(lookup))
    if unknown:
        raise InputError(f"particle PDG id {unknown[0]} is not modelled", key="pdg",
                         expected="one of " + ", ".join(str(p) for p in particles))
    return np.array([lookup[int(p)] for p in pdg], dtype=np.int64)


def check_particles(particles: tuple[int, ...], key: str = "particles") -> None:
    """Check a model's particle list: at least one PDG id, all distinct and non-zero.

    Raises:
        InputError: naming ``key``.
    """
    if not particles or len(set(particles)) != len(particles) or 0 in particles:
        raise InputError(f"{key}={list(particles)!r}", key=key,
                         expected="a non-empty list of distinct non-zero PDG ids")


def _std(values: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.maximum(values.std(axis=axis), 1e-6)


@dataclass
class Preprocessing:
    """Invertible map between physical points and the model's normalized features.

    ``features = ((x, y, log max(E, energy_floor)) - mean[layer]) / std[layer]``; the inverse
    returns ``x, y`` in mm, ``E = exp(log E)`` in MeV, ``z = layer_z[layer]`` and the layer.
    The incident energy is normalized as ``(log E0 - incident_log_mean) / incident_log_std``.

    Attributes:
        mean: feature means per layer.  # (L, 3), rows equal when not per_layer
        std: feature standard deviations per layer.  # (L, 3)
        layer_z: depth assigned to the points of each layer, mm.  # (L,)
        energy_floor: smallest point energy before the log, MeV.
        incident_log_mean: mean of log incident energy (log MeV).
        incident_log_std: standard deviation of log incident energy.
        per_layer: whether the statistics were fitted per layer.
        log_energy_max: largest point ``log E`` (log MeV) the inverse returns (the training
            maximum plus log 2 when fitted; generated outliers are clipped to it). None: no limit.
    """

    mean: np.ndarray
    std: np.ndarray
    layer_z: np.ndarray
    energy_floor: float = 1e-6
    incident_log_mean: float = 0.0
    incident_log_std: float = 1.0
    per_layer: bool = True
    log_energy_max: float | None = None

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1, 3)
        self.std = np.asarray(self.std, dtype=np.float64).reshape(-1, 3)
        self.layer_z = np.asarray(self.layer_z, dtype=np.float64).reshape(-1)
        if not (len(self.mean) == len(self.std) == len(self.layer_z) > 0):
            raise InputError(f"statistics for {len(self.mean)}, {len(self.std)} and "
                             f"{len(self.layer_z)} layers", key="preprocessing",
                             expected="mean (L, 3), std (L, 3) and layer_z (L,) for one L")
        if not (np.all(self.std > 0) and self.incident_log_std > 0 and self.energy_floor > 0):
            raise InputError("non-positive spread or energy floor", key="preprocessing",
                             expected="positive std, incident_log_std and energy_floor")

    @property
    def n_layers(self) -> int:
        """Number of calorimeter layers ``L``."""
        return len(self.layer_z)

    @classmethod
    def fit(
        cls,
        showers: PointShowers,
        *,
        n_layers: int | None = None,
        per_layer: bool = True,
        min_points: int = 10,
    ) -> Preprocessing:
        """Fit the statistics on showers.

        Arguments:
            showers: training showers (points in mm and MeV, layer in column 4).
            n_layers: number of calorimeter layers; default: the geometry's, else the largest
                layer index + 1.
            per_layer: standardize every layer with its own statistics (layers with fewer than
                ``min_points`` points use the global ones).
            min_points: see ``per_layer``.

        Returns:
            The fitted :class:`Preprocessing`. ``layer_z`` is the middle of each layer of the
            showers' geometry when it has ``n_layers`` layers, else the mean ``z`` of the points
            of each layer (interpolated for empty layers).
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
    ) -> Preprocessing:
        """Fit the statistics on the real points of all showers stacked (no padding).

        Arguments:
            points: x, y, z (mm), E (MeV), layer of every real point.  # (M, 5)
            incident_energy: incident energies of the showers, MeV.  # (N,)
            geometry, n_layers, per_layer, min_points: as in :meth:`fit`.

        Returns:
            The fitted :class:`Preprocessing`.
        """
        geo = geometry
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 5)  # (M, 5)
        if len(pts) == 0:
            raise InputError("no points to fit the preprocessing on", key="points",
                             expected="at least one real point")
        layer = np.rint(pts[:, 4]).astype(np.int64)
        if n_layers is None:
            n_layers = geo.n_layers if geo is not None else int(layer.max()) + 1
        if layer.min() < 0 or layer.max() >= n_layers:
            raise InputError(f"layer indices from {layer.min()} to {layer.max()}", key="layer",
                             expected=f"0 .. {n_layers - 1}")
        positive = pts[:, 3][pts[:, 3] > 0]
        floor = float(positive.min()) if len(positive) else 1e-6
        feats = np.stack([pts[:, 0], pts[:, 1], np.log(np.maximum(pts[:, 3], floor))], axis=1)
        g_mean, g_std = feats.mean(axis=0), _std(feats)
        mean = np.tile(g_mean, (n_layers, 1))
        std = np.tile(g_std, (n_layers, 1))
        counts = np.bincount(layer, minlength=n_layers)
        if per_layer:
            for lay in np.flatnonzero(counts >= max(min_points, 2)):
                sel = feats[layer == lay]
                mean[lay], std[lay] = sel.mean(axis=0), _std(sel)
        if geo is not None and geo.n_layers == n_layers:
            layer_z = 0.5 * (geo.z_edges[:-1] + geo.z_edges[1:])
        else:
            filled = np.flatnonzero(counts > 0)
            z_mean = np.bincount(layer, weights=pts[:, 2], minlength=n_layers)[filled] / counts[filled]
            layer_z = np.interp(np.arange(n_layers), filled, z_mean)
        log_e0 = np.log(np.maximum(np.asarray(incident_energy, dtype=np.float64), 1e-12))
        return cls(mean=mean, std=std, layer_z=layer_z, energy_floor=floor,
                   incident_log_mean=float(log_e0.mean()),
                   incident_log_std=float(max(log_e0.std(), 1e-6)), per_layer=per_layer,
                   log_energy_max=float(feats[:, 2].max() + np.log(2.0)))

    def transform(self, points: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Physical points -> normalized features and layers.

        Arguments:
            points: x, y, z (mm), E (MeV), layer.  # (N, P, 5)
            mask: True for real points.  # (N, P)

        Returns:
            ``(features, layer)``: ``(N, P, 3)`` float32 (zero on padding) and ``(N, P)`` int64
            (zero on padding).
        """
        points = np.asarray(points, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        layer = np.where(mask, np.rint(points[..., 4]), 0).astype(np.int64)  # (N, P)
        if layer.size and (layer.min() < 0 or layer.max() >= self.n_layers):
            raise InputError(f"layer indices from {layer.min()} to {layer.max()}", key="layer",
                             expected=f"0 .. {self.n_layers - 1}")
        e = np.log(np.maximum(points[..., 3], self.energy_floor))
        feats = np.stack([points[..., 0], points[..., 1], e], axis=-1)  # (N, P, 3)
        out = (feats - self.mean[layer]) / self.std[layer]
        return np.where(mask[..., None], out, 0.0).astype(np.float32), layer

    def inverse(self, features: Any, layer: Any, mask: Any) -> np.ndarray:
        """Normalized features -> physical points (inverse of :meth:`transform`).

        Arguments:
            features: ``(x, y, log E)`` normalized.  # (N, P, 3), NumPy or torch
            layer: layer of every point.  # (N, P)
            mask: True for real points.  # (N, P)

        Returns:
            ``(N, P, 5)`` float32 = x, y, z (mm), E (MeV), layer; zero on padding.
        """
        feats = _numpy(features).astype(np.float64)
        layer = np.clip(_numpy(layer).astype(np.int64), 0, self.n_layers - 1)
        mask = _numpy(mask).astype(bool)
        phys = feats * self.std[layer] + self.mean[layer]  # (N, P, 3)
        out = np.stack([phys[..., 0], phys[..., 1], self.layer_z[layer],
                        np.exp(np.minimum(phys[..., 2], self._log_e_cap)),
                        layer.astype(np.float64)], axis=-1)
        return np.where(mask[..., None], out, 0.0).astype(np.float32)

    @property
    def _log_e_cap(self) -> float:
        return 700.0 if self.log_energy_max is None else min(700.0, float(self.log_energy_max))

    def transform_incident(self, energy: Any) -> np.ndarray:
        """Incident energy in MeV -> ``(log E - mean) / std``, (N,) float32."""
        e = np.maximum(np.asarray(_numpy(energy), dtype=np.float64), 1e-12)
        return ((np.log(e) - self.incident_log_mean) / self.incident_log_std).astype(np.float32)

    def inverse_incident(self, value: Any) -> np.ndarray:
        """Inverse of :meth:`transform_incident`: MeV, (N,) float64."""
        v = np.asarray(_numpy(value), dtype=np.float64)
        return np.exp(v * self.incident_log_std + self.incident_log_mean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (for checkpoints)."""
        return {"kind": "panshower", "mean": self.mean.tolist(), "std": self.std.tolist(),
                "layer_z": self.layer_z.tolist(), "energy_floor": float(self.energy_floor),
                "incident_log_mean": float(self.incident_log_mean),
                "incident_log_std": float(self.incident_log_std), "per_layer": bool(self.per_layer),
                "log_energy_max": (None if self.log_energy_max is None
                                   else float(self.log_energy_max))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; a missing or unknown key raises :class:`InputError`."""
        data = dict(data)
        kind = data.pop("kind", "panshower")
        if kind != "panshower":
            raise InputError(f"preprocessing of kind {kind!r}", key="kind", expected="'panshower'")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown preprocessing key {unknown[0]!r}", key=unknown[0],
                             expected="one of " + ", ".join(sorted(known)))
        for key in ("mean", "std", "layer_z"):
            if key not in data:
                raise InputError("missing preprocessing entry", key=key,
                                 expected="the dict written by Preprocessing.to_dict")
        return cls(**data)


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def condition_tensors(
    conditions: Conditions,
    preprocessing: Preprocessing,
    particles: tuple[int, ...] = DEFAULT_PARTICLES,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """The per-shower condition tensors of PanShower and PointCountFM.

    Arguments:
        conditions: incident particles (energy in MeV, PDG id, theta and phi in rad).
        preprocessing: supplies the incident-energy normalization.
        particles: the model's particle list.
        device: where to put the tensors.

    Returns:
        ``{"particle": (N,) int64, "energy": (N,) float32 normalized log E,
        "theta": (N,) float32, "phi": (N,) float32}``.
    """
    return {
        "particle": torch.as_tensor(particle_indices(conditions.pdg, particles), device=device),
        "energy": torch.as_tensor(preprocessing.transform_incident(conditions.energy), device=device),
        "theta": torch.as_tensor(np.asarray(conditions.theta, np.float32), device=device),
        "phi": torch.as_tensor(np.asarray(conditions.phi, np.float32), device=device),
    }


def make_batch(
    showers: PointShowers,
    preprocessing: Preprocessing,
    particles: tuple[int, ...] = DEFAULT_PARTICLES,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """The batch dict of :meth:`PanShower.loss` (and :meth:`PointCountFM.loss`) from showers.

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


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class PanShowerConfig(ModelConfig):
    """Hyper-parameters of :class:`PanShower`.

    Attributes:
        n_layers_calo: number of calorimeter layers (from the geometry, see :meth:`for_geometry`).
        particles: PDG ids of the modelled particle types, in embedding order.
        d_model: token width ``d``.
        n_heads: attention heads.
        n_layers: transformer blocks.
        mlp_ratio: MLP hidden width over ``d``.
        layer_window: a point attends to points at most this many layers away; None: no limit.
        n_fourier: Gaussian Fourier features of the flow time and of the incident energy.
        time_fourier_std: frequency spread of the time features.
        energy_fourier_std: frequency spread of the energy features.
        dropout: dropout on both residual branches and inside the MLP.
        time_distribution: training times, ``"uniform"`` or ``"logit-normal"``.
        ot_pairing: ``"none"``, ``"shower"`` (optimal-transport pairing of noise and data points
            within each shower) or ``"layer"`` (within each layer of each shower, cheaper).
        attention: ``"auto"`` (FlexAttention on CUDA, the blocked path elsewhere), ``"dense"``,
            ``"blocked"`` or ``"flex"``.
    """

    n_layers_calo: int = 30
    particles: tuple[int, ...] = DEFAULT_PARTICLES
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 6
    mlp_ratio: int = 4
    layer_window: int | None = 2
    n_fourier: int = 16
    time_fourier_std: float = 4.0
    energy_fourier_std: float = 1.0
    dropout: float = 0.0
    time_distribution: str = "uniform"
    ot_pairing: str = "none"
    attention: str = "auto"

    def __post_init__(self) -> None:
        self.check_types()

        def bad(key: str, expected: str) -> InputError:
            return InputError(f"{key}={getattr(self, key)!r}", key=key, expected=expected)

        if self.n_layers_calo < 1:
            raise bad("n_layers_calo", "at least one calorimeter layer")
        check_particles(self.particles)
        self.require_positive("d_model", "n_heads", "n_layers", "mlp_ratio")
        if self.d_model % self.n_heads:
            raise bad("n_heads", f"a divisor of d_model={self.d_model}")
        if self.layer_window is not None and self.layer_window < 0:
            raise bad("layer_window", "a non-negative integer or null")
        if self.n_fourier < 2 or self.n_fourier % 2:
            raise bad("n_fourier", "a positive even number")
        for key in ("time_fourier_std", "energy_fourier_std"):
            if not getattr(self, key) > 0.0:
                raise bad(key, "a positive frequency spread")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "a probability in [0, 1)")
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise bad("time_distribution", " or ".join(TIME_DISTRIBUTIONS))
        if self.ot_pairing not in _OT_MODES:
            raise bad("ot_pairing", " or ".join(_OT_MODES))
        if self.attention not in BACKENDS:
            raise bad("attention", " or ".join(BACKENDS))

    @property
    def n_particles(self) -> int:
        """Number of particle types (rows of the particle embedding)."""
        return len(self.particles)

    @classmethod
    def for_geometry(cls, geometry: Geometry, **kwargs: Any) -> PanShowerConfig:
        """A config whose ``n_layers_calo`` is the geometry's number of layers."""
        return cls(n_layers_calo=geometry.n_layers, **kwargs)


# ----------------------------------------------------------------------------------------------
# Network


class PanShowerBlock(nn.Module):
    """Transformer block with layer-window attention and adaptive layer norm.

    ``h = h + g1 * Attn(LN(h) (1 + s1) + b1)``, ``h = h + g2 * MLP(LN(h) (1 + s2) + b2)``, where
    ``(b1, s1, g1, b2, s2, g2) = Linear(SiLU(c))`` per shower. The modulation starts small
    (weights ~ N(0, 0.02^2), zero bias), so every residual branch starts almost closed.

    Arguments:
        d_model, n_heads, mlp_ratio: as in the config.
        dropout: on both residual branches and the MLP hidden layer.

    References:
        Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv:2212.09748.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.attn = LayerWindowSelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.mlp = MLP(d_model, mlp_ratio)
        self.mlp.act = nn.Sequential(nn.GELU(), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 6 * d_model))
        nn.init.normal_(self.modulation[1].weight, std=0.02)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, h: Tensor, c: Tensor, attn_mask: Any) -> Tensor:
        """Arguments: points ``h`` (B, P, d), condition ``c`` (B, d), a layer-window mask.
        Returns ``(B, P, d)``."""
        b1, s1, g1, b2, s2, g2 = self.modulation(c)[:, None].chunk(6, dim=-1)  # 6 x (B, 1, d)
        h = h + g1 * self.drop(self.attn(self.norm1(h) * (1 + s1) + b1, attn_mask))
        h = h + g2 * self.drop(self.mlp(self.norm2(h) * (1 + s2) + b2))
        return h


@dataclass
class PanShowerSample:
    """Generated point clouds in the normalized space.

    Attributes:
        x: normalized ``(x, y, log E)``; zero on padding.  # (B, P, 3)
        layer: layer of every point (sorted, padding last).  # (B, P) int64
        mask: True for real points.  # (B, P) bool
    """

    x: Tensor
    layer: Tensor
    mask: Tensor


@register("panshower")
class PanShower(nn.Module):
    """Conditional flow-matching transformer over the points of a shower, for all particle types.

    Arguments:
        config: hyper-parameters; the defaults when omitted.
    """

    config_class: ClassVar[type] = PanShowerConfig
    task: ClassVar[str] = "generation"
    family: ClassVar[str]

    def __init__(self, config: PanShowerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PanShowerConfig()
        d, L = config.d_model, config.n_layers_calo
        self.time_features = GaussianFourierFeatures(config.n_fourier, config.time_fourier_std)
        self.energy_features = GaussianFourierFeatures(config.n_fourier, config.energy_fourier_std)
        n_scalar = self.time_features.out_features + self.energy_features.out_features + 3
        self.scalar_mlp = nn.Sequential(nn.Linear(n_scalar, d), nn.SiLU(), nn.Linear(d, d))
        self.particle_embed = nn.Embedding(config.n_particles, d)
        self.count_mlp = nn.Sequential(nn.Linear(L, d), nn.SiLU(), nn.Linear(d, d))
        self.point_in = nn.Linear(3 + 1, d)
        self.layer_embed = nn.Embedding(L, d)
        self.blocks = nn.ModuleList(
            PanShowerBlock(d, config.n_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.n_layers)
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, 3)
        nn.init.normal_(self.particle_embed.weight, std=0.02)
        nn.init.normal_(self.layer_embed.weight, std=0.02)
        nn.init.normal_(self.modulation_out[1].weight, std=0.02)
        nn.init.zeros_(self.modulation_out[1].bias)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    # -- conditioning -----------------------------------------------------------------------------

    def attention_mask(self, layer: Tensor, mask: Tensor) -> Any:
        """The layer-window mask for these points (build once, reuse over ODE steps)."""
        return layer_window_mask(layer, mask, self.config.layer_window,
                                 backend=self.config.attention)

    def condition_vector(self, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        """Global condition ``c`` (B, d) from the flow time and the shower conditions.

        Arguments:
            t: flow time.  # (B,)
            cond: ``"particle"`` (B,) int64, ``"energy"`` (B,) normalized log incident energy,
                ``"theta"``, ``"phi"`` (B,) rad, ``"counts"`` (B, L) points per layer.
        """
        _require(cond, (*CONDITION_KEYS, "counts"), "cond")
        dtype = self.out.weight.dtype
        direction = direction_vector(cond["theta"].to(dtype), cond["phi"].to(dtype))  # (B, 3)
        scalars = torch.cat([self.time_features(t.to(dtype)),
                             self.energy_features(cond["energy"].to(dtype)), direction], dim=-1)
        counts = torch.log1p(cond["counts"].to(dtype).clamp_min(0))  # (B, L)
        return (self.scalar_mlp(scalars) + self.particle_embed(cond["particle"].long())
                + self.count_mlp(counts))  # (B, d)

    # -- network ----------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cond: Mapping[str, Tensor],
        layer: Tensor,
        mask: Tensor,
        *,
        attn_mask: Any = None,
    ) -> Tensor:
        """Velocity of the points at flow time ``t``.

        Arguments:
            x: normalized ``(x, y, log E)`` on the path.  # (B, P, 3)
            t: flow time in [0, 1].  # (B,)
            cond: see :meth:`condition_vector`.
            layer: calorimeter layer of every point.  # (B, P) int64
            mask: True for real points.  # (B, P) bool
            attn_mask: a precomputed :meth:`attention_mask` (built here when None).

        Returns:
            ``(B, P, 3)`` velocity; zero on padding.
        """
        b, p = layer.shape
        if x.shape != (b, p, 3) or mask.shape != (b, p) or t.shape != (b,):
            raise InputError(f"x {tuple(x.shape)}, t {tuple(t.shape)}, layer {tuple(layer.shape)},"
                             f" mask {tuple(mask.shape)}", key="x",
                             expected="x (B, P, 3), t (B,), layer and mask (B, P)")
        L = self.config.n_layers_calo
        layer, mask = layer.long().clamp(0, L - 1), mask.bool()
        if attn_mask is None:
            attn_mask = self.attention_mask(layer, mask)
        c = self.condition_vector(t, cond)  # (B, d)
        own = torch.log1p(cond["counts"].to(x.dtype).clamp_min(0)).gather(1, layer)  # (B, P)
        h = self.point_in(torch.cat([x, own[..., None]], dim=-1)) + self.layer_embed(layer)
        for block in self.blocks:
            h = block(h, c, attn_mask)  # (B, P, d)
        shift, scale = self.modulation_out(c)[:, None].chunk(2, dim=-1)  # 2 x (B, 1, d)
        v = self.out(self.norm_out(h) * (1 + scale) + shift)  # (B, P, 3)
        return v * mask[..., None].to(v.dtype)

    def loss(self, batch: Mapping[str, Tensor], *, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss averaged over real points (and the three features).

        Arguments:
            batch: ``"x"`` (B, P, 3) normalized points, ``"layer"`` (B, P) int64, ``"mask"``
                (B, P) bool, ``"particle"`` (B,) int64, ``"energy"`` (B,) normalized log
                incident energy, ``"theta"``, ``"phi"`` (B,) rad and optionally ``"counts"``
                (B, L) (computed from layer and mask when absent); see :func:`make_batch`.
            generator: source of the noise and times (torch's global one when None).

        Returns:
            Scalar loss.
        """
        _require(batch, ("x", "layer", "mask", *CONDITION_KEYS), "batch")
        x1 = batch["x"].to(self.out.weight.dtype)
        layer, mask = batch["layer"].long(), batch["mask"].bool()
        cond = dict(batch)
        if "counts" not in cond:
            cond["counts"] = _counts(layer, mask, self.config.n_layers_calo)
        mode = self.config.ot_pairing
        path = sample_path(x1, mask=mask, time_distribution=self.config.time_distribution,
                           ot=mode != "none", groups=layer if mode == "layer" else None,
                           generator=generator)
        v = self(path.x_t, path.t, cond, layer, mask)
        return masked_mse(v, path.velocity, mask)

    @torch.no_grad()
    def sample(
        self,
        conditions: Mapping[str, Tensor],
        counts: Tensor,
        *,
        generator: torch.Generator | None = None,
        steps: int = DEFAULT_STEPS,
        sampler: str = DEFAULT_SAMPLER,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> PanShowerSample:
        """Generate point clouds in the normalized space (evaluation mode; the mode is restored).

        Arguments:
            conditions: ``"particle"``, ``"energy"``, ``"theta"``, ``"phi"`` (B,) as in
                :func:`condition_tensors`, on the model's device.
            counts: points per layer.  # (B, L) integer
            generator: source of the initial noise (on the model's device).
            steps: ODE steps from t = 0 to 1.
            sampler: ``"midpoint"``, ``"heun"`` or ``"euler"``.
            callback: called after every ODE step (see :mod:`showerformer.samplers`).

        Returns:
            :class:`PanShowerSample`; :meth:`Preprocessing.inverse` makes it physical.
        """
        _require(conditions, CONDITION_KEYS, "conditions")
        device, dtype = self.out.weight.device, self.out.weight.dtype
        L = self.config.n_layers_calo
        counts = torch.as_tensor(counts, device=device)
        if counts.ndim != 2 or counts.shape[1] != L or counts.shape[0] != len(conditions["energy"]):
            raise InputError(f"counts of shape {tuple(counts.shape)}", key="counts",
                             expected=f"({len(conditions['energy'])}, {L}) points per layer")
        layer, mask = layers_from_counts(counts)  # (B, P) each
        cond = {k: conditions[k].to(device) for k in CONDITION_KEYS}
        cond["counts"] = counts
        x0 = torch.randn(*layer.shape, 3, generator=generator, device=device, dtype=dtype)
        x0 = x0 * mask[..., None].to(dtype)
        was_training = self.training
        self.eval()
        try:
            attn_mask = self.attention_mask(layer, mask)

            def velocity(x: Tensor, t: Tensor, c: Mapping[str, Tensor]) -> Tensor:
                return self(x, t, c, layer, mask, attn_mask=attn_mask)

            x = get_sampler(sampler)(velocity, x0, linear_schedule(steps, device=device, dtype=dtype),
                                     cond=cond, callback=callback)
        finally:
            self.train(was_training)
        return PanShowerSample(x=x * mask[..., None].to(dtype), layer=layer, mask=mask)

    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions,
        preprocessing: Preprocessing,
        *,
        counts: Any = None,
        count_model: nn.Module | None = None,
        generator: torch.Generator | None = None,
        steps: int = DEFAULT_STEPS,
        sampler: str = DEFAULT_SAMPLER,
        batch_size: int = 256,
        geometry: Geometry | None = None,
        max_padding: float = 0.25,
    ) -> PointShowers:
        """Generate showers in physical units (mm, MeV).

        Arguments:
            conditions: incident particles.
            preprocessing: the fitted transform of the training data.
            counts: points per layer ``(N, L)``; when None they are sampled from ``count_model``
                (a :class:`~showerformer.models.point_count_fm.PointCountFM`).
            count_model: see ``counts``.
            generator: source of randomness (on the model's device).
            steps, sampler: ODE integration.
            batch_size: showers generated at once, at most.
            geometry: attached to the returned showers.
            max_padding: a network call holds consecutive showers whose padding to the largest
                stays within this share of their points (see :func:`size_chunks`); pass the
                showers sorted by size to fill the calls.

        Returns:
            :class:`PointShowers` with ``(N, P, 5)`` points (x, y, z, E, layer).
        """
        device = self.out.weight.device
        cond_all = condition_tensors(conditions, preprocessing, self.config.particles, device)
        n = len(conditions)
        if counts is None:
            if count_model is None:
                raise InputError("neither counts nor a count model", key="counts",
                                 expected="points per layer (N, L) or a PointCountFM")
            counts = count_model.sample(cond_all, generator=generator, steps=steps,  # type: ignore[operator]
                                        sampler=sampler)
        counts = torch.as_tensor(counts, device=device).long()
        if counts.shape != (n, self.config.n_layers_calo):
            raise InputError(f"counts of shape {tuple(counts.shape)}", key="counts",
                             expected=f"({n}, {self.config.n_layers_calo})")
        ragged: list[np.ndarray] = []
        for sl in size_chunks(counts.sum(dim=1).cpu().numpy(), batch_size, max_padding):
            out = self.sample({k: v[sl] for k, v in cond_all.items()}, counts[sl],
                              generator=generator, steps=steps, sampler=sampler)
            pts = preprocessing.inverse(out.x, out.layer, out.mask)  # (b, P, 5)
            m = _numpy(out.mask)
            ragged += [p[r] for p, r in zip(pts, m, strict=True)]
        return PointShowers.from_ragged(ragged, conditions, geometry)


def size_chunks(sizes: np.ndarray, batch_size: int, max_padding: float = 0.25) -> list[slice]:
    """Cut showers, in their order, into network calls of at most ``batch_size`` showers whose
    padded points (showers x the largest) exceed their real points by at most ``max_padding``.

    Shower sizes from 1 GeV to 1 TeV differ a hundredfold, so a request padded to its largest
    shower computes mostly padding; sorted by size, it costs little more than its points.
    """
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}", key="batch_size",
                         expected="a positive number of showers")
    if not max_padding >= 0:
        raise InputError(f"max_padding={max_padding}", key="max_padding",
                         expected="a non-negative share of the points")
    sizes = np.maximum(np.asarray(sizes, dtype=np.int64).reshape(-1), 1)
    chunks: list[slice] = []
    start, total, largest = 0, 0, 0
    for i, size in enumerate(sizes.tolist()):
        new_largest, new_total = max(largest, size), total + size
        full = i - start >= batch_size
        if i > start and (full or (i - start + 1) * new_largest > (1 + max_padding) * new_total):
            chunks.append(slice(start, i))
            start, new_largest, new_total = i, size, size
        largest, total = new_largest, new_total
    if len(sizes):
        chunks.append(slice(start, len(sizes)))
    return chunks


def _counts(layer: Tensor, mask: Tensor, n_layers: int) -> Tensor:
    """Points per layer, (B, L) int64."""
    b = layer.shape[0]
    flat = torch.arange(b, device=layer.device)[:, None] * n_layers + layer.clamp(0, n_layers - 1)
    out = torch.zeros(b * n_layers, dtype=torch.long, device=layer.device)
    out.index_add_(0, flat[mask], torch.ones_like(flat[mask]))
    return out.view(b, n_layers)


def _require(d: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    for key in keys:
        if key not in d:
            raise InputError(f"{what} without this entry", key=key,
                             expected="a dict with " + ", ".join(repr(k) for k in keys))
