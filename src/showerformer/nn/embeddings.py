"""Embeddings of scalar conditions: Gaussian Fourier features and the unit direction vector."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GaussianFourierFeatures", "direction_vector"]


class GaussianFourierFeatures(nn.Module):
    """Random Fourier features of a scalar: ``[s, sin(2 pi b s), cos(2 pi b s)]`` with fixed
    frequencies ``b ~ N(0, std^2)``.

    The frequencies are drawn from torch's global generator at construction and stored as a
    persistent buffer, so they travel with the ``state_dict``.

    Arguments:
        n_features: number of sine plus cosine features (even).
        std: standard deviation of the frequencies; larger values resolve finer detail of ``s``.
        include_input: also return ``s`` itself as the first feature.

    References:
        Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions in Low
        Dimensional Domains", arXiv:2006.10739.
    """

    def __init__(self, n_features: int, std: float = 1.0, include_input: bool = True) -> None:
        super().__init__()
        if n_features < 2 or n_features % 2:
            raise ValueError(f"n_features={n_features}: expected a positive even number")
        self.include_input = include_input
        self.register_buffer("freq", torch.randn(n_features // 2) * float(std))  # (F/2,)

    @property
    def out_features(self) -> int:
        """Width of the output."""
        return 2 * self.freq.numel() + int(self.include_input)

    def forward(self, s: Tensor) -> Tensor:  # (...,) -> (..., out_features)
        arg = 2.0 * math.pi * s[..., None].float() * self.freq.float()  # (..., F/2)
        parts = [arg.sin(), arg.cos()]
        if self.include_input:
            parts.insert(0, s[..., None].float())
        return torch.cat(parts, dim=-1).to(s.dtype if s.is_floating_point() else torch.float32)


def direction_vector(theta: Tensor, phi: Tensor) -> Tensor:
    """Unit vector of the incident direction (the normalised momentum).

    Arguments:
        theta: polar angle in rad.  # (B,)
        phi: azimuthal angle in rad.  # (B,)

    Returns:
        ``(B, 3)`` = ``(sin theta cos phi, sin theta sin phi, cos theta)``.
    """
    st = torch.sin(theta)
    return torch.stack([st * torch.cos(phi), st * torch.sin(phi), torch.cos(theta)], dim=-1)
