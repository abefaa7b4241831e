"""Tests of the vector quantizer: assignment, straight-through gradients, EMA, restarts, state."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load, save

from showerformer.errors import InputError
from showerformer.nn import quantize
from showerformer.nn.quantize import VectorQuantizer, VQOutput


def make_vq(n_codes: int = 8, dim: int = 3, *, seed: int = 0, **kwargs) -> VectorQuantizer:
    torch.manual_seed(seed)
    return VectorQuantizer(n_codes, dim, **kwargs)


def set_codebook(vq: VectorQuantizer, codes: torch.Tensor) -> None:
    """Replace the codebook and keep the EMA statistics consistent with it."""
    with torch.no_grad():
        vq.embedding.copy_(codes)
        if vq.ema:
            vq.embed_sum.copy_(codes * vq.cluster_size[:, None])


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def state(vq: VectorQuantizer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vq.state_dict().items()}


# --- assignment -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_code_equals_brute_force(dtype: torch.dtype) -> None:
    vq = make_vq(16, 4).to(dtype).eval()
    z = randn(3, 50, 4).to(dtype)  # (B, N, D)
    out = vq(z)
    assert isinstance(out, VQOutput)
    assert out.indices.shape == (3, 50) and out.indices.dtype == torch.int64
    dist = torch.cdist(z.reshape(-1, 4).double(), vq.embedding.double())  # (M, K)
    assert torch.equal(out.indices.reshape(-1), dist.argmin(dim=1))


def test_ties_go_to_the_lowest_index() -> None:
    vq = make_vq(4, 2).eval()
    set_codebook(vq, torch.tensor([[5.0, 5.0], [1.0, 0.0], [-3.0, 0.0], [1.0, 0.0]]))
    # codes 1 and 3 are equal; (-1, 0) is at distance 2 from codes 1 and 2
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [-2.5, 0.0]])
    assert vq(z).indices.tolist() == [1, 1, 1, 2]


def test_assignment_in_float32_under_autocast_and_bfloat16() -> None:
    vq = make_vq(32, 8).eval()
    z = randn(200, 8)
    ref = vq(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(vq(z).indices, ref)
    zb = z.to(torch.bfloat16)
    out = vq(zb)
    assert torch.equal(out.indices, vq(zb.float()).indices)
    assert out.quantized.dtype == torch.bfloat16
    assert out.commitment_loss.dtype == torch.float32


# --- straight-through estimator and losses -----------------------------------------------------

@pytest.mark.parametrize("ema", [True, False])
def test_straight_through(ema: bool) -> None:
    vq = make_vq(8, 3, ema=ema).eval()
    z = randn(2, 10, 3).requires_grad_()
    out = vq(z)
    assert torch.equal(out.quantized, vq.embedding.detach()[out.indices])
    assert torch.equal(out.quantized, vq.lookup(out.indices))
    (grad,) = torch.autograd.grad(out.quantized.sum(), z)
    assert torch.equal(grad, torch.ones_like(z))


def test_losses_and_their_gradients() -> None:
    z = randn(40, 3).requires_grad_()
    vq = make_vq(8, 3, ema=False).eval()
    out = vq(z)
    e = vq.embedding.detach()[out.indices]  # (M, D)
    assert out.codebook_loss.item() == pytest.approx(((e - z.detach()) ** 2).mean().item())
    assert out.commitment_loss.item() == pytest.approx(out.codebook_loss.item())
    # the commitment loss moves the encoder output only
    (gz,) = torch.autograd.grad(out.commitment_loss, z, retain_graph=True)
    torch.testing.assert_close(gz, 2 * (z.detach() - e) / z.numel())
    assert out.commitment_loss.grad_fn is not None
    # the codebook loss moves the used codes only, and not the encoder
    gc, gz2 = torch.autograd.grad(out.codebook_loss, [vq.embedding, z], allow_unused=True)
    assert gz2 is None
    used = torch.bincount(out.indices, minlength=8) > 0
    assert gc[used].abs().sum() > 0 and torch.equal(gc[~used], torch.zeros_like(gc[~used]))

    vq_ema = make_vq(8, 3, ema=True).eval()
    out = vq_ema(z)
    assert list(vq_ema.parameters()) == []
    assert not out.codebook_loss.requires_grad and out.codebook_loss.item() > 0
    assert out.commitment_loss.requires_grad


# --- EMA codebook ------------------------------------------------------------------------------

def test_ema_update_by_hand() -> None:
    eps = 1e-5
    vq = make_vq(3, 2, decay=0.5, eps=eps, restart_threshold=0.0)
    codes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    set_codebook(vq, codes)
    z = torch.tensor([[1.0, 0.0], [1.0, 0.5], [9.0, 1.0], [9.0, 2.0]])  # near codes 0 and 1
    out = vq.train()(z)
    assert out.indices.tolist() == [0, 0, 1, 1]
    # counts (2, 2, 0), sums ((2, 0.5), (18, 3), (0, 0)), start: cluster_size 1, embed_sum codes
    cluster = torch.tensor([0.5 + 0.5 * 2, 0.5 + 0.5 * 2, 0.5])
    embed_sum = torch.tensor([[0.0 + 1.0, 0.0 + 0.25], [5.0 + 9.0, 0.0 + 1.5], [0.0, 5.0]])
    n = 3.5
    cs = (cluster + eps) / (n + 3 * eps) * n
    torch.testing.assert_close(vq.cluster_size, cluster)
    torch.testing.assert_close(vq.embed_sum, embed_sum)
    torch.testing.assert_close(vq.embedding, embed_sum / cs[:, None])
    # the used codes moved toward their batch means: (1, 0.25) and (9, 1.5)
    means = torch.tensor([[1.0, 0.25], [9.0, 1.5]])
    new = vq.embedding[:2]
    assert ((new - means).norm(dim=1) < (codes[:2] - means).norm(dim=1)).all()
    torch.testing.assert_close(new, torch.tensor([[2 / 3, 1 / 6], [28 / 3, 1.0]]),
                               atol=1e-4, rtol=0)
    # the quantized output used the codebook from before the update
    assert torch.equal(out.quantized, codes[out.indices])
    assert vq.n_restarts.item() == 0


@pytest.mark.parametrize("ema", [True, False])
def test_eval_mode_changes_nothing(ema: bool) -> None:
    vq = make_vq(8, 3, ema=ema)
    before = state(vq)
    vq.eval()(randn(64, 3) * 5)
    after = state(vq)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_mode_updates_without_gradients() -> None:
    vq = make_vq(4, 2, restart_threshold=0.0)
    before = vq.cluster_size.clone()
    with torch.no_grad():
        vq.train()(randn(16, 2))
    assert not torch.equal(before, vq.cluster_size)


# --- dead-code restarts ------------------------------------------------------------------------

def far_codebook(vq: VectorQuantizer) -> torch.Tensor:
    codes = 100.0 + torch.arange(vq.n_codes, dtype=torch.float32)[:, None].expand(-1, vq.dim)
    set_codebook(vq, codes)
    return codes


@pytest.mark.parametrize("ema", [True, False])
def test_dead_codes_restart_onto_encoder_outputs(ema: bool) -> None:
    vq = make_vq(8, 3, ema=ema)
    far_codebook(vq)
    z = randn(64, 3).requires_grad_()  # every vector is nearest to code 0
    out = vq.train()(z)
    assert (out.indices == 0).all()
    assert vq.n_restarts.item() == 7
    codes = vq.embedding.detach()
    on_data = (codes[:, None, :] == z.detach()[None]).all(dim=-1)  # (K, M)
    assert on_data[1:].any(dim=1).all()  # every restarted code is an encoder output
    assert len({int(i) for i in on_data[1:].float().argmax(dim=1)}) == 7  # distinct ones
    assert not on_data[0].any()  # code 0 was used and stays an average
    usage_avg = vq.cluster_size if ema else vq.usage_ema
    torch.testing.assert_close(usage_avg[1:], torch.ones(7))
    if ema:
        torch.testing.assert_close(vq.embed_sum[1:], codes[1:])
    # the graph of this forward survives the in-place restart of a learned codebook
    (out.codebook_loss + 0.25 * out.commitment_loss).backward()
    assert z.grad is not None
    # the restarted codes now take the data: no further restart
    vq(z.detach())
    assert vq.n_restarts.item() == 7


@pytest.mark.parametrize("ema", [True, False])
def test_no_restart_with_threshold_zero(ema: bool) -> None:
    vq = make_vq(8, 3, ema=ema, restart_threshold=0.0)
    far_codebook(vq)
    vq.train()(randn(64, 3))
    assert vq.n_restarts.item() == 0
    assert (vq.embedding.detach()[1:].norm(dim=1) > 100).all()


def test_restarts_use_the_generator_when_given() -> None:
    picks = []
    for _ in range(2):
        vq = make_vq(8, 3)
        far_codebook(vq)
        vq.generator = torch.Generator().manual_seed(5)
        rng = torch.get_rng_state()
        vq.train()(randn(64, 3))
        assert torch.equal(rng, torch.get_rng_state())  # the global RNG was not drawn from
        picks.append(vq.embedding.clone())
    assert torch.equal(picks[0], picks[1])


# --- processes ---------------------------------------------------------------------------------

def test_distributed_sums_statistics_and_broadcasts_restarts(monkeypatch) -> None:
    """Two processes with the same batch: the update equals that of the doubled batch."""
    calls = []

    def all_reduce(t: torch.Tensor) -> None:
        calls.append(("all_reduce", tuple(t.shape)))
        t.mul_(2)

    def broadcast(t: torch.Tensor, src: int) -> None:
        calls.append(("broadcast", tuple(t.shape), src))

    z = randn(32, 3)
    single = make_vq(8, 3, restart_threshold=0.0).train()
    single(torch.cat([z, z]))
    monkeypatch.setattr(quantize, "_distributed", lambda: True)
    monkeypatch.setattr(quantize.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(quantize.dist, "broadcast", broadcast)
    two = make_vq(8, 3, restart_threshold=0.0).train()
    two(z)
    for k in ("embedding", "cluster_size", "embed_sum"):
        torch.testing.assert_close(getattr(two, k), getattr(single, k))
    assert calls == [("all_reduce", (8, 4))]
    calls.clear()
    make_vq(8, 3).train()(z)
    assert calls == [("all_reduce", (8, 4)), ("broadcast", (8, 3), 0)]


# --- state and round trips ---------------------------------------------------------------------

@pytest.mark.parametrize("ema", [True, False])
def test_state_dict_round_trip(ema: bool) -> None:
    vq = make_vq(8, 3, ema=ema)
    keys = ({"embedding", "cluster_size", "embed_sum", "n_restarts"} if ema
            else {"embedding", "usage_ema", "n_restarts"})
    assert set(vq.state_dict()) == keys
    for seed in range(3):
        vq(randn(64, 3, seed=seed) * 2)
    blob = save({k: v.contiguous() for k, v in vq.state_dict().items()})
    other = make_vq(8, 3, ema=ema, seed=7)
    other.load_state_dict(load(blob))
    z = randn(5, 20, 3, seed=10) * 2
    a, b = vq.eval()(z), other.eval()(z)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.quantized, b.quantized)
    # exact resume: the same training step from the same RNG state gives the same state
    for m in (vq, other):
        torch.manual_seed(3)
        m.train()(z)
    sa, sb = state(vq), state(other)
    assert all(torch.equal(sa[k], sb[k]) for k in keys)


# --- statistics --------------------------------------------------------------------------------

def test_perplexity_and_usage() -> None:
    vq = make_vq(8, 2).eval()
    codes = torch.tensor([[float(i), 0.0] for i in range(8)])
    set_codebook(vq, codes)
    out = vq(codes[:4].repeat(3, 1))  # 4 codes, 3 times each
    assert out.perplexity.item() == pytest.approx(4.0)
    assert out.usage.item() == pytest.approx(0.5)
    out = vq(codes.repeat(2, 1))
    assert out.perplexity.item() == pytest.approx(8.0) and out.usage.item() == 1.0
    out = vq(codes[:1].repeat(5, 1))
    assert out.perplexity.item() == pytest.approx(1.0) and out.usage.item() == 1 / 8
    out = vq(codes[[0, 0, 0, 1]])  # p = (3/4, 1/4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert out.perplexity.item() == pytest.approx(math.exp(h))


def test_lookup_and_repr() -> None:
    vq = make_vq(8, 3).eval()
    idx = torch.tensor([[0, 7], [3, 3]])
    assert torch.equal(vq.lookup(idx), vq.embedding[idx])
    assert vq.lookup(idx.int()).shape == (2, 2, 3)
    assert "n_codes=8, dim=3, ema=True" in repr(vq)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "key"), [
    ({"n_codes": 1}, "n_codes"),
    ({"n_codes": 4.0}, "n_codes"),
    ({"dim": 0}, "codebook_dim"),
    ({"decay": 0.0}, "decay"),
    ({"decay": 1.0}, "decay"),
    ({"decay": float("nan")}, "decay"),
    ({"eps": 0.0}, "eps"),
    ({"restart_threshold": -1.0}, "restart_threshold"),
])
def test_bad_arguments(kwargs: dict, key: str) -> None:
    args = {"n_codes": 8, "dim": 3, **kwargs}
    with pytest.raises(InputError) as info:
        VectorQuantizer(args.pop("n_codes"), args.pop("dim"), **args)
    assert info.value.key == key
    assert "\n" not in str(info.value) and key in str(info.value)


@pytest.mark.parametrize("call", [
    lambda vq: vq(torch.zeros(4, 2)),
    lambda vq: vq(torch.zeros(4, 3, dtype=torch.int64)),
    lambda vq: vq.lookup(torch.zeros(3)),
    lambda vq: vq.lookup(torch.tensor([0, 8])),
    lambda vq: vq.lookup(torch.tensor([-1])),
])
def test_bad_inputs(call) -> None:
    with pytest.raises(InputError) as info:
        call(make_vq(8, 3))
    assert info.value.key in ("z", "indices") and "\n" not in str(info.value)
