"""Score-based diffusion: the VE, VP and sub-VP SDEs, denoising score matching, probability flow.

A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, 1]`` turns data (t = 0) into a
Gaussian prior (t = 1); its perturbation kernel is Gaussian, ``x_t | x_0 ~ N(a(t) x_0,
sigma(t)^2 I)``, so a network can learn the score ``grad log p_t(x)`` by denoising score matching.
Generation runs the reverse-time SDE ``dx = [f - g^2 s] dt + g dw_bar`` (samplers in
:mod:`showerformer.samplers.sde`) or the probability-flow ODE ``dx/dt = f - g^2 s / 2``, which
has the same marginals and runs through the fixed-step ODE samplers of
:mod:`showerformer.samplers.ode` on a decreasing time grid (:func:`diffusion_schedule`).

Time runs from data (t = 0) to noise (t = 1), the convention of Song et al.; the flow-matching
module (:mod:`showerformer.methods.flow_matching`) runs the other way. Both share the sampler
signature ``sample_x(model, x, schedule, *, cond, callback, disable)``.

The three SDEs (``beta(t) = beta_min + t (beta_max - beta_min)``, ``B(t) = int_0^t beta``):

=========  ============================  ===================================  =====================
SDE        f(x, t), g(t)                 a(t), sigma(t)                       prior
=========  ============================  ===================================  =====================
VE         0, sigma(t) sqrt(2 ln(smax/   1, smin (smax/smin)^t                N(0, smax^2)
           smin))
VP         -beta x / 2, sqrt(beta)       exp(-B/2), sqrt(1 - exp(-B))         N(0, 1)
sub-VP     -beta x / 2,                  exp(-B/2), 1 - exp(-B)               N(0, 1)
           sqrt(beta (1 - exp(-2B)))
=========  ============================  ===================================  =====================

References:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
    arXiv:2011.13456 (SDEs, PC sampling, probability flow, likelihood weighting); Song & Ermon,
    arXiv:1907.05600 (denoising score matching with Langevin dynamics, SMLD); Ho et al.,
    arXiv:2006.11239 (DDPM, noise prediction); Song et al., "Maximum Likelihood Training of
    Score-Based Diffusion Models", arXiv:2101.09258; Hsu, "Fast HGCal Detector Simulation via
    Score-Based Diffusion Models" (seed document 003, eq. 4.18-4.25, 6.1-6.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from showerformer.errors import InputError

__all__ = [
    "SDE",
    "SDES",
    "VESDE",
    "VPSDE",
    "WEIGHTINGS",
    "Score",
    "SubVPSDE",
    "correlation_loss",
    "denoising_score_matching_loss",
    "diffusion_schedule",
    "make_sde",
    "masked_covariance",
    "probability_flow",
    "sde_from_dict",
    "tweedie_denoise",
]

Score = Callable[[Tensor, Tensor, Any], Tensor]  # s(x, t, cond) ~ grad_x log p_t(x)

WEIGHTINGS = ("sigma2", "likelihood")
"""Loss weightings accepted by :func:`denoising_score_matching_loss`."""


def _expand(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)  # (B, 1, ..., 1)


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return x
    return x * mask.reshape(*mask.shape, *([1] * (x.ndim - mask.ndim))).to(x.dtype)


class SDE:
    """A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, 1]`` with Gaussian kernels.

    Subclasses define :meth:`coefficients` (``f`` as ``f(x, t) = f_lin(t) x`` with a scalar
    ``f_lin``, and ``g``), :meth:`marginal` (``a(t)``, ``sigma(t)``) and the prior's scale.

    Attributes:
        name: ``"ve"``, ``"vp"`` or ``"subvp"``.
        eps: the smallest time used for training and as the end of sampling (the kernel is
            singular at t = 0 for VP and sub-VP).
    """

    name: ClassVar[str] = ""
    eps: float = 1e-5

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(f_lin(t), g(t))`` with ``f(x, t) = f_lin(t) x``.  # (B,), (B,)"""
        raise NotImplementedError

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a(t), sigma(t))`` of the kernel ``x_t | x_0 ~ N(a x_0, sigma^2 I)``.  # (B,), (B,)"""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``p_1 = N(0, prior_std^2 I)``."""
        return 1.0

    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``f(x, t)`` (same shape as ``x``) and ``g(t)`` (B,) at the batch's times ``t`` (B,)."""
        f_lin, g = self.coefficients(t)
        return _expand(f_lin, x) * x, g

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = a(t) x_0 + sigma(t) z`` for data ``x0``, times ``t`` (B,) and noise ``z``."""
        a, s = self.marginal(t)
        return _expand(a, x0) * x0 + _expand(s, x0) * noise

    def prior_sample(self, shape: Sequence[int], *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """A draw from the prior ``N(0, prior_std^2 I)`` of ``shape``."""
        return self.prior_std * torch.randn(*shape, generator=generator, device=device,
                                            dtype=dtype)

    def prior_logp(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log density of the prior at ``z``, summed over all but the first dimension (only over
        the real entries when a mask ``(B, P)`` is given).  # (B,)"""
        s2 = self.prior_std ** 2
        per = -0.5 * z.float().square() / s2 - 0.5 * math.log(2 * math.pi * s2)
        per = _masked(per, mask)
        return per.reshape(per.shape[0], -1).sum(dim=1)

    def reverse_drift(self, score: Score, x: Tensor, t: Tensor, cond: Any = None, *,
                      probability_flow: bool = False) -> tuple[Tensor, Tensor]:
        """Drift of the reverse-time SDE ``f - g^2 s`` (or of the probability-flow ODE,
        ``f - g^2 s / 2``) and ``g``; time runs backwards, so a step of size ``dt < 0`` is
        ``x + drift * dt``."""
        f, g = self.drift_diffusion(x, t)
        g2 = _expand(g * g, x)
        s = score(x, t, cond)
        return f - (0.5 if probability_flow else 1.0) * g2 * s, g

    def to_dict(self) -> dict[str, Any]:
        """The SDE's name and parameters (JSON)."""
        raise NotImplementedError


