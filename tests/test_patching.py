"""Tests of 3-D patching of voxel grids and of the positional encodings of the patch sequence."""

from __future__ import annotations

import pytest
import torch

from showerformer.errors import InputError
from showerformer.nn.patching import (
    POSITIONAL_ENCODINGS,
    PatchPositions,
    axis_dims,
    check_patch_size,
    patchify,
    sincos_1d,
    unpatchify,
)

GRID = (45, 50, 18)  # (z, phi, r)
PATCH = (3, 10, 18)  # (dz, dphi, dr): the paper's 18 x 10 x 3 in (r, phi, z)
TOKENS = (15, 5, 1)  # 75 tokens of 540 voxels


# ------------------------------------------------------------------------------------- patching


def test_default_grid_gives_75_tokens_of_540_values() -> None:
    assert check_patch_size(GRID, PATCH) == TOKENS
    x = torch.randn(2, *GRID)
    tokens = patchify(x, PATCH)
    assert tokens.shape == (2, 75, 540)


@pytest.mark.parametrize(
    ("grid", "patch"),
    [
        (GRID, PATCH),
        ((4, 6, 8), (2, 3, 4)),
        ((5, 7, 3), (5, 7, 3)),  # the whole grid: one token
        ((5, 7, 3), (1, 1, 1)),  # one voxel per token
        ((6, 4, 10), (3, 1, 5)),
    ],
)
def test_round_trip_is_exact(grid: tuple[int, int, int], patch: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, *grid)
    n = check_patch_size(grid, patch)
    tokens = patchify(x, patch)
    assert tokens.shape == (3, n[0] * n[1] * n[2], patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(tokens, grid, patch), x)
    # and the other way round
    t = torch.randn_like(tokens)
    assert torch.equal(patchify(unpatchify(t, grid, patch), patch), t)


def test_one_token_and_one_voxel_per_token_orders() -> None:
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.float32).reshape(2, 5, 7, 3)
    assert torch.equal(patchify(x, (5, 7, 3)), x.reshape(2, 1, -1))
    assert torch.equal(patchify(x, (1, 1, 1)), x.reshape(2, -1, 1))


def test_token_k_holds_the_kth_block() -> None:
    x = torch.randn(2, *GRID)
    tokens = patchify(x, PATCH)
    _, n1, n2 = TOKENS
    p0, p1, p2 = PATCH
    for i0, i1, i2 in [(0, 0, 0), (7, 3, 0), (14, 4, 0), (2, 1, 0)]:
        k = (i0 * n1 + i1) * n2 + i2
        block = x[:, i0 * p0 : (i0 + 1) * p0, i1 * p1 : (i1 + 1) * p1, i2 * p2 : (i2 + 1) * p2]
        assert torch.equal(tokens[:, k], block.reshape(2, -1))
    # a grid with patches along all three axes
    y = torch.randn(1, 4, 6, 8)
    t = patchify(y, (2, 3, 4))  # tokens (2, 2, 2)
    k = (1 * 2 + 0) * 2 + 1
    assert torch.equal(t[0, k], y[0, 2:4, 0:3, 4:8].reshape(-1))


def test_patchify_accepts_non_contiguous_input() -> None:
    x = torch.randn(4, 18, 50, 45).permute(0, 3, 2, 1)  # (B, 45, 50, 18), not contiguous
    assert torch.equal(unpatchify(patchify(x, PATCH), GRID, PATCH), x)


@pytest.mark.parametrize(
    ("grid", "patch", "fragment"),
    [
        (GRID, (3, 7, 18), "a divisor of 50 along axis 1"),
        (GRID, (4, 10, 18), "a divisor of 45 along axis 0"),
        (GRID, (3, 10, 36), "a divisor of 18 along axis 2"),
        (GRID, (3, 10), "three positive integers"),
        (GRID, (3, 0, 18), "three positive integers"),
        (GRID, (3, -10, 18), "three positive integers"),
        (GRID, (3, 2.5, 18), "three positive integers"),
    ],
)
def test_bad_patch_sizes_raise(grid, patch, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        check_patch_size(grid, patch)
    assert info.value.key == "patch_size"
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError):
        patchify(torch.zeros(1, *grid), patch)


def test_bad_grid_and_tokens_raise() -> None:
    with pytest.raises(InputError) as info:
        patchify(torch.zeros(45, 50, 18), PATCH)
    assert info.value.key == "grid"
    with pytest.raises(InputError) as info:
        check_patch_size((45, 50), PATCH)
    assert info.value.key == "grid"
    with pytest.raises(InputError) as info:
        unpatchify(torch.zeros(2, 74, 540), GRID, PATCH)
    assert info.value.key == "tokens"
    assert "(B, 75, 540)" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError) as info:
        unpatchify(torch.zeros(2, 75, 539), GRID, PATCH)
    assert info.value.key == "tokens"
    with pytest.raises(InputError) as info:
        unpatchify(torch.zeros(75, 540), GRID, PATCH)
    assert info.value.key == "tokens"
    with pytest.raises(InputError) as info:
        unpatchify(torch.zeros(2, 75, 540), GRID, (4, 10, 18))
    assert info.value.key == "patch_size"


