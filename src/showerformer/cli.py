"""Command-line interface: a thin typer layer over the library (``showerformer --help``)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from typing import NoReturn

import typer

from showerformer import __version__
from showerformer._interrupts import Terminated, exit_status, handling_signals, interrupt_pending
from showerformer.commands import voxel_benchmarks as _voxel_benchmarks  # noqa: F401  (registers)
from showerformer.commands.benchmark import benchmark_app
from showerformer.commands.demo import demo
from showerformer.commands.evaluate import evaluate, evaluate_regression
from showerformer.commands.files import convert, info
from showerformer.commands.models import model_summary
from showerformer.commands.simulate import simulate
from showerformer.commands.train import predict, sample, train_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="showerformer",
    help="Transformer-based machine learning for calorimeter showers. "
    "Units: energies MeV in files (GeV on the command line where stated), lengths mm, angles rad.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"showerformer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _STATE["debug"] = debug


app.command()(info)
app.command()(convert)
app.command()(simulate)
app.command()(evaluate)
app.command("evaluate-regression")(evaluate_regression)
app.command("model-summary")(model_summary)
app.add_typer(train_app, name="train")
app.command()(predict)
app.command()(sample)
app.add_typer(benchmark_app, name="benchmark")
app.command()(demo)


class _OneLineHandler(logging.Handler):
    """Shows the library's log records on stderr, one line each (``warning: ...``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(self.format(record).split())
        except Exception:  # a broken record must not end the run
            self.handleError(record)
            return
        typer.echo(f"{record.levelname.lower()}: {text}", err=True)


@contextlib.contextmanager
def _library_log_lines() -> Iterator[None]:
    logger = logging.getLogger("showerformer")
    handler = _OneLineHandler(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _stop(signum: int) -> NoReturn:
    typer.echo("terminated" if signum == signal.SIGTERM else "interrupted", err=True)
    sys.exit(exit_status(signum))


def _stop_if_interrupted() -> None:
    """End with the exit status of a recorded stop request, if there is one (also when its
    exception was dropped and the command went on, or ended in another error)."""
    signum = interrupt_pending()
    if signum is not None:
        _stop(signum)


def _usage_error(exc: BaseException) -> tuple[str, int] | None:
    """``(one line, exit status)`` for an error of the option parser (bad or missing option,
    unknown command), else None; an empty line when the parser already printed the help."""
    if type(exc).__name__ == "Abort":  # end of input at a prompt
        return "aborted", 1
    code = getattr(exc, "exit_code", None)
    show = getattr(exc, "format_message", None)
    if not isinstance(code, int) or not callable(show):
        return None
    text = " ".join(str(show()).split())
    if not text:  # no arguments: the help was printed
        return "", code
    ctx = getattr(exc, "ctx", None)
    where = getattr(ctx, "command_path", None)
    return (f"{text} (see '{where} -h')" if where else text), code


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; library errors become one line on stderr and exit status 2.

    Option errors found by the parser (a non-integer ``--n``, an unknown option) are one line
    with exit status 2 as well. Ctrl-C stops a command with one line ``interrupted`` and exit
    status 130, SIGTERM with ``terminated`` and 143; files being written are left as they were
    (see :mod:`showerformer._interrupts`). A full disk met by any writer is one line and
    status 2.
    """
    from showerformer._paths import disk_full_error
    from showerformer.errors import ShowerformerError

    args = sys.argv[1:] if argv is None else argv
    _STATE["debug"] = "--debug" in args
    with handling_signals(), _library_log_lines():
        try:
            code = app(args=args, prog_name="showerformer", standalone_mode=False)
        except SystemExit:
            _stop_if_interrupted()
            raise
        except KeyboardInterrupt as exc:
            _stop_if_interrupted()
            _stop(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
        except ShowerformerError as exc:
            _stop_if_interrupted()
            if _STATE["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            _stop_if_interrupted()
            err = disk_full_error(exc, exc.filename or "(output)", option="")
            if err is None or _STATE["debug"]:
                raise
            typer.echo(f"error: {err}", err=True)
            sys.exit(2)
        except Exception as exc:
            _stop_if_interrupted()
            usage = _usage_error(exc)
            if usage is None:
                raise
            if usage[0]:
                typer.echo(f"error: {usage[0]}", err=True)
            sys.exit(usage[1])
        except BaseException:
            _stop_if_interrupted()
            raise
        _stop_if_interrupted()
        if code == 130:  # typer's answer to a KeyboardInterrupt raised without our handler
            _stop(signal.SIGINT)
        sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
