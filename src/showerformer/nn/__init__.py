"""Shared neural-network blocks: norms, DropPath, 3D RoPE, attention and mean-field blocks."""

from showerformer.nn.attention import (
    MLP,
    CrossAttention,
    CrossAttentionBlock,
    SelfAttention,
    TransformerBlock,
    key_padding_mask,
)
from showerformer.nn.mean_field import (
    MeanFieldAttention,
    MeanFieldBlock,
    WeightNormalizedLinear,
    mean_field_block_parameters,
    mean_field_init,
)
from showerformer.nn.norms import DropPath, LayerScale, RMSNorm, drop_path
from showerformer.nn.rope import RotaryEmbedding3D, apply_rotary, grid_positions

__all__ = [
    "MLP",
    "CrossAttention",
    "CrossAttentionBlock",
    "DropPath",
    "LayerScale",
    "MeanFieldAttention",
    "MeanFieldBlock",
    "RMSNorm",
    "RotaryEmbedding3D",
    "SelfAttention",
    "TransformerBlock",
    "WeightNormalizedLinear",
    "apply_rotary",
    "drop_path",
    "grid_positions",
    "key_padding_mask",
    "mean_field_block_parameters",
    "mean_field_init",
]
