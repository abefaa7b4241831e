"""ParticleCNNTransformer: hierarchical CNN + three-stage transformer momentum regressor.

Read top to bottom:

1. ``prepare_input``: voxel energies (B, nz, ny, nx) in MeV -> two channels, a log-normalised
   energy ``e`` in [0, 1] and its complement ``1 - e``.  # (B, 2, G, G, G)
2. ``CNNBackbone``: depthwise-separable 3D convolutions over ``n_scales`` resolutions
   (64^3 -> 32^3 -> 16^3 -> 8^3 by default); every scale is projected to an 8^3 grid of
   ``d_model`` tokens.  # (B, S, d, 8, 8, 8)
   On a CPU the convolutions run in the channels-last layout (``CNNBackbone.memory_format``).
3. ``IntraSpatialAttn`` (stage 1): each scale's 8^3 tokens are cut into 2^3 = 8 blocks of 4^3 = 64
   tokens, a CLS token (block mean + learned token) is prepended to each block and one
   transformer block with 3D RoPE, shared by all blocks and scales, runs on the 65 tokens. The
   block CLS tokens come out.  # (B, S, 8, d)
4. ``CrossScaleAttn`` (stage 2): per block a query attends to itself and the S scale CLS tokens
   (S + 1 = 5 tokens, no RoPE).  # (B, 8, d)
5. ``InterBlockAttn`` (stage 3): a global CLS token and the 8 block tokens pass two transformer
   blocks and a final RMSNorm.  # (B, 9, d)
6. Head: ``[CLS, mean of the block tokens]`` -> 384 -> 192 -> 96 -> 48 -> 1, the momentum in
   normalised units; ``predict`` returns GeV.

Summary tokens: every CLS or query token starts as the mean of the tokens it summarises plus a
learned vector (stage 1: block mean + ``cls_token``; stage 2: mean of the scale CLS tokens +
``query_token`` + the block embedding; stage 3: mean of the block tokens + ``global_token``).
Only attention branches write into a summary token and each is gated by a LayerScale of 1e-4, so a
purely learned token would see the data at a relative level of about 1e-4 per stage (1e-12 after
three stages) and training would stall until the gains grow; starting from the mean puts the data
in the residual stream from the first step at no parameter cost.

Where the learned tokens live: the three learned vectors (``d_model`` each) are parameters of the
top-level module, reported as their own part "Learned tokens (CLS, query)" by
:func:`parameter_breakdown`. That keeps the three stages at exactly the counts of the reference
table (one block + 8 block embeddings; one cross-attention block; two blocks + RMSNorm); the
reference table folds everything outside stages and head into its "CNN backbone" line, which is
why the backbone is compared within 5% and the total within 1%.

Grid sizes: the token grid is always ``block_grid * block_size`` = 8 per axis (8 blocks of 4^3
tokens per scale). Scale ``s`` has resolution ``max(grid / 2^s, 8)``: a 64^3 grid gives
64, 32, 16, 8; a 32^3 grid keeps four scales ending at 8^3 with one fewer downsampling
(32, 16, 8, 8; the last step is a stride-1 separable block). Each scale reaches the token grid
through a depthwise patch convolution (kernel = stride = resolution / 8) and a pointwise
projection to ``d_model``. The transformer is identical for every grid; only the patch kernels of
the backbone differ.

References:
    T. Menyhárt, R. Lakatos, A. Hajdu, "ParticleCNNTransformer: Hierarchical CNN-Transformer for 3D
    Hadronic Shower Momentum Regression" (seed document 000 of this project);
    Howard et al. (depthwise-separable convolutions), arXiv:1704.04861;
    Dosovitskiy et al. (CLS token for vision transformers), arXiv:2010.11929;
    Su et al. (RoPE), arXiv:2104.09864; Touvron et al. (LayerScale), arXiv:2103.17239;
    Huang et al. (stochastic depth), arXiv:1603.09382; Zhang & Sennrich (RMSNorm), arXiv:1910.07467.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.errors import InputError
from showerformer.models import register
from showerformer.models.config import ModelConfig
from showerformer.models.family import FamilyModule
from showerformer.nn import CrossAttentionBlock, RMSNorm, RotaryEmbedding3D, TransformerBlock
from showerformer.nn.rope import grid_positions

__all__ = [
    "CONV_PATHS",
    "SEED_BREAKDOWN",
    "CNNBackbone",
    "CrossScaleAttn",
    "InterBlockAttn",
    "IntraSpatialAttn",
    "ParticleCNNTransformer",
    "ParticleCNNTransformerConfig",
    "format_breakdown",
    "parameter_breakdown",
]

SEED_BREAKDOWN: dict[str, int] = {
    "CNN backbone": 288_822,
    "Stage 1 intra-block": 444_672,
    "Stage 2 cross-scale": 443_328,
    "Stage 3 inter-block": 886_464,
    "Pool + head": 97_153,
    "TOTAL": 2_160_439,
}
"""The parameter table of the seed document (the specification of the 64^3 model)."""

_LOSSES = ("huber", "mse", "l1")
CONV_PATHS = ("auto", "fast", "plain")
"""Layouts of the backbone's convolutions (:meth:`ParticleCNNTransformer.set_conv_path`)."""


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ParticleCNNTransformerConfig(ModelConfig):
    """Hyper-parameters of :class:`ParticleCNNTransformer` (defaults: the seed's 64^3 model).

    Attributes:
        grid: voxels per axis of the cubic input (64; 32 for fast tests). ``grid / 8`` must be a
            power of two.
        in_channels: input channels, the energy and its complement (always 2).
        d_model: token width ``d``.
        n_heads: attention heads (``d / n_heads`` must be divisible by 6 for 3D RoPE).
        mlp_ratio: MLP hidden width over ``d``.
        n_scales: CNN resolutions turned into tokens.
        block_grid: spatial blocks per axis (2 -> 8 blocks).
        block_size: tokens per block per axis (4 -> 64 tokens per block).
        inter_blocks: transformer blocks in stage 3 (``inter_layers`` in earlier files).
        drop_path: stochastic-depth probability of every residual branch of every stage.
        layerscale_init: initial LayerScale value.
        head_hidden: hidden widths of the regression head.
        cnn_channels: channels at each CNN scale.
        cnn_depths: residual separable blocks at each CNN scale (after the downsampling block).
        rope_base: frequency base of the 3D RoPE.
        energy_scale_mev: ``E0`` of the input transform ``log1p(E / E0) / log1p(Emax / E0)``.
        energy_max_mev: ``Emax``: a voxel energy mapped to 1 (larger values saturate at 1).
        target_mean_gev: target normalisation ``y = (p - mean) / std``; the defaults are the
            moments of a uniform 1-20 GeV spectrum. The trainer may replace them by the training
            set's moments (``dataclasses.replace``).
        target_std_gev: see ``target_mean_gev``.
        loss: ``"huber"``, ``"mse"`` or ``"l1"`` on the normalised target.
        huber_delta: Huber transition point in normalised units.
    """

    LEGACY_KEYS: ClassVar[dict[str, str]] = {"inter_layers": "inter_blocks"}

    grid: int = 64
    in_channels: int = 2
    d_model: int = 192
    n_heads: int = 4
    mlp_ratio: int = 4
    n_scales: int = 4
    block_grid: int = 2
    block_size: int = 4
    inter_blocks: int = 2
    drop_path: float = 0.1
    layerscale_init: float = 1e-4
    head_hidden: tuple[int, ...] = (192, 96, 48)
    cnn_channels: tuple[int, ...] = (24, 48, 96, 192)
    cnn_depths: tuple[int, ...] = (1, 1, 3, 3)
    rope_base: float = 10.0
    energy_scale_mev: float = 0.1
    energy_max_mev: float = 1000.0
    target_mean_gev: float = 10.5
    target_std_gev: float = 5.485
    loss: str = "huber"
    huber_delta: float = 1.0

    def __post_init__(self) -> None:
        self.check_types()

        self.require_positive("d_model", "n_heads", "mlp_ratio", "n_scales", "block_grid",
                              "block_size", "inter_blocks", "head_hidden")
        t = self.token_grid
        ratio = self.grid // t if t > 0 else 0
        if self.grid < t or self.grid % t or ratio & (ratio - 1):
            raise self.invalid("grid", f"a power-of-two multiple of block_grid * block_size = {t}")
        if self.in_channels != 2:
            raise self.invalid("in_channels", "2 (energy and 1 - energy)")
        if self.n_heads < 1 or self.d_model % self.n_heads or (self.d_model // self.n_heads) % 6:
            raise self.invalid("n_heads", f"a divisor of d_model={self.d_model} leaving a head size divisible by 6")
        if self.n_scales < 1:
            raise self.invalid("n_scales", "at least 1")
        if len(self.cnn_channels) != self.n_scales or min(self.cnn_channels) < 1:
            raise self.invalid("cnn_channels", f"{self.n_scales} positive channel counts (one per scale)")
        if len(self.cnn_depths) != self.n_scales or min(self.cnn_depths) < 0:
            raise self.invalid("cnn_depths", f"{self.n_scales} non-negative block counts (one per scale)")
        if not 0.0 <= self.drop_path < 1.0:
            raise self.invalid("drop_path", "a probability in [0, 1)")
        if not self.layerscale_init > 0.0:
            raise self.invalid("layerscale_init", "a positive initial gain")
        if not self.rope_base > 1.0:
            raise self.invalid("rope_base", "a frequency base above 1")
        if not 0.0 < self.energy_scale_mev < self.energy_max_mev:
            raise self.invalid("energy_scale_mev", "0 < energy_scale_mev < energy_max_mev")
        if not self.target_std_gev > 0.0:
            raise self.invalid("target_std_gev", "a positive spread")
        if self.loss not in _LOSSES:
            raise self.invalid("loss", " or ".join(_LOSSES))
        if not self.huber_delta > 0.0:
            raise self.invalid("huber_delta", "a positive number")

    @property
    def token_grid(self) -> int:
        """Tokens per axis of every scale (``block_grid * block_size`` = 8)."""
        return self.block_grid * self.block_size

    @property
    def scale_resolutions(self) -> tuple[int, ...]:
        """Voxels per axis at each CNN scale: ``max(grid / 2^s, token_grid)``."""
        return tuple(max(self.grid >> s, self.token_grid) for s in range(self.n_scales))


# ----------------------------------------------------------------------------------------------
# CNN backbone


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class SeparableConv3d(nn.Module):
    """Depthwise 3x3x3 conv -> GroupNorm -> GELU -> pointwise conv -> GroupNorm -> GELU.

    A residual connection is added when input and output shapes agree.

    Arguments:
        c_in: input channels.
        c_out: output channels.
        stride: 2 to halve the resolution, 1 to keep it.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv3d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False)
        self.norm1 = _group_norm(c_in)
        self.pointwise = nn.Conv3d(c_in, c_out, 1, bias=False)
        self.norm2 = _group_norm(c_out)
        self.act = nn.GELU()
        self.residual = c_in == c_out and stride == 1

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, R, R, R) -> (B, Cout, R/stride, ...)
        y = self.act(self.norm1(self.depthwise(x)))
        y = self.act(self.norm2(self.pointwise(y)))
        return x + y if self.residual else y


class CNNBackbone(nn.Module):
    """Multi-scale depthwise-separable 3D CNN that turns every scale into an 8^3 token grid.

    Scale 0 is a full 3x3x3 stem conv (2 -> c0) followed by ``depths[0]`` residual separable
    blocks; scale ``s > 0`` starts with a separable block of stride 2 (stride 1 once the
    resolution has reached the token grid) from ``c[s-1]`` to ``c[s]`` channels. Each scale is
    projected to tokens by a depthwise patch conv (kernel = stride = resolution / token grid, with
    bias; absent at the token resolution) and a pointwise conv to ``d_model`` (with bias).
    """

    def __init__(self, config: ParticleCNNTransformerConfig) -> None:
        super().__init__()
        ch, res, t = config.cnn_channels, config.scale_resolutions, config.token_grid
        self.stem = nn.Sequential(
            nn.Conv3d(config.in_channels, ch[0], 3, padding=1, bias=False),
            _group_norm(ch[0]),
            nn.GELU(),
        )
        self.scales = nn.ModuleList()
        self.projections = nn.ModuleList()
        for s in range(config.n_scales):
            layers: list[nn.Module] = []
            if s > 0:
                layers.append(SeparableConv3d(ch[s - 1], ch[s], stride=res[s - 1] // res[s]))
            layers += [SeparableConv3d(ch[s], ch[s]) for _ in range(config.cnn_depths[s])]
            self.scales.append(nn.Sequential(*layers))
            factor = res[s] // t
            patch: nn.Module = (
                nn.Conv3d(ch[s], ch[s], factor, stride=factor, groups=ch[s]) if factor > 1
                else nn.Identity()
            )
            self.projections.append(nn.Sequential(patch, nn.Conv3d(ch[s], config.d_model, 1)))

    conv_path: str = "auto"
    """``"auto"`` (fast on a CPU, plain elsewhere), ``"fast"`` or ``"plain"``; see
    :meth:`memory_format`. Not part of the configuration: both paths compute the same function
    with the same parameters."""

    def memory_format(self, device: torch.device) -> torch.memory_format:
        """Memory layout of the convolution activations on ``device``.

        The fast path runs every convolution in ``torch.channels_last_3d`` (channels innermost;
        GroupNorm, GELU and the residual additions keep the layout). On a CPU the backward pass
        of a depthwise 3x3x3 convolution in the default layout goes through oneDNN's im2col +
        GEMM implementation, thousands of short parallel regions: moderately slower than the
        channels-last kernels on an idle CPU, up to tens of times slower on a CPU shared with
        other busy processes (docs/regression.md has the measurements). The plain path is
        PyTorch's default contiguous layout. Both give the same result up to float rounding
        (tested against float64).
        """
        if self.conv_path == "plain" or (self.conv_path == "auto" and device.type != "cpu"):
            return torch.contiguous_format
        return torch.channels_last_3d

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: prepared input ``(B, 2, G, G, G)``. Returns ``(B, S, d, T, T, T)``."""
        x = x.contiguous(memory_format=self.memory_format(x.device))
        x = self.stem(x)  # (B, c0, G, G, G)
        tokens = []
        for scale, project in zip(self.scales, self.projections, strict=True):
            x = scale(x)  # (B, c_s, R_s, R_s, R_s)
            tokens.append(project(x))  # (B, d, T, T, T)
        return torch.stack(tokens, dim=1)  # (B, S, d, T, T, T)


# ----------------------------------------------------------------------------------------------
# The three transformer stages


class IntraSpatialAttn(nn.Module):
    """Stage 1: one transformer block with 3D RoPE over each block of 4^3 tokens plus a CLS token.

    The block is shared by all blocks and scales; 8 learned block embeddings (``block_embed``)
    are added to every token of their block, CLS included. The CLS token of a block is the learned
    ``cls_token`` plus the mean of the block's 64 tokens. RoPE positions are the token
    coordinates inside the block, centred on the block centre ((i - 1.5) per axis); the CLS token
    sits at the centre, the origin, where the rotation is the identity: it is not rotated, and its
    attention to a token depends on that token's offset from the block centre.
    Parameters: ``12 d^2 + 4 d`` + ``n_blocks * d`` (444,672 for d = 192).
    """

    def __init__(self, config: ParticleCNNTransformerConfig) -> None:
        super().__init__()
        d, bs, nb = config.d_model, config.block_size, config.block_grid
        self.block_grid, self.block_size = nb, bs
        self.block = TransformerBlock(d, config.n_heads, config.mlp_ratio, config.drop_path,
                                      config.layerscale_init)
        self.block_embed = nn.Parameter(torch.zeros(nb**3, d))  # (nB, d)
        self.rope = RotaryEmbedding3D(d // config.n_heads, config.rope_base)
        positions = torch.cat([torch.zeros(1, 3), grid_positions(bs)])  # (1 + bs^3, 3), CLS first
        self.register_buffer("positions", positions, persistent=False)

    def blockify(self, x: Tensor) -> Tensor:
        """Cut token grids into blocks: ``(B, S, d, T, T, T) -> (B, S, nB, bs^3, d)``.

        Blocks and the tokens inside them are both in (z, y, x) raster order.
        """
        b, s, d = x.shape[:3]
        nb, bs = self.block_grid, self.block_size
        x = x.reshape(b, s, d, nb, bs, nb, bs, nb, bs)  # (B, S, d, nbz, bsz, nby, bsy, nbx, bsx)
        x = x.permute(0, 1, 3, 5, 7, 4, 6, 8, 2)  # (B, S, nbz, nby, nbx, bsz, bsy, bsx, d)
        return x.reshape(b, s, nb**3, bs**3, d)  # (B, S, nB, bs^3, d)

    def forward(self, tokens: Tensor, cls_token: Tensor) -> Tensor:
        """Arguments: ``tokens`` (B, S, d, T, T, T), ``cls_token`` (d,).
        Returns the block CLS tokens ``(B, S, nB, d)``."""
        x = self.blockify(tokens)  # (B, S, nB, L, d), L = bs^3
        b, s, n_blocks, length, d = x.shape
        cls = cls_token + x.mean(dim=3, keepdim=True)  # (B, S, nB, 1, d): learned + block mean
        x = torch.cat([cls, x], dim=3) + self.block_embed[:, None, :]  # (B, S, nB, 1 + L, d)
        rope = self.rope(self.positions)  # 2 x (1 + L, d_head / 2)
        x = self.block(x.reshape(b * s * n_blocks, 1 + length, d), rope=rope)  # (B*S*nB, 1+L, d)
        return x[:, 0].reshape(b, s, n_blocks, d)  # (B, S, nB, d)


class CrossScaleAttn(nn.Module):
    """Stage 2: per block, a query attends to itself and the S scale CLS tokens (S + 1 tokens).

    The query (built by the model) is ``query_token + block_embed[b] + mean over scales of the CLS
    tokens``; its output, the fused block token, goes on to stage 3.

    No RoPE: the scale index is not a spatial coordinate. One cross-attention block with separate
    RMSNorms for the query and the keys/values: ``12 d^2 + 5 d`` (443,328 for d = 192).
    """

    def __init__(self, config: ParticleCNNTransformerConfig) -> None:
        super().__init__()
        self.block = CrossAttentionBlock(config.d_model, config.n_heads, config.mlp_ratio,
                                         config.drop_path, config.layerscale_init)

    @staticmethod
    def _pairs(cls: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """Queries ``(B*nB, 1, d)`` and their contexts ``(B*nB, 1 + S, d)`` (query first)."""
        b, s, n_blocks, d = cls.shape
        context = torch.cat([query[:, :, None], cls.transpose(1, 2)], dim=2)  # (B, nB, 1 + S, d)
        return query.reshape(b * n_blocks, 1, d), context.reshape(b * n_blocks, 1 + s, d)

    def forward(self, cls: Tensor, query: Tensor) -> Tensor:
        """Arguments: scale CLS tokens ``cls`` (B, S, nB, d), queries ``query`` (B, nB, d).
        Returns the fused block tokens ``(B, nB, d)``."""
        b, _, n_blocks, d = cls.shape
        out = self.block(*self._pairs(cls, query))  # (B*nB, 1, d)
        return out.reshape(b, n_blocks, d)  # (B, nB, d)

    @torch.no_grad()
    def attention_weights(self, cls: Tensor, query: Tensor) -> Tensor:
        """How much each block's query attends to itself and to each scale, averaged over heads.

        Arguments: as :meth:`forward`. Returns ``(B, nB, 1 + S)``: column 0 is the query itself,
        column ``1 + s`` the CLS token of scale ``s`` (64^3, 32^3, ... for the default model);
        every row sums to 1.
        """
        b, s, n_blocks, _ = cls.shape
        w = self.block.attention_weights(*self._pairs(cls, query))  # (B*nB, H, 1, 1 + S)
        return w.mean(dim=1).reshape(b, n_blocks, 1 + s)


class InterBlockAttn(nn.Module):
    """Stage 3: a global CLS token (learned ``global_token`` + mean of the block tokens) and the
    block tokens through ``inter_blocks`` transformer blocks and a final RMSNorm (no RoPE: block
    identity comes from the block embeddings carried by the stage-2 queries).
    Parameters: ``inter_layers * (12 d^2 + 4 d) + d`` (886,464 for two blocks, d = 192).
    """

    def __init__(self, config: ParticleCNNTransformerConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(config.d_model, config.n_heads, config.mlp_ratio, config.drop_path,
                             config.layerscale_init)
            for _ in range(config.inter_blocks)
        )
        self.norm = RMSNorm(config.d_model)

    def forward(self, x: Tensor, global_token: Tensor) -> Tensor:
        """Arguments: block tokens ``x`` (B, nB, d), ``global_token`` (d,).
        Returns ``(B, 1 + nB, d)``, the global CLS first."""
        cls = global_token + x.mean(dim=1, keepdim=True)  # (B, 1, d): learned + mean of blocks
        x = torch.cat([cls, x], dim=1)  # (B, 1 + nB, d)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------------------------
# The model


@register("particle-cnn-transformer")
class ParticleCNNTransformer(FamilyModule):
    """Hierarchical CNN + three-stage transformer regressing the incident momentum of a shower.

    ``forward`` takes voxel energies ``(B, nz, ny, nx)`` in MeV, or an already prepared input
    ``(B, 2, G, G, G)`` (see :meth:`prepare_input`), and returns the momentum in normalised units
    ``(B,)``; :meth:`predict` returns GeV and :meth:`loss` trains it (``task = "regression"``).
    :meth:`from_data` takes the grid and the target normalisation from labelled sparse voxel
    files (``data_kind = "sparse-voxels"``).

    Arguments:
        config: hyper-parameters; the seed's 64^3 model when omitted.
    """

    config_class: ClassVar[type] = ParticleCNNTransformerConfig
    task: ClassVar[str] = "regression"
    data_kind: ClassVar[str] = "sparse-voxels"
    family: ClassVar[str]

    def __init__(self, config: ParticleCNNTransformerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ParticleCNNTransformerConfig()
        d = config.d_model
        self.backbone = CNNBackbone(config)
        # learned tokens (own part of the parameter table, see the module docstring)
        self.cls_token = nn.Parameter(torch.zeros(d))  # stage-1 CLS, shared by blocks and scales
        self.query_token = nn.Parameter(torch.zeros(d))  # stage-2 query (+ block embedding)
        self.global_token = nn.Parameter(torch.zeros(d))  # stage-3 global CLS
        self.stage1 = IntraSpatialAttn(config)
        self.stage2 = CrossScaleAttn(config)
        self.stage3 = InterBlockAttn(config)
        widths = (2 * d, *config.head_hidden)
        layers: list[nn.Module] = []
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), nn.GELU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.head = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        """Transformer linears ~ N(0, 0.02); tokens and block embeddings ~ truncated N(0, 0.02);
        convolutions and the head keep PyTorch's default (fan-in) initialisation."""
        for stage in (self.stage1, self.stage2, self.stage3):
            for module in stage.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
        for p in (self.cls_token, self.query_token, self.global_token, self.stage1.block_embed):
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)

    # -- input and target normalisation ---------------------------------------------------------

    def prepare_input(self, voxels: Tensor) -> Tensor:
        """Two-channel network input from voxel energies.

        ``e = clamp(log1p(E / E0) / log1p(Emax / E0), 0, 1)`` with ``E0 = energy_scale_mev`` and
        ``Emax = energy_max_mev`` (a fixed transform: the absolute energy scale, which carries
        the momentum, is kept; negative energies map to 0, energies above Emax to 1). The second
        channel is the complement ``1 - e``.

        Arguments:
            voxels: energies in MeV.  # (B, nz, ny, nx), nz = ny = nx = grid

        Returns:
            ``(B, 2, nz, ny, nx)`` float32 (depth z is the first spatial axis).
        """
        g = self.config.grid
        if voxels.ndim != 4 or tuple(voxels.shape[1:]) != (g, g, g):
            raise InputError(f"voxel tensor of shape {tuple(voxels.shape)}", key="voxels",
                             expected=f"(B, {g}, {g}, {g}) energies in MeV")
        e0, emax = self.config.energy_scale_mev, self.config.energy_max_mev
        e = torch.log1p(voxels.float().clamp_min(0.0) / e0) / math.log1p(emax / e0)
        e = e.clamp_max(1.0)  # (B, G, G, G)
        return torch.stack([e, 1.0 - e], dim=1)  # (B, 2, G, G, G)

    def normalize_target(self, momentum_gev: Tensor) -> Tensor:
        """GeV -> normalised units: ``(p - target_mean_gev) / target_std_gev``."""
        return (momentum_gev - self.config.target_mean_gev) / self.config.target_std_gev

    def denormalize_target(self, y: Tensor) -> Tensor:
        """Normalised units -> GeV (inverse of :meth:`normalize_target`)."""
        return y * self.config.target_std_gev + self.config.target_mean_gev

    # -- network ----------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Predicted momentum in normalised units.

        Arguments:
            x: voxel energies ``(B, G, G, G)`` in MeV or a prepared input ``(B, 2, G, G, G)``.

        Returns:
            ``(B,)``; :meth:`denormalize_target` turns it into GeV.
        """
        return self._run(self._prepared(x))[0]

    def _prepared(self, x: Tensor) -> Tensor:
        """A prepared input ``(B, 2, G, G, G)`` from voxels or a prepared input (checked)."""
        g, c = self.config.grid, self.config.in_channels
        if x.ndim == 4:
            return self.prepare_input(x)  # (B, 2, G, G, G)
        if x.ndim != 5 or tuple(x.shape[1:]) != (c, g, g, g):
            raise InputError(f"input tensor of shape {tuple(x.shape)}", key="voxels",
                             expected=f"(B, {g}, {g}, {g}) voxels or (B, {c}, {g}, {g}, {g}) prepared")
        return x

    def _run(self, x: Tensor, analysis: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward pass from a prepared input; with ``analysis`` also the final global CLS token
        and the stage-2 attention weights (see :meth:`analyse`)."""
        tokens = self.backbone(x)  # (B, S, d, T, T, T)
        cls = self.stage1(tokens, self.cls_token)  # (B, S, nB, d)
        query = self.query_token + self.stage1.block_embed + cls.mean(dim=1)  # (B, nB, d)
        fused = self.stage2(cls, query)  # (B, nB, d)
        out = self.stage3(fused, self.global_token)  # (B, 1 + nB, d)
        pooled = torch.cat([out[:, 0], out[:, 1:].mean(dim=1)], dim=-1)  # (B, 2d)
        extra: dict[str, Tensor] = {}
        if analysis:
            extra = {"cls": out[:, 0],  # (B, d)
                     "cross_scale_attention": self.stage2.attention_weights(cls, query)}
        return self.head(pooled).squeeze(-1), extra  # (B,)

    @torch.no_grad()
    def analyse(self, voxels: Tensor) -> dict[str, Tensor]:
        """The seed's analysis quantities, in evaluation mode (the previous mode is restored).

        Arguments:
            voxels: energies in MeV ``(B, G, G, G)`` (or a prepared input).

        Returns:
            ``{"prediction": (B,) GeV, "cls": (B, d) final global CLS token (after the last
            RMSNorm), "cross_scale_attention": (B, nB, 1 + S) stage-2 attention of each block's
            query to itself (column 0) and to the CLS token of every scale, head-averaged}``.
        """
        was_training = self.training
        self.eval()
        try:
            y, extra = self._run(self._prepared(voxels), analysis=True)
            return {"prediction": self.denormalize_target(y.float()),
                    **{k: v.float() for k, v in extra.items()}}
        finally:
            self.train(was_training)

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Regression loss on the normalised target (``config.loss``: Huber, MSE or L1).

        Arguments:
            batch: ``"voxels"`` (B, G, G, G) float32 MeV and ``"target"`` (B,) momentum in GeV.

        Returns:
            Scalar loss.
        """
        for key in ("voxels", "target"):
            if key not in batch:
                raise InputError("batch without this entry", key=key,
                                 expected="a dict with 'voxels' (B, G, G, G) and 'target' (B,)")
        pred = self(batch["voxels"])  # (B,)
        target = self.normalize_target(batch["target"].to(pred.device, torch.float32))  # (B,)
        if target.shape != pred.shape:
            raise InputError(f"target of shape {tuple(target.shape)}", key="target",
                             expected=f"{tuple(pred.shape)}, one momentum per event")
        pred = pred.float()
        if self.config.loss == "mse":
            return F.mse_loss(pred, target)
        if self.config.loss == "l1":
            return F.l1_loss(pred, target)
        return F.huber_loss(pred, target, delta=self.config.huber_delta)

    @torch.no_grad()
    def predict(self, voxels: Tensor) -> Tensor:
        """Momentum in GeV, in evaluation mode (no DropPath); the previous mode is restored.

        Arguments:
            voxels: energies in MeV ``(B, G, G, G)`` (or a prepared input).

        Returns:
            ``(B,)`` momenta in GeV.
        """
        was_training = self.training
        self.eval()
        try:
            return self.denormalize_target(self(voxels).float())
        finally:
            self.train(was_training)

    @classmethod
    def from_data(cls, overrides: Mapping[str, Any], train: Any, settings: Mapping[str, Any],
                  *, val: Any = None) -> ParticleCNNTransformer:
        """The model of a run config for labelled voxel data.

        ``grid`` defaults to the data's grid; ``target_mean_gev`` / ``target_std_gev`` default
        to the mean and standard deviation of the training targets (explicit config values
        win). The data description (grid shape, geometry, target key and scale) becomes the
        model's :meth:`data_state`.

        Arguments:
            overrides: keys of :class:`ParticleCNNTransformerConfig`.
            train: a :class:`~showerformer.training.data.SparseVoxelDataset`.
            settings: the ``data:`` settings (``target_key``, ``target_scale``).
            val: the validation dataset (its grid must match; checked by the data kind).

        Raises:
            InputError: a grid that is not cubic (naming the data file) or does not match the
                config, or a bad config value (naming the key).
        """
        overrides = dict(overrides)
        shape = tuple(train.shape)
        if len(shape) != 3 or len(set(shape)) != 1:
            raise InputError(f"event shape {shape}", path=train.path, key="geometry",
                             expected="a cubic grid (G, G, G)")
        grid = overrides.setdefault("grid", shape[0])
        if grid != shape[0]:
            raise InputError(f"grid={grid} but the data has {shape[0]}^3 cells", key="grid",
                             expected=f"{shape[0]} (or leave it unset)")
        targets = train.targets
        if targets is None or len(targets) == 0:
            raise InputError("no targets", path=train.path, key=train.target_key,
                             expected="labelled training events")
        mean, std = float(np.mean(targets)), float(np.std(targets))
        overrides.setdefault("target_mean_gev", mean)
        overrides.setdefault("target_std_gev", std if std > 0 and math.isfinite(std) else 1.0)
        model = cls(cls.config_class.from_dict(overrides))
        scale = float(settings.get("target_scale", 1e-3))
        model.load_data_state({
            "kind": "sparse-voxels", "input": "voxels", "input_unit": "MeV",
            "shape": list(shape), "geometry": train.geometry.to_dict(),
            "target_key": str(settings.get("target_key", "momentum")), "target_scale": scale,
            "target_unit": "GeV" if scale == 1e-3 else f"MeV x {scale:g}",
            "target_mean_gev": model.config.target_mean_gev,
            "target_std_gev": model.config.target_std_gev}, {})
        return model

    def set_conv_path(self, path: str) -> ParticleCNNTransformer:
        """Choose the convolution layout of the backbone: ``"auto"`` (default: channels-last on a
        CPU, PyTorch's default layout elsewhere), ``"fast"`` (channels-last everywhere) or
        ``"plain"`` (default layout everywhere). Same parameters and results; returns ``self``."""
        if path not in CONV_PATHS:
            raise InputError(f"conv path {path!r}", key="conv_path", expected=" or ".join(CONV_PATHS))
        self.backbone.conv_path = path
        return self

    def parameter_breakdown(self) -> dict[str, int]:
        """See :func:`parameter_breakdown`."""
        return parameter_breakdown(self)

    def summary(self) -> str:
        """The parameter table next to the seed's numbers (see :func:`format_breakdown`)."""
        return format_breakdown(parameter_breakdown(self))


# ----------------------------------------------------------------------------------------------
# Parameter accounting

_PARTS = (
    ("backbone.", "CNN backbone"),
    ("cls_token", "Learned tokens (CLS, query)"),
    ("query_token", "Learned tokens (CLS, query)"),
    ("global_token", "Learned tokens (CLS, query)"),
    ("stage1.", "Stage 1 intra-block"),
    ("stage2.", "Stage 2 cross-scale"),
    ("stage3.", "Stage 3 inter-block"),
    ("head.", "Pool + head"),
)


def parameter_breakdown(model: ParticleCNNTransformer) -> dict[str, int]:
    """Trainable parameters per part of the model, in the order of the seed's table.

    Arguments:
        model: the network.

    Returns:
        ``{"CNN backbone", "Learned tokens (CLS, query)", "Stage 1 intra-block",
        "Stage 2 cross-scale", "Stage 3 inter-block", "Pool + head", "TOTAL"}`` -> count.
        Every parameter belongs to exactly one part (checked).
    """
    counts = dict.fromkeys(dict.fromkeys(part for _, part in _PARTS), 0)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = next((part for prefix, part in _PARTS if name.startswith(prefix)), None)
        if part is None:
            raise RuntimeError(f"parameter '{name}' belongs to no part of the breakdown")
        counts[part] += p.numel()
    counts["TOTAL"] = sum(counts.values())
    return counts


def format_breakdown(breakdown: Mapping[str, int],
                     reference: Mapping[str, int] | None = None) -> str:
    """Render a parameter breakdown as a text table next to the reference (the seed) numbers.

    Arguments:
        breakdown: from :func:`parameter_breakdown`.
        reference: the numbers to compare with; :data:`SEED_BREAKDOWN` when omitted.

    Returns:
        A multi-line string: part, this model, reference, difference ("exact" or a percentage).
    """
    reference = SEED_BREAKDOWN if reference is None else reference
    width = max(len(k) for k in breakdown) + 2
    lines = [f"{'Part':<{width}}{'this model':>12}{'seed':>12}{'difference':>12}"]
    lines.append("-" * len(lines[0]))
    for part, n in breakdown.items():
        ref = reference.get(part)
        if ref is None:
            ref_s, diff = "-", "-"
        else:
            ref_s = f"{ref:,}"
            diff = "exact" if n == ref else f"{100.0 * (n - ref) / ref:+.2f}%"
        if part == "TOTAL":
            lines.append("-" * len(lines[0]))
        lines.append(f"{part:<{width}}{n:>12,}{ref_s:>12}{diff:>12}")
    lines.append("(the seed's 'CNN backbone' line counts everything outside the stages and the "
                 "head, learned tokens included)")
    return "\n".join(lines)
