"""The contract every registered model family follows (see :mod:`showerformer.models.family`):
config round trip and checks, ``from_data`` on synthetic data of the family's kind, a finite loss
(or training step) with a gradient on every trainable parameter, generation or prediction, and a
checkpoint round trip; on ``--device`` / ``--dtype``.

The tests are parametrized over the registry and branch only on what a family declares (its
data kind, its task, whether it brings its own step), never on its name; the only per-family
data is its smallest config in :data:`TINY`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from showerformer.errors import InputError
from showerformer.models import MODELS, get_model_class
from showerformer.models.family import check_family
from showerformer.showers import Conditions, PointShowers, VoxelShowers
from showerformer.training import checkpoint as ckpt
from showerformer.training.config import TrainConfig
from showerformer.training.datasets import DATA_KINDS, read_data_settings
from showerformer.training.trainer import Optimizers

L = 6  # calorimeter layers of the synthetic point clouds

TINY: dict[str, dict[str, Any]] = {
    "particle-cnn-transformer": {"d_model": 12, "n_heads": 1, "mlp_ratio": 2,
                                 "cnn_channels": [4, 4, 8, 12], "cnn_depths": [0, 0, 1, 1],
                                 "head_hidden": [8], "drop_path": 0.0},
    "point-flow": {"shower": {"d_model": 32, "n_heads": 2, "n_blocks": 2},
                   "counts": {"d_model": 32, "n_blocks": 2}},
    "mdma": {"embed_dim": 8, "gen_hidden": 8, "gen_blocks": 2, "gen_heads": 2,
             "critic_hidden": 8, "critic_blocks": 2, "critic_heads": 2, "critic_head_hidden": 8,
             "counts": {"d_model": 16, "n_blocks": 1}},
    "score-diffusion": {"embed_dim": 8, "hidden": 8, "n_heads": 2, "n_blocks": 2,
                        "n_fourier": 4, "sampling_steps": 3, "correlation_features": ["x", "energy"],
                        "correlation_weight": 0.1, "counts": {"d_model": 16, "n_blocks": 1}},
    "transformer-mlm": {"patch_size": [3, 2, 2], "d_model": 12, "n_heads": 2, "n_blocks": 1,
                        "ffn_dim": 16},
    "vq-vae": {"patch_size": [3, 2, 2], "d_model": 12, "n_heads": 2, "encoder_blocks": 1,
               "decoder_blocks": 1, "ffn_dim": 16, "latent_tokens": 4, "code_dim": 4,
               "n_codes": 8},
    "vq-prior": {"d_model": 12, "n_heads": 2, "n_blocks": 1, "ffn_dim": 16},
}
"""The smallest config of every built-in family (the keys ``from_data`` does not set)."""


def _builtin() -> list[str]:
    return sorted(n for n, c in MODELS.items() if c.__module__.startswith("showerformer."))


def test_every_registered_family_is_covered() -> None:
    assert _builtin() == sorted(TINY)


# -- synthetic data of each kind ------------------------------------------------------------------


def _point_data(tmp_path: Path) -> Any:
    """Twelve showers of 3-19 hits on the cells of a small Cartesian grid of ``L`` layers."""
    from showerformer.data.points import PointCloudDataset
    from showerformer.geometry import CartesianGeometry

    geo = CartesianGeometry((8, 8, L), (10.0, 10.0, 5.0), name="contract-grid")
    rng = np.random.default_rng(0)
    ragged = []
    for i in range(12):
        m = int(rng.integers(3, 20))
        cells = rng.choice(geo.n_cells, m, replace=False)
        if i == 0:  # every layer occurs
            cells[:L] = geo.layer_offsets[:L] + rng.integers(0, 64, L)
        xyz = geo.dequantize(cells, rng)
        ragged.append(np.column_stack([xyz, rng.exponential(5.0, m) + 0.01,
                                       geo.layer_of_cell[cells]]))
    cond = Conditions(rng.uniform(1e3, 1e5, 12), rng.choice([11, 22, 211, 2212], 12),
                      np.full(12, np.pi / 2), rng.uniform(0, 2 * np.pi, 12))
    return PointCloudDataset.from_showers(PointShowers.from_ragged(ragged, cond, geo))


def _voxel_data(tmp_path: Path) -> Any:
    from training_helpers import write_cube_file

    from showerformer.training.data import SparseVoxelDataset

    return SparseVoxelDataset(write_cube_file(tmp_path / "cube16.h5", n=12, grid=16))


def _voxel_grid_data(tmp_path: Path) -> Any:
    """Twelve showers on a 4 z x 4 phi x 3 r cylindrical grid at three incident energies."""
    from showerformer.data.voxels import VoxelGridDataset
    from showerformer.geometry import CylindricalGeometry

    geo = CylindricalGeometry.uniform(4, 4, np.arange(4) * 2.0, 3.4, "contract-cylinder")
    rng = np.random.default_rng(0)
    voxels = rng.exponential(50.0, (12, 4, 4, 3)) * (rng.random((12, 4, 4, 3)) < 0.6)
    cond = Conditions(rng.choice([64e3, 128e3, 256e3], 12), np.full(12, 11),
                      rng.uniform(1.2, 1.57, 12), np.zeros(12))
    return VoxelGridDataset(voxels.astype(np.float32), cond, geo)


SYNTHETIC = {"points": _point_data, "sparse-voxels": _voxel_data, "voxels": _voxel_grid_data}
"""Synthetic training data of every data kind (a new kind adds its maker here)."""


def test_every_data_kind_has_synthetic_data() -> None:
    assert set(SYNTHETIC) == set(DATA_KINDS)


# -- building ---------------------------------------------------------------------------------------


def _pretrained(family: str, tmp_path: Path) -> dict[str, str]:
    """The checkpoints a family's config names (``pretrained``, e.g. a prior's tokenizer):
    the smallest model of each named family, built on the same data and saved."""
    paths = {}
    for key, other in getattr(get_model_class(family), "pretrained", {}).items():
        model, _, _ = _build(other, tmp_path)
        info = {"family": other, "model_config": model.config.to_dict(),
                "preprocessing": model.data_state(), "state": {"step": 1}}
        paths[key] = str(ckpt.save_checkpoint(tmp_path / f"pretrained-{other}", 1, model=model,
                                              info=info))
    return paths


def _build(family: str, tmp_path: Path, device: str = "cpu",
           dtype: torch.dtype = torch.float32) -> tuple[Any, Any, dict[str, Any]]:
    cls = get_model_class(family)
    kind = DATA_KINDS[cls.data_kind]
    settings = read_data_settings(kind, cls.data_keys, {})
    train = SYNTHETIC[cls.data_kind](tmp_path)
    overrides = {**TINY[family], **_pretrained(family, tmp_path)}
    torch.manual_seed(0)
    model = cls.from_data(overrides, train, settings)
    return model.to(device=device, dtype=dtype), train, settings


def _batch(model: Any, train: Any, settings: Mapping[str, Any], device: str,
           dtype: torch.dtype) -> dict[str, Any]:
    collate = model.collate_fn(settings) or train.collate_fn
    batch = collate([train[i] for i in range(4)])
    return {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
            if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _conditions(model: Any, n: int = 3) -> Conditions:
    from showerformer.generation import sample_conditions, trained_conditions

    return sample_conditions(trained_conditions(model), n, seed=1)


@pytest.mark.parametrize("family", sorted(TINY))
def test_family_follows_the_contract(family: str, tmp_path: Path) -> None:
    cls = get_model_class(family)
    check_family(cls)
    model, _, _ = _build(family, tmp_path)
    assert model.family == family
    assert model.task in ("generation", "regression", "representation")
    config = model.config
    assert cls.config_class.from_dict(config.to_dict()) == config
    assert cls.config_class.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    state = model.data_state()
    assert json.loads(json.dumps(state)) == state  # JSON-ready


@pytest.mark.parametrize("family", sorted(TINY))
def test_loss_is_finite_and_reaches_every_trainable_parameter(family: str, tmp_path: Path,
                                                              device: str,
                                                              dtype: torch.dtype) -> None:
    model, train, settings = _build(family, tmp_path, device, dtype)
    batch = _batch(model, train, settings, device, dtype)
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    if callable(getattr(model, "training_step", None)):
        made = model.configure_optimizers(TrainConfig(max_steps=1, lr=1e-3))
        names = list(made) if isinstance(made, Mapping) else None
        opts = list(made.values()) if isinstance(made, Mapping) else list(made)
        metrics = model.training_step(batch, 0, Optimizers(opts, names))
        assert torch.isfinite(torch.as_tensor(metrics["loss"], dtype=torch.float64))
        changed = [n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])]
        assert len(changed) >= 0.9 * len(trainable), "parameters left unchanged by the step"
        return
    loss = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    for n, p in trainable.items():
        assert torch.isfinite(p.grad).all(), n
    nonzero = sum(int(p.grad.abs().sum() > 0) for p in trainable.values())
    assert nonzero >= 0.9 * len(trainable)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(model.get_parameter(n).grad is None for n in frozen)


def _output(model: Any, train: Any, seed: int, device: str) -> Any:
    if model.task == "representation":
        batch = train.collate_fn([train[i] for i in range(3)])
        dtype = next(model.parameters()).dtype
        return model.represent(batch["voxels"].to(device, dtype), batch["energy"].to(device))
    if model.task == "regression":
        voxels = train.collate_fn([train[i] for i in range(3)])["voxels"].to(device)
        return model.predict(voxels)
    g = torch.Generator(device=device).manual_seed(seed)
    return model.generate(_conditions(model), generator=g, steps=2)


@pytest.mark.parametrize("family", sorted(TINY))
def test_generate_or_predict(family: str, tmp_path: Path, device: str) -> None:
    model, train, _ = _build(family, tmp_path, device)
    out = _output(model, train, 0, device)
    if model.task == "regression":
        assert out.shape == (3,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    elif model.task == "representation":
        assert out.ndim == 2 and len(out) == 3 and torch.isfinite(out).all()
        assert torch.equal(out, _output(model, train, 0, device))  # no randomness
    else:
        assert isinstance(out, PointShowers | VoxelShowers) and len(out) == 3
        values = out.points[out.mask] if isinstance(out, PointShowers) else out.energies
        assert np.isfinite(values).all()
        again = _output(model, train, 0, device)  # the generator decides the noise
        assert np.array_equal(again.points if isinstance(out, PointShowers) else again.energies,
                              out.points if isinstance(out, PointShowers) else out.energies)
    assert model.training  # generation / prediction restore the mode


@pytest.mark.parametrize("family", sorted(TINY))
def test_checkpoint_round_trip(family: str, tmp_path: Path) -> None:
    model, train, _ = _build(family, tmp_path)
    info = {"family": family, "model_config": model.config.to_dict(),
            "preprocessing": model.data_state(), "state": {"step": 1}}
    ckpt.save_checkpoint(tmp_path / "checkpoints", 1, model=model, info=info)
    loaded, got = ckpt.load_checkpoint(tmp_path / "checkpoints")
    assert type(loaded) is type(model) and got["family"] == family
    assert loaded.data_state() == model.data_state()
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    model.eval()
    a, b = _output(model, train, 3, "cpu"), _output(loaded, train, 3, "cpu")
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, VoxelShowers):
        assert np.array_equal(a.energies, b.energies)
    else:
        assert np.array_equal(a.points, b.points)


@pytest.mark.parametrize("family", sorted(TINY))
def test_checkpoint_of_another_layout_fails_in_one_line(family: str, tmp_path: Path) -> None:
    model, _, _ = _build(family, tmp_path)
    info = {"family": family, "model_config": model.config.to_dict(),
            "preprocessing": model.data_state(), "state": {"step": 1}}
    folder = ckpt.save_checkpoint(tmp_path / "checkpoints", 1, model=model, info=info)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / ckpt.MODEL_FILE))
    first = sorted(weights)[0]
    weights[f"renamed.{first}"] = weights.pop(first)
    save_file(weights, str(folder / ckpt.MODEL_FILE))
    with pytest.raises(InputError) as err:
        ckpt.load_checkpoint(folder)
    text = str(err.value)
    assert "\n" not in text and "model.safetensors" in text and "layout" in text


def _bad_values(tp: Any) -> list[Any]:
    """Values every config field of annotation ``tp`` must refuse."""
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


@pytest.mark.parametrize("family", sorted(TINY))
def test_config_refuses_wrong_types_and_ranges(family: str, tmp_path: Path) -> None:
    """Every field rejects a value of the wrong type (a string for a width, as an edited
    checkpoint.json may hold), negative sizes and unknown names, naming the field."""
    model, _, _ = _build(family, tmp_path)
    cls = type(model).config_class
    valid = model.config.to_dict()
    hints = typing.get_type_hints(cls)
    checked = 0
    for f in dataclasses.fields(cls):
        if f.name == "particles":
            continue  # any distinct non-zero ids are valid; checked below
        for value in _bad_values(hints[f.name]):
            with pytest.raises(InputError) as info:
                cls.from_dict({**valid, f.name: value})
            assert info.value.key.split(".")[0] == f.name, (f.name, value, str(info.value))
            checked += 1
    assert checked >= 6
    if "particles" in hints:
        for bad in ([], [11, 11], [0], ["e-"]):
            with pytest.raises(InputError, match="particles"):
                cls.from_dict({**valid, "particles": bad})
    with pytest.raises(InputError) as info:
        cls.from_dict({**valid, "no_such_key": 1})
    assert info.value.key == "no_such_key"
