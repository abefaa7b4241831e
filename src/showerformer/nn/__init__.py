"""Shared neural-network blocks: RMSNorm, LayerScale, DropPath, 3D RoPE and attention blocks."""

from showerformer.nn.attention import (
    MLP,
    CrossAttention,
    CrossAttentionBlock,
    SelfAttention,
    TransformerBlock,
    key_padding_mask,
)
from showerformer.nn.norms import DropPath, LayerScale, RMSNorm, drop_path
from showerformer.nn.rope import RotaryEmbedding3D, apply_rotary, grid_positions

__all__ = [
    "MLP",
    "CrossAttention",
    "CrossAttentionBlock",
    "DropPath",
    "LayerScale",
    "RMSNorm",
    "RotaryEmbedding3D",
    "SelfAttention",
    "TransformerBlock",
    "apply_rotary",
    "drop_path",
    "grid_positions",
    "key_padding_mask",
]
