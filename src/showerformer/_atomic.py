"""Atomic file writes: write to a temporary file beside the target, then rename."""

# A temporary file is named ``.<name>.<host>.<pid>.<start>.<token>.tmp``: the host and process
# that write it and the process's start time (clock ticks since boot, from /proc; 0 where
# unknown), so that a later run can tell whether its writer still runs. A run killed outright
# (SIGKILL, power loss, a third Ctrl-C) leaves its temporary file behind; the next write to the
# same target removes it once its process has ended, and never removes one whose process is
# alive. Files of another host (a shared file system), and the ``.<name>.XXXXXXXX.tmp`` files of
# earlier versions, are removed only when unchanged for STALE_AFTER_S.

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from showerformer._interrupts import check_interrupt
from showerformer._paths import disk_full_error, human_bytes
from showerformer.errors import OutputError, ShowerformerError

__all__ = ["STALE_AFTER_S", "atomic_path", "remove_stale_temporaries", "temporary_owner"]

STALE_AFTER_S = 24 * 3600.0
"""Age (seconds since the last change) after which a temporary file whose writer cannot be
checked (another host, or a name without a process id) counts as abandoned."""

_log = logging.getLogger("showerformer")
_NAME_BYTES = 160  # target names longer than this are shortened inside temporary names
_NEW = re.compile(r"^\.(?P<stem>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?P<start>\d+)"
                  r"\.(?P<token>[0-9a-f]{8})\.tmp$")
_OLD = re.compile(r"^\.(?P<stem>.+)\.[A-Za-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's names
_LIVE: set[str] = set()  # temporary files this process is writing now


def _host() -> str:
    return (re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host")[:32]


def _process_start(pid: int) -> int:
    """Start time of process ``pid`` in clock ticks since boot (Linux), else 0."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return 0


_HOST = _host()


def _stem(name: str) -> str:
    """The target's name as it appears in temporary names (long names shortened)."""
    if len(name.encode()) <= _NAME_BYTES:
        return name
    return name.encode()[:_NAME_BYTES].decode(errors="ignore") + "~"


def temporary_owner(tmp: str | os.PathLike[str]) -> tuple[str, int, int] | None:
    """``(host, pid, start)`` of the process that made temporary file ``tmp`` (from its
    name), or None for a name without them."""
    m = _NEW.match(Path(tmp).name)
    if m is None:
        return None
    return m["host"], int(m["pid"]), int(m["start"])


def _writer_state(path: Path, owner: tuple[str, int, int] | None) -> str:
    """``"alive"``, ``"ended"`` or ``"unknown"``: whether the writer of ``path`` still runs."""
    if owner is None:
        return "unknown"
    host, pid, start = owner
    if host != _HOST:
        return "unknown"
    if pid == os.getpid():
        if start and start != _process_start(pid):
            return "ended"  # an earlier process had this id
        return "alive" if path.name in _LIVE else "ended"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "ended"
    except PermissionError:
        pass  # the process exists (another user's)
    except OSError:
        return "unknown"
    now = _process_start(pid)
    if start and now and now != start:
        return "ended"  # the id was reused by a later process
    return "alive"


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of ``target`` whose writing process has ended.

    A temporary file of a process that still runs is never removed. Files whose writer cannot
    be checked (made on another host, or by an earlier version without a process id in the
    name) are removed only when unchanged for :data:`STALE_AFTER_S`. Each removal is logged as
    a warning on the ``showerformer`` logger (the command line shows it as one line).

    Arguments:
        target: the output file whose folder is searched.

    Returns:
        The files removed.
    """
    target = Path(target)
    stem = _stem(target.name)
    prefix = f".{stem}."
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(target.parent)
                   if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for entry in entries:
        m = _NEW.match(entry.name) or _OLD.match(entry.name)
        if m is None or m["stem"] != stem:
            continue
        path = Path(entry.path)
        owner = temporary_owner(path)
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        state = _writer_state(path, owner)
        idle = time.time() - st.st_mtime
        if state == "alive" or (state == "unknown" and idle < STALE_AFTER_S):
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
        if state == "ended" and owner is not None:
            why = f"by process {owner[1]}, which has ended"
        else:
            why = f"by an earlier run, unchanged for {idle / 3600:.0f} h"
        _log.warning("removed %s (%s), a temporary file left %s", path,
                     human_bytes(st.st_size), why)
    return removed


def _create_temporary(target: Path) -> Path:
    pid = os.getpid()
    head = f".{_stem(target.name)}.{_HOST}.{pid}.{_process_start(pid)}."
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.parent / f"{head}{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for any new file
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target))


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every system can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _output_error(exc: OSError, target: Path, tmp: Path | None) -> OutputError | None:
    """The one-line error for an ``OSError`` met while writing ``target``, if there is one."""
    full = disk_full_error(exc, target, option="")
    if full is not None:
        return full
    failed = exc.filename is not None and os.fspath(exc.filename) in (
        str(target), str(target.parent), str(tmp))
    if not failed:
        return None
    if exc.errno == errno.EISDIR or target.is_dir():
        what = "is a directory"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = f"cannot create files in {target.parent} ({exc.strerror})"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
        what = f"cannot create the folder {target.parent} ({exc.strerror})"
    else:
        what = f"cannot be written ({exc.strerror or exc})"
    return OutputError(what, path=target, expected="a file path in a writable folder")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The target's folder is created if needed, and temporary files left there for ``path`` by
    runs that have ended are removed first (see :func:`remove_stale_temporaries`). A symbolic
    link as ``path`` is kept: the file it points to is replaced.

    The rename happens only when the block ends without an exception and no stop request
    (Ctrl-C, SIGTERM) is pending (see :mod:`showerformer._interrupts`), checked right before
    it: the rename is the commit point, and a request received before it leaves the earlier
    file. Otherwise the temporary file is removed and the earlier ``path`` (if any) is
    untouched. A run killed outright leaves at most the hidden temporary file, which a later
    write removes.

    Arguments:
        path: the file to write.

    Yields:
        The temporary file (created empty) to write instead of ``path``.

    Raises:
        OutputError: the folder cannot be created or written, ``path`` is a directory, or the
            disk became full (also when the block itself hits the full disk); the original
            ``OSError`` is chained.
        KeyboardInterrupt: a pending stop request (:class:`~showerformer._interrupts.Terminated`
            for SIGTERM), raised instead of the rename.
    """
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        tmp = _create_temporary(target)
    except OSError as exc:
        err = _output_error(exc, target, None)
        if err is None or isinstance(exc, ShowerformerError):
            raise
        raise err from exc
    _LIVE.add(tmp.name)
    try:
        yield tmp
        check_interrupt()
        _fsync(tmp)
        check_interrupt()  # the last moment: a request handled after this finds the rename done
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, ShowerformerError):
            err = _output_error(exc, target, tmp)
            if err is not None:
                raise err from exc
        raise
    finally:
        _LIVE.discard(tmp.name)
