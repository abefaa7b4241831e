"""Self-attention restricted to points whose calorimeter layers differ by at most ``k`` (layer window).

A query point in layer ``l`` may attend to a key point in layer ``l'`` when ``|l - l'| <= k`` and
the key is a real point (not padding). ``window=None`` drops the layer restriction (padding only).
Padding queries attend to themselves only, so that every row of the attention matrix has at least
one allowed entry and the output stays finite on every backend (their output is meaningless and
must be ignored by the caller).

Two backends compute the same function:

* ``"dense"``: a boolean mask ``(B, 1, P, P)`` passed to
  :func:`torch.nn.functional.scaled_dot_product_attention`. Memory grows as ``P^2`` per shower;
  this is the CPU path and the reference.
* ``"flex"``: :func:`torch.nn.attention.flex_attention.flex_attention` with a ``BlockMask``
  built by ``create_block_mask`` from a ``mask_mod`` that reads per-batch layer and padding
  tensors. It is compiled with :func:`torch.compile` and used on CUDA (``"auto"``). On CPU the
  uncompiled FlexAttention materialises the full score matrix, warns and has no backward pass
  (torch 2.13), so ``"auto"`` picks ``"dense"`` there; ``"flex"`` can still be forced on CPU
  for inference (e.g. to compare the two paths).

Sorting the points of every shower by layer (padding last), see :func:`sort_by_layer`, makes
the allowed region a band around the diagonal: FlexAttention then skips every
``BLOCK_SIZE x BLOCK_SIZE`` tile that lies entirely outside the band, and the cost grows with
``P * (points in 2k + 1 layers)`` rather than ``P^2``. Unsorted points give the same result,
only slower. The attention is permutation-equivariant, so sorting changes nothing but the order.
The compiled kernel is specialised to the sequence length at first and recompiled (with dynamic
shapes) when it changes; padding ``P`` up to a multiple of the block size (128) in the data
loader keeps the number of distinct shapes small.

References:
    Dong et al., "Flex Attention: A Programming Model for Generating Optimized Attention
    Kernels", arXiv:2412.05496; Vaswani et al., "Attention Is All You Need", arXiv:1706.03762;
    Buss et al., "PanShower: One model for all calorimeter showers" (seed document 004).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BACKENDS",
    "LayerWindowSelfAttention",
    "dense_layer_window_mask",
    "flex_available",
    "flex_layer_window_mask",
    "layer_window_attention",
    "layer_window_mask",
    "resolve_backend",
    "sort_by_layer",
]

BACKENDS = ("auto", "dense", "flex")
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
    """The backend actually used: ``"auto"`` -> ``"flex"`` on CUDA when available, else ``"dense"``.

    Arguments:
        backend: ``"auto"``, ``"dense"`` or ``"flex"``.
        device: where the attention runs.

    Returns:
        ``"dense"`` or ``"flex"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "flex" if torch.device(device).type == "cuda" and flex_available() else "dense"
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


def layer_window_mask(
    layer: Tensor, valid: Tensor, window: int | None, *, backend: str = "auto",
) -> Any:
    """The layer-window mask for ``backend``: a dense bool tensor or a FlexAttention BlockMask.

    Build it once per batch and pass it to every attention layer (building a BlockMask costs
    about as much as one attention call).

    Arguments:
        layer: layer of every point.  # (B, P) integer
        valid: True for real points.  # (B, P) bool
        window: largest allowed layer distance; None: no limit.
        backend: ``"auto"`` (flex on CUDA, dense elsewhere), ``"dense"`` or ``"flex"``.

    Returns:
        ``(B, 1, P, P)`` bool tensor (dense) or a ``BlockMask`` (flex).
    """
    if resolve_backend(backend, layer.device) == "flex":
        return flex_layer_window_mask(layer, valid, window)
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
        mask: dense ``(B, 1, P, P)`` bool tensor, or a ``BlockMask``.

    Returns:
        ``(B, H, P, D)``. FlexAttention is compiled on CUDA and run eagerly elsewhere.
    """
    if isinstance(mask, Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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


class LayerWindowSelfAttention(nn.Module):
    """Multi-head self-attention over points, masked by a layer-window mask.

    Same parameters as :class:`showerformer.nn.attention.SelfAttention` (bias-free ``qkv`` and
    ``proj``, ``4 d^2``); the mask comes from :func:`layer_window_mask`.

    Arguments:
        d_model: channels ``d``.
        n_heads: heads; ``d`` must be divisible by it.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, mask: Any) -> Tensor:
        """Arguments: points ``x`` (B, P, C) and a mask from :func:`layer_window_mask`.
        Returns ``(B, P, C)``."""
        b, p, c = x.shape
        qkv = self.qkv(x).view(b, p, 3, self.n_heads, c // self.n_heads)  # (B, P, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, P, D)
        y = layer_window_attention(q, k, v, mask)  # (B, H, P, D)
        return self.proj(y.transpose(1, 2).reshape(b, p, c))  # (B, P, C)
