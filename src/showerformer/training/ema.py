"""Exponential moving average (EMA) of model weights, built on torch's ``AveragedModel``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["EMA"]


class EMA(nn.Module):
    """A frozen copy of a model whose parameters follow ``ema <- decay * ema + (1 - decay) * w``.

    The first :meth:`update` copies the weights; every later one applies the moving average to
    the floating-point parameters. Buffers (e.g. normalisation statistics) are copied from the
    model at every update. The copy lives in evaluation mode and takes no gradients; use
    :attr:`module` for validation and prediction.

    Arguments:
        model: the trained network (the unwrapped module, not a DDP wrapper).
        decay: weight of the running average, in [0, 1).

    References:
        Polyak & Juditsky, "Acceleration of stochastic approximation by averaging" (1992);
        Izmailov et al., "Averaging Weights Leads to Wider Optima", arXiv:1803.05407.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay),
                                      use_buffers=False)
        self.averaged.eval()
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged network (same class and config as the trained one)."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        """Number of :meth:`update` calls so far."""
        return int(self.averaged.n_averaged.item())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.averaged.update_parameters(model)

    def train(self, mode: bool = True) -> EMA:
        """The averaged copy always stays in evaluation mode."""
        super().train(False)
        return self

    def tensors(self) -> dict[str, Tensor]:
        """The averaged weights (``module.state_dict()``) for saving."""
        return dict(self.module.state_dict())

    def meta(self) -> dict[str, Any]:
        """JSON-ready state besides the tensors: decay and number of updates."""
        return {"decay": self.decay, "updates": self.updates}

    def load(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore from :meth:`tensors` and :meth:`meta` (strict key match)."""
        self.module.load_state_dict(tensors, strict=True)
        self.averaged.n_averaged.fill_(int(meta.get("updates", 1)))
