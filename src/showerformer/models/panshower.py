"""PanShower: one conditional flow-matching transformer over point clouds for every particle type.

The data side lives in :mod:`showerformer.data`:
:class:`~showerformer.data.points.PointPreprocessing` maps a point ``(x, y, z, E, layer)`` in mm
and MeV to three normalized features and its integer layer, and
:func:`~showerformer.data.points.make_batch` builds the batch dict that :meth:`PanShower.loss`
takes (points sorted by layer, per-layer counts, particle index, normalized incident energy,
angles). Read top to bottom:

1. :class:`PanShowerConfig`, the hyper-parameters.
2. :class:`PanShowerBlock`, a transformer block with layer-window attention and adaptive layer
   norm.
3. :class:`PanShower`, the velocity field ``v(x_t, t | c)``. Every point is a token:
   ``Linear(x_t, log(1 + n_layer))`` plus an embedding of its layer index. A global condition
   vector ``c`` (B, d) sums a :class:`~showerformer.nn.conditioning.ConditionEmbedding`
   (particle-type embedding plus an MLP of Gaussian Fourier features of the flow time and of the
   normalized log incident energy together with the direction unit vector) and an MLP of
   ``log(1 + n)`` of the per-layer point counts. ``c`` steers every block through
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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from showerformer.data.batching import size_chunks
from showerformer.data.conditions import (
    CONDITION_KEYS,
    DEFAULT_PARTICLES,
    check_particles,
    condition_tensors,
    require_keys,
)
from showerformer.data.points import PointPreprocessing, counts_per_layer, layers_from_counts
from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.methods.flow_matching import TIME_DISTRIBUTIONS, masked_mse, sample_path
from showerformer.models.config import ModelConfig
from showerformer.nn.attention import MLP
from showerformer.nn.conditioning import ConditionEmbedding
from showerformer.nn.layer_window import (
    BACKENDS,
    LayerWindowSelfAttention,
    layer_window_mask,
)
from showerformer.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, get_sampler, linear_schedule
from showerformer.showers import Conditions, PointShowers

__all__ = ["PanShower", "PanShowerBlock", "PanShowerConfig", "PanShowerSample", "generate_in_chunks"]

_OT_MODES = ("none", "shower", "layer")


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class PanShowerConfig(ModelConfig):
    """Hyper-parameters of :class:`PanShower`.

    Attributes:
        n_calo_layers: number of calorimeter layers (from the geometry, see :meth:`for_geometry`).
        particles: PDG ids of the modelled particle types, in embedding order.
        d_model: token width ``d``.
        n_heads: attention heads.
        n_blocks: transformer blocks.
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

    The former names ``n_layers_calo`` and ``n_layers`` (checkpoints and YAML files of earlier
    versions) are read as ``n_calo_layers`` and ``n_blocks`` (:attr:`LEGACY_KEYS`).
    """

    LEGACY_KEYS: ClassVar[dict[str, str]] = {"n_layers_calo": "n_calo_layers",
                                             "n_layers": "n_blocks"}

    n_calo_layers: int = 30
    particles: tuple[int, ...] = DEFAULT_PARTICLES
    d_model: int = 128
    n_heads: int = 4
    n_blocks: int = 6
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

        if self.n_calo_layers < 1:
            raise self.invalid("n_calo_layers", "at least one calorimeter layer")
        check_particles(self.particles)
        self.require_positive("d_model", "n_heads", "n_blocks", "mlp_ratio")
        if self.d_model % self.n_heads:
            raise self.invalid("n_heads", f"a divisor of d_model={self.d_model}")
        if self.layer_window is not None and self.layer_window < 0:
            raise self.invalid("layer_window", "a non-negative integer or null")
        if self.n_fourier < 2 or self.n_fourier % 2:
            raise self.invalid("n_fourier", "a positive even number")
        for key in ("time_fourier_std", "energy_fourier_std"):
            if not getattr(self, key) > 0.0:
                raise self.invalid(key, "a positive frequency spread")
        if not 0.0 <= self.dropout < 1.0:
            raise self.invalid("dropout", "a probability in [0, 1)")
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise self.invalid("time_distribution", " or ".join(TIME_DISTRIBUTIONS))
        if self.ot_pairing not in _OT_MODES:
            raise self.invalid("ot_pairing", " or ".join(_OT_MODES))
        if self.attention not in BACKENDS:
            raise self.invalid("attention", " or ".join(BACKENDS))

    @property
    def n_particles(self) -> int:
        """Number of particle types (rows of the particle embedding)."""
        return len(self.particles)

    @classmethod
    def for_geometry(cls, geometry: Geometry, **kwargs: Any) -> PanShowerConfig:
        """A config whose ``n_calo_layers`` is the geometry's number of layers."""
        return cls(n_calo_layers=geometry.n_layers, **kwargs)


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
        d, L = config.d_model, config.n_calo_layers
        self.condition = ConditionEmbedding(d, config.n_particles, n_fourier=config.n_fourier,
                                            time_fourier_std=config.time_fourier_std,
                                            energy_fourier_std=config.energy_fourier_std,
                                            n_hidden=1)
        self.count_mlp = nn.Sequential(nn.Linear(L, d), nn.SiLU(), nn.Linear(d, d))
        self.point_in = nn.Linear(3 + 1, d)
        self.layer_embed = nn.Embedding(L, d)
        self.blocks = nn.ModuleList(
            PanShowerBlock(d, config.n_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.n_blocks)
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, 3)
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
        require_keys(cond, (*CONDITION_KEYS, "counts"), "cond")
        dtype = self.out.weight.dtype
        counts = torch.log1p(cond["counts"].to(dtype).clamp_min(0))  # (B, L)
        return self.condition(t, cond) + self.count_mlp(counts)  # (B, d)

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
        L = self.config.n_calo_layers
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
                (B, L) (computed from layer and mask when absent); see
                :func:`~showerformer.data.points.make_batch`.
            generator: source of the noise and times (torch's global one when None).

        Returns:
            Scalar loss.
        """
        require_keys(batch, ("x", "layer", "mask", *CONDITION_KEYS), "batch")
        x1 = batch["x"].to(self.out.weight.dtype)
        layer, mask = batch["layer"].long(), batch["mask"].bool()
        cond = dict(batch)
        if "counts" not in cond:
            cond["counts"] = counts_per_layer(layer, mask, self.config.n_calo_layers)
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
                :func:`~showerformer.data.conditions.condition_tensors`, on the model's device.
            counts: points per layer.  # (B, L) integer
            generator: source of the initial noise (on the model's device).
            steps: ODE steps from t = 0 to 1.
            sampler: ``"midpoint"``, ``"heun"`` or ``"euler"``.
            callback: called after every ODE step (see :mod:`showerformer.samplers`).

        Returns:
            :class:`PanShowerSample`; :meth:`PointPreprocessing.inverse` makes it physical.
        """
        require_keys(conditions, CONDITION_KEYS, "conditions")
        device, dtype = self.out.weight.device, self.out.weight.dtype
        L = self.config.n_calo_layers
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
        preprocessing: PointPreprocessing,
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
            max_padding: a network call holds showers of similar size whose padding to the
                largest stays within this share of their points (see
                :func:`generate_in_chunks`).

        Returns:
            :class:`PointShowers` with ``(N, P, 5)`` points (x, y, z, E, layer).
        """
        device = self.out.weight.device
        n = len(conditions)
        if counts is None:
            if count_model is None:
                raise InputError("neither counts nor a count model", key="counts",
                                 expected="points per layer (N, L) or a PointCountFM")
            cond_all = condition_tensors(conditions, preprocessing, self.config.particles, device)
            counts = count_model.sample(cond_all, generator=generator, steps=steps,  # type: ignore[operator]
                                        sampler=sampler)
        counts = torch.as_tensor(counts, device=device).long()
        if counts.shape != (n, self.config.n_calo_layers):
            raise InputError(f"counts of shape {tuple(counts.shape)}", key="counts",
                             expected=f"({n}, {self.config.n_calo_layers})")
        return generate_in_chunks(
            lambda c, k: self.sample(c, k, generator=generator, steps=steps, sampler=sampler),
            conditions, counts, preprocessing, self.config.particles, batch_size=batch_size,
            geometry=geometry, device=device, max_padding=max_padding)


def generate_in_chunks(
    sample: Callable[[dict[str, Tensor], Tensor], PanShowerSample],
    conditions: Conditions,
    counts: Tensor,
    preprocessing: PointPreprocessing,
    particles: tuple[int, ...],
    *,
    batch_size: int,
    geometry: Geometry | None,
    device: torch.device | str,
    max_padding: float = 0.25,
) -> PointShowers:
    """Physical showers from a point sampler, in network calls of showers of similar size.

    The showers are sorted by their number of points, cut into calls of at most ``batch_size``
    whose padding stays within ``max_padding`` (:func:`~showerformer.data.batching.size_chunks`),
    sampled by ``sample(conditions, counts)`` in the normalized space, made physical by the
    preprocessing, and returned in the order of ``conditions``.

    Arguments:
        sample: e.g. ``PanShower.sample`` with its sampler settings bound.
        conditions: incident particles.  # N showers
        counts: points per layer.  # (N, L)
        preprocessing: the fitted point transform.
        particles: the model's PDG ids (for the condition tensors).
        batch_size, max_padding: as in ``size_chunks``.
        geometry: attached to the result.
        device: of the condition tensors.

    Returns:
        :class:`PointShowers` with ``(N, P, 5)`` points (x, y, z, E, layer).
    """
    cond_all = condition_tensors(conditions, preprocessing, particles, device)
    counts = torch.as_tensor(counts, device=device).long()
    sizes = counts.sum(dim=1).cpu().numpy()
    order = np.argsort(sizes, kind="stable")
    rows_all = torch.as_tensor(order, device=device)
    ragged: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(conditions)
    for sl in size_chunks(sizes[order], batch_size, max_padding):
        rows = rows_all[sl]
        out = sample({k: v[rows] for k, v in cond_all.items()}, counts[rows])
        pts = preprocessing.inverse(out.x, out.layer, out.mask)  # (b, P, 5)
        m = out.mask.cpu().numpy()
        for j, p, r in zip(order[sl], pts, m, strict=True):
            ragged[int(j)] = p[r]
    return PointShowers.from_ragged(ragged, conditions, geometry)

