"""PointCountFM: conditional flow matching of the number of points in every calorimeter layer.

The target is ``y = log(n + 0.5)`` per layer (a vector of ``n_calo_layers`` values), standardized
per layer with statistics fitted on the training counts (:meth:`PointCountFM.fit_normalization`,
kept as buffers in the ``state_dict``). A residual MLP ``v(y_t, t | c)`` conditioned on a
:class:`~showerformer.nn.conditioning.ConditionEmbedding` (Gaussian Fourier features of the flow
time and of the normalized log incident energy, the direction unit vector and a particle-type
embedding) is trained with rectified-flow matching; sampling integrates the ODE from Gaussian
noise and rounds ``n = max(0, round(exp(y) - 0.5))``.

The ``+ 0.5`` keeps empty layers finite (``log 0.5``); rounding ``exp(y) - 0.5`` half up maps
every ``y`` in ``[log n, log(n + 1))`` to ``n``.

References:
    Buss et al., "PanShower: One model for all calorimeter showers" (seed document 004 of this
    project); Buhmann et al. (CaloClouds, generated point counts), arXiv:2305.04847; Lipman et
    al. (flow matching), arXiv:2210.02747; Tancik et al. (Fourier features), arXiv:2006.10739.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from showerformer.data.conditions import (
    CONDITION_KEYS,
    DEFAULT_PARTICLES,
    check_particles,
    condition_tensors,
    require_keys,
)
from showerformer.data.points import PointPreprocessing
from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.methods.flow_matching import TIME_DISTRIBUTIONS, flow_matching_loss
from showerformer.models.config import ModelConfig
from showerformer.nn.conditioning import ConditionEmbedding
from showerformer.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, get_sampler, linear_schedule
from showerformer.showers import Conditions

__all__ = ["PointCountFM", "PointCountFMConfig", "cap_counts", "counts_from_log", "log_counts"]


def log_counts(counts: Tensor) -> Tensor:
    """``y = log(n + 0.5)`` of non-negative counts (float32)."""
    return torch.log(counts.float().clamp_min(0) + 0.5)


def cap_counts(counts: Any, limits: Any = None) -> Tensor:
    """``counts`` (N, L) as int64, each layer capped at ``limits`` (L,) (None: unchanged)."""
    counts = torch.as_tensor(counts).long()
    if limits is None:
        return counts
    return torch.minimum(counts, torch.as_tensor(limits, dtype=counts.dtype,
                                                 device=counts.device))


def counts_from_log(y: Tensor) -> Tensor:
    """Inverse of :func:`log_counts` with rounding: ``max(0, round(exp(y) - 0.5))``, int64.

    Halves round up, so this is ``floor(exp(y))``: every ``y`` in ``[log n, log(n + 1))`` gives
    ``n``, and ``log(n + 0.5)`` lies in the middle of that interval.
    """
    return torch.floor(torch.exp(y.float().clamp_max(30.0))).clamp_min(0).long()


@dataclass(frozen=True)
class PointCountFMConfig(ModelConfig):
    """Hyper-parameters of :class:`PointCountFM`.

    Attributes:
        n_calo_layers: number of calorimeter layers (the length of the count vector).
        particles: PDG ids of the modelled particle types, in embedding order.
        d_model: width of the residual MLP.
        n_blocks: residual blocks.
        n_fourier: Gaussian Fourier features of the time and of the incident energy.
        time_fourier_std: frequency spread of the time features.
        energy_fourier_std: frequency spread of the energy features.
        dropout: dropout inside the residual blocks.
        time_distribution: ``"uniform"`` or ``"logit-normal"``.

    The former names ``n_layers_calo``, ``hidden`` and ``depth`` (checkpoints and YAML files of
    earlier versions) are read as ``n_calo_layers``, ``d_model`` and ``n_blocks``
    (:attr:`LEGACY_KEYS`).
    """

    LEGACY_KEYS: ClassVar[dict[str, str]] = {"n_layers_calo": "n_calo_layers",
                                             "hidden": "d_model", "depth": "n_blocks"}

    n_calo_layers: int = 30
    particles: tuple[int, ...] = DEFAULT_PARTICLES
    d_model: int = 256
    n_blocks: int = 3
    n_fourier: int = 16
    time_fourier_std: float = 4.0
    energy_fourier_std: float = 1.0
    dropout: float = 0.0
    time_distribution: str = "uniform"

    def __post_init__(self) -> None:
        self.check_types()

        if self.n_calo_layers < 1:
            raise self.invalid("n_calo_layers", "at least one calorimeter layer")
        check_particles(self.particles)
        self.require_positive("d_model", "n_blocks")
        if self.n_fourier < 2 or self.n_fourier % 2:
            raise self.invalid("n_fourier", "a positive even number")
        for key in ("time_fourier_std", "energy_fourier_std"):
            if not getattr(self, key) > 0.0:
                raise self.invalid(key, "a positive frequency spread")
        if not 0.0 <= self.dropout < 1.0:
            raise self.invalid("dropout", "a probability in [0, 1)")
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise self.invalid("time_distribution", " or ".join(TIME_DISTRIBUTIONS))

    @property
    def n_particles(self) -> int:
        """Number of particle types."""
        return len(self.particles)

    @classmethod
    def for_geometry(cls, geometry: Geometry, **kwargs: Any) -> PointCountFMConfig:
        """A config whose ``n_calo_layers`` is the geometry's number of layers."""
        return cls(n_calo_layers=geometry.n_layers, **kwargs)


