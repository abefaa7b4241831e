"""What the voxel-sequence families share: the patch config, patch embedding and the fitted voxel state.

TransformerMLM, the VQ-VAE and its autoregressive prior (Raikwar et al., "Transformers for
generalized fast shower simulation", arXiv:2312.09290) all cut a voxel grid into
non-overlapping 3-D patches (:mod:`showerformer.nn.patching`), project every patch to the model
width and add a positional encoding of the patch (Fig. 1c: per-axis sine-cosine tables
concatenated). Patch sizes are given in the paper's order ``(dr, dphi, dz)``; the library's
grids are ordered ``(z, phi, r)``, so the patch is reversed internally. The cell energies are
scaled into [0, 1] by :class:`~showerformer.data.voxels.VoxelScaling` (fitted on the training
showers and stored with the model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor, nn

from showerformer.data.voxels import VOXEL_SCALINGS, VoxelGridDataset, VoxelScaling, grid_shape
from showerformer.errors import InputError
from showerformer.geometry import Geometry
from showerformer.nn.patching import (
    POSITIONAL_ENCODINGS,
    PatchPositions,
    check_patch_size,
    patchify,
    unpatchify,
)
from showerformer.showers import Conditions

__all__ = [
    "PAR04_GRID",
    "PatchEmbedding",
    "VoxelSequenceFamily",
    "VoxelSequenceSection",
    "condition_values",
    "encoder_stack",
    "voxel_data_state",
    "voxel_state_parts",
]


PAR04_GRID = (45, 50, 18)
"""The paper's grid, 18 r x 50 phi x 45 z, in the library's (z, phi, r) order."""


@dataclasses.dataclass(frozen=True)
class VoxelSequenceSection:
    """Config keys of every voxel-sequence family (mixed into their config dataclasses).

    Attributes:
        grid: cells ``(z, phi, r)``; set from the training data (``()`` until then).
        patch_size: ``(dr, dphi, dz)`` cells per patch (the paper's 18 x 10 x 3 = 75 tokens on
            18 x 50 x 45).
        positional_encoding: ``sincos-3d`` (the paper's default), ``sincos-1d``,
            ``learned-1d``, ``learned-3d`` or ``none``.
        periodic_phi: the phi encoding closes on itself (the paper's "roll-over").
        scaling: ``linear`` (the paper: cell MeV / incident GeV, sigmoid, BCE) or ``log``.
        log_floor: ``f0`` of the log scaling, MeV per GeV.
    """

    grid: tuple[int, ...] = ()
    patch_size: tuple[int, ...] = (18, 10, 3)
    positional_encoding: str = "sincos-3d"
    periodic_phi: bool = False
    scaling: str = "linear"
    log_floor: float = 1e-4

    def check_voxel_section(self) -> None:
        """Range checks of these keys (after ``check_types``)."""
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise InputError(f"patch_size={list(self.patch_size)!r}", key="patch_size",
                             expected="three positive sizes (dr, dphi, dz)")
        if self.grid:
            if len(self.grid) != 3 or min(self.grid) < 1:
                raise InputError(f"grid={list(self.grid)!r}", key="grid",
                                 expected="three positive sizes (z, phi, r), or [] before the "
                                          "data sets it")
            check_patch_size(self.grid, self.patch_zar)
        if self.positional_encoding not in POSITIONAL_ENCODINGS:
            raise InputError(f"positional_encoding={self.positional_encoding!r}",
                             key="positional_encoding",
                             expected="one of " + ", ".join(POSITIONAL_ENCODINGS))
        if self.periodic_phi and self.positional_encoding not in ("sincos-3d",):
            raise InputError("periodic_phi with positional_encoding="
                             f"{self.positional_encoding!r}", key="periodic_phi",
                             expected="false, or positional_encoding sincos-3d")
        if self.scaling not in VOXEL_SCALINGS:
            raise InputError(f"scaling={self.scaling!r}", key="scaling",
                             expected="one of " + ", ".join(VOXEL_SCALINGS))
        if not self.log_floor > 0:
            raise InputError(f"log_floor={self.log_floor!r}", key="log_floor",
                             expected="a positive ratio in MeV per GeV")

    def check_blocks(self, *counts: str) -> None:
        """The transformer keys every voxel-sequence config has (``d_model``, ``n_heads``,
        ``ffn_dim``, ``dropout``) and the block counts named."""
        self.require_positive("d_model", "n_heads", "ffn_dim", *counts)  # type: ignore[attr-defined]
        d_model, n_heads = self.d_model, self.n_heads  # type: ignore[attr-defined]
        if d_model % n_heads:
            raise self.invalid("d_model", f"a multiple of n_heads={n_heads}")  # type: ignore[attr-defined]
        if not 0.0 <= self.dropout < 1.0:  # type: ignore[attr-defined]
            raise self.invalid("dropout", "a probability in [0, 1)")  # type: ignore[attr-defined]

    @property
    def patch_zar(self) -> tuple[int, int, int]:
        """The patch in the grid's ``(z, phi, r)`` order."""
        dr, dphi, dz = self.patch_size
        return int(dz), int(dphi), int(dr)

    @property
    def tokens_zar(self) -> tuple[int, int, int]:
        """Patches along ``(z, phi, r)``."""
        return check_patch_size(self.grid, self.patch_zar)

    @property
    def n_patches(self) -> int:
        """Tokens of one shower."""
        n = self.tokens_zar
        return n[0] * n[1] * n[2]

    @property
    def patch_dim(self) -> int:
        """Cells per patch."""
        return int(np.prod(self.patch_size))


class PatchEmbedding(nn.Module):
    """Grid -> patch tokens of width ``d`` with positions, and tokens -> grid.

    Arguments:
        config: a config with :class:`VoxelSequenceSection`'s keys (grid set).
        d_model: token width.
    """

    def __init__(self, config: VoxelSequenceSection, d_model: int) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in config.grid)
        self.patch = config.patch_zar
        self.proj_in = nn.Linear(config.patch_dim, d_model)
        self.positions = PatchPositions(config.tokens_zar, d_model, config.positional_encoding,
                                        periodic_axis=1 if config.periodic_phi else None)

    def tokens(self, grid: Tensor) -> Tensor:
        """``(B, Z, A, R)`` -> patches ``(B, N, P)``."""
        return patchify(grid, self.patch)

    def forward(self, patches: Tensor) -> Tensor:
        """Patches ``(B, N, P)`` -> embedded tokens ``(B, N, d)``."""
        return self.proj_in(patches) + self.positions().to(patches.dtype)

    def grid_of(self, patches: Tensor) -> Tensor:
        """Patches ``(B, N, P)`` -> grid ``(B, Z, A, R)``."""
        return unpatchify(patches, self.grid, self.patch)


def encoder_stack(d_model: int, n_heads: int, n_blocks: int, ffn_dim: int,
                  dropout: float = 0.0) -> nn.TransformerEncoder:
    """``n_blocks`` pre-norm transformer encoder blocks (GELU, ``batch_first``), with a final
    LayerNorm (Vaswani et al., arXiv:1706.03762; pre-norm: Xiong et al., arXiv:2002.04745)."""
    layer = nn.TransformerEncoderLayer(d_model, n_heads, ffn_dim, dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, n_blocks, norm=nn.LayerNorm(d_model),
                                 enable_nested_tensor=False)


def condition_values(c: Conditions) -> dict[str, Any]:
    """The training conditions: PDG ids, energy and angle ranges, and the energies themselves
    when there are few (a discrete spectrum such as Par04's 64 / 128 / 256 GeV)."""
    from showerformer.models.point_flow import condition_summary

    out = condition_summary(c)
    energies = np.unique(np.asarray(c.energy, dtype=np.float64))
    if len(energies) <= 16:
        out["energy_values_mev"] = [float(e) for e in energies]
    return out


def voxel_data_state(config: VoxelSequenceSection, train: VoxelGridDataset) -> dict[str, Any]:
    """The state a voxel-sequence family fits on its training showers: the scaling, the
    geometry and the training conditions (JSON-ready).

    Raises:
        InputError: a training set without energy, naming the file.
    """
    geometry = train.geometry
    try:
        scaling = VoxelScaling.fit(config.scaling, train.voxels, train.conditions.energy,
                                   log_floor=config.log_floor,
                                   threshold_mev=float(geometry.readout_threshold_mev or 0.0))
    except InputError as exc:
        raise InputError(exc.what, path=train.path, key=exc.key, expected=exc.expected) from None
    return {"kind": "voxel-sequence", "scaling": scaling.to_dict(),
            "geometry": geometry.to_dict(), "conditions": condition_values(train.conditions)}


def voxel_state_parts(state: Mapping[str, Any]) -> tuple[VoxelScaling, Geometry]:
    """The scaling and geometry of :func:`voxel_data_state`.

    Raises:
        InputError: a damaged state, naming the key.
    """
    for key in ("scaling", "geometry"):
        if key not in state:
            raise InputError(f"no {key!r}", key=f"preprocessing.{key}",
                             expected="the state of a voxel-sequence model")
    scaling = VoxelScaling.from_dict(state["scaling"])
    geometry = Geometry.from_dict(state["geometry"])
    return scaling, geometry


def config_with_grid(config_class: type, overrides: Mapping[str, Any],
                     train: VoxelGridDataset) -> Any:
    """The config of ``overrides`` with ``grid`` set from the training data.

    Raises:
        InputError: a ``grid`` that differs from the data's, or a bad config value.
    """
    shape = grid_shape(train.geometry, train.path)
    given = overrides.get("grid")
    if given and tuple(int(g) for g in given) != shape:
        raise InputError(f"grid={list(given)!r}", key="grid",
                         expected=f"{list(shape)} as in the data ({train.geometry.name})")
    return config_class.from_dict({**overrides, "grid": list(shape)})


def require_state(model: Any) -> tuple[VoxelScaling, Geometry]:
    """The fitted scaling and geometry of a voxel-sequence model.

    Raises:
        InputError: a model whose data state was never loaded.
    """
    if getattr(model, "scaling", None) is None or getattr(model, "geometry", None) is None:
        raise InputError("the model has no fitted voxel scaling", key="preprocessing",
                         expected="a model built by from_data or loaded from a checkpoint")
    return model.scaling, model.geometry


def scaled_batch(model: Any, batch: Mapping[str, Tensor]) -> Tensor:
    """The batch's grids in [0, 1] (``(B, Z, A, R)``) with the model's scaling.

    Raises:
        InputError: a batch without ``voxels`` or ``energy``, or a grid of another shape.
    """
    scaling, _ = require_state(model)
    for key in ("voxels", "energy"):
        if key not in batch:
            raise InputError(f"no {key!r} in the batch", key=key,
                             expected="voxels (B, Z, A, R) in MeV and energy (B,) in MeV")
    voxels = batch["voxels"]
    if tuple(voxels.shape[1:]) != tuple(model.config.grid):
        raise InputError(f"voxels of shape {tuple(voxels.shape)}", key="voxels",
                         expected=f"(B, {', '.join(str(g) for g in model.config.grid)})")
    return scaling.forward(voxels, batch["energy"].to(voxels.device))


class VoxelSequenceFamily:
    """``from_data`` and the fitted scaling and geometry of the families that fit their own
    voxel scaling (``transformer-mlm``, ``vq-vae``); mixed in before
    :class:`~showerformer.models.family.FamilyModule`."""

    config_class: Any
    scaling: VoxelScaling | None = None
    geometry: Geometry | None = None

    @classmethod
    def for_summary(cls) -> Any:
        """The default model on the paper's Par04 grid (``showerformer model-summary``)."""
        return cls(cls.config_class(grid=PAR04_GRID))  # type: ignore[call-arg]

    @staticmethod
    def require_grid(config: VoxelSequenceSection) -> None:
        """Refuse a config whose grid the data has not set yet.

        Raises:
            InputError: naming ``grid``.
        """
        if not config.grid:
            raise InputError("grid=[]", key="grid",
                             expected="the (z, phi, r) cells of the data (from_data sets them)")

    @classmethod
    def from_data(cls, overrides: Mapping[str, Any], train: VoxelGridDataset,
                  settings: Mapping[str, Any], *, val: VoxelGridDataset | None = None) -> Any:
        """The model for the training grids, its scaling fitted on them.

        Raises:
            InputError: a ``grid`` that differs from the data's, a patch that does not divide
                it or another bad config value, naming the key.
        """
        model = cls(config_with_grid(cls.config_class, overrides, train))  # type: ignore[call-arg]
        model.load_data_state(voxel_data_state(model.config, train), {})
        return model

    def load_data_state(self, state: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Restore the scaling and geometry (an empty state leaves the model without them)."""
        if state:
            self.scaling, self.geometry = voxel_state_parts(state)
        super().load_data_state(state, info)  # type: ignore[misc]
