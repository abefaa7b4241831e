"""Command-line interface: a thin typer layer over the library (``showerformer --help``)."""

from __future__ import annotations

import sys

import typer

from showerformer import __version__
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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; library errors become one line on stderr and exit status 2."""
    from showerformer.errors import ShowerformerError

    args = sys.argv[1:] if argv is None else argv
    _STATE["debug"] = "--debug" in args
    try:
        app(args=args, prog_name="showerformer")
    except ShowerformerError as exc:
        if _STATE["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
