"""Fixed-step ODE samplers (Euler, midpoint, Heun) that integrate a velocity field from t = 0 to 1.

Every sampler has one signature, ``sample_x(model, x, schedule, *, cond=None, callback=None,
disable=None)``: ``model(x, t, cond)`` returns the velocity ``dx/dt`` for a batch ``x`` at times
``t`` (a ``(B,)`` tensor filled with the current time), ``x`` is the initial state (noise at
t = 0 for a flow-matching model), ``schedule`` the times ``t_0, ..., t_n`` (from
:func:`linear_schedule` for equal steps, but any monotone grid works: the probability-flow ODE
of a diffusion model runs from t = 1 down to a small ``eps``, see
:func:`showerformer.methods.diffusion.diffusion_schedule`). The samplers run under
``torch.no_grad()`` and return the state at ``t_n``.

Costs and orders (global error on a smooth field): Euler one evaluation per step, first order;
midpoint and Heun two evaluations per step, second order. Midpoint (16 steps) is the default of
the models in this library. ``adaptive`` hands the whole batch, as one system, to SciPy's
``solve_ivp`` (Dormand-Prince RK45 with error control, as Song et al. sample the
probability-flow ODE); it uses only the first and last time of the schedule, and its number of
evaluations depends on the tolerances.

References:
    Hairer, Norsett & Wanner, "Solving Ordinary Differential Equations I" (explicit Runge-Kutta
    methods); Dormand & Prince, J. Comput. Appl. Math. 6 (1980) (RK45); Song et al.,
    arXiv:2011.13456 (the probability-flow ODE with an adaptive solver); Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
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
    "sample_adaptive",
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


@torch.no_grad()
def sample_adaptive(
    model: Velocity,
    x: Tensor,
    schedule: Tensor,
    *,
    cond: Any = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
) -> Tensor:
    """Adaptive step size: SciPy's ``solve_ivp`` from ``schedule[0]`` to ``schedule[-1]``.

    The batch is one ODE system in float64 on the CPU (every evaluation moves the state to the
    model's device and dtype and back), so all showers share the step sizes; the evaluations
    needed follow from ``rtol`` and ``atol`` (Song et al. use 1e-5 for both).

    Arguments:
        model, x, schedule, cond: as in :func:`sample_euler` (only the ends of the schedule).
        callback: called once at the end with ``{"i": 0, "t", "t_next", "x", "velocity": None,
            "nfe"}`` (the number of evaluations of ``model``).
        disable: unused (no progress bar: the number of steps is not known in advance).
        rtol, atol: relative and absolute tolerances.
        method: a ``solve_ivp`` method (``"RK45"``, ``"RK23"``, ``"DOP853"``).

    Returns:
        The state at ``schedule[-1]``, same shape as ``x``.

    Raises:
        InputError: non-positive tolerances; RuntimeError when the solver fails.
    """
    from scipy.integrate import solve_ivp

    _check_schedule(schedule)
    if not (rtol > 0 and atol > 0):
        raise InputError(f"rtol={rtol}, atol={atol}", key="rtol", expected="positive tolerances")
    shape, device, dtype = x.shape, x.device, x.dtype
    t0, t1 = float(schedule[0]), float(schedule[-1])

    def fun(t: float, y: Any) -> Any:
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        tt = torch.full((shape[0],), t, device=device, dtype=dtype)
        return model(xt, tt, cond).double().cpu().numpy().reshape(-1)

    y0 = x.detach().double().cpu().numpy().reshape(-1)
    sol = solve_ivp(fun, (t0, t1), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"adaptive ODE solver ({method}) failed: {sol.message}")
    out = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(device=device, dtype=dtype)
    if callback is not None:
        callback({"i": 0, "t": schedule[0], "t_next": schedule[-1], "x": out, "velocity": None,
                  "nfe": int(sol.nfev)})
    return out


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "midpoint": sample_midpoint,
    "heun": sample_heun,
    "adaptive": sample_adaptive,
}
"""The fixed-step samplers by name."""


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler called ``name`` (``"euler"``, ``"midpoint"``, ``"heun"`` or ``"adaptive"``).

    Raises:
        InputError: for an unknown name, listing the known ones.
    """
    try:
        return SAMPLERS[name]
    except KeyError:
        raise InputError(f"unknown sampler {name!r}", key="sampler",
                         expected="one of " + ", ".join(SAMPLERS)) from None
