"""Tests of the trainer: exact resume, the CSV log, validation with EMA, early stopping,
precision, and the checks of TrainConfig and YAML run configs."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
from training_helpers import NoisyNet, ScalarModel, regression_data

from showerformer.errors import InputError
from showerformer.training import (
    TensorDictDataset,
    TrainConfig,
    Trainer,
    TrainingError,
    WarmupCosine,
    load_run_config,
)
from showerformer.training.log import LOG_COLUMNS
from showerformer.training.trainer import autocast_dtype

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(out, **kw) -> TrainConfig:
    base = dict(lr=1e-2, epochs=3, batch_size=8, warmup_steps=2, ema_decay=0.9,
                checkpoint_every=4, keep_checkpoints=2, log_every=1, out_dir=str(out),
                device="cpu", tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def _run(out, *, init_seed=0, stop_at_step=None, resume=False, **kw):
    torch.manual_seed(init_seed)
    model = NoisyNet()
    train, val = regression_data(48, 16)  # 6 batches of 8 per epoch
    trainer = Trainer(model, train, val, _config(out, **kw), progress=False)
    return trainer, trainer.fit(resume=resume, stop_at_step=stop_at_step)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: 3 epochs of 6 steps with dropout, DropPath and EMA."""
    out = tmp_path_factory.mktemp("reference")
    return (*_run(out), out)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("stop", [4, 7, 12])  # on a periodic checkpoint, mid-epoch, epoch end
def test_resume_is_exact(reference, tmp_path, stop) -> None:
    ref_trainer, ref_result, ref_out = reference
    _, interrupted = _run(tmp_path, stop_at_step=stop)
    assert interrupted.interrupted and interrupted.step == stop
    assert interrupted.checkpoint.name == f"step-{stop:07d}"
    # a fresh process would start from other weights: use another initialisation
    trainer, result = _run(tmp_path, init_seed=123, resume=True)
    assert not result.interrupted and result.step == ref_result.step == 18
    assert _same_weights(trainer.model, ref_trainer.model)
    assert _same_weights(trainer.ema.module, ref_trainer.ema.module)
    assert trainer.optimizer.state_dict()["state"][0]["exp_avg"].equal(
        ref_trainer.optimizer.state_dict()["state"][0]["exp_avg"])
    assert result.best_val_loss == ref_result.best_val_loss
    # the log of the resumed run equals the uninterrupted one (apart from the timing)
    got, want = _rows(tmp_path / "log.csv"), _rows(ref_out / "log.csv")
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        g.pop("samples_per_s"), w.pop("samples_per_s")
        assert g == w


def test_resume_from_a_copied_checkpoint_after_the_run_went_on(reference, tmp_path) -> None:
    # a SIGKILL after a checkpoint leaves that checkpoint; later progress is lost and redone
    _, _, ref_out = reference
    ref_trainer = reference[0]
    shutil.copytree(ref_out / "checkpoints" / "step-0000016", tmp_path / "kept" / "step-0000016")
    trainer, result = _run(tmp_path / "new", init_seed=7, resume=tmp_path / "kept" / "step-0000016")
    assert result.step == 18 and _same_weights(trainer.model, ref_trainer.model)


def test_uninterrupted_run_differs_with_another_seed(reference, tmp_path) -> None:
    trainer, _ = _run(tmp_path, seed=1)
    assert not _same_weights(trainer.model, reference[0].model)


