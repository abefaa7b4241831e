"""Tests of ParticleCNNTransformer: parameter table, shapes, input transform, loss, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from showerformer.errors import InputError
from showerformer.models import MODELS, get_model_class
from showerformer.models.particle_cnn_transformer import (
    SEED_BREAKDOWN,
    ParticleCNNTransformer,
    ParticleCNNTransformerConfig,
    format_breakdown,
    parameter_breakdown,
)

SMALL = ParticleCNNTransformerConfig(grid=32)


def sparse_voxels(batch: int, grid: int, seed: int = 0) -> torch.Tensor:
    """Sparse positive energies in MeV, (B, G, G, G)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.rand(batch, grid, grid, grid, generator=g) * 50.0
    return e * (torch.rand(batch, grid, grid, grid, generator=g) < 0.05)


@pytest.fixture(scope="module")
def model64() -> ParticleCNNTransformer:
    torch.manual_seed(0)
    return ParticleCNNTransformer()


@pytest.fixture(scope="module")
def model32() -> ParticleCNNTransformer:
    torch.manual_seed(0)
    return ParticleCNNTransformer(SMALL)


# ---------------------------------------------------------------------------- parameter table


def test_parameter_breakdown_matches_seed(model64: ParticleCNNTransformer) -> None:
    got = parameter_breakdown(model64)
    d = 192
    for part in ("Stage 1 intra-block", "Stage 2 cross-scale", "Stage 3 inter-block", "Pool + head"):
        assert got[part] == SEED_BREAKDOWN[part], part
    # the reading of the table: blocks of 12 d^2 + 4 d
    assert got["Stage 1 intra-block"] == 12 * d * d + 4 * d + 8 * d
    assert got["Stage 2 cross-scale"] == 12 * d * d + 5 * d
    assert got["Stage 3 inter-block"] == 2 * (12 * d * d + 4 * d) + d
    assert got["Pool + head"] == (384 * 192 + 192) + (192 * 96 + 96) + (96 * 48 + 48) + (48 + 1)
    assert got["Learned tokens (CLS, query)"] == 3 * d
    assert abs(got["CNN backbone"] / SEED_BREAKDOWN["CNN backbone"] - 1) < 0.05
    assert abs(got["TOTAL"] / SEED_BREAKDOWN["TOTAL"] - 1) < 0.01
    assert got["TOTAL"] == sum(p.numel() for p in model64.parameters())
    assert got["TOTAL"] == sum(v for k, v in got.items() if k != "TOTAL")


def test_small_grid_keeps_transformer(model32: ParticleCNNTransformer,
                                      model64: ParticleCNNTransformer) -> None:
    small, big = parameter_breakdown(model32), parameter_breakdown(model64)
    for part in ("Stage 1 intra-block", "Stage 2 cross-scale", "Stage 3 inter-block", "Pool + head"):
        assert small[part] == big[part]
    assert small["CNN backbone"] < big["CNN backbone"]  # smaller patch kernels only


def test_format_breakdown(model64: ParticleCNNTransformer) -> None:
    text = format_breakdown(parameter_breakdown(model64))
    assert text == model64.summary()
    assert text.count("exact") == 4
    for part, n in SEED_BREAKDOWN.items():
        assert part in text and f"{n:,}" in text
    assert "Learned tokens (CLS, query)" in text


# ---------------------------------------------------------------------------------- config


