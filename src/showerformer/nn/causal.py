"""Decoder-only (causal) transformer blocks with a key-value cache for autoregressive sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.errors import InputError

__all__ = ["CausalBlock", "CausalSelfAttention", "CausalTransformer", "KVCache"]


class KVCache:
    """Keys and values of the positions seen so far, one pair of tensors per layer.

    The tensors are allocated once for ``max_len`` positions; ``length`` of them are filled.
    The attention layers write the keys and values of new tokens at positions ``length ...``
    and :class:`CausalTransformer` advances ``length`` once all its layers have run. Meant for
    inference (under ``torch.no_grad()``): the tensors are written in place.

    Arguments:
        n_layers: attention layers sharing the cache.
        batch: sequences ``B``.
        n_heads: heads ``H``.
        head_dim: channels per head ``Dh``.
        max_len: positions allocated ``T``.
        device: device of the tensors.
        dtype: dtype of the tensors (that of the model's activations).

    Attributes:
        keys: per layer.  # n_layers x (B, H, T, Dh)
        values: per layer.  # n_layers x (B, H, T, Dh)
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (batch, n_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_len = max_len
        self._length = 0

    @property
    def length(self) -> int:
        """Positions filled so far: the position of the next token."""
        return self._length

    @property
    def batch(self) -> int:
        """Sequences ``B``."""
        return self.keys[0].shape[0] if self.keys else 0

    @property
    def n_layers(self) -> int:
        """Attention layers sharing the cache."""
        return len(self.keys)

    def reset(self) -> None:
        """Forget every position (the tensors are kept and overwritten by the next tokens)."""
        self._length = 0

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled; called after every layer has written them.

        Raises:
            InputError: if the cache would hold more than ``max_len`` positions.
        """
        if self._length + n > self.max_len:
            raise InputError(f"{self._length + n} positions exceed the cache", key="max_len",
                             expected=f"at most {self.max_len} positions")
        self._length += n


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which a token sees only itself and the tokens before it.

    Arguments:
        d_model: channels ``d``.
        n_heads: heads; ``d`` must be divisible by it.
        dropout: dropout of the attention probabilities (in training only).

    References:
        Vaswani et al., "Attention Is All You Need", arXiv:1706.03762.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """Attend every token to itself and the tokens before it.

        Arguments:
            x: tokens; without ``cache`` the whole sequence from position 0, with one the new
                tokens at positions ``cache.length ... cache.length + T - 1``.  # (B, T, C)
            cache: keys and values of the earlier positions; the new ones are written into it
                (its length is advanced by the caller, :class:`CausalTransformer`).
            layer: index of this layer's tensors in ``cache``.

        Returns:
            ``(B, T, C)``.
        """
        b, t, c = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh)
        p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            start, end = cache.length, cache.length + t
            if end > cache.max_len:
                raise InputError(f"{end} positions exceed the cache", key="max_len",
                                 expected=f"at most {cache.max_len} positions")
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            k = cache.keys[layer][:, :, :end]  # (B, H, end, Dh)
            v = cache.values[layer][:, :, :end]  # (B, H, end, Dh)
            mask = None
            if t > 1:  # new token i (position start + i) sees positions 0 ... start + i
                mask = torch.ones(t, end, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.proj(y)


class CausalBlock(nn.Module):
    """Pre-LayerNorm decoder block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``.

    Arguments:
        d_model: channels ``d``.
        n_heads: attention heads.
        ffn_dim: hidden width of the MLP (``Linear -> GELU -> Linear``; GPT-2's tanh
            approximation of GELU, about 3x cheaper than the erf form on a CPU, which matters
            when the cache feeds one token per call).
        dropout: dropout of the attention probabilities and of both residual branches.

    References:
        Xiong et al., "On Layer Normalization in the Transformer Architecture", arXiv:2002.04745.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(approximate="tanh"),
            nn.Linear(ffn_dim, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """Arguments: ``x`` (B, T, C), ``cache`` and ``layer`` as in
        :class:`CausalSelfAttention`. Returns ``(B, T, C)``."""
        # The MLP's layers and the dropout are applied without their module calls: with a cache
        # a step feeds one token, and the per-call overhead counts on a CPU (same function,
        # same parameters and names).
        fc, _, out = self.mlp
        drop = self.drop.p if self.training else 0.0
        h = self.attn(self.norm1(x), cache, layer)
        x = x + (F.dropout(h, drop, True) if drop else h)
        h = out(F.gelu(fc(self.norm2(x)), approximate="tanh"))
        return x + (F.dropout(h, drop, True) if drop else h)


class CausalTransformer(nn.Module):
    """Decoder-only transformer over input embeddings, with learned absolute positions.

    ``forward`` maps embeddings ``(B, T, C)`` to features ``(B, T, C)`` in which position ``i``
    depends only on positions ``0 ... i``. Given a :class:`KVCache` (from :meth:`new_cache`) it
    takes only the new tokens and continues the sequence where the cache ends, which gives the
    same features as running the whole sequence again.

    Arguments:
        d_model: channels ``d``.
        n_heads: attention heads.
        n_blocks: decoder blocks.
        ffn_dim: hidden width of the MLPs.
        max_len: longest sequence (number of learned positions).
        dropout: dropout of the embeddings, the attention probabilities and the residual
            branches (in training only).

    References:
        Radford et al., "Improving Language Understanding by Generative Pre-Training" (2018);
        Raikwar et al., "Transformers for generalized fast shower simulation",
        arXiv:2312.09290 (Sec. 5.2).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_blocks: int,
        ffn_dim: int,
        max_len: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.max_len = max_len
        self.pos = nn.Parameter(torch.empty(max_len, d_model))  # (T_max, C)
        nn.init.normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            CausalBlock(d_model, n_heads, ffn_dim, dropout) for _ in range(n_blocks)
        )
        self.norm = nn.LayerNorm(d_model)

    def new_cache(
        self,
        batch: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty key-value cache for ``batch`` sequences of up to ``max_len`` positions.

        Arguments:
            batch: sequences ``B``.
            max_len: positions to allocate; the model's ``max_len`` when None.
            device, dtype: those of the model's parameters when None.

        Returns:
            A :class:`KVCache` of length 0.

        Raises:
            InputError: if ``batch < 1`` or ``max_len`` is not in ``1 ... self.max_len``.
        """
        max_len = self.max_len if max_len is None else max_len
        if not 1 <= max_len <= self.max_len:
            raise InputError(f"max_len={max_len}", key="max_len",
                             expected=f"1 to {self.max_len} positions")
        if batch < 1:
            raise InputError(f"batch={batch}", key="batch", expected="at least one sequence")
        device = self.pos.device if device is None else device
        dtype = self.pos.dtype if dtype is None else dtype
        return KVCache(len(self.blocks), batch, self.n_heads, self.d_model // self.n_heads,
                       max_len, device=device, dtype=dtype)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """Run the decoder blocks over input embeddings.

        Arguments:
            x: embeddings ``(B, T, C)``; without ``cache`` the whole sequence (positions
                ``0 ... T - 1``), with one the new tokens (``cache.length ... + T - 1``).
            cache: from :meth:`new_cache`; receives the new keys and values and is advanced by
                ``T`` positions.

        Returns:
            Features after the final LayerNorm.  # (B, T, C)

        Raises:
            InputError: if ``x`` is not ``(B, T >= 1, d_model)``, does not match the cache, or
                the sequence would exceed ``max_len`` positions.
        """
        if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] != self.d_model:
            raise InputError(f"embeddings of shape {tuple(x.shape)}", key="x",
                             expected=f"(B, T >= 1, {self.d_model})")
        b, t, _ = x.shape
        start = 0
        if cache is not None:
            if cache.n_layers != len(self.blocks) or cache.batch != b:
                raise InputError(
                    f"cache of {cache.n_layers} layers x {cache.batch} sequences", key="cache",
                    expected=f"{len(self.blocks)} layers x {b} sequences, from new_cache()")
            start = cache.length
        limit = self.max_len if cache is None else min(self.max_len, cache.max_len)
        if start + t > limit:
            raise InputError(f"a sequence of {start + t} positions", key="max_len",
                             expected=f"at most {limit} positions")
        h = x + self.pos[start:start + t]  # (B, T, C)
        if self.training and self.drop.p:
            h = self.drop(h)
        for i, block in enumerate(self.blocks):
            h = block(h, cache, i)  # (B, T, C)
        if cache is not None:
            cache.advance(t)
        return self.norm(h)  # (B, T, C)
