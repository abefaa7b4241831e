"""Tests of regression runs on sparse voxel files: train_regressor, predictions files, the
train / predict commands and the shipped YAML configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import typer
from training_helpers import tiny_regressor_config, write_cube_file
from typer.testing import CliRunner

from showerformer.errors import InputError
from showerformer.evaluation.regression import read_predictions
from showerformer.models.particle_cnn_transformer import ParticleCNNTransformer
from showerformer.training import load_checkpoint, load_run_config
from showerformer.training.data import SparseVoxelDataset
from showerformer.training.regressor import predict_file, train_regressor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return write_cube_file(tmp_path_factory.mktemp("data") / "cube16.h5", n=40, grid=16)


@pytest.fixture(scope="module")
def run(cube, tmp_path_factory):
    out = tmp_path_factory.mktemp("reg")
    result = train_regressor(cube, tiny_regressor_config(ema_decay=0.9), out, progress=False)
    return result, out


def test_train_regressor(run, cube) -> None:
    result, out = run
    assert result.step == 6 and result.epoch == 2  # 30 training events, batches of 8
    model, info = load_checkpoint(out)
    assert isinstance(model, ParticleCNNTransformer) and model.config.grid == 16
    prep = info["preprocessing"]
    targets = SparseVoxelDataset(cube).targets
    train_targets = targets[np.setdiff1d(np.arange(40), _val_indices())]
    # the target normalisation comes from the training events, in GeV
    assert prep["target_mean_gev"] == pytest.approx(train_targets.mean())
    assert prep["target_std_gev"] == pytest.approx(train_targets.std())
    assert model.config.target_mean_gev == pytest.approx(train_targets.mean())
    assert prep["target_key"] == "momentum" and prep["target_unit"] == "GeV"
    assert prep["shape"] == [16, 16, 16] and prep["geometry"]["name"] == "cube16"
    assert info["metadata"]["data"]["n_train"] == 30 and info["metadata"]["data"]["n_val"] == 10
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["model"]["family"] == "particle-cnn-transformer"
    assert resolved["model"]["target_std_gev"] == pytest.approx(train_targets.std())


def _val_indices() -> np.ndarray:
    from showerformer.training import split_indices

    return split_indices(40, 0.25, seed=0)[1]


def test_predict_file_layout(run, cube, tmp_path) -> None:
    _, out = run
    target = tmp_path / "pred.h5"
    summary = predict_file(out, cube, target, batch_size=16, device="cpu")
    with h5py.File(target) as f:
        assert set(f) == {"true", "pred"}
        assert f["true"].shape == f["pred"].shape == (40,)
        assert f.attrs["quantity"] == "momentum" and f.attrs["unit"] == "GeV"
        assert f.attrs["weights"] == "ema"
        true, pred = f["true"][()], f["pred"][()]
    np.testing.assert_allclose(true, SparseVoxelDataset(cube).targets)
    model, _ = load_checkpoint(out)
    dense = SparseVoxelDataset(cube)
    batch = dense.collate_fn([dense[i] for i in range(5)])
    np.testing.assert_allclose(pred[:5], model.predict(batch["voxels"]).numpy(), rtol=1e-5)
    assert summary["events"] == 40 and summary["mae"] == pytest.approx(np.abs(pred - true).mean())
    data = read_predictions(target)
    assert data["quantity"] == "momentum" and data["pred"].shape == (1, 40)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_predict_with_analysis(run, cube, tmp_path) -> None:
    _, out = run
    target = tmp_path / "pred.h5"
    summary = predict_file(out, cube, target, batch_size=16, device="cpu", analysis=True)
    model, _ = load_checkpoint(out)
    d = model.config.d_model
    with h5py.File(target) as f:
        assert set(f) == {"true", "pred", "method", "analysis"}
        g = f["analysis"]
        assert g.attrs["method"] == "particle-cnn-transformer"
        assert list(g.attrs["scales"]) == ["query", *(f"{r}^3" for r in
                                                     model.config.scale_resolutions)]
        assert g["cls"].shape == (40, d) and g["cls"].dtype == np.float32
        att = g["cross_scale_attention"][()]
        pred = f["pred"][()]
    assert att.shape == (40, 8, 1 + model.config.n_scales)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)
    plain = predict_file(out, cube, tmp_path / "plain.h5", batch_size=16, device="cpu")
    with h5py.File(tmp_path / "plain.h5") as f:
        np.testing.assert_allclose(pred, f["pred"][()], rtol=1e-5, atol=1e-6)
    assert summary["mae"] == pytest.approx(plain["mae"], rel=1e-5)
    data = read_predictions(target)
    assert data["analysis"]["method"] == "particle-cnn-transformer"
    assert data["analysis"]["cls"].shape == (40, d)


def test_predict_errors(run, tmp_path) -> None:
    _, out = run
    other = write_cube_file(tmp_path / "cube8.h5", n=4, grid=8)
    with pytest.raises(InputError, match=r"cube8.h5, key 'geometry'.*\(16, 16, 16\)"):
        predict_file(out, other, tmp_path / "p.h5", device="cpu")
    with pytest.raises(InputError, match="missing_run"):
        predict_file(tmp_path / "missing_run", other, tmp_path / "p.h5", device="cpu")
    assert not (tmp_path / "p.h5").exists()


def test_regressor_config_errors(cube, tmp_path) -> None:
    cfg = tiny_regressor_config()
    cfg["model"]["grid"] = 32
    with pytest.raises(InputError, match=r"key 'model.grid'.*16"):
        train_regressor(cube, cfg, tmp_path, progress=False)
    cfg = tiny_regressor_config()
    cfg["model"]["d_modell"] = 3
    with pytest.raises(InputError, match=r"key 'model.d_modell'"):
        train_regressor(cube, cfg, tmp_path, progress=False)
    cfg = tiny_regressor_config()
    cfg["model"]["family"] = "unknown"
    with pytest.raises(InputError, match=r"key 'model.family'.*particle-cnn-transformer"):
        train_regressor(cube, cfg, tmp_path, progress=False)


def test_commands(cube, tmp_path) -> None:
    import yaml

    from showerformer.commands.train import predict, train_app

    app = typer.Typer()
    app.add_typer(train_app, name="train")
    app.command()(predict)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_regressor_config()))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "regressor", "--data", str(cube), "--config", str(config),
                              "--out", str(tmp_path / "run"), "--max-steps", "2",
                              "--val-fraction", "0.2", "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "2 steps" in res.output and "step-0000002" in res.output
    assert "best validation loss -;" not in res.output  # validated at the final step
    res = runner.invoke(app, ["predict", str(tmp_path / "run"), "--data", str(cube),
                              "--out", str(tmp_path / "p.h5"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "wrote 40 predictions (momentum in GeV" in res.output and "MAE" in res.output
    assert read_predictions(tmp_path / "p.h5")["true"].shape == (40,)


@pytest.mark.parametrize(("name", "grid", "params"), [("regressor_64.yaml", 64, 2_100_000),
                                                      ("regressor_64_cpu.yaml", 64, 2_100_000),
                                                      ("regressor_32_cpu.yaml", 32, 50_000)])
def test_shipped_configs(tmp_path, name, grid, params) -> None:
    run = load_run_config(CONFIGS / name, data_keys=("target_key", "target_scale",
                                                     "val_fraction", "in_memory"))
    assert run.family == "particle-cnn-transformer" and run.model["grid"] == grid
    assert run.data["target_key"] == "momentum" and run.data["target_scale"] == 1e-3
    path = write_cube_file(tmp_path / "c.h5", n=4, grid=grid)
    model = ParticleCNNTransformer.from_data(run.model, SparseVoxelDataset(path), run.data)
    assert model.config.grid == grid
    assert sum(p.numel() for p in model.parameters()) > params


def test_data_is_checked_before_training(cube, tmp_path) -> None:
    import yaml

    from showerformer.training.regressor import regression_datasets

    nan = tmp_path / "nan.h5"
    shutil.copy(cube, nan)
    with h5py.File(nan, "r+") as f:
        f["momentum"][5] = np.inf
    with pytest.raises(InputError, match=r"nan.h5, key 'momentum': 1 of 40 targets are NaN or "
                                         r"infinite \(first at event 5\)"):
        regression_datasets(nan, val_fraction=0.25)
    with pytest.raises(InputError, match=r"nan.h5, key 'momentum'"):
        regression_datasets(cube, val_data=nan)
    with pytest.raises(InputError, match=r"key '--val-fraction'.*\[0, 1\)"):
        regression_datasets(cube, val_fraction=1.0)
    train, val = regression_datasets(cube, val_fraction=0)
    assert len(train) == 40 and val is None
    # the data: section names the config file and the key
    for key, value, pattern in (("target_scale", -1.0, "positive"),
                                ("in_memory", "yes", "true or false"),
                                ("val_fraction", 2, r"\[0, 1\)")):
        cfg = tiny_regressor_config()
        cfg["data"][key] = value
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with pytest.raises(InputError, match=rf"run.yaml, key 'data.{key}'.*{pattern}"):
            train_regressor(cube, path, tmp_path / "out", progress=False)
    cfg = tiny_regressor_config(batch_size=32)  # 30 training events: not one batch
    with pytest.raises(InputError, match=r"cube16.h5, key 'showers': 30 training samples, "
                                         r"fewer than train.batch_size=32"):
        train_regressor(cube, cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_predict_checks_its_options_before_work(run, cube, tmp_path) -> None:
    from showerformer.errors import OutputError

    _, out = run
    with pytest.raises(InputError, match=r"key '--batch-size'"):
        predict_file(out, cube, tmp_path / "p.h5", batch_size=0, device="cpu")
    with pytest.raises(OutputError, match="is a directory"):
        predict_file(out, cube, tmp_path, device="cpu")
    assert list(tmp_path.iterdir()) == []