class _ResidualBlock(nn.Module):
    """``h + Linear(SiLU(Linear(LN(h) + cond)))`` with dropout."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.cond = nn.Linear(width, width)
        self.net = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(width, width))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:  # (B, W), (B, W) -> (B, W)
        return h + self.net(self.norm(h) + self.cond(c))



class CountsSection:
    """Mixin of the configs of point-cloud families whose ``counts`` field holds the
    :class:`PointCountFMConfig` keys of their count model (without the shared
    ``n_calo_layers`` and ``particles``, set at the top level). Call :meth:`check_counts` in
    ``__post_init__``."""

    n_calo_layers: int
    particles: tuple[int, ...]
    counts: dict[str, Any]

    def check_counts(self) -> None:
        """Refuse the shared keys inside ``counts`` and validate the section, naming the key."""
        shared = sorted({"n_calo_layers", "particles"} & set(self.counts))
        if shared:
            raise InputError(f"{shared[0]} inside counts", key=f"counts.{shared[0]}",
                             expected="set at the top level")
        object.__setattr__(self, "counts", dict(self.counts))
        self.counts_config()

    def counts_config(self) -> PointCountFMConfig:
        """The count model's config."""
        try:
            return PointCountFMConfig.from_dict({"n_calo_layers": self.n_calo_layers,
                                                 "particles": self.particles, **self.counts})
        except InputError as exc:
            raise InputError(exc.what, key=f"counts.{exc.key}", expected=exc.expected) from None

    def resolved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the ``counts`` section expanded to every key of its config."""
        out = self.to_dict()
        out["counts"] = {k: v for k, v in self.counts_config().to_dict().items()
                         if k not in ("n_calo_layers", "particles")}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists, also inside ``counts``)."""
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        out = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        out["counts"] = {k: plain(v) for k, v in self.counts.items()}
        return out