def test_csv_log_contents(reference) -> None:
    trainer, result, out = reference
    rows = _rows(out / "log.csv")
    assert tuple(rows[0]) == LOG_COLUMNS
    train_rows = [r for r in rows if r["loss"]]
    val_rows = [r for r in rows if r["val_loss"]]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 19))
    assert [(int(r["step"]), int(r["epoch"])) for r in val_rows] == [(6, 0), (12, 1), (18, 2)]
    schedule = WarmupCosine(1e-2, 2, 18, 0.01)
    for r in train_rows:
        step = int(r["step"])
        assert float(r["lr"]) == pytest.approx(schedule(step - 1))  # lr of that update
        assert int(r["epoch"]) == (step - 1) // 6
        assert math.isfinite(float(r["loss"])) and float(r["grad_norm"]) > 0
        assert float(r["samples_per_s"]) > 0
    assert float(train_rows[1]["lr"]) == pytest.approx(1e-2)  # end of the warmup
    vals = [float(r["val_loss"]) for r in val_rows]
    assert float(val_rows[-1]["best_val_loss"]) == pytest.approx(min(vals))
    assert result.best_val_loss == pytest.approx(min(vals))
    assert result.history[-1]["val_loss"] == pytest.approx(vals[-1])
    # validation used the EMA weights
    _, val = regression_data(48, 16)
    batch = {k: v for k, v in val.tensors.items()}
    with torch.no_grad():
        ema_loss = trainer.ema.module.loss(batch).item()
        raw = trainer.model.eval()
        raw_loss = raw.loss(batch).item()
    assert vals[-1] == pytest.approx(ema_loss, rel=1e-5)
    assert abs(raw_loss - ema_loss) > 1e-4
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["batch_size"] == 8 and cfg["ema_decay"] == 0.9


def test_early_stopping(tmp_path) -> None:
    # training pulls w towards +1 while the validation targets sit at -1: the validation loss
    # grows every epoch, so with patience 2 the run stops after its third epoch
    train = TensorDictDataset({"y": torch.ones(16)})
    val = TensorDictDataset({"y": -torch.ones(4)})
    cfg = TrainConfig(lr=0.05, epochs=20, batch_size=4, early_stopping_patience=2,
                      checkpoint_every=None, keep_checkpoints=1, out_dir=str(tmp_path),
                      device="cpu", tensorboard=False, grad_clip=None)
    result = Trainer(ScalarModel(), train, val, cfg, progress=False).fit()
    assert result.stopped_early and result.epoch == 3 and result.step == 12
    vals = [r["val_loss"] for r in result.history if r.get("val_loss") is not None]
    assert len(vals) == 3 and vals[0] < vals[1] < vals[2]
    assert result.best_val_loss == vals[0]
    root = tmp_path / "checkpoints"
    # the best checkpoint (epoch 1) is kept beside the last one despite keep_checkpoints=1
    assert json.loads((root / "best.json").read_text())["checkpoint"] == "step-0000004"
    assert json.loads((root / "last.json").read_text())["checkpoint"] == "step-0000012"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-0000004", "step-0000012"]
    state = json.loads((root / "step-0000012" / "checkpoint.json").read_text())["state"]
    assert state["bad_validations"] == 2 and state["best_val_loss"] == pytest.approx(vals[0])
    # resuming a stopped run does nothing more
    again = Trainer(ScalarModel(), train, val, cfg.replace(early_stopping_patience=2),
                    progress=False).fit(resume=True)
    assert again.step == 12


def test_val_every_steps_and_max_steps(tmp_path) -> None:
    train, val = regression_data(48, 16)
    cfg = _config(tmp_path, epochs=None, max_steps=10, val_every=4, ema_decay=None,
                  checkpoint_every=None, log_every=5)
    result = Trainer(NoisyNet(), train, val, cfg, progress=False).fit()
    rows = _rows(tmp_path / "log.csv")
    assert [(r["step"], bool(r["loss"]), bool(r["val_loss"])) for r in rows] == [
        ("4", True, False), ("4", False, True), ("5", True, False), ("8", True, False),
        ("8", False, True), ("10", True, False), ("10", False, True)]  # + the final one
    assert result.step == 10 and result.epoch == 1


def test_precision_and_progress(tmp_path, capsys) -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    train, val = regression_data(16, 8)
    cfg = _config(tmp_path, epochs=1, precision="bf16", tensorboard=True)
    result = Trainer(NoisyNet(), train, val, cfg, progress=True).fit()
    assert result.step == 2 and math.isfinite(result.best_val_loss)
    err = capsys.readouterr().err
    assert "training" in err
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        assert err.count("TensorBoard is not installed") == 1


def test_resume_without_checkpoint_starts_fresh(tmp_path) -> None:
    train, _ = regression_data(16, 8)
    cfg = _config(tmp_path, epochs=1, ema_decay=None)
    assert Trainer(NoisyNet(), train, None, cfg, progress=False).fit(resume=True).step == 2


