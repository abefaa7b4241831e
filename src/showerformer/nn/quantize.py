"""Vector quantization for VQ-VAE tokenizers: EMA codebook, dead-code restarts, straight-through."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.errors import InputError

__all__ = ["VQOutput", "VectorQuantizer"]

_CHUNK_ELEMENTS = 1 << 24  # distance-matrix entries per chunk (64 MiB in float32)


@dataclass(frozen=True)
class VQOutput:
    """What :meth:`VectorQuantizer.forward` returns.

    Attributes:
        quantized: the chosen codes in the dtype of the input, with the straight-through
            gradient ``d quantized / d z = 1``.  # (..., dim)
        indices: index of the chosen code of every vector.  # (...,) int64
        codebook_loss: ``mean ||sg[z] - e||^2``; carries a gradient to the codebook only when it
            is learned by gradient descent (``ema=False``); with ``ema=True`` it is a value to log.
        commitment_loss: ``mean ||z - sg[e]||^2``, the gradient that pulls the encoder towards its
            codes (weighted by ``beta`` in the VQ-VAE loss).
        perplexity: ``exp`` of the entropy of the batch's code usage: the effective number of codes
            in use (``n`` for ``n`` codes used equally often).  # () float
        usage: fraction of the codebook used at least once in the batch.  # () float
    """

    quantized: Tensor
    indices: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    perplexity: Tensor
    usage: Tensor


def _distributed() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def _no_autocast(device_type: str) -> Iterator[None]:
    """Switch autocast off for ``device_type`` (when it has autocast at all)."""
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def _mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference; 0 (not NaN) for empty inputs."""
    return (a - b).square().sum() / max(a.numel(), 1)