class VESDE(SDE):
    """Variance exploding (SMLD): ``dx = sigma(t) sqrt(2 ln(sigma_max / sigma_min)) dw`` with
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (seed eq. 4.19).

    Arguments:
        sigma_min, sigma_max: the smallest and largest noise scales (``sigma_max`` about the
            largest distance between training samples, Song & Ermon's rule).
        eps: smallest time.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, eps: float = 1e-5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise InputError(f"sigma_min={sigma_min}, sigma_max={sigma_max}", key="sigma_min",
                             expected="0 < sigma_min < sigma_max")
        _check_eps(eps)
        self.sigma_min, self.sigma_max, self.eps = float(sigma_min), float(sigma_max), float(eps)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t)``.  # (B,)"""
        return self.sigma_min * torch.exp(t.float() * self._log_ratio)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(t.float()), self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t.float()), self.sigma(t)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def to_dict(self) -> dict[str, Any]:
        return {"sde": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "eps": self.eps}


class VPSDE(SDE):
    """Variance preserving (DDPM): ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`` with
    ``beta(t) = beta_min + t (beta_max - beta_min)`` (seed eq. 4.24).

    Arguments:
        beta_min, beta_max: the linear schedule's ends (DDPM's 1e-4 and 0.02 per step times
            1,000 steps).
        eps: smallest time (1e-3 in Song et al. for sampling; 1e-5 here for both, as for VE).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-5) -> None:
        if not 0 <= beta_min < beta_max:
            raise InputError(f"beta_min={beta_min}, beta_max={beta_max}", key="beta_min",
                             expected="0 <= beta_min < beta_max")
        _check_eps(eps)
        self.beta_min, self.beta_max, self.eps = float(beta_min), float(beta_max), float(eps)

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t)``.  # (B,)"""
        return self.beta_min + t.float() * (self.beta_max - self.beta_min)

    def integral(self, t: Tensor) -> Tensor:
        """``B(t) = int_0^t beta(s) ds``.  # (B,)"""
        t = t.float()
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.beta(t)
        return -0.5 * b, b.sqrt()

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        big = self.integral(t)
        return torch.exp(-0.5 * big), (-torch.expm1(-big)).sqrt()

    def to_dict(self) -> dict[str, Any]:
        return {"sde": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max,
                "eps": self.eps}


