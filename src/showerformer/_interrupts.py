"""Ctrl-C and SIGTERM as stop requests that no part of a run can lose or mishandle."""

# Python raises KeyboardInterrupt wherever the main thread is when it handles the signal. Two
# places make that unsafe:
#   - a ``__del__`` method or a weakref callback (h5py, numpy and the standard library run many
#     while objects are freed): the exception is printed as "Exception ignored in ..." and
#     dropped, and the run goes on as if nothing had happened;
#   - Python code that HDF5 calls back while h5py is inside the C library (a file object under
#     h5py's ``fileobj`` driver): the exception corrupts the library's state, and the process
#     ends in a segmentation fault.
# So the handler first records the request. Inside h5py it raises nothing and asks again every
# 20 ms (from a timer thread, through ``_thread.interrupt_main``) until h5py has returned; a
# dropped exception is noticed by ``sys.unraisablehook`` and asked again the same way. Writers
# also call :func:`check_interrupt` between chunks, and :func:`~showerformer._atomic.atomic_path`
# calls it before its final rename, so no output replaces an earlier file after an interrupt.
# The command line (:func:`showerformer.cli.main`) installs the handlers with
# :func:`handling_signals` and turns the request into exit status 130 (SIGINT) or 143 (SIGTERM).

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any, TypeVar

__all__ = [
    "Terminated",
    "check_interrupt",
    "defer_interrupts",
    "exit_status",
    "handling_signals",
    "interrupt_pending",
]

