"""Dense voxel grids of the voxel-sequence transformers and their invertible energy scalings.

The voxel transformers (TransformerMLM, the VQ-VAE and its autoregressive prior; Raikwar et al.,
arXiv:2312.09290) read a shower as a 3-D grid ``(layer z, alpha phi, r)`` in the library's cell
order, which is the CaloChallenge and Par04 order after transposition. Grids are held in memory
as float32 MeV: 10,000 Par04 showers of 18 x 50 x 45 cells take 1.6 GB.

Two scalings map cell energies to ``[0, 1]``:

- ``"linear"`` (the paper): the cell energy in MeV over the incident energy in GeV, divided by
  the largest such value of the training showers (the paper states that the division alone
  keeps values in [0, 1]; on the built-in ``par04`` showers the largest is about 4.7, so the
  fitted maximum is divided out as well). A sigmoid output and binary cross-entropy follow.
- ``"log"``: ``log(1 + f / f0) / log(1 + f_max / f0)`` of the same ratio ``f``, with a floor
  ``f0`` (MeV per GeV): the paper names the skewed linear distribution as the reason for its
  poor voxel-energy spectrum; the logarithm spreads the small cells over the unit interval.

Both are inverted exactly (float64 round trip); on the way back cells below the readout
threshold (the geometry's, else the smallest cell energy of the training showers) are zeroed,
as a detector would not read them out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.showers import Conditions

__all__ = [
    "VOXEL_SCALINGS",
    "VoxelGridDataset",
    "VoxelScaling",
    "grid_shape",
    "load_voxel_dataset",
]

VOXEL_SCALINGS = ("linear", "log")
"""Cell-energy scalings into [0, 1]: the paper's linear one and the logarithmic alternative."""


def grid_shape(geometry: Geometry, path: str | os.PathLike[str] | None = None
               ) -> tuple[int, int, int]:
    """``(layers, alpha bins, r bins)`` of a geometry whose layers all have the same cells.

    Raises:
        InputError: a geometry without a regular 3-D grid (e.g. ds1's layers of different
            binnings), naming the file.
    """
    shape = getattr(geometry, "shape", None)
    if shape is None or len(shape) != 3:
        raise InputError(f"geometry {geometry.name} has no regular 3-D cell grid", path=path,
                         key="geometry", expected="the same cells in every layer (ds2, ds3, "
                                                  "par04 or a Cartesian grid)")
    return int(shape[0]), int(shape[1]), int(shape[2])


class VoxelGridDataset(Dataset):
    """Showers as dense grids with their incident energy and angle.

    Item ``i`` is ``{"voxels": (Z, A, R) float32 MeV, "energy": () float32 MeV,
    "theta": () float32 rad}``; :attr:`collate_fn` (torch's default) stacks them.

    Arguments:
        voxels: ``(N, Z, A, R)`` cell energies in MeV.
        conditions: the incident particles (N).
        geometry: the cells.
        path: the file they were read from (named in errors).
    """

    def __init__(self, voxels: np.ndarray, conditions: Conditions, geometry: Geometry,
                 path: str | os.PathLike[str] | None = None) -> None:
        self.voxels = np.asarray(voxels, dtype=np.float32)  # (N, Z, A, R)
        if self.voxels.ndim != 4 or len(self.voxels) != len(conditions):
            raise InputError(f"voxels of shape {self.voxels.shape} for {len(conditions)} showers",
                             path=path, key="showers", expected="(N, Z, A, R), one per shower")
        self.conditions = conditions
        self.geometry = geometry
        self.path = None if path is None else Path(path)
        self._energy = torch.as_tensor(np.asarray(conditions.energy, dtype=np.float32))
        self._theta = torch.as_tensor(np.asarray(conditions.theta, dtype=np.float32))
        self.collate_fn = default_collate

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, A, R)`` of one shower."""
        return tuple(int(s) for s in self.voxels.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.voxels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"voxels": torch.from_numpy(self.voxels[i]), "energy": self._energy[i],
                "theta": self._theta[i]}

    def subset(self, indices: Sequence[int] | np.ndarray) -> VoxelGridDataset:
        """The showers ``indices`` (a copy of their grids)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return VoxelGridDataset(self.voxels[idx], self.conditions[idx], self.geometry,
                                self.path)


def load_voxel_dataset(path: str | os.PathLike[str], *, max_showers: int | None = None
                       ) -> VoxelGridDataset:
    """A voxel shower file (CaloChallenge or Par04 HDF5) as dense grids.

    Raises:
        InputError: a point-cloud or sparse file, a geometry without a regular grid, or bad
            energies, naming the file.
    """
    from showerformer.io.detect import read_showers
    from showerformer.showers import VoxelShowers

    showers = read_showers(path, stop=max_showers)
    if not isinstance(showers, VoxelShowers):
        raise InputError(f"{type(showers).__name__} in the file", path=path, key="showers",
                         expected="voxel showers (CaloChallenge or Par04 HDF5)")
    shape = grid_shape(showers.geometry, path)
    showers.validate(path)
    return VoxelGridDataset(showers.energies.reshape(len(showers), *shape), showers.conditions,
                            showers.geometry, path)


