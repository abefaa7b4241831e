"""New HDF5 files written atomically, in which a full disk becomes one clear error.

HDF5 keeps written data in caches and flushes them when the file closes. When the disk is full,
that flush fails, the library cannot close the file, and the half-closed file later fails again
while Python shuts down (messages on stderr, sometimes a crash). Here HDF5 writes through a small
file object (h5py's ``fileobj`` driver) that records the first "no space left" error and from then
on discards what it is given, so that HDF5 always closes cleanly; the writer then reports the full
disk as one :class:`~showerformer.errors.OutputError` and :func:`~showerformer._atomic.atomic_path`
removes the temporary file, leaving any earlier file untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from showerformer._atomic import atomic_path
from showerformer._paths import disk_full_error
from showerformer.errors import OutputError

__all__ = ["SpaceCheckedFile", "create_h5", "disk_full_guard"]

_FULL = (errno.ENOSPC, errno.EDQUOT)


class SpaceCheckedFile:
    """A binary file for h5py's ``fileobj`` driver that survives a full disk.

    Writes go straight to the file (``pwrite``, no buffering). The first write that fails with
    ENOSPC or EDQUOT is kept in :attr:`error`; later writes are counted but discarded, so HDF5
    never sees a failure. Reads return zeros past what was written.

    Arguments:
        path: an existing (temporary) file, opened for reading and writing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self._pos = 0
        self._end = os.fstat(self._fd).st_size
        self.error: OSError | None = None

    # -- the methods the fileobj driver calls
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._end}[whence]
        self._pos = base + int(offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        n = max(0, self._end - self._pos) if size is None or size < 0 else int(size)
        buffer = bytearray(n)
        self.readinto(buffer)
        return bytes(buffer)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n, got = len(view), 0
        while got < n:
            data = os.pread(self._fd, n - got, self._pos + got)
            if not data:
                break
            view[got:got + len(data)] = data
            got += len(data)
        view[got:] = bytes(n - got)  # beyond the end of the file: zeros, as HDF5 expects
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as exc:
                if exc.errno not in _FULL:
                    raise
                self.error = exc
        self._pos += n
        self._end = max(self._end, self._pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else int(size)
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                if exc.errno not in _FULL:
                    raise
                self.error = exc
        self._end = size
        return size

    def flush(self) -> None:
        """Nothing to do: writes are not buffered."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def raise_if_full(self) -> None:
        """Raise the recorded "no space left" ``OSError``, if a write failed.

        Inside :func:`create_h5` it ends the write: the temporary file is removed first, then
        the error becomes an :class:`OutputError` (so the free space it reports is real).
        """
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def disk_full_guard(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` meaning "disk full" (e.g. from ``fsync`` or the rename) into a
    one-line :class:`OutputError` naming ``path``; other errors pass unchanged."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        err = disk_full_error(exc, path, option="")
        if err is None:
            raise
        raise err from exc


@contextlib.contextmanager
def create_h5(path: str | os.PathLike[str]) -> Iterator[tuple[h5py.File, SpaceCheckedFile]]:
    """A new HDF5 file that replaces ``path`` atomically when the block ends without error.

    Yields:
        ``(file, raw)``: the open :class:`h5py.File` and its :class:`SpaceCheckedFile`;
        ``raw.raise_if_full()`` stops at once when the disk has filled up (useful between the
        chunks of a long write).

    Raises:
        OutputError: the disk became full; the temporary file is removed and an earlier file
            at ``path`` is left unchanged.
    """
    target = Path(path)
    with disk_full_guard(target), atomic_path(target) as tmp:
        raw = SpaceCheckedFile(tmp)
        try:
            f = h5py.File(raw, "w")
            try:
                yield f, raw
            finally:
                f.close()  # never fails for lack of space: raw discards after the first error
        except BaseException:
            raw.close()
            raw.raise_if_full()  # the full disk is the cause of whatever followed
            raise
        raw.close()
        raw.raise_if_full()
