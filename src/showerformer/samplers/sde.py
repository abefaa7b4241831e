"""Reverse-time SDE samplers: Euler-Maruyama predictor with an optional Langevin corrector (PC).

The signature is that of the ODE samplers, ``sample_x(model, x, schedule, *, cond=None,
callback=None, disable=None, ...)``, with ``model`` the score ``s(x, t, cond)`` and extra
keyword arguments: the forward ``sde``
(:class:`~showerformer.methods.diffusion.SDE`), the corrector, a padding ``mask`` and the
``generator`` of the noise. ``x`` is a draw from the prior at ``schedule[0] = 1`` and
``schedule`` decreases to ``eps`` (:func:`~showerformer.methods.diffusion.diffusion_schedule`).

One step from ``t`` to ``t' < t`` (seed Algorithms 1 and 2, in the order of Song et al.):

1. corrector, ``M`` times at ``t``: ``x <- x + e s(x, t) + sqrt(2 e) z`` with the step size of
   the signal-to-noise ratio ``r``, ``e = 2 r^2 |z|^2 / |s|^2`` (seed eq. 4.25; the norms of
   the showers, over their real points, averaged over the batch);
2. predictor (Euler-Maruyama of the reverse SDE): ``x <- x - [f(x, t) - g(t)^2 s(x, t)] dt +
   g(t) sqrt(dt) z`` with ``dt = t - t'``.

With ``denoise`` the last predictor step adds no noise (its mean is returned, Song et al.'s
noise removal). Network evaluations: ``N (M + 1)`` for ``N`` steps.

References:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
    arXiv:2011.13456 (Algorithms 2-4, predictor-corrector sampling); Hsu, seed document 003
    (Algorithms 1-2, eq. 4.25); Kloeden & Platen, "Numerical Solution of Stochastic
    Differential Equations" (Euler-Maruyama).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from showerformer.errors import InputError
from showerformer.samplers.ode import _check_schedule, _steps

if TYPE_CHECKING:
    from showerformer.methods.diffusion import SDE

__all__ = ["langevin_step_size", "sample_euler_maruyama", "sample_pc"]

Score = Callable[[Tensor, Tensor, Any], Tensor]
Callback = Callable[[dict[str, Any]], None]


def _noise(x: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if mask is not None:
        z = z * mask.reshape(*mask.shape, *([1] * (x.ndim - mask.ndim))).to(x.dtype)
    return z


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)


def langevin_step_size(score: Tensor, noise: Tensor, snr: float) -> Tensor:
    """``e = 2 (r |z| / |s|)^2`` (seed eq. 4.25), one step for the batch: the norms are taken
    per sample (over all but the first dimension) and averaged over the batch, as Song et al.
    do; a per-sample ratio would explode where a low-dimensional sample sits near a mode
    (``|s| -> 0``). A zero score gives a zero step.  # ()"""
    s_norm = score.float().reshape(score.shape[0], -1).norm(dim=1).mean()
    z_norm = noise.float().reshape(noise.shape[0], -1).norm(dim=1).mean()
    if not s_norm > 0:
        return torch.zeros((), device=score.device)
    return 2.0 * (snr * z_norm / s_norm).square()


@torch.no_grad()
def sample_pc(
    model: Score,
    x: Tensor,
    schedule: Tensor,
    *,
    cond: Any = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    sde: SDE,
    n_corrector: int = 1,
    snr: float = 0.16,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    denoise: bool = True,
) -> Tensor:
    """Predictor-corrector sampling of the reverse-time SDE.

    Arguments:
        model: the score ``s(x, t, cond)``, ``t`` of shape (B,).
        x: a draw from the prior (e.g. ``sde.prior_sample``), zero on padding.  # (B, ...)
        schedule: decreasing times from 1 to ``eps``.  # (N + 1,)
        cond: passed to every call of ``model``.
        callback: called after every step with ``{"i", "t", "t_next", "x", "score"}``.
        disable: False shows a progress bar.
        sde: the forward SDE the score was trained for.
        n_corrector: Langevin corrector steps ``M`` per step (0: Euler-Maruyama alone).
        snr: the corrector's signal-to-noise ratio ``r``.
        mask: True for real points; the noise of padding entries is zero.  # (B, P) bool
        generator: source of the noise.
        denoise: return the last predictor step's mean (no noise in the last step).

    Returns:
        The sample at ``schedule[-1]``, same shape as ``x``.
    """
    _check_schedule(schedule)
    if int(n_corrector) < 0:
        raise InputError(f"n_corrector={n_corrector}", key="n_corrector",
                         expected="a non-negative number of corrector steps")
    if not snr > 0:
        raise InputError(f"snr={snr}", key="snr", expected="a positive signal-to-noise ratio")
    ts = schedule.to(x.device)
    n = ts.numel() - 1
    for i in _steps(n, disable):
        t, t_next = ts[i], ts[i + 1]
        tb = t.to(x.dtype).expand(x.shape[0])  # (B,)
        for _ in range(int(n_corrector)):
            s = model(x, tb, cond)
            z = _noise(x, mask, generator)
            e = langevin_step_size(s, z, snr).to(x.dtype)
            x = x + e * s + (2.0 * e).sqrt() * z
        dt = (t - t_next).to(x.dtype)  # > 0: time runs backwards
        drift, g = sde.reverse_drift(model, x, tb, cond)
        x_mean = x - drift * dt
        if denoise and i == n - 1:
            x = x_mean
        else:
            x = x_mean + _per_sample(g, x) * dt.sqrt() * _noise(x, mask, generator)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": t_next, "x": x})
    return x


def sample_euler_maruyama(
    model: Score,
    x: Tensor,
    schedule: Tensor,
    *,
    cond: Any = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    sde: SDE,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    denoise: bool = True,
    **_: Any,
) -> Tensor:
    """The reverse-SDE predictor alone (:func:`sample_pc` with ``n_corrector=0``; corrector
    options are accepted and ignored)."""
    return sample_pc(model, x, schedule, cond=cond, callback=callback, disable=disable, sde=sde,
                     n_corrector=0, mask=mask, generator=generator, denoise=denoise)
