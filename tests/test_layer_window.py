"""Tests of layer-window attention: mask semantics, padding, dense vs blocked vs FlexAttention, sorting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from showerformer.nn.layer_window import (
    BlockedLayerWindowMask,
    LayerWindowSelfAttention,
    blocked_layer_window_mask,
    dense_layer_window_mask,
    flex_available,
    flex_layer_window_mask,
    layer_window_attention,
    layer_window_mask,
    resolve_backend,
    sort_by_layer,
)

# Uncompiled FlexAttention on the CPU warns that it materialises the score matrix; the tests
# compare it with the dense path on purpose.
FLEX_EAGER = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def toy(b: int = 3, p: int = 40, n_layers: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    layer = torch.randint(0, n_layers, (b, p), generator=g)
    valid = torch.rand(b, p, generator=g) < 0.7
    valid[0, :] = True  # a shower without padding
    valid[-1, :] = False  # a shower made only of padding
    return layer, valid


def reference_mask(layer: torch.Tensor, valid: torch.Tensor, window: int | None) -> torch.Tensor:
    """The mask written out element by element."""
    b, p = layer.shape
    out = torch.zeros(b, p, p, dtype=torch.bool)
    for n, i, j in itertools.product(range(b), range(p), range(p)):
        near = window is None or abs(int(layer[n, i]) - int(layer[n, j])) <= window
        real = bool(valid[n, i]) and bool(valid[n, j])
        out[n, i, j] = (real and near) or (not bool(valid[n, i]) and i == j)
    return out


def reference_attention(q, k, v, allowed):  # (B, H, P, D) x3, (B, P, P)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


@pytest.mark.parametrize("window", [0, 1, 2, None])
def test_dense_mask_semantics(window: int | None) -> None:
    layer, valid = toy(b=2, p=12, n_layers=5)
    mask = dense_layer_window_mask(layer, valid, window)
    assert mask.shape == (2, 1, 12, 12) and mask.dtype == torch.bool
    assert torch.equal(mask[:, 0], reference_mask(layer, valid, window))


def test_window_is_exactly_k_layers() -> None:
    # one point per layer 0..9, all real: point q may see layers q-k .. q+k, nothing else
    layer = torch.arange(10)[None]
    valid = torch.ones(1, 10, dtype=torch.bool)
    for k in range(4):
        mask = dense_layer_window_mask(layer, valid, k)[0, 0]
        for q in range(10):
            seen = torch.nonzero(mask[q]).flatten().tolist()
            assert seen == list(range(max(0, q - k), min(9, q + k) + 1))
    assert dense_layer_window_mask(layer, valid, 0)[0, 0].equal(torch.eye(10, dtype=torch.bool))


def test_padding_keys_are_never_seen_and_padding_queries_see_only_themselves() -> None:
    layer, valid = toy()
    mask = dense_layer_window_mask(layer, valid, 2)[:, 0]  # (B, P, P)
    rows_of_real = mask[valid]  # (n_real, P)
    key_valid = valid[:, None, :].expand_as(mask)[valid]
    assert not (rows_of_real & ~key_valid).any()
    pad_rows = mask[~valid]  # (n_pad, P)
    assert torch.equal(pad_rows.sum(dim=1), torch.ones(len(pad_rows), dtype=torch.long))


def test_dense_attention_matches_reference_and_is_finite(device: str) -> None:
    layer, valid = toy()
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 40, 16, generator=g) for _ in range(3))
    for window in (0, 2, None):
        mask = dense_layer_window_mask(layer, valid, window)
        want = reference_attention(q, k, v, mask[:, 0])
        got = layer_window_attention(*(t.to(device) for t in (q, k, v)), mask.to(device)).cpu()
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # padding queries return their own value vector
    got = layer_window_attention(q, k, v, dense_layer_window_mask(layer, valid, 1))
    pad = ~valid
    torch.testing.assert_close(got.transpose(1, 2)[pad], v.transpose(1, 2)[pad])


@FLEX_EAGER
@pytest.mark.skipif(not flex_available(), reason="this torch build has no FlexAttention")
@pytest.mark.parametrize("window", [0, 2, None])
def test_flex_matches_dense(window: int | None, device: str) -> None:
    layer, valid = toy(p=70)
    layer, valid = layer.to(device), valid.to(device)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 2, 70, 16, generator=g).to(device) for _ in range(3))
    dense = layer_window_attention(q, k, v, dense_layer_window_mask(layer, valid, window))
    block = 128 if device.startswith("cuda") else 32  # small tiles exercise the CPU block logic
    flex = layer_window_attention(q, k, v, flex_layer_window_mask(layer, valid, window,
                                                                  block_size=block))
    assert torch.isfinite(flex).all()
    torch.testing.assert_close(flex, dense, atol=1e-4, rtol=1e-4)


@FLEX_EAGER
@pytest.mark.skipif(not flex_available(), reason="this torch build has no FlexAttention")
def test_flex_block_mask_skips_tiles_when_sorted() -> None:
    # 256 points spread over 16 layers, 16 per layer: sorting makes the allowed region a band
    layer = torch.arange(16).repeat_interleave(16)[None]  # (1, 256), sorted
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(1, 256, dtype=torch.bool)
    sorted_mask = flex_layer_window_mask(layer, valid, 1, block_size=32)
    shuffled_mask = flex_layer_window_mask(layer[:, perm], valid, 1, block_size=32)
    assert sorted_mask.sparsity() > 50.0  # most 32x32 tiles lie outside the band
    assert shuffled_mask.sparsity() == 0.0


def test_sort_by_layer() -> None:
    layer, valid = toy()
    idx = sort_by_layer(layer, valid)
    s_layer, s_valid = layer.gather(1, idx), valid.gather(1, idx)
    for n in range(layer.shape[0]):
        k = int(valid[n].sum())
        assert s_valid[n, :k].all() and not s_valid[n, k:].any()
        assert torch.equal(s_layer[n, :k], torch.sort(layer[n][valid[n]]).values)
        assert sorted(idx[n].tolist()) == list(range(layer.shape[1]))


@pytest.mark.parametrize("backend", ["dense", "blocked"])
def test_module_is_permutation_equivariant_and_finite(backend: str, device: str,
                                                      dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    attn = LayerWindowSelfAttention(32, 4).to(device, dtype)
    layer, valid = toy(p=30)
    layer, valid = layer.to(device), valid.to(device)
    x = torch.randn(3, 30, 32, device=device, dtype=dtype)
    y = attn(x, layer_window_mask(layer, valid, 2, backend=backend, block_size=8))
    assert y.shape == x.shape and torch.isfinite(y).all()
    perm = torch.randperm(30, device=device)
    y_perm = attn(x[:, perm], layer_window_mask(layer[:, perm], valid[:, perm], 2, backend=backend,
                                                block_size=8))
    torch.testing.assert_close(y_perm[valid[:, perm]], y[:, perm][valid[:, perm]],
                               atol=1e-4, rtol=1e-4)
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_backend_choice_and_bad_arguments() -> None:
    assert resolve_backend("auto", "cpu") == "blocked"
    assert resolve_backend("dense", "cpu") == "dense"
    assert resolve_backend("blocked", "cpu") == "blocked"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("sparse", "cpu")
    layer, valid = toy()
    with pytest.raises(ValueError, match="non-negative"):
        dense_layer_window_mask(layer, valid, -1)
    with pytest.raises(ValueError, match="B, P"):
        dense_layer_window_mask(layer, valid[:, :5], 1)
    with pytest.raises(ValueError, match="non-negative"):
        blocked_layer_window_mask(layer, valid, -2)
    with pytest.raises(ValueError, match="block_size"):
        blocked_layer_window_mask(layer, valid, 1, block_size=0)
    assert isinstance(layer_window_mask(layer, valid, 1), BlockedLayerWindowMask)  # auto on CPU
    assert isinstance(layer_window_mask(layer, valid, 1, backend="dense"), torch.Tensor)
    q = torch.randn(3, 2, 40, 8)
    with pytest.raises(ValueError, match="blocked mask"):
        layer_window_attention(q[:, :, :39], q[:, :, :39], q[:, :, :39],
                               blocked_layer_window_mask(layer, valid, 1))


# -- blocked backend ------------------------------------------------------------------------------


def sorted_toy(b: int, p: int, n_layers: int, seed: int, pad_layer: int | None):
    """Random layers sorted like make_batch / layers_from_counts; padding has layer pad_layer."""
    layer, valid = toy(b=b, p=p, n_layers=n_layers, seed=seed)
    idx = sort_by_layer(layer, valid)
    layer, valid = layer.gather(1, idx), valid.gather(1, idx)
    if pad_layer is not None:
        layer = torch.where(valid, layer, torch.full_like(layer, pad_layer))
    return layer, valid


@pytest.mark.parametrize("order", ["unsorted", "pad-layer-0", "pad-layer-last"])
@pytest.mark.parametrize("window", [0, 1, 2, None])
def test_blocked_matches_dense_forward_and_gradients(window: int | None, order: str) -> None:
    # P = 70 is not a multiple of the tile (16); the last shower has no real point
    b, p, n_layers = 4, 70, 7
    if order == "unsorted":
        layer, valid = toy(b=b, p=p, n_layers=n_layers, seed=3)
    else:
        layer, valid = sorted_toy(b, p, n_layers, 3, 0 if order == "pad-layer-0" else n_layers - 1)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(b, 2, p, 8, generator=g, dtype=torch.float64).requires_grad_()
               for _ in range(3))
    weight = torch.randn(b, 2, p, 8, generator=g, dtype=torch.float64) * valid[:, None, :, None]
    outputs, grads = [], []
    for mask in (dense_layer_window_mask(layer, valid, window),
                 blocked_layer_window_mask(layer, valid, window, block_size=16)):
        out = layer_window_attention(q, k, v, mask)
        assert out.shape == q.shape and torch.isfinite(out).all()
        outputs.append(out.detach())
        grads.append(torch.autograd.grad((out * weight).sum(), (q, k, v)))  # real queries only
    real = valid[:, None, :, None].expand_as(q)
    torch.testing.assert_close(outputs[1][real], outputs[0][real], atol=1e-12, rtol=1e-12)
    for got, want in zip(grads[1], grads[0], strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # and the brute-force reference, written element by element
    want = reference_attention(q.detach(), k.detach(), v.detach(), reference_mask(layer, valid, window))
    torch.testing.assert_close(outputs[1][real], want[real], atol=1e-12, rtol=1e-12)


def test_blocked_mask_is_small_and_rows_are_never_empty() -> None:
    # 16 layers x 16 points, sorted, window 1; tiles of 32 queries span 2 layers and see 4
    layer = torch.arange(16).repeat_interleave(16)[None]  # (1, 256)
    valid = torch.ones(1, 256, dtype=torch.bool)
    mask = blocked_layer_window_mask(layer, valid, 1, block_size=32)
    assert (mask.n_tiles, mask.block_size, mask.n_keys) == (8, 32, 64)
    # the two edge tiles see 3 layers (48 keys), the six inner ones 4 layers (64 keys)
    assert [(g.allowed.shape[0], g.n_keys) for g in mask.groups] == [(2, 48), (6, 64)]
    assert mask.scored_pairs == 32 * (2 * 48 + 6 * 64) < 256 * 256 // 4
    # the allowed pairs are exactly those of the dense mask
    n_allowed = sum(int(g.allowed.sum()) for g in mask.groups)
    assert n_allowed == int(dense_layer_window_mask(layer, valid, 1).sum())
    single = blocked_layer_window_mask(layer, valid, 1, block_size=32, group_tiles=False)
    assert [(g.allowed.shape[0], g.n_keys) for g in single.groups] == [(8, 64)]
    # with padding (and a shower of padding only) every row keeps at least one entry
    layer, valid = toy(b=3, p=50, n_layers=9, seed=1)
    mask = blocked_layer_window_mask(layer, valid, 0, block_size=16)
    assert mask.n_tiles == 4 and mask.n_keys < 50
    assert all(g.n_keys % 16 == 0 or g.n_keys == 50 for g in mask.groups)
    assert all((g.allowed.sum(dim=-1) >= 1).all() for g in mask.groups)
    assert sum(g.allowed.shape[0] for g in mask.groups) == 3 * 4


def test_blocked_key_lengths_group_tiles_of_a_peaked_shower() -> None:
    # a peaked profile: many points in a few layers, a long thin tail; window 2
    counts = torch.tensor([20, 60, 150, 200, 150, 90, 50, 30, 20, 10, 6, 4, 2, 1, 1])
    layer = torch.repeat_interleave(torch.arange(15), counts)[None]  # (1, 794), sorted
    valid = torch.ones_like(layer, dtype=torch.bool)
    grouped = blocked_layer_window_mask(layer, valid, 2, block_size=32)
    single = blocked_layer_window_mask(layer, valid, 2, block_size=32, group_tiles=False)
    assert len(grouped.groups) > 2 and len(single.groups) == 1
    assert single.n_keys <= grouped.n_keys <= 1.25 * single.n_keys
    allowed = int(dense_layer_window_mask(layer, valid, 2).sum())  # pairs that must be scored
    assert grouped.scored_pairs - allowed < 0.6 * (single.scored_pairs - allowed)  # less waste
    # every tile's key length is its span rounded up by at most 25 % (and to a multiple of 16)
    for group in grouped.groups:
        assert group.n_keys % 16 == 0
        seen = group.allowed[:, 0].any(dim=1)  # (n, K) keys seen by some query of the tile
        span = (seen * torch.arange(1, group.n_keys + 1)).amax(dim=1)  # last seen key + 1
        rounded = (span + 15) // 16 * 16
        assert (span <= group.n_keys).all() and (group.n_keys < 1.25 * rounded + 1).all()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 794, 8, generator=g, dtype=torch.float64) for _ in range(3))
    want = layer_window_attention(q, k, v, dense_layer_window_mask(layer, valid, 2))
    for mask in (grouped, single):
        torch.testing.assert_close(layer_window_attention(q, k, v, mask), want,
                                   atol=1e-12, rtol=1e-12)


def test_blocked_small_and_degenerate_inputs() -> None:
    # fewer points than a tile: one tile of P queries; one point; only padding
    g = torch.Generator().manual_seed(0)
    layer = torch.tensor([[0, 0, 3, 4, 4]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    mask = blocked_layer_window_mask(layer, valid, 1)
    assert (mask.n_tiles, mask.block_size, mask.n_keys) == (1, 5, 5)
    q, k, v = (torch.randn(1, 1, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(layer_window_attention(q, k, v, mask),
                               layer_window_attention(q, k, v, dense_layer_window_mask(layer, valid, 1)))
    for valid_one in (torch.tensor([[True]]), torch.tensor([[False]])):
        mask = blocked_layer_window_mask(torch.zeros(1, 1, dtype=torch.long), valid_one, 2)
        q = torch.randn(1, 2, 1, 4, generator=g)
        torch.testing.assert_close(layer_window_attention(q, q, q, mask), q)
    empty = blocked_layer_window_mask(torch.zeros(2, 0, dtype=torch.long),
                                      torch.zeros(2, 0, dtype=torch.bool), 1)
    q = torch.randn(2, 2, 0, 4)
    assert layer_window_attention(q, q, q, empty).shape == (2, 2, 0, 4)


def test_no_mask_is_full_attention() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 4, generator=g) for _ in range(3))
    allowed = torch.ones(2, 9, 9, dtype=torch.bool)
    torch.testing.assert_close(layer_window_attention(q, k, v, None),
                               reference_attention(q, k, v, allowed))
