"""The contract every registered model family follows: config round trip, finite loss, gradients
on all parameters, sampling (or prediction) shapes and dtypes, checkpoint save and load."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from showerformer.data.points import Preprocessing, make_batch
from showerformer.models import MODELS, get_model_class
from showerformer.showers import Conditions, PointShowers
from showerformer.training import checkpoint as ckpt

L = 6  # calorimeter layers of the tiny generative configs


def _point_showers(n: int = 6, seed: int = 0) -> PointShowers:
    rng = np.random.default_rng(seed)
    ragged = []
    for _ in range(n):
        m = int(rng.integers(3, 20))
        layer = np.sort(rng.integers(0, L, m))
        pts = np.stack([rng.normal(0, 10, m), rng.normal(0, 10, m), layer * 5.0 + 2.5,
                        rng.exponential(5.0, m) + 0.01, layer], axis=1)
        ragged.append(pts)
    cond = Conditions(rng.uniform(1e3, 1e5, n), rng.choice([11, 22, 211, 2212], n),
                      np.full(n, np.pi / 2), rng.uniform(0, 2 * np.pi, n))
    return PointShowers.from_ragged(ragged, cond)


def _point_batch() -> dict[str, torch.Tensor]:
    showers = _point_showers()
    pre = Preprocessing.fit(showers, n_layers=L)
    return make_batch(showers, pre)


def _condition_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("particle", "energy", "theta", "phi")}


def _check_generated(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    family = model.family  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    cond = _condition_batch(batch)
    b = len(batch["energy"])
    if family == "point-count-fm":
        counts = model.sample(cond, generator=g, steps=2)  # type: ignore[operator]
        assert counts.shape == (b, L) and counts.dtype == torch.int64 and (counts >= 0).all()
        return
    if family == "panshower":
        out = model.sample(cond, batch["counts"], generator=g, steps=2)  # type: ignore[operator]
    else:
        out = model.sample(cond, generator=g, steps=2)  # type: ignore[operator]
    p = out.mask.shape[1]
    assert out.x.shape == (b, p, 3) and out.x.dtype == torch.float32
    assert out.layer.dtype == torch.int64 and out.mask.dtype == torch.bool
    assert torch.isfinite(out.x).all()
    if family == "panshower":  # the requested points per layer
        counted = torch.zeros(b, L, dtype=torch.long)
        for i in range(b):
            counted[i] = torch.bincount(out.layer[i][out.mask[i]], minlength=L)
        assert torch.equal(counted, batch["counts"])


def _pct() -> tuple[dict[str, Any], Callable[[], dict[str, torch.Tensor]]]:
    def batch() -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        vox = torch.rand(2, 32, 32, 32, generator=g) * (torch.rand(2, 32, 32, 32, generator=g) > 0.95)
        return {"voxels": vox * 50.0, "target": torch.tensor([3.0, 12.0])}

    return {"grid": 32, "d_model": 48, "n_heads": 2, "drop_path": 0.0}, batch


FAMILIES: dict[str, tuple[dict[str, Any], Callable[[], dict[str, torch.Tensor]]]] = {
    "particle-cnn-transformer": _pct(),
    "panshower": ({"n_calo_layers": L, "d_model": 32, "n_heads": 2, "n_blocks": 2,
                   "attention": "blocked"}, _point_batch),
    "point-count-fm": ({"n_calo_layers": L, "d_model": 32, "n_blocks": 2}, _point_batch),
    "point-flow": ({"n_calo_layers": L, "shower": {"d_model": 32, "n_heads": 2, "n_blocks": 2},
                    "counts": {"d_model": 32, "n_blocks": 2}}, _point_batch),
}


def test_every_registered_family_is_covered() -> None:
    assert set(MODELS) == set(FAMILIES)


def _build(family: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    overrides, make = FAMILIES[family]
    cls = get_model_class(family)
    config = cls.config_class.from_dict(overrides)  # type: ignore[attr-defined]
    assert cls.config_class.from_dict(config.to_dict()) == config  # type: ignore[attr-defined]
    torch.manual_seed(0)
    model = cls(config)
    batch = make()
    if hasattr(model, "fit_normalization") and "counts" in batch:
        model.fit_normalization(batch["counts"])  # type: ignore[operator]
    return model, batch


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loss_is_finite_and_reaches_every_parameter(family: str) -> None:
    model, batch = _build(family)
    assert model.family == family  # type: ignore[attr-defined]
    assert getattr(model, "task", None) in ("regression", "generation")
    model.train()
    loss = model.loss(batch)  # type: ignore[operator]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), n
    nonzero = sum(int(p.grad.abs().sum() > 0) for p in model.parameters())
    assert nonzero >= 0.9 * len(list(model.parameters()))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sample_or_predict_shapes(family: str) -> None:
    model, batch = _build(family)
    if model.task == "regression":  # type: ignore[attr-defined]
        pred = model.predict(batch["voxels"])  # type: ignore[operator]
        assert pred.shape == (2,) and pred.dtype == torch.float32 and torch.isfinite(pred).all()
        with pytest.raises(NotImplementedError):
            model.sample()  # type: ignore[operator]
    else:
        _check_generated(model, batch)
    assert model.training  # sampling / prediction restore the mode


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoint_round_trip(family: str, tmp_path: Any) -> None:
    model, batch = _build(family)
    info = {"family": family, "model_config": model.config.to_dict(),  # type: ignore[attr-defined]
            "state": {"step": 1}}
    ckpt.save_checkpoint(tmp_path / "checkpoints", 1, model=model, info=info)
    loaded, got = ckpt.load_checkpoint(tmp_path / "checkpoints")
    assert type(loaded) is type(model) and got["family"] == family
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    model.eval()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        if "voxels" in batch:
            assert torch.equal(model.predict(batch["voxels"]), loaded.predict(batch["voxels"]))  # type: ignore[operator]
        else:
            assert torch.equal(model.loss(batch, generator=g1), loaded.loss(batch, generator=g2))  # type: ignore[operator]


def _bad_values(tp: Any) -> list[Any]:
    """Values every config field of annotation ``tp`` must refuse."""
    import typing

    if tp is int or tp == int | None:
        return ["12", 2.5, -4]
    if tp is float:
        return ["fast", float("nan"), True]
    if tp is str:
        return ["bogus", 3]
    if typing.get_origin(tp) is tuple:
        return ["12", ["12"], [-4]]
    if typing.get_origin(tp) is dict:
        return ["d_model: 12"]
    return []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_config_refuses_wrong_types_and_ranges(family: str) -> None:
    """Every field rejects a value of the wrong type (a string for a width, as an edited
    checkpoint.json may hold), negative sizes and unknown names, naming the field."""
    import dataclasses
    import typing

    from showerformer.errors import InputError

    cls = get_model_class(family).config_class  # type: ignore[attr-defined]
    overrides, _ = FAMILIES[family]
    hints = typing.get_type_hints(cls)
    checked = 0
    for f in dataclasses.fields(cls):
        if f.name == "particles":
            continue  # any distinct non-zero ids are valid; checked below
        for value in _bad_values(hints[f.name]):
            with pytest.raises(InputError) as info:
                cls.from_dict({**overrides, f.name: value})
            assert info.value.key == f.name, (f.name, value, str(info.value))
            checked += 1
    assert checked >= 6
    for bad in ([], [11, 11], [0], ["e-"]):
        if "particles" in hints:
            with pytest.raises(InputError, match="particles"):
                cls.from_dict({**overrides, "particles": bad})
    if family == "point-flow":  # the sections name the nested key
        for section, key, value in (("shower", "d_model", "32"), ("shower", "dropout", 1.0),
                                    ("counts", "d_model", -4)):
            with pytest.raises(InputError) as info:
                cls.from_dict({**overrides, section: {**overrides[section], key: value}})
            assert info.value.key == f"{section}.{key}"
