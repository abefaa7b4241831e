"""Recognize a shower file's format, read or write any supported format, summarize a file."""

from __future__ import annotations

import importlib
import math
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.io.calochallenge import (
    ENERGY_KEY,
    SHOWERS_KEY,
    _check_range,
    _open_h5,
    iter_calochallenge,
    read_calochallenge,
    write_calochallenge,
)
from showerformer.io.par04 import iter_par04, par04_layout, read_par04, write_par04
from showerformer.io.sparse import SparseVoxelFile, is_sparse_file, read_sparse, write_sparse
from showerformer.showers import PDG, PointShowers, VoxelShowers, outside_phrase

__all__ = ["FORMATS", "detect_format", "read_showers", "summarize", "write_showers"]

FORMATS = ("calochallenge", "par04", "pointcloud", "sparse-voxels", "edm4hep")
"""Format names known to :func:`detect_format`, :func:`read_showers` and :func:`write_showers`."""

_LAYOUTS = (
    "calochallenge ('incident_energies' (N, 1) + 'showers' (N, n_voxels)), "
    "par04 ('showers' (N, r, phi, z) + 'incident_energy', or one (n, r, phi, z) dataset per "
    "energy), pointcloud ('events' (N, P, 4) + 'energy'), sparse-voxels ('offsets', 'cell', "
    "'energy') or edm4hep (a ROOT file)"
)
_A_FILE = "a shower file (CaloChallenge, Par04 or point-cloud HDF5, or EDM4hep ROOT)"
_ROOT_MAGIC = b"root"
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_SUMMARY_BLOCK_BYTES = 64 << 20

GeometryLike = str | os.PathLike[str] | Geometry


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InputError("no such file", path=path, expected=_A_FILE)
    if path.is_dir():
        raise InputError("is a directory, not a file", path=path, expected=_A_FILE)
    if not os.access(path, os.R_OK):
        raise InputError("not readable (permission denied)", path=path)
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)", path=path, expected=_A_FILE)


