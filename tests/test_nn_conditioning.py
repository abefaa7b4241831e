"""Tests of the shared condition embedding of the point-cloud generators."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from showerformer.errors import InputError
from showerformer.models.panshower import PanShower, PanShowerConfig
from showerformer.models.point_count_fm import PointCountFM, PointCountFMConfig
from showerformer.nn.conditioning import ConditionEmbedding


def conditions(b: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
               seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"particle": torch.randint(0, 4, (b,), generator=g), "energy": torch.randn(b, generator=g),
           "theta": 1.0 + torch.rand(b, generator=g), "phi": 6.0 * torch.rand(b, generator=g)}
    return {k: v.to(device) if k == "particle" else v.to(device, dtype) for k, v in out.items()}


def embedding(device: str, dtype: torch.dtype, **kw) -> ConditionEmbedding:
    torch.manual_seed(0)
    return ConditionEmbedding(24, 4, n_fourier=8, **kw).to(device, dtype)


@pytest.mark.parametrize("n_hidden", [0, 1, 2])
def test_shape_structure_and_time(device: str, dtype: torch.dtype, n_hidden: int) -> None:
    emb = embedding(device, dtype, n_hidden=n_hidden)
    linears = [m for m in emb.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == n_hidden + 1 and linears[-1].out_features == 24
    assert linears[0].in_features == 2 * (8 + 1) + 3  # time and energy features, direction
    cond = conditions(7, device, dtype)
    c = emb(torch.rand(7, device=device, dtype=dtype), cond)
    assert c.shape == (7, 24) and c.dtype == dtype and torch.isfinite(c).all()
    with pytest.raises(InputError, match="t"):
        emb(None, cond)
    with pytest.raises(InputError, match="phi"):
        emb(torch.rand(7, device=device, dtype=dtype), {k: v for k, v in cond.items() if k != "phi"})


def test_without_time(device: str, dtype: torch.dtype) -> None:
    emb = embedding(device, dtype, time_fourier_std=None)
    assert not emb.uses_time and emb.time_features is None
    assert emb.mlp[0].in_features == (8 + 1) + 3
    c = emb(None, conditions(5, device, dtype))
    assert c.shape == (5, 24)
    with pytest.raises(InputError, match="t"):
        emb(torch.rand(5, device=device, dtype=dtype), conditions(5, device, dtype))
    assert not any("time" in k for k in emb.state_dict())


def test_batch_permutation_and_particle(device: str, dtype: torch.dtype) -> None:
    emb = embedding(device, dtype)
    cond = conditions(9, device, dtype)
    t = torch.rand(9, device=device, dtype=dtype)
    c = emb(t, cond)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1)).to(device)
    permuted = emb(t[perm], {k: v[perm] for k, v in cond.items()})
    torch.testing.assert_close(permuted, c[perm])
    other = dict(cond, particle=(cond["particle"] + 1) % 4)
    changed = emb(t, other)
    assert not torch.allclose(changed, c)
    # the particle only adds its embedding row
    delta = emb.particle_embed(other["particle"]) - emb.particle_embed(cond["particle"])
    torch.testing.assert_close(changed - c, delta)
    assert emb.particle_embed.weight.std().item() == pytest.approx(0.02, rel=0.5)


def test_families_share_it() -> None:
    ps = PanShower(PanShowerConfig(n_calo_layers=4, d_model=16, n_heads=2, n_blocks=1, n_fourier=8))
    pc = PointCountFM(PointCountFMConfig(n_calo_layers=4, d_model=16, n_blocks=1, n_fourier=8))
    assert isinstance(ps.condition, ConditionEmbedding) and isinstance(pc.condition, ConditionEmbedding)
    # PanShower: Linear-SiLU-Linear; PointCountFM: a single Linear (as before the refactoring)
    assert [type(m).__name__ for m in ps.condition.mlp] == ["Linear", "SiLU", "Linear"]
    assert [type(m).__name__ for m in pc.condition.mlp] == ["Linear"]
