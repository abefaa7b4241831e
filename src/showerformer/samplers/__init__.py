"""Samplers: free functions ``sample_x(model, x, schedule, *, cond=None, callback=None, disable=None)``.

:mod:`~showerformer.samplers.ode` integrates a velocity field (flow matching, the
probability-flow ODE of a diffusion model); :mod:`~showerformer.samplers.sde` runs the
reverse-time SDE of a score model (predictor-corrector).
"""

from showerformer.samplers.ode import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    SAMPLERS,
    get_sampler,
    linear_schedule,
    sample_adaptive,
    sample_euler,
    sample_heun,
    sample_midpoint,
)
from showerformer.samplers.sde import langevin_step_size, sample_euler_maruyama, sample_pc

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "SAMPLERS",
    "get_sampler",
    "langevin_step_size",
    "linear_schedule",
    "sample_adaptive",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_midpoint",
    "sample_pc",
]
