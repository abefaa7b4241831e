"""MDMA: the mean-field attention WGAN for point-cloud showers, with PointCountFM for the hits.

Read top to bottom:

1. :class:`MDMAPreprocessing` (fitted on data, invertible, a plain dict in checkpoints): every hit
   becomes the seed's four features. Its cell gives three index coordinates (layer, and alpha
   and r for cylindrical cells or y and x for Cartesian ones), each dequantized by ``U(0, 1)``
   (``index + u``), then min-max scaled by the index range, logit-transformed and standardized;
   the hit energy is Box-Cox transformed and standardized. The inverse floors the index
   coordinates back to a cell (clamped into the geometry), so voxelizing generated showers is
   exact per cell.
2. :class:`MDMAGenerator`: noise ``z ~ N(0, 1)`` of shape ``(n, 4)`` per shower, embedded to
   ``l`` by ``Phi``; the mean field starts as ``sum_i Phi(z_i) / c_N`` (``c_N`` the mean
   multiplicity); ``gen_blocks`` :class:`~showerformer.nn.mean_field.MeanFieldBlock` (hidden
   ``h``, heads) conditioned on the normalized incident energy and multiplicity; a per-point
   layer ``omega`` to the four features.
3. :class:`MDMACritic`: the same blocks with weight-normalized linear maps, a two-layer score
   head on the last mean field and the incident conditions; returns the score and the last
   mean field (for feature matching). Permutation invariant.
4. :meth:`MDMA.training_step` (WGAN-GP, arXiv:1704.00028): per step one critic update
   ``C(fake) - C(real) + gp_weight * GP`` where the gradient penalty interpolates each real
   shower with a generated shower of the same size (the generator is given the real shower's
   multiplicity, so the masks agree), then one generator update
   ``-C(G(z)) + fm_weight * mean (mf_real - mf_fake)^2 + response_weight * mean (eta_real -
   eta_fake)^2``
   with ``eta = sum E / E_inc`` per shower, then one update of the count model. Optimizers:
   RMSprop or Adam with ``beta1 = 0`` (the seed found momentum harmful); the warmup + cosine
   schedule of the trainer anneals every one. ``accumulate`` > 1 adds the gradients of that
   many consecutive (differently sized) batches before an update, which the seed found to take
   away some of the bias of size-bucketed batches.
5. :meth:`MDMA.validation_metric`: the seed's checkpointing criterion, the mean over the four
   features of the 1-Wasserstein distance between the real and the generated marginals of a
   validation sample (generated with the real multiplicities and a fixed seed).
6. :meth:`MDMA.generate`: counts per layer from PointCountFM (their sum is the multiplicity),
   then the generator, then the inverse preprocessing: physical :class:`PointShowers` on the
   cells of the training geometry.

References:
    Käch et al., "Attention to Mean-Fields for Particle Cloud Generation" (MDMA),
    arXiv:2305.15254, and "Attention to Mean-Fields for Calorimeter Simulation" (seed document 002
    of this project; arXiv:2408.04997 for the CaloChallenge write-up); Gulrajani et al. (WGAN-GP),
    arXiv:1704.00028; Salimans et al. (feature matching), arXiv:1606.03498; Salimans & Kingma
    (weight normalization), arXiv:1602.07868; Box & Cox (1964).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from showerformer.data.batching import BucketBatchSampler
from showerformer.data.conditions import (
    DEFAULT_PARTICLES,
    check_particles,
    condition_tensors,
)
from showerformer.data.points import PointCloudDataset
from showerformer.errors import InputError
from showerformer.geometry import CartesianGeometry, CylindricalGeometry, Geometry
from showerformer.models import register
from showerformer.models.config import ModelConfig
from showerformer.models.family import FamilyModule
from showerformer.models.point_count_fm import (
    CountsSection,
    PointCountFM,
    cap_counts,
)
from showerformer.models.point_flow import (
    check_condition_summary,
    check_count_limits,
    condition_summary,
    config_for_showers,
    count_limits,
)
from showerformer.nn.mean_field import MeanFieldBlock, WeightNormalizedLinear, mean_field_init
from showerformer.preprocessing import (
    BoxCox,
    Chain,
    Columns,
    Log,
    Logit,
    MinMax,
    Standardize,
    Transform,
    transform_from_dict,
)
from showerformer.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from showerformer.showers import Conditions, PointShowers

__all__ = [
    "FEATURES",
    "MDMA",
    "MDMACollate",
    "MDMAConfig",
    "MDMACritic",
    "MDMAGenerator",
    "MDMAPreprocessing",
]

FEATURES = ("z", "alpha", "r", "E")
"""The four point features (for Cartesian cells the second and third are y and x)."""

_OPTIMIZERS = ("rmsprop", "adam")
_LOGIT_EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# Preprocessing


def _cell_axes(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per cell the two in-layer index coordinates and their ranges: cylindrical (alpha bin,
    r bin), Cartesian (y index, x index)."""
    if isinstance(geometry, CylindricalGeometry):
        return (geometry.alpha_bin, geometry.r_bin, int(geometry._n_alpha.max(initial=1)),
                int(max(geometry._n_r.max(initial=1), 1)))
    if isinstance(geometry, CartesianGeometry):
        ix, iy, _ = geometry._indices(np.arange(geometry.n_cells))
        return iy.astype(np.int64), ix.astype(np.int64), geometry.ny, geometry.nx
    raise InputError(f"geometry {geometry.name} ({type(geometry).__name__})", key="geometry",
                     expected="cylindrical (CaloChallenge, Par04) or Cartesian cells for MDMA's "
                              "cell-index coordinates")


