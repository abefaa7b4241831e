"""VQ-VAE over voxel-shower patches: the tokenizer of the two-stage generator of seed 001.

Raikwar et al., "Transformers for generalized fast shower simulation", arXiv:2312.09290,
Sec. 5.1 (after DALL-E, Ramesh et al., arXiv:2102.12092): patching, projection and positions as
in TransformerMLM; a transformer encoder (2 blocks, 4 heads); the encoded patches are
concatenated and linearly projected to the whole latent space, ``latent_tokens`` (150) vectors
of ``code_dim``; each is replaced by its nearest codebook vector
(:class:`~showerformer.nn.quantize.VectorQuantizer`: EMA updates, dead-code restarts,
straight-through gradients); the opposite projection and a transformer decoder (2 blocks, 4 heads,
attending over all patches: it decodes a complete latent, so no causal mask) give the patches
back through a sigmoid. Loss: reconstruction (binary cross-entropy on the scaled cells) +
``||sg[z_e] - e||^2`` + ``beta ||z_e - sg[e]||^2`` (van den Oord et al., arXiv:1711.00937); with
EMA updates the codebook term carries no gradient and is logged only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.data.voxels import VoxelScaling
from showerformer.errors import InputError
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
from showerformer.nn.patching import PatchPositions
from showerformer.nn.quantize import VectorQuantizer

__all__ = ["VQVAE", "VQVAEConfig"]


@dataclasses.dataclass(frozen=True)
class VQVAEConfig(VoxelSequenceSection, ModelConfig):
    """VQ-VAE sizes (the paper's where it gives them) and the patch keys of
    :class:`~showerformer.models.voxel_sequence.VoxelSequenceSection`.

    Attributes:
        d_model: token width of encoder and decoder.
        n_heads: attention heads (4).
        encoder_blocks, decoder_blocks: transformer blocks (2 and 2).
        ffn_dim: feed-forward width.
        latent_tokens: codebook vectors per shower (150).
        code_dim: width ``D`` of a codebook vector.
        n_codes: codebook size.
        beta: commitment weight.
        ema: codebook updated by exponential moving averages (else learned by the codebook
            loss).
        decay: EMA decay.
        restart_threshold: codes whose EMA usage falls below this are restarted on encoder
            outputs of the batch (0: never).
        dropout: dropout inside the blocks.
    """

    d_model: int = 128
    n_heads: int = 4
    encoder_blocks: int = 2
    decoder_blocks: int = 2
    ffn_dim: int = 256
    latent_tokens: int = 150
    code_dim: int = 16
    n_codes: int = 512
    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    restart_threshold: float = 1.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.check_types()
        self.check_voxel_section()
        self.check_blocks("encoder_blocks", "decoder_blocks")
        self.require_positive("latent_tokens", "code_dim")
        if self.n_codes < 2:
            raise self.invalid("n_codes", "at least 2 codebook vectors")
        if not self.beta >= 0:
            raise self.invalid("beta", "a non-negative commitment weight")
        if not 0.0 < self.decay < 1.0:
            raise self.invalid("decay", "a number in (0, 1), e.g. 0.99")
        if not self.restart_threshold >= 0:
            raise self.invalid("restart_threshold", "a non-negative usage (0: no restarts)")


@register("vq-vae")
class VQVAE(VoxelSequenceFamily, FamilyModule):
    """Patch-transformer VQ-VAE (see the module docstring)."""

    config_class: ClassVar[type] = VQVAEConfig
    task: ClassVar[str] = "representation"
    data_kind: ClassVar[str] = "voxels"

    def __init__(self, config: VQVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VQVAEConfig()
        self.require_grid(config)
        d, n = config.d_model, config.n_patches
        self.embed = PatchEmbedding(config, d)
        self.encoder = encoder_stack(d, config.n_heads, config.encoder_blocks, config.ffn_dim,
                                     config.dropout)
        self.to_latent = nn.Linear(n * d, config.latent_tokens * config.code_dim)
        self.quantizer = VectorQuantizer(config.n_codes, config.code_dim, ema=config.ema,
                                         decay=config.decay,
                                         restart_threshold=config.restart_threshold)
        self.from_latent = nn.Linear(config.latent_tokens * config.code_dim, n * d)
        self.decoder_positions = PatchPositions(
            config.tokens_zar, d, config.positional_encoding,
            periodic_axis=1 if config.periodic_phi else None)
        self.decoder = encoder_stack(d, config.n_heads, config.decoder_blocks, config.ffn_dim,
                                     config.dropout)
        self.proj_out = nn.Linear(d, config.patch_dim)
        self.scaling: VoxelScaling | None = None
        self.geometry: Geometry | None = None

    # -- network ---------------------------------------------------------------------------------

    def encode(self, y: Tensor) -> Tensor:
        """Scaled grids ``(B, Z, A, R)`` -> continuous latents ``z_e`` ``(B, T, D)``."""
        tokens = self.encoder(self.embed(self.embed.tokens(y)))  # (B, N, d)
        b = tokens.shape[0]
        return self.to_latent(tokens.reshape(b, -1)).view(b, self.config.latent_tokens,
                                                          self.config.code_dim)

    def decode_latent(self, z_q: Tensor) -> Tensor:
        """Quantized latents ``(B, T, D)`` -> patch logits ``(B, N, P)``."""
        b = z_q.shape[0]
        h = self.from_latent(z_q.reshape(b, -1)).view(b, self.config.n_patches,
                                                      self.config.d_model)  # (B, N, d)
        h = h + self.decoder_positions().to(h.dtype)
        return self.proj_out(self.decoder(h))

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Reconstruction BCE + codebook + ``beta`` x commitment."""
        y = scaled_batch(self, batch)  # (B, Z, A, R)
        vq = self.quantizer(self.encode(y))
        logits = self.decode_latent(vq.quantized)  # (B, N, P)
        recon = F.binary_cross_entropy_with_logits(logits, self.embed.tokens(y))
        return recon + vq.codebook_loss + self.config.beta * vq.commitment_loss

    # -- tokens and showers ----------------------------------------------------------------------

    @torch.no_grad()
    def tokenize(self, voxels: Tensor, energy: Tensor) -> Tensor:
        """Showers ``(B, Z, A, R)`` MeV with their incident energy ``(B,)`` MeV -> code indices
        ``(B, T)`` int64 (the codebook is not updated)."""
        with self.evaluating():
            y = scaled_batch(self, {"voxels": voxels, "energy": energy})
            return self.quantizer(self.encode(y)).indices

    @torch.no_grad()
    def detokenize(self, indices: Tensor, energy: Tensor) -> Tensor:
        """Code indices ``(B, T)`` and incident energies ``(B,)`` MeV -> showers ``(B, Z, A, R)``
        in MeV (cells below the readout threshold zeroed)."""
        scaling, _ = require_state(self)
        t = self.config.latent_tokens
        if indices.ndim != 2 or indices.shape[1] != t:
            raise InputError(f"tokens of shape {tuple(indices.shape)}", key="tokens",
                             expected=f"(B, {t}) code indices")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.config.n_codes):
            raise InputError("token outside the codebook", key="tokens",
                             expected=f"indices in [0, {self.config.n_codes})")
        with self.evaluating():
            logits = self.decode_latent(self.quantizer.lookup(indices))
            grid = self.embed.grid_of(torch.sigmoid(logits))
            return scaling.inverse(grid, energy.to(grid.device))

    @torch.no_grad()
    def reconstruct(self, voxels: Tensor, energy: Tensor) -> Tensor:
        """Showers through encoder, codebook and decoder, in MeV (the paper's
        "reconstruction")."""
        return self.detokenize(self.tokenize(voxels, energy), energy)

    @torch.no_grad()
    def represent(self, voxels: Tensor, energy: Tensor) -> Tensor:
        """The mean encoded patch token of whole showers, ``(B, d_model)``."""
        with self.evaluating():
            y = scaled_batch(self, {"voxels": voxels, "energy": energy})
            return self.encoder(self.embed(self.embed.tokens(y))).mean(dim=1)
