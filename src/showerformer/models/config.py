"""The JSON round trip and the type checks shared by every model family's config dataclass."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from showerformer.errors import InputError

__all__ = ["ModelConfig", "coerce_value"]


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _kind(value: Any) -> str:
    """``"a string"``, ``"a number"``, ``"a list"``... for a value read from YAML or JSON."""
    if isinstance(value, bool | np.bool_):
        return "a boolean"
    if isinstance(value, numbers.Real):
        return "a number"
    return {str: "a string", list: "a list", tuple: "a list", dict: "a mapping",
            type(None): "null"}.get(type(value), f"a {type(value).__name__}")


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the simple annotation ``tp`` and converted where lossless.

    Understood annotations: ``int``, ``float`` (ints and numeric strings such as ``"3e-4"``,
    which YAML 1.1 reads as text, are accepted; NaN and infinities are not), ``str``, ``bool``,
    ``tuple[X, ...]`` / ``tuple[X, Y]`` (from lists), ``dict[...]`` (any mapping), ``X | None``
    and ``Any``. A string is never taken for an integer (``"128"`` is an error).

    Arguments:
        value: the value read from a YAML or JSON file, or passed by a caller.
        tp: the field's annotation.
        key: the field name, reported in errors.

    Returns:
        The value, converted (ints to floats, lists to tuples, mappings to dicts).

    Raises:
        InputError: the value does not have the annotated type; names ``key`` and the type.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            with contextlib.suppress(InputError):
                return coerce_value(value, a, key)
        names = " or ".join(_type_name(a) for a in inner)
        raise InputError(f"{value!r}", key=key,
                         expected=names + (" or null" if type(None) in args else ""))
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(f"{value!r}", key=key, expected="a list")
        if len(args) == 2 and args[1] is Ellipsis:
            try:
                return tuple(coerce_value(v, args[0], key) for v in value)
            except InputError:
                raise InputError(f"{value!r}", key=key,
                                 expected=f"a list of values that are each {_type_name(args[0])}"
                                 ) from None
        if len(value) != len(args):
            raise InputError(f"{value!r}", key=key, expected=f"a list of {len(args)} values")
        return tuple(coerce_value(v, a, key) for v, a in zip(value, args, strict=True))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise InputError(f"{value!r}", key=key, expected="a mapping")
        return dict(value)
    flag = isinstance(value, bool | np.bool_)
    if tp is bool:
        if flag:
            return bool(value)
        raise InputError(f"{value!r}", key=key, expected="true or false")
    if tp is int:
        if isinstance(value, numbers.Integral) and not flag:
            return int(value)
        if isinstance(value, numbers.Real) and not flag and float(value).is_integer():
            return int(value)
        raise InputError(f"{value!r} is {_kind(value)}", key=key, expected="an integer")
    if tp is float:
        number: float | None = None
        if isinstance(value, numbers.Real) and not flag:
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise InputError(f"{value!r}", key=key, expected="a number")
        if not math.isfinite(number):
            raise InputError(f"{value!r}", key=key, expected="a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(f"{value!r} is {_kind(value)}", key=key, expected="a string")
    return value


class ModelConfig:
    """Mixin for frozen config dataclasses: :meth:`to_dict` / :meth:`from_dict` for checkpoints
    and YAML files, with unknown keys and values of the wrong type reported as an
    :class:`InputError` naming the key.

    A family's ``__post_init__`` calls :meth:`check_types` first, then checks the ranges.

    Attributes:
        LEGACY_KEYS: former key names and their current ones (``{"n_layers_calo":
            "n_calo_layers"}``): :meth:`from_dict` reads the checkpoints and YAML files written
            with the former names.
    """

    LEGACY_KEYS: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`.

        Raises:
            InputError: an unknown key, or a value of the wrong type or range, naming the key.
        """
        if not isinstance(data, Mapping):
            raise InputError(f"a {type(data).__name__}", key=cls.__name__,
                             expected="a mapping of config keys")
        data = cls.translate_legacy_keys(data)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise InputError(f"unknown config key(s) {', '.join(unknown)}", key=unknown[0],
                             expected="one of " + ", ".join(sorted(known)))
        return cls(**data)

    @classmethod
    def translate_legacy_keys(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with the former key names of :attr:`LEGACY_KEYS` replaced by the current ones.

        Arguments:
            data: config keys and values (from a checkpoint or a YAML file).

        Returns:
            A new dict, in the same order.

        Raises:
            InputError: a former name given together with its current one, naming both.
        """
        out: dict[str, Any] = {}
        for key, value in data.items():
            new = cls.LEGACY_KEYS.get(key) if isinstance(key, str) else None
            if new is None:
                out[key] = value
                continue
            if new in data:
                raise InputError(f"both {key} and {new}", key=key,
                                 expected=f"only {new} ({key} is its former name)")
            out[new] = value
        return out

    def resolved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with every default filled in, also inside nested sections: two
        configs that build the same model give the same dictionary."""
        return self.to_dict()

    def check_types(self) -> None:
        """Check every field against its annotation, converting in place where lossless
        (ints to floats, lists to tuples).

        Raises:
            InputError: naming the field and the expected type.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = coerce_value(getattr(self, f.name), hints[f.name], f.name)
            object.__setattr__(self, f.name, value)

    def invalid(self, key: str, expected: str) -> InputError:
        """The one-line error for field ``key``: its current value and what was expected."""
        return InputError(f"{key}={getattr(self, key)!r}", key=key, expected=expected)

    def require_positive(self, *keys: str) -> None:
        """Raise :class:`InputError` for the first of ``keys`` whose value is below 1 (for
        tuples: any element below 1)."""
        for key in keys:
            value = getattr(self, key)
            values = value if isinstance(value, tuple) else (value,)
            if any(v < 1 for v in values):
                what = "positive integers" if isinstance(value, tuple) else "a positive integer"
                raise InputError(f"{key}={value!r}", key=key, expected=what)
