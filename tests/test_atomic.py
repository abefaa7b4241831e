"""Atomic writes: temporary names, stale temporaries, cleanup on errors, a full disk, and stop
requests (Ctrl-C, SIGTERM) that must never let a rename through."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from small_disk import small_disk

from showerformer import _atomic
from showerformer._atomic import (
    STALE_AFTER_S,
    atomic_path,
    remove_stale_temporaries,
    temporary_owner,
)
from showerformer._interrupts import (
    Terminated,
    check_interrupt,
    handling_signals,
    interrupt_pending,
)
from showerformer.errors import OutputError

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and /proc")


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------- names, success


def test_temporary_name_carries_host_pid_and_start(tmp_path):
    target = tmp_path / "out.h5"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.exists() and tmp.stat().st_size == 0
        assert tmp.name.startswith(".out.h5.") and tmp.name.endswith(".tmp")
        host, pid, start = temporary_owner(tmp)
        assert pid == os.getpid()
        assert host == _atomic._HOST and re.fullmatch(r"[A-Za-z0-9_-]{1,32}", host)
        assert start == _atomic._process_start(os.getpid())
        assert (tmp.stat().st_mode & 0o777) == (0o666 & ~_umask())
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _temporaries(tmp_path) == []
    assert temporary_owner(tmp_path / ".out.h5.abcdefgh.tmp") is None  # an older name


def test_parent_folders_are_created_and_symlinks_kept(tmp_path):
    with atomic_path(tmp_path / "a" / "b" / "c.txt") as tmp:
        tmp.write_text("c")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "c"
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"


def test_an_exception_removes_the_temporary_and_keeps_the_earlier_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("earlier")
    with pytest.raises(ValueError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("boom")
    assert target.read_text() == "earlier"
    assert _temporaries(tmp_path) == []


def test_a_directory_in_the_way_is_one_output_error(tmp_path):
    (tmp_path / "out.h5").mkdir()
    with pytest.raises(OutputError, match="is a directory"), \
            atomic_path(tmp_path / "out.h5") as tmp:
        tmp.write_text("x")
    assert _temporaries(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the folder"), \
            atomic_path(tmp_path / "file" / "out.h5"):
        pass
    assert (tmp_path / "file").read_text() == "x"


# ---------------------------------------------------------------------------- a full disk


def test_enospc_in_the_block_is_one_output_error(tmp_path):
    target = tmp_path / "out.h5"
    target.write_bytes(b"earlier")
    with pytest.raises(OutputError) as exc, atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert exc.value.errno == errno.ENOSPC
    assert isinstance(exc.value.__cause__, OSError)
    assert "the disk became full" in str(exc.value) and str(target) in str(exc.value)
    assert target.read_bytes() == b"earlier"
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_enospc_while_committing_is_one_output_error(tmp_path, monkeypatch, step):
    target = tmp_path / "out.h5"
    target.write_bytes(b"earlier")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_atomic.os, step, full)
    with pytest.raises(OutputError, match="the disk became full"), \
            atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"earlier"
    assert _temporaries(tmp_path) == []


def test_full_disk_for_real(tmp_path):
    with small_disk(tmp_path / "small") as disk:
        target = disk / "out.bin"
        target.write_bytes(b"earlier")
        with pytest.raises(OutputError, match="the disk became full"), \
                atomic_path(target) as tmp, open(tmp, "wb") as fh:
            for _ in range(100):
                fh.write(os.urandom(1 << 16))
                fh.flush()
        assert target.read_bytes() == b"earlier"
        assert _temporaries(disk) == []


# ---------------------------------------------------------------------------- stale files


def _stale_name(target: Path, host: str, pid: int, start: int) -> Path:
    return target.parent / f".{target.name}.{host}.{pid}.{start}.0123abcd.tmp"


def test_temporary_of_an_ended_process_is_removed_and_reported(tmp_path, caplog):
    target = tmp_path / "out.h5"
    stale = _stale_name(target, _atomic._HOST, _dead_pid(), 12345)
    stale.write_bytes(b"x" * 2000)
    other = tmp_path / ".other.h5.x.1.2.0123abcd.tmp"  # another target's: not touched
    other.write_text("x")
    with caplog.at_level(logging.WARNING, logger="showerformer"), atomic_path(target) as tmp:
        tmp.write_text("new")
    assert not stale.exists() and other.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"removed {stale} (2.0 kB), a temporary file left by process {temporary_owner(stale)[1]}"
        ", which has ended"]


def test_temporary_of_a_reused_pid_is_removed(tmp_path):
    target = tmp_path / "out.h5"
    parent = os.getppid()  # alive, but started at another time than recorded
    stale = _stale_name(target, _atomic._HOST, parent, _atomic._process_start(parent) + 7)
    stale.write_text("x")
    if _atomic._process_start(parent) == 0:
        pytest.skip("no process start times here")
    assert remove_stale_temporaries(target) == [stale]


def test_temporary_of_a_live_process_is_kept(tmp_path):
    target = tmp_path / "out.h5"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = _stale_name(target, _atomic._HOST, proc.pid, _atomic._process_start(proc.pid))
        live.write_text("x")
        os.utime(live, (1, 1))  # however old
        assert remove_stale_temporaries(target) == []
        with atomic_path(target) as tmp:  # (a second writer of the same target)
            tmp.write_text("y")
        assert live.exists()
    finally:
        proc.kill()
        proc.wait()
    assert remove_stale_temporaries(target) == [live]


def test_temporary_in_use_by_this_process_is_kept(tmp_path):
    target = tmp_path / "out.h5"
    with atomic_path(target) as outer:
        outer.write_text("outer")
        with atomic_path(target) as inner:
            assert outer.exists()
            inner.write_text("inner")
        assert outer.exists()
    assert target.read_text() == "outer"
    old = _stale_name(target, _atomic._HOST, os.getpid(), _atomic._process_start(os.getpid()))
    old.write_text("left by this process, no longer in use")
    assert remove_stale_temporaries(target) == [old]


def test_unknown_writers_are_removed_only_when_idle_long(tmp_path):
    target = tmp_path / "out.h5"
    other_host = _stale_name(target, "another-host", 1, 1)
    legacy = tmp_path / ".out.h5.k2j_9x0a.tmp"  # tempfile.mkstemp's names of earlier versions
    for p in (other_host, legacy):
        p.write_text("x")
    assert remove_stale_temporaries(target) == []
    old = time.time() - STALE_AFTER_S - 60
    for p in (other_host, legacy):
        os.utime(p, (old, old))
    assert sorted(remove_stale_temporaries(target)) == sorted([other_host, legacy])


# ---------------------------------------------------------------------------- stop requests


@posix_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_block_and_removes_the_temporary(tmp_path, sig):
    target = tmp_path / "out.txt"
    target.write_text("earlier")
    expected = Terminated if sig == signal.SIGTERM else KeyboardInterrupt
    with handling_signals():
        with pytest.raises(expected), atomic_path(target) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), sig)
            for _ in range(1000):  # the handler raises at the next bytecode boundary
                time.sleep(0.001)
        assert interrupt_pending() == sig
    assert interrupt_pending() is None
    assert target.read_text() == "earlier" and _temporaries(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _RaisesInDel:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # handled inside __del__: Python drops it


@posix_only
def test_an_interrupt_dropped_inside_del_still_prevents_the_rename(tmp_path, capsys):
    target = tmp_path / "out.txt"
    target.write_text("earlier")
    with handling_signals():
        with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
            tmp.write_text("complete")
            obj = _RaisesInDel()
            del obj  # KeyboardInterrupt raised and dropped in __del__
        assert interrupt_pending() == signal.SIGINT
    assert target.read_text() == "earlier" and _temporaries(tmp_path) == []
    assert "Exception ignored" not in capsys.readouterr().err


@posix_only
def test_check_interrupt_outside_the_handlers_does_nothing():
    check_interrupt()
    with handling_signals():
        check_interrupt()
    assert interrupt_pending() is None


_HDF5_CALLBACK = r"""
import os, signal, sys, time, h5py, numpy as np
from showerformer._interrupts import handling_signals

