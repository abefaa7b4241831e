"""Tests of the causal transformer, its key-value cache and the token samplers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from showerformer.errors import InputError
from showerformer.nn.causal import CausalTransformer, KVCache
from showerformer.samplers.tokens import filter_logits, sample_autoregressive, sample_next

B, T, C, H, V = 3, 9, 16, 4, 11


def make_model(max_len: int = 12, dtype: torch.dtype = torch.float64) -> CausalTransformer:
    torch.manual_seed(0)
    return CausalTransformer(C, H, n_blocks=2, ffn_dim=32, max_len=max_len).to(dtype).eval()


def inputs(t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, t, C, generator=g, dtype=torch.float64)


def test_outputs_depend_only_on_earlier_positions() -> None:
    model = make_model()
    x = inputs()
    y = model(x)  # (B, T, C)
    for i in range(T - 1):
        x2 = x.clone()
        x2[:, i + 1:] = torch.randn(B, T - i - 1, C, dtype=torch.float64)
        y2 = model(x2)
        assert torch.equal(y2[:, :i + 1], y[:, :i + 1])
        assert not torch.allclose(y2[:, i + 1:], y[:, i + 1:])


@pytest.mark.parametrize("chunks", [[1] * T, [3] + [1] * (T - 3), [4, 2, 3]])
def test_cached_forward_equals_full_forward(chunks: list[int]) -> None:
    model = make_model()
    x = inputs()
    full = model(x)  # (B, T, C)
    cache = model.new_cache(B)
    assert isinstance(cache, KVCache) and cache.length == 0
    parts, start = [], 0
    for n in chunks:
        parts.append(model(x[:, start:start + n], cache))
        start += n
        assert cache.length == start
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-10
    cache.reset()
    assert cache.length == 0
    assert (model(x, cache) - full).abs().max().item() < 1e-10


def test_exceeding_max_len_raises() -> None:
    model = make_model(max_len=5)
    with pytest.raises(InputError, match="max_len") as info:
        model(inputs(6))
    assert "\n" not in str(info.value)
    cache = model.new_cache(B)
    model(inputs(4), cache)
    model(inputs(1), cache)
    with pytest.raises(InputError, match="max_len"):
        model(inputs(1), cache)
    assert cache.length == 5
    short = model.new_cache(B, max_len=2)
    with pytest.raises(InputError, match="max_len"):
        model(inputs(3), short)
    with pytest.raises(InputError, match="max_len"):
        model.new_cache(B, max_len=6)


def test_bad_inputs_to_the_transformer_raise() -> None:
    model = make_model()
    with pytest.raises(InputError, match="'x'"):
        model(torch.zeros(B, 2, C + 1, dtype=torch.float64))
    with pytest.raises(InputError, match="'cache'"):
        model(inputs(2), model.new_cache(B + 1))


class TinyPrior(nn.Module):
    """Condition token from (E, theta), then tokens through embedding, transformer and head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.cond = nn.Linear(2, C)
        self.embed = nn.Embedding(V, C)
        self.transformer = CausalTransformer(C, H, n_blocks=2, ffn_dim=32, max_len=8)
        self.head = nn.Linear(C, V)
        # spread enough that top-k and top-p leave several tokens, sharp enough that they cut
        nn.init.normal_(self.head.weight, std=0.5)

    def uncached(self, first: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([first, self.embed(tokens)], dim=1)  # (B, 1 + t, C)
        return self.head(self.transformer(x)[:, -1])  # (B, V)

    def cached_step(self, batch: int):
        cache = self.transformer.new_cache(batch)

        def step(first: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            if tokens.shape[1] == 0:
                cache.reset()
                x = first  # (B, 1, C)
            else:
                x = self.embed(tokens[:, -1:])  # (B, 1, C)
            return self.head(self.transformer(x, cache)[:, -1])  # (B, V)

        return step


def prior_and_first(batch: int = 5) -> tuple[TinyPrior, torch.Tensor]:
    prior = TinyPrior().double().eval()
    cond = torch.tensor([[math.log(10.0 + i), 0.1 * i] for i in range(batch)], dtype=torch.float64)
    return prior, prior.cond(cond)[:, None]  # (B, 1, C)


@pytest.mark.parametrize("filters", [{}, {"top_k": 4}, {"top_p": 0.7}, {"top_k": 5, "top_p": 0.9}])
def test_cached_and_uncached_sampling_draw_the_same_tokens(filters: dict) -> None:
    prior, first = prior_and_first()
    n = 7
    runs = []
    for step in (prior.uncached, prior.cached_step(first.shape[0]), prior.uncached):
        g = torch.Generator().manual_seed(123)
        runs.append(sample_autoregressive(step, first, n, generator=g, **filters))
    assert runs[0].shape == (first.shape[0], n) and runs[0].dtype == torch.int64
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other = sample_autoregressive(prior.uncached, first, n, **filters,
                                  generator=torch.Generator().manual_seed(124))
    assert not torch.equal(other, runs[0])


def test_the_filters_leave_a_choice_in_the_toy_prior() -> None:
    prior, first = prior_and_first()
    logits = prior.uncached(first, torch.empty(first.shape[0], 0, dtype=torch.int64))  # (B, V)
    for kept in (torch.isfinite(filter_logits(logits, top_p=0.7)).sum(dim=-1),
                 torch.isfinite(filter_logits(logits, top_k=5, top_p=0.9)).sum(dim=-1)):
        assert ((kept >= 2) & (kept < V)).all()


def test_a_cached_step_can_be_reused_for_a_second_sequence() -> None:
    prior, first = prior_and_first()
    step = prior.cached_step(first.shape[0])
    a = sample_autoregressive(step, first, 7, generator=torch.Generator().manual_seed(5))
    b = sample_autoregressive(step, first, 7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_temperature_zero_is_greedy() -> None:
    prior, first = prior_and_first()
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    seen = []
    tokens = sample_autoregressive(prior.cached_step(first.shape[0]), first, 6, temperature=0.0,
                                   top_k=3, generator=g, callback=seen.append)
    assert torch.equal(g.get_state(), state)  # no random numbers drawn
    expected = torch.empty(first.shape[0], 0, dtype=torch.int64)
    for _ in range(6):
        nxt = prior.uncached(first, expected).argmax(dim=-1, keepdim=True)
        expected = torch.cat([expected, nxt], dim=1)
    assert torch.equal(tokens, expected)
    assert [s["i"] for s in seen] == list(range(6))
    assert torch.equal(seen[-1]["tokens"], tokens) and seen[2]["tokens"].shape == (5, 3)


def test_sample_next_respects_the_filters() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    allowed = logits.topk(3, dim=-1).indices
    for _ in range(20):
        tok = sample_next(logits, top_k=3, generator=g)
        assert tok.shape == (4,) and tok.dtype == torch.int64
        assert (allowed == tok[:, None]).any(dim=1).all()
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(dim=-1))
    assert torch.equal(sample_next(logits, top_k=1, generator=g), logits.argmax(dim=-1))


def test_top_k_keeps_exactly_k() -> None:
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(3))
    for k in (1, 5, 19):
        out = filter_logits(logits, top_k=k)
        kept = torch.isfinite(out)
        assert (kept.sum(dim=-1) == k).all()
        assert torch.equal(out[kept], logits[kept])
        assert (logits[kept].view(6, k).min(dim=-1).values
                >= logits.masked_fill(kept, -math.inf).max(dim=-1).values).all()
    assert torch.equal(filter_logits(logits, top_k=20), logits)
    assert torch.equal(filter_logits(logits, top_k=100), logits)


@pytest.mark.parametrize(("p", "n_kept"), [(0.3, 1), (0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3),
                                           (0.95, 3), (0.96, 4), (1.0, 4)])
def test_nucleus_is_the_smallest_set_reaching_p(p: float, n_kept: int) -> None:
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = torch.stack([probs.log(), probs.log().flip(0)])  # (2, 4), two orders
    out = filter_logits(logits, top_p=p)
    order = probs.argsort(descending=True)
    expected = torch.zeros(4, dtype=torch.bool)
    expected[order[:n_kept]] = True
    assert torch.equal(torch.isfinite(out[0]), expected)
    assert torch.equal(torch.isfinite(out[1]), expected.flip(0))


def test_top_p_always_keeps_the_most_probable_token() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.1], [5.0, -1.0, 2.0]])
    out = filter_logits(logits, top_p=1e-9)
    assert torch.equal(torch.isfinite(out), torch.tensor([[False, False, True],
                                                          [True, False, False]]))


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": math.nan}, "top_p"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
])
def test_bad_sampling_arguments_raise(kwargs: dict, key: str) -> None:
    logits = torch.zeros(2, 5)
    calls = []

    def step(first, tokens):
        calls.append(tokens.shape[1])
        return logits

    fns = [lambda: sample_next(logits, **kwargs),
           lambda: sample_autoregressive(step, torch.zeros(2, 1, 3), 4, **kwargs)]
    if "temperature" not in kwargs:
        fns.append(lambda: filter_logits(logits, **kwargs))
    for fn in fns:
        with pytest.raises(InputError, match=f"key '{key}'") as info:
            fn()
        assert "\n" not in str(info.value)
    assert calls == []


def test_bad_shapes_and_lengths_raise() -> None:
    with pytest.raises(InputError, match="'logits'"):
        sample_next(torch.zeros(5))
    with pytest.raises(InputError, match="'n_tokens'"):
        sample_autoregressive(lambda f, t: torch.zeros(2, 5), torch.zeros(2, 1), -1)
    with pytest.raises(InputError, match="'logits'"):
        sample_autoregressive(lambda f, t: torch.zeros(3, 5), torch.zeros(2, 1), 2)
    empty = sample_autoregressive(lambda f, t: torch.zeros(2, 5), torch.zeros(2, 1), 0)
    assert empty.shape == (2, 0) and empty.dtype == torch.int64