def _describe_keys(f: h5py.File, limit: int = 8) -> str:
    items = []
    for key, obj in list(f.items())[:limit]:
        items.append(f"'{key}' {obj.shape}" if isinstance(obj, h5py.Dataset)
                     else f"'{key}' (group)")
    if len(f) > limit:
        items.append(f"... {len(f) - limit} more")
    return ", ".join(items) or "nothing"


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a shower file: ``"calochallenge"``, ``"par04"``, ``"pointcloud"``,
    ``"sparse-voxels"`` or ``"edm4hep"``.

    A ROOT file (``root`` signature) is EDM4hep. In an HDF5 file: ``events`` + ``energy`` make a
    point cloud; a 4-D ``showers`` or datasets named by energies holding (n, r, phi, z) images
    make Par04; ``incident_energies`` or a ``showers`` dataset make CaloChallenge (whose reader
    then checks the shapes).

    Arguments:
        path: the file.

    Returns:
        The format name.

    Raises:
        InputError: missing, empty or unreadable file, or a layout of none of these formats
            (naming the datasets found and the layouts expected).
    """
    p = Path(path)
    _check_path(p)
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head == _ROOT_MAGIC:
        return "edm4hep"
    if p.suffix.lower() == ".root":
        raise InputError("not a ROOT file (no 'root' signature)", path=p,
                         expected="an EDM4hep ROOT file")
    with _open_h5(p, _A_FILE) as f:
        if len(f) == 0:
            raise InputError("the HDF5 file holds no datasets", path=p, expected=_LAYOUTS)
        if is_sparse_file(f):
            return "sparse-voxels"
        if "events" in f and "energy" in f:
            return "pointcloud"
        if par04_layout(f) is not None:
            return "par04"
        if ENERGY_KEY in f or SHOWERS_KEY in f:
            return "calochallenge"
        raise InputError(f"unknown layout (the file holds {_describe_keys(f)})", path=p,
                         expected=_LAYOUTS)


def _format_for_writing(path: Path, showers: Any, fmt: str | None) -> str:
    if fmt is None:
        suffix = path.suffix.lower()
        if suffix == ".root":
            fmt = "edm4hep"
        elif suffix in _HDF5_SUFFIXES or suffix == "":
            fmt = "pointcloud" if isinstance(showers, PointShowers) else "calochallenge"
        else:
            raise InputError(f"cannot tell the format from the extension {suffix!r}", path=path,
                             key="format", expected=f"a .h5 / .hdf5 file or one of {FORMATS}")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", path=path, key="format",
                         expected=" or ".join(FORMATS))
    return fmt


def read_showers(
    path: str | os.PathLike[str], geometry: GeometryLike | None = None, **kw: Any
) -> VoxelShowers | PointShowers:
    """Read any supported shower file, dispatching on :func:`detect_format`.

    Arguments:
        path: the file.
        geometry: passed to the reader (voxel geometry, or the geometry of point clouds).
        **kw: further reader options, e.g. ``start`` / ``stop`` (integers >= 0, for every
            format; the events of an EDM4hep file).

    Returns:
        :class:`VoxelShowers` for CaloChallenge and Par04 files, whatever the point-cloud and
        EDM4hep readers return otherwise.

    Raises:
        InputError: a bad file (as the readers say), a negative ``start`` or ``stop``.
    """
    _check_range(kw.get("start", 0), kw.get("stop"), path)
    fmt = detect_format(path)
    if fmt == "calochallenge":
        return read_calochallenge(path, geometry, **kw)
    if fmt == "par04":
        return read_par04(path, geometry, **kw)
    if fmt == "sparse-voxels":
        return read_sparse(path, geometry=geometry, **kw)
    if fmt == "pointcloud":
        module = importlib.import_module("showerformer.io.pointcloud")
        return module.read_pointcloud(path, geometry=geometry, **kw)
    module = importlib.import_module("showerformer.io.edm4hep")
    if "start" in kw or "stop" in kw:  # events are the showers of an EDM4hep file
        kw["entry_start"], kw["entry_stop"] = kw.pop("start", None), kw.pop("stop", None)
    return module.read_edm4hep(path, geometry=geometry, **kw)


def write_showers(
    path: str | os.PathLike[str],
    showers: VoxelShowers | PointShowers,
    format: str | None = None,
    **kw: Any,
) -> Path:
    """Write showers in a named format, or the one the extension and container imply.

    Without ``format``, ``.h5`` / ``.hdf5`` files get CaloChallenge voxels for
    :class:`VoxelShowers` and point clouds for :class:`PointShowers`. No implicit conversion:
    voxelize point clouds (``to_voxels``) or make points (``to_points``) first.

    Arguments:
        path: the target file (written atomically).
        showers: the showers.
        format: ``"calochallenge"``, ``"par04"``, ``"pointcloud"`` or ``"sparse-voxels"``.
        **kw: writer options.

    Returns:
        The path written.
    """
    p = Path(path)
    fmt = _format_for_writing(p, showers, format)
    if fmt == "edm4hep":
        raise InputError("writing EDM4hep files is not supported", path=p, key="format",
                         expected="calochallenge, par04 or pointcloud")
    if fmt == "calochallenge":
        return write_calochallenge(p, showers, **kw)
    if fmt == "par04":
        return write_par04(p, showers, **kw)
    if fmt == "sparse-voxels":
        if not isinstance(showers, VoxelShowers):
            raise InputError(f"cannot write {type(showers).__name__} as sparse voxels", path=p,
                             key="format", expected="VoxelShowers (PointShowers.to_voxels())")
        return write_sparse(p, showers, **kw)
    if not isinstance(showers, PointShowers):
        raise InputError(f"cannot write {type(showers).__name__} as a point cloud", path=p,
                         key="format", expected="PointShowers (VoxelShowers.to_points())")
    module = importlib.import_module("showerformer.io.pointcloud")
    module.write_pointcloud(p, showers, **kw)
    return p


def _particles(counts: Counter[int]) -> str | None:
    if not counts or set(counts) == {0}:
        return None
    names: dict[int, str] = {}
    for name, pdg in PDG.items():
        names.setdefault(pdg, name)
    return ", ".join(f"{names.get(pdg, 'pdg')} ({pdg}): {n:,}"
                     for pdg, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _summarize_sparse(p: Path, geometry: GeometryLike | None) -> dict[str, Any]:
    with SparseVoxelFile(p, geometry=geometry, in_memory=False) as f:
        f.validate()  # every hit, chunk by chunk: cells inside the geometry, energies
    n = len(f)
    e = f.conditions.energy
    out: dict[str, Any] = {
        "path": str(p), "format": "sparse-voxels", "geometry": f.geometry.name,
        "geometry_description": f.geometry.describe(), "n_showers": n,
        "energy_min_mev": float(e.min()), "energy_max_mev": float(e.max()),
        "energy_mean_mev": float(e.mean()), "size_bytes": p.stat().st_size,
        "sparsity": 1.0 - f.n_hits / (n * f.geometry.n_cells),
        "mean_points": f.n_hits / n, "min_points": int(f.counts.min()),
        "max_points": int(f.counts.max()),
    }
    ids, counts = np.unique(f.conditions.pdg, return_counts=True)
    particles = _particles(Counter(dict(zip(ids.tolist(), counts.tolist(), strict=True))))
    if particles:
        out["particles"] = particles
    return out


def summarize(
    path: str | os.PathLike[str], geometry: GeometryLike | None = None, *,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Describe a shower file for ``showerformer info``, streaming it in chunks.

    Arguments:
        path: the file.
        geometry: as in :func:`read_showers`.
        chunk_size: showers per chunk for the voxel formats (default about 64 MiB).

    Returns:
        A dict with ``path``, ``format``, ``geometry`` (name, ``"none"`` without one),
        ``geometry_description``, ``n_showers``, ``energy_min_mev``, ``energy_max_mev``,
        ``energy_mean_mev``, ``size_bytes``, ``particles`` (when PDG ids are stored), and
        ``sparsity`` (fraction of zero cells) for voxels or ``mean_points``, ``min_points``,
        ``max_points`` (points per shower), ``layer_min``, ``layer_max`` and, with a
        geometry, ``outside_points``, ``outside_energy_mev`` and ``outside_showers`` (points
        outside the geometry, see :meth:`PointShowers.outside_mask`) for point clouds.

    Raises:
        InputError: any bad file (as the readers), a file of 0 showers, and a point-cloud
            file whose points lie outside the geometry it names or implies (EDM4hep files
            are described instead: their hits far from the shower are expected).
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "sparse-voxels":
        return _summarize_sparse(p, geometry)
    chunks: Iterable[VoxelShowers | PointShowers]
    if fmt == "calochallenge":
        chunks = iter_calochallenge(p, chunk_size, geometry)
    elif fmt == "par04":
        chunks = iter_par04(p, chunk_size, geometry)
    elif fmt == "pointcloud":
        module = importlib.import_module("showerformer.io.pointcloud")
        iterate = getattr(module, "iter_pointcloud", None)
        chunks = (iterate(p, geometry=geometry) if iterate is not None
                  else [module.read_pointcloud(p, geometry=geometry)])
    else:
        module = importlib.import_module("showerformer.io.edm4hep")
        chunks = [module.read_edm4hep(p, geometry=geometry)]

    n = 0
    e_min, e_max, e_sum = math.inf, -math.inf, 0.0
    zeros = cells = 0
    pts_sum, pts_min, pts_max = 0, None, None
    layer_min, layer_max = math.inf, -math.inf
    out_points = out_showers = out_layer = 0
    out_energy = 0.0
    pdg: Counter[int] = Counter()
    geo: Geometry | None = None
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        geo = chunk.geometry if geo is None else geo
        e = chunk.conditions.energy
        n += len(chunk)
        e_min, e_max = min(e_min, float(e.min())), max(e_max, float(e.max()))
        e_sum += float(e.sum())
        ids, counts = np.unique(chunk.conditions.pdg, return_counts=True)
        pdg.update(dict(zip(ids.tolist(), counts.tolist(), strict=True)))
        if isinstance(chunk, VoxelShowers):
            cells += chunk.energies.size
            zeros += chunk.energies.size - int(np.count_nonzero(chunk.energies))
        else:
            k = chunk.n_points
            pts_sum += int(k.sum())
            pts_min = int(k.min()) if pts_min is None else min(pts_min, int(k.min()))
            pts_max = int(k.max()) if pts_max is None else max(pts_max, int(k.max()))
            layers = chunk.points[..., 4][chunk.mask]  # (m,)
            if layers.size:
                layer_min = min(layer_min, float(layers.min()))
                layer_max = max(layer_max, float(layers.max()))
            if chunk.geometry is not None:
                outside = chunk.outside_mask()  # (n, P)
                out_points += int(outside.sum())
                out_showers += int(outside.any(axis=1).sum())
                out_energy += float(chunk.points[..., 3][outside].sum(dtype=np.float64))
                out_layer += int(((layers < 0) | (layers >= chunk.geometry.n_layers)).sum())
    if n == 0:
        raise InputError("the file holds 0 showers", path=p, expected="at least one shower")
    if fmt == "pointcloud" and geo is not None and out_points:
        detail = (f", {out_layer:,} of them with a layer index outside 0..{geo.n_layers - 1}"
                  if out_layer else "")
        raise InputError(
            f"points outside geometry {geo.name}: "
            f"{outside_phrase(out_points, out_energy, out_showers, n)}{detail}", path=p,
            key="events", expected="points inside the cells of the geometry, or showerformer "
            "convert --drop-outside to drop them")
    out: dict[str, Any] = {
        "path": str(p),
        "format": fmt,
        "geometry": geo.name if geo is not None else "none",
        "geometry_description": geo.describe() if geo is not None else "no geometry",
        "n_showers": n,
        "energy_min_mev": e_min,
        "energy_max_mev": e_max,
        "energy_mean_mev": e_sum / n,
        "size_bytes": p.stat().st_size,
    }
    particles = _particles(pdg)
    if particles:
        out["particles"] = particles
    if cells:
        out["sparsity"] = zeros / cells
    if pts_min is not None:
        out["mean_points"] = pts_sum / n
        out["min_points"] = pts_min
        out["max_points"] = pts_max
        if math.isfinite(layer_min):
            out["layer_min"], out["layer_max"] = int(layer_min), int(layer_max)
        if geo is not None:
            out["outside_points"] = out_points
            out["outside_energy_mev"] = out_energy
            out["outside_showers"] = out_showers
    return out
