"""Conditional flow matching on the rectified-flow (linear) path, with optional per-shower OT pairing.

Data ``x1`` and Gaussian noise ``x0`` are joined by the straight path
``x_t = (1 - t) x0 + t x1``, whose velocity ``dx_t/dt = x1 - x0`` is the regression target of a
network ``v(x_t, t, cond)``. Time runs from noise (t = 0) to data (t = 1), the convention of the
samplers in :mod:`showerformer.samplers`: integrating ``v`` from 0 to 1 turns noise into data.

Optimal-transport pairing (optional): inside each shower the noise points are permuted so that
the sum of squared distances to the data points is minimal (mini-batch OT restricted to one
shower's points, optionally to one layer's). For two equal-size point sets with uniform weights
the optimal transport plan is a permutation (Birkhoff-von Neumann), so the exact solution is a
linear assignment: :func:`scipy.optimize.linear_sum_assignment` (the default ``backend="scipy"``,
no extra dependency) and POT's ``ot.emd`` (``backend="pot"``, lazily imported) give the same
pairing. The cost is ``O(n^3)`` per shower on the CPU; ``groups`` (e.g. the layer index) cuts it
to the sum over groups. Because the noise points are exchangeable, permuting them leaves the noise
distribution unchanged; the pairing only straightens the learned paths.

References:
    Lipman et al., "Flow Matching for Generative Modeling", arXiv:2210.02747;
    Liu et al., "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified
    Flow", arXiv:2209.03003; Tong et al., "Improving and generalizing flow-based generative
    models with minibatch optimal transport", arXiv:2302.00482; Esser et al. (logit-normal time
    sampling), arXiv:2403.03206; Flamary et al., "POT: Python Optimal Transport", JMLR 22 (2021).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from showerformer.errors import InputError, require

__all__ = [
    "OT_BACKENDS",
    "TIME_DISTRIBUTIONS",
    "PathSample",
    "flow_matching_loss",
    "linear_path",
    "masked_mse",
    "ot_pair",
    "ot_pairing_indices",
    "sample_path",
    "sample_time",
]

TIME_DISTRIBUTIONS = ("uniform", "logit-normal")
"""Training-time distributions accepted by :func:`sample_time`."""

OT_BACKENDS = ("scipy", "pot")
"""Exact assignment solvers accepted by :func:`ot_pairing_indices`."""

Velocity = Callable[[Tensor, Tensor, Any], Tensor]  # v(x, t, cond)


@dataclass
class PathSample:
    """One draw from the linear probability path.

    Attributes:
        x0: noise, the start of the path.  # (B, ...)
        x1: data, the end of the path.  # (B, ...)
        t: time of every sample, in [0, 1].  # (B,)
        x_t: the point on the path, ``(1 - t) x0 + t x1``.  # (B, ...)
        velocity: the target velocity ``x1 - x0``.  # (B, ...)
    """

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    velocity: Tensor


def sample_time(
    n: int,
    *,
    distribution: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Training times ``t`` in [0, 1].

    Arguments:
        n: how many.
        distribution: ``"uniform"`` (U(0, 1)) or ``"logit-normal"`` (``sigmoid(N(loc, scale^2))``,
            more weight in the middle of the path).
        loc, scale: parameters of the logit-normal distribution.
        generator: source of randomness (torch's global one when None).
        device, dtype: of the result.

    Returns:
        ``(n,)`` times.
    """
    if distribution == "uniform":
        return torch.rand(n, generator=generator, device=device, dtype=dtype)
    if distribution == "logit-normal":
        z = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(loc + scale * z)
    raise InputError(f"time distribution {distribution!r}", key="time_distribution",
                     expected=" or ".join(TIME_DISTRIBUTIONS))


def _expand_t(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)  # (B, 1, ..., 1)


