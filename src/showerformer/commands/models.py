"""Model commands: ``showerformer model-summary``."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["model_summary"]


def model_summary(
    name: Annotated[str, typer.Argument(help="Model family, e.g. particle-cnn-transformer.")],
) -> None:
    """Print a model family's parameter breakdown (next to the published one where known)."""
    from showerformer.models import get_model_class

    typer.echo(get_model_class(name)().summary())
