"""Tests of conditional flow matching: the linear path, time sampling, OT pairing, masked loss."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from showerformer.errors import InputError
from showerformer.methods.flow_matching import (
    PathSample,
    flow_matching_loss,
    linear_path,
    masked_mse,
    ot_pair,
    ot_pairing_indices,
    sample_path,
    sample_time,
)


def clouds(b: int = 4, p: int = 30, f: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(b, p, f, generator=g) * 2.0 + 1.0
    x0 = torch.randn(b, p, f, generator=g)
    mask = torch.rand(b, p, generator=g) < 0.8
    mask[0] = True
    return x0, x1, mask


def test_linear_path_endpoints_and_velocity() -> None:
    x0, x1, _ = clouds()
    t = torch.tensor([0.0, 1.0, 0.25, 0.7])
    path = linear_path(x0, x1, t)
    assert isinstance(path, PathSample)
    torch.testing.assert_close(path.x_t[0], x0[0])
    torch.testing.assert_close(path.x_t[1], x1[1])
    torch.testing.assert_close(path.x_t[2], 0.75 * x0[2] + 0.25 * x1[2])
    torch.testing.assert_close(path.velocity, x1 - x0)
    # the target is the time derivative of the path
    eps = 1e-3
    ahead = linear_path(x0, x1, t + eps)
    torch.testing.assert_close((ahead.x_t - path.x_t) / eps, path.velocity, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="shape"):
        linear_path(x0, x1[:, :5], t)


def test_sample_time_distributions_and_determinism() -> None:
    u = sample_time(20_000, generator=torch.Generator().manual_seed(0))
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean().item() - 0.5) < 0.01
    ln = sample_time(20_000, distribution="logit-normal", generator=torch.Generator().manual_seed(0))
    assert ln.min() > 0 and ln.max() < 1 and abs(ln.median().item() - 0.5) < 0.01
    assert ln.std() < u.std()  # concentrated in the middle
    again = sample_time(20_000, distribution="logit-normal", generator=torch.Generator().manual_seed(0))
    assert torch.equal(ln, again)
    with pytest.raises(InputError, match="time_distribution"):
        sample_time(3, distribution="beta")


def _pair_cost(x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor) -> float:
    return ((x0 - x1).square().sum(-1) * mask).sum().item() / mask.sum().item()


def test_ot_pairing_is_a_per_shower_permutation_and_reduces_cost() -> None:
    x0, x1, mask = clouds()
    idx = ot_pairing_indices(x0, x1, mask)
    assert idx.shape == mask.shape and idx.dtype == torch.int64
    for b in range(len(idx)):
        real = torch.nonzero(mask[b]).flatten()
        assert sorted(idx[b, real].tolist()) == real.tolist()  # permutation of the real points
        pad = torch.nonzero(~mask[b]).flatten()
        assert torch.equal(idx[b, pad], pad)  # padding stays in place
    paired = ot_pair(x0, x1, mask)
    # same noise points, new order
    for b in range(len(idx)):
        a = paired[b][mask[b]].sort(dim=0).values
        assert torch.equal(a, x0[b][mask[b]].sort(dim=0).values)
    before, after = _pair_cost(x0, x1, mask), _pair_cost(paired, x1, mask)
    assert after < 0.6 * before


def test_ot_pairing_is_optimal_on_small_sets() -> None:
    x0, x1, _ = clouds(b=3, p=6, f=2, seed=3)
    idx = ot_pairing_indices(x0, x1)

    def cost(b: int, perm: list[int] | tuple[int, ...]) -> float:
        return (x1[b] - x0[b, list(perm)]).square().sum().item()

    for b in range(3):
        best = min(cost(b, perm) for perm in itertools.permutations(range(6)))
        assert cost(b, idx[b].tolist()) == pytest.approx(best, rel=1e-9)


def test_ot_pairing_within_groups() -> None:
    x0, x1, mask = clouds(seed=5)
    groups = torch.randint(0, 4, mask.shape, generator=torch.Generator().manual_seed(1))
    idx = ot_pairing_indices(x0, x1, mask, groups=groups)
    assert torch.equal(groups.gather(1, idx)[mask], groups[mask])  # pairs stay inside a group
    assert _pair_cost(ot_pair(x0, x1, mask, groups=groups), x1, mask) < _pair_cost(x0, x1, mask)


def test_ot_backends_agree() -> None:
    pytest.importorskip("ot", reason="POT is not installed")
    x0, x1, mask = clouds(p=20)
    a = ot_pair(x0, x1, mask, backend="scipy")
    b = ot_pair(x0, x1, mask, backend="pot")
    assert _pair_cost(a, x1, mask) == pytest.approx(_pair_cost(b, x1, mask), rel=1e-9)


def test_unknown_ot_backend() -> None:
    x0, x1, mask = clouds(p=5)
    with pytest.raises(InputError, match="ot_backend"):
        ot_pairing_indices(x0, x1, mask, backend="sinkhorn")


def test_sample_path_masks_noise_and_is_deterministic() -> None:
    _, x1, mask = clouds()
    path = sample_path(x1, mask=mask, ot=True, generator=torch.Generator().manual_seed(0))
    assert (path.x0[~mask] == 0).all() and path.t.shape == (4,)
    again = sample_path(x1, mask=mask, ot=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(path.x_t, again.x_t) and torch.equal(path.t, again.t)


def test_masked_mse_ignores_padding() -> None:
    _, x1, mask = clouds()
    pred = x1 + 1.0
    assert masked_mse(pred, x1, mask).item() == pytest.approx(1.0)
    garbage = torch.where(mask[..., None], pred, torch.full_like(pred, 1e6))
    assert masked_mse(garbage, x1, mask).item() == pytest.approx(1.0)
    assert masked_mse(pred, x1).item() == pytest.approx(1.0)


def test_loss_vanishes_for_the_exact_field_of_a_point_mass() -> None:
    # data = one point c: the marginal velocity is (c - x) / (1 - t), and the CFM target matches
    c = torch.tensor([0.5, -1.0, 2.0])
    x1 = c.expand(8, 10, 3).clone()
    field = lambda x, t, cond: (c - x) / (1 - t[:, None, None])  # noqa: E731
    loss = flow_matching_loss(field, x1, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8
    wrong = flow_matching_loss(lambda x, t, cond: torch.zeros_like(x), x1,
                               generator=torch.Generator().manual_seed(0))
    assert wrong.item() > 1.0


def test_cost_ignores_padding_values() -> None:
    x0, x1, mask = clouds(seed=7)
    x1_dirty = torch.where(mask[..., None], x1, torch.full_like(x1, 99.0))
    assert torch.equal(ot_pairing_indices(x0, x1, mask), ot_pairing_indices(x0, x1_dirty, mask))
    assert np.isfinite(_pair_cost(ot_pair(x0, x1_dirty, mask), x1, mask))