def test_trainer_errors(tmp_path) -> None:
    train, _ = regression_data(4, 1)
    with pytest.raises(InputError, match="4 training samples for batch_size=8"):
        Trainer(NoisyNet(), train, None, _config(tmp_path), progress=False)
    with pytest.raises(TypeError, match="loss"):
        Trainer(torch.nn.Linear(2, 2), train, None, _config(tmp_path, batch_size=2))
    bad = TensorDictDataset({"y": torch.full((8,), float("nan"))})
    with pytest.raises(TrainingError, match="non-finite training loss at step 1"):
        Trainer(ScalarModel(), bad, None, _config(tmp_path, batch_size=4, ema_decay=None),
                progress=False).fit()
    # resuming with another dataset size cannot be exact
    train16, _ = regression_data(16, 1)
    Trainer(NoisyNet(), train16, None, _config(tmp_path / "r", epochs=1, ema_decay=None),
            progress=False).fit()
    with pytest.raises(InputError, match="batches per epoch"):
        Trainer(NoisyNet(), regression_data(24, 1)[0], None,
                _config(tmp_path / "r", epochs=1, ema_decay=None), progress=False).fit(resume=True)


# ---------------------------------------------------------------------------- configs


def test_train_config_dict_round_trip() -> None:
    cfg = TrainConfig(epochs=2, betas=(0.8, 0.99), ema_decay=0.999)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({"max_steps": 5, "lr": "3e-4", "betas": [0.9, 0.95]}).lr == 3e-4
    with pytest.raises(InputError, match="max_steps or epochs"):
        TrainConfig()


_HEAD = "model:\n  family: particle-cnn-transformer\n"


@pytest.mark.parametrize(("text", "pattern"), [
    (_HEAD + "train:\n  epochs: 1\n  lrr: 0.1\n", r"run.yaml, key 'train.lrr': unknown setting"),
    (_HEAD + "train:\n  epochs: 1\n  lr: fast\n", r"key 'train.lr': 'fast' \(expected a number\)"),
    (_HEAD + "train:\n  epochs: 1\n  batch_size: 2.5\n", r"key 'train.batch_size'.*an integer"),
    (_HEAD + "train:\n  epochs: 1\n  precision: fp16\n",
     r"key 'train.precision'.*fp32 or bf16 or auto"),
    (_HEAD + "train:\n  epochs: 0\n", r"key 'train.epochs'.*positive integer"),
    (_HEAD + "train:\n  epochs: 1\n  betas: [0.9]\n", r"key 'train.betas'.*list of 2"),
    (_HEAD + "train: [1, 2]\n", r"key 'train'.*mapping"),
    (_HEAD + "train:\n  epochs: 1\noptim: {}\n", r"key 'optim': unknown section"),
    (_HEAD + "train:\n  epochs: 1\ndata:\n  targett: p\n", r"key 'data.targett'"),
    ("train:\n  epochs: 1\n", r"key 'model.family': no model family"),
    ("train: {epochs: 1\n", r"run.yaml: YAML syntax error"),
    ("- 1\n- 2\n", r"top level is a list"),
])
def test_yaml_errors(tmp_path, text, pattern) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=pattern):
        load_run_config(path, data_keys=("target_key",))


def test_yaml_missing_file_and_good_file(tmp_path) -> None:
    with pytest.raises(InputError, match=r"nope\.yaml: cannot read"):
        load_run_config(tmp_path / "nope.yaml")
    path = tmp_path / "ok.yaml"
    path.write_text("model:\n  family: particle-cnn-transformer\n  grid: 32\n"
                    "train:\n  epochs: 2\n  lr: 1.0e-3\n  ema_decay: null\n"
                    "data:\n  val_fraction: 0.2\n")
    run = load_run_config(path)
    assert run.family == "particle-cnn-transformer" and run.model == {"grid": 32}
    assert run.train.epochs == 2 and run.train.lr == 1e-3 and run.train.ema_decay is None
    assert run.data == {"val_fraction": 0.2} and run.path == str(path)
    assert TrainConfig.from_yaml(path).epochs == 2


# ---------------------------------------------------------------------------- run folders


def _files(root) -> dict:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _small(out, **kw):
    train, val = regression_data(16, 8)
    torch.manual_seed(0)
    cfg = _config(out, **{"epochs": 1, "ema_decay": None, "checkpoint_every": None, **kw})
    return Trainer(NoisyNet(), train, val, cfg, progress=False)


