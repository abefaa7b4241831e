"""Model commands: ``showerformer model-summary``."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["model_summary"]


def model_summary(
    name: Annotated[str, typer.Argument(help="Model family, e.g. particle-cnn-transformer.")],
) -> None:
    """Print a model family's parameter breakdown (next to the published one where known);
    families whose sizes follow their data are shown on the data of their paper (the voxel
    transformers on Par04's 18 x 50 x 45 cells)."""
    from showerformer.models import get_model_class

    cls = get_model_class(name)
    example = getattr(cls, "for_summary", None)
    typer.echo((example() if callable(example) else cls()).summary())
