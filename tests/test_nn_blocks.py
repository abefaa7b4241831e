"""Tests of the shared blocks: RMSNorm, LayerScale, DropPath, 3D RoPE and attention blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from showerformer.nn import (
    CrossAttentionBlock,
    DropPath,
    LayerScale,
    RMSNorm,
    RotaryEmbedding3D,
    SelfAttention,
    TransformerBlock,
    apply_rotary,
    grid_positions,
    key_padding_mask,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------- norms


def test_rmsnorm_unit_rms_and_gain() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(16)
    x = torch.randn(3, 5, 16) * 7.0 + 2.0  # (B, N, C)
    y = norm(x)
    rms = y.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)
    # no mean subtraction: the same as x / rms(x)
    torch.testing.assert_close(y, x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    # scale invariant, gain multiplies channel-wise
    torch.testing.assert_close(norm(5.0 * x), y, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(16.0))
    torch.testing.assert_close(norm(x), y * torch.arange(16.0))
    assert n_params(norm) == 16


def test_rmsnorm_keeps_dtype() -> None:
    x = torch.randn(4, 8).to(torch.bfloat16)
    assert RMSNorm(8)(x).dtype == torch.bfloat16


def test_layerscale() -> None:
    ls = LayerScale(6, init=1e-4)
    assert n_params(ls) == 6
    assert torch.all(ls.gamma == 1e-4)
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(ls(x), x * 1e-4)


def test_droppath_identity_in_eval_and_at_zero() -> None:
    x = torch.randn(8, 4, 3)
    dp = DropPath(0.5).eval()
    assert torch.equal(dp(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_droppath_per_sample_rescaling() -> None:
    p = 0.25
    dp = DropPath(p).train()
    torch.manual_seed(1)
    x = torch.rand(4000, 5, 3) + 0.5  # strictly positive so a dropped sample is all zeros
    y = dp(x)
    kept = (y != 0).flatten(1)
    # each sample is either dropped entirely or kept entirely, scaled by 1 / (1 - p)
    assert torch.all(kept.all(1) | ~kept.any(1))
    k = kept.all(1)
    torch.testing.assert_close(y[k], x[k] / (1 - p))
    assert torch.all(y[~k] == 0)
    # fraction kept ~ Binomial(4000, 0.75): sd = 27 events
    n_kept = int(k.sum())
    assert abs(n_kept - 3000) < 5 * 27.4
    # the expectation is preserved
    assert abs(float(y.mean() / x.mean()) - 1.0) < 0.05


def test_droppath_seeded() -> None:
    dp = DropPath(0.5).train()
    x = torch.ones(64, 2)
    torch.manual_seed(3)
    a = dp(x)
    torch.manual_seed(3)
    b = dp(x)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------- RoPE


def test_grid_positions_order_and_centre() -> None:
    pos = grid_positions(4)
    assert pos.shape == (64, 3)
    i = torch.arange(64)
    expected = torch.stack([i // 16, (i // 4) % 4, i % 4], dim=-1).float() - 1.5
    assert torch.equal(pos, expected)
    assert torch.equal(pos.mean(0), torch.zeros(3))
    assert torch.equal(grid_positions(2, centered=False)[-1], torch.ones(3))


def _rope_logits(rope: RotaryEmbedding3D, q: torch.Tensor, k: torch.Tensor,
                 pos: torch.Tensor) -> torch.Tensor:
    cos, sin = rope(pos)
    return apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-1, -2)  # (B, H, N, N)


def test_rope_depends_only_on_relative_positions() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding3D(48, base=10.0)
    q, k = torch.randn(2, 4, 65, 48), torch.randn(2, 4, 65, 48)  # (B, H, N, D)
    pos = torch.cat([torch.zeros(1, 3), grid_positions(4)])  # (65, 3)
    logits = _rope_logits(rope, q, k, pos)
    for shift in ([3.0, -2.0, 7.0], [0.37, 11.5, -4.25]):
        shifted = _rope_logits(rope, q, k, pos + torch.tensor(shift))
        torch.testing.assert_close(shifted, logits, atol=1e-4, rtol=1e-5)
    # changing relative positions changes the logits, along each axis separately
    for axis in range(3):
        stretched = pos.clone()
        stretched[:, axis] *= 2.0
        assert (_rope_logits(rope, q, k, stretched) - logits).abs().max() > 1e-2
    # and differs from no rotation at all
    plain = q @ k.transpose(-1, -2)
    assert (plain - logits).abs().max() > 1e-2


def test_rope_pairwise_score_is_function_of_difference() -> None:
    torch.manual_seed(1)
    rope = RotaryEmbedding3D(12, base=10.0)
    q, k = torch.randn(1, 1, 1, 12), torch.randn(1, 1, 1, 12)

    def score(pq: list[float], pk: list[float]) -> float:
        cq, sq = rope(torch.tensor([pq]))
        ck, sk = rope(torch.tensor([pk]))
        return float((apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum())

    assert score([1, 2, 3], [0, 0, 1]) == pytest.approx(score([5, -1, 0.5], [4, -3, -1.5]), abs=1e-5)
    assert score([1, 2, 3], [0, 0, 1]) != pytest.approx(score([1, 2, 3], [0, 1, 1]), abs=1e-3)


def test_rope_is_rotation_and_identity_at_origin() -> None:
    torch.manual_seed(2)
    rope = RotaryEmbedding3D(48)
    x = torch.randn(2, 3, 10, 48)
    cos, sin = rope(torch.randn(10, 3) * 3)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    cos0, sin0 = rope(torch.zeros(10, 3))
    torch.testing.assert_close(apply_rotary(x, cos0, sin0), x)
    with pytest.raises(ValueError):
        RotaryEmbedding3D(32)


# ------------------------------------------------------------------------------------ attention


def test_block_parameter_counts() -> None:
    d = 192
    assert n_params(TransformerBlock(d, 4, 4)) == 12 * d * d + 4 * d == 443_136
    assert n_params(CrossAttentionBlock(d, 4, 4)) == 12 * d * d + 5 * d == 443_328
    # bias-free everywhere
    assert not any("bias" in name for name, _ in TransformerBlock(24, 2).named_parameters())


def test_self_attention_matches_manual_softmax() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(12, 2)
    x = torch.randn(2, 5, 12)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = [slice(0, 6), slice(6, 12)]
    out = []
    for h in heads:
        w = torch.softmax(q[..., h] @ k[..., h].transpose(1, 2) / 6**0.5, dim=-1)
        out.append(w @ v[..., h])
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(out, -1)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_rope", [False, True])
def test_padding_mask_equivalence(use_rope: bool) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(24, 2, layerscale_init=1.0).eval()
    n_real, n_pad = 7, 3
    x = torch.randn(1, n_real, 24)
    padded = torch.cat([x, 100 * torch.randn(1, n_pad, 24)], dim=1)  # garbage in the padding
    valid = torch.tensor([[True] * n_real + [False] * n_pad])
    rope = rope_pad = None
    if use_rope:
        r = RotaryEmbedding3D(12)
        pos = torch.randn(n_real + n_pad, 3)
        rope, rope_pad = r(pos[:n_real]), r(pos)
    ref = block(x, rope=rope)
    out = block(padded, rope=rope_pad, attn_mask=key_padding_mask(valid))
    torch.testing.assert_close(out[:, :n_real], ref, atol=1e-5, rtol=1e-5)
    # the same with an additive float mask
    additive = torch.zeros(1, 1, 1, n_real + n_pad).masked_fill(~valid[:, None, None], float("-inf"))
    out2 = block(padded, rope=rope_pad, attn_mask=additive)
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-5)


def test_cross_attention_block_mask_and_permutation() -> None:
    torch.manual_seed(0)
    block = CrossAttentionBlock(24, 2, layerscale_init=1.0).eval()
    q, ctx = torch.randn(3, 1, 24), torch.randn(3, 5, 24)
    out = block(q, ctx)
    assert out.shape == (3, 1, 24)
    # no position information: permuting the context leaves the output unchanged
    torch.testing.assert_close(block(q, ctx[:, [3, 1, 4, 0, 2]]), out, atol=1e-5, rtol=1e-5)
    # masking the last two context tokens = dropping them
    valid = torch.tensor([True, True, True, False, False]).expand(3, 5)
    torch.testing.assert_close(block(q, ctx, key_padding_mask(valid)), block(q, ctx[:, :3]),
                               atol=1e-5, rtol=1e-5)


def test_layerscale_zero_block_is_identity_and_droppath_in_training() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 6, 24)
    assert torch.equal(TransformerBlock(24, 2, layerscale_init=0.0)(x), x)
    block = TransformerBlock(24, 2, drop_path=0.5, layerscale_init=1.0).train()
    torch.manual_seed(5)
    y = block(torch.randn(256, 3, 24))
    torch.manual_seed(5)
    y2 = block(torch.randn(256, 3, 24))
    assert torch.equal(y, y2)
    block.eval()
    z = torch.randn(2, 3, 24)
    assert torch.equal(block(z), block(z))


def test_attention_gradients_flow() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(24, 2)
    x = torch.randn(2, 4, 24, requires_grad=True)
    rope = RotaryEmbedding3D(12)(torch.randn(4, 3))
    block(x, rope=rope).pow(2).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert F.mse_loss(x.grad, torch.zeros_like(x.grad)) > 0