class SubVPSDE(VPSDE):
    """Sub-VP: the drift of VP with ``g(t)^2 = beta(t) (1 - exp(-2 B(t)))``, whose kernel's
    variance ``(1 - exp(-B))^2`` stays below VP's (Song et al., eq. 29). Arguments as
    :class:`VPSDE`."""

    name = "subvp"

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.beta(t)
        return -0.5 * b, (b * -torch.expm1(-2.0 * self.integral(t))).sqrt()

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        big = self.integral(t)
        return torch.exp(-0.5 * big), -torch.expm1(-big)


SDES: dict[str, type[SDE]] = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}
"""The SDEs by name."""


def _check_eps(eps: float) -> None:
    if not 0 < eps < 0.5:
        raise InputError(f"eps={eps}", key="eps", expected="a small positive time (0 < eps < 0.5)")


def make_sde(name: str, **params: float) -> SDE:
    """The SDE called ``name`` (``"ve"``, ``"vp"``, ``"subvp"``) with its parameters; keys that
    belong to another SDE (e.g. ``sigma_max`` for VP) are ignored, so one config can hold all.

    Raises:
        InputError: an unknown name (listing the known ones) or a bad parameter.
    """
    cls = SDES.get(name)
    if cls is None:
        raise InputError(f"SDE {name!r}", key="sde", expected=" or ".join(SDES))
    keys = ("sigma_min", "sigma_max", "eps") if cls is VESDE else ("beta_min", "beta_max", "eps")
    return cls(**{k: float(v) for k, v in params.items() if k in keys and v is not None})