class PointCountFM(nn.Module):
    """Conditional flow-matching MLP for the points per calorimeter layer.

    Arguments:
        config: hyper-parameters; the defaults when omitted.
    """

    config_class: ClassVar[type] = PointCountFMConfig
    task: ClassVar[str] = "generation"
    family: ClassVar[str]

    def __init__(self, config: PointCountFMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PointCountFMConfig()
        w, L = config.d_model, config.n_calo_layers
        self.condition = ConditionEmbedding(w, config.n_particles, n_fourier=config.n_fourier,
                                            time_fourier_std=config.time_fourier_std,
                                            energy_fourier_std=config.energy_fourier_std,
                                            n_hidden=0)
        self.y_in = nn.Linear(L, w)
        self.blocks = nn.ModuleList(_ResidualBlock(w, config.dropout)
                                    for _ in range(config.n_blocks))
        self.norm_out = nn.LayerNorm(w)
        self.out = nn.Linear(w, L)
        self.register_buffer("y_mean", torch.zeros(L))  # (L,) mean of log(n + 0.5)
        self.register_buffer("y_std", torch.ones(L))  # (L,) its standard deviation

    @torch.no_grad()
    def fit_normalization(self, counts: Any) -> None:
        """Set the per-layer mean and spread of ``log(n + 0.5)`` from training counts.

        Arguments:
            counts: points per layer of the training showers.  # (N, L), NumPy or torch
        """
        c = torch.as_tensor(np.asarray(counts) if not isinstance(counts, Tensor) else counts)
        if c.ndim != 2 or c.shape[1] != self.config.n_calo_layers:
            raise InputError(f"counts of shape {tuple(c.shape)}", key="counts",
                             expected=f"(N, {self.config.n_calo_layers})")
        y = log_counts(c).double()
        self.y_mean.copy_(y.mean(dim=0))
        self.y_std.copy_(y.std(dim=0, unbiased=False).clamp_min(0.05) if len(y) > 1
                         else torch.ones_like(self.y_std))

    def normalize(self, counts: Tensor) -> Tensor:
        """Counts (B, L) -> the model's standardized ``log(n + 0.5)``."""
        return (log_counts(counts).to(self.y_mean.device) - self.y_mean) / self.y_std

    def denormalize(self, z: Tensor) -> Tensor:
        """Standardized values (B, L) -> integer counts (B, L) int64."""
        return counts_from_log(z * self.y_std + self.y_mean)

    def forward(self, y: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        """Velocity of the standardized log counts.

        Arguments:
            y: point on the path.  # (B, L)
            t: flow time.  # (B,)
            cond: ``"particle"`` (B,) int64, ``"energy"`` (B,) normalized log incident energy,
                ``"theta"``, ``"phi"`` (B,) rad (see
                :func:`~showerformer.data.conditions.condition_tensors`).

        Returns:
            ``(B, L)``.
        """
        require_keys(cond, CONDITION_KEYS, "cond")
        L = self.config.n_calo_layers
        if y.ndim != 2 or y.shape[1] != L or t.shape != (y.shape[0],):
            raise InputError(f"y {tuple(y.shape)} and t {tuple(t.shape)}", key="counts",
                             expected=f"y (B, {L}) and t (B,)")
        dtype = self.out.weight.dtype
        c = self.condition(t, cond)  # (B, W)
        h = self.y_in(y.to(dtype)) + c
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.norm_out(h))  # (B, L)

    def loss(self, batch: Mapping[str, Tensor], *, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss of the standardized log counts.

        Arguments:
            batch: ``"counts"`` (B, L) points per layer and ``"particle"``, ``"energy"``,
                ``"theta"``, ``"phi"`` (B,) (see :func:`~showerformer.data.points.make_batch`).
            generator: source of noise and times.

        Returns:
            Scalar loss.
        """
        require_keys(batch, ("counts", *CONDITION_KEYS), "batch")
        y1 = self.normalize(batch["counts"]).to(self.out.weight.dtype)  # (B, L)
        return flow_matching_loss(self, y1, cond=batch,
                                  time_distribution=self.config.time_distribution,
                                  generator=generator)

    @torch.no_grad()
    def sample(
        self,
        conditions: Mapping[str, Tensor],
        *,
        generator: torch.Generator | None = None,
        steps: int = DEFAULT_STEPS,
        sampler: str = DEFAULT_SAMPLER,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> Tensor:
        """Sample integer points per layer (evaluation mode; the mode is restored).

        Arguments:
            conditions: ``"particle"``, ``"energy"``, ``"theta"``, ``"phi"`` (B,) on the model's
                device.
            generator: source of the initial noise.
            steps, sampler: ODE integration (midpoint, 16 steps by default).
            callback: called after every ODE step.

        Returns:
            ``(B, L)`` int64 counts, ``>= 0``.
        """
        require_keys(conditions, CONDITION_KEYS, "conditions")
        device, dtype = self.out.weight.device, self.out.weight.dtype
        cond = {k: conditions[k].to(device) for k in CONDITION_KEYS}
        b = cond["energy"].shape[0]
        z0 = torch.randn(b, self.config.n_calo_layers, generator=generator, device=device,
                         dtype=dtype)
        was_training = self.training
        self.eval()
        try:
            z = get_sampler(sampler)(self, z0, linear_schedule(steps, device=device, dtype=dtype),
                                     cond=cond, callback=callback)
        finally:
            self.train(was_training)
        return self.denormalize(z)

    @torch.no_grad()
    def sample_capped(
        self,
        conditions: Mapping[str, Tensor],
        *,
        batch_size: int,
        limits: Any = None,
        generator: torch.Generator | None = None,
        steps: int = DEFAULT_STEPS,
        sampler: str = DEFAULT_SAMPLER,
    ) -> Tensor:
        """:meth:`sample` in calls of at most ``batch_size`` showers, capped per layer.

        Arguments:
            conditions: as in :meth:`sample`, for all showers.
            batch_size: showers per call.
            limits: largest count per layer ``(L,)`` (None: no cap).
            generator, steps, sampler: as in :meth:`sample`.

        Returns:
            ``(N, L)`` int64 counts on the model's device.
        """
        n = len(conditions["energy"])
        device = self.out.weight.device
        parts = [self.sample({k: v[s:s + batch_size] for k, v in conditions.items()},
                             generator=generator, steps=steps, sampler=sampler)
                 for s in range(0, n, batch_size)]
        counts = (torch.cat(parts) if parts
                  else torch.zeros(0, self.config.n_calo_layers, dtype=torch.long, device=device))
        return cap_counts(counts, limits)

    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions,
        preprocessing: PointPreprocessing,
        *,
        generator: torch.Generator | None = None,
        steps: int = DEFAULT_STEPS,
        sampler: str = DEFAULT_SAMPLER,
    ) -> np.ndarray:
        """Points per layer for physical conditions, ``(N, L)`` int64 NumPy."""
        cond = condition_tensors(conditions, preprocessing, self.config.particles,
                                 self.out.weight.device)
        return self.sample(cond, generator=generator, steps=steps, sampler=sampler).cpu().numpy()
