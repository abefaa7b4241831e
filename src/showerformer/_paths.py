"""Output paths checked before any work starts: right kind, writable, room on the disk."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from showerformer.errors import OutputError

__all__ = ["check_output_dir", "check_output_file", "disk_full_error", "free_bytes",
           "human_bytes", "is_disk_full"]

_SPACE_MARGIN = 1.05  # estimates are rough: ask for 5 % more than the estimate
_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` (or ``path`` itself) that exists."""
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes for an unprivileged writer on the file system that would hold ``path``."""
    return int(shutil.disk_usage(_existing_ancestor(Path(path).absolute())).free)


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: permission bits say nothing
    for root, read-only mounts or pseudo file systems)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".showerformer-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _check_folder_chain(folder: Path, option: str, what: str, shown: Path) -> None:
    """``folder`` exists as a writable directory, or can be created (no file in the way);
    errors name ``shown`` (the output path the user gave)."""
    anc = _existing_ancestor(folder.absolute())
    if not anc.is_dir():
        raise OutputError(f"{anc} is a file, so the folder {folder} cannot be created",
                          path=shown, option=option, expected=what)
    if not _writable(anc):
        raise OutputError(f"cannot create files in {anc}", path=shown, option=option,
                          expected=what)


def _check_space(path: Path, estimated_bytes: float | None, option: str,
                 space_option: str | None, content: str | None = None) -> None:
    if estimated_bytes is None or estimated_bytes <= 0:
        return
    need = float(estimated_bytes) * _SPACE_MARGIN
    free = free_bytes(path)
    if need > free:
        how = f", or {space_option} to write anyway" if space_option else ""
        detail = f" ({content})" if content else ""
        raise OutputError(
            f"the output needs about {human_bytes(need)}{detail} but the disk has "
            f"{human_bytes(free)} free", path=path, option=option,
            expected=f"a disk with room for it{how}")


def check_output_file(
    path: str | os.PathLike[str],
    *,
    option: str = "--out",
    estimated_bytes: float | None = None,
    space_option: str | None = None,
    content: str | None = None,
) -> Path:
    """Check, before any work, that a file can be written at ``path``.

    The file itself may exist (it is replaced atomically at the end); it must not be a
    directory or another non-regular file (a device, a pipe), its folder must exist or be
    creatable and writable, and the disk must have room for ``estimated_bytes`` (plus 5 %: the
    new file is written beside the old one).

    Arguments:
        path: the output file.
        option: the command-line option or argument that named it (for the message).
        estimated_bytes: the expected size of the output, if known.
        space_option: the option that skips the space check, named in the message.
        content: what the estimate is made of, shown in the message when the disk is too
            small (e.g. ``"1,000 ds3 showers of about 30 kB"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: one line naming the option, the path and what was expected.
    """
    p = Path(path)
    expected = "a file path in a writable folder"
    if p.is_dir():
        raise OutputError("is a directory", path=p, option=option, expected=expected)
    if p.exists() and not p.is_file():
        raise OutputError("exists and is not a regular file", path=p, option=option,
                          expected=expected)
    _check_folder_chain(p.parent, option, expected, p)
    _check_space(p, estimated_bytes, option, space_option, content)
    return p


def check_output_dir(
    path: str | os.PathLike[str],
    *,
    option: str = "--out",
    estimated_bytes: float | None = None,
    space_option: str | None = None,
    content: str | None = None,
) -> Path:
    """Check, before any work, that ``path`` is (or can become) a writable folder.

    Arguments:
        path: the output folder.
        option: the command-line option that named it (for the message).
        estimated_bytes: the expected size of what will be written into it, if known.
        space_option: the option that skips the space check, named in the message.
        content: what the estimate is made of, shown in the message when the disk is too
            small.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: one line naming the option, the path and what was expected.
    """
    p = Path(path)
    expected = "a folder (existing or new) in a writable place"
    if p.exists() and not p.is_dir():
        raise OutputError("is a file", path=p, option=option, expected=expected)
    _check_folder_chain(p, option, expected, p)
    _check_space(p, estimated_bytes, option, space_option, content)
    return p


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` means "disk full": ENOSPC or EDQUOT, also as HDF5 reports it (an
    ``OSError`` whose text carries the C library's message)."""
    if not isinstance(exc, OSError):
        return False
    return exc.errno in _FULL or any(text in str(exc) for text in _FULL_TEXT)


def disk_full_error(exc: OSError, path: str | os.PathLike[str],
                    option: str = "--out") -> OutputError | None:
    """An :class:`OutputError` for an ``OSError`` that means "disk full" (ENOSPC / EDQUOT,
    also as HDF5 reports it), else None; the caller re-raises it ``from exc``.

    The error keeps the ``errno`` of a disk-full error (ENOSPC unless EDQUOT), so code that
    tests ``exc.errno`` still recognises it.

    Arguments:
        exc: the error met while writing.
        path: the output being written (named in the message).
        option: the option that named it (``""`` for none).

    Returns:
        The one-line error, or None when ``exc`` is another error.
    """
    if isinstance(exc, OutputError) or not is_disk_full(exc):
        return None
    free = free_bytes(path)
    err = OutputError(f"the disk became full while writing ({human_bytes(free)} free now)",
                      path=path, option=option or None,
                      expected="more free space; any earlier file at this path is unchanged")
    err.errno = errno.EDQUOT if exc.errno == errno.EDQUOT else errno.ENOSPC
    err.strerror = os.strerror(err.errno)
    return err