@dataclass(frozen=True)
class VoxelScaling:
    """Cell energies <-> values in [0, 1], given the incident energy (see the module docstring).

    Attributes:
        kind: ``"linear"`` or ``"log"``.
        max_ratio: the largest cell energy (MeV) over incident energy (GeV) of the training
            showers.
        log_floor: ``f0`` of the log scaling, MeV per GeV.
        threshold_mev: generated cells below this energy are zeroed.
    """

    kind: str
    max_ratio: float
    log_floor: float = 1e-4
    threshold_mev: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in VOXEL_SCALINGS:
            raise InputError(f"scaling {self.kind!r}", key="scaling",
                             expected="one of " + ", ".join(VOXEL_SCALINGS))
        if not (math.isfinite(self.max_ratio) and self.max_ratio > 0):
            raise InputError(f"max_ratio={self.max_ratio!r}", key="scaling.max_ratio",
                             expected="a positive number (showers with energy)")
        if not self.log_floor > 0:
            raise InputError(f"log_floor={self.log_floor!r}", key="log_floor",
                             expected="a positive ratio in MeV per GeV")
        if not self.threshold_mev >= 0:
            raise InputError(f"threshold_mev={self.threshold_mev!r}", key="threshold_mev",
                             expected="a non-negative energy in MeV")

    @classmethod
    def fit(cls, kind: str, voxels: np.ndarray, energy_mev: np.ndarray, *,
            log_floor: float = 1e-4, threshold_mev: float | None = None) -> VoxelScaling:
        """Fit on training showers.

        Arguments:
            kind: ``"linear"`` or ``"log"``.
            voxels: ``(N, ...)`` cell energies in MeV.
            energy_mev: ``(N,)`` incident energies.
            log_floor: ``f0`` of the log scaling.
            threshold_mev: readout threshold (None: the smallest non-zero training cell).
        """
        n = len(voxels)
        flat = np.asarray(voxels, dtype=np.float32).reshape(n, -1)  # a view, no copy
        gev = np.asarray(energy_mev, dtype=np.float64) / 1e3
        peak = np.zeros(n)  # (N,) largest cell of every shower
        smallest = np.inf  # smallest cell with energy
        for lo in range(0, n, 1024):  # in chunks: no full-size temporaries
            block = flat[lo:lo + 1024]
            peak[lo:lo + len(block)] = block.max(axis=1)
            if threshold_mev is None or threshold_mev <= 0:
                lit = np.where(block > 0, block, np.inf).min(initial=np.inf)
                smallest = min(smallest, float(lit))
        max_ratio = float((peak / gev).max()) if n else 0.0
        if threshold_mev is None or threshold_mev <= 0:
            threshold_mev = smallest if np.isfinite(smallest) else 0.0
        return cls(kind, max_ratio, float(log_floor), float(threshold_mev))

    def _log_norm(self) -> float:
        return math.log1p(self.max_ratio / self.log_floor)

    def forward(self, voxels: Tensor, energy_mev: Tensor) -> Tensor:
        """``(B, ...)`` MeV and ``(B,)`` MeV -> ``(B, ...)`` values in [0, 1] (clipped above for
        showers brighter than the training ones)."""
        gev = (energy_mev.to(voxels.dtype) / 1e3).reshape(-1, *([1] * (voxels.ndim - 1)))
        ratio = voxels.clamp_min(0) / gev
        if self.kind == "linear":
            y = ratio / self.max_ratio
        else:
            y = torch.log1p(ratio / self.log_floor) / self._log_norm()
        return y.clamp(0.0, 1.0)

    def inverse(self, values: Tensor, energy_mev: Tensor, *, threshold: bool = True) -> Tensor:
        """Values in [0, 1] -> cell energies in MeV (cells below ``threshold_mev`` zeroed when
        ``threshold``)."""
        gev = (energy_mev.to(values.dtype) / 1e3).reshape(-1, *([1] * (values.ndim - 1)))
        y = values.clamp(0.0, 1.0)
        if self.kind == "linear":
            ratio = y * self.max_ratio
        else:
            ratio = torch.expm1(y * self._log_norm()) * self.log_floor
        out = ratio * gev
        if threshold and self.threshold_mev > 0:
            out = torch.where(out < self.threshold_mev, torch.zeros_like(out), out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with the model)."""
        return {"kind": self.kind, "max_ratio": self.max_ratio, "log_floor": self.log_floor,
                "threshold_mev": self.threshold_mev}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VoxelScaling:
        """Inverse of :meth:`to_dict`.

        Raises:
            InputError: a missing or bad entry, naming it.
        """
        try:
            return cls(str(d["kind"]), float(d["max_ratio"]), float(d.get("log_floor", 1e-4)),
                       float(d.get("threshold_mev", 0.0)))
        except KeyError as exc:
            raise InputError(f"no {exc.args[0]!r}", key=f"scaling.{exc.args[0]}",
                             expected="a stored voxel scaling") from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad voxel scaling ({exc})", key="scaling",
                             expected="numbers for max_ratio, log_floor and threshold_mev"
                             ) from None
