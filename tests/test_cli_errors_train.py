"""One-line errors of ``train regressor``, ``train point-flow``, ``predict`` and ``sample``: bad
files, options, output paths and checkpoint metadata end with exit status 2 and one line naming
the file (or option) and the key, and no file that existed before changes."""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from cli_helpers import assert_one_line_error, run_in_process, snapshot
from training_helpers import (
    tiny_point_flow_config,
    tiny_regressor_config,
    write_cube_file,
    write_empty_sparse_file,
)

from showerformer.simulation import simulate_to_file
from showerformer.training.regressor import train_regressor
from showerformer.training.run import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _edit_h5(src: Path, dst: Path, key: str, edit: Callable[[np.ndarray], None]) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        values = f[key][()]
        edit(values)
        f[key][...] = values
    return dst


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Input files, configs and one trained tiny run of each family."""
    root = tmp_path_factory.mktemp("cli_train")
    a: dict[str, Path] = {"root": root}
    a["cube"] = write_cube_file(root / "cube.h5", n=40, grid=16)
    a["cube8"] = write_cube_file(root / "cube8.h5", n=4, grid=8)
    a["empty"] = write_empty_sparse_file(root / "empty.h5")
    a["cube_nan"] = _edit_h5(a["cube"], root / "cube_nan.h5", "momentum",
                             lambda v: v.__setitem__(3, np.nan))
    a["multi"] = root / "multi.h5"
    simulate_to_file(a["multi"], "multi", n=40, seed=4, energy="1:20", progress=False)
    a["multi_pdg"] = _edit_h5(a["multi"], root / "multi_pdg.h5", "pdg",
                              lambda v: v.__setitem__(2, 999))
    with h5py.File(a["multi"]) as f:
        first = int(np.flatnonzero(f["events"][0, :, 3] > 0)[0])
    a["multi_layer"] = _edit_h5(a["multi"], root / "multi_layer.h5", "layer",
                                lambda v: v.__setitem__((0, first), 70))
    reg = tiny_regressor_config()
    a["reg_yaml"] = _yaml(root / "reg.yaml", reg)
    bad = json.loads(json.dumps(reg))
    bad["model"]["d_model"] = -4
    a["reg_bad"] = _yaml(root / "reg_bad.yaml", bad)
    other = json.loads(json.dumps(reg))
    other["model"]["d_model"] = 18
    a["reg_other"] = _yaml(root / "reg_other.yaml", other)
    a["reg_long"] = _yaml(root / "reg_long.yaml", tiny_regressor_config(epochs=3))
    pf = tiny_point_flow_config(ema_decay=0.9)
    a["pf_yaml"] = _yaml(root / "pf.yaml", pf)
    bad = json.loads(json.dumps(pf))
    bad["model"]["shower"]["d_model"] = -4
    a["pf_bad"] = _yaml(root / "pf_bad.yaml", bad)
    a["pf_long"] = _yaml(root / "pf_long.yaml", tiny_point_flow_config(ema_decay=0.9,
                                                                      max_steps=3))
    a["reg_run"] = root / "reg_run"
    train_regressor(a["cube"], reg, a["reg_run"], progress=False)
    a["pf_run"] = root / "pf_run"
    train(pf, a["multi"], a["pf_run"], progress=False)
    return a


@dataclass
class Ctx:
    """What a case sees: the shared inputs, a private copy of a trained run, a scratch folder."""

    a: dict[str, Path]
    run: Path
    tmp: Path

    @property
    def ckpt(self) -> Path:
        """The run's last checkpoint folder."""
        return self.run / "checkpoints" / json.loads(
            (self.run / "checkpoints" / "last.json").read_text())["checkpoint"]


@dataclass
class Case:
    """One bad input: the command's arguments, the fragments of the expected line, a damage
    done to the run copy (or a monkeypatch) before the command, and what must stay unchanged
    besides the inputs (``"run"``: the whole run folder, ``"checkpoints"``: only them)."""

    id: str
    args: Callable[[Ctx], list]
    fragments: Callable[[Ctx], tuple]
    damage: Callable[[Ctx, pytest.MonkeyPatch], None] | None = None
    keep: str = "run"


def _write(text: str, *parts: str) -> Callable[[Ctx, pytest.MonkeyPatch], None]:
    def damage(c: Ctx, _mp: pytest.MonkeyPatch) -> None:
        path = c.run.joinpath(*parts) if parts[0] != "<last>" else c.ckpt.joinpath(*parts[1:])
        path.write_text(text)
    return damage


