"""Self-attention restricted to points whose calorimeter layers differ by at most ``k`` (layer window).

A query point in layer ``l`` may attend to a key point in layer ``l'`` when ``|l - l'| <= k`` and
the key is a real point (not padding). ``window=None`` drops the layer restriction (padding only).
Every row of the attention matrix keeps at least one allowed entry, so the output stays finite
on every backend; the output of padding queries is meaningless and must be ignored by the caller.

Three backends compute the same function on the real queries:

* ``"dense"``: a boolean mask ``(B, 1, P, P)`` passed to
  :func:`torch.nn.functional.scaled_dot_product_attention`; padding queries attend to
  themselves. Memory grows as ``B * P^2``; this is the reference.
* ``"blocked"``: the queries of every shower, sorted by layer, are cut into tiles of ``T``
  (128) points. The keys a tile may see lie in one contiguous range of the sorted points (the
  real points whose layer is within ``k`` of the tile's lowest and highest layer); the range is
  gathered with a length ``K`` (the span rounded up to about four lengths per factor of two;
  tiles of equal ``K`` share one SDPA call) and SDPA runs on ``(tiles, H, T, D)`` queries and
  ``(tiles, H, K, D)`` keys under a ``(tiles, 1, T, K)`` boolean mask. Memory and work grow as
  ``B * P * K`` instead of ``B * P^2``, where ``K`` is about the number of points in ``2k + 1``
  layers plus those of the layers a tile spans; the gathered keys and values
  (``2 B P (K / T) H D`` numbers) are the largest part for big showers. Plain PyTorch,
  differentiable, any device: the default on the CPU (``"auto"``). Unsorted points are sorted
  internally and the output comes back in the input order (gathers of ``q``, ``k``, ``v`` and
  of the output), so sorting by layer beforehand only saves the sort.
* ``"flex"``: :func:`torch.nn.attention.flex_attention.flex_attention` with a ``BlockMask``
  built by ``create_block_mask`` from a ``mask_mod`` that reads per-batch layer and padding
  tensors. It is compiled with :func:`torch.compile` and used on CUDA (``"auto"``). On CPU the
  uncompiled FlexAttention materialises the full score matrix, warns and has no backward pass
  (torch 2.13); ``"flex"`` can still be forced on CPU for inference (e.g. to compare paths).

Sorting the points of every shower by layer (padding last), see :func:`sort_by_layer`, makes
the allowed region a band around the diagonal: FlexAttention then skips every
``BLOCK_SIZE x BLOCK_SIZE`` tile that lies entirely outside the band, and the cost grows with
``P * (points in 2k + 1 layers)`` rather than ``P^2``. Unsorted points give the same result,
only slower (flex) or after an internal sort (blocked). The attention is
permutation-equivariant, so sorting changes nothing but the order. The compiled kernel is
specialised to the sequence length at first and recompiled (with dynamic shapes) when it
changes; padding ``P`` up to a multiple of the block size (128) in the data loader keeps the
number of distinct shapes small. The blocked backend rounds ``K`` to a few lengths (multiples
of 16, at most 25 % above a tile's span), which bounds the number of SDPA calls per batch;
tiles made only of padding cost ``T x 16`` scores.

References:
    Dong et al., "Flex Attention: A Programming Model for Generating Optimized Attention
    Kernels", arXiv:2412.05496; Vaswani et al., "Attention Is All You Need", arXiv:1706.03762;
    Buss et al., "PanShower: One model for all calorimeter showers" (seed document 004).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from showerformer.nn.attention import SelfAttention

__all__ = [
    "BACKENDS",
    "BlockedLayerWindowMask",
    "BlockedTileGroup",
    "LayerWindowSelfAttention",
    "blocked_attention",
    "blocked_layer_window_mask",
    "dense_layer_window_mask",
    "flex_available",
    "flex_layer_window_mask",
    "layer_window_attention",
    "layer_window_mask",
    "resolve_backend",
    "sort_by_layer",
]

BACKENDS = ("auto", "dense", "blocked", "flex")
"""Accepted values of the ``backend`` arguments."""

_COMPILED_FLEX: Callable[..., Tensor] | None = None


def flex_available() -> bool:
    """Whether this torch build ships FlexAttention (``torch.nn.attention.flex_attention``)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend actually used: ``"auto"`` -> ``"flex"`` on CUDA when available, else ``"blocked"``.

    Arguments:
        backend: ``"auto"``, ``"dense"``, ``"blocked"`` or ``"flex"``.
        device: where the attention runs.

    Returns:
        ``"dense"``, ``"blocked"`` or ``"flex"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "flex" if torch.device(device).type == "cuda" and flex_available() else "blocked"
    if backend == "flex" and not flex_available():
        raise RuntimeError("this torch build has no torch.nn.attention.flex_attention")
    return backend


