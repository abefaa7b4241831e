"""Tests of the optimizer groups, the warmup + cosine schedule, gradient clipping and the EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from training_helpers import NoisyNet

from showerformer.models.particle_cnn_transformer import (
    ParticleCNNTransformer,
    ParticleCNNTransformerConfig,
)
from showerformer.training import (
    EMA,
    WarmupCosine,
    build_optimizer,
    clip_grad_norm,
    decay_mask,
    parameter_groups,
    warmup_cosine,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decay_mask_small_net() -> None:
    mask = decay_mask(NoisyNet())
    decayed = {k for k, v in mask.items() if v}
    # only the linear / conv weights are decayed
    assert decayed == {"fc1.weight", "conv.weight", "fc2.weight"}
    for exempt in ("fc1.bias", "norm.weight", "norm.bias", "rms.weight", "scale.gamma",
                   "embed.weight", "token", "conv.bias", "fc2.bias"):
        assert mask[exempt] is False, exempt


def test_decay_mask_particle_cnn_transformer() -> None:
    cfg = ParticleCNNTransformerConfig(grid=16, d_model=12, n_heads=1, mlp_ratio=2,
                                       cnn_channels=(4, 4, 8, 12), cnn_depths=(0, 0, 1, 1),
                                       head_hidden=(8,))
    model = ParticleCNNTransformer(cfg)
    mask = decay_mask(model)
    assert len(mask) == len(list(model.parameters()))
    for name, decayed in mask.items():
        leaf = name.rsplit(".", 1)[-1]
        # LayerScale gains, RMSNorm / GroupNorm weights, biases, tokens, block embeddings: exempt
        if (leaf in ("gamma", "bias") or "norm" in name or "token" in name
                or "block_embed" in name or name.startswith("backbone.stem.1")):
            assert not decayed, name
        else:  # every remaining parameter is a linear / conv weight
            assert decayed and leaf == "weight", name
    assert mask["stage1.block.ls1.gamma"] is False
    assert mask["stage1.block.attn.qkv.weight"] is True
    assert mask["cls_token"] is False


def test_no_weight_decay_hook_and_groups() -> None:
    class Hooked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def no_weight_decay(self) -> list[str]:
            return ["b.weight"]

    groups = parameter_groups(Hooked(), 0.1)
    assert groups[0]["names"] == ["a.weight"] and groups[0]["weight_decay"] == 0.1
    assert sorted(groups[1]["names"]) == ["a.bias", "b.bias", "b.weight"]
    assert groups[1]["weight_decay"] == 0.0
    opt = build_optimizer(Hooked(), lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)


def test_weight_decay_only_shrinks_decayed() -> None:
    # with zero gradients AdamW changes only the decayed weights: w <- w (1 - lr wd)
    net = NoisyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = build_optimizer(net, lr=0.1, weight_decay=0.5)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = net.state_dict()
    for name, decayed in decay_mask(net).items():
        expected = before[name] * (1 - 0.1 * 0.5) if decayed else before[name]
        torch.testing.assert_close(after[name], expected, msg=name)


def test_warmup_cosine_values() -> None:
    # warmup 10, total 110, floor 0.1
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(4, 10, 110, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert warmup_cosine(35, 10, 110, 0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)  # stays at the floor
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)  # no warmup
    s = WarmupCosine(2e-3, 10, 110, 0.1)
    assert s(60) == pytest.approx(2e-3 * 0.55)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert s.apply(opt, 4) == pytest.approx(1e-3) and opt.param_groups[0]["lr"] == s(4)
    assert s.state_dict() == {"kind": "warmup_cosine", "base_lr": 2e-3, "warmup_steps": 10,
                              "total_steps": 110, "min_ratio": 0.1}


def test_clip_grad_norm() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_grad_norm([a, b], 1.0)
    assert norm.item() == pytest.approx(5.0)
    total = torch.cat([a.grad, b.grad]).norm().item()
    assert total == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.0]), rtol=1e-5, atol=0)
    # below the limit or without a limit: unchanged, norm still reported
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert clip_grad_norm([a, b], 10.0).item() == pytest.approx(5.0)
    assert clip_grad_norm([a, b], None).item() == pytest.approx(5.0)
    torch.testing.assert_close(b.grad, torch.tensor([4.0]))
    assert clip_grad_norm([nn.Parameter(torch.zeros(1))], 1.0).item() == 0.0  # no gradients


def test_ema_math() -> None:
    lin = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(lin.weight)
    lin.register_buffer("count", torch.zeros(()))
    ema = EMA(lin, decay=0.9)
    values = [1.0, 2.0, 4.0]
    expected = None
    for v in values:
        with torch.no_grad():
            lin.weight.fill_(v)
            lin.count += 1
        ema.update(lin)
        # the first update copies, the next ones average
        expected = v if expected is None else 0.9 * expected + 0.1 * v
        torch.testing.assert_close(ema.module.weight, torch.full((1, 2), expected))
    assert expected == pytest.approx(0.9 * (0.9 * 1.0 + 0.1 * 2.0) + 0.1 * 4.0)
    assert ema.module.count.item() == 3.0  # buffers are copied, not averaged
    assert ema.updates == 3 and ema.meta() == {"decay": 0.9, "updates": 3}
    assert not ema.module.training and not ema.module.weight.requires_grad
    ema.train()
    assert not ema.module.training
    # state round trip
    other = EMA(lin, decay=0.9)
    other.load(ema.tensors(), ema.meta())
    torch.testing.assert_close(other.module.weight, ema.module.weight)
    assert other.updates == 3
    with pytest.raises(ValueError, match="decay"):
        EMA(lin, 1.0)
