"""Mean-field attention blocks (MDMA): one query per shower attends to its points, linear in N."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.errors import InputError

__all__ = [
    "MeanFieldAttention",
    "MeanFieldBlock",
    "WeightNormalizedLinear",
    "mean_field_block_parameters",
    "mean_field_init",
]


class WeightNormalizedLinear(nn.Module):
    """Linear layer whose weight rows are scaled to unit L2 norm in every forward pass.

    ``y = x W_hat^T + b`` with ``W_hat[j] = W[j] / ||W[j]||``: weight normalization with the
    gain fixed at 1, so every output is the projection of the input on a unit vector (plus a
    bias) and the layer is 1-Lipschitz per output, whatever the scale of ``W``. The norm is
    taken in the forward pass (no ``torch.nn.utils.weight_norm`` hooks or parametrizations), so
    the module deep-copies, pickles and saves with safetensors like ``nn.Linear``; the
    ``state_dict`` has the same names (``weight`` ``(out, in)``, ``bias`` ``(out,)``) and the
    initialization is that of ``nn.Linear``. A row of zeros stays zero (``F.normalize``).

    Arguments:
        in_features: input channels.
        out_features: output channels.
        bias: learn an additive bias.

    References:
        Salimans and Kingma, "Weight Normalization: A Simple Reparameterization to Accelerate
        Training of Deep Neural Networks", arXiv:1602.07868; its use for a stable WGAN critic
        in the mean-field attention GAN: Käch and Melzer-Pellmann, arXiv:2305.15254.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise InputError(f"in_features={in_features}, out_features={out_features}",
                             key="features", expected="positive sizes")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))  # (out, in)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))  # (out,)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialization of ``nn.Linear`` (Kaiming-uniform weight, uniform bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def normalized_weight(self) -> Tensor:
        """The weight with unit-norm rows, as used in the forward pass.  # (out, in)"""
        return F.normalize(self.weight, dim=1)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _linear(in_features: int, out_features: int, weight_norm: bool) -> nn.Module:
    return (WeightNormalizedLinear(in_features, out_features) if weight_norm
            else nn.Linear(in_features, out_features))


def _check_points(x: Tensor, mask: Tensor | None, dim: int, name: str = "x") -> None:
    """Raise :class:`InputError` unless ``x`` is ``(B, N, dim)`` and ``mask`` ``(B, N)`` bool."""
    if x.dim() != 3 or x.shape[-1] != dim:
        raise InputError(f"shape {tuple(x.shape)}", key=name,
                         expected=f"points of shape (B, N, {dim})")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2])):
        raise InputError(f"{mask.dtype} of shape {tuple(mask.shape)}", key="mask",
                         expected=f"a bool mask of shape {tuple(x.shape[:2])} (True = real point)")


def _check_field(m: Tensor, batch: int, dim: int, name: str = "m") -> None:
    if tuple(m.shape) != (batch, dim):
        raise InputError(f"shape {tuple(m.shape)}", key=name,
                         expected=f"one vector per shower, shape ({batch}, {dim})")


