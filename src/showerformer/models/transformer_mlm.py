"""TransformerMLM: masked-patch modelling of voxel showers, a representation learner (seed 001).

Raikwar et al., "Transformers for generalized fast shower simulation", arXiv:2312.09290, Sec. 4:
the shower (cell MeV / incident GeV, :class:`~showerformer.data.voxels.VoxelScaling`) is cut
into non-overlapping patches (18 x 10 x 3 cells -> 75 tokens on Par04's 18 x 50 x 45 grid); 75 %
of the patches are chosen at random and zeroed; a linear projection, the 3-D sine-cosine
positions, four encoder blocks (8 heads, d = 128, feed-forward 256) and a projection back to the
patch give ``x_hat = sigmoid(f_p2(f_mlm(f_p1(f_m(x)) + pos)))``, trained with binary
cross-entropy against the unmasked shower (masked-language modelling as in BERT, Devlin et al.,
arXiv:1810.04805). The representation of a shower is the mean of its encoded tokens, computed
without masking; :mod:`showerformer.benchmark.probe` classifies the incident energy and angle
from it (the paper's Table 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.data.voxels import VoxelScaling
from showerformer.geometry import Geometry
from showerformer.models import register
from showerformer.models.config import ModelConfig
from showerformer.models.family import FamilyModule
from showerformer.models.voxel_sequence import (
    PatchEmbedding,
    VoxelSequenceFamily,
    VoxelSequenceSection,
    encoder_stack,
    require_state,
    scaled_batch,
)

__all__ = ["MLM_LOSSES", "TransformerMLM", "TransformerMLMConfig", "random_patch_mask"]

MLM_LOSSES = ("all", "masked")
"""Where the reconstruction loss is taken: every patch (the paper) or the masked ones only."""


@dataclasses.dataclass(frozen=True)
class TransformerMLMConfig(VoxelSequenceSection, ModelConfig):
    """TransformerMLM sizes (the paper's defaults) and the patch keys of
    :class:`~showerformer.models.voxel_sequence.VoxelSequenceSection`.

    Attributes:
        d_model: token width (128).
        n_heads: attention heads (8).
        n_blocks: encoder blocks (4).
        ffn_dim: feed-forward width (256).
        mask_ratio: share of the patches zeroed per shower (0.75).
        loss_on: ``all`` patches (the paper) or the ``masked`` ones.
        dropout: dropout inside the blocks.
    """

    d_model: int = 128
    n_heads: int = 8
    n_blocks: int = 4
    ffn_dim: int = 256
    mask_ratio: float = 0.75
    loss_on: str = "all"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.check_types()
        self.check_voxel_section()
        self.check_blocks("n_blocks")
        if not 0.0 < self.mask_ratio < 1.0:
            raise self.invalid("mask_ratio", "a share in (0, 1), e.g. 0.75")
        if self.loss_on not in MLM_LOSSES:
            raise self.invalid("loss_on", "one of " + ", ".join(MLM_LOSSES))


def random_patch_mask(batch: int, n_patches: int, ratio: float, *,
                      generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> Tensor:
    """Exactly ``round(ratio * N)`` (at least one, at most N - 1) random patches per shower.

    Returns:
        ``(B, N)`` bool, True where a patch is masked.
    """
    k = min(max(round(ratio * n_patches), 1), n_patches - 1)
    scores = torch.rand(batch, n_patches, generator=generator, device=device)  # (B, N)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch, n_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :k], True)
    return mask


@register("transformer-mlm")
class TransformerMLM(VoxelSequenceFamily, FamilyModule):
    """Masked-patch transformer over voxel showers (see the module docstring)."""

    config_class: ClassVar[type] = TransformerMLMConfig
    task: ClassVar[str] = "representation"
    data_kind: ClassVar[str] = "voxels"

    def __init__(self, config: TransformerMLMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TransformerMLMConfig()
        self.require_grid(config)
        self.embed = PatchEmbedding(config, config.d_model)
        self.encoder = encoder_stack(config.d_model, config.n_heads, config.n_blocks,
                                     config.ffn_dim, config.dropout)
        self.proj_out = nn.Linear(config.d_model, config.patch_dim)
        self.scaling: VoxelScaling | None = None
        self.geometry: Geometry | None = None

    # -- network ---------------------------------------------------------------------------------

    def encode(self, patches: Tensor) -> Tensor:
        """Patches ``(B, N, P)`` (masked ones zeroed) -> encoded tokens ``(B, N, d)``."""
        return self.encoder(self.embed(patches))

    def forward(self, patches: Tensor) -> Tensor:
        """Patches ``(B, N, P)`` -> reconstruction logits ``(B, N, P)``."""
        return self.proj_out(self.encode(patches))

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Binary cross-entropy of the reconstruction of randomly masked showers.

        In evaluation mode (validation) the masks come from a fixed seed, so the validation
        loss of two checkpoints compares the same masks.
        """
        cfg = self.config
        y = scaled_batch(self, batch)  # (B, Z, A, R) in [0, 1]
        patches = self.embed.tokens(y)  # (B, N, P)
        b, n, _ = patches.shape
        gen = None
        if not self.training:
            gen = torch.Generator(device=patches.device).manual_seed(0)
        masked = random_patch_mask(b, n, cfg.mask_ratio, generator=gen,
                                   device=patches.device)  # (B, N)
        logits = self(patches.masked_fill(masked[..., None], 0.0))  # (B, N, P)
        per_patch = F.binary_cross_entropy_with_logits(logits, patches,
                                                       reduction="none").mean(-1)  # (B, N)
        if cfg.loss_on == "masked":
            return per_patch[masked].mean()
        return per_patch.mean()

    # -- representation --------------------------------------------------------------------------

    @torch.no_grad()
    def represent(self, voxels: Tensor, energy: Tensor) -> Tensor:
        """The representation of whole (unmasked) showers: the mean encoded token.

        Arguments:
            voxels: ``(B, Z, A, R)`` cell energies in MeV.
            energy: ``(B,)`` incident energies in MeV.

        Returns:
            ``(B, d_model)``.
        """
        with self.evaluating():
            y = scaled_batch(self, {"voxels": voxels, "energy": energy})
            return self.encode(self.embed.tokens(y)).mean(dim=1)

    @torch.no_grad()
    def reconstruct(self, voxels: Tensor, energy: Tensor, masked: Tensor | None = None
                    ) -> Tensor:
        """Showers in MeV rebuilt from their unmasked patches (``masked`` (B, N) bool, None:
        nothing masked)."""
        scaling, _ = require_state(self)
        with self.evaluating():
            patches = self.embed.tokens(scaled_batch(self, {"voxels": voxels, "energy": energy}))
            if masked is not None:
                patches = patches.masked_fill(masked[..., None], 0.0)
            grid = self.embed.grid_of(torch.sigmoid(self(patches)))
            return scaling.inverse(grid, energy.to(grid.device))
