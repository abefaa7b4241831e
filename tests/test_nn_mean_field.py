"""Tests of the mean-field blocks: weight-normalized linear layers, mean-field attention, MDMA block."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from showerformer.errors import InputError
from showerformer.nn import (
    MeanFieldAttention,
    MeanFieldBlock,
    WeightNormalizedLinear,
    mean_field_block_parameters,
    mean_field_init,
)

L, H, HEADS, C = 8, 12, 3, 2  # embed_dim, hidden, heads, cond_dim


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tol(dtype: torch.dtype) -> dict[str, float]:
    """1e-5 in float32 and float64; what a 16-bit dtype can resolve otherwise."""
    return ({"atol": 1e-5, "rtol": 1e-5} if dtype in (torch.float32, torch.float64)
            else {"atol": 3e-2, "rtol": 3e-2})


def clouds(counts: list[int], n: int, dim: int, *, seed: int = 0, garbage: float = 0.0,
           device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Points ``(B, n, dim)`` with ``counts[b]`` real points first; padding holds ``garbage``
    times Gaussian noise (0: zeros)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(counts), n, dim, generator=gen)  # (B, N, dim)
    mask = torch.arange(n)[None, :] < torch.tensor(counts)[:, None]  # (B, N)
    x = torch.where(mask[..., None], x, garbage * x)
    return x.to(device, dtype), mask.to(device)


def field_and_cond(b: int, *, seed: int = 1, device: str = "cpu",
                   dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(b, L, generator=gen)  # (B, l)
    c = torch.rand(b, C, generator=gen)  # (B, c)
    return m.to(device, dtype), c.to(device, dtype)


def block(weight_norm: bool, *, seed: int = 0, device: str = "cpu",
          dtype: torch.dtype = torch.float32) -> MeanFieldBlock:
    torch.manual_seed(seed)
    return MeanFieldBlock(L, H, HEADS, C, weight_norm=weight_norm).to(device, dtype)


# ------------------------------------------------------------------------ WeightNormalizedLinear


def test_weight_normalized_linear_unit_rows_and_scale_invariance() -> None:
    torch.manual_seed(0)
    layer = WeightNormalizedLinear(5, 7)
    w = layer.normalized_weight()  # (7, 5)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(7))
    x = torch.randn(4, 3, 5)
    y = layer(x)
    torch.testing.assert_close(y, x @ w.T + layer.bias)
    with torch.no_grad():  # the scale of each row does not matter
        layer.weight.mul_(torch.rand(7, 1) * 10 + 0.1)
    torch.testing.assert_close(layer(x), y)
    assert n_params(layer) == 7 * 5 + 7
    assert n_params(WeightNormalizedLinear(5, 7, bias=False)) == 35
    assert WeightNormalizedLinear(5, 7, bias=False).bias is None
    with pytest.raises(InputError, match="features"):
        WeightNormalizedLinear(0, 3)


def test_weight_normalized_linear_state_dict_and_deepcopy(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    layer = WeightNormalizedLinear(6, 4)
    plain = nn.Linear(6, 4)
    assert list(layer.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 6)
    save_file(layer.state_dict(), tmp_path / "w.safetensors")
    fresh = WeightNormalizedLinear(6, 4)
    fresh.load_state_dict(load_file(tmp_path / "w.safetensors"))
    assert torch.equal(fresh(x), layer(x))
    twin = copy.deepcopy(layer)
    assert torch.equal(twin(x), layer(x))
    with torch.no_grad():
        twin.weight.add_(1.0)
    assert not torch.equal(twin.weight, layer.weight)  # an independent copy
    plain.load_state_dict(layer.state_dict())  # same names and shapes as nn.Linear
    torch.testing.assert_close(plain.weight / plain.weight.norm(dim=1, keepdim=True),
                               layer.normalized_weight())


# ---------------------------------------------------------------------------- MeanFieldAttention


@pytest.mark.parametrize("weight_norm", [False, True])
def test_attention_matches_multihead_attention(weight_norm: bool) -> None:
    torch.manual_seed(0)
    attn = MeanFieldAttention(H, HEADS, weight_norm=weight_norm).double()
    x, mask = clouds([5, 9, 1], 9, H, garbage=3.0, dtype=torch.float64)
    m = torch.randn(3, H, dtype=torch.float64)
    y, w = attn(m, x, mask, need_weights=True)
    assert y.shape == (3, H) and w.shape == (3, HEADS, 9)

    def weight(layer: nn.Module) -> torch.Tensor:
        return layer.normalized_weight() if weight_norm else layer.weight

    ref = nn.MultiheadAttention(H, HEADS, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([weight(attn.q), weight(attn.kv)]))
        ref.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.kv.bias]))
        ref.out_proj.weight.copy_(weight(attn.out))
        ref.out_proj.bias.copy_(attn.out.bias)
    want, want_w = ref(m[:, None], x, x, key_padding_mask=~mask, average_attn_weights=False)
    torch.testing.assert_close(y, want[:, 0])
    torch.testing.assert_close(w, want_w[:, :, 0])
    torch.testing.assert_close(w.sum(-1), torch.ones(3, HEADS, dtype=torch.float64))
    assert (w.masked_select(~mask[:, None, :]) == 0).all()
    assert torch.equal(attn(m, x, mask), y)  # the same output without the weights


def test_attention_of_an_empty_shower_is_zero_and_finite() -> None:
    torch.manual_seed(0)
    attn = MeanFieldAttention(H, HEADS)
    x, mask = clouds([0, 4], 6, H, garbage=1e3)
    m = torch.randn(2, H, requires_grad=True)
    y, w = attn(m, x, mask, need_weights=True)
    assert torch.equal(y[0], torch.zeros(H)) and torch.equal(w[0], torch.zeros(HEADS, 6))
    assert torch.isfinite(y).all() and y[1].abs().sum() > 0
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
    assert torch.isfinite(m.grad).all()


def test_attention_without_mask_is_all_points() -> None:
    torch.manual_seed(0)
    attn = MeanFieldAttention(H, HEADS)
    x, mask = clouds([6, 6], 6, H)
    m = torch.randn(2, H)
    torch.testing.assert_close(attn(m, x), attn(m, x, mask))


def test_attention_bad_input() -> None:
    with pytest.raises(InputError, match="n_heads"):
        MeanFieldAttention(10, 3)
    attn = MeanFieldAttention(H, HEADS)
    x, mask = clouds([3], 4, H)
    with pytest.raises(InputError, match="key 'x'"):
        attn(torch.zeros(1, H), x[..., :5], mask)
    with pytest.raises(InputError, match="key 'm'"):
        attn(torch.zeros(2, H), x, mask)
    with pytest.raises(InputError, match="key 'mask'"):
        attn(torch.zeros(1, H), x, mask.float())


# -------------------------------------------------------------------------------- MeanFieldBlock


@pytest.mark.parametrize("weight_norm", [False, True])
def test_block_permutation_equivariance(weight_norm: bool, device: str, dtype) -> None:
    net = block(weight_norm, device=device, dtype=dtype)
    x, mask = clouds([7, 4], 7, L, device=device, dtype=dtype)
    m, c = field_and_cond(2, device=device, dtype=dtype)
    x1, m1 = net(x, m, c, mask)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3)).to(device)
    x2, m2 = net(x[:, perm], m, c, mask[:, perm])
    torch.testing.assert_close(x2, x1[:, perm], **tol(dtype))
    torch.testing.assert_close(m2, m1, **tol(dtype))
    assert x1.shape == (2, 7, L) and m1.shape == (2, L)


@pytest.mark.parametrize("weight_norm", [False, True])
def test_block_padding_has_no_effect(weight_norm: bool, device: str, dtype) -> None:
    net = block(weight_norm, device=device, dtype=dtype)
    counts = [5, 2, 3]
    x, mask = clouds(counts, 5, L, device=device, dtype=dtype)
    m, c = field_and_cond(3, device=device, dtype=dtype)
    x1, m1 = net(x, m, c, mask)
    xg, maskg = clouds(counts, 11, L, garbage=50.0, device=device, dtype=dtype)
    xg[:, :5] = x  # the same real points, 6 more padded points of garbage
    x2, m2 = net(xg, m, c, maskg)
    torch.testing.assert_close(x2[:, :5], x1, **tol(dtype))
    torch.testing.assert_close(m2, m1, **tol(dtype))
    assert (x2.masked_select(~maskg[..., None]) == 0).all()  # padded points are zero
    assert (x1.masked_select(~mask[..., None]) == 0).all()


def test_block_all_padding_is_finite() -> None:
    net = block(True)
    x, mask = clouds([0, 3, 0], 4, L, garbage=1e4)
    m, c = field_and_cond(3)
    m.requires_grad_()
    x1, m1, w = net(x, m, c, mask, need_weights=True)
    assert torch.isfinite(x1).all() and torch.isfinite(m1).all() and torch.isfinite(w).all()
    assert torch.equal(x1[0], torch.zeros(4, L)) and torch.equal(w[0], torch.zeros(HEADS, 4))
    (x1.sum() + m1.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("weight_norm", [False, True])
def test_block_gradients_reach_every_parameter(weight_norm: bool, device: str, dtype) -> None:
    net = block(weight_norm, device=device, dtype=dtype)
    x, mask = clouds([6, 3], 6, L, device=device, dtype=dtype)
    m, c = field_and_cond(2, device=device, dtype=dtype)
    x1, m1 = net(x, m, c, mask)
    (x1.square().sum() + m1.square().sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_block_weight_norm_everywhere_in_the_critic_only() -> None:
    critic, generator = block(True), block(False)
    wn = [mod for mod in critic.modules() if isinstance(mod, WeightNormalizedLinear)]
    assert len(wn) == 8 and not any(type(mod) is nn.Linear for mod in critic.modules())
    for layer in wn:
        torch.testing.assert_close(layer.normalized_weight().norm(dim=1),
                                   torch.ones(layer.out_features))
    assert not any(isinstance(mod, WeightNormalizedLinear) for mod in generator.modules())
    # the critic's output does not depend on the scale of any weight row
    x, mask = clouds([4, 2], 4, L)
    m, c = field_and_cond(2)
    x1, m1 = critic(x, m, c, mask)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in wn:
            layer.weight.mul_(torch.rand(layer.out_features, 1, generator=gen) * 5 + 0.2)
    x2, m2 = critic(x, m, c, mask)
    torch.testing.assert_close(x2, x1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m2, m1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("e", "h", "heads", "c"), [(8, 12, 3, 2), (16, 48, 16, 2),
                                                    (16, 32, 16, 2), (4, 4, 1, 0)])
@pytest.mark.parametrize("weight_norm", [False, True])
def test_block_parameter_count(e: int, h: int, heads: int, c: int, weight_norm: bool) -> None:
    net = MeanFieldBlock(e, h, heads, c, weight_norm=weight_norm)  # embed_dim l = e
    assert n_params(net) == mean_field_block_parameters(e, h, c)
    assert n_params(net) == 5 * h * h + 5 * h * e + h * c + 9 * h + 2 * e
    assert n_params(MeanFieldAttention(h, heads)) == 4 * (h * h + h)


def test_block_attention_weights_and_copy(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    net = block(True)
    x, mask = clouds([5, 2], 5, L)
    m, c = field_and_cond(2)
    x1, m1, w = net(x, m, c, mask, need_weights=True)
    assert w.shape == (2, HEADS, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, HEADS))
    out = net(x, m, c, mask)
    assert torch.equal(out[0], x1) and torch.equal(out[1], m1)
    twin = copy.deepcopy(net)
    save_file(net.state_dict(), tmp_path / "block.safetensors")
    fresh = block(True, seed=9)
    fresh.load_state_dict(load_file(tmp_path / "block.safetensors"))
    for other in (twin, fresh):
        x2, m2 = other(x, m, c, mask)
        assert torch.equal(x2, x1) and torch.equal(m2, m1)


def test_block_bad_input() -> None:
    net = block(False)
    x, mask = clouds([3], 4, L)
    m, c = field_and_cond(1)
    with pytest.raises(InputError, match="key 'c'"):
        net(x, m, c[:, :1], mask)
    with pytest.raises(InputError, match="key 'm'"):
        net(x, m[:, :3], c, mask)
    with pytest.raises(InputError, match="key 'mask'"):
        net(x, m, c, mask[:, :2])
    with pytest.raises(InputError, match="n_heads"):
        MeanFieldBlock(L, 10, 3, C)


# ------------------------------------------------------------------------------- mean_field_init


def test_mean_field_init_sums_real_points_over_c_n() -> None:
    x, mask = clouds([3, 1, 0], 4, L, garbage=7.0)
    got = mean_field_init(x, mask, 2.5)
    want = torch.stack([x[0, :3].sum(0), x[1, :1].sum(0), torch.zeros(L)]) / 2.5
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(mean_field_init(x[:1, :3], None, 2.5), want[:1])
    for bad in (0.0, -1.0, float("nan"), float("inf"), "many"):
        with pytest.raises(InputError, match="c_n"):
            mean_field_init(x, mask, bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="phi_x"):
        mean_field_init(x[0], None, 1.0)


def test_attention_can_be_differentiated_twice() -> None:
    """The gradient penalty of a WGAN critic differentiates the critic's input gradient."""
    from showerformer.nn.mean_field import MeanFieldBlock

    torch.manual_seed(0)
    block = MeanFieldBlock(8, 8, 2, 2, weight_norm=True)
    x = torch.randn(3, 5, 8, requires_grad=True)
    m, c = torch.randn(3, 8), torch.randn(3, 2)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    out, field = block(x, m, c, mask)
    grad = torch.autograd.grad((out.sum() + field.sum()), x, create_graph=True)[0]
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    penalty.backward()  # raises where a kernel has no second derivative
    assert torch.isfinite(penalty)
    for layer in (block.attn.q, block.attn.kv, block.phi):  # the attention is in the graph
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_non_residual_mean_field_replaces_the_field() -> None:
    """With ``field_residual=False`` the incoming field enters only through the layer-normed
    query, so an offset of the incoming field does not carry over to the outgoing one."""
    from showerformer.nn.mean_field import MeanFieldBlock

    torch.manual_seed(0)
    replaced = MeanFieldBlock(8, 8, 2, 2, field_residual=False)
    residual = MeanFieldBlock(8, 8, 2, 2)
    residual.load_state_dict(replaced.state_dict())  # the same parameters
    x, c, m = torch.randn(2, 5, 8), torch.randn(2, 2), torch.randn(2, 8)
    _, out_replaced = replaced(x, m + 100.0, c)
    _, out_residual = residual(x, m + 100.0, c)
    assert (out_residual - 100.0).abs().mean() < 10.0  # the offset is kept
    assert out_replaced.abs().mean() < 10.0  # the offset is gone
