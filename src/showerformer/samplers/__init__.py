"""Samplers: free functions ``sample_x(model, x, schedule, *, cond=None, callback=None, disable=None)``."""

from showerformer.samplers.ode import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    SAMPLERS,
    get_sampler,
    linear_schedule,
    sample_euler,
    sample_heun,
    sample_midpoint,
)

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