class File:  # a file object that h5py's fileobj driver calls back from inside HDF5
    def __init__(self, path):
        self.f = open(path, "w+b")
        self.sent = False
    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)
    def tell(self):
        return self.f.tell()
    def read(self, n=-1):
        return self.f.read(n)
    def readinto(self, b):
        return self.f.readinto(b)
    def write(self, b):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIG)  # the handler runs inside this callback
            sum(range(1000))
        return self.f.write(b)
    def truncate(self, n=None):
        return self.f.truncate(n)
    def flush(self):
        self.f.flush()

raw = File(sys.argv[1])
with handling_signals():
    try:
        with h5py.File(raw, "w") as f:
            f.create_dataset("x", data=np.arange(100000.0), chunks=(1000,), compression="gzip")
            f.flush()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 5:  # raised here, once h5py has returned
            pass
        print("not interrupted")
    except KeyboardInterrupt as exc:
        print("stopped by", type(exc).__name__)
"""


@posix_only
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_inside_an_hdf5_callback_waits_until_hdf5_returns(tmp_path, sig):
    pytest.importorskip("h5py")
    code = _HDF5_CALLBACK.replace("signal.SIG)", f"signal.{sig})")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.h5")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    name = "Terminated" if sig == "SIGTERM" else "KeyboardInterrupt"
    assert res.stdout.strip() == f"stopped by {name}"
    assert res.stderr == ""  # no "Exception ignored", no SystemError from inside HDF5
