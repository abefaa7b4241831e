"""The Geometry base class and the registry of geometry kinds that Geometry.from_dict rebuilds.

Why a module of its own: every concrete geometry depends on this base, and the module that
names the presets (:mod:`showerformer.geometry`) depends on every concrete geometry, so the
imports form a tree without cycles::

    showerformer.geometry_base   Geometry, register_kind()            (imports no geometry)
        ^               ^
        |               |
    showerformer.ild    |        ILDGeometry (kind "ild")
        ^               |
        |               |
    showerformer.geometry        CylindricalGeometry, CartesianGeometry, PRESETS (all of them,
                                 "ild-ecal" included), get_geometry(), geometry_for_cells()

Each concrete class registers its ``to_dict()["kind"]`` with :func:`register_kind`, so that
:meth:`Geometry.from_dict` rebuilds it without naming it. Code outside the geometry modules
imports :class:`Geometry` from :mod:`showerformer.geometry`, which loads (and so registers)
every built-in kind.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from showerformer.errors import InputError

__all__ = ["Geometry", "check_readout_threshold", "register_kind"]

_CHUNK = 1 << 20  # hits per chunk in locate(), bounds temporary memory
_FAR = 1e12  # mm; transverse positions beyond this are outside every geometry


class Geometry(ABC):
    """A segmentation of a calorimeter into ``n_cells`` cells grouped in ``n_layers`` layers.

    Cells are ordered layer by layer: the cells of layer ``l`` are
    ``layer_offsets[l]:layer_offsets[l + 1]``. Layer ``l`` spans depth ``z_edges[l]..z_edges[l+1]``.
    """

    name: str
    readout_threshold_mev: float = 0.0
    """Smallest cell energy the readout records, MeV: the CaloChallenge evaluation sets the cells
    below it to zero. Part of the geometry's description (``to_dict``); 0 = every deposit."""
    z_edges: np.ndarray  # (n_layers + 1,) mm
    layer_offsets: np.ndarray  # (n_layers + 1,) cell index of each layer's first cell
    layer_of_cell: np.ndarray  # (n_cells,) int64

    @property
    def n_cells(self) -> int:
        return int(self.layer_offsets[-1])

    @property
    def n_layers(self) -> int:
        return len(self.layer_offsets) - 1

    def cells_per_layer(self) -> np.ndarray:
        """Number of cells in each layer, (n_layers,)."""
        return np.diff(self.layer_offsets)

    def layer_slice(self, layer: int) -> slice:
        """The cell-index slice of one layer."""
        return slice(int(self.layer_offsets[layer]), int(self.layer_offsets[layer + 1]))

    def layer_of_z(self, z: np.ndarray) -> np.ndarray:
        """Layer index of depths ``z`` (mm); -1 in front of or behind the calorimeter."""
        z = np.asarray(z, dtype=np.float64)
        layer = np.searchsorted(self.z_edges, z, side="right") - 1
        layer[(layer < 0) | (layer >= self.n_layers)] = -1
        return layer

    @abstractmethod
    def cell_centers(self) -> np.ndarray:
        """Cell centres, (n_cells, 3) = x, y, z in mm."""

    @abstractmethod
    def cell_volumes(self) -> np.ndarray:
        """Cell volumes, (n_cells,) in mm^3."""

    @abstractmethod
    def _locate_in_layer(self, x: np.ndarray, y: np.ndarray, layer: np.ndarray) -> np.ndarray:
        """Cell index of transverse positions within known (valid) layers, -1 outside."""

    @abstractmethod
    def _sample_in_cells(self, cells: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Map uniform numbers ``u`` (n, 3) in (0, 1) to positions (n, 3) inside ``cells``."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description, inverse of :func:`Geometry.from_dict`."""

    @abstractmethod
    def describe(self) -> str:
        """A one-line human-readable description."""

    def locate(
        self,
        x: np.ndarray,
        y: np.ndarray,
        z: np.ndarray | None = None,
        *,
        layer: np.ndarray | None = None,
    ) -> np.ndarray:
        """Map continuous hit positions to cell indices, vectorized.

        Arguments:
            x, y: transverse positions in mm, (n,).
            z: depth in mm, (n,); used to find the layer when ``layer`` is not given.
            layer: layer index of each hit, (n,); takes precedence over ``z``.

        Returns:
            (n,) int64 cell indices, -1 for hits outside the segmented volume.
        """
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if layer is None:
            if z is None:
                raise ValueError("locate() needs either z or layer")
            layer = self.layer_of_z(np.asarray(z).ravel())
        else:
            layer = np.asarray(layer).ravel()
            if layer.dtype.kind == "f":  # clip before the cast (NaN and huge values: outside)
                layer = np.clip(np.nan_to_num(layer, nan=-1.0), -1, self.n_layers)
            layer = layer.astype(np.int64)
            layer = np.where((layer >= 0) & (layer < self.n_layers), layer, -1)
        # NaN, inf and absurd positions are outside; keeping them away from the per-geometry
        # code avoids casting huge floats to integer bin indices
        sane = (np.abs(x) < _FAR) & (np.abs(y) < _FAR)
        out = np.full(x.shape, -1, dtype=np.int64)
        for start in range(0, len(x), _CHUNK):
            sl = slice(start, start + _CHUNK)
            lay = layer[sl]
            ok = (lay >= 0) & sane[sl]
            if ok.any():
                sub = np.full(lay.shape, -1, dtype=np.int64)
                sub[ok] = self._locate_in_layer(x[sl][ok], y[sl][ok], lay[ok])
                out[sl] = sub
        return out

    def dequantize(
        self, cells: np.ndarray, rng: np.random.Generator | int | None = None
    ) -> np.ndarray:
        """Positions drawn uniformly (in volume) inside the given cells, (n, 3) = x, y, z in mm.

        The draws keep a margin of 1e-4 of the cell size from every face, so
        ``locate(*dequantize(cells).T) == cells`` holds exactly, also after a cast to float32.
        """
        cells = np.asarray(cells, dtype=np.int64).ravel()
        if cells.size and (cells.min() < 0 or cells.max() >= self.n_cells):
            raise InputError(
                f"cell index out of range [{cells.min()}, {cells.max()}]", key="cell",
                expected=f"indices in [0, {self.n_cells}) of {self.name}",
            )
        rng = np.random.default_rng(rng)
        u = rng.random((len(cells), 3))
        u = 1e-4 + (1.0 - 2e-4) * u
        return self._sample_in_cells(cells, u)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Geometry:
        """Rebuild a geometry from :meth:`to_dict` output, by its ``kind`` (see
        :func:`register_kind`)."""
        kind = d.get("kind")
        cls = _KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            known = [repr(k) for k in sorted(_KINDS)]
            expected = (" or ".join([", ".join(known[:-1]), known[-1]]) if len(known) > 1
                        else "".join(known))
            raise InputError(f"unknown geometry kind {kind!r}", key="kind", expected=expected)
        return cls._from_dict(d)

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> Geometry:
        """Rebuild a geometry of this class's kind; registered classes override it."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from a dict")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Geometry) and _dicts_equal(self.to_dict(), other.to_dict())

    def same_cells(self, other: Geometry) -> bool:
        """True when both geometries have the same cells (names and readout thresholds may
        differ)."""
        a, b = self.to_dict(), other.to_dict()
        for d in (a, b):
            d.pop("name", None)
            d.pop("readout_threshold_mev", None)
        return _dicts_equal(a, b)

    def __hash__(self) -> int:
        return hash((self.name, self.n_cells, self.n_layers))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def _dicts_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_dicts_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_dicts_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


_KINDS: dict[str, type[Geometry]] = {}
_G = TypeVar("_G", bound=type[Geometry])


def register_kind(kind: str) -> Callable[[_G], _G]:
    """Class decorator: :meth:`Geometry.from_dict` rebuilds dicts of this ``kind`` with the
    class's ``_from_dict``.

    Arguments:
        kind: the ``"kind"`` entry of the class's ``to_dict()`` output.
    """

    def register(cls: _G) -> _G:
        if kind in _KINDS and _KINDS[kind] is not cls:
            raise ValueError(f"geometry kind {kind!r} is already registered by "
                             f"{_KINDS[kind].__qualname__}")
        _KINDS[kind] = cls
        return cls

    return register


def check_readout_threshold(value: Any) -> float:
    """A readout threshold as a float in MeV, finite and >= 0.

    Raises:
        InputError: naming the key ``readout_threshold_mev``.
    """
    try:
        thr = float(value)
    except (TypeError, ValueError):
        thr = math.nan
    if not math.isfinite(thr) or thr < 0:
        raise InputError(f"readout threshold {value!r}", key="readout_threshold_mev",
                         expected="a finite energy >= 0 in MeV")
    return thr