def _edit_checkpoint(edit: Callable[[dict], None]) -> Callable[[Ctx, pytest.MonkeyPatch], None]:
    def damage(c: Ctx, _mp: pytest.MonkeyPatch) -> None:
        path = c.ckpt / "checkpoint.json"
        info = json.loads(path.read_text())
        edit(info)
        path.write_text(json.dumps(info, indent=1))
    return damage


def _remove(name: str) -> Callable[[Ctx, pytest.MonkeyPatch], None]:
    def damage(c: Ctx, _mp: pytest.MonkeyPatch) -> None:
        (c.ckpt / name).unlink()
    return damage


def _truncate_last(c: Ctx, _mp: pytest.MonkeyPatch) -> None:
    path = c.run / "checkpoints" / "last.json"
    path.write_text(path.read_text()[:12])


def _full_disk(c: Ctx, mp: pytest.MonkeyPatch) -> None:
    import safetensors
    import safetensors.torch

    def full(*_a: object, **_k: object) -> None:
        raise safetensors.SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
            "\"No space left on device\" })")

    mp.setattr(safetensors.torch, "save_model", full)


DAMAGED_RESUME = [  # (id, damage, fragments): the same for both training commands
    ("garbage last.json", _write("garbage", "checkpoints", "last.json"),
     lambda c: ("last.json", "key 'checkpoint'")),
    ("truncated last.json", _truncate_last, lambda c: ("last.json", "key 'checkpoint'")),
    ("last.json names a missing folder",
     _write('{"checkpoint": "step-0000099"}', "checkpoints", "last.json"),
     lambda c: ("last.json", "step-0000099")),
    ("garbage best.json", _write("{", "checkpoints", "best.json"),
     lambda c: ("best.json", "key 'checkpoint'")),
    ("checkpoint.json does not parse", _write("{not json", "<last>", "checkpoint.json"),
     lambda c: ("checkpoint.json", "unreadable")),
    ("weights missing", _remove("model.safetensors"),
     lambda c: ("checkpoint.json", "files.model", "model.safetensors")),
    ("optimizer missing", _remove("optimizer.safetensors"),
     lambda c: ("checkpoint.json", "files.optimizer")),
    ("state damaged", _edit_checkpoint(lambda d: d["state"].update(step="six")),
     lambda c: ("checkpoint.json", "state.step")),
    ("random states damaged", _edit_checkpoint(lambda d: d.update(rng=[{"python": 3}])),
     lambda c: ("checkpoint.json", "rng[0]")),
    ("other family", _edit_checkpoint(lambda d: d.update(family="panshower")),
     lambda c: ("checkpoint.json", "key 'family'")),
]


# ------------------------------------------------------------------------- train regressor


def _reg(c: Ctx, *extra: object, data: str = "cube", config: str = "reg_yaml",
         out: Path | None = None) -> list:
    return ["--data", c.a[data], "--config", c.a[config], "--out", out or c.run,
            "--no-progress", "--device", "cpu", *extra]


REGRESSOR_CASES = [
    Case("missing data file", lambda c: [*_reg(c, out=c.tmp / "new"), "--data", c.tmp / "no.h5"],
         lambda c: ("no.h5",)),
    Case("zero showers", lambda c: _reg(c, data="empty", out=c.tmp / "new"),
         lambda c: ("empty.h5",)),
    Case("NaN target", lambda c: _reg(c, data="cube_nan", out=c.tmp / "new"),
         lambda c: ("cube_nan.h5", "key 'momentum'", "NaN")),
    Case("bad model config", lambda c: _reg(c, config="reg_bad", out=c.tmp / "new"),
         lambda c: ("reg_bad.yaml", "model.d_model", "positive")),
    Case("val-fraction above 1", lambda c: _reg(c, "--val-fraction", "1.5", out=c.tmp / "new"),
         lambda c: ("--val-fraction",)),
    Case("max-steps 0", lambda c: _reg(c, "--max-steps", "0", out=c.tmp / "new"),
         lambda c: ("--max-steps",)),
    Case("unknown device", lambda c: _reg(c, "--device", "abacus", out=c.tmp / "new"),
         lambda c: ("--device", "abacus")),
    Case("resume with overwrite", lambda c: _reg(c, "--resume", "--overwrite"),
         lambda c: ("--overwrite",)),
    Case("out is a file", lambda c: _reg(c, out=c.a["cube"]),
         lambda c: ("--out", "cube.h5", "is a file")),
    Case("out below a file", lambda c: _reg(c, out=c.a["cube"] / "run"),
         lambda c: ("--out", "cube.h5", "cannot be created")),
    Case("fresh run into a run folder", lambda c: _reg(c),
         lambda c: ("--out", "earlier run", "--resume")),
    *[Case(f"resume: {i}", lambda c: _reg(c, "--resume"), f, d)
      for i, d, f in DAMAGED_RESUME],
    Case("resume: other model config", lambda c: _reg(c, "--resume", config="reg_other"),
         lambda c: ("checkpoint.json", "model_config.d_model", "12", "18")),
    Case("resume: string width in checkpoint.json",
         lambda c: _reg(c, "--resume"),
         lambda c: ("checkpoint.json", "model_config.d_model", "string", "integer"),
         _edit_checkpoint(lambda d: d["model_config"].update(d_model="12"))),
    Case("resume: disk full", lambda c: _reg(c, "--resume", config="reg_long"),
         lambda c: ("--out", "disk became full"), _full_disk, keep="checkpoints"),
]


