"""Shower containers: voxelized showers, padded point clouds and their incident-particle conditions.

Units: energies in MeV, lengths in mm, angles in rad. Arrays are NumPy; ``to_torch()`` converts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from showerformer.errors import InputError
from showerformer.geometry import Geometry

__all__ = ["PDG", "Conditions", "PointShowers", "VoxelShowers", "outside_phrase",
           "particle_pdg"]

PDG: dict[str, int] = {
    "e-": 11, "e+": -11, "gamma": 22, "photon": 22, "pi+": 211, "pi-": -211,
    "proton": 2212, "neutron": 2112, "mu-": 13, "mu+": -13,
}
"""Particle names accepted on the command line and their PDG Monte-Carlo ids."""


def particle_pdg(name: str | int) -> int:
    """The PDG id of a particle name (``"e-"``, ``"gamma"``, ``"pi+"``, ...) or of an id."""
    if isinstance(name, int | np.integer):
        return int(name)
    key = str(name).strip().lower()
    if key in PDG:
        return PDG[key]
    try:
        return int(key)
    except ValueError:
        raise InputError(f"unknown particle {name!r}", key="particle",
                         expected=f"one of {', '.join(PDG)} or a PDG id") from None


@dataclass
class Conditions:
    """What was shot into the calorimeter, one entry per shower.

    Attributes:
        energy: incident energy in MeV, (N,) float64.
        pdg: PDG particle id, (N,) int32.
        theta: polar angle of the incident direction in rad, (N,) float32 (pi/2 = normal
            incidence on a barrel).
        phi: azimuthal angle in rad, (N,) float32.
        extra: further per-shower quantities, e.g. ``{"momentum": (N,)}`` in MeV.
    """

    energy: np.ndarray
    pdg: np.ndarray | None = None
    theta: np.ndarray | None = None
    phi: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.energy = np.asarray(self.energy, dtype=np.float64).reshape(-1)
        n = len(self.energy)
        self.pdg = _fill(self.pdg, n, np.int32, 0)
        self.theta = _fill(self.theta, n, np.float32, np.pi / 2)
        self.phi = _fill(self.phi, n, np.float32, np.pi / 2)
        for k, v in list(self.extra.items()):
            v = np.asarray(v)
            if len(v) != n:
                raise InputError(f"{len(v)} values for {n} showers", key=k,
                                 expected="one value per shower")
            self.extra[k] = v

    def __len__(self) -> int:
        return len(self.energy)

    def __getitem__(self, idx: Any) -> Conditions:
        return Conditions(self.energy[idx], self.pdg[idx], self.theta[idx], self.phi[idx],
                          {k: v[idx] for k, v in self.extra.items()})

    @staticmethod
    def concatenate(items: Sequence[Conditions]) -> Conditions:
        keys = set(items[0].extra)
        return Conditions(
            np.concatenate([c.energy for c in items]),
            np.concatenate([c.pdg for c in items]),
            np.concatenate([c.theta for c in items]),
            np.concatenate([c.phi for c in items]),
            {k: np.concatenate([c.extra[k] for c in items]) for k in keys
             if all(k in c.extra for c in items)},
        )


def _fill(values: Any, n: int, dtype: Any, default: float) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype=dtype)
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.size == 1 and n != 1:
        return np.full(n, arr[0], dtype=dtype)
    if len(arr) != n:
        raise InputError(f"{len(arr)} values for {n} showers", expected="one value per shower")
    return arr


_OUTSIDE = ("error", "drop")


def _mev(energy: float) -> str:
    """``2676.31`` -> ``"2,676.3 MeV"``; small energies keep four significant digits."""
    return f"{energy:,.1f} MeV" if abs(energy) >= 100 else f"{energy:.4g} MeV"


def outside_phrase(n_points: int, energy: float, n_showers: int, n_total: int) -> str:
    """``"12 points holding 3.4 MeV in 2 of 10 showers"``: how much of a sample lies outside
    its geometry (see :meth:`PointShowers.outside_mask`), for messages."""
    return (f"{n_points:,} point{'s' if n_points != 1 else ''} holding {_mev(energy)} in "
            f"{n_showers:,} of {n_total:,} shower{'s' if n_total != 1 else ''}")


def _check_energies(values: np.ndarray, what: str, path: Any = None,
                    key: str | None = None) -> None:
    """Raise an :class:`InputError` for NaN, inf or negative energies."""
    if values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise InputError(f"{what} contains NaN or inf (first at index {tuple(bad.tolist())})",
                         path=path, key=key, expected="finite energies")
    if (values < 0).any():
        bad = np.argwhere(values < 0)[0]
        raise InputError(f"{what} contains negative energies (first at index "
                         f"{tuple(bad.tolist())}: {values[tuple(bad)]:g})",
                         path=path, key=key, expected="energies >= 0 MeV")


@dataclass
class VoxelShowers:
    """Showers as energies per geometry cell.

    Attributes:
        energies: deposited energy per cell in MeV, (N, n_cells) float32, in the geometry's
            cell order.
        conditions: the incident particles, length N.
        geometry: the segmentation the cells belong to.
    """

    energies: np.ndarray
    conditions: Conditions
    geometry: Geometry

    def __post_init__(self) -> None:
        self.energies = np.asarray(self.energies, dtype=np.float32)
        if self.energies.ndim != 2 or self.energies.shape[1] != self.geometry.n_cells:
            raise InputError(f"voxel array of shape {self.energies.shape}",
                             expected=f"(N, {self.geometry.n_cells}) for {self.geometry.name}")
        if len(self.conditions) != len(self.energies):
            raise InputError(f"{len(self.conditions)} conditions for {len(self.energies)} showers",
                             expected="one incident energy per shower")

    def __len__(self) -> int:
        return len(self.energies)

    def __getitem__(self, idx: Any) -> VoxelShowers:
        if isinstance(idx, int | np.integer):
            idx = slice(int(idx), int(idx) + 1)
        return VoxelShowers(self.energies[idx], self.conditions[idx], self.geometry)

    def validate(self, path: Any = None, key: str = "showers") -> VoxelShowers:
        """Raise an :class:`InputError` for NaN, inf or negative energies."""
        _check_energies(self.energies, "shower", path, key)
        _check_energies(self.conditions.energy, "incident energy", path, "incident_energies")
        return self

    @staticmethod
    def concatenate(items: Sequence[VoxelShowers]) -> VoxelShowers:
        geo = items[0].geometry
        for it in items[1:]:
            if not it.geometry.same_cells(geo):
                raise InputError(f"cannot concatenate {geo.name} and {it.geometry.name} showers",
                                 expected="showers of one geometry")
        return VoxelShowers(np.concatenate([it.energies for it in items]),
                            Conditions.concatenate([it.conditions for it in items]), geo)

    def layer_energies(self) -> np.ndarray:
        """Energy per layer, (N, n_layers) in MeV."""
        cum = np.zeros((len(self), self.geometry.n_cells + 1))
        np.cumsum(self.energies, axis=1, dtype=np.float64, out=cum[:, 1:])
        off = self.geometry.layer_offsets
        return cum[:, off[1:]] - cum[:, off[:-1]]

    def to_points(
        self, *, dequantize: bool = False, rng: np.random.Generator | int | None = None,
        threshold: float = 0.0,
    ) -> PointShowers:
        """One point per cell with energy above ``threshold``, at the cell centre or
        uniformly inside the cell (``dequantize=True``). Inverse: :meth:`PointShowers.to_voxels`.
        """
        rows, cells = np.nonzero(self.energies > threshold)
        if dequantize:
            xyz = self.geometry.dequantize(cells, rng)
        else:
            xyz = self.geometry.cell_centers()[cells]
        e = self.energies[rows, cells]
        layer = self.geometry.layer_of_cell[cells]
        flat = np.concatenate([xyz, e[:, None], layer[:, None]], axis=1).astype(np.float32)
        counts = np.bincount(rows, minlength=len(self))
        return PointShowers.from_flat(flat, counts, self.conditions, self.geometry)

    def to_torch(self, device: Any = None):
        import torch

        return torch.as_tensor(self.energies, device=device)


@dataclass
class PointShowers:
    """Showers as padded point clouds.

    Attributes:
        points: (N, P, 5) float32 = x, y, z (mm), E (MeV), layer index; padding rows are zero.
        mask: (N, P) bool, True for real points.
        conditions: the incident particles, length N.
        geometry: the geometry the points live in (needed to voxelize), or None.
    """

    points: np.ndarray
    mask: np.ndarray
    conditions: Conditions
    geometry: Geometry | None = None

    FIELDS = ("x", "y", "z", "energy", "layer")

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.points.ndim != 3 or self.points.shape[2] != 5:
            raise InputError(f"point array of shape {self.points.shape}",
                             expected="(N, max_points, 5) = x, y, z, E, layer")
        if self.mask.shape != self.points.shape[:2]:
            raise InputError(f"mask of shape {self.mask.shape}",
                             expected=f"{self.points.shape[:2]}")
        if len(self.conditions) != len(self.points):
            raise InputError(f"{len(self.conditions)} conditions for {len(self.points)} showers",
                             expected="one incident energy per shower")

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, idx: Any) -> PointShowers:
        if isinstance(idx, int | np.integer):
            idx = slice(int(idx), int(idx) + 1)
        return PointShowers(self.points[idx], self.mask[idx], self.conditions[idx], self.geometry)

    @property
    def n_points(self) -> np.ndarray:
        """Number of points per shower, (N,)."""
        return self.mask.sum(axis=1)

    def validate(self, path: Any = None, key: str = "events") -> PointShowers:
        """Raise an :class:`InputError` for NaN or inf values, negative point energies and
        layer indices that are not whole numbers.

        Points outside a geometry are valid here: :meth:`count_outside` counts them and
        :meth:`to_voxels` refuses or drops them.
        """
        if not np.isfinite(self.points).all():
            raise InputError("points contain NaN or inf", path=path, key=key,
                             expected="finite coordinates and energies")
        _check_energies(self.points[..., 3][self.mask], "point", path, key)
        layer = self.points[..., 4][self.mask]  # (m,)
        if layer.size and not (np.rint(layer) == layer).all():
            bad = float(layer[np.rint(layer) != layer][0])
            raise InputError(f"layer index {bad:g} is not a whole number", path=path, key=key,
                             expected="integer layer indices in the fifth column")
        _check_energies(self.conditions.energy, "incident energy", path, "energy")
        return self

    @classmethod
    def from_flat(
        cls, flat: np.ndarray, counts: np.ndarray, conditions: Conditions,
        geometry: Geometry | None = None, max_points: int | None = None,
    ) -> PointShowers:
        """Build from the points of all showers stacked, (sum(counts), 5), shower-major."""
        counts = np.asarray(counts, dtype=np.int64)
        n = len(counts)
        p = int(counts.max(initial=0)) if max_points is None else int(max_points)
        if counts.max(initial=0) > p:
            raise InputError(f"a shower has {counts.max()} points", key="max_points",
                             expected=f"at most {p}")
        points = np.zeros((n, p, 5), dtype=np.float32)
        mask = np.arange(p)[None, :] < counts[:, None]
        points[mask] = flat
        return cls(points, mask, conditions, geometry)

    @classmethod
    def from_ragged(
        cls, showers: Sequence[np.ndarray], conditions: Conditions,
        geometry: Geometry | None = None,
    ) -> PointShowers:
        """Build from a list of (n_i, 5) arrays."""
        counts = np.array([len(s) for s in showers], dtype=np.int64)
        flat = (np.concatenate([np.asarray(s, np.float32).reshape(-1, 5) for s in showers])
                if len(showers) else np.zeros((0, 5), np.float32))
        return cls.from_flat(flat, counts, conditions, geometry)

    def to_ragged(self) -> list[np.ndarray]:
        """A list of (n_i, 5) arrays, the real points of each shower in stored order."""
        return [p[m] for p, m in zip(self.points, self.mask, strict=True)]

    def _geometry_for(self, geometry: Geometry | None) -> Geometry:
        geo = geometry or self.geometry
        if geo is None:
            raise InputError("point clouds without a geometry cannot be voxelized",
                             key="geometry", expected="a geometry (e.g. --geometry ds2)")
        return geo

    def _cells(self, geo: Geometry, use_layer: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Shower and cell of every real point (shower-major), cell -1 for points outside.

        A point is outside when its layer index is not a layer of ``geo``, its depth lies in
        front of or behind the calorimeter, or its transverse position is in no cell of its layer.

        Returns:
            ``(rows, cells)``, both (m,) int64 for the m real points.
        """
        rows, idx = np.nonzero(self.mask)
        pts = self.points[rows, idx].astype(np.float64)  # (m, 5)
        layer = None
        if use_layer:
            # clip before the cast: huge or non-finite values become -1 (outside), not garbage
            raw = np.nan_to_num(pts[:, 4], nan=-1.0, posinf=-1.0, neginf=-1.0)
            layer = np.rint(np.clip(raw, -1, geo.n_layers)).astype(np.int64)
        cells = geo.locate(pts[:, 0], pts[:, 1], pts[:, 2], layer=layer)
        z = pts[:, 2]
        cells[~((z >= geo.z_edges[0]) & (z <= geo.z_edges[-1]))] = -1  # NaN is outside too
        return rows, cells

    def outside_mask(self, geometry: Geometry | None = None) -> np.ndarray:
        """Which points lie outside ``geometry``: True for a real point whose layer index is
        not a layer of the geometry, whose depth is in front of or behind the calorimeter, or
        whose position is in no cell of its layer; padding is always False.

        Arguments:
            geometry: defaults to the showers' own.

        Returns:
            (N, P) bool, like :attr:`mask`.

        Raises:
            InputError: no geometry given and none attached to the showers.
        """
        _, cells = self._cells(self._geometry_for(geometry))
        out = np.zeros(self.mask.shape, dtype=bool)
        out[self.mask] = cells < 0  # boolean indexing is shower-major, as np.nonzero
        return out

    def count_outside(self, geometry: Geometry | None = None) -> tuple[int, float]:
        """How many real points lie outside ``geometry`` and how much energy they hold.

        Outside means as in :meth:`outside_mask`; padding is never counted. These are the
        points that ``to_voxels(outside="drop")`` drops.

        Arguments:
            geometry: defaults to the showers' own.

        Returns:
            ``(n_points, energy)``: the number of points outside and their summed energy in MeV.

        Raises:
            InputError: no geometry given and none attached to the showers.
        """
        out = self.outside_mask(geometry)
        return int(out.sum()), float(self.points[..., 3][out].sum(dtype=np.float64))

    def describe_outside(self, geometry: Geometry | None = None) -> str | None:
        """``"12 points holding 3.4 MeV in 2 of 10 showers"`` for the points outside
        ``geometry`` (see :meth:`outside_mask`), or None when every point is inside."""
        out = self.outside_mask(geometry)
        if not out.any():
            return None
        energy = float(self.points[..., 3][out].sum(dtype=np.float64))
        return outside_phrase(int(out.sum()), energy, int(out.any(axis=1).sum()), len(self))

    def drop_outside(self, geometry: Geometry | None = None) -> PointShowers:
        """The same showers without their points outside ``geometry`` (see
        :meth:`outside_mask`); the remaining points keep their order."""
        keep = self.mask & ~self.outside_mask(geometry)  # (N, P)
        return PointShowers.from_flat(self.points[keep], keep.sum(axis=1), self.conditions,
                                      self.geometry)

    def to_voxels(
        self, geometry: Geometry | None = None, *, outside: str = "error", use_layer: bool = True,
    ) -> VoxelShowers:
        """Sum point energies into the cells of ``geometry``.

        Energy is never lost silently: points outside the geometry (layer index outside its
        layers, depth outside the calorimeter, position in no cell) raise an error unless
        ``outside="drop"``; :meth:`count_outside` tells what would be dropped.

        Arguments:
            geometry: defaults to the showers' own.
            outside: ``"error"`` (default) or ``"drop"`` for points outside the geometry.
            use_layer: take each point's layer from its layer column rather than from z.

        Returns:
            :class:`VoxelShowers` on ``geometry`` with the same conditions.

        Raises:
            InputError: no geometry, an unknown ``outside``, or (with ``"error"``) points
                outside the geometry, saying how many, their energy in MeV and in how many
                showers.
        """
        if outside not in _OUTSIDE:
            raise InputError(f"outside={outside!r}", key="outside",
                             expected=" or ".join(repr(o) for o in _OUTSIDE))
        geo = self._geometry_for(geometry)
        rows, cells = self._cells(geo, use_layer)
        ok = cells >= 0
        if outside == "error" and not ok.all():
            e_out = float(self.points[self.mask][~ok, 3].sum(dtype=np.float64))
            phrase = outside_phrase(int((~ok).sum()), e_out, len(np.unique(rows[~ok])), len(self))
            raise InputError(
                f"points outside geometry {geo.name} (layer index outside "
                f"0..{geo.n_layers - 1}, depth outside {geo.z_edges[0]:g}.."
                f"{geo.z_edges[-1]:g} mm or position in no cell): {phrase}",
                key="points", expected="points inside the geometry, or --drop-outside "
                "(to_voxels(outside='drop')) to drop them")
        energy = self.points[self.mask][:, 3].astype(np.float64)  # (m,)
        flat = np.bincount(rows[ok] * geo.n_cells + cells[ok], weights=energy[ok],
                           minlength=len(self) * geo.n_cells)
        return VoxelShowers(flat.reshape(len(self), geo.n_cells).astype(np.float32),
                            self.conditions, geo)

    def to_torch(self, device: Any = None):
        import torch

        return (torch.as_tensor(self.points, device=device),
                torch.as_tensor(self.mask, device=device))
