"""Tests of checkpoints: round trip through the registry, RNG states, atomic writes, keep-k,
and one-line errors for missing or damaged checkpoints."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from training_helpers import NoisyNet, regression_data

from showerformer.errors import InputError
from showerformer.models.particle_cnn_transformer import (
    ParticleCNNTransformer,
    ParticleCNNTransformerConfig,
)
from showerformer.training import TensorDictDataset, TrainConfig, Trainer, load_checkpoint
from showerformer.training import checkpoint as ckpt

TINY = ParticleCNNTransformerConfig(grid=16, d_model=12, n_heads=1, mlp_ratio=2,
                                    cnn_channels=(4, 4, 8, 12), cnn_depths=(0, 0, 1, 1),
                                    head_hidden=(8,))


pytestmark = pytest.mark.usefixtures("one_thread")


def _voxel_data(n: int, seed: int = 0) -> TensorDictDataset:
    g = torch.Generator().manual_seed(seed)
    vox = torch.rand(n, 16, 16, 16, generator=g) * (torch.rand(n, 16, 16, 16, generator=g) < 0.02)
    return TensorDictDataset({"voxels": vox * 100.0, "target": 1.0 + 19.0 * torch.rand(n, generator=g)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ParticleCNNTransformer trained 4 steps with EMA, checkpoint every 2 steps."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = ParticleCNNTransformer(TINY)
    cfg = TrainConfig(lr=1e-3, max_steps=4, batch_size=4, ema_decay=0.5, checkpoint_every=2,
                      keep_checkpoints=5, out_dir=str(out), device="cpu", tensorboard=False)
    trainer = Trainer(model, _voxel_data(16), None, cfg, progress=False,
                      metadata={"preprocessing": {"target_key": "momentum"}})
    result = trainer.fit()
    return trainer, result, out


def test_round_trip_through_registry(trained) -> None:
    trainer, result, out = trained
    assert result.checkpoint == out / "checkpoints" / "step-0000004"
    files = sorted(p.name for p in result.checkpoint.iterdir())
    assert files == ["checkpoint.json", "ema.safetensors", "model.safetensors",
                     "optimizer.safetensors"]
    for source in (out, out / "checkpoints", result.checkpoint,
                   result.checkpoint / "checkpoint.json", out / "checkpoints" / "last.json"):
        model, info = load_checkpoint(source)
        assert isinstance(model, ParticleCNNTransformer) and not model.training
        assert model.config == TINY
        assert info["weights"] == "ema" and info["step"] == 4
    for a, b in zip(model.state_dict().values(), trainer.ema.module.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    raw, info = load_checkpoint(out, ema=False)
    assert info["weights"] == "model"
    for a, b in zip(raw.state_dict().values(), trainer.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the JSON carries everything needed to rebuild and to resume
    assert info["family"] == "particle-cnn-transformer"
    assert info["model_config"]["d_model"] == 12
    assert info["preprocessing"] == {"target_key": "momentum"}
    assert info["train_config"]["max_steps"] == 4
    state = info["state"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 0)
    assert state["scheduler"]["total_steps"] == 4 and state["best_val_loss"] is None
    assert state["bad_validations"] == 0
    assert len(info["rng"]) == 1 and set(info["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert info["ema"] == {"decay": 0.5, "updates": 4}


def test_optimizer_state_round_trip(trained) -> None:
    trainer, result, _ = trained
    model = ParticleCNNTransformer(TINY)
    from showerformer.training import build_optimizer

    opt = build_optimizer(model, 1e-3, 0.05)
    ckpt.load_training_state(result.checkpoint, model, opt)
    ref = trainer.optimizer.state_dict()
    got = opt.state_dict()
    assert len(got["state"]) == len(ref["state"]) > 0
    for pid, entry in ref["state"].items():
        for key, value in entry.items():
            assert torch.equal(got["state"][pid][key], value), (pid, key)
    assert [g["weight_decay"] for g in got["param_groups"]] == [0.05, 0.0]
    assert got["param_groups"][0]["betas"] == (0.9, 0.999)


def test_rng_state_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 (the global state is what checkpoints save)
    torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.capture_rng_state()))  # survives JSON
    first = (random.random(), np.random.rand(), torch.rand(3), np.random.randn())  # noqa: NPY002
    ckpt.restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3), np.random.randn())  # noqa: NPY002
    assert first[0] == second[0] and first[1] == second[1] and first[3] == second[3]
    assert torch.equal(first[2], second[2])


def test_keep_last_k(tmp_path) -> None:
    torch.manual_seed(0)
    train, _ = regression_data(16, 4)
    cfg = TrainConfig(max_steps=7, batch_size=4, checkpoint_every=1, keep_checkpoints=2,
                      out_dir=str(tmp_path), device="cpu", tensorboard=False)
    Trainer(NoisyNet(), train, None, cfg, progress=False).fit()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["last.json", "step-0000006",
                                                      "step-0000007"]
    assert json.loads((root / "last.json").read_text()) == {"checkpoint": "step-0000007",
                                                             "step": 7}


def test_atomic_save_keeps_previous_checkpoint(tmp_path, monkeypatch) -> None:
    net = NoisyNet()
    first = ckpt.save_checkpoint(tmp_path, 1, model=net, info={"family": None})

    def broken(module, path):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_save_module", broken)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, model=net, info={"family": None})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "step-0000001"]
    assert ckpt.resolve_checkpoint(tmp_path) == first
    # a stale temporary folder of a killed run is cleaned up
    (tmp_path / ".step-0000003.tmp-1-abc").mkdir()
    ckpt.remove_stale_temporaries(tmp_path)
    assert not (tmp_path / ".step-0000003.tmp-1-abc").exists()


def test_bad_and_missing_checkpoints(trained, tmp_path) -> None:
    _, result, _ = trained
    with pytest.raises(InputError, match=r"nowhere.*no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty.*no checkpoint found"):
        load_checkpoint(empty)
    # copies of the good checkpoint, each damaged in one way
    import shutil

    def damaged(name: str):
        d = tmp_path / name
        shutil.copytree(result.checkpoint, d)
        return d

    d = damaged("badjson")
    (d / "checkpoint.json").write_text("{not json")
    with pytest.raises(InputError, match=r"badjson/checkpoint.json.*unreadable checkpoint JSON"):
        load_checkpoint(d)
    d = damaged("noweights")
    (d / "ema.safetensors").unlink()
    with pytest.raises(InputError, match=r"noweights/ema.safetensors.*missing weights"):
        load_checkpoint(d)
    d = damaged("corrupt")
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"corrupt/model.safetensors.*unreadable"):
        load_checkpoint(d, ema=False)
    d = damaged("family")
    info = json.loads((d / "checkpoint.json").read_text())
    info["family"] = "no-such-family"
    (d / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"family/checkpoint.json.*key 'family'.*no-such-family"):
        load_checkpoint(d)
    d = damaged("config")
    info["family"] = "particle-cnn-transformer"
    info["model_config"]["d_model"] = 24  # weights no longer fit
    (d / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"config/ema.safetensors.*do not match"):
        load_checkpoint(d)
    info["model_config"]["bogus"] = 1
    (d / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"key 'model_config.bogus'"):
        load_checkpoint(d)
    info["format"] = "other"
    (d / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"not a showerformer checkpoint"):
        load_checkpoint(d)
    # a pointer naming a deleted folder
    root = tmp_path / "root"
    root.mkdir()
    (root / "last.json").write_text(json.dumps({"checkpoint": "step-0000009"}))
    with pytest.raises(InputError, match=r"last.json.*missing checkpoint 'step-0000009'"):
        load_checkpoint(root)


def test_pointers_are_read_strictly(trained, tmp_path) -> None:
    _, result, _ = trained
    import shutil

    root = tmp_path / "checkpoints"
    shutil.copytree(result.checkpoint, root / "step-0000004")
    for text, pattern in (("garbage", "not JSON"), ('["step-0000004"]', "pointer"),
                          ('{"checkpoint": "../../elsewhere"}', "elsewhere"),
                          ('{"checkpoint": 4}', "pointer"), ("", "not JSON")):
        (root / "last.json").write_text(text)
        with pytest.raises(InputError, match=rf"last.json, key 'checkpoint'.*{pattern}"):
            ckpt.read_pointer(root)
        with pytest.raises(InputError, match=r"last\.json"):
            ckpt.resume_folder(root)
    ckpt.write_pointer(root, root / "step-0000004")
    assert ckpt.read_pointer(root) == ckpt.resume_folder(root) == root / "step-0000004"
    (root / "best.json").write_text("{")
    with pytest.raises(InputError, match=r"best.json, key 'checkpoint'"):
        ckpt.resume_folder(root)  # the resumed run keeps the best folder: it must be named


def test_resume_folder_and_has_checkpoints(trained, tmp_path) -> None:
    _, result, _ = trained
    import shutil

    root = tmp_path / "checkpoints"
    assert not ckpt.has_checkpoints(root) and ckpt.resume_folder(root) is None
    root.mkdir()
    (root / "notes.txt").write_text("not a checkpoint")
    assert not ckpt.has_checkpoints(root) and ckpt.resume_folder(root) is None
    (root / "step-0000002").mkdir()  # a folder without its JSON is damage, not a fresh start
    assert ckpt.has_checkpoints(root)
    with pytest.raises(InputError, match=r"step-0000002/checkpoint.json.*without its JSON"):
        ckpt.resume_folder(root)
    shutil.copytree(result.checkpoint, root / "step-0000004")
    assert ckpt.resume_folder(root) == root / "step-0000004"  # no pointer: the newest folder


def test_checkpoint_json_entries_are_checked(trained, tmp_path) -> None:
    _, result, _ = trained
    import shutil

    d = tmp_path / "step-0000004"
    shutil.copytree(result.checkpoint, d)
    good = json.loads((d / "checkpoint.json").read_text())
    for change, key in (({"format_version": "one"}, "format_version"),
                        ({"files": {"model": "../model.safetensors"}}, "files.model"),
                        ({"files": ["model.safetensors"]}, "files"),
                        ({"state": 4}, "state")):
        (d / "checkpoint.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(InputError, match=rf"checkpoint.json, key '{key}'"):
            ckpt.read_checkpoint_info(d)


def test_check_rng_states_leaves_the_process_state() -> None:
    states = [ckpt.capture_rng_state()]
    before = torch.get_rng_state()
    random_before = random.getstate()
    ckpt.check_rng_states(states, "c.json")
    ckpt.check_rng_states(None, "c.json")
    assert torch.equal(torch.get_rng_state(), before) and random.getstate() == random_before
    broken = [dict(states[0], torch="not base64 of a state")]
    with pytest.raises(InputError, match=r"c.json, key 'rng\[0\]'"):
        ckpt.check_rng_states(broken, "c.json")
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(InputError, match=r"key 'rng'.*list"):
        ckpt.check_rng_states({"python": 1}, "c.json")


def test_full_disk_in_safetensors_is_an_os_error(tmp_path, monkeypatch) -> None:
    import errno

    import safetensors
    import safetensors.torch

    net = NoisyNet()
    first = ckpt.save_checkpoint(tmp_path, 1, model=net, info={"family": None})

    def full(*_a, **_k):
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, "
                                          "kind: StorageFull, message: \"No space left\" })")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(tmp_path, 2, model=net, info={"family": None})
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "step-0000001"]
    assert ckpt.resolve_checkpoint(tmp_path) == first

    def other(*_a, **_k):
        raise safetensors.SafetensorError("some other problem")

    monkeypatch.setattr(safetensors.torch, "save_model", other)
    with pytest.raises(safetensors.SafetensorError):
        ckpt.save_checkpoint(tmp_path, 2, model=net, info={"family": None})
