"""The contract every model family follows, and the base class that supplies its defaults.

A *family* is what ``showerformer train --config F --data D`` trains and what ``showerformer
sample`` / ``showerformer predict`` load back: a config dataclass, an ``nn.Module`` and the hooks
below. The trainer (:mod:`showerformer.training.trainer`), the generic run
(:mod:`showerformer.training.run`), generation (:mod:`showerformer.generation`), the command line
and the contract test see nothing else, so a new family needs no change anywhere but its own
files and one line in :mod:`showerformer.models`.

Required of every family (class attributes and methods):

- ``config_class``: a frozen dataclass with :class:`~showerformer.models.config.ModelConfig`'s
  ``to_dict`` / ``from_dict``;
- ``task``: ``"generation"``, ``"regression"`` or ``"representation"`` (a model that encodes
  showers for other models or analyses: a masked-patch transformer, a VQ-VAE tokenizer);
- ``data_kind``: the data layer that reads its training files (``"points"``: showers as point
  clouds, voxel files dequantized; ``"sparse-voxels"``: labelled voxel grids), see
  :data:`showerformer.training.datasets.DATA_KINDS`; or a ``load_data`` classmethod of its own;
- ``from_data(overrides, train, settings)``: build the model for the training data and fit the
  preprocessing it then owns; ``data_state()`` returns that state as JSON-ready data (it is
  saved in every checkpoint) and ``load_data_state(state, info)`` restores it;
- ``loss(batch) -> Tensor`` for the default step (loss, backward, clip, step), or
  ``training_step(batch, step, optimizers) -> dict`` (with ``"loss"``) together with
  ``configure_optimizers(train_config)`` for a step that needs more (a GAN);
- ``generate(conditions, *, generator=None, steps=None)`` returning
  :class:`~showerformer.showers.PointShowers` or :class:`~showerformer.showers.VoxelShowers` in
  MeV and mm (generators), ``predict(voxels)`` (regressors), or ``represent(voxels, energy)``
  returning one vector per shower ``(B, D)`` (representation models).

Optional: ``validation_metric(batches) -> float`` (lower is better; picks the best checkpoint
and drives early stopping instead of the mean validation loss), ``log_metrics`` (names of the
extra values ``training_step`` returns, logged as columns of ``log.csv``), ``data_keys`` (the
family's own settings of the ``data:`` section, ``{key: (type, default)}``), ``collate_fn`` and
``batch_sampler`` (how batches are made), frozen sub-modules (:meth:`FamilyModule.freeze`), and
``pretrained`` (``{config key: family}``: a checkpoint of that family the config must name, such
as the frozen tokenizer of an autoregressive prior).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from torch import nn

__all__ = ["FamilyModule", "ModelFamily", "check_family"]


@runtime_checkable
class ModelFamily(Protocol):
    """What the trainer, the generic run, generation and the command line need of a family."""

    family: ClassVar[str]
    task: ClassVar[str]
    data_kind: ClassVar[str]
    config_class: ClassVar[type]
    config: Any

    @classmethod
    def from_data(cls, overrides: Mapping[str, Any], train: Any,
                  settings: Mapping[str, Any]) -> Self:
        """Build the model for the training data and fit its preprocessing."""
        ...

    def data_state(self) -> dict[str, Any]:
        """The fitted preprocessing and what generation needs of the data (JSON-ready)."""
        ...

    def load_data_state(self, state: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Restore :meth:`data_state` from a checkpoint (``info`` is its whole JSON)."""
        ...