def _check(layer: Tensor, valid: Tensor, window: int | None) -> None:
    if layer.ndim != 2 or valid.shape != layer.shape:
        raise ValueError(f"layer {tuple(layer.shape)} and valid {tuple(valid.shape)}: expected "
                         "two (B, P) tensors")
    if window is not None and int(window) < 0:
        raise ValueError(f"layer window {window}: expected a non-negative integer or None")


def dense_layer_window_mask(layer: Tensor, valid: Tensor, window: int | None) -> Tensor:
    """Boolean attention mask of the layer window, for ``scaled_dot_product_attention``.

    Arguments:
        layer: calorimeter layer of every point.  # (B, P) integer
        valid: True for real points, False for padding.  # (B, P) bool
        window: largest allowed layer distance ``k`` (0: same layer only); None: no limit.

    Returns:
        ``(B, 1, P, P)`` bool, True where query ``i`` may attend to key ``j``:
        ``(valid_i and valid_j and |layer_i - layer_j| <= k) or (not valid_i and i == j)``.
    """
    _check(layer, valid, window)
    allowed = valid[:, :, None] & valid[:, None, :]  # (B, P, P), real query and real key
    if window is not None:
        dist = (layer[:, :, None] - layer[:, None, :]).abs()  # (B, P, P)
        allowed = allowed & (dist <= int(window))
    eye = torch.eye(layer.shape[1], dtype=torch.bool, device=layer.device)  # (P, P)
    allowed = allowed | (eye & ~valid[:, :, None])  # padding queries see themselves only
    return allowed[:, None]  # (B, 1, P, P)


def flex_layer_window_mask(
    layer: Tensor, valid: Tensor, window: int | None, *, block_size: int = 128,
) -> Any:
    """FlexAttention ``BlockMask`` of the layer window (same semantics as the dense mask).

    Arguments:
        layer: calorimeter layer of every point.  # (B, P) integer
        valid: True for real points.  # (B, P) bool
        window: largest allowed layer distance ``k``; None: no limit.
        block_size: tile size of the block-sparse mask (FlexAttention's ``BLOCK_SIZE``).

    Returns:
        A ``torch.nn.attention.flex_attention.BlockMask`` for ``(B, any heads, P, P)``. On CUDA
        the mask is built with the compiled ``create_block_mask`` (no ``P^2`` tensor in memory).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    _check(layer, valid, window)
    layer = layer.to(torch.int32)
    k = -1 if window is None else int(window)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        real_q = valid[b, q_idx]
        ok = real_q & valid[b, kv_idx]
        if k >= 0:
            ok = ok & ((layer[b, q_idx] - layer[b, kv_idx]).abs() <= k)
        return ok | (~real_q & (q_idx == kv_idx))

    b, p = layer.shape
    return create_block_mask(mask_mod, b, None, p, p, device=layer.device, BLOCK_SIZE=block_size,
                             _compile=layer.device.type == "cuda")


@dataclass(frozen=True, eq=False)
class BlockedTileGroup:
    """Tiles of a :class:`BlockedLayerWindowMask` that share one key length ``K``.

    Attributes:
        allowed: True where a query slot may attend to a gathered key.  # (n, 1, T, K) bool
        key_index: rows of the flattened keys ``(B * P, H, D)``, ``K`` per tile.  # (n * K,) int64
        query_index: rows of the flattened queries ``(B * P, H, D)``, ``T`` per tile (slots
            past the last point read row 0).  # (n * T,) int64
    """

    allowed: Tensor
    key_index: Tensor
    query_index: Tensor

    @property
    def n_keys(self) -> int:
        """Keys per tile ``K``."""
        return int(self.allowed.shape[-1])


@dataclass(frozen=True, eq=False)
class BlockedLayerWindowMask:
    """Layer-window mask of the ``"blocked"`` backend (see :func:`blocked_layer_window_mask`).

    The ``B * P`` queries, in layer order, form ``B * n_tiles`` tiles of ``block_size`` query
    slots; the tiles are split into groups of equal key length, one SDPA call each.

    Attributes:
        groups: the tile groups, by increasing key length.
        output_index: row of every input point ``(b, i)`` (row ``b * P + i``) among the query
            slots of all groups, concatenated in group order.  # (B * P,) int64
        batch: showers ``B``.
        n_points: points per shower ``P``.
        block_size: query slots per tile ``T``.
        n_tiles: tiles per shower, ``ceil(P / T)``.
    """

    groups: tuple[BlockedTileGroup, ...]
    output_index: Tensor
    batch: int
    n_points: int
    block_size: int
    n_tiles: int

    @property
    def n_keys(self) -> int:
        """Largest key length ``K`` of the groups (0 without tiles)."""
        return max((g.n_keys for g in self.groups), default=0)

    @property
    def scored_pairs(self) -> int:
        """Query-key pairs whose score is computed (per head): ``sum n * T * K`` over groups."""
        return sum(g.allowed.numel() for g in self.groups)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held (masks and gather indices)."""
        parts = [self.output_index]
        for g in self.groups:
            parts += [g.allowed, g.key_index, g.query_index]
        return sum(t.nbytes for t in parts)