def test_fresh_run_never_replaces_checkpoints(tmp_path) -> None:
    from showerformer.errors import OutputError

    _small(tmp_path).fit()
    before = _files(tmp_path)
    with pytest.raises(OutputError, match=r"--out .*earlier run.*--resume.*--overwrite"):
        _small(tmp_path).fit()
    assert _files(tmp_path) == before
    (tmp_path / "checkpoints" / "last.json").write_text("garbage")  # still a run: refused
    with pytest.raises(OutputError, match="earlier run"):
        _small(tmp_path).fit()
    result = _small(tmp_path, seed=1).fit(overwrite=True)  # explicit: replaced
    assert result.step == 2 and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) \
        == ["best.json", "last.json", "step-0000002"]
    assert json.loads((tmp_path / "train_config.json").read_text())["seed"] == 1
    with pytest.raises(InputError, match="--overwrite"):
        _small(tmp_path).fit(resume=True, overwrite=True)


@pytest.mark.parametrize(("damage", "pattern"), [
    (lambda r: (r / "checkpoints" / "last.json").write_text('{"checkpoint": "step-'),
     r"last.json, key 'checkpoint'"),
    (lambda r: (r / "checkpoints" / "step-0000002" / "checkpoint.json").write_text("{"),
     r"step-0000002/checkpoint.json: unreadable"),
    (lambda r: (r / "checkpoints" / "step-0000002" / "model.safetensors").unlink(),
     r"key 'files.model'"),
    (lambda r: (r / "log.csv").write_bytes(b"\xff\xfe\x00garbage"), r"log.csv"),
])
def test_resume_with_damaged_metadata_changes_nothing(tmp_path, damage, pattern) -> None:
    _small(tmp_path).fit()
    damage(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(InputError, match=pattern):
        _small(tmp_path).fit(resume=True)
    assert _files(tmp_path) == before


def test_resume_checks_the_model_config(tmp_path) -> None:
    from showerformer.models.particle_cnn_transformer import (
        ParticleCNNTransformer,
        ParticleCNNTransformerConfig,
    )

    def run(d_model: int) -> Trainer:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        data = TensorDictDataset({"voxels": torch.rand(8, 16, 16, 16, generator=g),
                                  "target": torch.rand(8, generator=g)})
        cfg = ParticleCNNTransformerConfig(grid=16, d_model=d_model, n_heads=1, mlp_ratio=2,
                                           cnn_channels=(4, 4, 8, 12), cnn_depths=(0, 0, 1, 1),
                                           head_hidden=(8,))
        return Trainer(ParticleCNNTransformer(cfg), data, None,
                       _config(tmp_path, epochs=1, batch_size=4, ema_decay=None,
                               checkpoint_every=None), progress=False)

    run(12).fit()
    before = _files(tmp_path)
    with pytest.raises(InputError, match=r"checkpoint.json, key 'model_config.d_model': 12 in "
                                         r"the checkpoint, 18 in this run"):
        run(18).fit(resume=True)
    assert _files(tmp_path) == before


def test_full_disk_keeps_the_earlier_checkpoint(tmp_path, monkeypatch) -> None:
    import errno

    from showerformer.errors import OutputError
    from showerformer.training import checkpoint as ckpt

    _small(tmp_path).fit()
    saved = _files(tmp_path / "checkpoints")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_save_module", full)
    with pytest.raises(OutputError, match=r"--out .*disk became full") as info:
        _small(tmp_path, epochs=2).fit(resume=True)
    assert isinstance(info.value.__cause__, OSError)
    assert _files(tmp_path / "checkpoints") == saved


def test_check_setting_and_seed() -> None:
    from showerformer.training.config import check_setting

    assert check_setting("3e-4", float, "lr") == 3e-4
    assert check_setting(None, int | None, "k") is None
    with pytest.raises(InputError, match=r"run.yaml, key 'data.k': '8' is a string \(expected "
                                         r"an integer"):
        check_setting("8", int, "data.k", "run.yaml")
    with pytest.raises(InputError, match=r"key 'lr'.*finite"):
        check_setting(float("nan"), float, "lr")
    with pytest.raises(InputError, match=r"key 'seed'.*non-negative"):
        TrainConfig(epochs=1, seed=-1)