_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
_FORCE_AFTER = 3  # the third request stops at once, without cleanup
_RETRY_S = 0.02  # how often a deferred request is raised again
_UNSAFE_PACKAGES = ("h5py",)  # no exception may be raised while these are on the stack
_UNSAFE_CODE: set[CodeType] = set()  # functions marked with defer_interrupts()
_FILE_METHODS = frozenset({"read", "readinto", "write", "seek", "tell", "truncate", "flush",
                           "close"})  # what h5py's fileobj driver calls back

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception: it unwinds like Ctrl-C (``finally`` blocks and the writers'
    cleanup run), and the command line exits with status 143.

    It derives from :class:`KeyboardInterrupt`, so that code which already stops cleanly on
    Ctrl-C (the trainer, DataLoader workers, rich's live displays) treats it alike, and
    ``except Exception`` does not catch it.
    """


class _State:
    """What the installed handlers have seen (one per process)."""

    def __init__(self) -> None:
        self.active = False  # handlers installed by handling_signals()
        self.pid = -1  # the process that installed them (forked children behave as before)
        self.pending: int | None = None  # the first signal received
        self.count = 0  # signals received from outside
        self.unraised = False  # recorded, but not raised yet where it can take effect
        self.retries = 0  # re-deliveries requested by the timer and not handled yet
        self.timer = False  # a re-delivery is scheduled
        self.previous: dict[int, Any] = {}
        self.previous_hook: Any = None


_state = _State()
_lock = threading.Lock()


def interrupt_pending() -> int | None:
    """The signal number of a stop request received under :func:`handling_signals`, else
    None."""
    if _state.active and _state.pid == os.getpid():
        return _state.pending
    return None


def exit_status(signum: int) -> int:
    """The shell's exit status for a run stopped by ``signum``: 128 + signum (130, 143)."""
    return 128 + int(signum)


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def check_interrupt() -> None:
    """Raise the pending stop request, if any.

    Long loops that write files call this between chunks: a request that could not be raised
    where it arrived (inside h5py, or dropped by a ``__del__``) stops the run here at the
    latest.

    Raises:
        KeyboardInterrupt: Ctrl-C (SIGINT) was received.
        Terminated: SIGTERM was received.
    """
    signum = interrupt_pending()
    if signum is not None:
        _state.unraised = False
        raise _exception(signum)


def defer_interrupts(func: F) -> F:
    """Mark ``func`` as code in which no stop request may be raised (e.g. a file object's
    methods that a C library calls back); the request is raised once it has returned."""
    _UNSAFE_CODE.add(func.__code__)
    return func


def _file_method(frame: FrameType) -> bool:
    """Whether ``frame`` runs a method of a Python file object (which a C library such as
    HDF5 may be calling back)."""
    code = frame.f_code
    if code.co_name not in _FILE_METHODS or code.co_varnames[:1] != ("self",):
        return False
    obj = frame.f_locals.get("self")
    return all(callable(getattr(obj, m, None)) for m in ("seek", "write"))


def _unsafe(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a caller is inside h5py, a Python file object's method or a
    :func:`defer_interrupts` function."""
    roots = []
    for name in _UNSAFE_PACKAGES:
        mod = sys.modules.get(name)
        path = getattr(mod, "__file__", None)
        if path:
            roots.append(os.path.dirname(path) + os.sep)
    f = frame
    while f is not None:
        code = f.f_code
        if (code in _UNSAFE_CODE or any(code.co_filename.startswith(r) for r in roots)
                or _file_method(f)):
            return True
        f = f.f_back
    return False


def _schedule_retry() -> None:
    with _lock:
        if _state.timer:
            return
        _state.timer = True
    timer = threading.Timer(_RETRY_S, _retry)
    timer.daemon = True
    timer.start()


def _retry() -> None:
    with _lock:
        _state.timer = False
        if not (_state.active and _state.unraised and _state.pending is not None):
            return
        _state.retries += 1
        _thread.interrupt_main(_state.pending)  # the handler runs again in the main thread


def _handler(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _state.pid:  # a forked child (DataLoader worker, ...): as before
        _call_previous(signum, frame)
        return
    retry = _state.retries > 0
    if retry:
        _state.retries -= 1
    if not _state.active:
        if not retry:
            _call_previous(signum, frame)
        return
    if not retry:
        _state.count += 1
        if _state.pending is None:
            _state.pending = signum
            _state.unraised = True
        elif _state.count >= _FORCE_AFTER:
            # asked three times: stop now with the default action; the next run removes the
            # temporary files this leaves (see atomic_path)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
    if not _state.unraised:
        return  # the stop is already unwinding: let the cleanup finish
    if _unsafe(frame):
        _schedule_retry()  # raised once the main thread has left h5py
        return
    _state.unraised = False
    raise _exception(_state.pending)


def _call_previous(signum: int, frame: FrameType | None) -> None:
    previous = _state.previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous in (signal.SIG_DFL, None):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _unraisable(info: Any) -> None:
    if (_state.active and _state.pending is not None and os.getpid() == _state.pid
            and isinstance(info.exc_value, KeyboardInterrupt)):
        _state.unraised = True  # dropped in a __del__ or a callback: raise it again
        _schedule_retry()
        return
    hook = _state.previous_hook or sys.__unraisablehook__
    hook(info)


def _noop() -> None:
    """A call: the main thread handles signals that are already waiting when it returns."""


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as recorded stop requests while the block runs.

    The first signal is recorded and raised in the main thread (:class:`KeyboardInterrupt` for
    SIGINT, :class:`Terminated` for SIGTERM) as soon as that is safe (see the module notes); a
    second one is recorded but does not interrupt the cleanup that the first started; a third
    stops the process at once with the signal's default action. Signals that were ignored when
    the block started (``nohup``, background jobs) stay ignored; forked child processes keep
    the earlier behaviour. Outside the main thread, or when already active, the block runs
    unchanged. The earlier handlers are restored at the end.
    """
    if _state.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {int(s): signal.getsignal(s) for s in _SIGNALS}
    with _lock:
        _state.__init__()  # type: ignore[misc]
        _state.previous = previous
        _state.pid = os.getpid()
        _state.previous_hook = sys.unraisablehook
    installed = []
    try:
        for s in _SIGNALS:
            if previous[int(s)] != signal.SIG_IGN:
                signal.signal(s, _handler)
                installed.append(s)
        sys.unraisablehook = _unraisable
        _state.active = True
        yield
    finally:
        with _lock:
            _state.active = False  # no re-delivery is requested from now on
        _noop()  # one already requested reaches _handler, which ignores it
        for s in installed:
            before = previous[int(s)]
            signal.signal(s, signal.SIG_DFL if before is None else before)
        if sys.unraisablehook is _unraisable:
            sys.unraisablehook = _state.previous_hook
        _state.pending = None
        _state.unraised = False
