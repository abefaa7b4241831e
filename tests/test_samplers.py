"""Tests of the fixed-step ODE samplers on velocity fields whose solution is known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from showerformer.errors import InputError
from showerformer.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    SAMPLERS,
    get_sampler,
    linear_schedule,
    sample_euler,
    sample_heun,
    sample_midpoint,
)

ALL = [sample_euler, sample_midpoint, sample_heun]
X0 = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], dtype=torch.float64)  # (B=2, 3)


def solve(sampler, field, steps: int, x0: torch.Tensor = X0) -> torch.Tensor:
    return sampler(field, x0, linear_schedule(steps, dtype=torch.float64))


def order(sampler, field, exact: torch.Tensor, steps: int = 16) -> float:
    """Observed convergence order: log2 of the error ratio when the step is halved."""
    e1 = (solve(sampler, field, steps) - exact).abs().max().item()
    e2 = (solve(sampler, field, 2 * steps) - exact).abs().max().item()
    return math.log2(e1 / e2)


@pytest.mark.parametrize("sampler", ALL)
def test_constant_velocity_is_exact_on_any_schedule(sampler) -> None:
    a = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    field = lambda x, t, c: a.expand_as(x)  # noqa: E731
    for schedule in (linear_schedule(1, dtype=torch.float64), linear_schedule(7, dtype=torch.float64),
                     torch.tensor([0.0, 0.05, 0.5, 0.51, 1.0], dtype=torch.float64)):
        got = sampler(field, X0, schedule)
        torch.testing.assert_close(got, X0 + a, rtol=0, atol=1e-14)


def test_velocity_linear_in_time() -> None:
    # v = t: x(1) = x0 + 1/2. Midpoint and Heun integrate polynomials of degree 1 in t exactly;
    # Euler (left Riemann sum) gives x0 + (1 - h) / 2.
    field = lambda x, t, c: t[:, None].expand_as(x)  # noqa: E731
    for steps in (1, 3, 10):
        torch.testing.assert_close(solve(sample_midpoint, field, steps), X0 + 0.5)
        torch.testing.assert_close(solve(sample_heun, field, steps), X0 + 0.5)
        h = 1.0 / steps
        torch.testing.assert_close(solve(sample_euler, field, steps), X0 + (1 - h) / 2)


def test_exponential_growth_discrete_solutions() -> None:
    # v = x: Euler multiplies by (1 + h) per step, midpoint and Heun by 1 + h + h^2 / 2
    field = lambda x, t, c: x  # noqa: E731
    n = 8
    h = 1.0 / n
    torch.testing.assert_close(solve(sample_euler, field, n), X0 * (1 + h) ** n)
    for sampler in (sample_midpoint, sample_heun):
        torch.testing.assert_close(solve(sampler, field, n), X0 * (1 + h + h * h / 2) ** n)


@pytest.mark.parametrize(("sampler", "expected"), [(sample_euler, 1.0), (sample_midpoint, 2.0),
                                                    (sample_heun, 2.0)])
def test_convergence_orders(sampler, expected: float) -> None:
    # v = x: x(1) = e x0
    assert abs(order(sampler, lambda x, t, c: x, math.e * X0) - expected) < 0.1
    # v = -2 t x: x(1) = exp(-1) x0 (time-dependent, so midpoint and Heun differ)
    field = lambda x, t, c: -2.0 * t[:, None] * x  # noqa: E731
    assert abs(order(sampler, field, math.exp(-1.0) * X0) - expected) < 0.1


def test_midpoint_and_heun_differ_on_time_dependent_fields() -> None:
    field = lambda x, t, c: -2.0 * t[:, None] * x  # noqa: E731
    assert not torch.allclose(solve(sample_midpoint, field, 4), solve(sample_heun, field, 4))


@pytest.mark.parametrize("sampler", ALL)
def test_cond_callback_and_time_argument(sampler) -> None:
    seen_t: list[torch.Tensor] = []

    def field(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        seen_t.append(t)
        return cond["scale"] * torch.ones_like(x)

    records: list[dict] = []
    out = sampler(field, X0, linear_schedule(5, dtype=torch.float64), cond={"scale": 2.0},
                  callback=records.append)
    torch.testing.assert_close(out, X0 + 2.0)
    assert [r["i"] for r in records] == list(range(5))
    assert set(records[0]) == {"i", "t", "t_next", "x", "velocity"}
    torch.testing.assert_close(records[-1]["x"], out)
    evals = 5 if sampler is sample_euler else 10
    assert len(seen_t) == evals
    assert min(float(t.min()) for t in seen_t) == 0.0


def test_samplers_do_not_track_gradients() -> None:
    w = torch.tensor(2.0, requires_grad=True)
    out = sample_midpoint(lambda x, t, c: w * x, torch.ones(2, 3), linear_schedule(4))
    assert not out.requires_grad


def test_registry_schedule_and_errors() -> None:
    assert set(SAMPLERS) == {"euler", "midpoint", "heun", "adaptive"}
    assert get_sampler(DEFAULT_SAMPLER) is sample_midpoint and DEFAULT_STEPS == 16
    s = linear_schedule()
    assert s.shape == (17,) and s[0] == 0 and s[-1] == 1
    with pytest.raises(InputError, match="sampler"):
        get_sampler("rk45")
    with pytest.raises(InputError, match="steps"):
        linear_schedule(0)
    with pytest.raises(InputError, match="schedule"):
        sample_euler(lambda x, t, c: x, X0, torch.tensor([0.0]))


def test_adaptive_sampler_integrates_a_linear_field_to_tolerance() -> None:
    """dx/dt = -x from t = 0 to 1: x(1) = x(0) / e, within the solver's tolerance; the same
    start gives the same result."""
    from showerformer.samplers import sample_adaptive

    x0 = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = {}
    out = sample_adaptive(lambda x, t, c: -x, x0, linear_schedule(1, dtype=torch.float64),
                          callback=seen.update, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out, x0 * math.exp(-1.0), rtol=1e-6, atol=1e-8)
    assert seen["nfe"] > 6 and out.shape == x0.shape
    assert torch.equal(out, sample_adaptive(lambda x, t, c: -x, x0.clone(),
                                            linear_schedule(1, dtype=torch.float64),
                                            rtol=1e-8, atol=1e-10))
    with pytest.raises(InputError, match="rtol"):
        sample_adaptive(lambda x, t, c: -x, x0, linear_schedule(1), rtol=0.0)
