"""The one training entry point: ``--set`` overrides, data settings per family, the generic
``showerformer train`` command and its aliases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, run_in_process
from training_helpers import tiny_regressor_config, write_cube_file

from showerformer.errors import InputError
from showerformer.training import checkpoint as ckpt
from showerformer.training.config import apply_overrides, load_run_config, parse_override
from showerformer.training.datasets import DATA_KINDS, read_data_settings

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("model.d_model=64") == (["model", "d_model"], 64)
    assert parse_override("train.lr=3e-4") == (["train", "lr"], "3e-4")  # YAML 1.1: text
    assert parse_override("model.shower.layer_window=null") == (
        ["model", "shower", "layer_window"], None)
    assert parse_override("model.cnn_channels=[4, 8]") == (["model", "cnn_channels"], [4, 8])
    assert parse_override("data.in_memory=false") == (["data", "in_memory"], False)
    for bad in ("d_model=64", "model.d_model", "other.d_model=1", "model..x=1", "model.x=[1"):
        with pytest.raises(InputError) as info:
            parse_override(bad)
        assert info.value.key == "--set"


def test_apply_overrides_creates_sections_and_leaves_the_source_alone() -> None:
    raw = {"model": {"family": "point-flow", "shower": {"d_model": 32}}, "train": {"lr": 1.0}}
    out = apply_overrides(raw, ["model.shower.layer_window=3", "model.counts.n_blocks=1",
                                "train.lr=0.5", "data.val_fraction=0"])
    assert out["model"]["shower"] == {"d_model": 32, "layer_window": 3}
    assert out["model"]["counts"] == {"n_blocks": 1}
    assert out["train"]["lr"] == 0.5 and out["data"] == {"val_fraction": 0}
    assert raw["model"]["shower"] == {"d_model": 32} and "data" not in raw
    with pytest.raises(InputError, match=r"model.shower.d_model is 32, not a section"):
        apply_overrides(raw, ["model.shower.d_model.x=1"])


def test_overrides_are_checked_like_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_regressor_config()))
    run = load_run_config(path, overrides=["model.d_model=16", "train.lr=2e-3"])
    assert run.model["d_model"] == 16 and run.train.lr == 2e-3
    with pytest.raises(InputError) as info:
        load_run_config(path, overrides=["train.lr=fast"])
    assert info.value.key == "train.lr" and str(path) in str(info.value)


def test_data_settings_combine_the_kind_and_the_family() -> None:
    kind = DATA_KINDS["points"]
    family = {"pad_multiple": (int, 1, 1), "per_layer": (bool, True)}
    got = read_data_settings(kind, family, {"pad_multiple": 4})
    assert got == {"val_fraction": 0.05, "max_showers": None, "threshold": None,
                   "pad_multiple": 4, "per_layer": True}
    for data, key in (({"pad_multiple": 0}, "data.pad_multiple"),
                      ({"bogus": 1}, "data.bogus"), ({"val_fraction": 1.5}, "data.val_fraction"),
                      ({"threshold": -1.0}, "data.threshold"), ({"per_layer": "yes"},
                                                                "data.per_layer")):
        with pytest.raises(InputError) as info:
            read_data_settings(kind, family, data, "run.yaml", family="point-flow")
        assert info.value.key == key and "run.yaml" in str(info.value)


def test_generic_train_command_with_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_cube_file(tmp_path / "cube.h5", n=24, grid=16)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_regressor_config()))
    out = tmp_path / "run"
    res = run_in_process(capsys, "train", "--config", str(cfg), "--data", str(data), "--out", str(out),
                   "--set", "train.max_steps=2", "--set", "model.head_hidden=[6]",
                   "--no-progress")
    assert res.code == 0, res.stderr
    assert "done: 2 steps" in res.stdout
    info = ckpt.read_checkpoint_info(out)
    assert info["model_config"]["head_hidden"] == [6] and info["state"]["step"] == 2
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["model"]["head_hidden"] == [6] and resolved["train"]["max_steps"] == 2
    # resume through the same command
    res = run_in_process(capsys, "train", "--config", str(cfg), "--data", str(data), "--out", str(out),
                   "--set", "train.max_steps=3", "--set", "model.head_hidden=[6]", "--resume",
                   "--no-progress")
    assert res.code == 0, res.stderr
    assert ckpt.read_checkpoint_info(out)["state"]["step"] == 3


@pytest.mark.parametrize(("args", "fragments"), [
    (["--set", "lr=1"], ("--set", "dotted key")),
    (["--set", "train.lr=fast"], ("run.yaml", "train.lr", "number")),
    (["--set", "model.family=bogus"], ("model.family", "bogus")),
    (["--set", "data.bogus=1"], ("data.bogus",)),
])
def test_generic_train_command_refuses_bad_overrides(tmp_path: Path, args: list[str],
                                                     fragments: tuple[str, ...],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = write_cube_file(tmp_path / "cube.h5", n=12, grid=16)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_regressor_config()))
    res = run_in_process(capsys, "train", "--config", str(cfg), "--data", str(data), "--out",
                   str(tmp_path / "run"), *args)
    assert_one_line_error(res, *fragments)
    assert not (tmp_path / "run").exists()


def test_generic_train_command_needs_config_and_data(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    res = run_in_process(capsys, "train", "--data", str(tmp_path / "x.h5"))
    assert res.code == 2 and "--config" in res.stderr


def test_point_flow_alias_refuses_another_family(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = write_cube_file(tmp_path / "cube.h5", n=12, grid=16)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_regressor_config()))
    res = run_in_process(capsys, "train", "point-flow", "--config", str(cfg), "--data", str(data))
    assert res.code == 2 and "model.family" in res.stderr and "point-flow" in res.stderr
