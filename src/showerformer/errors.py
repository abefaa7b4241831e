"""Errors raised on bad input: one line naming the file, the key and what was expected."""

from __future__ import annotations

import os

__all__ = ["InputError", "MissingDependencyError", "OutputError", "ShowerformerError"]


class ShowerformerError(Exception):
    """Base class of the errors the command line reports as one line (exit status 2)."""


class InputError(ShowerformerError, ValueError):
    """Bad input data: names the file, the key and what was expected.

    Arguments:
        what: the problem, e.g. ``"wrong shape (10, 3)"``.
        path: the file the data came from, if any.
        key: the dataset / field inside the file, if any.
        expected: what a valid input looks like.
    """

    def __init__(
        self,
        what: str,
        *,
        path: str | os.PathLike[str] | None = None,
        key: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.what = what
        self.path = None if path is None else os.fspath(path)
        self.key = key
        self.expected = expected
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}")
        if key is not None:
            parts.append(f"key '{key}'")
        head = ": ".join([", ".join(parts)]) if parts else ""
        msg = f"{head}: {what}" if head else what
        if expected is not None:
            msg += f" (expected {expected})"
        super().__init__(msg)


class OutputError(ShowerformerError, OSError):
    """An output path that cannot be written: wrong kind, not writable, no room on the disk.

    Arguments:
        what: the problem, e.g. ``"is a directory"``.
        path: the output path.
        option: the command-line option or argument that named it, e.g. ``"--out"``.
        expected: what a valid output path looks like.
    """

    def __init__(
        self,
        what: str,
        *,
        path: str | os.PathLike[str] | None = None,
        option: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.what = what
        self.path = None if path is None else os.fspath(path)
        self.option = option
        self.expected = expected
        head = " ".join(x for x in (option, self.path) if x)
        msg = f"{head}: {what}" if head else what
        if expected is not None:
            msg += f" (expected {expected})"
        Exception.__init__(self, msg)

    def __str__(self) -> str:
        return str(self.args[0])


class MissingDependencyError(ShowerformerError, ImportError):
    """An optional dependency is not installed; the message says how to install it."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package '{module}': "
            f"pip install 'showerformer[{extra}]'"
        )
        self.name = module


def require(module: str, extra: str, purpose: str):
    """Import an optional module lazily, or raise a :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra, purpose) from exc