def test_config_scales_and_validation() -> None:
    assert ParticleCNNTransformerConfig().scale_resolutions == (64, 32, 16, 8)
    assert SMALL.scale_resolutions == (32, 16, 8, 8)
    assert SMALL.token_grid == 8
    with pytest.raises(InputError, match="grid"):
        ParticleCNNTransformerConfig(grid=48)
    with pytest.raises(InputError, match="grid"):
        ParticleCNNTransformerConfig(grid=4)
    with pytest.raises(InputError, match="n_heads"):
        ParticleCNNTransformerConfig(n_heads=5)  # 192 is not divisible by 5
    with pytest.raises(InputError, match="n_heads"):
        ParticleCNNTransformerConfig(d_model=64, n_heads=4)  # head size 16: not divisible by 6
    assert ParticleCNNTransformerConfig(n_heads=8).n_heads == 8  # head size 24 is fine
    with pytest.raises(InputError, match="cnn_channels"):
        ParticleCNNTransformerConfig(cnn_channels=(8, 16))
    with pytest.raises(InputError, match="loss"):
        ParticleCNNTransformerConfig(loss="hinge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMALL.grid = 64  # type: ignore[misc]


def test_config_dict_round_trip() -> None:
    data = SMALL.to_dict()
    assert isinstance(data["head_hidden"], list)
    assert ParticleCNNTransformerConfig.from_dict(data) == SMALL
    with pytest.raises(InputError, match="colour"):
        ParticleCNNTransformerConfig.from_dict({**data, "colour": 1})


# ----------------------------------------------------------------------------------- shapes


def test_forward_shapes_32(model32: ParticleCNNTransformer) -> None:
    model32.eval()
    voxels = sparse_voxels(3, 32)
    with torch.no_grad():
        y = model32(voxels)
        y_prepared = model32(model32.prepare_input(voxels))
        tokens = model32.backbone(model32.prepare_input(voxels))
        cls = model32.stage1(tokens, model32.cls_token)
    assert y.shape == (3,) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert torch.equal(y, y_prepared)
    assert tokens.shape == (3, 4, 192, 8, 8, 8)
    assert cls.shape == (3, 4, 8, 192)


def test_forward_64_batch_one(model64: ParticleCNNTransformer) -> None:
    model64.eval()
    with torch.no_grad():
        y = model64(sparse_voxels(1, 64))
    assert y.shape == (1,) and torch.isfinite(y).all()


def test_bad_input_shapes(model32: ParticleCNNTransformer) -> None:
    with pytest.raises(InputError, match="voxels"):
        model32(torch.zeros(2, 32, 32, 16))
    with pytest.raises(InputError, match="voxels"):
        model32(torch.zeros(2, 3, 32, 32, 32))
    with pytest.raises(InputError, match="target"):
        model32.loss({"voxels": torch.zeros(1, 32, 32, 32)})


def test_prepare_input(model32: ParticleCNNTransformer) -> None:
    cfg = model32.config
    e = torch.zeros(1, 32, 32, 32)
    e[0, 0, 0, :5] = torch.tensor([-3.0, 0.0, cfg.energy_scale_mev, cfg.energy_max_mev, 1e6])
    x = model32.prepare_input(e)
    assert x.shape == (1, 2, 32, 32, 32)
    torch.testing.assert_close(x[:, 0] + x[:, 1], torch.ones(1, 32, 32, 32))
    first = x[0, 0, 0, 0, :5]
    expected = torch.tensor([0.0, 0.0, math.log(2) / math.log1p(cfg.energy_max_mev / cfg.energy_scale_mev),
                             1.0, 1.0])
    torch.testing.assert_close(first, expected)
    ramp = torch.logspace(-3, 4, 32).reshape(1, 1, 1, 32).expand(1, 32, 32, 32)
    assert torch.all(model32.prepare_input(ramp)[0, 0, 0, 0].diff() >= 0)
    assert (model32.prepare_input(ramp)[0, 0, 0, 0].diff() > 0).sum() > 20  # not saturated


def test_blockify_layout(model32: ParticleCNNTransformer) -> None:
    # token value = its (z, y, x) coordinate on the 8^3 grid, in channels 0..2
    coords = torch.stack(torch.meshgrid(*[torch.arange(8.0)] * 3, indexing="ij"))  # (3, 8, 8, 8)
    tokens = coords[None, None]  # (1, 1, 3, 8, 8, 8)
    blocks = model32.stage1.blockify(tokens)  # (1, 1, 8, 64, 3)
    assert blocks.shape == (1, 1, 8, 64, 3)
    for b in range(8):
        origin = torch.tensor([b // 4, (b // 2) % 2, b % 2]) * 4.0
        for t in (0, 5, 63):
            local = torch.tensor([t // 16, (t // 4) % 4, t % 4]).float()
            assert torch.equal(blocks[0, 0, b, t], origin + local)


# --------------------------------------------------------------------- loss, predict, grads


def test_loss_and_predict(model32: ParticleCNNTransformer) -> None:
    model32.train()
    voxels = sparse_voxels(2, 32, seed=3)
    target = torch.tensor([2.0, 17.0])
    torch.manual_seed(0)
    loss = model32.loss({"voxels": voxels, "target": target})
    torch.manual_seed(0)
    pred = model32(voxels)
    expected = F.huber_loss(pred, (target - 10.5) / 5.485, delta=1.0)
    torch.testing.assert_close(loss, expected)
    gev = model32.predict(voxels)
    assert model32.training  # mode restored
    model32.eval()
    with torch.no_grad():
        torch.testing.assert_close(gev, model32(voxels) * 5.485 + 10.5)
    torch.testing.assert_close(model32.denormalize_target(model32.normalize_target(target)), target)
    assert model32.task == "regression" and not hasattr(model32, "generate")


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = ParticleCNNTransformer(dataclasses.replace(SMALL, drop_path=0.0)).train()
    loss = model.loss({"voxels": sparse_voxels(2, 32, seed=1), "target": torch.tensor([3.0, 15.0])})
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_output_depends_on_input_at_initialisation(model32: ParticleCNNTransformer) -> None:
    # the summary tokens start from token means, so the data reaches the head despite LayerScale
    model32.eval()
    voxels = sparse_voxels(1, 32, seed=4)
    with torch.no_grad():
        y1, y2 = model32(voxels), model32(10.0 * voxels)
    assert (y1 - y2).abs().item() > 1e-4


def test_determinism() -> None:
    voxels = sparse_voxels(2, 32, seed=2)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = ParticleCNNTransformer(SMALL).train()
        torch.manual_seed(11)
        outs.append((model(voxels), model.state_dict()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    for k, v in outs[0][1].items():
        assert torch.equal(v, outs[1][1][k]), k


def test_registry() -> None:
    cls = get_model_class("particle-cnn-transformer")
    assert cls is ParticleCNNTransformer and MODELS["particle-cnn-transformer"] is cls
    assert cls.config_class is ParticleCNNTransformerConfig
    assert cls.task == "regression" and cls.family == "particle-cnn-transformer"
    with pytest.raises(InputError, match="particle-cnn-transformer"):
        get_model_class("no-such-model")


# ---------------------------------------------------------------------------- fast CPU path


def _loss_and_grads(model: ParticleCNNTransformer, path: str, voxels: torch.Tensor,
                    target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.set_conv_path(path).zero_grad(set_to_none=True)
    pred = model(voxels)
    loss = F.mse_loss(pred, model.normalize_target(target))
    loss.backward()
    return pred.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def test_fast_path_equals_plain_path_against_float64() -> None:
    # both float32 paths approximate the same function, checked against a float64 evaluation:
    # the output to 1e-5 and every gradient to 1e-3 (relative norm of the difference). The
    # fast path's channels-last GroupNorm accumulates its statistics in another order, which
    # costs about two digits on the backbone's gradients (measured: plain ~3e-6, fast ~2e-4).
    torch.manual_seed(0)
    model = ParticleCNNTransformer(dataclasses.replace(SMALL, drop_path=0.0)).train()
    voxels = sparse_voxels(2, 32, seed=3)
    target = torch.tensor([2.5, 17.0])
    fast = _loss_and_grads(model, "fast", voxels, target)
    plain = _loss_and_grads(model, "plain", voxels, target)
    prepared = model.prepare_input(voxels).double()  # (B, 2, G, G, G)
    exact = _loss_and_grads(model.double(), "plain", prepared, target.double())
    model.float()
    for path in (fast, plain):
        assert _rel_error(path[0], exact[0]) < 1e-5 and _rel_error(path[1], exact[1]) < 1e-5
        for name, grad in exact[2].items():
            assert _rel_error(path[2][name], grad) < 1e-3, name


def test_fast_path_equals_plain_path_at_64() -> None:
    torch.manual_seed(0)
    model = ParticleCNNTransformer(dataclasses.replace(SMALL, grid=64, drop_path=0.0)).train()
    voxels = sparse_voxels(1, 64, seed=3)
    target = torch.tensor([7.0])
    fast = _loss_and_grads(model, "fast", voxels, target)
    plain = _loss_and_grads(model, "plain", voxels, target)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-5, atol=1e-6)
    for name, grad in plain[2].items():  # float32 sums over 64^3 cells in another order
        assert _rel_error(fast[2][name], grad) < 1e-3, name
    assert model.parameter_breakdown() == ParticleCNNTransformer().parameter_breakdown()


def test_fast_path_layout_and_choice() -> None:
    model = ParticleCNNTransformer(SMALL)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert model.backbone.conv_path == "auto"
    assert model.backbone.memory_format(cpu) == torch.channels_last_3d
    assert model.backbone.memory_format(gpu) == torch.contiguous_format
    assert model.set_conv_path("plain").backbone.memory_format(cpu) == torch.contiguous_format
    assert model.set_conv_path("fast").backbone.memory_format(gpu) == torch.channels_last_3d
    with pytest.raises(InputError, match="conv_path"):
        model.set_conv_path("quick")
    # the fast path really changes the layout of the convolution activations (for batches of
    # two or more; PyTorch keeps a single event's convolution output contiguous)
    seen = []
    hook = model.backbone.stem.register_forward_hook(
        lambda _m, _i, out: seen.append(out.is_contiguous(memory_format=torch.channels_last_3d)))
    with torch.no_grad():
        model.set_conv_path("fast")(sparse_voxels(2, 32))
        model.set_conv_path("plain")(sparse_voxels(2, 32))
    hook.remove()
    assert seen == [True, False]


def test_state_dict_is_independent_of_the_path() -> None:
    torch.manual_seed(0)
    model = ParticleCNNTransformer(SMALL).set_conv_path("fast")
    voxels = sparse_voxels(1, 32, seed=5)
    with torch.no_grad():
        model.eval()(voxels)
    other = ParticleCNNTransformer(SMALL).set_conv_path("plain")
    other.load_state_dict(model.state_dict())
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert a.is_contiguous() and torch.equal(a, b), name


# ---------------------------------------------------------------------------- analysis outputs


def test_analyse_returns_cls_and_cross_scale_attention(model32: ParticleCNNTransformer) -> None:
    voxels = sparse_voxels(3, 32, seed=6)
    model32.train()
    out = model32.analyse(voxels)
    assert model32.training  # mode restored
    cfg = model32.config
    assert out["prediction"].shape == (3,)
    assert out["cls"].shape == (3, cfg.d_model)
    w = out["cross_scale_attention"]
    assert w.shape == (3, cfg.block_grid**3, 1 + cfg.n_scales)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, cfg.block_grid**3))
    assert (w >= 0).all()
    torch.testing.assert_close(out["prediction"], model32.predict(voxels))
    # the weights are those of the block's attention: recompute them by hand for one block
    with torch.no_grad():
        model32.eval()
        x = model32.prepare_input(voxels)
        cls = model32.stage1(model32.backbone(x), model32.cls_token)
        query = model32.query_token + model32.stage1.block_embed + cls.mean(dim=1)
        block = model32.stage2.block
        q_in = block.norm_q(query[:, 0:1])  # (B, 1, d) block 0
        kv_in = block.norm_kv(torch.cat([query[:, 0:1], cls[:, :, 0]], dim=1))  # (B, 1 + S, d)
        h = cfg.n_heads
        q = block.attn.q(q_in).view(3, 1, h, -1).transpose(1, 2)
        k = block.attn.kv(kv_in).chunk(2, dim=-1)[0].view(3, 1 + cfg.n_scales, h, -1).transpose(1, 2)
        manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    torch.testing.assert_close(w[:, 0], manual.mean(dim=1)[:, 0])
    with pytest.raises(InputError, match="voxels"):
        model32.analyse(torch.zeros(1, 16, 16, 16))
