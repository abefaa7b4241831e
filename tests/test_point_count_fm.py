"""Tests of PointCountFM: count transform, shapes, loss, gradients, sampling, conditioning, save/load."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from showerformer.data.conditions import CONDITION_KEYS
from showerformer.data.points import Preprocessing
from showerformer.errors import InputError
from showerformer.models import MODELS
from showerformer.models.point_count_fm import (
    PointCountFM,
    PointCountFMConfig,
    counts_from_log,
    log_counts,
)
from showerformer.showers import Conditions

L = 4
SMALL = PointCountFMConfig(n_calo_layers=L, d_model=32, n_blocks=2, n_fourier=8)


def conditions(b: int, device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Normalized conditions of ``b`` showers, every particle type present."""
    g = torch.Generator().manual_seed(seed)
    values = {
        "particle": torch.arange(b) % 4,
        "energy": torch.rand(b, generator=g) * 2 - 1,
        "theta": 1.2 + 0.6 * torch.rand(b, generator=g),
        "phi": 1.2 + 0.6 * torch.rand(b, generator=g),
    }
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
            for k, v in values.items()}


def toy_counts(energy: torch.Tensor) -> torch.Tensor:
    """Points per layer growing with the (normalized log) incident energy: base * e^(0.8 E)."""
    base = torch.tensor([3.0, 20.0, 12.0, 0.0], device=energy.device)
    return torch.round(base * torch.exp(0.8 * energy.float())[:, None]).long()  # (B, L)


def small_model(device: str, dtype: torch.dtype, **changes) -> PointCountFM:
    torch.manual_seed(0)
    return PointCountFM(dataclasses.replace(SMALL, **changes)).to(device, dtype)


def test_count_transform_is_exact_on_integers() -> None:
    n = torch.arange(0, 5000)
    assert torch.equal(counts_from_log(log_counts(n)), n)
    # every y in [log n, log(n + 1)) rounds to n; negative values give 0
    assert counts_from_log(torch.log(torch.tensor([3.0, 3.99]))).tolist() == [3, 3]
    assert counts_from_log(torch.tensor([-5.0, float(np.log(0.2))])).tolist() == [0, 0]


def test_registry_and_config() -> None:
    assert PointCountFM not in MODELS.values()  # a network of the point-flow family
    assert PointCountFMConfig.from_dict(json.loads(json.dumps(SMALL.to_dict()))) == SMALL
    with pytest.raises(InputError, match="n_blocks"):
        dataclasses.replace(SMALL, n_blocks=0)
    with pytest.raises(InputError, match="bogus"):
        PointCountFMConfig.from_dict({"bogus": 1})


def test_fit_normalization() -> None:
    model = PointCountFM(SMALL)
    counts = torch.tensor([[0, 10, 5, 1], [2, 30, 5, 1], [4, 20, 5, 1]])
    model.fit_normalization(counts)
    y = torch.log(counts.double() + 0.5)
    torch.testing.assert_close(model.y_mean, y.mean(0).float())
    assert model.y_std[2] == pytest.approx(0.05)  # constant layer: floor of the spread
    torch.testing.assert_close(model.denormalize(model.normalize(counts)), counts)
    with pytest.raises(InputError, match="counts"):
        model.fit_normalization(counts[:, :2])


def test_shapes_loss_and_gradients(device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype)
    cond = conditions(16, device, dtype)
    y = torch.randn(16, L, device=device, dtype=dtype)
    v = model(y, torch.rand(16, device=device, dtype=dtype), cond)
    assert v.shape == (16, L) and v.dtype == dtype and torch.isfinite(v).all()
    batch = cond | {"counts": toy_counts(cond["energy"])}
    loss = model.loss(batch, generator=torch.Generator(device=device).manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with pytest.raises(InputError, match="counts"):
        model.loss(cond)
    with pytest.raises(InputError, match="counts"):
        model(y[:, :2], torch.rand(16, device=device, dtype=dtype), cond)


def test_sample_gives_non_negative_integers(device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype, dropout=0.1).train()
    model.fit_normalization(toy_counts(torch.linspace(-1, 1, 50)))
    model.to(device, dtype)
    cond = conditions(32, device, dtype)
    counts = model.sample(cond, steps=4, generator=torch.Generator(device=device).manual_seed(0))
    assert counts.shape == (32, L) and counts.dtype == torch.int64 and (counts >= 0).all()
    assert model.training  # mode restored
    again = model.sample(cond, steps=4, generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(counts, again)
    other = dict(cond, particle=(cond["particle"] + 1) % 4)  # conditioning changes the output
    y0 = model(torch.zeros(32, L, device=device, dtype=dtype),
               torch.full((32,), 0.5, device=device, dtype=dtype), cond)
    y1 = model(torch.zeros(32, L, device=device, dtype=dtype),
               torch.full((32,), 0.5, device=device, dtype=dtype), other)
    assert not torch.allclose(y0, y1)


def test_learns_counts_that_grow_with_energy(device: str) -> None:
    model = small_model(device, torch.float32, n_blocks=1)
    model.fit_normalization(toy_counts(torch.linspace(-1, 1, 200)))
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator(device=device).manual_seed(0)
    for step in range(150):
        cond = conditions(128, device, torch.float32, seed=step)
        loss = model.loss(cond | {"counts": toy_counts(cond["energy"])}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    low, high = (conditions(200, device, torch.float32, seed=999) for _ in range(2))
    low["energy"] = torch.full_like(low["energy"], -0.9)
    high["energy"] = torch.full_like(high["energy"], 0.9)
    n_low = model.sample(low, steps=8, generator=g).sum(1).float().mean().item()
    n_high = model.sample(high, steps=8, generator=g).sum(1).float().mean().item()
    # truth (rounded per layer): 1 + 10 + 6 = 17 and 6 + 41 + 25 = 72 points
    assert n_high > 3.0 * n_low
    assert 12 < n_low < 23 and 58 < n_high < 88


def test_save_load_round_trip(device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype).eval()
    model.fit_normalization(toy_counts(torch.linspace(-1, 1, 50)))
    model.to(device, dtype)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert {"y_mean", "y_std", "condition.time_features.freq"} <= set(state)
    torch.manual_seed(99)
    loaded = PointCountFM(PointCountFMConfig.from_dict(json.loads(json.dumps(SMALL.to_dict()))))
    loaded.to(device, dtype).load_state_dict(state)
    cond = conditions(8, device, dtype)
    a = model.sample(cond, steps=3, generator=torch.Generator(device=device).manual_seed(1))
    b = loaded.sample(cond, steps=3, generator=torch.Generator(device=device).manual_seed(1))
    assert torch.equal(a, b)


def test_generate_from_physical_conditions() -> None:
    model = small_model("cpu", torch.float32)
    pre = Preprocessing.from_statistics(mean=np.zeros((L, 3)), std=np.ones((L, 3)),
                                        layer_z=np.arange(L) * 5.0,
                                        incident_log_mean=float(np.log(3e4)), incident_log_std=0.5)
    cond = Conditions(np.array([1e4, 5e4, 9e4]), pdg=np.array([11, 22, 2212]))
    counts = model.generate(cond, pre, steps=2, generator=torch.Generator().manual_seed(0))
    assert counts.shape == (3, L) and counts.dtype == np.int64 and (counts >= 0).all()
    assert set(CONDITION_KEYS) == {"particle", "energy", "theta", "phi"}
    with pytest.raises(InputError, match="pdg"):
        model.generate(Conditions(np.array([1e4]), pdg=np.array([13])), pre)