class FamilyModule(nn.Module):
    """Base class of the built-in families: the optional hooks' defaults and frozen sub-modules.

    Subclasses set ``config_class``, ``task`` and ``data_kind`` and implement ``from_data``,
    ``loss`` (or ``training_step`` + ``configure_optimizers``) and ``generate`` or ``predict``.
    """

    family: ClassVar[str]
    task: ClassVar[str]
    data_kind: ClassVar[str]
    config_class: ClassVar[type]
    data_keys: ClassVar[dict[str, tuple[Any, ...]]] = {}
    pretrained: ClassVar[dict[str, str]] = {}
    log_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self._frozen: list[str] = []
        self._data_state: dict[str, Any] = {}

    # -- data ------------------------------------------------------------------------------------

    def data_state(self) -> dict[str, Any]:
        """The state fitted on the training data (a copy; JSON-ready)."""
        return dict(self._data_state)

    def load_data_state(self, state: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Restore the state of :meth:`data_state`."""
        self._data_state = dict(state)

    def collate_fn(self, settings: Mapping[str, Any]) -> Callable[[list[Any]], Any] | None:
        """How a list of dataset items becomes a batch (None: the dataset's own)."""
        return None

    def batch_sampler(self, train: Any, settings: Mapping[str, Any]) -> Callable[..., Any] | None:
        """Factory of the training batch sampler (None: seeded shuffled batches)."""
        return None

    # -- frozen sub-modules ----------------------------------------------------------------------

    def freeze(self, *names: str) -> None:
        """Freeze the named sub-modules: no gradients, no optimizer, always in eval mode (their
        batch statistics, codebook updates and dropout stay off while the rest trains); their
        weights are still saved and loaded with the model."""
        for name in names:
            module = self.get_submodule(name)
            module.requires_grad_(False)
            module.eval()
            if name not in self._frozen:
                self._frozen.append(name)

    @property
    def frozen(self) -> tuple[str, ...]:
        """Names of the frozen sub-modules."""
        return tuple(self._frozen)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[Self]:
        """Evaluation mode inside the block, the earlier mode restored after it (also on an
        error): for inference methods called in the middle of training."""
        was = self.training
        self.eval()
        try:
            yield self
        finally:
            self.train(was)

    def train(self, mode: bool = True) -> Self:
        """As :meth:`torch.nn.Module.train`, frozen sub-modules staying in eval mode."""
        super().train(mode)
        for name in self._frozen:
            self.get_submodule(name).eval()
        return self

    # -- summaries -------------------------------------------------------------------------------

    def summary(self) -> str:
        """Parameters per top-level sub-module and in total, as a plain-text table (frozen
        sub-modules marked)."""
        rows = []
        for name, module in self.named_children():
            n = sum(p.numel() for p in module.parameters())
            rows.append((name + (" (frozen)" if name in self._frozen else ""), n))
        own = sum(p.numel() for p in self.parameters(recurse=False))
        if own:
            rows.append(("(own parameters)", own))
        total = sum(n for _, n in rows)
        width = max([len(r[0]) for r in rows] + [5])
        lines = [f"{type(self).__name__} ({getattr(self, 'family', '?')})",
                 f"{'part':<{width}}  {'parameters':>12}", "-" * (width + 14)]
        lines += [f"{name:<{width}}  {n:>12,}" for name, n in rows]
        lines += ["-" * (width + 14), f"{'TOTAL':<{width}}  {total:>12,}"]
        return "\n".join(lines)

    def n_parameters(self) -> dict[str, int]:
        """Parameter counts: ``{"trainable", "frozen", "total"}``."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "frozen": total - trainable, "total": total}


_REQUIRED = ("config_class", "task", "from_data", "data_state", "load_data_state")


def check_family(cls: type) -> None:
    """Raise ``TypeError`` naming what a family class lacks of the contract (at registration)."""
    missing = [name for name in _REQUIRED if not hasattr(cls, name)]
    if not (hasattr(cls, "data_kind") or hasattr(cls, "load_data")):
        missing.append("data_kind or load_data")
    if not (callable(getattr(cls, "loss", None)) or callable(getattr(cls, "training_step", None))):
        missing.append("loss or training_step")
    task = getattr(cls, "task", None)
    if task not in ("generation", "regression", "representation"):
        missing.append("task = 'generation', 'regression' or 'representation'")
    elif task == "generation" and not callable(getattr(cls, "generate", None)):
        missing.append("generate")
    elif task == "regression" and not callable(getattr(cls, "predict", None)):
        missing.append("predict")
    elif task == "representation" and not callable(getattr(cls, "represent", None)):
        missing.append("represent")
    if callable(getattr(cls, "training_step", None)) and not callable(
            getattr(cls, "configure_optimizers", None)):
        missing.append("configure_optimizers (with training_step)")
    if missing:
        raise TypeError(f"{cls.__name__} does not follow the model-family contract: missing "
                        + ", ".join(missing))
