"""Score-based diffusion on a Gaussian toy whose score is known in closed form: the SDEs' marginals,
the denoising score-matching loss, the predictor-corrector and probability-flow samplers."""

from __future__ import annotations

import math

import pytest
import torch

from showerformer.errors import InputError
from showerformer.methods.diffusion import (
    SDES,
    VESDE,
    correlation_loss,
    denoising_score_matching_loss,
    diffusion_schedule,
    make_sde,
    masked_covariance,
    probability_flow,
    sde_from_dict,
    tweedie_denoise,
)
from showerformer.samplers import get_sampler, sample_euler_maruyama, sample_pc

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
STD = 0.5
N = 8_000
# tolerances: the statistical error of the mean of 8,000 draws of std 0.5 is 0.0056 and of the
# std 0.004; the rest is the discretisation error of the sampler
MEAN_TOL, STD_TOL = 0.03, 0.05
# (VE: sigma_max = 50 is far above the data scale, so the prior N(0, 50^2) matches p_1; with
# sigma_max = 10 the probability flow keeps a 5 % bias of the mean, MU * STD / sigma_max)


def sdes() -> list:
    return [VESDE(sigma_min=0.01, sigma_max=50.0), make_sde("vp"), make_sde("subvp")]


def exact_score(sde):
    """The score of p_t when the data are N(MU, STD^2 I): p_t = N(a MU, (a^2 STD^2 + sigma^2) I)."""

    def score(x, t, cond=None):
        a, s = sde.marginal(t)
        a, s = a.to(x.dtype)[:, None], s.to(x.dtype)[:, None]
        return -(x - a * MU.to(x.dtype)) / (a * a * STD**2 + s * s)

    return score


def check_gaussian(x: torch.Tensor, what: str) -> None:
    mean, std = x.mean(dim=0), x.std(dim=0)
    assert torch.all((mean - MU).abs() < MEAN_TOL), f"{what}: mean {mean.tolist()}"
    assert torch.all((std / STD - 1).abs() < STD_TOL), f"{what}: std {std.tolist()}"


