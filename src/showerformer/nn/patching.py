"""Non-overlapping 3-D patches of voxel grids and the positional encodings of the patch sequence."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from showerformer.errors import InputError

__all__ = [
    "POSITIONAL_ENCODINGS",
    "PatchPositions",
    "axis_dims",
    "check_patch_size",
    "patchify",
    "sincos_1d",
    "unpatchify",
]

POSITIONAL_ENCODINGS = ("sincos-3d", "sincos-1d", "learned-1d", "learned-3d", "none")

_LEARNED_STD = 0.02


def _three_ints(values: Sequence[int], *, name: str, key: str) -> tuple[int, int, int]:
    """Read ``values`` as three positive ints, or raise InputError under ``key``."""
    try:
        items = list(values)
    except TypeError:
        raise InputError(
            f"{name} {values!r} is not a sequence", key=key, expected="three positive integers"
        ) from None
    if len(items) != 3:
        raise InputError(
            f"{name} {tuple(items)} has {len(items)} entries",
            key=key,
            expected="three positive integers",
        )
    out = []
    for axis, v in enumerate(items):
        try:
            if isinstance(v, bool):
                raise TypeError
            iv = operator.index(v)
        except TypeError:
            raise InputError(
                f"{name} {tuple(items)} has {v!r} along axis {axis}",
                key=key,
                expected="three positive integers",
            ) from None
        if iv < 1:
            raise InputError(
                f"{name} {tuple(items)} has {iv} along axis {axis}",
                key=key,
                expected="three positive integers",
            )
        out.append(iv)
    return out[0], out[1], out[2]


def check_patch_size(grid: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
    """Check that ``patch`` tiles ``grid`` exactly and count the patches along each axis.

    Arguments:
        grid: voxels per axis ``(D0, D1, D2)``, e.g. ``(45, 50, 18)`` = (z, phi, r).
        patch: voxels per patch along each axis ``(p0, p1, p2)``, e.g. ``(3, 10, 18)``.

    Returns:
        Patches per axis ``(n0, n1, n2)`` = ``(D0 / p0, D1 / p1, D2 / p2)``.

    Raises:
        InputError: ``grid`` is not three positive ints (key ``"grid"``), or ``patch`` is not
            three positive ints or one of its sides does not divide the grid side (key
            ``"patch_size"``).
    """
    g = _three_ints(grid, name="grid", key="grid")
    p = _three_ints(patch, name="patch size", key="patch_size")
    for axis, (gi, pi) in enumerate(zip(g, p, strict=True)):
        if gi % pi:
            raise InputError(
                f"patch size {p} does not tile the grid {g} along axis {axis}",
                key="patch_size",
                expected=f"a divisor of {gi} along axis {axis}",
            )
    return g[0] // p[0], g[1] // p[1], g[2] // p[2]


def patchify(x: Tensor, patch: Sequence[int]) -> Tensor:
    """Cut voxel grids into non-overlapping patches, one token per patch.

    Tokens are ordered row-major over the patch indices ``(i0, i1, i2)``: token
    ``(i0 * n1 + i1) * n2 + i2`` holds ``x[:, i0*p0:(i0+1)*p0, i1*p1:(i1+1)*p1, i2*p2:(i2+1)*p2]``
    flattened row-major over ``(p0, p1, p2)``.

    Arguments:
        x: voxel grids.  # (B, D0, D1, D2)
        patch: voxels per patch along each axis ``(p0, p1, p2)``.

    Returns:
        ``(B, N, p0 * p1 * p2)`` with ``N = n0 * n1 * n2``.

    Raises:
        InputError: ``x`` is not 4-D (key ``"grid"``) or ``patch`` does not tile it (see
            :func:`check_patch_size`).
    """
    if x.ndim != 4:
        raise InputError(
            f"voxel tensor of shape {tuple(x.shape)}", key="grid", expected="(B, D0, D1, D2)"
        )
    b, d0, d1, d2 = x.shape
    n0, n1, n2 = check_patch_size((d0, d1, d2), patch)
    p0, p1, p2 = d0 // n0, d1 // n1, d2 // n2
    x = x.reshape(b, n0, p0, n1, p1, n2, p2)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, n0, n1, n2, p0, p1, p2)
    return x.reshape(b, n0 * n1 * n2, p0 * p1 * p2)  # (B, N, P)


def unpatchify(tokens: Tensor, grid: Sequence[int], patch: Sequence[int]) -> Tensor:
    """Put patch tokens back together into voxel grids; the exact inverse of :func:`patchify`.

    Arguments:
        tokens: one token per patch, ordered as :func:`patchify` returns them.  # (B, N, P)
        grid: voxels per axis ``(D0, D1, D2)``.
        patch: voxels per patch along each axis ``(p0, p1, p2)``.

    Returns:
        ``(B, D0, D1, D2)``.

    Raises:
        InputError: ``grid`` / ``patch`` are invalid (see :func:`check_patch_size`), or
            ``tokens`` is not 3-D or its ``N`` / ``P`` do not match them (key ``"tokens"``).
    """
    n0, n1, n2 = check_patch_size(grid, patch)
    d0, d1, d2 = (int(v) for v in grid)
    p0, p1, p2 = d0 // n0, d1 // n1, d2 // n2
    n, p = n0 * n1 * n2, p0 * p1 * p2
    if tokens.ndim != 3 or tokens.shape[1] != n or tokens.shape[2] != p:
        raise InputError(
            f"tokens of shape {tuple(tokens.shape)} for grid {(d0, d1, d2)} "
            f"and patch size {(p0, p1, p2)}",
            key="tokens",
            expected=f"(B, {n}, {p})",
        )
    b = tokens.shape[0]
    x = tokens.reshape(b, n0, n1, n2, p0, p1, p2)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, n0, p0, n1, p1, n2, p2)
    return x.reshape(b, d0, d1, d2)  # (B, D0, D1, D2)


def sincos_1d(positions: Tensor, dim: int, *, period: int | None = None) -> Tensor:
    """Sine-cosine encoding of scalar positions: ``[sin(w p), cos(w p)]``.

    Without ``period`` the frequencies are ``w_i = 1 / 10000^(2 i / dim)`` for
    ``i = 0 .. dim/2 - 1`` (Vaswani et al.). With ``period`` (an axis that closes on itself,
    such as phi) they are ``w_k = 2 pi k / period`` for ``k = 1 .. dim/2``, so that position
    ``period`` encodes like position 0; the lowest frequency (``k = 1``) alone already gives
    distinct codes to the integer positions ``0 .. period - 1``.

    Arguments:
        positions: positions, integer or float.  # (N,)
        dim: width of the encoding; positive and even.
        period: roll-over of the positions, if any; positive.

    Returns:
        ``(N, dim)``: the first ``dim/2`` columns are sines, the last ``dim/2`` cosines; float
        dtype of ``positions`` (the default dtype for integer positions), computed in float64.

    Raises:
        InputError: ``positions`` is not 1-D (key ``"positions"``), ``dim`` is not positive and
            even (key ``"dim"``) or ``period`` is not positive (key ``"period"``).

    References:
        Vaswani et al., "Attention Is All You Need", arXiv:1706.03762.
    """
    if positions.ndim != 1:
        raise InputError(
            f"positions of shape {tuple(positions.shape)}", key="positions", expected="(N,)"
        )
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise InputError(f"dim={dim!r}", key="dim", expected="a positive even integer")
    half = dim // 2
    if period is None:
        freq = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64) * 2.0 / dim)  # (dim/2,)
    else:
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise InputError(f"period={period!r}", key="period", expected="a positive integer")
        freq = 2.0 * math.pi * torch.arange(1, half + 1, dtype=torch.float64) / period
    out_dtype = positions.dtype if positions.is_floating_point() else torch.get_default_dtype()
    arg = positions.to(torch.float64)[:, None] * freq.to(positions.device)  # (N, dim/2)
    return torch.cat([arg.sin(), arg.cos()], dim=-1).to(out_dtype)  # (N, dim)


def axis_dims(d_model: int) -> tuple[int, int, int]:
    """Split ``d_model`` channels into three even parts, one per grid axis, as equal as possible.

    The ``d_model / 2`` sine-cosine pairs are shared out equally; the one or two pairs left over
    go to the last axes, one each, e.g. ``128 -> (42, 42, 44)``, ``96 -> (32, 32, 32)`` and
    ``100 -> (32, 34, 34)``.

    Arguments:
        d_model: channels; even and at least 6.

    Returns:
        ``(d0, d1, d2)``, even, ``d0 <= d1 <= d2 <= d0 + 2``, summing to ``d_model``.

    Raises:
        InputError: ``d_model`` is odd or below 6 (key ``"d_model"``).
    """
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 6 or d_model % 2:
        raise InputError(
            f"d_model={d_model!r} cannot be split over three axes",
            key="d_model",
            expected="an even integer >= 6",
        )
    pairs, rest = divmod(d_model // 2, 3)
    d0 = 2 * pairs
    d1 = 2 * (pairs + (rest >= 2))
    d2 = 2 * (pairs + (rest >= 1))
    return d0, d1, d2


def _grid_concat(tables: Sequence[Tensor], tokens: tuple[int, int, int]) -> Tensor:
    """Concatenate per-axis tables ``(n_i, d_i)`` into one row per token, row-major order."""
    n0, n1, n2 = tokens
    t0, t1, t2 = tables
    parts = [
        t0[:, None, None, :].expand(n0, n1, n2, t0.shape[-1]),
        t1[None, :, None, :].expand(n0, n1, n2, t1.shape[-1]),
        t2[None, None, :, :].expand(n0, n1, n2, t2.shape[-1]),
    ]
    return torch.cat(parts, dim=-1).reshape(n0 * n1 * n2, -1)  # (N, d0 + d1 + d2)


class PatchPositions(nn.Module):
    """Positional encoding of a patch sequence on a 3-D grid of ``n0 x n1 x n2`` tokens.

    Tokens are in the row-major order of :func:`patchify`. Kinds:

    - ``"sincos-3d"``: per axis, :func:`sincos_1d` of the patch index with
      :func:`axis_dims` channels, concatenated in axis order (Raikwar et al., Fig. 1c); the axis
      ``periodic_axis``, when given, uses ``period=tokens[periodic_axis]``.
    - ``"sincos-1d"``: :func:`sincos_1d` of the flat token index.
    - ``"learned-1d"``: one learned ``(N, d_model)`` table.
    - ``"learned-3d"``: three learned tables ``(n_i, d_i)``, concatenated like ``"sincos-3d"``.
    - ``"none"``: zeros, for ablations.

    Fixed tables are non-persistent buffers (rebuilt at construction, not in the ``state_dict``)
    and follow ``.to()``; learned tables are parameters drawn from ``N(0, 0.02^2)`` with torch's
    global generator.

    Arguments:
        tokens: patches per axis ``(n0, n1, n2)``, e.g. from :func:`check_patch_size`.
        d_model: channels of the encoding; even (and at least 6 for the 3-D kinds).
        kind: one of :data:`POSITIONAL_ENCODINGS`.
        periodic_axis: axis (0, 1 or 2) whose patch index rolls over; only for ``"sincos-3d"``.

    Raises:
        InputError: unknown ``kind`` (key ``"positional_encoding"``), bad ``tokens`` (key
            ``"tokens"``), ``d_model`` unfit for the kind (key ``"d_model"``), or a
            ``periodic_axis`` outside 0..2 or given to another kind (key ``"periodic_axis"``).

    References:
        Raikwar et al., "Transformers for generalized fast shower simulation", arXiv:2312.09290.
    """

    def __init__(
        self,
        tokens: Sequence[int],
        d_model: int,
        kind: str = "sincos-3d",
        *,
        periodic_axis: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in POSITIONAL_ENCODINGS:
            raise InputError(
                f"unknown positional encoding {kind!r}",
                key="positional_encoding",
                expected=f"one of {', '.join(POSITIONAL_ENCODINGS)}",
            )
        self.tokens = _three_ints(tokens, name="tokens per axis", key="tokens")
        self.n_tokens = self.tokens[0] * self.tokens[1] * self.tokens[2]
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise InputError(f"d_model={d_model!r}", key="d_model", expected="a positive integer")
        if periodic_axis is not None:
            if kind != "sincos-3d":
                raise InputError(
                    f"periodic_axis={periodic_axis!r} with positional encoding {kind!r}",
                    key="periodic_axis",
                    expected="None unless the encoding is sincos-3d",
                )
            if isinstance(periodic_axis, bool) or periodic_axis not in (0, 1, 2):
                raise InputError(
                    f"periodic_axis={periodic_axis!r}",
                    key="periodic_axis",
                    expected="0, 1, 2 or None",
                )
        self.d_model = d_model
        self.kind = kind
        self.periodic_axis = periodic_axis
        self.dims: tuple[int, int, int] | None = None
        if kind in ("sincos-3d", "learned-3d"):
            self.dims = axis_dims(d_model)

        n = self.n_tokens
        if kind == "sincos-3d":
            assert self.dims is not None
            tables = [
                sincos_1d(
                    torch.arange(ni, dtype=torch.float64),
                    di,
                    period=ni if axis == periodic_axis else None,
                )
                for axis, (ni, di) in enumerate(zip(self.tokens, self.dims, strict=True))
            ]
            table = _grid_concat(tables, self.tokens).to(torch.get_default_dtype())
            self.register_buffer("table", table, persistent=False)  # (N, d_model)
        elif kind == "sincos-1d":
            if d_model % 2:
                raise InputError(
                    f"d_model={d_model} for positional encoding 'sincos-1d'",
                    key="d_model",
                    expected="an even integer",
                )
            table = sincos_1d(torch.arange(n, dtype=torch.float64), d_model)
            self.register_buffer("table", table.to(torch.get_default_dtype()), persistent=False)
        elif kind == "none":
            self.register_buffer("table", torch.zeros(n, d_model), persistent=False)
        elif kind == "learned-1d":
            self.table = nn.Parameter(torch.empty(n, d_model))  # (N, d_model)
        else:  # learned-3d
            assert self.dims is not None
            self.axis_tables = nn.ParameterList(
                nn.Parameter(torch.empty(ni, di))  # (n_i, d_i)
                for ni, di in zip(self.tokens, self.dims, strict=True)
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the learned tables again from ``N(0, 0.02^2)``; fixed kinds are left as they are."""
        for p in self.parameters():
            nn.init.normal_(p, mean=0.0, std=_LEARNED_STD)

    def forward(self) -> Tensor:
        """Return the encoding of every token.

        Returns:
            ``(N, d_model)`` in the dtype and on the device of the module's tables.
        """
        if self.kind == "learned-3d":
            return _grid_concat(list(self.axis_tables), self.tokens)  # (N, d_model)
        return self.table  # (N, d_model)

    def extra_repr(self) -> str:
        text = f"tokens={self.tokens}, d_model={self.d_model}, kind={self.kind!r}"
        if self.dims is not None:
            text += f", axis_dims={self.dims}"
        if self.periodic_axis is not None:
            text += f", periodic_axis={self.periodic_axis}"
        return text
