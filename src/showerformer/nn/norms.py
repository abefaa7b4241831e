"""Normalisation and residual-path regularisers: RMSNorm, LayerScale and DropPath."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DropPath", "LayerScale", "RMSNorm", "drop_path"]


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with a learned gain.

    ``y = x / sqrt(mean(x^2) + eps) * weight``; no mean subtraction and no bias. The statistic is
    computed in float32 whatever the input dtype (bf16 safe); the result has the input dtype.

    Arguments:
        dim: size of the last dimension.
        eps: added to the mean square.

    References:
        Zhang & Sennrich, "Root Mean Square Layer Normalization", arXiv:1910.07467.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # (C,)

    def forward(self, x: Tensor) -> Tensor:  # (..., C) -> (..., C)
        y = F.rms_norm(x.float(), (self.dim,), self.weight.float(), self.eps)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch, initialised small.

    With ``init = 1e-4`` every residual branch starts almost closed and opens during training.
    Its parameter is named ``gamma`` and is one-dimensional, so the usual ``ndim < 2`` rule exempts
    it from weight decay.

    Arguments:
        dim: number of channels (last dimension).
        init: initial value of every entry of ``gamma``.

    References:
        Touvron et al., "Going deeper with Image Transformers" (CaiT), arXiv:2103.17239.
    """

    def __init__(self, dim: int, init: float = 1e-4) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))  # (C,)

    def forward(self, x: Tensor) -> Tensor:  # (..., C) -> (..., C)
        return x * self.gamma.to(x.dtype)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero whole samples of a residual branch with probability ``p``; rescale the others.

    Arguments:
        x: branch output, the first dimension indexes samples.  # (N, ...)
        p: drop probability in [0, 1).
        training: identity when False or when ``p == 0``.

    Returns:
        ``x * keep / (1 - p)`` with ``keep`` one Bernoulli(1 - p) draw per sample, drawn from
        torch's global generator (seeded by the trainer with ``torch.manual_seed``).

    References:
        Huang et al., "Deep Networks with Stochastic Depth", arXiv:1603.09382.
    """
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (N, 1, ..., 1)
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of whole samples (see :func:`drop_path`).

    Arguments:
        p: drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must lie in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