# ------------------------------------------------------------------------------------- sincos_1d


def test_sincos_1d_matches_vaswani_table() -> None:
    pos = torch.arange(7, dtype=torch.float64)
    dim = 8
    out = sincos_1d(pos, dim)
    assert out.shape == (7, dim)
    assert out.dtype == torch.float64
    for i in range(dim // 2):
        w = 1.0 / 10000 ** (2 * i / dim)
        torch.testing.assert_close(out[:, i], torch.sin(pos * w))
        torch.testing.assert_close(out[:, dim // 2 + i], torch.cos(pos * w))


def test_sincos_1d_periodic_rolls_over() -> None:
    period = 5
    for dim in (2, 4, 12):
        out = sincos_1d(torch.arange(period + 1), dim, period=period)
        assert out.dtype == torch.get_default_dtype()
        torch.testing.assert_close(out[period], out[0], atol=1e-6, rtol=0)
        assert torch.cdist(out[:period], out[:period]).add(torch.eye(period)).min() > 1e-3
    w = 2 * torch.pi * torch.arange(1, 3, dtype=torch.float64) / period
    pos = torch.tensor([0.0, 1.5, 3.0], dtype=torch.float64)
    expected = torch.cat([torch.sin(pos[:, None] * w), torch.cos(pos[:, None] * w)], dim=-1)
    torch.testing.assert_close(sincos_1d(pos, 4, period=period), expected)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"dim": 3}, "dim"),
        ({"dim": 0}, "dim"),
        ({"dim": 4, "period": 0}, "period"),
    ],
)
def test_sincos_1d_bad_arguments(kwargs: dict, key: str) -> None:
    with pytest.raises(InputError) as info:
        sincos_1d(torch.arange(4.0), **kwargs)
    assert info.value.key == key


# ------------------------------------------------------------------------------------- axis_dims


@pytest.mark.parametrize("d_model", [6, 8, 10, 64, 96, 100, 128, 256, 382])
def test_axis_dims_even_and_sum(d_model: int) -> None:
    dims = axis_dims(d_model)
    assert sum(dims) == d_model
    assert all(d % 2 == 0 and d > 0 for d in dims)
    assert max(dims) - min(dims) <= 2


def test_axis_dims_examples_and_errors() -> None:
    assert axis_dims(128) == (42, 42, 44)
    assert axis_dims(96) == (32, 32, 32)
    assert axis_dims(100) == (32, 34, 34)
    for bad in (4, 7, 127, 0):
        with pytest.raises(InputError) as info:
            axis_dims(bad)
        assert info.value.key == "d_model"


# ------------------------------------------------------------------------------- PatchPositions


@pytest.mark.parametrize("kind", POSITIONAL_ENCODINGS)
def test_every_kind_gives_finite_table(kind: str) -> None:
    torch.manual_seed(0)
    pe = PatchPositions(TOKENS, 64, kind)
    out = pe()
    assert out.shape == (75, 64)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert kind in repr(pe)
    if kind == "none":
        assert torch.equal(out, torch.zeros(75, 64))


