"""Model families (see :mod:`showerformer.models.family`) and the registry that maps family
names to their classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from showerformer.errors import InputError

__all__ = ["MODELS", "get_model_class", "register"]

MODELS: dict[str, type[nn.Module]] = {}
"""Registered model families by name (e.g. ``"particle-cnn-transformer"``)."""

_M = TypeVar("_M", bound=type[nn.Module])


def register(name: str) -> Callable[[_M], _M]:
    """Class decorator that adds a model family to :data:`MODELS` under ``name``.

    Arguments:
        name: the family name used by the command line, the trainer and the configs.

    Returns:
        The decorator; it returns the class unchanged and sets ``cls.family = name``.

    Raises:
        TypeError: a class that does not follow the family contract
            (:func:`~showerformer.models.family.check_family`), at registration.
    """
    from showerformer.models.family import check_family

    def decorator(cls: _M) -> _M:
        check_family(cls)
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model family '{name}' is already registered by {MODELS[name]!r}")
        MODELS[name] = cls
        cls.family = name  # type: ignore[attr-defined]
        return cls

    return decorator


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``.

    Raises:
        InputError: naming the unknown family and listing the known ones.
    """
    try:
        return MODELS[name]
    except KeyError:
        raise InputError(f"unknown model family '{name}'", key="model",
                         expected="one of " + ", ".join(sorted(MODELS))) from None


# Built-in families register themselves on import (kept last: they import `register`).
# PanShower and PointCountFM are the two networks of the point-flow family, not families.
from showerformer.models import mdma as mdma  # noqa: E402  (after point_flow: it reuses its checks)
from showerformer.models import particle_cnn_transformer as particle_cnn_transformer  # noqa: E402
from showerformer.models import point_flow as point_flow  # noqa: E402
from showerformer.models import score_diffusion as score_diffusion  # noqa: E402
from showerformer.models import transformer_mlm as transformer_mlm  # noqa: E402
from showerformer.models import vq_prior as vq_prior  # noqa: E402
from showerformer.models import vq_vae as vq_vae  # noqa: E402
