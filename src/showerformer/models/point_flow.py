"""The complete point-cloud generator: PointCountFM for the points per layer, then PanShower.

Generation is two-staged as in PanShower (seed document 004): the count model samples how many
points every calorimeter layer gets, conditioned on particle type, incident energy and
direction; the shower model then moves Gaussian noise at those points to ``(x, y, log E)``
along its flow. Both are trained together on the same batches (one optimizer, one checkpoint):
the loss is ``L_shower + count_loss_weight * L_counts``. The count model is a small MLP, so it
adds little to a training step.

References:
    Buss et al., "PanShower: One model for all calorimeter showers" (seed document 004);
    Buhmann et al., "CaloClouds II" (point counts per layer), arXiv:2309.05704.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from showerformer.data.conditions import DEFAULT_PARTICLES, check_particles, condition_tensors
from showerformer.data.points import PointPreprocessing
from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.models import register
from showerformer.models.config import ModelConfig
from showerformer.models.panshower import PanShower, PanShowerConfig
from showerformer.models.point_count_fm import PointCountFM, PointCountFMConfig
from showerformer.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, get_sampler
from showerformer.showers import Conditions, PointShowers

__all__ = ["PointFlow", "PointFlowConfig"]

_SHARED = ("n_calo_layers", "particles")


@dataclass(frozen=True)
class PointFlowConfig(ModelConfig):
    """Hyper-parameters of :class:`PointFlow`.

    Attributes:
        n_calo_layers: calorimeter layers (shared by both models).
        particles: PDG ids of the modelled particle types (shared).
        shower: :class:`~showerformer.models.panshower.PanShowerConfig` keys (without the
            shared ones), e.g. ``{"d_model": 128, "layer_window": 2}``.
        counts: :class:`~showerformer.models.point_count_fm.PointCountFMConfig` keys.
        count_loss_weight: weight of the count model's loss in the sum.

    The former name ``n_layers_calo`` is read as ``n_calo_layers``, and the former names inside
    the sections as their current ones (see the sections' ``LEGACY_KEYS``).
    """

    LEGACY_KEYS: ClassVar[dict[str, str]] = {"n_layers_calo": "n_calo_layers"}

    n_calo_layers: int = 30
    particles: tuple[int, ...] = DEFAULT_PARTICLES
    shower: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    count_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        self.check_types()
        if self.n_calo_layers < 1:
            raise InputError(f"n_calo_layers={self.n_calo_layers!r}", key="n_calo_layers",
                             expected="at least one calorimeter layer")
        check_particles(self.particles)
        for name, cls in (("shower", PanShowerConfig), ("counts", PointCountFMConfig)):
            sub = getattr(self, name)
            shared = sorted(k for k in sub if cls.LEGACY_KEYS.get(k, k) in _SHARED)
            if shared:
                raise InputError(f"{shared[0]} inside {name}", key=f"{name}.{shared[0]}",
                                 expected="set at the top level (shared by both models)")
            try:  # the former key names of the section become the current ones
                sub = cls.translate_legacy_keys(sub)
            except InputError as exc:
                raise InputError(exc.what, key=f"{name}.{exc.key}", expected=exc.expected) from None
            object.__setattr__(self, name, sub)
        if not self.count_loss_weight >= 0:
            raise InputError(f"count_loss_weight={self.count_loss_weight!r}",
                             key="count_loss_weight", expected="a non-negative weight")
        self.shower_config()  # validate both now, naming the section
        self.counts_config()

    def _sub(self, name: str, cls: type) -> Any:
        try:
            return cls.from_dict({"n_calo_layers": self.n_calo_layers,
                                  "particles": self.particles, **getattr(self, name)})
        except InputError as exc:
            raise InputError(exc.what, key=f"{name}.{exc.key}", expected=exc.expected) from None

    def shower_config(self) -> PanShowerConfig:
        """The shower model's config."""
        return self._sub("shower", PanShowerConfig)

    def counts_config(self) -> PointCountFMConfig:
        """The count model's config."""
        return self._sub("counts", PointCountFMConfig)

    @classmethod
    def for_geometry(cls, geometry: Geometry, **kwargs: Any) -> PointFlowConfig:
        """A config whose ``n_calo_layers`` is the geometry's number of layers."""
        return cls(n_calo_layers=geometry.n_layers, **kwargs)

    def resolved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the sections expanded to every key of their configs (defaults
        included; the shared keys stay at the top level)."""
        out = self.to_dict()
        for name, sub in (("shower", self.shower_config()), ("counts", self.counts_config())):
            out[name] = {k: v for k, v in sub.to_dict().items() if k not in _SHARED}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists, also inside the sections)."""
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        out = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["shower"] = {k: plain(v) for k, v in self.shower.items()}
        out["counts"] = {k: plain(v) for k, v in self.counts.items()}
        return out


@register("point-flow")
class PointFlow(nn.Module):
    """PanShower with its PointCountFM: samples the points per layer, then the points.

    Arguments:
        config: hyper-parameters; the defaults when omitted.

    Attributes:
        shower: the :class:`~showerformer.models.panshower.PanShower` velocity field.
        counts: the :class:`~showerformer.models.point_count_fm.PointCountFM`.
    """

    config_class: ClassVar[type] = PointFlowConfig
    task: ClassVar[str] = "generation"
    family: ClassVar[str]

    def __init__(self, config: PointFlowConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PointFlowConfig()
        self.shower = PanShower(config.shower_config())
        self.counts = PointCountFM(config.counts_config())

    def fit_normalization(self, counts: Any) -> None:
        """Fit the count model's per-layer statistics on the training counts (N, L)."""
        self.counts.fit_normalization(counts)

    def loss(self, batch: Mapping[str, Tensor], *, generator: torch.Generator | None = None) -> Tensor:
        """``L_shower + count_loss_weight * L_counts`` on one batch of
        :func:`~showerformer.data.points.make_batch`."""
        loss = self.shower.loss(batch, generator=generator)
        if self.config.count_loss_weight > 0:
            loss = loss + self.config.count_loss_weight * self.counts.loss(batch, generator=generator)
        return loss

    @torch.no_grad()
    def sample(
        self,
        conditions: Mapping[str, Tensor],
        *,
        counts: Tensor | None = None,
        generator: torch.Generator | None = None,
        steps: int = DEFAULT_STEPS,
        sampler: str = DEFAULT_SAMPLER,
    ) -> Any:
        """Points in the normalized space: counts from the count model (unless given), then
        the shower flow. Returns a :class:`~showerformer.models.panshower.PanShowerSample`."""
        if counts is None:
            counts = self.counts.sample(conditions, generator=generator, steps=steps,
                                        sampler=sampler)
        return self.shower.sample(conditions, counts, generator=generator, steps=steps,
                                  sampler=sampler)

    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions,
        preprocessing: PointPreprocessing,
        *,
        counts: Any = None,
        generator: torch.Generator | None = None,
        steps: int = DEFAULT_STEPS,
        sampler: str = DEFAULT_SAMPLER,
        batch_size: int = 256,
        geometry: Geometry | None = None,
        max_counts: Any = None,
    ) -> PointShowers:
        """Physical showers (mm, MeV) for the given incident particles.

        Arguments:
            conditions: incident particles (PDG ids among ``config.particles``).
            preprocessing: the fitted transform of the training data.
            counts: points per layer ``(N, L)``; sampled by the count model when None.
            max_counts: cap of the points per layer ``(L,)`` applied to the counts (None: none).
            generator: source of randomness, on the model's device.
            steps, sampler: ODE integration of both models.
            batch_size: showers per network call, at most (calls hold showers of similar
                size: see :func:`~showerformer.data.batching.size_chunks`).
            geometry: attached to the returned showers.

        Returns:
            :class:`PointShowers` with ``(N, P, 5)`` points (x, y, z, E, layer).

        Raises:
            InputError: a batch size or a number of steps below 1, an unknown sampler (before
                any sampling).
        """
        if int(batch_size) < 1:
            raise InputError(f"batch_size={batch_size!r}", key="batch_size",
                             expected="a positive number of showers")
        if int(steps) < 1:
            raise InputError(f"steps={steps!r}", key="steps", expected="at least one step")
        get_sampler(sampler)  # an unknown name fails here, not after the count model ran
        if counts is None:
            device = self.counts.out.weight.device
            cond = condition_tensors(conditions, preprocessing, self.config.particles, device)
            parts = []
            for start in range(0, len(conditions), batch_size):
                sl = slice(start, start + batch_size)
                parts.append(self.counts.sample({k: v[sl] for k, v in cond.items()},
                                                generator=generator, steps=steps,
                                                sampler=sampler))
            counts = (torch.cat(parts) if parts
                      else torch.zeros(0, self.config.n_calo_layers, dtype=torch.long))
        counts = torch.as_tensor(counts).long()
        if max_counts is not None:
            counts = torch.minimum(counts, torch.as_tensor(max_counts, dtype=counts.dtype,
                                                           device=counts.device))
        # showers of similar size share a batch (little padding); the order is restored after
        order = np.argsort(counts.sum(dim=1).cpu().numpy(), kind="stable")
        out = self.shower.generate(conditions[order], preprocessing,
                                   counts=counts[torch.as_tensor(order, device=counts.device)],
                                   generator=generator, steps=steps, sampler=sampler,
                                   batch_size=batch_size, geometry=geometry)
        return out[np.argsort(order)]

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters of both models and in total."""
        s = sum(p.numel() for p in self.shower.parameters())
        c = sum(p.numel() for p in self.counts.parameters())
        return {"shower": s, "counts": c, "total": s + c}
