"""AdamW with differential weight decay, the linear-warmup + cosine schedule, gradient clipping."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from showerformer.nn.norms import LayerScale, RMSNorm

__all__ = [
    "WarmupCosine",
    "build_optimizer",
    "clip_grad_norm",
    "cosine_with_warmup",
    "decay_mask",
    "parameter_groups",
    "warmup_cosine",
]

# Modules whose weight is a linear map (decayed); every other parameter is exempt.
_DECAYED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
# Modules whose parameters are never decayed (gains, offsets, lookup tables).
_EXEMPT_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.RMSNorm, RMSNorm, LayerScale, nn.Embedding, nn.EmbeddingBag,
)


def decay_mask(model: nn.Module) -> dict[str, bool]:
    """Which trainable parameters receive weight decay.

    Decayed: the ``weight`` of linear and convolution layers (the linear maps). Exempt: biases,
    every parameter of a normalisation layer (GroupNorm, LayerNorm, RMSNorm, BatchNorm),
    LayerScale gains, embedding tables, and parameters registered directly on other modules
    (learned tokens, positional / block embeddings). A module may add exemptions with a
    ``no_weight_decay()`` method returning parameter names relative to itself.

    Arguments:
        model: the network.

    Returns:
        ``{parameter name: True if decayed}`` for every parameter with ``requires_grad``, in
        ``named_parameters`` order.

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
    """
    decided: dict[int, bool] = {}
    extra_exempt: set[int] = set()
    for _, module in model.named_modules(remove_duplicate=False):
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            for name in hook():
                extra_exempt.add(id(module.get_parameter(name)))
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in decided:
                continue  # shared parameter: the first owner decides
            decided[id(p)] = (pname == "weight" and isinstance(module, _DECAYED_MODULES)
                              and not isinstance(module, _EXEMPT_MODULES))
    return {name: decided[id(p)] and id(p) not in extra_exempt
            for name, p in model.named_parameters() if p.requires_grad}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW parameter groups: decayed (``weight_decay``) and exempt (0); see :func:`decay_mask`.

    Arguments:
        model: the network.
        weight_decay: decoupled weight-decay coefficient of the decayed group.

    Returns:
        ``[{"params", "weight_decay", "names"}, ...]``, the decayed group first (empty groups
        left out).
    """
    mask = decay_mask(model)
    params = dict(model.named_parameters())
    groups = []
    for decayed, wd in ((True, float(weight_decay)), (False, 0.0)):
        names = [n for n, d in mask.items() if d == decayed]
        if names:
            groups.append({"params": [params[n] for n in names], "weight_decay": wd,
                           "names": names})
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (``foreach`` on CPU; fused on CUDA by default).

    Arguments:
        model: the network (already on its device).
        lr: peak learning rate.
        weight_decay: decay of the linear maps (others exempt).
        betas: Adam moment coefficients.
        eps: Adam denominator floor.
        fused: use the fused kernel; None picks it when all parameters are on CUDA.

    Returns:
        The optimizer; each group keeps its parameter ``names`` for inspection.
    """
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps,
                             fused=True if fused else None)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup then cosine decay to ``min_ratio``.

    ``(step + 1) / warmup_steps`` for ``step < warmup_steps``; afterwards
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1], so the
    multiplier is 1 right after the warmup and ``min_ratio`` from ``total_steps`` on.

    Arguments:
        step: optimizer steps taken so far (0 for the first update).
        warmup_steps: length of the linear ramp (0: none).
        total_steps: step at which the cosine reaches ``min_ratio``.
        min_ratio: final multiplier (the floor).

    Returns:
        The multiplier of the peak learning rate.

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
        arXiv:1608.03983; Goyal et al. (linear warmup), arXiv:1706.02677.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine:
    """The schedule of :func:`warmup_cosine` as a callable ``step -> learning rate``.

    The trainer sets the learning rate of every group from the step counter before each update,
    so the schedule has no hidden state: :meth:`state_dict` only records its constants.

    Arguments:
        base_lr: peak learning rate.
        warmup_steps: length of the linear ramp.
        total_steps: step at which the floor is reached.
        min_ratio: floor as a fraction of ``base_lr``.
    """

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int,
                 min_ratio: float = 0.0) -> None:
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        return self.base_lr * warmup_cosine(step, self.warmup_steps, self.total_steps,
                                            self.min_ratio)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the learning rate of every group of ``optimizer`` for update ``step``; returns it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready constants of the schedule."""
        return {"kind": "warmup_cosine", "base_lr": self.base_lr,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "min_ratio": self.min_ratio}


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine` to every group of ``optimizer``.

    For loops written with torch's scheduler protocol (``optimizer.step()`` then
    ``scheduler.step()``); its ``state_dict`` holds only the step counter.
    """

    def factor(step: int) -> float:
        return warmup_cosine(step, warmup_steps, total_steps, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float | None) -> Tensor:
    """Global L2 norm of the gradients, after scaling them down to ``max_norm`` if larger.

    Arguments:
        parameters: the parameters (those without a gradient are skipped).
        max_norm: the largest allowed global norm; None or a non-positive value only measures.

    Returns:
        The norm before clipping (a 0-d float32 tensor on the gradients' device).
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if max_norm is not None and max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, float(max_norm), total)
    return total.float()
