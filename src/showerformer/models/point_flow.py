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
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from showerformer.data.batching import BucketBatchSampler
from showerformer.data.conditions import (
    DEFAULT_PARTICLES,
    check_particles,
    condition_tensors,
    particle_indices,
)
from showerformer.data.points import (
    VOXEL_FORMATS,
    PointCloudDataset,
    PointCollate,
    PointPreprocessing,
)
from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.models import register
from showerformer.models.config import ModelConfig
from showerformer.models.family import FamilyModule
from showerformer.models.panshower import PanShower, PanShowerConfig, generate_in_chunks
from showerformer.models.point_count_fm import PointCountFM, PointCountFMConfig, cap_counts
from showerformer.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, get_sampler
from showerformer.showers import Conditions, PointShowers

__all__ = [
    "PointFlow",
    "PointFlowConfig",
    "check_condition_summary",
    "check_count_limits",
    "check_layers",
    "check_particles_known",
    "condition_summary",
    "config_for_showers",
    "count_limits",
]

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
class PointFlow(FamilyModule):
    """PanShower with its PointCountFM: samples the points per layer, then the points.

    A model family (see :mod:`showerformer.models.family`): :meth:`from_data` fits the point
    preprocessing and the count statistics on the training showers (points, or voxels
    dequantized to one point per cell), and the model keeps them with the geometry, the
    training conditions and the largest points per layer, so :meth:`generate` needs nothing
    but the incident particles.

    Arguments:
        config: hyper-parameters; the defaults when omitted.

    Attributes:
        shower: the :class:`~showerformer.models.panshower.PanShower` velocity field.
        counts: the :class:`~showerformer.models.point_count_fm.PointCountFM`.
        preprocessing: the fitted :class:`~showerformer.data.points.PointPreprocessing`
            (None until fitted or loaded).
        geometry: the geometry of the training data (None for geometry-free point clouds).
    """

    config_class: ClassVar[type] = PointFlowConfig
    task: ClassVar[str] = "generation"
    data_kind: ClassVar[str] = "points"
    data_keys: ClassVar[dict[str, tuple[Any, ...]]] = {
        "pad_multiple": (int, 1, 1), "bucket_batches": (int, 32, 1), "per_layer": (bool, True)}
    family: ClassVar[str]

    def __init__(self, config: PointFlowConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PointFlowConfig()
        self.shower = PanShower(config.shower_config())
        self.counts = PointCountFM(config.counts_config())
        self.preprocessing: PointPreprocessing | None = None
        self.geometry: Geometry | None = None

    def fit_normalization(self, counts: Any) -> None:
        """Fit the count model's per-layer statistics on the training counts (N, L)."""
        self.counts.fit_normalization(counts)

    # -- the family contract ----------------------------------------------------------------------

    @classmethod
    def from_data(cls, overrides: Mapping[str, Any], train: PointCloudDataset,
                  settings: Mapping[str, Any], *, val: PointCloudDataset | None = None
                  ) -> PointFlow:
        """The model for point-cloud training data, its preprocessing fitted.

        ``n_calo_layers`` comes from the data's geometry (or its largest layer index); the
        particles default to the model's four.

        Arguments:
            overrides: :class:`PointFlowConfig` keys.
            train: the training showers.
            settings: the ``data:`` settings (``per_layer``: standardize every layer with its
                own statistics).
            val: the validation showers (checked like the training ones).

        Raises:
            InputError: a layer count that does not match the data or a bad config value
                (naming the key), a particle the model does not know or a layer index outside
                the layers (naming the data file).
        """
        config = config_for_showers(cls.config_class, overrides, _n_layers(train), train, val)
        model = cls(config)
        model.fit_normalization(train.layer_counts(config.n_calo_layers))
        try:
            pre = PointPreprocessing.fit_points(
                train.points, train.conditions.energy, geometry=train.geometry,
                n_layers=config.n_calo_layers, per_layer=bool(settings.get("per_layer", True)))
        except InputError as exc:
            raise InputError(exc.what, path=train.path, key=exc.key,
                             expected=exc.expected) from None
        model.load_data_state({
            "kind": "point-flow",
            "points": pre.to_dict(),
            "geometry": None if train.geometry is None else train.geometry.to_dict(),
            "source_format": train.source_format,
            "conditions": condition_summary(train.conditions),
            "count_limits": count_limits(train, config.n_calo_layers).tolist(),
        }, {})
        return model

    def load_data_state(self, state: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Restore the preprocessing, geometry, training conditions and count limits.

        Also reads checkpoints written before the model kept them: there the preprocessing
        is the whole state and the rest sits in the checkpoint's ``metadata``. An empty state
        (weights saved on their own) leaves the model without preprocessing: :meth:`generate`
        then refuses with a one-line error.

        Raises:
            InputError: a damaged entry, naming its key.
        """
        state = dict(state)
        if not state:  # weights only: generate() refuses until a state is loaded
            self.preprocessing, self.geometry = None, None
            super().load_data_state({}, info)
            return
        if "points" not in state:  # the earlier layout: preprocessing + metadata
            meta = dict(info.get("metadata") or {})
            state = {"kind": "point-flow", "points": state,
                     **{k: meta.get(k) for k in ("geometry", "source_format", "conditions",
                                                 "count_limits")}}
        try:
            pre = PointPreprocessing.from_dict(state["points"])
        except InputError as exc:
            raise InputError(exc.what, key=f"preprocessing.points.{exc.key}",
                             expected=exc.expected) from None
        geo = None
        if state.get("geometry"):
            try:
                geo = Geometry.from_dict(state["geometry"])
            except (InputError, KeyError, TypeError, ValueError):
                raise InputError("unreadable geometry", key="preprocessing.geometry",
                                 expected="the geometry dict written at training") from None
        if pre.n_layers != self.config.n_calo_layers:
            raise InputError(f"preprocessing for {pre.n_layers} layers", key="preprocessing",
                             expected=f"{self.config.n_calo_layers} layers, as the model")
        check_condition_summary(state.get("conditions") or {}, "preprocessing.conditions")
        check_count_limits(state.get("count_limits"), self.config.n_calo_layers,
                           "preprocessing.count_limits")
        self.preprocessing, self.geometry = pre, geo
        super().load_data_state(state, info)

    def collate_fn(self, settings: Mapping[str, Any]) -> Callable[[list[Any]], Any]:
        """Point-cloud batches (points sorted by layer, padded to ``pad_multiple``)."""
        if self.preprocessing is None:
            raise InputError("no fitted preprocessing", key="preprocessing",
                             expected="a model built by from_data or loaded from a checkpoint")
        return PointCollate(self.preprocessing, self.config.particles,
                            int(settings.get("pad_multiple", 1)))

    def batch_sampler(self, train: PointCloudDataset,
                      settings: Mapping[str, Any]) -> Callable[..., Any] | None:
        """Batches of showers of similar size (``bucket_batches`` batches per bucket)."""
        return BucketBatchSampler.factory(train.sizes, int(settings.get("bucket_batches", 32)))

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
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        batch_size: int | None = None,
        counts: Any = None,
    ) -> PointShowers:
        """Physical showers (mm, MeV) for the given incident particles.

        The count model samples the points per layer (capped by the most the training data
        had, see :func:`count_limits`), then the shower flow the points, in calls of showers of
        similar size; the fitted preprocessing turns them into millimetres and MeV.

        Arguments:
            conditions: incident particles (PDG ids among ``config.particles``).
            generator: source of randomness, on the model's device.
            steps: ODE steps of both models (default 16).
            sampler: ``"midpoint"`` (default), ``"heun"`` or ``"euler"``.
            batch_size: showers per network call, at most (default 256).
            counts: points per layer ``(N, L)``; sampled by the count model when None.

        Returns:
            :class:`PointShowers` with ``(N, P, 5)`` points (x, y, z, E, layer) in the
            training geometry.

        Raises:
            InputError: a batch size or a number of steps below 1, an unknown sampler (before
                any sampling), or a model without its fitted preprocessing.
        """
        steps, sampler = self.sampling_options(steps, sampler)
        batch_size = 256 if batch_size is None else batch_size
        if int(batch_size) < 1:
            raise InputError(f"batch_size={batch_size!r}", key="batch_size",
                             expected="a positive number of showers")
        pre = self.preprocessing
        if pre is None:
            raise InputError("no fitted preprocessing", key="preprocessing",
                             expected="a model built by from_data or loaded from a checkpoint")
        limits = self._data_state.get("count_limits")
        if counts is None:
            cond = condition_tensors(conditions, pre, self.config.particles,
                                     self.counts.out.weight.device)
            counts = self.counts.sample_capped(cond, batch_size=batch_size, limits=limits,
                                               generator=generator,
                                               **self.count_sampling_options(steps, sampler))
        else:
            counts = cap_counts(counts, limits)
        # showers of similar size share a network call (little padding)
        return generate_in_chunks(
            lambda c, k: self.sample(c, counts=k, generator=generator, steps=steps,
                                     sampler=sampler),
            conditions, counts, pre, self.config.particles, batch_size=int(batch_size),
            geometry=self.geometry, device=self.counts.out.weight.device)

    def sampling_options(self, steps: int | None, sampler: str | None) -> tuple[int, str]:
        """The steps and sampler of :meth:`generate` (defaults filled in), checked before any
        sampling.

        Raises:
            InputError: fewer than one step or an unknown sampler.
        """
        steps = DEFAULT_STEPS if steps is None else steps
        sampler = DEFAULT_SAMPLER if sampler is None else sampler
        if int(steps) < 1:
            raise InputError(f"steps={steps!r}", key="steps", expected="at least one step")
        get_sampler(sampler)  # an unknown name fails here, not after the count model ran
        return int(steps), sampler

    def count_sampling_options(self, steps: int, sampler: str) -> dict[str, Any]:
        """The count model's ``steps`` and ``sampler`` in :meth:`generate` (point-flow: those
        of the shower flow)."""
        return {"steps": steps, "sampler": sampler}

    def n_parameters(self) -> dict[str, int]:
        """Parameters of both models and in total."""
        s = sum(p.numel() for p in self.shower.parameters())
        c = sum(p.numel() for p in self.counts.parameters())
        return {"shower": s, "counts": c, "total": s + c}


def _n_layers(ds: PointCloudDataset) -> int:
    if ds.geometry is not None:
        return int(ds.geometry.n_layers)
    return int(np.rint(ds.points[:, 4]).max()) + 1 if len(ds.points) else 1


def config_for_showers(config_class: Any, overrides: Mapping[str, Any], n_layers: int,
                       *datasets: PointCloudDataset | None) -> Any:
    """The config of a point-cloud family for showers of ``n_layers`` layers: ``n_calo_layers``
    set from the data (a different explicit value is an error), then every dataset's particles
    and layer indices checked against it.

    Raises:
        InputError: a mismatching ``n_calo_layers`` or a bad config value (naming the key), or
            a particle or layer index the model cannot take (naming the data file).
    """
    overrides = config_class.translate_legacy_keys(overrides)
    layers = overrides.setdefault("n_calo_layers", n_layers)
    if layers != n_layers:
        raise InputError(f"n_calo_layers={layers} but the data has {n_layers} layers",
                         key="n_calo_layers", expected=f"{n_layers} (or leave it unset)")
    config = config_class.from_dict(overrides)
    for ds in datasets:
        if ds is not None:
            check_particles_known(ds, config.particles)
            check_layers(ds, config.n_calo_layers)
    return config


def check_count_limits(limits: Any, n_layers: int, key: str = "count_limits") -> None:
    """Raise :class:`InputError` naming ``key`` unless ``limits`` is None or one non-negative
    integer per layer (as :func:`count_limits` writes them into a checkpoint)."""
    if limits is not None and not (isinstance(limits, list) and len(limits) == n_layers and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in limits)):
        raise InputError("not one count per layer", key=key,
                         expected=f"a list of {n_layers} non-negative integers")


def check_layers(ds: PointCloudDataset, n_layers: int) -> None:
    """Raise :class:`InputError` naming the data file unless every point's layer index is a
    whole number in ``0..n_layers - 1``."""
    layer = ds.points[:, 4].astype(np.float64)  # (M,)
    bad = ~np.isfinite(layer) | (layer < 0) | (layer > n_layers - 1) | (np.rint(layer) != layer)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"geometry {ds.geometry.name}" if ds.geometry is not None else "the model"
        raise InputError(f"layer index {layer[i]:g} ({int(bad.sum())} point(s) outside the "
                         "layers)", path=ds.path, key="layer",
                         expected=f"whole numbers 0..{n_layers - 1}, the layers of {where}")


def check_particles_known(ds: PointCloudDataset, particles: tuple[int, ...]) -> None:
    """Raise :class:`InputError` naming the data file and ``pdg`` when a shower's particle is
    not one of the model's ``particles``."""
    try:
        particle_indices(ds.conditions.pdg, tuple(particles))
    except InputError as exc:
        raise InputError(exc.what, path=ds.path, key="pdg",
                         expected=f"{exc.expected} (model.particles)") from None


def count_limits(ds: PointCloudDataset, n_layers: int) -> np.ndarray:
    """Largest number of points per layer a generated shower may have, (L,) int64.

    For showers made from voxels: the cells of the layer (one point per cell). Otherwise twice
    the largest count seen in the training showers (at least 1).
    """
    geo = ds.geometry
    if ds.source_format in VOXEL_FORMATS and geo is not None and geo.n_layers == n_layers:
        return np.diff(np.asarray(geo.layer_offsets, dtype=np.int64))
    return np.maximum(2 * ds.layer_counts(n_layers).max(axis=0, initial=0), 1).astype(np.int64)


def check_condition_summary(cond: Any, key: str = "conditions") -> None:
    """Raise :class:`InputError` naming ``key`` unless ``cond`` is a training range as
    :func:`condition_summary` writes it (PDG ids; ``[low, high]`` finite ranges, energy > 0)."""
    if not isinstance(cond, Mapping):
        raise InputError(f"a {type(cond).__name__}", key=key, expected="a JSON object")
    pdg = cond.get("pdg")
    if pdg is not None and not (isinstance(pdg, list) and pdg and all(
            isinstance(p, int) and not isinstance(p, bool) for p in pdg)):
        raise InputError(f"{pdg!r}", key=f"{key}.pdg", expected="a list of PDG ids")
    for name in ("energy_mev", "theta", "phi"):
        v = cond.get(name)
        if v is None:
            continue
        ok = (isinstance(v, list) and len(v) == 2
              and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
              and all(math.isfinite(x) for x in v) and v[0] <= v[1])
        if ok and name == "energy_mev":
            ok = v[0] > 0
        if not ok:
            raise InputError(f"{v!r}", key=f"{key}.{name}",
                             expected="[low, high], finite" + (" and > 0" if name == "energy_mev"
                                                               else ""))


def condition_summary(c: Conditions) -> dict[str, Any]:
    """The training range of the incident particles: PDG ids, energy (MeV), theta, phi (rad)."""
    return {"pdg": sorted(int(p) for p in np.unique(c.pdg)),
            "energy_mev": [float(c.energy.min()), float(c.energy.max())],
            "theta": [float(c.theta.min()), float(c.theta.max())],
            "phi": [float(c.phi.min()), float(c.phi.max())]}
