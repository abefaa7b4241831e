"""File commands: ``showerformer info`` and ``showerformer convert``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from showerformer.geometry import Geometry
    from showerformer.showers import PointShowers, VoxelShowers

__all__ = ["convert", "info", "info_table"]

_FORMATS = ("calochallenge", "pointcloud", "par04", "sparse-voxels")
_VOXEL_FORMATS = ("calochallenge", "par04", "sparse-voxels")
_POINT_SOURCES = ("pointcloud", "edm4hep")
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_ILD_ALIASES = ("ild", "ild-ecal")


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _geometry_option(spec: str | None) -> Geometry | None:
    """The geometry named by ``--geometry`` (preset, binning XML or ``ild``), checked before any
    work; an unknown name is an error naming the option.

    Raises:
        InputError: an unknown preset, or a binning XML that is missing or unreadable.
    """
    from showerformer.errors import InputError
    from showerformer.geometry import get_geometry

    if spec is None:
        return None
    try:
        return get_geometry("ild-ecal" if spec in _ILD_ALIASES else spec)
    except InputError as exc:
        if exc.path is not None:  # a binning XML: the message names the file
            raise
        raise InputError(exc.what, key="--geometry", expected=exc.expected) from None


def info(
    path: Annotated[Path, typer.Argument(help="A shower file: CaloChallenge or Par04 HDF5, "
                                         "point-cloud HDF5, sparse voxels or EDM4hep ROOT.")],
    geometry: Annotated[str | None, typer.Option(
        help="Geometry preset or binning XML (default: inferred from the file).")] = None,
) -> None:
    """Describe a shower file: format, geometry, showers, energy range, size, sparsity.

    Every shower is read and checked; a point-cloud file whose points lie outside the geometry
    it names (or --geometry) is an error, EDM4hep hits outside the geometry are described.
    """
    from showerformer.commands.tables import show_table

    show_table(info_table(path, geometry))


def info_table(path: Path, geometry: str | None = None) -> Any:
    """The table ``showerformer info`` prints, as a
    :class:`~showerformer.commands.tables.ResultTable` (``field``, ``value``)."""
    from showerformer.commands.tables import ResultTable
    from showerformer.io import summarize
    from showerformer.showers import outside_phrase

    _geometry_option(geometry)
    s = summarize(path, geometry=geometry)
    table = ResultTable(str(path), ["field", "value"], left=frozenset({"field", "value"}))
    table.add_row("format", s["format"])
    table.add_row("geometry", s["geometry"])
    table.add_row("showers", f"{s['n_showers']:,}")
    lo, hi, mean = s["energy_min_mev"], s["energy_max_mev"], s["energy_mean_mev"]
    table.add_row("incident energy",
                  f"{lo / 1e3:.4g} - {hi / 1e3:.4g} GeV (mean {mean / 1e3:.4g} GeV)")
    if s.get("particles"):
        table.add_row("particles", s["particles"])
    table.add_row("size", _human_bytes(s["size_bytes"]))
    if "sparsity" in s:
        table.add_row("sparsity", f"{s['sparsity']:.4f} (fraction of empty cells)")
    if "mean_points" in s:
        table.add_row("points per shower",
                      f"{s['mean_points']:.1f} mean, {s['min_points']} - {s['max_points']}")
    if "layer_min" in s:
        table.add_row("layer indices", f"{s['layer_min']} - {s['layer_max']}")
    if s.get("outside_points"):
        phrase = outside_phrase(s["outside_points"], s["outside_energy_mev"],
                                s["outside_showers"], s["n_showers"])
        table.add_row("outside the geometry", f"{phrase} (convert --drop-outside drops them)")
    return table


def _check_target(source: Path, target: Path) -> None:
    """``TARGET`` is a writable HDF5 file path other than ``SOURCE``, checked before reading."""
    from showerformer._paths import check_output_file
    from showerformer.errors import OutputError

    suffix = target.suffix.lower()
    if suffix and suffix not in _HDF5_SUFFIXES:
        raise OutputError(f"the suffix {suffix!r} is not an HDF5 file name", path=target,
                          option="TARGET",
                          expected=f"a file ending in {', '.join(_HDF5_SUFFIXES)}")
    check_output_file(target, option="TARGET")
    same = source.resolve() == target.resolve()  # also through links and ".."
    if not same and source.exists() and target.exists():
        same = source.samefile(target)  # hard links
    if same:
        raise OutputError("is the source file", path=target, option="TARGET",
                          expected="another file than SOURCE (converting in place would "
                          "destroy the source)")


def convert(
    source: Annotated[Path, typer.Argument(help="Input shower file (any supported format).")],
    target: Annotated[Path, typer.Argument(help="Output file (.h5); replaced atomically.")],
    to: Annotated[str | None, typer.Option(
        help="Output format: calochallenge (voxels), par04, sparse-voxels or pointcloud. "
             "Default: voxels become point clouds and point clouds become voxels.")] = None,
    geometry: Annotated[str | None, typer.Option(
        help="Geometry preset or binning XML for voxelizing point clouds.")] = None,
    dequantize: Annotated[bool, typer.Option(
        help="Place points uniformly inside their cell instead of at the cell centre "
             "(voxels -> points only).")] = False,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the dequantization (with --dequantize; default 0).")] = None,
    drop_outside: Annotated[bool, typer.Option(
        "--drop-outside",
        help="Drop points outside the geometry (layer index outside its layers, position in "
             "no cell) and say how many and how much energy; without it such points are an "
             "error.")] = False,
) -> None:
    """Convert between formats: voxels <-> points, CaloChallenge <-> Par04 <-> point clouds."""
    from showerformer.errors import InputError
    from showerformer.io import detect_format, read_showers, write_showers
    from showerformer.showers import PointShowers

    # options first, then the target path, then the source's format: no work before that
    if to is not None and to not in _FORMATS:
        raise InputError(f"unknown output format {to!r}", key="--to",
                         expected=" or ".join(_FORMATS))
    if seed is not None and seed < 0:
        raise InputError(f"--seed {seed}", key="--seed", expected="an integer >= 0")
    if seed is not None and not dequantize:
        raise InputError("--seed without --dequantize has no effect", key="--seed",
                         expected="--seed together with --dequantize")
    geo = _geometry_option(geometry)
    _check_target(source, target)
    fmt = detect_format(source)
    points_in = fmt in _POINT_SOURCES
    if to is None:
        to = "calochallenge" if points_in else "pointcloud"
    if dequantize and (points_in or to != "pointcloud"):
        raise InputError(f"--dequantize with a {fmt} source converted to {to}",
                         key="--dequantize",
                         expected="--dequantize only when voxels become points (--to pointcloud)")
    if drop_outside and not points_in:
        raise InputError(f"--drop-outside with a {fmt} source (voxels are always inside)",
                         key="--drop-outside", expected="--drop-outside only for point clouds")

    showers = read_showers(source, geometry=geometry if fmt in _POINT_SOURCES else geo)
    if isinstance(showers, PointShowers):
        showers = _points_for_writing(showers, source, geo, to, drop_outside)
    elif to == "pointcloud":
        showers = showers.to_points(dequantize=dequantize, rng=0 if seed is None else seed)
    write_showers(target, showers, format=to)
    typer.echo(f"wrote {len(showers):,} showers to {target} ({to})")


def _points_for_writing(showers: PointShowers, source: Path, geo: Geometry | None, to: str,
                        drop_outside: bool) -> PointShowers | VoxelShowers:
    """Point clouds ready for the writer of ``to``: voxelized for a voxel format, else as they
    are. Points outside the geometry are refused (voxels would lose them, and a point-cloud
    file naming the geometry would not be valid) or, with ``--drop-outside``, dropped with one
    line saying how many and how much energy.

    Raises:
        InputError: no geometry to voxelize with, or points outside without ``--drop-outside``.
    """
    from showerformer.errors import InputError

    target_geo = geo or showers.geometry
    if target_geo is None:
        if to in _VOXEL_FORMATS or drop_outside:
            raise InputError("the point clouds carry no geometry", path=source, key="--geometry",
                             expected="--geometry (a preset such as ds2 or a binning XML)")
        return showers
    phrase = showers.describe_outside(target_geo)
    if drop_outside:
        from showerformer.showers import outside_phrase

        typer.echo(f"dropped {phrase or outside_phrase(0, 0.0, 0, len(showers))} outside "
                   f"geometry {target_geo.name}")
    elif phrase is not None:
        # voxels would lose them; a point-cloud file would name a geometry its points leave
        fate = "would be lost" if to in _VOXEL_FORMATS else "cannot be stored with it"
        raise InputError(f"points outside geometry {target_geo.name} {fate}: {phrase}",
                         path=source, key="events",
                         expected="points inside the geometry, or --drop-outside to drop them")
    if to in _VOXEL_FORMATS:
        return showers.to_voxels(target_geo, outside="drop" if drop_outside else "error")
    return showers.drop_outside(target_geo) if drop_outside else showers