def diffusion_schedule(steps: int, eps: float, *, device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Equally spaced decreasing times ``1, ..., eps`` for ``steps`` steps.  # (steps + 1,)"""
    if int(steps) < 1:
        raise InputError(f"steps={steps}", key="steps", expected="at least one step")
    return torch.linspace(1.0, float(eps), int(steps) + 1, device=device, dtype=dtype)


def probability_flow(score: Score, sde: SDE) -> Callable[[Tensor, Tensor, Any], Tensor]:
    """The velocity ``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`` of the probability-flow ODE, in the
    signature of the ODE samplers (``v(x, t, cond)``); integrate it on
    :func:`diffusion_schedule` (from 1 down to ``eps``)."""

    def velocity(x: Tensor, t: Tensor, cond: Any) -> Tensor:
        return sde.reverse_drift(score, x, t, cond, probability_flow=True)[0]

    return velocity


def tweedie_denoise(score: Score, sde: SDE, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
    """The posterior mean ``E[x_0 | x_t] = (x_t + sigma^2 s(x_t, t)) / a(t)`` (Tweedie's formula):
    the final denoising step of the samplers."""
    a, s = sde.marginal(t)
    return (x + _expand(s * s, x) * score(x, t, cond)) / _expand(a, x)


def denoising_score_matching_loss(
    score: Score,
    sde: SDE,
    x0: Tensor,
    *,
    cond: Any = None,
    mask: Tensor | None = None,
    weighting: str = "sigma2",
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_parts: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Denoising score matching ``E_t lambda(t) |s(x_t, t) + z / sigma(t)|^2`` over real entries.

    ``t ~ U(eps, 1)``, ``z ~ N(0, I)`` (zero on padding), ``x_t = a(t) x0 + sigma(t) z``.
    Weightings: ``"sigma2"``, ``lambda = sigma(t)^2`` (Song & Ermon; the loss is then
    ``|sigma s + z|^2``, the noise-prediction error of DDPM), or ``"likelihood"``,
    ``lambda = g(t)^2`` (Song et al. 2021, an upper bound on the negative log-likelihood).

    Arguments:
        score: ``score(x_t, t, cond)``.
        sde: the forward SDE.
        x0: data.  # (B, ...), e.g. (B, P, F)
        cond: passed to ``score``.
        mask: True for real entries.  # (B, P) bool
        weighting: ``"sigma2"`` or ``"likelihood"``.
        t: training times (drawn when None).  # (B,)
        generator: source of the times and the noise.
        return_parts: also return ``{"t", "noise", "x_t", "score"}`` (for extra terms such as
            :func:`correlation_loss` on the denoised estimate).

    Returns:
        Scalar loss: the weighted squared error summed over the features, averaged over real
        points (and showers); with ``return_parts`` a tuple ``(loss, parts)``.
    """
    if weighting not in WEIGHTINGS:
        raise InputError(f"weighting {weighting!r}", key="weighting",
                         expected=" or ".join(WEIGHTINGS))
    b = x0.shape[0]
    if t is None:
        t = sde.eps + (1.0 - sde.eps) * torch.rand(b, generator=generator, device=x0.device,
                                                   dtype=torch.float32)
    z = _masked(torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), mask)
    x_t = sde.perturb(x0, t, z)
    s = score(x_t, t.to(x0.dtype), cond)
    _, std = sde.marginal(t)
    if weighting == "sigma2":
        err = (s.float() * _expand(std, s).float() + z.float()).square()
    else:
        g = sde.coefficients(t)[1]
        err = (s.float() + z.float() / _expand(std, s).float()).square() * _expand(g * g, s).float()
    err = err.reshape(*err.shape[: 2 if mask is not None else 1], -1).sum(dim=-1)  # (B, P) or (B,)
    if mask is None:
        loss = err.mean()
    else:
        m = mask.to(err.dtype)
        loss = (err * m).sum() / m.sum().clamp_min(1.0)
    if return_parts:
        return loss, {"t": t, "noise": z, "x_t": x_t, "score": s}
    return loss


def masked_covariance(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-shower covariance ``1/N sum_i (x_i - x_bar)(y_i - y_bar)`` over the real points
    (seed eq. 6.2).  # x, y (B, P) -> (B,)"""
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    m = mask.to(torch.float32)
    n = m.sum(dim=1).clamp_min(1.0)  # (B,)
    x, y = x.float() * m, y.float() * m
    xm, ym = x.sum(dim=1) / n, y.sum(dim=1) / n
    return ((x - xm[:, None]) * (y - ym[:, None]) * m).sum(dim=1) / n


def correlation_loss(
    estimate: Tensor,
    data: Tensor,
    features: tuple[int, int],
    mask: Tensor | None = None,
    *,
    target: str = "data",
    weights: Tensor | None = None,
) -> Tensor:
    """The correlation term ``L_cor`` of seed eq. 6.1-6.2 between two point features.

    ``L_cor`` is the per-shower covariance (eq. 6.2) of features ``i`` and ``j`` of the
    network's denoised estimate of the shower (:func:`tweedie_denoise`). The seed adds it to the
    loss to suppress a correlation; here its square is penalized (``target="zero"``, the seed's
    aim, bounded below) or its squared difference to the data's covariance
    (``target="data"``, default: keep the correlation the showers have).

    Arguments:
        estimate: denoised points.  # (B, P, F)
        data: the clean points.  # (B, P, F)
        features: the indices ``(i, j)`` of the two features.
        mask: True for real points.  # (B, P)
        target: ``"data"`` or ``"zero"``.
        weights: per-shower weights (e.g. ``a(t)^2``, less weight where the estimate is pure
            guessing).  # (B,)

    Returns:
        Scalar: the (weighted) mean over showers.
    """
    i, j = (int(f) for f in features)
    n_feat = estimate.shape[-1]
    if not (0 <= i < n_feat and 0 <= j < n_feat) or i == j:
        raise InputError(f"features {features!r}", key="correlation.features",
                         expected=f"two different feature indices in 0..{n_feat - 1}")
    if target not in ("data", "zero"):
        raise InputError(f"target {target!r}", key="correlation.target",
                         expected="data or zero")
    cov = masked_covariance(estimate[..., i], estimate[..., j], mask)  # (B,)
    ref = (masked_covariance(data[..., i], data[..., j], mask) if target == "data"
           else torch.zeros_like(cov))
    err = (cov - ref.detach()).square()
    if weights is None:
        return err.mean()
    w = weights.to(err.dtype)
    return (w * err).sum() / w.sum().clamp_min(1e-12)


def sde_from_dict(d: Mapping[str, Any]) -> SDE:
    """The SDE written by :meth:`SDE.to_dict`."""
    d = dict(d)
    return make_sde(str(d.pop("sde", "")), **d)