def prior(sde, n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sde.prior_sample((n, 2), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", list(SDES))
def test_forward_sde_matches_its_marginal(name: str) -> None:
    """Euler-Maruyama of dx = f dt + g dw from the data reproduces the kernel's mean and std,
    so drift, diffusion and marginal of every SDE agree."""
    sde = VESDE(0.01, 50.0) if name == "ve" else make_sde(name)
    g = torch.Generator().manual_seed(1)
    x = MU + STD * torch.randn(N, 2, generator=g, dtype=torch.float64)
    steps = 2000
    for k in range(steps):
        t = torch.full((N,), k / steps, dtype=torch.float64)
        f, gt = sde.drift_diffusion(x, t)
        x = x + f / steps + gt.to(x.dtype)[:, None] * math.sqrt(1 / steps) * torch.randn(
            x.shape, generator=g, dtype=x.dtype)
    a, s = sde.marginal(torch.ones(1))
    want_mean, want_std = float(a) * MU, math.sqrt(float(a) ** 2 * STD**2 + float(s) ** 2)
    assert torch.allclose(x.mean(dim=0), want_mean, atol=0.03 * max(1.0, want_std))
    assert torch.allclose(x.std(dim=0), torch.full((2,), want_std, dtype=x.dtype), rtol=0.03)


def test_prior_log_density_and_dict_round_trip() -> None:
    for sde in sdes():
        z = prior(sde, 5)
        want = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z.float()).sum(dim=1)
        assert torch.allclose(sde.prior_logp(z), want, atol=1e-4)
        back = sde_from_dict(sde.to_dict())
        assert type(back) is type(sde) and back.to_dict() == sde.to_dict()
        mask = torch.tensor([[True, False]] * 5)
        assert torch.allclose(sde.prior_logp(z, mask), torch.distributions.Normal(
            0.0, sde.prior_std).log_prob(z[:, 0].float()), atol=1e-4)
    a, s = make_sde("subvp").marginal(torch.tensor([0.3]))
    _, s_vp = make_sde("vp").marginal(torch.tensor([0.3]))
    assert float(s) < float(s_vp) and float(a) < 1  # sub-VP: less variance than VP
    with pytest.raises(InputError, match="sde"):
        make_sde("ddim")
    with pytest.raises(InputError, match="sigma_min"):
        VESDE(sigma_min=5.0, sigma_max=1.0)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_exact_score_minimises_the_denoising_loss(weighting: str) -> None:
    for sde in sdes():
        x0 = MU.float() + STD * torch.randn(4096, 2, generator=torch.Generator().manual_seed(2))
        exact = exact_score(sde)

        def loss(scale: float, exact=exact, sde=sde, x0=x0) -> float:
            g = torch.Generator().manual_seed(3)  # the same times and noise for every scale
            return float(denoising_score_matching_loss(
                lambda x, t, c: scale * exact(x, t), sde, x0, weighting=weighting, generator=g))

        best = loss(1.0)
        assert best < loss(0.8) and best < loss(1.25), (sde.name, weighting)


def test_denoising_loss_ignores_padding() -> None:
    sde = make_sde("vp")
    x0 = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    seen = {}

    def score(x, t, c):
        seen["x"] = x
        return -x

    g = torch.Generator().manual_seed(0)
    loss, parts = denoising_score_matching_loss(score, sde, x0, mask=mask, generator=g,
                                                return_parts=True)
    assert torch.all(parts["noise"][~mask] == 0) and torch.isfinite(loss)
    x1 = x0.clone()
    x1[~mask] = 1e6  # padding values must not matter
    g = torch.Generator().manual_seed(0)
    loss1 = denoising_score_matching_loss(lambda x, t, c: -x * mask[..., None], sde, x1,
                                          mask=mask, generator=g)
    g = torch.Generator().manual_seed(0)
    loss0 = denoising_score_matching_loss(lambda x, t, c: -x * mask[..., None], sde, x0,
                                          mask=mask, generator=g)
    assert torch.allclose(loss0, loss1)
    with pytest.raises(InputError, match="weighting"):
        denoising_score_matching_loss(score, sde, x0, weighting="snr")


@pytest.mark.parametrize("sde", sdes(), ids=lambda s: s.name)
def test_pc_sampler_recovers_the_gaussian(sde) -> None:
    g = torch.Generator().manual_seed(4)
    x = sample_pc(exact_score(sde), prior(sde), diffusion_schedule(500, sde.eps,
                                                                     dtype=torch.float64),
                  sde=sde, n_corrector=1, snr=0.16, generator=g)
    check_gaussian(x, f"PC {sde.name}")


@pytest.mark.parametrize("sde", sdes(), ids=lambda s: s.name)
def test_euler_maruyama_recovers_the_gaussian(sde) -> None:
    g = torch.Generator().manual_seed(5)
    x = sample_euler_maruyama(exact_score(sde), prior(sde),
                              diffusion_schedule(500, sde.eps, dtype=torch.float64), sde=sde,
                              generator=g, snr=0.3)
    check_gaussian(x, f"Euler-Maruyama {sde.name}")


@pytest.mark.parametrize("sampler,steps", [("midpoint", 100), ("heun", 100), ("adaptive", 1)])
@pytest.mark.parametrize("sde", sdes(), ids=lambda s: s.name)
def test_probability_flow_recovers_the_gaussian_deterministically(sde, sampler: str,
                                                                  steps: int) -> None:
    velocity = probability_flow(exact_score(sde), sde)
    schedule = diffusion_schedule(steps, sde.eps, dtype=torch.float64)
    z = prior(sde, N, seed=6)
    run = get_sampler(sampler)
    x = run(velocity, z, schedule)
    check_gaussian(x, f"probability flow {sde.name} {sampler}")
    again = run(velocity, z.clone(), schedule)
    assert torch.equal(x, again)  # deterministic given its noise
    other = run(velocity, prior(sde, N, seed=7), schedule)
    assert not torch.allclose(x, other)


def test_adaptive_solver_reports_its_evaluations() -> None:
    sde = make_sde("vp")
    calls = []
    score = exact_score(sde)

    def counted(x, t, c):
        calls.append(1)
        return score(x, t)

    seen = {}
    get_sampler("adaptive")(probability_flow(counted, sde), prior(sde, 16),
                            diffusion_schedule(1, sde.eps, dtype=torch.float64),
                            callback=seen.update)
    assert seen["nfe"] == len(calls) > 6


def test_pc_sampler_keeps_padding_at_zero_and_is_reproducible() -> None:
    sde = make_sde("vp")
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)

    def score(x, t, c):  # a masked network output
        return -x * mask[..., None]

    x0 = sde.prior_sample((2, 3, 2), generator=torch.Generator().manual_seed(0)) * mask[..., None]
    sched = diffusion_schedule(20, sde.eps)
    a = sample_pc(score, x0, sched, sde=sde, mask=mask, generator=torch.Generator().manual_seed(1))
    b = sample_pc(score, x0, sched, sde=sde, mask=mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.all(a[~mask] == 0) and torch.all(a[mask] != 0)
    with pytest.raises(InputError, match="n_corrector"):
        sample_pc(score, x0, sched, sde=sde, n_corrector=-1)


def test_tweedie_denoise_is_the_posterior_mean() -> None:
    sde = VESDE(0.01, 10.0)
    t = torch.full((4,), 0.5)
    x = torch.randn(4, 2)
    a, s = sde.marginal(t)
    var = a[:, None] ** 2 * STD**2 + s[:, None] ** 2
    # posterior mean of x0 given x_t for a Gaussian prior: MU + STD^2 a (x - a MU) / var
    want = MU.float() + STD**2 * a[:, None] * (x - a[:, None] * MU.float()) / var
    got = tweedie_denoise(exact_score(sde), sde, x, t)
    assert torch.allclose(got, want, atol=1e-5)


def test_correlation_loss() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 400, generator=g)
    y = 0.5 * x + 0.1 * torch.randn(2, 400, generator=g)
    mask = torch.ones(2, 400, dtype=torch.bool)
    mask[1, 200:] = False
    cov = masked_covariance(x, y, mask)
    want0 = ((x[0] - x[0].mean()) * (y[0] - y[0].mean())).mean()
    want1 = ((x[1, :200] - x[1, :200].mean()) * (y[1, :200] - y[1, :200].mean())).mean()
    assert torch.allclose(cov, torch.stack([want0, want1]), atol=1e-6)
    pts = torch.stack([x, y, torch.zeros_like(x)], dim=-1)  # (2, 400, 3)
    assert float(correlation_loss(pts, pts, (0, 1), mask)) == 0.0  # matches the data
    assert float(correlation_loss(pts, pts, (0, 1), mask, target="zero")) == pytest.approx(
        float(cov.square().mean()), rel=1e-5)
    est = pts.clone().requires_grad_(True)
    correlation_loss(est, pts * 0.5, (0, 1), mask).backward()
    assert est.grad is not None and est.grad[..., 2].abs().sum() == 0
    with pytest.raises(InputError, match=r"correlation\.features"):
        correlation_loss(pts, pts, (1, 1), mask)