def linear_path(x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
    """The rectified-flow path at time ``t``.

    Arguments:
        x0: noise.  # (B, ...)
        x1: data.  # (B, ...)
        t: times.  # (B,)

    Returns:
        :class:`PathSample` with ``x_t = (1 - t) x0 + t x1`` and ``velocity = x1 - x0``.
    """
    if x0.shape != x1.shape:
        raise ValueError(f"noise {tuple(x0.shape)} and data {tuple(x1.shape)} differ in shape")
    tt = _expand_t(t, x1)
    return PathSample(x0=x0, x1=x1, t=t, x_t=(1.0 - tt) * x0 + tt * x1, velocity=x1 - x0)


def _assignment(cost: np.ndarray, backend: str) -> np.ndarray:
    """Column assigned to every row of a square cost matrix (an exact minimum-cost matching)."""
    if backend == "scipy":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        out = np.empty(len(cost), dtype=np.int64)
        out[rows] = cols
        return out
    if backend == "pot":
        ot = require("ot", extra="ot", purpose="optimal-transport pairing with POT")
        n = len(cost)
        w = np.full(n, 1.0 / n)
        plan = ot.emd(w, w, np.ascontiguousarray(cost, dtype=np.float64))  # (n, n), a permutation / n
        return np.asarray(plan).argmax(axis=1).astype(np.int64)
    raise InputError(f"optimal-transport backend {backend!r}", key="ot_backend",
                     expected=" or ".join(OT_BACKENDS))


def ot_pairing_indices(
    x0: Tensor,
    x1: Tensor,
    mask: Tensor | None = None,
    *,
    groups: Tensor | None = None,
    backend: str = "scipy",
) -> Tensor:
    """Per-shower optimal pairing of noise points with data points (squared Euclidean cost).

    Arguments:
        x0: noise points.  # (B, P, F)
        x1: data points.  # (B, P, F)
        mask: True for real points; padding is never paired and keeps its place.  # (B, P) bool
        groups: pair only points of equal group id (e.g. the layer).  # (B, P) integer, optional
        backend: ``"scipy"`` (linear_sum_assignment) or ``"pot"`` (``ot.emd``); both exact.

    Returns:
        ``(B, P)`` int64 ``idx``, a permutation of the real points of every shower (and of every
        group), identity on padding, such that ``x0[b, idx[b, i]]`` is the noise point paired with
        data point ``x1[b, i]``; see :func:`ot_pair`.
    """
    if x0.shape != x1.shape or x0.ndim != 3:
        raise ValueError(f"noise {tuple(x0.shape)} and data {tuple(x1.shape)}: expected two "
                         "(B, P, F) tensors")
    b, p, _ = x1.shape
    a0 = x0.detach().to("cpu", torch.float64).numpy()
    a1 = x1.detach().to("cpu", torch.float64).numpy()
    valid = np.ones((b, p), bool) if mask is None else mask.detach().cpu().numpy().astype(bool)
    grp = None if groups is None else groups.detach().cpu().numpy()
    idx = np.tile(np.arange(p, dtype=np.int64), (b, 1))  # (B, P)
    for i in range(b):
        real = np.flatnonzero(valid[i])
        sets = [real] if grp is None else [real[grp[i, real] == g] for g in np.unique(grp[i, real])]
        for members in sets:
            if len(members) < 2:
                continue
            d = a1[i, members][:, None, :] - a0[i, members][None, :, :]  # (n, n, F)
            cols = _assignment(np.einsum("ijf,ijf->ij", d, d), backend)
            idx[i, members] = members[cols]
    return torch.as_tensor(idx, device=x1.device)


def ot_pair(
    x0: Tensor,
    x1: Tensor,
    mask: Tensor | None = None,
    *,
    groups: Tensor | None = None,
    backend: str = "scipy",
) -> Tensor:
    """Noise ``x0`` reordered within each shower to its optimal pairing with ``x1``.

    Arguments and backend: as in :func:`ot_pairing_indices`.

    Returns:
        ``(B, P, F)``: the same noise points per shower, in the paired order.
    """
    idx = ot_pairing_indices(x0, x1, mask, groups=groups, backend=backend)  # (B, P)
    return x0.gather(1, idx[..., None].expand_as(x0))


def sample_path(
    x1: Tensor,
    *,
    mask: Tensor | None = None,
    t: Tensor | None = None,
    time_distribution: str = "uniform",
    ot: bool = False,
    groups: Tensor | None = None,
    ot_backend: str = "scipy",
    generator: torch.Generator | None = None,
) -> PathSample:
    """Draw noise and times for data ``x1`` and return the point on the linear path.

    Arguments:
        x1: data.  # (B, ...); (B, P, F) when ``ot`` is True
        mask: True for real points; the noise of padding entries is zero.  # (B, P) bool
        t: times (drawn from ``time_distribution`` when None).  # (B,)
        time_distribution: see :func:`sample_time`.
        ot: pair noise and data points per shower by optimal transport.
        groups: restrict the pairing to equal group ids (e.g. the layer).  # (B, P)
        ot_backend: ``"scipy"`` or ``"pot"``.
        generator: source of randomness for noise and times.

    Returns:
        :class:`PathSample`.
    """
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    if mask is not None:
        x0 = x0 * mask.reshape(*mask.shape, *([1] * (x1.ndim - mask.ndim))).to(x1.dtype)
    if ot:
        x0 = ot_pair(x0, x1, mask, groups=groups, backend=ot_backend)
    if t is None:
        t = sample_time(x1.shape[0], distribution=time_distribution, generator=generator,
                        device=x1.device, dtype=x1.dtype)
    return linear_path(x0, x1, t)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over the real entries only (float32 accumulation).

    Arguments:
        pred, target: same shape.  # (B, P, F) or any (B, ...)
        mask: True for real points.  # (B, P) bool, broadcast over the trailing dimensions

    Returns:
        Scalar: sum of squared errors over real entries / number of real entries.
    """
    err = (pred.float() - target.float()).square()
    if mask is None:
        return err.mean()
    m = mask.reshape(*mask.shape, *([1] * (err.ndim - mask.ndim))).to(err.dtype).expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def flow_matching_loss(
    model: Velocity,
    x1: Tensor,
    *,
    cond: Mapping[str, Tensor] | Tensor | None = None,
    mask: Tensor | None = None,
    time_distribution: str = "uniform",
    ot: bool = False,
    groups: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Conditional flow-matching loss ``|v(x_t, t, cond) - (x1 - x0)|^2`` averaged over real entries.

    Arguments:
        model: the velocity field, called as ``model(x_t, t, cond)``.
        x1: data.  # (B, ...)
        cond: anything the model needs besides ``x_t`` and ``t``.
        mask, time_distribution, ot, groups, generator: see :func:`sample_path`.

    Returns:
        Scalar loss.
    """
    path = sample_path(x1, mask=mask, time_distribution=time_distribution, ot=ot, groups=groups,
                       generator=generator)
    return masked_mse(model(path.x_t, path.t, cond), path.velocity, mask)
