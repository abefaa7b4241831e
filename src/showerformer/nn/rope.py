"""Three-dimensional rotary position embedding (RoPE) for tokens on a voxel grid."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RotaryEmbedding3D", "apply_rotary", "grid_positions"]


def grid_positions(size: int, *, centered: bool = True, device: torch.device | None = None) -> Tensor:
    """Integer coordinates of a ``size^3`` cube of tokens in (z, y, x) raster order.

    Arguments:
        size: tokens per axis.
        centered: subtract ``(size - 1) / 2`` so that the cube centre is the origin.
        device: where to put the result.

    Returns:
        Positions ``(size^3, 3)`` in float32, the last axis ordered (z, y, x); token ``i`` is
        ``(i // size^2, (i // size) % size, i % size)`` (minus the centre when ``centered``).
    """
    axis = torch.arange(size, dtype=torch.float32, device=device)  # (S,)
    if centered:
        axis = axis - (size - 1) / 2.0
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")  # 3 x (S, S, S)
    return torch.stack([zz, yy, xx], dim=-1).reshape(-1, 3)  # (S^3, 3)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs of channels ``(i, i + D/2)`` of ``x`` by the angles behind ``cos``/``sin``.

    Arguments:
        x: queries or keys.  # (B, H, N, D)
        cos: cosines of the angles.  # (N, D/2), or broadcastable to (B, H, N, D/2)
        sin: sines of the angles.  # same shape as cos

    Returns:
        The rotated tensor, same shape and dtype as ``x`` (the rotation runs in float32).
    """
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]  # (B, H, N, D/2) each
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, N, D)
    return out.to(x.dtype)


class RotaryEmbedding3D(nn.Module):
    """Angles of a 3D rotary embedding: one third of the channel pairs per axis (z, y, x).

    The head dimension ``D`` is split into ``D/2`` rotation pairs; pairs ``[0, D/6)`` turn with the
    z coordinate, ``[D/6, D/3)`` with y and ``[D/3, D/2)`` with x, at frequencies
    ``base^(-k / (D/6))`` for ``k = 0 .. D/6 - 1``. After rotating queries at positions ``p`` and
    keys at positions ``p'`` the logit ``q . k`` depends on ``p - p'`` only. A token at the origin
    is not rotated at all (all angles zero), which is how a CLS token is placed "at the centre".

    Arguments:
        head_dim: channels per attention head; must be divisible by 6.
        base: frequency base. Token grids here span a few positions, so the default (10) is far
            smaller than the 10,000 used for long text sequences.

    References:
        Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
        arXiv:2104.09864; Heo et al., "Rotary Position Embedding for Vision Transformer",
        arXiv:2403.13298 (axial multi-dimensional RoPE).
    """

    def __init__(self, head_dim: int, base: float = 10.0) -> None:
        super().__init__()
        if head_dim % 6 != 0:
            raise ValueError(f"3D RoPE needs a head dimension divisible by 6, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)
        per_axis = head_dim // 6
        inv_freq = self.base ** (-torch.arange(per_axis, dtype=torch.float32) / per_axis)  # (D/6,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Cosines and sines for tokens at ``positions``.

        Arguments:
            positions: coordinates (z, y, x) in token units.  # (..., N, 3)

        Returns:
            ``(cos, sin)``, each ``(..., N, head_dim / 2)`` in float32, for :func:`apply_rotary`.
        """
        pos = positions.to(torch.float32)  # (..., N, 3)
        freq = self.inv_freq.to(pos.device)  # (D/6,)
        angles = (pos[..., :, None] * freq).flatten(-2)  # (..., N, 3 * D/6) = (..., N, D/2)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