class VectorQuantizer(nn.Module):
    """Codebook of ``n_codes`` vectors of ``dim`` channels; maps every input vector to its nearest
    code (squared Euclidean distance, ties to the lowest index).

    The VQ-VAE loss is ``reconstruction + codebook_loss + beta * commitment_loss`` with
    ``codebook_loss = ||sg[z_e] - e||^2`` and ``commitment_loss = ||z_e - sg[e]||^2``. The output
    ``quantized = sg[e] + (z - sg[z])`` (the straight-through estimator ``z + sg[e - z]``, written
    so that its value is exactly the code, as :meth:`lookup` gives it) passes the decoder's
    gradient unchanged to the encoder and none to the codebook.

    Codebook learning:

    - ``ema=True`` (default): the codebook is a buffer ``embedding`` set, at every training
      forward, from exponential moving averages of the number of vectors assigned to each code
      (``cluster_size``) and of their sum (``embed_sum``):
      ``cluster_size = decay * cluster_size + (1 - decay) * counts``,
      ``embed_sum = decay * embed_sum + (1 - decay) * onehot^T z``, then with Laplace smoothing
      ``n = sum(cluster_size)``, ``cs = (cluster_size + eps) / (n + n_codes * eps) * n``,
      ``embedding = embed_sum / cs``. ``codebook_loss`` then carries no gradient.
    - ``ema=False``: the codebook is the parameter ``embedding``, learned through
      ``codebook_loss``; a buffer ``usage_ema`` keeps the moving average of the counts (same
      ``decay``) for the dead-code restarts.

    Initialization: codes drawn from the global torch RNG, normal with standard deviation
    ``1 / sqrt(dim)`` (codes of about unit norm). The statistics start as one pseudo-observation
    per code (``cluster_size = usage_ema = 1``, ``embed_sum = embedding``), so the EMA
    normalization is well-defined and equals the initial codebook before the first update, and a
    code that has never been used decays like one that was used once. There is no data-dependent
    initialization: with the default ``restart_threshold=1``, every code left unused by the first
    training batch falls below the threshold (``decay * 1 < 1``) and is restarted onto an encoder
    output of that batch, which places the codebook on the data from the first step.

    Updates happen only in training mode (``self.training``), whether or not gradients are
    enabled; in eval mode (validation, a frozen tokenizer, decoding) the module changes nothing.
    The output of a training forward uses the codebook as it was before that forward's update.
    Inside an initialized ``torch.distributed`` process group, the batch counts and sums are
    summed over all processes before the update and the restart candidates are broadcast from
    rank 0, so every process keeps the same codebook; every process must then call the training
    forward the same number of times.

    Dead-code restarts (training mode, both kinds of codebook): after the update, a code whose
    usage average (``cluster_size`` or ``usage_ema``) is below ``restart_threshold`` is replaced
    by a randomly chosen encoder output of the current batch (distinct outputs when the batch
    holds at least ``n_codes`` vectors), and its statistics are reset to
    ``max(restart_threshold, 1)`` observations of the new code, so it is not counted as dead
    right after its restart. ``restart_threshold=0`` disables restarts. The choice uses
    ``self.generator`` (``None`` by default; a ``torch.Generator`` on the device of the inputs may
    be assigned) or else the global RNG of the inputs' device, which the trainer seeds and saves
    in checkpoints. The buffer ``n_restarts`` counts the restarted codes.

    All statistics (``embedding``, ``cluster_size``, ``embed_sum``, ``usage_ema``,
    ``n_restarts``) are persistent buffers (or the parameter), saved in the ``state_dict`` so that
    checkpoints resume exactly.

    Arguments:
        n_codes: codebook size ``K`` (at least 2).
        dim: channels of every code and input vector.
        ema: learn the codebook by exponential moving averages (else by gradient descent).
        decay: EMA decay, in ``(0, 1)``, of the codebook statistics and of the usage average.
        eps: Laplace-smoothing pseudo-count of the EMA normalization (positive).
        restart_threshold: usage average below which a code is restarted (0: never).

    Raises:
        InputError: on an invalid argument (key ``n_codes``, ``codebook_dim``, ``decay``, ``eps``
            or ``restart_threshold``).

    References:
        van den Oord et al., "Neural Discrete Representation Learning", arXiv:1711.00937 (VQ-VAE,
        the straight-through estimator, the codebook and commitment losses, the EMA codebook in
        its appendix); Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2",
        arXiv:1906.00446; Dhariwal et al., "Jukebox: A Generative Model for Music",
        arXiv:2005.00341 (restarts of dead codes onto encoder outputs).
    """

    embedding: Tensor
    n_restarts: Tensor

    def __init__(
        self,
        n_codes: int,
        dim: int,
        *,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(n_codes, bool) or not isinstance(n_codes, int) or n_codes < 2:
            raise InputError(f"n_codes={n_codes!r}", key="n_codes", expected="an integer >= 2")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InputError(f"dim={dim!r}", key="codebook_dim", expected="an integer >= 1")
        if not _is_real(decay) or not 0.0 < decay < 1.0:
            raise InputError(f"decay={decay!r}", key="decay", expected="a number in (0, 1)")
        if not _is_real(eps) or not 0.0 < eps < math.inf:
            raise InputError(f"eps={eps!r}", key="eps", expected="a positive number")
        if not _is_real(restart_threshold) or not 0.0 <= restart_threshold < math.inf:
            raise InputError(f"restart_threshold={restart_threshold!r}", key="restart_threshold",
                             expected="a number >= 0")
        self.n_codes = n_codes
        self.dim = dim
        self.ema = bool(ema)
        self.decay = float(decay)
        self.eps = float(eps)
        self.restart_threshold = float(restart_threshold)
        self.generator: torch.Generator | None = None

        codes = torch.randn(n_codes, dim) / math.sqrt(dim)  # (K, D)
        if self.ema:
            self.register_buffer("embedding", codes)  # (K, D)
            self.register_buffer("cluster_size", torch.ones(n_codes))  # (K,)
            self.register_buffer("embed_sum", codes.clone())  # (K, D)
        else:
            self.embedding = nn.Parameter(codes)  # (K, D)
            self.register_buffer("usage_ema", torch.ones(n_codes))  # (K,)
        self.register_buffer("n_restarts", torch.zeros((), dtype=torch.int64))  # ()

    def extra_repr(self) -> str:
        return (f"n_codes={self.n_codes}, dim={self.dim}, ema={self.ema}, decay={self.decay}, "
                f"eps={self.eps}, restart_threshold={self.restart_threshold}")

    def forward(self, z: Tensor) -> VQOutput:
        """Quantize every vector of ``z`` to its nearest code; in training mode, update the
        codebook statistics and restart dead codes afterwards.

        Arguments:
            z: encoder outputs, any leading shape.  # (..., dim) floating point

        Returns:
            :class:`VQOutput` (quantized ``(..., dim)``, indices ``(...,)``, the two losses,
            perplexity and usage of this process's batch).

        Raises:
            InputError: if ``z`` is not a floating-point tensor with ``dim`` channels last.
        """
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.ndim < 1 \
                or z.shape[-1] != self.dim:
            what = (f"{z.dtype} tensor of shape {tuple(z.shape)}" if isinstance(z, Tensor)
                    else type(z).__name__)
            raise InputError(what, key="z", expected=f"a floating-point tensor (..., {self.dim})")
        flat = z.reshape(-1, self.dim)  # (M, D)
        indices = self._nearest(flat)  # (M,)
        e = F.embedding(indices, self.embedding)  # (M, D), gradient to a learned codebook
        ct = self._compute_dtype(z)
        codebook_loss = _mse(e.to(ct), flat.detach().to(ct))
        commitment_loss = _mse(flat.to(ct), e.detach().to(ct))
        # Straight-through: the value is exactly the code, the gradient w.r.t. z the identity.
        quantized = e.detach().view(z.shape).to(z.dtype) + (z - z.detach())  # (..., D)

        with torch.no_grad():
            counts = torch.bincount(indices, minlength=self.n_codes)  # (K,) int64
            probs = counts.to(torch.float32) / max(flat.shape[0], 1)  # (K,)
            perplexity = torch.exp(-torch.special.xlogy(probs, probs).sum())  # ()
            usage = (counts > 0).to(torch.float32).mean()  # ()
            if self.training:
                self._update(flat.detach(), indices, counts)
        return VQOutput(quantized, indices.view(z.shape[:-1]), codebook_loss, commitment_loss,
                        perplexity, usage)

    def lookup(self, indices: Tensor) -> Tensor:
        """The codes of given indices (to decode generated tokens).

        Arguments:
            indices: code indices.  # (...,) integer, in [0, n_codes)

        Returns:
            The codes.  # (..., dim)

        Raises:
            InputError: if ``indices`` is not an integer tensor of valid code indices.
        """
        if not isinstance(indices, Tensor) or indices.dtype.is_floating_point \
                or indices.dtype.is_complex or indices.dtype == torch.bool:
            what = (f"{indices.dtype} tensor" if isinstance(indices, Tensor)
                    else type(indices).__name__)
            raise InputError(what, key="indices", expected="an integer tensor")
        if indices.numel() > 0:
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.n_codes:
                raise InputError(f"indices in [{lo}, {hi}]", key="indices",
                                 expected=f"integers in [0, {self.n_codes})")
        return F.embedding(indices.long(), self.embedding)  # (..., D)

    def _compute_dtype(self, z: Tensor) -> torch.dtype:
        """float32, or float64 when the input or the codebook is float64."""
        dtype = torch.promote_types(z.dtype, self.embedding.dtype)
        return torch.promote_types(dtype, torch.float32)

    def _nearest(self, flat: Tensor) -> Tensor:  # (M, D) -> (M,) int64
        """Index of the nearest code, from ``||z||^2 - 2 z e^T + ||e||^2`` computed in at least
        float32 (autocast off), ties to the lowest index."""
        ct = self._compute_dtype(flat)
        with torch.no_grad(), _no_autocast(flat.device.type):
            codes = self.embedding.detach().to(ct)  # (K, D)
            codes_sq = codes.square().sum(dim=1)  # (K,)
            rows = max(1, _CHUNK_ELEMENTS // self.n_codes)
            out = []
            for x in flat.detach().to(ct).split(rows):  # (m, D)
                d = x.square().sum(dim=1, keepdim=True) - 2.0 * (x @ codes.T) + codes_sq  # (m, K)
                out.append(d.argmin(dim=1))
            if not out:
                return torch.zeros(0, dtype=torch.int64, device=flat.device)
            return torch.cat(out) if len(out) > 1 else out[0]

    def _update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """The EMA update (or the usage average) and the dead-code restarts of one training
        forward; called under ``torch.no_grad()``."""
        distributed = _distributed()
        if flat.shape[0] == 0 and not distributed:
            return
        code_dtype = self.embedding.dtype
        stats = torch.zeros(self.n_codes, self.dim + 1, dtype=code_dtype,
                            device=flat.device)  # (K, 1 + D): counts, sums
        stats[:, 0] = counts.to(code_dtype)
        if self.ema:
            stats[:, 1:].index_add_(0, indices, flat.to(code_dtype))
        if distributed:
            dist.all_reduce(stats)
        batch_counts = stats[:, 0]  # (K,)
        keep, add = self.decay, 1.0 - self.decay
        if self.ema:
            self.cluster_size.mul_(keep).add_(batch_counts, alpha=add)
            self.embed_sum.mul_(keep).add_(stats[:, 1:], alpha=add)
            n = self.cluster_size.sum()
            cs = (self.cluster_size + self.eps) / (n + self.n_codes * self.eps) * n  # (K,)
            self.embedding.copy_(self.embed_sum / cs[:, None])
            usage_avg = self.cluster_size
        else:
            self.usage_ema.mul_(keep).add_(batch_counts, alpha=add)
            usage_avg = self.usage_ema
        if self.restart_threshold > 0.0:
            self._restart(flat, usage_avg, distributed)

    def _restart(self, flat: Tensor, usage_avg: Tensor, distributed: bool) -> None:
        """Replace the codes whose usage average fell below the threshold by encoder outputs."""
        candidates = self._candidates(flat)  # (K, D)
        if distributed:
            dist.broadcast(candidates, src=0)
        dead = usage_avg < self.restart_threshold  # (K,)
        size = max(self.restart_threshold, 1.0)
        self.embedding.copy_(torch.where(dead[:, None], candidates, self.embedding))
        usage_avg.copy_(torch.where(dead, torch.full_like(usage_avg, size), usage_avg))
        if self.ema:
            self.embed_sum.copy_(torch.where(dead[:, None], candidates * size, self.embed_sum))
        self.n_restarts.add_(dead.sum())

    def _candidates(self, flat: Tensor) -> Tensor:  # (M, D) -> (K, D)
        """One randomly chosen encoder output per code (distinct when ``M >= n_codes``); the
        current codes when the batch is empty."""
        m = flat.shape[0]
        if m == 0:
            return self.embedding.detach().clone()
        gen = self.generator
        device = flat.device if gen is None else gen.device
        if m >= self.n_codes:
            pick = torch.randperm(m, generator=gen, device=device)[: self.n_codes]
        else:
            pick = torch.randint(0, m, (self.n_codes,), generator=gen, device=device)
        return flat[pick.to(flat.device)].to(self.embedding.dtype)  # (K, D)


def _is_real(x: object) -> bool:
    """True for int / float (not bool) values that are not NaN."""
    return isinstance(x, int | float) and not isinstance(x, bool) and not math.isnan(x)