class MeanFieldAttention(nn.Module):
    """Multi-head cross-attention of one query per shower (the mean field) over its points.

    ``y = W_o concat_h softmax(q_h k_h^T / sqrt(d / H)) v_h`` with ``q = W_q m`` from the mean
    field ``m`` (B, d) and ``k, v = W_k x, W_v x`` from the points ``x`` (B, N, d); padded points
    get weight 0. Cost and memory are linear in N (one query: ``B * H * N`` scores). The scores
    are computed explicitly: with a single query this costs what a fused kernel costs, and it can
    be differentiated twice (the gradient penalty of a WGAN critic needs that; the fused CPU
    kernel of ``scaled_dot_product_attention`` cannot). A shower whose points are all padding
    gives zeros (and zero attention weights). Padded points are replaced by zeros before the
    projections, so their values, even non-finite ones, never reach the output.

    Parameters: ``4 (d^2 + d)`` (q, fused k/v and output projections with biases).

    Arguments:
        dim: channels ``d`` of the mean field and of the points.
        n_heads: heads ``H``; ``d`` must be divisible by it.
        weight_norm: :class:`WeightNormalizedLinear` projections (a critic) instead of
            ``nn.Linear``.

    References:
        Käch and Melzer-Pellmann, "Attention to Mean-Fields for Particle Cloud Generation"
        (MDMA), arXiv:2305.15254; Vaswani et al., "Attention Is All You Need",
        arXiv:1706.03762.
    """

    def __init__(self, dim: int, n_heads: int, *, weight_norm: bool = False) -> None:
        super().__init__()
        if dim < 1 or n_heads < 1 or dim % n_heads != 0:
            raise InputError(f"dim={dim}, n_heads={n_heads}", key="n_heads",
                             expected="a positive number of heads that divides dim")
        self.dim = dim
        self.n_heads = n_heads
        self.q = _linear(dim, dim, weight_norm)
        self.kv = _linear(dim, 2 * dim, weight_norm)  # rows normalized one by one: = k and v
        self.out = _linear(dim, dim, weight_norm)

    def forward(
        self, m: Tensor, x: Tensor, mask: Tensor | None = None, *, need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend the mean field to the points.

        Arguments:
            m: mean field, the query.  # (B, d)
            x: points, the keys and values.  # (B, N, d)
            mask: True for real points, False for padding; None: every point is real.  # (B, N)
            need_weights: also return the attention probabilities.

        Returns:
            ``(B, d)``; with ``need_weights`` also the weights ``(B, H, N)`` (summing to 1 over
            the real points of a shower, 0 on padding and for an empty shower).
        """
        b = x.shape[0]
        _check_points(x, mask, self.dim)
        _check_field(m, b, self.dim)
        heads, d_head = self.n_heads, self.dim // self.n_heads
        attn_mask = None
        empty = None
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # (B, N, d)
            empty = ~mask.any(dim=1)  # (B,) showers without a real point
            attn_mask = (mask | empty[:, None])[:, None, None, :]  # (B, 1, 1, N)
        # With one query the key and value projections fold into the query side, so no
        # per-point keys or values are formed: q_h . (W_k x_n + b_k) = (W_k,h^T q_h) . x_n +
        # q_h . b_k,h, and sum_n a_hn (W_v x_n + b_v) = W_v,h (sum_n a_hn x_n) + b_v,h sum_n a_hn.
        # Two (B, N, d) x (B, d, H) products instead of a (B, N, 2d) projection: the same
        # numbers, a fraction of the memory traffic.
        weight = (self.kv.normalized_weight() if isinstance(self.kv, WeightNormalizedLinear)
                  else self.kv.weight)  # (2d, d): rows of k then v, head-major
        w_k, w_v = weight.view(2, heads, d_head, self.dim).unbind(0)  # 2 x (H, d/H, d)
        q = self.q(m).view(b, heads, d_head)  # (B, H, d/H)
        q_x = torch.einsum("bhj,hjc->bhc", q, w_k.to(q.dtype))  # (B, H, d)
        logits = torch.bmm(x, q_x.transpose(1, 2).to(x.dtype)).transpose(1, 2)  # (B, H, N)
        if self.kv.bias is not None:
            b_k, b_v = self.kv.bias.view(2, heads, d_head).unbind(0)  # 2 x (H, d/H)
            logits = logits + (q * b_k).sum(-1)[..., None].to(logits.dtype)  # softmax-invariant
        logits = logits * d_head**-0.5
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask[:, :, 0, :], float("-inf"))
        weights = logits.softmax(dim=-1)  # (B, H, N)
        x_mean = torch.bmm(weights.to(x.dtype), x)  # (B, H, d): attention-weighted points
        y = torch.einsum("bhc,hjc->bhj", x_mean, w_v.to(x_mean.dtype))  # (B, H, d/H)
        if self.kv.bias is not None:
            y = y + b_v.to(y.dtype) * weights.sum(-1, keepdim=True).to(y.dtype)
        y = self.out(y.reshape(b, self.dim))  # (B, d)
        if empty is not None:
            y = y.masked_fill(empty[:, None], 0.0)
            weights = weights.masked_fill(empty[:, None, None], 0.0)
        return (y, weights) if need_weights else y


def mean_field_init(phi_x: Tensor, mask: Tensor | None, c_n: float) -> Tensor:
    """The initial mean field of MDMA: the sum of the embedded real points over ``c_N``.

    ``m = sum_{i real} phi(x_i) / c_N`` with ``c_N`` the mean multiplicity of the training
    showers, so that ``m`` grows with the number of points (the multiplicity stays visible,
    unlike in a mean) while staying of order one for a typical shower.

    Arguments:
        phi_x: embedded points.  # (B, N, l)
        mask: True for real points; None: every point is real.  # (B, N)
        c_n: the normalizing multiplicity ``c_N`` (a positive float).

    Returns:
        ``(B, l)``; zeros for a shower without real points.

    References:
        Käch and Melzer-Pellmann (MDMA), arXiv:2305.15254.
    """
    _check_points(phi_x, mask, phi_x.shape[-1] if phi_x.dim() else 0, "phi_x")
    try:
        good = math.isfinite(float(c_n)) and float(c_n) > 0
    except (TypeError, ValueError):
        good = False
    if not good:
        raise InputError(f"c_n={c_n!r}", key="c_n",
                         expected="a positive finite mean multiplicity")
    if mask is not None:
        phi_x = phi_x.masked_fill(~mask[..., None], 0.0)  # (B, N, l)
    return phi_x.sum(dim=1) / c_n  # (B, l)


def mean_field_block_parameters(embed_dim: int, hidden: int, cond_dim: int) -> int:
    """Parameters of one :class:`MeanFieldBlock`: ``5 h^2 + 5 h l + h c + 9 h + 2 l``.

    With ``l = embed_dim``, ``h = hidden``, ``c = cond_dim``: phi ``l h + h``, mean-field
    projection ``l h + h``, LayerNorm ``2 h``, attention ``4 (h^2 + h)``, update
    ``(h + c) h + h``, psi ``2 h l + l``, mean-field output projection ``h l + l``. Weight
    normalization does not change the count.

    Arguments:
        embed_dim, hidden, cond_dim: as in :class:`MeanFieldBlock`.

    Returns:
        The number of scalar parameters.
    """
    l, h, c = embed_dim, hidden, cond_dim  # noqa: E741
    return 5 * h * h + 5 * h * l + h * c + 9 * h + 2 * l


class MeanFieldBlock(nn.Module):
    """The main block of MDMA's generator and critic: points and one mean field per shower.

    With points ``x_i`` (l channels), mean field ``m`` (l), conditions ``c`` and the activation
    ``a`` (LeakyReLU(0.2) by default):

    1. per point ``p_i = a(phi(x_i))``, ``phi: l -> h`` (``x_i`` layer-normalized first with
       ``point_norm``);
    2. ``q = LayerNorm(W_m m)``, ``W_m: l -> h``;
    3. ``s = MeanFieldAttention(q, p, mask)`` (the mean field attends to the real points);
    4. ``u = a(W_u [s, c])``, ``W_u: h + c -> h`` (the update by energy and multiplicity);
    5. per point ``psi([p_i, u])``, ``psi: 2h -> l`` (each point conditioned on the mean field);

    ``x'_i = x_i + psi([p_i, u])`` (zero on padded points) and ``m' = m + W_o u``,
    ``W_o: h -> l``. As in the authors' code psi is one linear layer: within a block the mean
    field enters each point linearly, and the interaction becomes non-linear through the
    activation of the next block's phi. Padded points are zeroed on entry, so their values never
    matter. The block is permutation equivariant in the points (``m'`` invariant) and costs
    ``O(N)``.

    Parameters: :func:`mean_field_block_parameters`, ``5 h^2 + 5 h l + h c + 9 h + 2 l``.

    Arguments:
        embed_dim: channels ``l`` of the points and of the mean field.
        hidden: hidden channels ``h`` (attention width).
        n_heads: attention heads; ``h`` must be divisible by it.
        cond_dim: channels ``c`` of the conditions (e.g. normalized incident energy and
            multiplicity).
        weight_norm: every linear layer a :class:`WeightNormalizedLinear` (the critic) instead
            of ``nn.Linear`` (the generator).
        activation: the non-linearity; None: ``nn.LeakyReLU(0.2)``.
        field_residual: ``m' = m + W_o u`` (True, the seed's residual); False:
            ``m' = a(W_o u)``, the mean field replaced in every block as in the authors' code.
        point_norm: layer-normalize the points before ``phi`` (a pre-norm residual block, as
            in the score transformer of seed 003, whose inputs change scale with the noise);
            False: no norm (MDMA).

    References:
        Käch and Melzer-Pellmann, "Attention to Mean-Fields for Particle Cloud Generation"
        (MDMA), arXiv:2305.15254; Käch, Melzer-Pellmann and Krücker, "Pay Attention to
        Mean-Fields for Point Cloud Generation" (CaloChallenge dataset 2), arXiv:2408.04997;
        Ba et al. (LayerNorm), arXiv:1607.06450.
    """

    def __init__(
        self,
        embed_dim: int,
        hidden: int,
        n_heads: int,
        cond_dim: int,
        *,
        weight_norm: bool = False,
        activation: nn.Module | None = None,
        field_residual: bool = True,
        point_norm: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or hidden < 1 or cond_dim < 0:
            raise InputError(f"embed_dim={embed_dim}, hidden={hidden}, cond_dim={cond_dim}",
                             key="sizes", expected="positive embed_dim and hidden, cond_dim >= 0")
        self.embed_dim, self.hidden, self.cond_dim = embed_dim, hidden, cond_dim
        self.act = nn.LeakyReLU(0.2) if activation is None else activation
        self.phi = _linear(embed_dim, hidden, weight_norm)
        self.field_in = _linear(embed_dim, hidden, weight_norm)
        self.norm = nn.LayerNorm(hidden)
        self.attn = MeanFieldAttention(hidden, n_heads, weight_norm=weight_norm)
        self.update = _linear(hidden + cond_dim, hidden, weight_norm)
        self.psi = _linear(2 * hidden, embed_dim, weight_norm)
        self.field_out = _linear(hidden, embed_dim, weight_norm)
        self.field_residual = bool(field_residual)
        self.point_norm = nn.LayerNorm(embed_dim) if point_norm else None

    def forward(
        self, x: Tensor, m: Tensor, c: Tensor, mask: Tensor | None = None, *,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Update the points and the mean field.

        Arguments:
            x: embedded points.  # (B, N, l)
            m: embedded mean field.  # (B, l)
            c: conditions.  # (B, c)
            mask: True for real points; None: every point is real.  # (B, N)
            need_weights: also return the attention weights ``(B, H, N)``.

        Returns:
            ``(x', m')``: ``(B, N, l)`` with zeros on padded points, and ``(B, l)``; with
            ``need_weights`` the attention weights third.
        """
        b = x.shape[0]
        _check_points(x, mask, self.embed_dim)
        _check_field(m, b, self.embed_dim)
        _check_field(c, b, self.cond_dim, "c")
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # (B, N, l)
        p = self.act(self.phi(x if self.point_norm is None else self.point_norm(x)))  # (B, N, h)
        q = self.norm(self.field_in(m))  # (B, h)
        out = self.attn(q, p, mask, need_weights=need_weights)
        s, weights = out if need_weights else (out, None)  # (B, h), (B, H, N)
        u = self.act(self.update(torch.cat([s, c.to(s.dtype)], dim=-1)))  # (B, h)
        # psi([p_i, u]) = W_p p_i + (W_u u + b): the mean-field half once per shower, not
        # concatenated to every point
        w = (self.psi.normalized_weight() if isinstance(self.psi, WeightNormalizedLinear)
             else self.psi.weight)  # (l, 2h)
        shift = F.linear(u, w[:, self.hidden:], self.psi.bias)  # (B, l)
        x = x + F.linear(p, w[:, : self.hidden]) + shift[:, None, :]  # (B, N, l)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        m = m + self.field_out(u) if self.field_residual else self.act(self.field_out(u))  # (B, l)
        return (x, m, weights) if need_weights else (x, m)
