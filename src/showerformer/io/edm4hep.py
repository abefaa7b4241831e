"""EDM4hep ROOT files (key4hep full simulation) read as point-cloud showers, one per event.

The calorimeter-hit collections (``edm4hep::SimCalorimeterHit`` or ``CalorimeterHit``: cellID,
energy in GeV, position in mm) of each event become the points of one shower; the primary
``MCParticles`` entry (generator status 1) gives the incident energy, particle and direction.
Points land in the frame of the CaloClouds point-cloud reader (:mod:`showerformer.ild`): the
event is first turned about the beam axis by a multiple of the stave angle (45 deg for the
8-fold ILD barrel) so that the primary enters the top stave; then x = global Z, y = global X,
z = global Y - 1804.7 mm (depth from the ECAL front face), energies in MeV. Silicon hits of the
ILD ECAL then sit at ``layer_bottom[layer] + 0.2625 mm`` of depth, inside the sensors where the
CaloClouds layer coordinate places its points.

The layer of a hit comes from its cellID, decoded with the collection's ``CellIDEncoding``
string from the file's metadata (``system:0:5,module:5:3,stave:8:4,tower:12:4,layer:16:6,...``:
fields ``name:offset:width`` or ``name:width``, a negative width meaning signed), else from the
depth. For the ILD ECAL silicon collections the cellID layer is 0-based and counts the 30
silicon layers, matching the layer positions of the CaloClouds detector description.

Which collections: by default the ECAL ones (names containing "ecal", any case); where both the
silicon and the scintillator variants of the ILD hybrid ECAL model are present
(``ECal*SiHits*`` and ``ECal*ScHits*``), only the silicon ones, because the hybrid simulation
samples the same shower in both technologies and adding them counts it twice. Without ECAL
collections, every calorimeter-hit collection. All hits of the chosen collections are kept,
including albedo hits far from the shower (they fall outside the ILD geometry's cells).

The example event ``cc3_single_event_example.edm4hep.root`` (a 43.7 GeV photon into the top
barrel stave) has 1,584 ECAL hits in all (barrel and endcap, silicon and scintillator); its 951
silicon hits hold 1016.8 MeV, 2.33 % of the photon energy, the visible fraction of a Si-W ECAL.

References:
    EDM4hep, https://github.com/key4hep/EDM4hep; DD4hep BitFieldCoder for the cellID encoding;
    ILD ECAL SEcal06 in k4geo (ILD_l5_v02); CaloClouds 3 (FLC-QU-hep/CaloClouds-3).
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from showerformer.errors import InputError, require
from showerformer.geometry import Geometry, get_geometry
from showerformer.ild import ILD_ECAL, ILDEcal, ILDGeometry
from showerformer.io.calochallenge import _check_range
from showerformer.showers import Conditions, PointShowers

__all__ = ["CellIDDecoder", "edm4hep_collections", "read_edm4hep"]

_EXPECTED = "an EDM4hep ROOT file with calorimeter-hit collections"
_HIT_TYPES = ("edm4hep::SimCalorimeterHitData", "edm4hep::CalorimeterHitData")
_MC_TYPE = "edm4hep::MCParticleData"

GeometryLike = str | os.PathLike[str] | Geometry


class CellIDDecoder:
    """Decode bit fields of 64-bit cellIDs from a DD4hep ``CellIDEncoding`` string.

    Fields are ``name:offset:width`` or ``name:width`` (offset = end of the previous field);
    a negative width marks a signed (two's complement) field.

    Arguments:
        encoding: e.g. ``"system:5,module:3,stave:4,tower:4,layer:6,wafer:6,slice:4,
            cellX:32:-16,cellY:-16"``.
    """

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.fields: dict[str, tuple[int, int, bool]] = {}
        offset = 0
        for item in encoding.replace(" ", "").split(","):
            if not item:
                continue
            parts = item.split(":")
            try:
                if len(parts) == 2:
                    name, width = parts[0], int(parts[1])
                elif len(parts) == 3:
                    name, offset, width = parts[0], int(parts[1]), int(parts[2])
                else:
                    raise ValueError(item)
            except ValueError:
                raise InputError(f"cannot parse the field {item!r}", key="CellIDEncoding",
                                 expected="name:width or name:offset:width") from None
            signed, width = width < 0, abs(width)
            if width < 1 or offset < 0 or offset + width > 64:
                raise InputError(f"field {item!r} outside 64 bits", key="CellIDEncoding",
                                 expected="offset + |width| <= 64")
            self.fields[name] = (offset, width, signed)
            offset += width

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def __call__(self, cellid: np.ndarray, name: str) -> np.ndarray:
        """The value of field ``name`` for each cellID, (n,) int64."""
        if name not in self.fields:
            raise InputError(f"no field {name!r} in {self.encoding!r}", key="CellIDEncoding",
                             expected=f"one of {', '.join(self.fields)}")
        offset, width, signed = self.fields[name]
        ids = np.asarray(cellid).astype(np.uint64)
        value = ((ids >> np.uint64(offset)) & np.uint64((1 << width) - 1)).astype(np.int64)
        if signed:
            value = np.where(value >= 1 << (width - 1), value - (1 << width), value)
        return value


# ---------------------------------------------------------------------------- file access
def _open_root(path: str | os.PathLike[str]) -> Any:
    uproot = require("uproot", "root", "Reading EDM4hep files")
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", path=p, expected=_EXPECTED)
    if p.is_dir():
        raise InputError("is a directory, not a file", path=p, expected=_EXPECTED)
    if p.stat().st_size == 0:
        raise InputError("empty file (0 bytes)", path=p, expected=_EXPECTED)
    with open(p, "rb") as fh:
        if fh.read(4) != b"root":
            raise InputError("not a ROOT file (no 'root' signature)", path=p, expected=_EXPECTED)
    try:
        return uproot.open(p)
    except Exception as exc:  # uproot raises OSError, ValueError or its own errors
        raise InputError(f"not a readable ROOT file ({_one_line(exc)})", path=p,
                         expected=_EXPECTED) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _events_tree(f: Any, path: Any) -> Any:
    if "events" not in f:
        found = ", ".join(sorted({k.split(";")[0] for k in f.keys()})) or "nothing"
        raise InputError(f"no 'events' tree (the file holds {found})", path=path, key="events",
                         expected=_EXPECTED)
    return f["events"]


def _collections_of(tree: Any, types: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in tree.keys(recursive=False):
        typename = tree[name].typename
        for t in types:
            if t in typename:
                out[name] = t.removeprefix("edm4hep::").removesuffix("Data")
    return out


def _describe_collections(tree: Any) -> str:
    kinds: dict[str, str] = {}
    for name in tree.keys(recursive=False):
        typename = str(tree[name].typename)
        if name.startswith("_"):
            continue
        kind = typename.split("edm4hep::")[-1].rstrip(">").removesuffix("Data")
        kinds[name] = kind if "edm4hep::" in typename else f"not EDM4hep: {typename}"
    items = [f"{k} ({v})" for k, v in kinds.items()]
    if len(items) > 12:
        items = [*items[:12], f"... {len(items) - 12} more"]
    return ", ".join(items) or "nothing"


def edm4hep_collections(path: str | os.PathLike[str]) -> dict[str, str]:
    """The calorimeter-hit collections of an EDM4hep file and their types.

    Arguments:
        path: the ROOT file.

    Returns:
        ``{name: "SimCalorimeterHit" or "CalorimeterHit"}`` in file order.
    """
    with _open_root(path) as f:
        return _collections_of(_events_tree(f, path), _HIT_TYPES)


def _choose(found: dict[str, str], collections: Sequence[str] | str | None, path: Any,
            tree: Any) -> list[str]:
    if not found:
        raise InputError(f"no calorimeter-hit collections (the events hold "
                         f"{_describe_collections(tree)})", path=path, key="events",
                         expected="SimCalorimeterHit or CalorimeterHit collections")
    names = list(found)
    if collections is None:
        ecal = [n for n in names if "ecal" in n.lower()]
        if any("SiHits" in n for n in ecal) and any("ScHits" in n for n in ecal):
            ecal = [n for n in ecal if "ScHits" not in n]
        return ecal or names
    if isinstance(collections, str):
        chosen = [n for n in names if fnmatch.fnmatch(n.lower(), collections.lower())]
        if not chosen:
            raise InputError(f"no collection matches {collections!r}", path=path,
                             key="collections", expected=f"a pattern for {', '.join(names)}")
        return chosen
    missing = [c for c in collections if c not in found]
    if missing:
        raise InputError(f"no calorimeter-hit collection {', '.join(map(repr, missing))}",
                         path=path, key="collections", expected=f"some of {', '.join(names)}")
    return list(collections)


def _cellid_encodings(f: Any) -> dict[str, str]:
    """``{collection: CellIDEncoding}`` from the podio ``metadata`` frame, if stored."""
    out: dict[str, str] = {}
    if "metadata" not in f:
        return out
    try:
        params = f["metadata"]["PARAMETERS"]
        keys = params["_stringMap/_stringMap.first"].array(library="np")
        values = params["_stringMap/_stringMap.second"].array(library="np")
    except Exception:  # another podio layout: fall back to layers from depth
        return out
    for ks, vs in zip(keys, values, strict=False):
        for k, v in zip(ks, vs, strict=False):
            items = list(v)
            if str(k).endswith("__CellIDEncoding") and items:
                out[str(k).removesuffix("__CellIDEncoding")] = str(items[0])
    return out


def _branch(tree: Any, coll: str, leaf: str, path: Any, lo: int | None,
            hi: int | None) -> np.ndarray:
    try:
        return tree[coll][f"{coll}.{leaf}"].array(library="np", entry_start=lo, entry_stop=hi)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {coll}.{leaf} ({_one_line(exc)})", path=path,
                         key=f"{coll}.{leaf}",
                         expected="a complete EDM4hep file") from None


def _primary(mc: dict[str, np.ndarray], i: int, path: Any) -> int:
    status = mc["generatorStatus"][i]
    hits = np.flatnonzero(status == 1)
    if len(hits):
        return int(hits[0])
    orphans = np.flatnonzero(mc["parents_begin"][i] == mc["parents_end"][i])
    if len(orphans):
        return int(orphans[0])
    raise InputError(f"event {i} has no primary particle", path=path, key="MCParticles",
                     expected="an MCParticle with generatorStatus 1")


# ---------------------------------------------------------------------------- reading
def read_edm4hep(
    path: str | os.PathLike[str],
    geometry: GeometryLike | None = None,
    *,
    collections: Sequence[str] | str | None = None,
    ecal: ILDEcal = ILD_ECAL,
    layer_from: str = "auto",
    n_staves: int | None = 8,
    entry_start: int | None = None,
    entry_stop: int | None = None,
) -> PointShowers:
    """Read the calorimeter hits of each event of an EDM4hep file as one point-cloud shower.

    Arguments:
        path: the ROOT file.
        geometry: geometry of the returned showers (default an
            :class:`~showerformer.ild.ILDGeometry` of ``ecal``; ``"ild-ecal"`` or a preset
            name or a Geometry).
        collections: hit collections to read: names, or one case-insensitive glob pattern
            (``"ECal*"``); default the ECAL collections as described in the module docstring.
        ecal: the calorimeter description: front face and layers of the local frame.
        layer_from: ``"cellid"``, ``"depth"`` or ``"auto"`` (cellID when the collection's
            encoding has a ``layer`` field, else depth).
        n_staves: turn each event about the beam axis by a multiple of ``2 pi / n_staves`` so
            that the primary points at the top stave; None keeps the global orientation.
        entry_start, entry_stop: the range of events to read (integers >= 0, counted from the
            first event; None: from the first / to the last).

    Returns:
        :class:`PointShowers` (x, y, z in mm, E in MeV, layer), one per event; conditions with
        the primary's total energy (MeV), PDG id, theta and phi (rad, after the turn), the
        direction in the local frame (extras ``p_norm_local_x/_y/_z``) and the turn angle
        (extra ``rotation``, rad).

    Raises:
        InputError: missing, empty or non-ROOT file, no ``events`` tree, no events, no
            calorimeter-hit collections (naming the collections found), unknown collections,
            no MCParticles, a negative ``entry_start`` or ``entry_stop``.
    """
    if layer_from not in ("auto", "cellid", "depth"):
        raise InputError(f"layer_from={layer_from!r}", key="layer_from",
                         expected="'auto', 'cellid' or 'depth'")
    _check_range(0 if entry_start is None else entry_start, entry_stop, path,
                 keys=("entry_start", "entry_stop"))
    p = Path(path)
    with _open_root(p) as f:
        return _read(f, p, geometry, collections, ecal, layer_from, n_staves, entry_start,
                     entry_stop)


def _read(f: Any, p: Path, geometry: GeometryLike | None, collections: Sequence[str] | str | None,
          ecal: ILDEcal, layer_from: str, n_staves: int | None, entry_start: int | None,
          entry_stop: int | None) -> PointShowers:
    """The body of :func:`read_edm4hep` on an open file."""
    tree = _events_tree(f, p)
    if getattr(tree, "num_entries", None) == 0:
        raise InputError("the file holds 0 showers", path=p, key="events",
                         expected="at least one event")
    chosen = _choose(_collections_of(tree, _HIT_TYPES), collections, p, tree)
    mc_colls = _collections_of(tree, (_MC_TYPE,))
    if not mc_colls:
        raise InputError("no MCParticle collection, so no incident particle", path=p,
                         key="MCParticles", expected="an MCParticles collection")
    mc_name = "MCParticles" if "MCParticles" in mc_colls else next(iter(mc_colls))
    encodings = _cellid_encodings(f)

    geo: Geometry
    if geometry is None or (isinstance(geometry, str) and geometry in ("ild", "ild-ecal")):
        geo = ILDGeometry(ecal)
    else:
        geo = get_geometry(geometry)

    leaves = ("PDG", "generatorStatus", "mass", "momentum.x", "momentum.y", "momentum.z",
              "parents_begin", "parents_end")
    mc = {leaf: _branch(tree, mc_name, leaf, p, entry_start, entry_stop) for leaf in leaves}
    n = len(mc["PDG"])
    hits: dict[str, dict[str, Any]] = {}
    for coll in chosen:
        hits[coll] = {leaf: _branch(tree, coll, leaf, p, entry_start, entry_stop)
                      for leaf in ("cellID", "energy", "position.x", "position.y", "position.z")}
        decoder = CellIDDecoder(encodings[coll]) if coll in encodings else None
        if layer_from == "cellid" and (decoder is None or "layer" not in decoder):
            raise InputError("no CellIDEncoding with a 'layer' field for this collection",
                             path=p, key=coll, expected="layer_from='depth' or 'auto'")
        hits[coll]["decoder"] = decoder

    showers: list[np.ndarray] = []
    energy = np.zeros(n)
    pdg = np.zeros(n, dtype=np.int32)
    theta = np.zeros(n)
    phi = np.zeros(n)
    rotation = np.zeros(n)
    p_local = np.zeros((3, n))
    for i in range(n):
        k = _primary(mc, i, p)
        mom = np.array([mc["momentum.x"][i][k], mc["momentum.y"][i][k],
                        mc["momentum.z"][i][k]], dtype=np.float64)
        p_abs = float(np.linalg.norm(mom))
        if not (math.isfinite(p_abs) and p_abs > 0):
            raise InputError(f"event {i}: primary momentum {mom.tolist()}", path=p,
                             key=mc_name, expected="a finite, non-zero momentum")
        angle = 0.0
        if n_staves:
            step = 2 * math.pi / n_staves
            turns = round((math.atan2(mom[1], mom[0]) - math.pi / 2) / step)
            angle = -turns * step if turns % n_staves else 0.0
        mom = _turn(mom[None, :], angle)[0]
        energy[i] = math.sqrt(p_abs**2 + float(mc["mass"][i][k]) ** 2) * 1000.0
        pdg[i] = int(mc["PDG"][i][k])
        theta[i] = math.acos(max(-1.0, min(1.0, mom[2] / p_abs)))
        phi[i] = math.atan2(mom[1], mom[0])
        rotation[i] = angle
        p_local[:, i] = np.array([mom[2], mom[0], mom[1]]) / p_abs
        showers.append(_event_points(hits, i, angle, ecal, geo, layer_from, p))

    cond = Conditions(energy, pdg, theta, phi,
                      {"p_norm_local_x": p_local[0], "p_norm_local_y": p_local[1],
                       "p_norm_local_z": p_local[2], "rotation": rotation})
    return PointShowers.from_ragged(showers, cond, geo).validate(p, "energy")


def _turn(xyz: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (n, 3) global positions by ``angle`` about the beam (z) axis."""
    if angle == 0.0:
        return xyz
    c, s = math.cos(angle), math.sin(angle)
    out = xyz.copy()
    out[:, 0] = c * xyz[:, 0] - s * xyz[:, 1]
    out[:, 1] = s * xyz[:, 0] + c * xyz[:, 1]
    return out


def _event_points(hits: dict[str, dict[str, Any]], i: int, angle: float, ecal: ILDEcal,
                  geo: Geometry, layer_from: str, path: Any) -> np.ndarray:
    """The (m, 5) points of event ``i`` from all chosen collections, in the local frame."""
    parts = []
    for coll, h in hits.items():
        xyz = np.stack([h["position.x"][i], h["position.y"][i], h["position.z"][i]],
                       axis=1).astype(np.float64)  # (m, 3) global mm
        xyz = _turn(xyz, angle)
        e = np.asarray(h["energy"][i], dtype=np.float64) * 1000.0  # GeV -> MeV
        z = xyz[:, 1] - ecal.inner_radius
        decoder = h["decoder"]
        if layer_from != "depth" and decoder is not None and "layer" in decoder:
            layer = decoder(h["cellID"][i], "layer")
        elif isinstance(geo, ILDGeometry) or geo is None:
            layer = ecal.layer_of_depth(z)
        else:
            layer = geo.layer_of_z(z)
        pts = np.stack([xyz[:, 2], xyz[:, 0], z, e, layer.astype(np.float64)], axis=1)
        if not np.isfinite(pts).all():
            raise InputError(f"event {i}: NaN or inf in a hit", path=path, key=coll,
                             expected="finite positions and energies")
        parts.append(pts)
    return np.concatenate(parts) if parts else np.zeros((0, 5))