def _cells_from_index(geometry: Geometry, layer: np.ndarray, a: np.ndarray,
                      b: np.ndarray) -> np.ndarray:
    """Cell ids of index coordinates, clamped into each layer (-1 for a layer without cells)."""
    layer = np.clip(layer, 0, geometry.n_layers - 1)
    if isinstance(geometry, CylindricalGeometry):
        n_a, n_r = geometry._n_alpha[layer], geometry._n_r[layer]
        a = np.clip(a, 0, np.maximum(n_a - 1, 0))
        b = np.clip(b, 0, np.maximum(n_r - 1, 0))
        return np.where(n_r > 0, geometry.layer_offsets[layer] + a * n_r + b, -1)
    assert isinstance(geometry, CartesianGeometry)
    a = np.clip(a, 0, geometry.ny - 1)
    b = np.clip(b, 0, geometry.nx - 1)
    return (layer * geometry.ny + a) * geometry.nx + b


class MDMAPreprocessing:
    """Invertible map between the hits of a shower and MDMA's four normalized features.

    Arguments:
        geometry: the cells the hits live in (cylindrical or Cartesian).
        features: the fitted :class:`~showerformer.preprocessing.Columns` of the four features
            (index coordinates: min-max, logit, standardize; energy: Box-Cox, standardize).
        incident: the fitted transform of the incident energy (log, standardize).
        mean_points: ``c_N``, the mean number of hits per training shower.
        bounds: smallest and largest normalized value of every feature in the training hits,
            ``(4, 2)``; generated features are clamped into them (as the authors' code does),
            which keeps the critic's inputs and the energies of the response in range.
    """

    def __init__(self, geometry: Geometry, features: Transform, incident: Transform,
                 mean_points: float, bounds: Any = None) -> None:
        self._set_geometry(geometry)
        self.features = features
        self.bounds = (None if bounds is None
                       else np.asarray(bounds, dtype=np.float64).reshape(len(FEATURES), 2))
        self.incident = incident
        if not mean_points > 0:
            raise InputError(f"mean_points={mean_points!r}", key="mean_points",
                             expected="a positive mean multiplicity")
        self.mean_points = float(mean_points)

    def _set_geometry(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self._a, self._b, self.n_a, self.n_b = _cell_axes(geometry)

    @property
    def n_layers(self) -> int:
        """Calorimeter layers of the geometry."""
        return int(self.geometry.n_layers)

    def cells(self, points: np.ndarray) -> np.ndarray:
        """Cell id of every hit ``(M, 5)`` (x, y, z, E, layer), -1 outside the geometry."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 5)
        return self.geometry.locate(pts[:, 0], pts[:, 1], layer=np.rint(pts[:, 4]))

    def coordinates(self, cells: np.ndarray, energy: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Raw features ``(M, 4)``: index coordinates ``index + u`` and the energy (MeV)."""
        cells = np.asarray(cells, dtype=np.int64)
        layer = self.geometry.layer_of_cell[cells]
        idx = np.stack([layer, self._a[cells], self._b[cells]], axis=1).astype(np.float64)
        return np.concatenate([idx + u, np.asarray(energy, np.float64)[:, None]], axis=1)

    @classmethod
    def fit(cls, points: np.ndarray, incident_energy: np.ndarray, geometry: Geometry,
            rng: np.random.Generator | int = 0) -> MDMAPreprocessing:
        """Fit the transforms on the real hits of the training showers.

        Arguments:
            points: x, y, z (mm), E (MeV), layer of every real hit.  # (M, 5)
            incident_energy: incident energies of the showers, MeV.  # (N,)
            geometry: the cells of the hits.
            rng: seed of the dequantization draws used for fitting.

        Raises:
            InputError: hits outside the geometry, no hits, or energies that are not positive.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 5)
        n_showers = len(np.asarray(incident_energy).reshape(-1))
        if len(pts) == 0 or n_showers == 0:
            raise InputError("no hits to fit the preprocessing on", key="points",
                             expected="at least one hit")
        blank = cls.__new__(cls)  # the geometry part only, to locate the hits
        blank._set_geometry(geometry)
        n_a, n_b = blank.n_a, blank.n_b
        cells = blank.cells(pts)
        if np.any(cells < 0):
            raise InputError(f"{int(np.sum(cells < 0))} hits outside the cells of "
                             f"{geometry.name}", key="points",
                             expected="hits inside the geometry")
        u = np.random.default_rng(rng).random((len(pts), 3))
        raw = blank.coordinates(cells, pts[:, 3], u)

        def index(hi: int) -> Chain:
            return Chain([MinMax(0.0, float(hi)), Logit(_LOGIT_EPS), Standardize()])

        features = Columns([index(geometry.n_layers), index(n_a), index(n_b),
                            Chain([BoxCox(), Standardize()])])
        features.fit(raw)
        normed = features.forward(raw)
        bounds = np.stack([normed.min(axis=0), normed.max(axis=0)], axis=1)  # (4, 2)
        incident = Chain([Log(1e-12), Standardize()])
        incident.fit(np.asarray(incident_energy, np.float64).reshape(-1, 1))
        return cls(geometry, features, incident, len(pts) / n_showers, bounds)

    def transform(self, cells: np.ndarray, energy: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Normalized features ``(M, 4)`` float32 of hits given by cell, energy and ``u``."""
        return self.features.forward(self.coordinates(cells, energy, u)).astype(np.float32)

    def inverse(self, features: np.ndarray) -> np.ndarray:
        """Normalized features ``(M, 4)`` -> hits ``(M, 5)`` (x, y, z at the cell centre, E in
        MeV, layer); a hit that lands in a layer without cells gets layer -1 (dropped by
        :meth:`to_points`)."""
        raw = self.features.inverse(np.asarray(features, dtype=np.float64).reshape(-1, 4))
        idx = np.floor(np.nan_to_num(raw[:, :3], nan=0.0)).astype(np.int64)
        cells = _cells_from_index(self.geometry, idx[:, 0], idx[:, 1], idx[:, 2])
        ok = cells >= 0
        centres = self.geometry.cell_centers()
        out = np.zeros((len(raw), 5), dtype=np.float64)
        out[ok, :3] = centres[cells[ok]]
        out[:, 3] = np.nan_to_num(raw[:, 3], nan=0.0, posinf=0.0, neginf=0.0)
        out[:, 4] = np.where(ok, self.geometry.layer_of_cell[np.maximum(cells, 0)], -1)
        return out

    def transform_incident(self, energy: Any) -> np.ndarray:
        """Incident energy in MeV -> the normalized log, ``(N,)`` float32."""
        e = np.asarray(energy, dtype=np.float64).reshape(-1, 1)
        return self.incident.forward(e).reshape(-1).astype(np.float32)

    def energy_affine(self) -> tuple[float, float, float]:
        """``(mean, std, lmbda)`` of the energy column, for the differentiable inverse."""
        chain = self.features.columns[3]  # type: ignore[attr-defined]
        box, std = chain.steps
        return float(std.mean), float(std.std), float(box.lmbda)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (for checkpoints)."""
        return {"kind": "mdma", "geometry": self.geometry.to_dict(),
                "features": self.features.to_dict(), "incident": self.incident.to_dict(),
                "mean_points": self.mean_points,
                "bounds": None if self.bounds is None else self.bounds.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MDMAPreprocessing:
        """Inverse of :meth:`to_dict`.

        Raises:
            InputError: another kind, a missing entry or a damaged transform, naming the key.
        """
        if not isinstance(data, Mapping) or data.get("kind") != "mdma":
            raise InputError(f"preprocessing of kind {dict(data).get('kind')!r}"
                             if isinstance(data, Mapping) else "not a mapping", key="kind",
                             expected="'mdma'")
        for key in ("geometry", "features", "incident", "mean_points"):
            if key not in data:
                raise InputError("missing entry", key=key,
                                 expected="the dict written by MDMAPreprocessing.to_dict")
        try:
            geometry = Geometry.from_dict(dict(data["geometry"]))
        except (InputError, KeyError, TypeError, ValueError):
            raise InputError("unreadable geometry", key="geometry",
                             expected="the geometry dict written at training") from None
        features = transform_from_dict(data["features"])
        if not isinstance(features, Columns) or len(features.columns) != 4:
            raise InputError("not four feature columns", key="features",
                             expected="the four columns z, alpha, r, E")
        bounds = data.get("bounds")
        if bounds is not None and np.asarray(bounds).shape != (len(FEATURES), 2):
            raise InputError(f"bounds of shape {np.asarray(bounds).shape}", key="bounds",
                             expected="(4, 2): low and high of every feature")
        return cls(geometry, features, transform_from_dict(data["incident"]),
                   float(data["mean_points"]), bounds)


class MDMACollate:
    """Training batches of MDMA from point-cloud dataset items.

    Every hit is located in its cell and dequantized afresh with ``torch.rand`` (torch's global
    generator, whose state the trainer saves, so a resumed run draws the same numbers).

    Returns:
        ``{"x": (B, P, 4) float32, "mask": (B, P) bool, "n": (B,) int64 hits, "counts":
        (B, L) int64 hits per layer, "energy_mev": (B,) float32 and the condition tensors
        "particle", "energy", "theta", "phi"}``.
    """

    def __init__(self, preprocessing: MDMAPreprocessing, particles: tuple[int, ...],
                 pad_multiple: int = 1) -> None:
        self.pre, self.particles, self.pad_multiple = preprocessing, particles, int(pad_multiple)

    def __call__(self, items: list[Mapping[str, Any]]) -> dict[str, Tensor]:
        pre, L = self.pre, self.pre.n_layers
        sizes = [len(it["points"]) for it in items]
        p = max(1, max(sizes, default=1))
        p = -(-p // self.pad_multiple) * self.pad_multiple
        pts = np.concatenate([np.asarray(it["points"], np.float64).reshape(-1, 5)
                              for it in items]) if items else np.zeros((0, 5))
        cells = pre.cells(pts)
        if np.any(cells < 0):
            raise InputError(f"{int(np.sum(cells < 0))} hits outside the cells", key="points",
                             expected=f"hits inside {pre.geometry.name}")
        u = torch.rand(len(pts), 3, dtype=torch.float64).numpy()
        feats = pre.transform(cells, pts[:, 3], u)
        b = len(items)
        x = np.zeros((b, p, 4), np.float32)
        mask = np.zeros((b, p), bool)
        counts = np.zeros((b, L), np.int64)
        layers = pre.geometry.layer_of_cell[cells]
        start = 0
        for i, n in enumerate(sizes):
            x[i, :n], mask[i, :n] = feats[start:start + n], True
            counts[i] = np.bincount(layers[start:start + n], minlength=L)
            start += n
        cond = Conditions(np.array([float(it["energy"]) for it in items]),
                          np.array([int(it["pdg"]) for it in items]),
                          np.array([float(it["theta"]) for it in items]),
                          np.array([float(it["phi"]) for it in items]))
        batch = {"x": torch.from_numpy(x), "mask": torch.from_numpy(mask),
                 "n": torch.as_tensor(sizes, dtype=torch.long),
                 "counts": torch.from_numpy(counts),
                 "energy_mev": torch.as_tensor(cond.energy, dtype=torch.float32)}
        batch.update(condition_tensors(cond, pre, self.particles))
        return batch


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class MDMAConfig(CountsSection, ModelConfig):
    """Hyper-parameters of :class:`MDMA` (defaults: the seed's dataset-2 model).

    Attributes:
        n_calo_layers: calorimeter layers (from the data; the count model's output size).
        particles: PDG ids of the modelled particle types (the count model's embedding).
        embed_dim: ``l``, the width of points and mean field between blocks.
        gen_hidden, gen_blocks, gen_heads: generator blocks (``h``, number, heads).
        critic_hidden, critic_blocks, critic_heads: critic blocks.
        critic_head_hidden: width of the critic's two-layer score head.
        critic_field_residual: residual mean-field updates in the critic's blocks (False: the
            mean field is replaced in every block, as in the authors' code).
        gp_weight: weight of the gradient penalty.
        feature_matching_weight: weight of the mean-field feature matching in the generator loss.
        feature_matching_norm: layer-normalize both mean fields (no gain or bias) before they
            are compared, so the matching cannot grow with the critic's feature scale.
        response_matching_weight: weight of the response matching ``(eta_real - eta_fake)^2``.
        optimizer: ``"rmsprop"`` or ``"adam"`` (with ``beta1 = 0``) for critic and generator.
        critic_lr_ratio: critic learning rate over ``train.lr``.
        accumulate: batches whose gradients are added before an update (1: none); a run
            resumes exactly from checkpoints at multiples of it (the gradients of a pending
            accumulation are not saved).
        counts: :class:`~showerformer.models.point_count_fm.PointCountFMConfig` keys (without
            ``n_calo_layers`` and ``particles``).
    """

    n_calo_layers: int = 45
    particles: tuple[int, ...] = DEFAULT_PARTICLES
    embed_dim: int = 16
    gen_hidden: int = 48
    gen_blocks: int = 5
    gen_heads: int = 16
    critic_hidden: int = 32
    critic_blocks: int = 6
    critic_heads: int = 16
    critic_head_hidden: int = 32
    critic_field_residual: bool = True
    gp_weight: float = 10.0
    feature_matching_weight: float = 1.0
    feature_matching_norm: bool = False
    response_matching_weight: float = 1.0
    optimizer: str = "rmsprop"
    critic_lr_ratio: float = 1.0
    accumulate: int = 1
    counts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_types()

        if self.n_calo_layers < 1:
            raise self.invalid("n_calo_layers", "at least one calorimeter layer")
        check_particles(self.particles)
        self.require_positive("embed_dim", "gen_hidden", "gen_blocks", "gen_heads",
                              "critic_hidden", "critic_blocks", "critic_heads",
                              "critic_head_hidden", "accumulate")
        for width, heads in (("gen_hidden", "gen_heads"), ("critic_hidden", "critic_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise self.invalid(heads, f"a divisor of {width}={getattr(self, width)}")
        for key in ("gp_weight", "feature_matching_weight", "response_matching_weight"):
            if not getattr(self, key) >= 0:
                raise self.invalid(key, "a non-negative weight")
        if not self.critic_lr_ratio > 0:
            raise self.invalid("critic_lr_ratio", "a positive ratio")
        if self.optimizer not in _OPTIMIZERS:
            raise self.invalid("optimizer", " or ".join(_OPTIMIZERS))
        self.check_counts()


# ----------------------------------------------------------------------------------------------
# Networks

_COND = 2  # conditions of every block: normalized log incident energy and multiplicity n / c_N


class MDMAGenerator(nn.Module):
    """Mean-field attention generator: noise ``(B, P, 4)`` -> normalized features ``(B, P, 4)``.

    Arguments:
        config: the hyper-parameters (``embed_dim``, ``gen_*``).
    """

    def __init__(self, config: MDMAConfig) -> None:
        super().__init__()
        embed, hidden = config.embed_dim, config.gen_hidden
        self.embed = nn.Linear(len(FEATURES), embed)  # Phi
        self.act = nn.LeakyReLU(0.2)
        self.blocks = nn.ModuleList(MeanFieldBlock(embed, hidden, config.gen_heads, _COND)
                                    for _ in range(config.gen_blocks))
        self.out = nn.Linear(embed, len(FEATURES))  # omega

    def forward(self, z: Tensor, mask: Tensor, cond: Tensor, mean_points: float) -> Tensor:
        """Arguments: noise ``z`` (B, P, 4), ``mask`` (B, P) True for real points, ``cond``
        (B, 2); returns (B, P, 4), zero on padding."""
        x = self.act(self.embed(z)) * mask[..., None].to(z.dtype)  # (B, P, l)
        m = mean_field_init(x, mask, mean_points)  # (B, l)
        for block in self.blocks:
            x, m = block(x, m, cond, mask)
        return self.out(self.act(x)) * mask[..., None].to(z.dtype)


class MDMACritic(nn.Module):
    """Mean-field attention critic: points ``(B, P, 4)`` -> score ``(B,)`` and the last mean
    field ``(B, l)`` (for feature matching); weight-normalized linear maps throughout.

    Arguments:
        config: the hyper-parameters (``embed_dim``, ``critic_*``).
    """

    def __init__(self, config: MDMAConfig) -> None:
        super().__init__()
        embed, hidden = config.embed_dim, config.critic_hidden
        self.embed = WeightNormalizedLinear(len(FEATURES), embed)  # Phi
        self.act = nn.LeakyReLU(0.2)
        self.blocks = nn.ModuleList(
            MeanFieldBlock(embed, hidden, config.critic_heads, _COND, weight_norm=True,
                           field_residual=config.critic_field_residual)
            for _ in range(config.critic_blocks))
        k = config.critic_head_hidden
        self.head = nn.Sequential(WeightNormalizedLinear(embed + _COND, k), nn.LeakyReLU(0.2),
                                  WeightNormalizedLinear(k, 1))

    def forward(self, x: Tensor, mask: Tensor, cond: Tensor,
                mean_points: float) -> tuple[Tensor, Tensor]:
        """Arguments: features ``x`` (B, P, 4), ``mask`` (B, P), ``cond`` (B, 2); returns the
        score (B,) and the last mean field (B, l)."""
        h = self.act(self.embed(x)) * mask[..., None].to(x.dtype)
        m = mean_field_init(h, mask, mean_points)
        for block in self.blocks:
            h, m = block(h, m, cond, mask)
        return self.head(torch.cat([m, cond], dim=-1)).squeeze(-1), m


@register("mdma")
class MDMA(FamilyModule):
    """Mean-field attention WGAN-GP with PointCountFM for the number of hits per layer.

    Arguments:
        config: hyper-parameters; the seed's dataset-2 model when omitted.

    Attributes:
        generator, critic: :class:`MDMAGenerator` and :class:`MDMACritic`.
        counts: the :class:`~showerformer.models.point_count_fm.PointCountFM`.
        preprocessing: the fitted :class:`MDMAPreprocessing` (None until fitted or loaded).
    """

    config_class: ClassVar[type] = MDMAConfig
    task: ClassVar[str] = "generation"
    data_kind: ClassVar[str] = "points"
    data_keys: ClassVar[dict[str, tuple[Any, ...]]] = {
        "pad_multiple": (int, 1, 1), "bucket_batches": (int, 32, 1)}
    log_metrics: ClassVar[tuple[str, ...]] = (
        "critic_loss", "gradient_penalty", "wasserstein", "feature_matching",
        "response_matching", "count_loss")
    family: ClassVar[str]

    def __init__(self, config: MDMAConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MDMAConfig()
        self.generator = MDMAGenerator(config)
        self.critic = MDMACritic(config)
        self.counts = PointCountFM(config.counts_config())
        self.preprocessing: MDMAPreprocessing | None = None

    # -- the family contract ----------------------------------------------------------------------

    @classmethod
    def from_data(cls, overrides: Mapping[str, Any], train: PointCloudDataset,
                  settings: Mapping[str, Any], *, val: PointCloudDataset | None = None) -> MDMA:
        """The model for showers with cells (voxel files, or point clouds on a geometry's
        cells): ``n_calo_layers`` from the geometry, the preprocessing and the count
        statistics fitted on the training hits.

        Raises:
            InputError: data without a cylindrical or Cartesian geometry, hits outside it, a
                layer count that does not match, a particle the model does not know (naming the
                data file), or a bad config value (naming the key).
        """
        geo = train.geometry
        if geo is None:
            raise InputError("point clouds without a geometry", path=train.path, key="geometry",
                             expected="showers on cells (voxel files, or point clouds that name "
                                      "their geometry): MDMA models cell-index coordinates")
        config = config_for_showers(cls.config_class, overrides, geo.n_layers, train, val)
        try:
            pre = MDMAPreprocessing.fit(train.points, train.conditions.energy, geo,
                                        rng=int(settings.get("seed", 0)))
        except InputError as exc:
            raise InputError(exc.what, path=train.path, key=exc.key,
                             expected=exc.expected) from None
        model = cls(config)
        model.counts.fit_normalization(train.layer_counts(config.n_calo_layers))
        model.load_data_state({
            "kind": "mdma", "points": pre.to_dict(), "source_format": train.source_format,
            "conditions": condition_summary(train.conditions),
            "count_limits": count_limits(train, config.n_calo_layers).tolist()}, {})
        return model

    def load_data_state(self, state: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Restore the preprocessing, training conditions and count limits.

        Raises:
            InputError: a damaged entry, naming its key.
        """
        state = dict(state)
        if not state:
            self.preprocessing = None
            super().load_data_state({}, info)
            return
        try:
            pre = MDMAPreprocessing.from_dict(state.get("points") or {})
        except InputError as exc:
            raise InputError(exc.what, key=f"preprocessing.points.{exc.key}",
                             expected=exc.expected) from None
        if pre.n_layers != self.config.n_calo_layers:
            raise InputError(f"a geometry of {pre.n_layers} layers", key="preprocessing.points",
                             expected=f"{self.config.n_calo_layers} layers, as the model")
        check_condition_summary(state.get("conditions") or {}, "preprocessing.conditions")
        check_count_limits(state.get("count_limits"), self.config.n_calo_layers,
                           "preprocessing.count_limits")
        self.preprocessing = pre
        super().load_data_state(state, info)

    def _pre(self) -> MDMAPreprocessing:
        if self.preprocessing is None:
            raise InputError("no fitted preprocessing", key="preprocessing",
                             expected="a model built by from_data or loaded from a checkpoint")
        return self.preprocessing

    def collate_fn(self, settings: Mapping[str, Any]) -> Callable[[list[Any]], Any]:
        """MDMA batches (cell-index features dequantized afresh every time)."""
        return MDMACollate(self._pre(), self.config.particles,
                           int(settings.get("pad_multiple", 1)))

    def batch_sampler(self, train: PointCloudDataset,
                      settings: Mapping[str, Any]) -> Callable[..., Any] | None:
        """Batches of showers of similar size (less padding, as in the seed)."""
        return BucketBatchSampler.factory(train.sizes, int(settings.get("bucket_batches", 32)))

    def configure_optimizers(self, train: Any) -> dict[str, torch.optim.Optimizer]:
        """RMSprop (or Adam with ``beta1 = 0``) for critic and generator, AdamW for the count
        model; the critic's learning rate is ``critic_lr_ratio * train.lr``."""
        cfg = self.config

        def make(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
            params = [p for p in params if p.requires_grad]
            if cfg.optimizer == "adam":
                return torch.optim.Adam(params, lr=lr, betas=(0.0, float(train.betas[1])),
                                        eps=float(train.eps))
            return torch.optim.RMSprop(params, lr=lr, eps=float(train.eps))

        return {"critic": make(self.critic.parameters(), train.lr * cfg.critic_lr_ratio),
                "generator": make(self.generator.parameters(), train.lr),
                "counts": torch.optim.AdamW(
                    [p for p in self.counts.parameters() if p.requires_grad], lr=train.lr,
                    betas=tuple(train.betas), eps=float(train.eps),
                    weight_decay=float(train.weight_decay))}

    # -- training ---------------------------------------------------------------------------------

    def _cond(self, batch: Mapping[str, Tensor], n: Tensor) -> Tensor:
        """The block conditions ``(B, 2)``: normalized log incident energy, ``n / c_N``."""
        pre = self._pre()
        dtype = self.generator.out.weight.dtype
        return torch.stack([batch["energy"].to(dtype), n.to(dtype) / pre.mean_points], dim=-1)

    def _energy_mev(self, x: Tensor) -> Tensor:
        """Hit energies in MeV from the normalized energy feature, differentiably."""
        mean, std, lmbda = self._pre().energy_affine()
        y = x * std + mean
        if abs(lmbda) < 1e-12:
            return torch.exp(y.clamp(max=80.0))
        return (lmbda * y + 1.0).clamp_min(1e-12) ** (1.0 / lmbda)

    def _response(self, x: Tensor, mask: Tensor, e_inc: Tensor) -> Tensor:
        """Detector response ``eta = sum E / E_inc`` per shower, (B,)."""
        e = self._energy_mev(x[..., 3]) * mask.to(x.dtype)
        return e.sum(dim=1) / e_inc.to(x.dtype).clamp_min(1e-12)

    def _generate_features(self, mask: Tensor, cond: Tensor,
                           generator: torch.Generator | None = None) -> Tensor:
        """Generator output for noise of the mask's shape, clamped into the training range of
        every feature (zero gradient outside, as ``relu(x - lo) + lo`` in the authors' code)."""
        pre = self._pre()
        dtype = self.generator.out.weight.dtype
        z = torch.randn(*mask.shape, len(FEATURES), generator=generator, device=mask.device,
                        dtype=dtype)
        out = self.generator(z, mask, cond, pre.mean_points)  # (B, P, 4)
        if pre.bounds is not None:
            b = torch.as_tensor(pre.bounds, device=out.device, dtype=dtype)  # (4, 2)
            out = torch.maximum(torch.minimum(out, b[:, 1]), b[:, 0])
        return out * mask[..., None].to(dtype)

    def training_step(self, batch: Mapping[str, Tensor], step: int,
                      optimizers: Any) -> dict[str, Tensor]:
        """One critic update (WGAN-GP), one generator update (adversarial + feature and
        response matching) and one count-model update on the same batch."""
        cfg, pre = self.config, self._pre()
        real, mask = batch["x"].to(self.generator.out.weight.dtype), batch["mask"].bool()
        cond = self._cond(batch, batch["n"])
        update = (step + 1) % cfg.accumulate == 0
        scale = 1.0 / cfg.accumulate
        m = mask[..., None].to(real.dtype)
        # critic: real against generated showers of the same sizes
        with torch.no_grad():
            fake = self._generate_features(mask, cond)
        s_real, _ = self.critic(real, mask, cond, pre.mean_points)
        s_fake, _ = self.critic(fake, mask, cond, pre.mean_points)
        lam = torch.rand(real.shape[0], 1, 1, device=real.device, dtype=real.dtype)
        mix = ((lam * real + (1 - lam) * fake) * m).requires_grad_(True)
        s_mix, _ = self.critic(mix, mask, cond, pre.mean_points)
        grad = torch.autograd.grad(s_mix.sum(), mix, create_graph=True)[0]
        penalty = ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
        wasserstein = s_real.mean() - s_fake.mean()
        critic_loss = -wasserstein + cfg.gp_weight * penalty
        optimizers.step(critic_loss * scale, "critic", update=update)
        # generator: the critic is frozen for this backward
        self.critic.requires_grad_(False)
        try:
            gen = self._generate_features(mask, cond)
            s_gen, mf_gen = self.critic(gen, mask, cond, pre.mean_points)
            with torch.no_grad():
                _, mf_real = self.critic(real, mask, cond, pre.mean_points)
            if cfg.feature_matching_norm:
                width = (mf_real.shape[-1],)
                mf_real = torch.nn.functional.layer_norm(mf_real, width)
                mf_gen = torch.nn.functional.layer_norm(mf_gen, width)
            fm = ((mf_real - mf_gen) ** 2).mean()
            e_inc = batch["energy_mev"]
            rm = ((self._response(real, mask, e_inc) - self._response(gen, mask, e_inc))
                  ** 2).mean()
            gen_loss = (-s_gen.mean() + cfg.feature_matching_weight * fm
                        + cfg.response_matching_weight * rm)
            optimizers.step(gen_loss * scale, "generator", update=update)
        finally:
            self.critic.requires_grad_(True)
        count_loss = self.counts.loss(batch)
        optimizers.step(count_loss * scale, "counts", update=update)
        return {"loss": gen_loss.detach(), "critic_loss": critic_loss.detach(),
                "gradient_penalty": penalty.detach(), "wasserstein": wasserstein.detach(),
                "feature_matching": fm.detach(), "response_matching": rm.detach(),
                "count_loss": count_loss.detach()}

    @torch.no_grad()
    def validation_metric(self, batches: Iterable[Mapping[str, Tensor]]) -> float:
        """Mean over the four features of the 1-Wasserstein distance between the real and the
        generated marginals (normalized features), generated with the real multiplicities
        from a fixed seed."""
        from scipy.stats import wasserstein_distance

        real_parts, fake_parts = [], []
        gen: torch.Generator | None = None
        for batch in batches:
            mask = batch["mask"].bool()
            if gen is None:
                gen = torch.Generator(device=mask.device).manual_seed(0)
            fake = self._generate_features(mask, self._cond(batch, batch["n"]), gen)
            real_parts.append(batch["x"][mask].float().cpu().numpy())
            fake_parts.append(fake[mask].float().cpu().numpy())
        if not real_parts:
            return float("nan")
        real, fake = np.concatenate(real_parts), np.concatenate(fake_parts)
        return float(np.mean([wasserstein_distance(real[:, i], fake[:, i])
                              for i in range(len(FEATURES))]))

    # -- generation -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions,
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        batch_size: int | None = None,
        counts: Any = None,
    ) -> PointShowers:
        """Physical showers (hits at cell centres, MeV) for the given incident particles.

        The count model samples the hits per layer (capped by the training maximum); their sum
        is the multiplicity the generator is given; the generator's features are mapped back to
        cells by the inverse preprocessing (the count model's per-layer split is not imposed on
        the generated layers, as in the seed, which conditions on the multiplicity only).

        Arguments:
            conditions: incident particles (PDG ids among ``config.particles``).
            generator: source of randomness, on the model's device.
            steps, sampler: ODE integration of the count model (midpoint, 16 steps).
            batch_size: showers per generator call (default 256).
            counts: hits per layer ``(N, L)`` to use instead of sampling them.

        Returns:
            :class:`PointShowers` on the training geometry.
        """
        pre = self._pre()
        steps = DEFAULT_STEPS if steps is None else int(steps)
        sampler = DEFAULT_SAMPLER if sampler is None else sampler
        batch_size = 256 if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size!r}", key="batch_size",
                             expected="a positive number of showers")
        device = self.generator.out.weight.device
        cond_all = condition_tensors(conditions, pre, self.config.particles, device)
        n_show = len(conditions)
        was_training = self.training
        self.eval()
        try:
            limits = self._data_state.get("count_limits")
            if counts is None:
                counts = self.counts.sample_capped(cond_all, batch_size=batch_size, limits=limits,
                                                   generator=generator, steps=steps,
                                                   sampler=sampler)
            else:
                counts = cap_counts(torch.as_tensor(counts, device=device), limits)
            n = counts.sum(dim=1).clamp_min(1)  # (N,)
            ragged: list[np.ndarray] = [np.zeros((0, 5))] * n_show
            order = np.argsort(n.cpu().numpy(), kind="stable")  # similar sizes share a call
            for s in range(0, n_show, batch_size):
                idx = torch.as_tensor(order[s:s + batch_size], device=device)
                n_b = n[idx]
                p = int(n_b.max().item()) if len(idx) else 1
                mask = torch.arange(p, device=device)[None, :] < n_b[:, None]  # (b, P)
                cond = self._cond({"energy": cond_all["energy"][idx]}, n_b)
                feats = self._generate_features(mask, cond, generator)  # (b, P, 4)
                flat = feats[mask].float().cpu().numpy()
                hits = pre.inverse(flat)
                sizes = mask.sum(dim=1).cpu().numpy()
                start = 0
                for j, k in enumerate(sizes):
                    h = hits[start:start + k]
                    ragged[int(order[s + j])] = h[h[:, 4] >= 0]
                    start += k
        finally:
            self.train(was_training)
        return PointShowers.from_ragged(ragged, conditions, pre.geometry)

    def n_parameters(self) -> dict[str, int]:
        """Parameters of generator, critic and count model, and in total."""
        parts = {name: sum(p.numel() for p in getattr(self, name).parameters())
                 for name in ("generator", "critic", "counts")}
        return {**parts, "total": sum(parts.values())}
