"""Score-based diffusion on point clouds (seed 003): a mean-field score transformer with PointCountFM.

Read top to bottom:

1. :class:`ScoreDiffusionConfig`: the SDE (VE, VP or sub-VP, :mod:`showerformer.methods.diffusion`),
   the score network, the loss and the default sampler.
2. :class:`ScoreTransformer`, the network of the seed's chapter 5: every point ``(x, y, log E)``
   (the shared point preprocessing: Cartesian x, y as the seed chose, per-layer standardized)
   is embedded with its layer; Gaussian Fourier projections (eq. 5.2) of the diffusion time and
   of the incident energy, with the direction and particle type, pass dense layers to one
   condition vector ``c``; a class token (``c`` plus a learned vector) is the mean field that
   attends to the points in every :class:`~showerformer.nn.mean_field.MeanFieldBlock`
   (pre-layer-norm residual blocks, cost linear in the points, padding masked); a final layer
   norm and linear map of every point plus the last class token give its noise estimate.
3. :class:`ScoreDiffusion`, the family: the score is ``s = -eps_hat(c_in x_t, t) / sigma(t)``
   with the input scaled by ``c_in = 1 / sqrt(a(t)^2 + sigma(t)^2)`` (the standardized data
   have unit variance, so the network sees unit-scale inputs at every noise level, important
   for VE whose ``sigma_max`` is 50); trained by denoising score matching (``lambda = sigma^2``
   or likelihood weighting) plus, optionally, the correlation term of eq. 6.1-6.2 on the
   denoised estimate; the points per layer come from PointCountFM as for the other point-cloud
   families. Samplers: predictor-corrector (``pc``), Euler-Maruyama alone, and the
   probability-flow ODE through the fixed-step ODE samplers or the adaptive one.

References:
    Hsu, "Fast HGCal Detector Simulation via Score-Based Diffusion Models" (seed document 003);
    Song et al., arXiv:2011.13456; Ho et al. (noise prediction), arXiv:2006.11239; Karras et
    al. (input scaling), arXiv:2206.00364; Käch et al. (mean-field attention), arXiv:2305.15254;
    Tancik et al. (Fourier features), arXiv:2006.10739.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from showerformer.data.conditions import (
    CONDITION_KEYS,
    DEFAULT_PARTICLES,
    check_particles,
    require_keys,
)
from showerformer.data.points import counts_per_layer, layers_from_counts
from showerformer.errors import InputError
from showerformer.methods.diffusion import (
    SDE,
    WEIGHTINGS,
    correlation_loss,
    denoising_score_matching_loss,
    diffusion_schedule,
    make_sde,
    probability_flow,
    tweedie_denoise,
)
from showerformer.models import register
from showerformer.models.config import ModelConfig
from showerformer.models.family import FamilyModule
from showerformer.models.panshower import PanShowerSample
from showerformer.models.point_count_fm import CountsSection, PointCountFM
from showerformer.models.point_flow import PointFlow
from showerformer.nn.conditioning import ConditionEmbedding
from showerformer.nn.mean_field import MeanFieldBlock
from showerformer.samplers import SAMPLERS, get_sampler, sample_pc

__all__ = ["DIFFUSION_SAMPLERS", "POINT_FEATURES", "ScoreDiffusion", "ScoreDiffusionConfig",
           "ScoreTransformer"]

POINT_FEATURES = ("x", "y", "energy")
"""The diffused features of a point (normalized x, y and log E), by index."""

DIFFUSION_SAMPLERS = ("pc", "euler-maruyama", *SAMPLERS)
"""``pc`` and ``euler-maruyama`` run the reverse SDE; the ODE samplers' names run the
probability-flow ODE."""


@dataclass(frozen=True)
class ScoreDiffusionConfig(CountsSection, ModelConfig):
    """Hyper-parameters of :class:`ScoreDiffusion` (defaults: the seed's sweep, section 6.3).

    Attributes:
        n_calo_layers: calorimeter layers (from the data).
        particles: PDG ids of the modelled particle types.
        sde: ``"ve"``, ``"vp"`` or ``"subvp"``.
        sigma_min, sigma_max: VE noise scales.
        beta_min, beta_max: VP and sub-VP schedule.
        eps: smallest diffusion time (training and the end of sampling).
        weighting: ``"sigma2"`` (``lambda = sigma^2``) or ``"likelihood"`` (``lambda = g^2``).
        embed_dim: width of the points and the class token (the seed's embedding, 96).
        hidden: width inside the mean-field blocks (the seed's hidden dimension, 96).
        n_heads: attention heads (a divisor of ``hidden``).
        n_blocks: mean-field transformer blocks.
        n_fourier: Gaussian Fourier features of the time and of the energy (even).
        time_fourier_scale: standard deviation of the time frequencies (the seed's "scale",
            eq. 5.2).
        energy_fourier_scale: the same for the normalized log incident energy.
        correlation_features: two of ``x``, ``y``, ``energy`` whose per-shower covariance the
            correlation term acts on (eq. 6.1-6.2), computed on the network's denoised estimate
            (Tweedie's formula) with showers weighted by ``a^2 / (a^2 + sigma^2)``, the share of
            signal in ``x_t``; None: no term.
        correlation_weight: its weight ``lambda``.
        correlation_target: ``"data"`` (match the data's covariance) or ``"zero"`` (suppress
            it, the seed's use).
        sampler: default sampler (one of :data:`DIFFUSION_SAMPLERS`).
        sampling_steps: default steps ``N`` of the sampler.
        n_corrector: Langevin corrector steps ``M`` per step of ``pc``.
        snr: the corrector's signal-to-noise ratio ``r``.
        count_loss_weight: weight of the count model's loss.
        counts: :class:`~showerformer.models.point_count_fm.PointCountFMConfig` keys.
    """

    n_calo_layers: int = 45
    particles: tuple[int, ...] = DEFAULT_PARTICLES
    sde: str = "ve"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-5
    weighting: str = "sigma2"
    embed_dim: int = 96
    hidden: int = 96
    n_heads: int = 8
    n_blocks: int = 4
    n_fourier: int = 32
    time_fourier_scale: float = 16.0
    energy_fourier_scale: float = 1.0
    correlation_features: tuple[str, ...] | None = None
    correlation_weight: float = 0.0
    correlation_target: str = "data"
    sampler: str = "pc"
    sampling_steps: int = 100
    n_corrector: int = 1
    snr: float = 0.16
    count_loss_weight: float = 1.0
    counts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_types()

        if self.n_calo_layers < 1:
            raise self.invalid("n_calo_layers", "at least one calorimeter layer")
        check_particles(self.particles)
        self.require_positive("embed_dim", "hidden", "n_heads", "n_blocks", "n_fourier",
                              "sampling_steps")
        if self.hidden % self.n_heads:
            raise self.invalid("n_heads", f"a divisor of hidden={self.hidden}")
        if self.n_fourier % 2:
            raise self.invalid("n_fourier", "an even number")
        self.make_sde()  # names the bad key
        if self.weighting not in WEIGHTINGS:
            raise self.invalid("weighting", " or ".join(WEIGHTINGS))
        for key in ("time_fourier_scale", "energy_fourier_scale", "snr"):
            if not getattr(self, key) > 0:
                raise self.invalid(key, "a positive number")
        for key in ("correlation_weight", "count_loss_weight"):
            if not getattr(self, key) >= 0:
                raise self.invalid(key, "a non-negative weight")
        if self.n_corrector < 0:
            raise self.invalid("n_corrector", "a non-negative number of corrector steps")
        if self.sampler not in DIFFUSION_SAMPLERS:
            raise self.invalid("sampler", "one of " + ", ".join(DIFFUSION_SAMPLERS))
        cf = self.correlation_features
        if cf is not None and (len(cf) != 2 or len(set(cf)) != 2
                               or any(f not in POINT_FEATURES for f in cf)):
            raise self.invalid("correlation_features", "two different names of " + ", ".join(POINT_FEATURES))
        if self.correlation_target not in ("data", "zero"):
            raise self.invalid("correlation_target", "data or zero")
        self.check_counts()

    def make_sde(self) -> SDE:
        """The forward SDE of these settings."""
        return make_sde(self.sde, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                        beta_min=self.beta_min, beta_max=self.beta_max, eps=self.eps)

    @property
    def n_particles(self) -> int:
        """Rows of the particle embedding."""
        return len(self.particles)


class ScoreTransformer(nn.Module):
    """Mean-field score transformer: noisy points ``(B, P, 3)`` -> noise estimate ``(B, P, 3)``.

    Arguments:
        config: the hyper-parameters (``embed_dim``, ``hidden``, ``n_heads``, ``n_blocks``,
            Fourier settings).
    """

    def __init__(self, config: ScoreDiffusionConfig) -> None:
        super().__init__()
        self.config = config
        d, L = config.embed_dim, config.n_calo_layers
        self.condition = ConditionEmbedding(d, config.n_particles, n_fourier=config.n_fourier,
                                            time_fourier_std=config.time_fourier_scale,
                                            energy_fourier_std=config.energy_fourier_scale,
                                            n_hidden=1)
        self.count_mlp = nn.Sequential(nn.Linear(L, d), nn.SiLU(), nn.Linear(d, d))
        self.point_in = nn.Linear(3 + 1, d)
        self.layer_embed = nn.Embedding(L, d)
        self.class_token = nn.Parameter(torch.zeros(d))  # (d,)
        self.blocks = nn.ModuleList(
            MeanFieldBlock(d, config.hidden, config.n_heads, d, activation=nn.SiLU(),
                           point_norm=True)
            for _ in range(config.n_blocks))
        self.norm_out = nn.LayerNorm(d)
        self.out = nn.Linear(d, 3)
        nn.init.normal_(self.layer_embed.weight, std=0.02)
        nn.init.normal_(self.class_token, std=0.02)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor], layer: Tensor,
                mask: Tensor) -> Tensor:
        """Noise estimate of every point.

        Arguments:
            x: scaled noisy points ``c_in x_t``.  # (B, P, 3)
            t: diffusion time.  # (B,)
            cond: ``"particle"``, ``"energy"``, ``"theta"``, ``"phi"`` (B,) and ``"counts"``
                (B, L) points per layer.
            layer: calorimeter layer of every point.  # (B, P) int64
            mask: True for real points.  # (B, P) bool

        Returns:
            ``(B, P, 3)``, zero on padding.
        """
        b, p = layer.shape
        if x.shape != (b, p, 3) or mask.shape != (b, p) or t.shape != (b,):
            raise InputError(f"x {tuple(x.shape)}, t {tuple(t.shape)}, layer {tuple(layer.shape)},"
                             f" mask {tuple(mask.shape)}", key="x",
                             expected="x (B, P, 3), t (B,), layer and mask (B, P)")
        require_keys(cond, (*CONDITION_KEYS, "counts"), "cond")
        L = self.config.n_calo_layers
        layer, mask = layer.long().clamp(0, L - 1), mask.bool()
        dtype = self.out.weight.dtype
        counts = torch.log1p(cond["counts"].to(dtype).clamp_min(0))  # (B, L)
        c = self.condition(t, cond) + self.count_mlp(counts)  # (B, d)
        own = counts.gather(1, layer)  # (B, P)
        h = self.point_in(torch.cat([x.to(dtype), own[..., None]], dim=-1))
        h = h + self.layer_embed(layer) + c[:, None, :]  # (B, P, d)
        m = self.class_token + c  # (B, d)
        for block in self.blocks:
            h, m = block(h, m, c, mask)
        out = self.out(self.norm_out(h + m[:, None, :]))  # (B, P, 3): points and class token
        return out * mask[..., None].to(out.dtype)


@register("score-diffusion")
class ScoreDiffusion(PointFlow):
    """Score-based diffusion with a mean-field score transformer and PointCountFM.

    The data side (preprocessing fitted in :meth:`from_data` and kept in the checkpoint,
    geometry, count limits, bucketed batches) is that of point-flow; the shower model is a
    :class:`ScoreTransformer` trained by denoising score matching on the configured SDE.

    Attributes:
        shower: the :class:`ScoreTransformer`.
        counts: the :class:`~showerformer.models.point_count_fm.PointCountFM`.
        sde: the forward :class:`~showerformer.methods.diffusion.SDE`.
    """

    config_class: ClassVar[type] = ScoreDiffusionConfig
    samplers: ClassVar[tuple[str, ...]] = DIFFUSION_SAMPLERS

    def __init__(self, config: ScoreDiffusionConfig | None = None) -> None:
        FamilyModule.__init__(self)  # not PointFlow's: the shower model here is another network
        self.config = config = config or ScoreDiffusionConfig()
        self.shower = ScoreTransformer(config)  # type: ignore[assignment]
        self.counts = PointCountFM(config.counts_config())
        self.sde = config.make_sde()
        self.preprocessing = None
        self.geometry = None

    # -- score ------------------------------------------------------------------------------------

    def score(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor], layer: Tensor,
              mask: Tensor) -> Tensor:
        """``s(x_t, t) = -eps_hat(c_in x_t, t) / sigma(t)``, zero on padding.  # (B, P, 3)"""
        a, sigma = self.sde.marginal(t)
        c_in = (a * a + sigma * sigma).rsqrt().to(x.dtype)[:, None, None]
        eps = self.shower(x * c_in, t, cond, layer, mask)
        return -eps / sigma.to(eps.dtype)[:, None, None]

    def _score_fn(self, layer: Tensor, mask: Tensor) -> Callable[[Tensor, Tensor, Any], Tensor]:
        def score(x: Tensor, t: Tensor, cond: Any) -> Tensor:
            return self.score(x, t, cond, layer, mask)

        return score

    # -- training ---------------------------------------------------------------------------------

    def loss(self, batch: Mapping[str, Tensor], *, generator: torch.Generator | None = None) -> Tensor:
        """Denoising score matching (+ correlation term) + ``count_loss_weight`` x the count
        model's flow-matching loss, on one batch of :func:`~showerformer.data.points.make_batch`."""
        require_keys(batch, ("x", "layer", "mask", *CONDITION_KEYS), "batch")
        cfg = self.config
        x0 = batch["x"].to(self.shower.out.weight.dtype)
        layer, mask = batch["layer"].long(), batch["mask"].bool()
        cond = dict(batch)
        if "counts" not in cond:
            cond["counts"] = counts_per_layer(layer, mask, cfg.n_calo_layers)
        score = self._score_fn(layer, mask)
        loss, parts = denoising_score_matching_loss(score, self.sde, x0, cond=cond, mask=mask,
                                                   weighting=cfg.weighting, generator=generator,
                                                   return_parts=True)
        if cfg.correlation_features is not None and cfg.correlation_weight > 0:
            x0_hat = tweedie_denoise(lambda *_: parts["score"], self.sde, parts["x_t"],
                                     parts["t"])  # the network's denoised estimate
            a, sigma = self.sde.marginal(parts["t"])
            i, j = (POINT_FEATURES.index(f) for f in cfg.correlation_features)
            # showers weighted by the share of signal in x_t: pure noise says nothing
            cor = correlation_loss(x0_hat, x0, (i, j), mask, target=cfg.correlation_target,
                                   weights=(a * a) / (a * a + sigma * sigma))
            loss = loss + cfg.correlation_weight * cor
        if cfg.count_loss_weight > 0:
            loss = loss + cfg.count_loss_weight * self.counts.loss(batch, generator=generator)
        return loss

    @torch.no_grad()
    def validation_metric(self, batches: Iterable[Mapping[str, Tensor]]) -> float:
        """The denoising score-matching loss of the validation showers (count model excluded)
        with fixed times and noise (seed ``i`` for the ``i``-th batch), so successive
        validations compare."""
        total, n = 0.0, 0
        for i, batch in enumerate(batches):
            x0 = batch["x"].to(self.shower.out.weight.dtype)
            layer, mask = batch["layer"].long(), batch["mask"].bool()
            cond = dict(batch)
            cond.setdefault("counts", counts_per_layer(layer, mask, self.config.n_calo_layers))
            gen = torch.Generator(device=x0.device).manual_seed(i)
            loss = denoising_score_matching_loss(self._score_fn(layer, mask), self.sde, x0,
                                                 cond=cond, mask=mask,
                                                 weighting=self.config.weighting, generator=gen)
            total += float(loss) * len(x0)
            n += len(x0)
        return total / n if n else float("nan")

    # -- generation -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        conditions: Mapping[str, Tensor],
        *,
        counts: Tensor | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> PanShowerSample:
        """Points in the normalized space (evaluation mode; the mode is restored).

        Arguments:
            conditions: ``"particle"``, ``"energy"``, ``"theta"``, ``"phi"`` (B,), on the
                model's device.
            counts: points per layer ``(B, L)``; from the count model when None.
            generator: source of the prior draw and the sampler's noise.
            steps: sampler steps ``N`` (default ``config.sampling_steps``).
            sampler: one of :data:`DIFFUSION_SAMPLERS` (default ``config.sampler``).
            callback: passed to the sampler.

        Returns:
            :class:`~showerformer.models.panshower.PanShowerSample`.
        """
        cfg = self.config
        steps, sampler = self.sampling_options(steps, sampler)
        require_keys(conditions, CONDITION_KEYS, "conditions")
        device, dtype = self.shower.out.weight.device, self.shower.out.weight.dtype
        if counts is None:
            counts = self.counts.sample(conditions, generator=generator)
        counts = torch.as_tensor(counts, device=device)
        if counts.ndim != 2 or counts.shape != (len(conditions["energy"]), cfg.n_calo_layers):
            raise InputError(f"counts of shape {tuple(counts.shape)}", key="counts",
                             expected=f"({len(conditions['energy'])}, {cfg.n_calo_layers}) points "
                                      "per layer")
        layer, mask = layers_from_counts(counts)  # (B, P)
        cond = {k: conditions[k].to(device) for k in CONDITION_KEYS}
        cond["counts"] = counts
        keep = mask[..., None].to(dtype)
        x = self.sde.prior_sample((*layer.shape, 3), generator=generator, device=device,
                                  dtype=dtype) * keep
        schedule = diffusion_schedule(steps, self.sde.eps, device=device, dtype=dtype)
        score = self._score_fn(layer, mask)
        was_training = self.training
        self.eval()
        try:
            if sampler in ("pc", "euler-maruyama"):
                x = sample_pc(score, x, schedule, cond=cond, callback=callback, sde=self.sde,
                              n_corrector=cfg.n_corrector if sampler == "pc" else 0,
                              snr=cfg.snr, mask=mask, generator=generator)
            else:
                x = get_sampler(sampler)(probability_flow(score, self.sde), x, schedule,
                                         cond=cond, callback=callback)
        finally:
            self.train(was_training)
        return PanShowerSample(x=x * keep, layer=layer, mask=mask)

    def sampling_options(self, steps: int | None, sampler: str | None) -> tuple[int, str]:
        """Steps and sampler with the config's defaults, checked before any sampling.

        :meth:`generate` (inherited from point-flow) samples the counts, then the points with
        :meth:`sample`, in calls of showers of similar size; ``steps`` and ``sampler`` are the
        diffusion sampler's (``pc``, ``euler-maruyama``, or an ODE sampler's name for the
        probability flow), the count model keeps its own (midpoint, 16 steps).

        Raises:
            InputError: fewer than one step or a sampler not in :data:`DIFFUSION_SAMPLERS`.
        """
        steps = self.config.sampling_steps if steps is None else steps
        sampler = self.config.sampler if sampler is None else sampler
        if sampler not in DIFFUSION_SAMPLERS:
            raise InputError(f"unknown sampler {sampler!r}", key="sampler",
                             expected="one of " + ", ".join(DIFFUSION_SAMPLERS))
        if int(steps) < 1:
            raise InputError(f"steps={steps!r}", key="steps", expected="at least one step")
        return int(steps), sampler

    def count_sampling_options(self, steps: int, sampler: str) -> dict[str, Any]:
        """The count model keeps its default ODE (midpoint, 16 steps)."""
        return {}
