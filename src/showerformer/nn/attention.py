"""Bias-free pre-norm transformer blocks: self-attention (optional 3D RoPE, mask) and cross-attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.nn.norms import DropPath, LayerScale, RMSNorm
from showerformer.nn.rope import apply_rotary

__all__ = [
    "MLP",
    "CrossAttention",
    "CrossAttentionBlock",
    "SelfAttention",
    "TransformerBlock",
    "key_padding_mask",
]

Rope = tuple[Tensor, Tensor]  # (cos, sin), each (N, head_dim / 2), from RotaryEmbedding3D


def key_padding_mask(valid: Tensor) -> Tensor:
    """Turn a per-token validity mask into an attention mask for scaled_dot_product_attention.

    Arguments:
        valid: True for real tokens, False for padding.  # (B, N) bool

    Returns:
        Boolean mask ``(B, 1, 1, N)``: True where a query may attend to a key.
    """
    return valid[:, None, None, :]  # (B, 1, 1, N)


def _split_heads(x: Tensor, n_heads: int) -> Tensor:  # (B, N, C) -> (B, H, N, C/H)
    b, n, c = x.shape
    return x.view(b, n, n_heads, c // n_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:  # (B, H, N, C/H) -> (B, N, C)
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention without biases (``4 d^2`` parameters).

    Arguments:
        d_model: channels ``d``.
        n_heads: heads; ``d`` must be divisible by it.

    References:
        Vaswani et al., "Attention Is All You Need", arXiv:1706.03762.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, rope: Rope | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """Attend every token to every (unmasked) token.

        Arguments:
            x: tokens.  # (B, N, C)
            rope: ``(cos, sin)`` for the N tokens; rotates queries and keys when given.
            attn_mask: boolean (True = may attend) or additive float mask, broadcastable to
                ``(B, H, N, N)``, as in ``torch.nn.functional.scaled_dot_product_attention``.

        Returns:
            ``(B, N, C)``.
        """
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, N, C)
        q, k, v = (_split_heads(t, self.n_heads) for t in (q, k, v))  # 3 x (B, H, N, C/H)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, C/H)
        return self.proj(_merge_heads(y))  # (B, N, C)


class CrossAttention(nn.Module):
    """Multi-head attention of queries onto a separate context, without biases (``4 d^2``).

    Arguments:
        d_model: channels ``d``.
        n_heads: heads; ``d`` must be divisible by it.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, context: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Arguments: queries ``x`` (B, Nq, C), ``context`` (B, Nk, C), optional mask
        broadcastable to (B, H, Nq, Nk). Returns ``(B, Nq, C)``."""
        q = _split_heads(self.q(x), self.n_heads)  # (B, H, Nq, C/H)
        k, v = (_split_heads(t, self.n_heads) for t in self.kv(context).chunk(2, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, Nq, C/H)
        return self.proj(_merge_heads(y))  # (B, Nq, C)

    def weights(self, x: Tensor, context: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """The attention probabilities of :meth:`forward` (for analysis; not used in training).

        Arguments: as :meth:`forward`. Returns ``softmax(q k^T / sqrt(C/H))`` (B, H, Nq, Nk);
        masked keys get probability 0.
        """
        q = _split_heads(self.q(x), self.n_heads)  # (B, H, Nq, C/H)
        k = _split_heads(self.kv(context).chunk(2, dim=-1)[0], self.n_heads)  # (B, H, Nk, C/H)
        logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, Nq, Nk)
        if attn_mask is not None:
            logits = (logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                      else logits + attn_mask)
        return logits.softmax(dim=-1)


class MLP(nn.Module):
    """Bias-free two-layer perceptron ``C -> ratio*C -> C`` with GELU (``2 * ratio * d^2``)."""

    def __init__(self, d_model: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, mlp_ratio * d_model, bias=False)
        self.act = nn.GELU()
        self.out = nn.Linear(mlp_ratio * d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (..., C) -> (..., C)
        return self.out(self.act(self.fc(x)))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention block: ``x + DropPath(LayerScale(Attn(RMSNorm(x))))``, then the
    same around the MLP.

    Parameters: ``4 d^2`` (attention) + ``2 r d^2`` (MLP) + ``2 d`` (RMSNorms) + ``2 d``
    (LayerScales); with ``r = 4`` that is ``12 d^2 + 4 d``.

    Arguments:
        d_model: channels ``d``.
        n_heads: attention heads.
        mlp_ratio: hidden width of the MLP over ``d``.
        drop_path: stochastic-depth probability of both residual branches.
        layerscale_init: initial LayerScale value.

    References:
        Xiong et al., "On Layer Normalization in the Transformer Architecture", arXiv:2002.04745;
        Touvron et al. (LayerScale), arXiv:2103.17239.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        mlp_ratio: int = 4,
        drop_path: float = 0.0,
        layerscale_init: float = 1e-4,
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.ls1 = LayerScale(d_model, layerscale_init)
        self.norm2 = RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio)
        self.ls2 = LayerScale(d_model, layerscale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, rope: Rope | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """Arguments: ``x`` (B, N, C), ``rope`` and ``attn_mask`` as in :class:`SelfAttention`.
        Returns ``(B, N, C)``."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope, attn_mask)))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention block with separate RMSNorms for queries and keys/values.

    ``x + DropPath(LayerScale(CrossAttn(RMSNorm_q(x), RMSNorm_kv(context))))``, then a pre-norm
    MLP. Parameters: ``12 d^2 + 5 d`` for ``mlp_ratio = 4`` (three RMSNorms, two LayerScales).

    Arguments:
        d_model, n_heads, mlp_ratio, drop_path, layerscale_init: as in :class:`TransformerBlock`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        mlp_ratio: int = 4,
        drop_path: float = 0.0,
        layerscale_init: float = 1e-4,
    ) -> None:
        super().__init__()
        self.norm_q = RMSNorm(d_model)
        self.norm_kv = RMSNorm(d_model)
        self.attn = CrossAttention(d_model, n_heads)
        self.ls1 = LayerScale(d_model, layerscale_init)
        self.norm2 = RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio)
        self.ls2 = LayerScale(d_model, layerscale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, context: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Arguments: queries ``x`` (B, Nq, C), ``context`` (B, Nk, C), optional mask
        broadcastable to (B, H, Nq, Nk). Returns ``(B, Nq, C)``."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm_q(x), self.norm_kv(context), attn_mask)))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x

    def attention_weights(self, x: Tensor, context: Tensor,
                          attn_mask: Tensor | None = None) -> Tensor:
        """Attention probabilities of the block's cross-attention ``(B, H, Nq, Nk)``."""
        return self.attn.weights(self.norm_q(x), self.norm_kv(context), attn_mask)