@pytest.mark.parametrize("case", REGRESSOR_CASES, ids=lambda c: c.id)
def test_train_regressor_bad_input(case: Case, area: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _run_case("reg_run", ["train", "regressor"], case, area, tmp_path, capsys, monkeypatch)


def _run_case(run_name: str, command: list[str], case: Case, area: dict[str, Path],
              tmp_path: Path, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(area[run_name], run)
    c = Ctx(area, run, tmp_path)
    if case.damage is not None:
        case.damage(c, monkeypatch)
    args = case.args(c)
    inputs = [p for k, p in area.items() if k not in ("root", "reg_run", "pf_run")]
    kept = run / "checkpoints" if case.keep == "checkpoints" else run
    before = snapshot(kept, *inputs, *(p for p in tmp_path.iterdir() if p != run))
    res = run_in_process(capsys, *command, *args)
    assert_one_line_error(res, *case.fragments(c))
    assert snapshot(kept, *inputs, *(p for p in tmp_path.iterdir() if p != run)) == before
    assert not (tmp_path / "new" / "checkpoints").exists()


# ------------------------------------------------------------------------- train point-flow


def _pf(c: Ctx, *extra: object, data: str = "multi", config: str = "pf_yaml",
        out: Path | None = None) -> list:
    return ["--data", c.a[data], "--config", c.a[config], "--out", out or c.run,
            "--no-progress", "--device", "cpu", *extra]


POINT_FLOW_CASES = [
    Case("missing data file", lambda c: [*_pf(c, out=c.tmp / "new"), "--data", c.tmp / "no.h5"],
         lambda c: ("no.h5",)),
    Case("zero showers", lambda c: _pf(c, data="empty", out=c.tmp / "new"),
         lambda c: ("empty.h5",)),
    Case("unknown particle in the data", lambda c: _pf(c, data="multi_pdg", out=c.tmp / "new"),
         lambda c: ("multi_pdg.h5", "key 'pdg'", "999", "model.particles")),
    Case("unknown particle in the validation file",
         lambda c: _pf(c, "--val-data", c.a["multi_pdg"], out=c.tmp / "new"),
         lambda c: ("multi_pdg.h5", "key 'pdg'", "999")),
    Case("layer outside the geometry", lambda c: _pf(c, data="multi_layer", out=c.tmp / "new"),
         lambda c: ("multi_layer.h5", "key 'layer'", "70")),
    Case("bad model config", lambda c: _pf(c, config="pf_bad", out=c.tmp / "new"),
         lambda c: ("pf_bad.yaml", "model.shower.d_model", "positive")),
    Case("bad model config with --layer-window",
         lambda c: _pf(c, "--layer-window", "1", config="pf_bad", out=c.tmp / "new"),
         lambda c: ("pf_bad.yaml", "model.shower.d_model")),
    Case("layer-window -5", lambda c: _pf(c, "--layer-window", "-5", out=c.tmp / "new"),
         lambda c: ("--layer-window", "none")),
    Case("max-showers -1", lambda c: _pf(c, "--max-showers", "-1", out=c.tmp / "new"),
         lambda c: ("--max-showers",)),
    Case("max-showers too few for a batch",
         lambda c: _pf(c, "--max-showers", "3", out=c.tmp / "new"),
         lambda c: ("multi.h5", "train.batch_size=8", "pf.yaml")),
    Case("val-fraction negative", lambda c: _pf(c, "--val-fraction", "-0.1", out=c.tmp / "new"),
         lambda c: ("--val-fraction",)),
    Case("max-steps 0", lambda c: _pf(c, "--max-steps", "0", out=c.tmp / "new"),
         lambda c: ("--max-steps",)),
    Case("out is a file", lambda c: _pf(c, out=c.a["multi"]),
         lambda c: ("--out", "multi.h5", "is a file")),
    Case("fresh run into a run folder", lambda c: _pf(c),
         lambda c: ("--out", "earlier run", "--resume")),
    *[Case(f"resume: {i}", lambda c: _pf(c, "--resume"), f, d)
      for i, d, f in DAMAGED_RESUME],
    Case("resume: other layer window", lambda c: _pf(c, "--resume", "--layer-window", "0"),
         lambda c: ("checkpoint.json", "model_config.shower.layer_window", "2", "0")),
    Case("resume: EMA weights missing", lambda c: _pf(c, "--resume"),
         lambda c: ("checkpoint.json", "files.ema"), _remove("ema.safetensors")),
    Case("resume: string width in checkpoint.json", lambda c: _pf(c, "--resume"),
         lambda c: ("checkpoint.json", "model_config.shower.d_model", "integer"),
         _edit_checkpoint(lambda d: d["model_config"]["shower"].update(d_model="32"))),
    Case("resume: disk full", lambda c: _pf(c, "--resume", config="pf_long"),
         lambda c: ("--out", "disk became full"), _full_disk, keep="checkpoints"),
]


@pytest.mark.parametrize("case", POINT_FLOW_CASES, ids=lambda c: c.id)
def test_train_point_flow_bad_input(case: Case, area: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _run_case("pf_run", ["train", "point-flow"], case, area, tmp_path, capsys, monkeypatch)


# ------------------------------------------------------------------------- predict


def _existing(c: Ctx) -> Path:
    """An earlier output file that a failed command must leave as it was."""
    path = c.tmp / "earlier.h5"
    if not path.exists():
        path.write_bytes(b"an earlier output")
    return path


def _predict(c: Ctx, *extra: object, data: str = "cube", run: Path | None = None,
             out: Path | None = None) -> list:
    return [run or c.run, "--data", c.a[data], "--out", out or _existing(c), "--device", "cpu",
            *extra]


def _full_h5(c: Ctx, mp: pytest.MonkeyPatch) -> None:
    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(h5py.Group, "create_dataset", full)


PREDICT_CASES = [
    Case("missing data file", lambda c: [*_predict(c), "--data", c.tmp / "no.h5"],
         lambda c: ("no.h5",)),
    Case("zero showers", lambda c: _predict(c, data="empty"), lambda c: ("empty.h5",)),
    Case("NaN true values", lambda c: _predict(c, data="cube_nan"),
         lambda c: ("cube_nan.h5", "key 'momentum'", "NaN")),
    Case("other geometry", lambda c: _predict(c, data="cube8"),
         lambda c: ("cube8.h5", "key 'geometry'")),
    Case("unknown device", lambda c: _predict(c, "--device", "abacus"),
         lambda c: ("--device", "abacus")),
    Case("batch-size 0", lambda c: _predict(c, "--batch-size", "0"),
         lambda c: ("--batch-size",)),
    Case("out is a directory", lambda c: _predict(c, out=c.tmp),
         lambda c: ("--out", "is a directory")),
    Case("out below a file", lambda c: _predict(c, out=c.a["cube"] / "p.h5"),
         lambda c: ("--out", "cube.h5", "cannot be created")),
    Case("missing checkpoint", lambda c: _predict(c, run=c.tmp / "nothing"),
         lambda c: ("nothing", "no such checkpoint")),
    Case("point-flow checkpoint", lambda c: _predict(c, run=c.a["pf_run"]),
         lambda c: ("checkpoint.json", "key 'family'", "point-flow", "sample")),
    Case("garbage last.json", lambda c: _predict(c),
         lambda c: ("last.json", "key 'checkpoint'"), _write("garbage", "checkpoints",
                                                             "last.json")),
    Case("string width in checkpoint.json", lambda c: _predict(c),
         lambda c: ("checkpoint.json", "model_config.d_model", "integer"),
         _edit_checkpoint(lambda d: d["model_config"].update(d_model="12"))),
    Case("weights missing", lambda c: _predict(c), lambda c: ("model.safetensors",),
         _remove("model.safetensors")),
    Case("disk full", lambda c: _predict(c), lambda c: ("earlier.h5", "disk became full"),
         _full_h5),
]


@pytest.mark.parametrize("case", PREDICT_CASES, ids=lambda c: c.id)
def test_predict_bad_input(case: Case, area: dict[str, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    _run_case("reg_run", ["predict"], case, area, tmp_path, capsys, monkeypatch)


# ------------------------------------------------------------------------- sample


def _sample(c: Ctx, *extra: object, run: Path | None = None, out: Path | None = None) -> list:
    return [run or c.run, "--out", out or _existing(c), "--n", "2", "--steps", "1",
            "--device", "cpu", *extra]


def _full_writer(c: Ctx, mp: pytest.MonkeyPatch) -> None:
    import showerformer.io

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(showerformer.io, "write_pointcloud", full)


SAMPLE_CASES = [
    Case("batch-size 0", lambda c: _sample(c, "--batch-size", "0"), lambda c: ("--batch-size",)),
    Case("n 0", lambda c: _sample(c, "--n", "0"), lambda c: ("--n",)),
    Case("unknown device", lambda c: _sample(c, "--device", "abacus"),
         lambda c: ("--device", "abacus")),
    Case("n negative", lambda c: _sample(c, "--n", "-3"), lambda c: ("--n",)),
    Case("steps 0", lambda c: _sample(c, "--steps", "0"), lambda c: ("--steps",)),
    Case("unknown sampler", lambda c: _sample(c, "--sampler", "rk9"),
         lambda c: ("--sampler", "rk9", "midpoint")),
    Case("unknown spectrum", lambda c: _sample(c, "--spectrum", "bogus"),
         lambda c: ("--spectrum", "bogus", "log-uniform")),
    Case("fixed spectrum without energy", lambda c: _sample(c, "--spectrum", "fixed"),
         lambda c: ("--spectrum", "--energy")),
    Case("theta 200", lambda c: _sample(c, "--theta", "200"), lambda c: ("--theta", "176")),
    Case("theta not a number", lambda c: _sample(c, "--theta", "up"), lambda c: ("--theta",)),
    Case("phi 1000", lambda c: _sample(c, "--phi", "1000"), lambda c: ("--phi",)),
    Case("energy zero", lambda c: _sample(c, "--energy", "0"), lambda c: ("--energy", "> 0")),
    Case("energy outside the training range", lambda c: _sample(c, "--energy", "5000"),
         lambda c: ("--energy", "training range")),
    Case("unknown particle", lambda c: _sample(c, "--particle", "bogus"),
         lambda c: ("--particle", "bogus")),
    Case("particle not trained", lambda c: _sample(c, "--particle", "neutron"),
         lambda c: ("--particle", "2112", "trained")),
    Case("unknown format", lambda c: _sample(c, "--format", "par04"),
         lambda c: ("--format", "pointcloud")),
    Case("negative seed", lambda c: _sample(c, "--seed", "-1"), lambda c: ("--seed",)),
    Case("out is a directory", lambda c: _sample(c, out=c.tmp),
         lambda c: ("--out", "is a directory")),
    Case("out below a file", lambda c: _sample(c, out=c.a["multi"] / "g.h5"),
         lambda c: ("--out", "multi.h5", "cannot be created")),
    Case("regressor checkpoint", lambda c: _sample(c, run=c.a["reg_run"]),
         lambda c: ("checkpoint.json", "key 'family'", "particle-cnn-transformer", "predict")),
    Case("garbage last.json", lambda c: _sample(c), lambda c: ("last.json", "key 'checkpoint'"),
         _write("garbage", "checkpoints", "last.json")),
    Case("string width in checkpoint.json", lambda c: _sample(c),
         lambda c: ("checkpoint.json", "model_config.shower.d_model", "integer"),
         _edit_checkpoint(lambda d: d["model_config"]["shower"].update(d_model="32"))),
    Case("damaged count limits", lambda c: _sample(c),
         lambda c: ("checkpoint.json", "preprocessing.count_limits"),
         _edit_checkpoint(lambda d: d["preprocessing"].update(count_limits=[1, 2]))),
    Case("damaged energy range", lambda c: _sample(c),
         lambda c: ("checkpoint.json", "preprocessing.conditions.energy_mev"),
         _edit_checkpoint(lambda d: d["preprocessing"]["conditions"].update(energy_mev="lots"))),
    Case("disk full", lambda c: _sample(c), lambda c: ("earlier.h5", "disk became full"),
         _full_writer),
]


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=lambda c: c.id)
def test_sample_bad_input(case: Case, area: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    _run_case("pf_run", ["sample"], case, area, tmp_path, capsys, monkeypatch)
