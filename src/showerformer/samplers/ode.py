"""Fixed-step ODE samplers (Euler, midpoint, Heun) that integrate a velocity field from t = 0 to 1.

Every sampler has one signature, ``sample_x(model, x, schedule, *, cond=None, callback=None,
disable=None)``: ``model(x, t, cond)`` returns the velocity ``dx/dt`` for a batch ``x`` at times
``t`` (a ``(B,)`` tensor filled with the current time), ``x`` is the initial state (noise at
t = 0 for a flow-matching model), ``schedule`` the increasing times ``t_0 < ... < t_n`` (from
:func:`linear_schedule` for equal steps, but any grid works). The samplers run under
``torch.no_grad()`` and return the state at ``t_n``.

Costs and orders (global error on a smooth field): Euler one evaluation per step, first order;
midpoint and Heun two evaluations per step, second order. Midpoint (16 steps) is the default of
the models in this library.

References:
    Hairer, Norsett & Wanner, "Solving Ordinary Differential Equations I" (explicit Runge-Kutta
    methods); Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    arXiv:2206.00364 (Heun sampler); Crowson, k-diffusion ``sampling.py`` (the sampler signature).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from showerformer.errors import InputError

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "SAMPLERS",
    "get_sampler",
    "linear_schedule",
    "sample_euler",
    "sample_heun",
    "sample_midpoint",
]

DEFAULT_SAMPLER = "midpoint"
DEFAULT_STEPS = 16

Velocity = Callable[[Tensor, Tensor, Any], Tensor]  # v(x, t, cond) -> dx/dt
Callback = Callable[[dict[str, Any]], None]


def linear_schedule(
    steps: int = DEFAULT_STEPS,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Equally spaced times from 0 to 1.

    Arguments:
        steps: number of integration steps (at least 1).
        device, dtype: of the result.

    Returns:
        ``(steps + 1,)`` times ``0, 1/steps, ..., 1``.
    """
    if int(steps) < 1:
        raise InputError(f"steps={steps}", key="steps", expected="at least one step")
    return torch.linspace(0.0, 1.0, int(steps) + 1, device=device, dtype=dtype)


def _check_schedule(schedule: Tensor) -> None:
    if schedule.ndim != 1 or schedule.numel() < 2:
        raise InputError(f"schedule of shape {tuple(schedule.shape)}", key="schedule",
                         expected="a 1D tensor of at least two times")


def _times(x: Tensor, t: Tensor) -> Tensor:
    return t.to(x.dtype).expand(x.shape[0])  # (B,)


def _steps(n: int, disable: bool | None) -> Iterable[int]:
    """Step indices, with a progress bar only when ``disable`` is explicitly False."""
    if disable is False:
        from rich.progress import track

        return track(range(n), description="sampling", transient=True)
    return range(n)


def _run(
    step: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    schedule: Tensor,
    callback: Callback | None,
    disable: bool | None,
) -> Tensor:
    _check_schedule(schedule)
    ts = schedule.to(x.device)
    for i in _steps(ts.numel() - 1, disable):
        t, t_next = ts[i], ts[i + 1]
        x, v = step(x, t, t_next)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": t_next, "x": x, "velocity": v})
    return x


@torch.no_grad()
def sample_euler(
    model: Velocity,
    x: Tensor,
    schedule: Tensor,
    *,
    cond: Any = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Explicit Euler: ``x <- x + h v(x, t)`` (first order, one evaluation per step).

    Arguments:
        model: velocity field ``model(x, t, cond)``, ``t`` of shape (B,).
        x: initial state at ``schedule[0]``.  # (B, ...)
        schedule: increasing times.  # (n + 1,)
        cond: passed to every call of ``model``.
        callback: called after every step with ``{"i", "t", "t_next", "x", "velocity"}``
            (``x`` is the new state, ``velocity`` the first evaluation of the step).
        disable: False shows a progress bar; None or True shows none.

    Returns:
        The state at ``schedule[-1]``, same shape as ``x``.
    """

    def step(x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        v = model(x, _times(x, t), cond)
        return x + (t_next - t).to(x.dtype) * v, v

    return _run(step, x, schedule, callback, disable)


@torch.no_grad()
def sample_midpoint(
    model: Velocity,
    x: Tensor,
    schedule: Tensor,
    *,
    cond: Any = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Explicit midpoint: ``x <- x + h v(x + h/2 v(x, t), t + h/2)`` (second order, two
    evaluations per step). Arguments and result as in :func:`sample_euler`."""

    def step(x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        h = (t_next - t).to(x.dtype)
        v = model(x, _times(x, t), cond)
        v_mid = model(x + 0.5 * h * v, _times(x, t + 0.5 * (t_next - t)), cond)
        return x + h * v_mid, v

    return _run(step, x, schedule, callback, disable)


@torch.no_grad()
def sample_heun(
    model: Velocity,
    x: Tensor,
    schedule: Tensor,
    *,
    cond: Any = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Heun (explicit trapezoid): an Euler predictor ``x' = x + h v(x, t)``, then
    ``x <- x + h/2 (v(x, t) + v(x', t + h))`` (second order, two evaluations per step).
    Arguments and result as in :func:`sample_euler`."""

    def step(x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        h = (t_next - t).to(x.dtype)
        v = model(x, _times(x, t), cond)
        v_next = model(x + h * v, _times(x, t_next), cond)
        return x + 0.5 * h * (v + v_next), v

    return _run(step, x, schedule, callback, disable)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "midpoint": sample_midpoint,
    "heun": sample_heun,
}
"""The fixed-step samplers by name."""


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler called ``name`` (``"euler"``, ``"midpoint"`` or ``"heun"``).

    Raises:
        InputError: for an unknown name, listing the known ones.
    """
    try:
        return SAMPLERS[name]
    except KeyError:
        raise InputError(f"unknown sampler {name!r}", key="sampler",
                         expected="one of " + ", ".join(SAMPLERS)) from None
