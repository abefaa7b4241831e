"""Tests of layer-window attention: mask semantics, padding, dense vs FlexAttention, sorting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from showerformer.nn.layer_window import (
    LayerWindowSelfAttention,
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


def test_module_is_permutation_equivariant_and_finite(device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    attn = LayerWindowSelfAttention(32, 4).to(device, dtype)
    layer, valid = toy(p=30)
    layer, valid = layer.to(device), valid.to(device)
    x = torch.randn(3, 30, 32, device=device, dtype=dtype)
    y = attn(x, layer_window_mask(layer, valid, 2, backend="dense"))
    assert y.shape == x.shape and torch.isfinite(y).all()
    perm = torch.randperm(30, device=device)
    y_perm = attn(x[:, perm], layer_window_mask(layer[:, perm], valid[:, perm], 2, backend="dense"))
    torch.testing.assert_close(y_perm[valid[:, perm]], y[:, perm][valid[:, perm]],
                               atol=1e-4, rtol=1e-4)
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_backend_choice_and_bad_arguments() -> None:
    assert resolve_backend("auto", "cpu") == "dense"
    assert resolve_backend("dense", "cpu") == "dense"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("sparse", "cpu")
    layer, valid = toy()
    with pytest.raises(ValueError, match="non-negative"):
        dense_layer_window_mask(layer, valid, -1)
    with pytest.raises(ValueError, match="B, P"):
        dense_layer_window_mask(layer, valid[:, :5], 1)
    assert isinstance(layer_window_mask(layer, valid, 1), torch.Tensor)  # auto on CPU: dense
