"""Sampling discrete tokens from logits: temperature, top-k and top-p (nucleus) filtering, seeded.

:func:`sample_autoregressive` draws a sequence one token at a time from a ``step`` function
that returns the logits of the next token given the sequence so far::

    step(first, tokens) -> logits  # tokens (B, t) int64 -> logits (B, V)

The loop calls ``step`` exactly once for every ``t = 0, 1, ..., n_tokens - 1``, in this order,
with ``tokens`` the ``t`` tokens drawn so far (``(B, 0)`` at the first call). A step without a
cache runs the network over the whole prefix (``first`` and ``tokens``) every time; a step with
a key-value cache feeds ``first`` when ``t == 0`` (resetting its cache) and only the newest
token ``tokens[:, -1:]`` afterwards. Both return the same logits, and the loop draws the same
random numbers from ``generator`` for either, so a seed gives the same tokens on both paths::

    def uncached(first, tokens):  # first: condition embeddings (B, 1, C)
        x = torch.cat([first, embed(tokens)], dim=1)  # (B, 1 + t, C)
        return head(transformer(x)[:, -1])  # (B, V)

    cache = transformer.new_cache(batch, n_tokens)

    def cached(first, tokens):
        if tokens.shape[1] == 0:
            cache.reset()
            x = first  # (B, 1, C)
        else:
            x = embed(tokens[:, -1:])  # (B, 1, C)
        return head(transformer(x, cache)[:, -1])  # (B, V)

References:
    Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv:1904.09751 (top-p);
    Fan et al., "Hierarchical Neural Story Generation", arXiv:1805.04833 (top-k).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from showerformer.errors import InputError

__all__ = ["filter_logits", "sample_autoregressive", "sample_next"]

Step = Callable[[Any, Tensor], Tensor]
Callback = Callable[[dict[str, Any]], None]

# Probability mass by which the nucleus may fall short of top_p and still count as reaching it,
# so that rounding in the float32 softmax does not add a token at an exact boundary.
_NUCLEUS_TOL = 1e-6


def _check_filters(top_k: int | None, top_p: float | None) -> None:
    if top_k is not None and not (isinstance(top_k, numbers.Integral) and top_k >= 1):
        raise InputError(f"top_k={top_k}", key="top_k", expected="an integer >= 1, or None")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p={top_p}", key="top_p", expected="0 < top_p <= 1, or None")


def _check_temperature(temperature: float) -> None:
    if not (temperature >= 0.0 and math.isfinite(temperature)):
        raise InputError(f"temperature={temperature}", key="temperature",
                         expected="a finite temperature >= 0 (0: greedy)")


def filter_logits(
    logits: Tensor,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Set the logits of unlikely tokens to ``-inf``: top-k, then top-p (nucleus) filtering.

    Arguments:
        logits: unnormalized log-probabilities over the last dimension.  # (B, V)
        top_k: keep the ``k`` largest logits of each row (exactly ``k``; ties are broken by
            ``torch.topk``); ``k >= V`` keeps every token. None: no top-k filtering.
        top_p: keep the smallest set of most probable tokens whose probability reaches ``p``
            (computed in float32, after top-k); the most probable token is always kept and
            ``p = 1`` keeps every token. None: no top-p filtering.

    Returns:
        A new tensor of the same shape and dtype, with the filtered entries ``-inf``.  # (B, V)

    Raises:
        InputError: if ``top_k < 1``, ``top_p`` is not in ``(0, 1]`` or ``logits`` is a scalar.
    """
    _check_filters(top_k, top_p)
    if logits.ndim < 1:
        raise InputError("scalar logits", key="logits", expected="(B, V) logits")
    out = logits.clone()
    v = logits.shape[-1]
    if top_k is not None and top_k < v:
        keep = torch.zeros_like(out, dtype=torch.bool)
        keep.scatter_(-1, out.topk(top_k, dim=-1).indices, True)
        out = out.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.float().softmax(dim=-1)  # (B, V)
        before = probs.cumsum(dim=-1) - probs  # mass of the more probable tokens  # (B, V)
        drop_sorted = before >= top_p - _NUCLEUS_TOL  # (B, V)
        drop_sorted[..., 0] = False
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # (B, V)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from logits.

    The logits are divided by the temperature, filtered by :func:`filter_logits` (so top-p
    acts on the tempered distribution); one token is drawn per row by the Gumbel-max trick,
    ``argmax(logits - log E)`` with ``E ~ Exp(1)`` (``-log E`` is Gumbel-distributed), which
    samples the softmax distribution exactly without normalizing it and costs a fraction of
    ``torch.multinomial`` per call (it matters at one token per network call; Gumbel-max:
    Maddison et al., arXiv:1411.0052).

    Arguments:
        logits: unnormalized log-probabilities.  # (B, V)
        temperature: ``0`` picks the most probable token (greedy, no random numbers drawn);
            above 1 flattens the distribution, below 1 sharpens it.
        top_k, top_p: as in :func:`filter_logits`.
        generator: source of the random numbers (on the device of ``logits``).

    Returns:
        Token indices, int64.  # (B,)

    Raises:
        InputError: if ``logits`` is not 2-D, or on a bad temperature, ``top_k`` or ``top_p``.
    """
    _check_temperature(temperature)
    _check_filters(top_k, top_p)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise InputError(f"logits of shape {tuple(logits.shape)}", key="logits",
                         expected="(B, V) logits with V >= 1")
    if temperature == 0.0:
        return logits.argmax(dim=-1)  # (B,)
    scaled = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)  # (B, V)
    race = torch.empty_like(scaled).exponential_(generator=generator)  # (B, V) Exp(1)
    return (scaled - race.log()).argmax(dim=-1)  # (B,)


@torch.no_grad()
def sample_autoregressive(
    step: Step,
    first: Tensor,
    n_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Draw ``n_tokens`` tokens one after another, each from the logits of the sequence so far.

    See the module docstring for the contract of ``step`` and a cached and an uncached example.

    Arguments:
        step: ``step(first, tokens) -> logits``: the logits ``(B, V)`` of token ``t`` given
            ``first`` and the tokens ``(B, t)`` drawn so far (int64, a view the loop keeps
            writing to beyond column ``t``); called once for each ``t = 0 ... n_tokens - 1``
            in order.
        first: what starts every sequence, passed unchanged to ``step``; its first dimension
            is the batch ``B`` (e.g. condition embeddings ``(B, 1, C)``).
        n_tokens: tokens to draw.
        temperature, top_k, top_p, generator: as in :func:`sample_next`, for every token.
        callback: called after every token with ``{"i": t, "tokens": (B, t + 1), "logits":
            (B, V)}``.

    Returns:
        The tokens, int64.  # (B, n_tokens)

    Raises:
        InputError: on a bad ``n_tokens``, temperature, ``top_k`` or ``top_p`` (before ``step``
            is called), or if ``step`` returns logits that are not ``(B, V)``.
    """
    _check_temperature(temperature)
    _check_filters(top_k, top_p)
    if not (isinstance(n_tokens, numbers.Integral) and n_tokens >= 0):
        raise InputError(f"n_tokens={n_tokens}", key="n_tokens", expected="an integer >= 0")
    if first.ndim < 1:
        raise InputError("a scalar", key="first", expected="a tensor whose first dimension is B")
    b = first.shape[0]
    tokens = torch.zeros(b, n_tokens, dtype=torch.int64, device=first.device)  # (B, n_tokens)
    for t in range(n_tokens):
        logits = step(first, tokens[:, :t])  # (B, V)
        if logits.ndim != 2 or logits.shape[0] != b:
            raise InputError(f"step returned logits of shape {tuple(logits.shape)}",
                             key="logits", expected=f"({b}, V)")
        tokens[:, t] = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                   generator=generator)
        if callback is not None:
            callback({"i": t, "tokens": tokens[:, :t + 1], "logits": logits})
    return tokens