def _key_lengths(span: list[int], multiple: int, group: bool) -> list[int]:
    """Key length of every tile: its span rounded up to a multiple of ``multiple`` and, when
    grouping, to ``m * 2^e`` with ``m`` in 4..7 (at most 25 % more keys, about 4 lengths per
    factor of two); without grouping the longest for every tile."""
    def level(s: int) -> int:
        c = -(-max(s, 1) // multiple)
        if group and c > 8:
            e = 1 << (c.bit_length() - 3)
            c = -(-c // e) * e
        return c * multiple

    if not group:
        return [level(max(span, default=1))] * len(span)
    return [level(s) for s in span]


def blocked_layer_window_mask(
    layer: Tensor, valid: Tensor, window: int | None, *, block_size: int = 128,
    key_multiple: int = 16, group_tiles: bool = True,
) -> BlockedLayerWindowMask:
    """Tiled layer-window mask: for every tile of ``T`` queries, the contiguous range of keys it may see.

    In the order of :func:`sort_by_layer` the real keys a real query in layer ``l`` may see
    form the range ``[lo, hi)`` of sorted positions whose layer lies in ``[l - k, l + k]``
    (``searchsorted``). A tile of consecutive queries needs the union of their ranges, again
    one range ``[start, end)``; it is gathered with a fixed length ``K >= end - start`` and the
    mask keeps, for every query, its own range only. ``K`` is the span rounded up to a multiple
    of ``key_multiple`` and to one of about four lengths per factor of two, and the tiles of
    one ``K`` form a group (``group_tiles``); without grouping every tile gets the longest
    span of the batch, which wastes work on the tiles far from the shower maximum. Padding
    queries (and tiles without a real query) see the first gathered key, so no row is empty.
    Unsorted points are sorted here (stable, padding last); the gather indices include the
    permutation, so the output comes back in the input order.

    Arguments:
        layer: calorimeter layer of every point.  # (B, P) integer
        valid: True for real points, False for padding (whatever their layer).  # (B, P) bool
        window: largest allowed layer distance ``k`` (0: same layer only); None: no limit.
        block_size: query slots per tile ``T`` (``P`` when ``P < T``).
        key_multiple: every ``K`` is a multiple of this.
        group_tiles: one group per key length (True) or a single group with the longest.

    Returns:
        :class:`BlockedLayerWindowMask`: about ``B * P * K`` mask entries instead of
        ``B * P^2``, plus ``int64`` gather indices of ``B * P * (1 + 1 + K / T)`` entries.
    """
    _check(layer, valid, window)
    if block_size < 1 or key_multiple < 1:
        raise ValueError(f"block_size={block_size}, key_multiple={key_multiple}: expected "
                         "positive integers")
    b, p = layer.shape
    dev = layer.device
    valid = valid.bool()
    # sort key: the layer of real points, +inf-like for padding (padding last)
    big = torch.iinfo(torch.int64).max
    key = torch.where(valid, layer.long(), torch.full_like(layer, big, dtype=torch.long))  # (B, P)
    order = torch.arange(p, device=dev).expand(b, p)  # (B, P) sorted position -> input position
    if p > 1 and not bool((key[:, 1:] >= key[:, :-1]).all()):
        order = torch.sort(key, dim=1, stable=True).indices
        key = key.gather(1, order)
        valid = valid.gather(1, order)
    n_real = valid.sum(dim=1)  # (B,)

    # allowed key range [lo, hi) of every real query, in sorted positions
    if window is None:
        lo = torch.zeros(b, p, dtype=torch.long, device=dev)
        hi = n_real[:, None].expand(b, p)
    else:
        k = int(window)
        layer_s = torch.where(valid, key, torch.zeros_like(key))  # (B, P), no overflow below
        lo = torch.searchsorted(key, layer_s - k, right=False)  # (B, P)
        hi = torch.searchsorted(key, layer_s + k, right=True)  # (B, P)

    # tiles of T query slots; slots past P are padding queries
    t = max(1, min(block_size, p))
    n_tiles = -(-p // t)
    extra = n_tiles * t - p
    lo, hi = F.pad(lo, (0, extra)), F.pad(hi, (0, extra))
    real_q = F.pad(valid, (0, extra), value=False)
    rows = torch.arange(b, device=dev)[:, None] * p  # (B, 1) first row of every shower
    query_rows = F.pad(order + rows, (0, extra))  # (B, nT * T) input row of every slot
    lo, hi, real_q = (x.reshape(b * n_tiles, t) for x in (lo, hi, real_q))  # (n, T) each
    query_rows = query_rows.reshape(b * n_tiles, t)
    any_real = real_q.any(dim=-1)  # (n,)
    start = torch.where(real_q, lo, torch.full_like(lo, big)).amin(dim=-1)  # (n,)
    end = torch.where(real_q, hi, torch.full_like(hi, -1)).amax(dim=-1)  # (n,)
    start = torch.where(any_real, start, torch.zeros_like(start))
    end = torch.where(any_real, end, start + 1)
    # padding queries see the first gathered key only
    lo = torch.where(real_q, lo, start[:, None])
    hi = torch.where(real_q, hi, start[:, None] + 1)

    lengths = _key_lengths((end - start).tolist(), key_multiple, group_tiles)
    groups = []
    tile_order = []
    for n_keys in sorted(set(lengths)):
        tiles = torch.tensor([i for i, n in enumerate(lengths) if n == n_keys], device=dev)
        n_keys = min(n_keys, p)  # every span is at most P
        pos = start[tiles, None] + torch.arange(n_keys, device=dev)  # (n_g, K) sorted positions
        pos_q = pos[:, None, :]  # (n_g, 1, K)
        allowed = pos_q >= lo[tiles, :, None]  # (n_g, T, K)
        allowed &= pos_q < hi[tiles, :, None]
        shower = tiles // n_tiles  # (n_g,)
        key_rows = order[shower[:, None], pos.clamp_max(p - 1)] + rows[shower]  # (n_g, K)
        groups.append(BlockedTileGroup(allowed=allowed[:, None], key_index=key_rows.reshape(-1),
                                       query_index=query_rows[tiles].reshape(-1)))
        tile_order.append(tiles)
    # output: slot of every input point among the concatenated query slots of the groups
    tile_row = torch.empty(b * n_tiles, dtype=torch.long, device=dev)
    if tile_order:
        tiles = torch.cat(tile_order)
        tile_row[tiles] = torch.arange(len(tiles), device=dev)
    slot = torch.arange(p, device=dev)  # (P,) sorted position
    slot_rows = (tile_row.view(b, n_tiles)[:, slot // t] * t + slot % t)  # (B, P) by sorted pos
    output_index = torch.empty(b, p, dtype=torch.long, device=dev)
    output_index.scatter_(1, order.contiguous(), slot_rows)  # input position -> row
    return BlockedLayerWindowMask(groups=tuple(groups), output_index=output_index.reshape(-1),
                                  batch=b, n_points=p, block_size=t, n_tiles=n_tiles)


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, mask: BlockedLayerWindowMask) -> Tensor:
    """Scaled dot-product attention tile by tile under a :class:`BlockedLayerWindowMask`.

    Arguments:
        q, k, v: queries, keys and values.  # (B, H, P, D) each
        mask: from :func:`blocked_layer_window_mask` for the same ``B`` and ``P``.

    Returns:
        ``(B, H, P, D)`` (a transposed view of a ``(B, P, H, D)`` tensor).
    """
    b, h, p, d = q.shape
    if (b, p) != (mask.batch, mask.n_points) or k.shape[:3] != (b, h, p):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} do not match a blocked mask "
                         f"for B={mask.batch}, P={mask.n_points}")
    if not mask.groups:
        return q.new_zeros(b, h, p, v.shape[-1])
    t, dv = mask.block_size, v.shape[-1]
    q_rows = q.transpose(1, 2).reshape(b * p, h, d)  # (B * P, H, D)
    k_rows = k.transpose(1, 2).reshape(b * p, h, d)
    v_rows = v.transpose(1, 2).reshape(b * p, h, dv)
    outs = []
    for g in mask.groups:
        n, nk = g.allowed.shape[0], g.n_keys
        q_t = q_rows.index_select(0, g.query_index).view(n, t, h, d).transpose(1, 2)  # (n, H, T, D)
        k_t = k_rows.index_select(0, g.key_index).view(n, nk, h, d).transpose(1, 2)  # (n, H, K, D)
        v_t = v_rows.index_select(0, g.key_index).view(n, nk, h, dv).transpose(1, 2)
        out = F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask=g.allowed)  # (n, H, T, Dv)
        outs.append(out.transpose(1, 2).reshape(n * t, h, dv))
    slots = outs[0] if len(outs) == 1 else torch.cat(outs)  # (B * nT * T, H, Dv)
    return slots.index_select(0, mask.output_index).view(b, p, h, dv).transpose(1, 2)


def layer_window_mask(
    layer: Tensor, valid: Tensor, window: int | None, *, backend: str = "auto",
    block_size: int = 128,
) -> Any:
    """The layer-window mask for ``backend``: a dense bool tensor, a blocked mask or a BlockMask.

    Build it once per batch and pass it to every attention layer (building a BlockMask costs
    about as much as one attention call).

    Arguments:
        layer: layer of every point.  # (B, P) integer
        valid: True for real points.  # (B, P) bool
        window: largest allowed layer distance; None: no limit.
        backend: ``"auto"`` (flex on CUDA, blocked elsewhere), ``"dense"``, ``"blocked"`` or
            ``"flex"``.
        block_size: tile size of the blocked and flex backends.

    Returns:
        ``(B, 1, P, P)`` bool tensor (dense), :class:`BlockedLayerWindowMask` (blocked) or a
        ``BlockMask`` (flex).
    """
    chosen = resolve_backend(backend, layer.device)
    if chosen == "flex":
        return flex_layer_window_mask(layer, valid, window, block_size=block_size)
    if chosen == "blocked":
        return blocked_layer_window_mask(layer, valid, window, block_size=block_size)
    return dense_layer_window_mask(layer, valid, window)


def _flex() -> Callable[..., Tensor]:
    """FlexAttention, compiled once per process (the fused kernel needs torch.compile)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED_FLEX = torch.compile(flex_attention)
    return _COMPILED_FLEX


def layer_window_attention(q: Tensor, k: Tensor, v: Tensor, mask: Any) -> Tensor:
    """Scaled dot-product attention under a mask from :func:`layer_window_mask`.

    Arguments:
        q, k, v: queries, keys and values.  # (B, H, P, D) each
        mask: dense ``(B, 1, P, P)`` bool tensor, :class:`BlockedLayerWindowMask`, a
            ``BlockMask``, or None for full attention over all ``P`` points (padding included).

    Returns:
        ``(B, H, P, D)``. FlexAttention is compiled on CUDA and run eagerly elsewhere.
    """
    if mask is None or isinstance(mask, Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if isinstance(mask, BlockedLayerWindowMask):
        return blocked_attention(q, k, v, mask)
    if q.device.type == "cuda":
        return _flex()(q, k, v, block_mask=mask)
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=mask)  # type: ignore[return-value]


def sort_by_layer(layer: Tensor, valid: Tensor) -> Tensor:
    """Per-shower order that puts the real points by increasing layer first and padding last.

    Arguments:
        layer: layer of every point.  # (B, P) integer
        valid: True for real points.  # (B, P) bool

    Returns:
        ``(B, P)`` int64 indices; ``x.gather(1, idx[..., None].expand_as(x))`` sorts ``x``.
        The sort is stable, so points of one layer keep their order.
    """
    big = int(layer.max().item()) + 1 if layer.numel() else 1
    key = torch.where(valid, layer.long(), torch.full_like(layer, big, dtype=torch.long))
    return torch.sort(key, dim=1, stable=True).indices  # (B, P)


class LayerWindowSelfAttention(SelfAttention):
    """Multi-head self-attention over points, masked by a layer-window mask.

    The parameters of :class:`showerformer.nn.attention.SelfAttention` (bias-free ``qkv`` and
    ``proj``, ``4 d^2``); the mask comes from :func:`layer_window_mask`.

    Arguments:
        d_model: channels ``d``.
        n_heads: heads; ``d`` must be divisible by it.
    """

    def forward(self, x: Tensor, mask: Any) -> Tensor:  # type: ignore[override]
        """Arguments: points ``x`` (B, P, C) and a mask from :func:`layer_window_mask`.
        Returns ``(B, P, C)``."""
        b, p, c = x.shape
        qkv = self.qkv(x).view(b, p, 3, self.n_heads, c // self.n_heads)  # (B, P, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, P, D)
        y = layer_window_attention(q, k, v, mask)  # (B, H, P, D)
        return self.proj(y.transpose(1, 2).reshape(b, p, c))  # (B, P, C)