@pytest.mark.parametrize("kind", ["sincos-3d", "sincos-1d", "learned-1d", "learned-3d"])
@pytest.mark.parametrize("tokens", [TOKENS, (3, 4, 5)])
def test_rows_are_pairwise_distinct(kind: str, tokens: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    out = PatchPositions(tokens, 48, kind, periodic_axis=1 if kind == "sincos-3d" else None)()
    n = out.shape[0]
    dist = torch.cdist(out.double(), out.double()) + torch.eye(n, dtype=torch.float64)
    assert dist.min() > 1e-4


def test_sincos_3d_phi_neighbours_differ_only_in_phi_slice() -> None:
    d_model = 128
    d0, d1, d2 = axis_dims(d_model)
    pe = PatchPositions(TOKENS, d_model, "sincos-3d", periodic_axis=1)
    out = pe()
    _, n1, n2 = TOKENS
    i0, i2 = 6, 0
    a = out[(i0 * n1 + 1) * n2 + i2]
    b = out[(i0 * n1 + 3) * n2 + i2]
    assert torch.equal(a[:d0], b[:d0])  # z slice
    assert torch.equal(a[d0 + d1 :], b[d0 + d1 :])  # r slice
    assert not torch.equal(a[d0 : d0 + d1], b[d0 : d0 + d1])  # phi slice
    # each slice is sincos_1d of the patch index along its axis
    torch.testing.assert_close(a[:d0], sincos_1d(torch.tensor([float(i0)]), d0)[0])
    torch.testing.assert_close(a[d0 : d0 + d1], sincos_1d(torch.tensor([1.0]), d1, period=n1)[0])
    torch.testing.assert_close(a[d0 + d1 :], sincos_1d(torch.tensor([float(i2)]), d2)[0])


def test_sincos_3d_periodic_axis_closes_on_itself() -> None:
    n1 = TOKENS[1]
    d1 = axis_dims(96)[1]
    pe = PatchPositions(TOKENS, 96, "sincos-3d", periodic_axis=1)
    d0 = pe.dims[0]
    phi_codes = pe().reshape(*TOKENS, 96)[0, :, 0, d0 : d0 + d1]  # (n1, d1)
    roll = sincos_1d(torch.arange(n1 + 1), d1, period=n1)  # positions 0 .. period
    torch.testing.assert_close(phi_codes, roll[:n1])
    torch.testing.assert_close(roll[n1], roll[0], atol=1e-6, rtol=0)
    assert torch.cdist(roll[:n1], roll[:n1]).add(torch.eye(n1)).min() > 1e-3
    # without periodic_axis the phi code is the plain (non-periodic) table
    plain = PatchPositions(TOKENS, 96, "sincos-3d")().reshape(*TOKENS, 96)
    torch.testing.assert_close(plain[0, :, 0, d0 : d0 + d1], sincos_1d(torch.arange(n1), d1))


def test_sincos_1d_kind_is_flat_index_table() -> None:
    out = PatchPositions(TOKENS, 32, "sincos-1d")()
    torch.testing.assert_close(out, sincos_1d(torch.arange(75), 32))


@pytest.mark.parametrize("kind", ["learned-1d", "learned-3d"])
def test_learned_kinds_have_parameters_and_gradients(kind: str) -> None:
    torch.manual_seed(1)
    pe = PatchPositions(TOKENS, 48, kind)
    params = list(pe.parameters())
    n_params = sum(p.numel() for p in params)
    assert n_params == (75 * 48 if kind == "learned-1d" else 15 * 16 + 5 * 16 + 1 * 16)
    assert 0.01 < torch.cat([p.flatten() for p in params]).std() < 0.03
    pe().pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert set(pe.state_dict()) == {n for n, _ in pe.named_parameters()}
    # the initialisation follows torch's global generator
    torch.manual_seed(1)
    again = PatchPositions(TOKENS, 48, kind)
    assert torch.equal(again(), pe().detach())


@pytest.mark.parametrize("kind", ["sincos-3d", "sincos-1d", "none"])
def test_fixed_kinds_have_no_parameters_and_empty_state(kind: str) -> None:
    pe = PatchPositions(TOKENS, 48, kind)
    assert list(pe.parameters()) == []
    assert pe.state_dict() == {}
    assert len(list(pe.buffers())) == 1
    out = pe.to(torch.float64)()
    assert out.dtype == torch.float64
    assert out.shape == (75, 48)


def test_learned_tables_follow_to() -> None:
    pe = PatchPositions(TOKENS, 48, "learned-3d").to(torch.float64)
    assert pe().dtype == torch.float64


@pytest.mark.parametrize(
    ("args", "kwargs", "key", "fragment"),
    [
        ((TOKENS, 48, "rope"), {}, "positional_encoding", "one of sincos-3d"),
        ((TOKENS, 48, "sincos-1d"), {"periodic_axis": 1}, "periodic_axis", "sincos-3d"),
        ((TOKENS, 48, "learned-3d"), {"periodic_axis": 1}, "periodic_axis", "sincos-3d"),
        ((TOKENS, 48, "sincos-3d"), {"periodic_axis": 3}, "periodic_axis", "0, 1, 2"),
        ((TOKENS, 47, "sincos-3d"), {}, "d_model", "even"),
        ((TOKENS, 4, "learned-3d"), {}, "d_model", "even"),
        ((TOKENS, 47, "sincos-1d"), {}, "d_model", "even"),
        (((15, 5), 48, "sincos-3d"), {}, "tokens", "three positive integers"),
        (((15, 0, 1), 48, "none"), {}, "tokens", "three positive integers"),
    ],
)
def test_patch_positions_bad_arguments(args, kwargs, key: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        PatchPositions(*args, **kwargs)
    assert info.value.key == key
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_extra_repr() -> None:
    text = repr(PatchPositions(TOKENS, 128, "sincos-3d", periodic_axis=1))
    assert "tokens=(15, 5, 1)" in text
    assert "d_model=128" in text
    assert "axis_dims=(42, 42, 44)" in text
    assert "periodic_axis=1" in text
