"""File commands: ``showerformer info`` and ``showerformer convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["convert", "info"]

_FORMATS = ("calochallenge", "pointcloud", "par04")


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def info(
    path: Annotated[Path, typer.Argument(help="A shower file: CaloChallenge or Par04 HDF5, "
                                         "point-cloud HDF5 or EDM4hep ROOT.")],
    geometry: Annotated[str | None, typer.Option(
        help="Geometry preset or binning XML (default: inferred from the file).")] = None,
) -> None:
    """Describe a shower file: format, geometry, showers, energy range, size, sparsity."""
    from rich.console import Console
    from rich.table import Table

    from showerformer.io import summarize

    s = summarize(path, geometry=geometry)
    table = Table(title=str(path), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("format", s["format"])
    table.add_row("geometry", s["geometry"])
    table.add_row("showers", f"{s['n_showers']:,}")
    lo, hi = s["energy_min_mev"], s["energy_max_mev"]
    table.add_row("incident energy",
                  f"{lo / 1e3:.4g} - {hi / 1e3:.4g} GeV (mean {s['energy_mean_mev'] / 1e3:.4g} GeV)")
    if s.get("particles"):
        table.add_row("particles", s["particles"])
    table.add_row("size", _human_bytes(s["size_bytes"]))
    if "sparsity" in s:
        table.add_row("sparsity", f"{s['sparsity']:.4f} (fraction of empty cells)")
    if "mean_points" in s:
        table.add_row("points per shower",
                      f"{s['mean_points']:.1f} mean, {s['min_points']} - {s['max_points']}")
    Console().print(table)


def convert(
    source: Annotated[Path, typer.Argument(help="Input shower file (any supported format).")],
    target: Annotated[Path, typer.Argument(help="Output file (.h5).")],
    to: Annotated[str | None, typer.Option(
        help="Output format: calochallenge (voxels), pointcloud or par04. "
             "Default: voxels become point clouds and point clouds become voxels.")] = None,
    geometry: Annotated[str | None, typer.Option(
        help="Geometry preset or binning XML for voxelizing point clouds.")] = None,
    dequantize: Annotated[bool, typer.Option(
        help="Place points uniformly inside their cell instead of at the cell centre.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the dequantization.")] = 0,
) -> None:
    """Convert between formats: voxels <-> points, CaloChallenge <-> Par04 <-> point clouds."""
    from showerformer.errors import InputError
    from showerformer.geometry import get_geometry
    from showerformer.io import read_showers, write_showers
    from showerformer.showers import PointShowers, VoxelShowers

    if to is not None and to not in _FORMATS:
        raise InputError(f"unknown output format {to!r}", key="--to",
                         expected=" or ".join(_FORMATS))
    geo = get_geometry(geometry) if geometry is not None else None
    showers = read_showers(source, geometry=geo)
    if to is None:
        to = "pointcloud" if isinstance(showers, VoxelShowers) else "calochallenge"
    if to == "pointcloud" and isinstance(showers, VoxelShowers):
        showers = showers.to_points(dequantize=dequantize, rng=seed)
    elif to in ("calochallenge", "par04") and isinstance(showers, PointShowers):
        showers = showers.to_voxels(geo)
    write_showers(target, showers, format=to)
    typer.echo(f"wrote {len(showers):,} showers to {target} ({to})")
