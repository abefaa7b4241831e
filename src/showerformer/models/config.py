"""The JSON round trip shared by every model family's config dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

from showerformer.errors import InputError

__all__ = ["ModelConfig"]


class ModelConfig:
    """Mixin for frozen config dataclasses: :meth:`to_dict` / :meth:`from_dict` for checkpoints
    and YAML files, with unknown keys reported as an :class:`InputError`."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError`."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown config key(s) {', '.join(unknown)}", key=unknown[0],
                             expected="one of " + ", ".join(sorted(known)))
        return cls(**dict(data))
