"""Point-flow data pipeline, training runs, sampling and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from showerformer.cli import main
from showerformer.data.batching import BucketBatchSampler, size_sorted
from showerformer.data.points import (
    PointCloudDataset,
    PointCollate,
    Preprocessing,
    load_point_dataset,
)
from showerformer.errors import InputError
from showerformer.generation import load_generator, parse_energy, sample_conditions, sample_file
from showerformer.io import read_calochallenge, read_showers
from showerformer.models.point_flow import PointFlow, PointFlowConfig, count_limits
from showerformer.simulation import simulate_to_file
from showerformer.training import checkpoint as ckpt
from showerformer.training.run import train

TINY = {
    "model": {"family": "point-flow", "shower": {"d_model": 32, "n_heads": 2, "n_blocks": 2},
              "counts": {"d_model": 32, "n_blocks": 2}},
    "train": {"lr": 1e-3, "max_steps": 6, "batch_size": 8, "checkpoint_every": 3,
              "ema_decay": 0.9, "log_every": 1, "tensorboard": False, "device": "cpu",
              "precision": "fp32"},
    "data": {"val_fraction": 0.1, "pad_multiple": 4},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pointflow")
    out = {"ds2": root / "ds2.h5", "multi": root / "multi.h5", "sandwich32": root / "s32.h5"}
    simulate_to_file(out["ds2"], "ds2", n=40, seed=3, energy="1:20", progress=False)
    simulate_to_file(out["multi"], "multi", n=80, seed=4, energy="1:20", progress=False)
    simulate_to_file(out["sandwich32"], "sandwich32", n=12, seed=5, progress=False)
    return out


# -- data ---------------------------------------------------------------------------------------


def test_voxels_become_points_inside_their_cells_and_back_exactly(files: dict[str, Path]) -> None:
    ds = load_point_dataset(files["ds2"], seed=1)
    vox = read_calochallenge(files["ds2"])
    assert ds.source_format == "calochallenge" and len(ds) == len(vox)
    above = (vox.energies > 15.15e-3).sum(axis=1)
    np.testing.assert_array_equal(ds.sizes, above)
    back = ds.to_showers().to_voxels()
    kept = np.where(vox.energies > 15.15e-3, vox.energies, 0.0)
    np.testing.assert_array_equal(back.energies, kept)
    # dequantized, not at the cell centres; another seed draws other positions
    centres = vox.geometry.cell_centers()
    cells = vox.geometry.locate(ds.points[:, 0], ds.points[:, 1], layer=ds.points[:, 4])
    assert np.abs(ds.points[:, :2] - centres[cells, :2]).max() > 0.1
    other = load_point_dataset(files["ds2"], seed=2)
    assert not np.allclose(other.points[:, :2], ds.points[:, :2])


def test_sparse_voxels_and_point_clouds_load(files: dict[str, Path]) -> None:
    sparse = load_point_dataset(files["sandwich32"], max_showers=5)
    assert len(sparse) == 5 and sparse.geometry.n_layers == 32
    assert sparse.source_format == "sparse-voxels" and sparse.sizes.min() > 0
    multi = load_point_dataset(files["multi"])
    ref = read_showers(files["multi"])
    assert multi.source_format == "pointcloud"
    np.testing.assert_array_equal(multi.sizes, ref.n_points)
    assert set(np.unique(multi.conditions.pdg)) == {11, 22, 211, 2212}
    sub = multi.subset([3, 0])
    np.testing.assert_array_equal(sub.points, np.concatenate([multi[3]["points"], multi[0]["points"]]))
    assert np.all(np.diff(size_sorted(multi).sizes) >= 0)
    with pytest.raises(InputError, match="offsets"):
        PointCloudDataset(np.zeros((3, 5)), np.array([0, 2]), multi.conditions[:1])


def test_bucket_sampler_covers_the_epoch_reduces_padding_and_resumes() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 3000, 1000)
    s = BucketBatchSampler(sizes, 16, seed=3, epoch=1)
    batches = s.batches()
    assert len(batches) == len(s) == 62
    used = np.concatenate(batches)
    assert len(np.unique(used)) == len(used) == 62 * 16
    padded = sum(16 * sizes[b].max() for b in batches) / sizes[used].sum()
    plain = BucketBatchSampler(sizes, 16, seed=3, epoch=1, bucket_batches=1).batches()
    padded_plain = sum(16 * sizes[b].max() for b in plain) / sizes[used].sum()
    assert padded < 1.1 < 1.5 < padded_plain
    # deterministic in (seed, epoch); resuming at batch k continues the same order
    assert [b.tolist() for b in BucketBatchSampler(sizes, 16, seed=3, epoch=1).batches()] == \
        [b.tolist() for b in batches]
    assert list(BucketBatchSampler(sizes, 16, seed=3, epoch=1, start=10)) == \
        [b.tolist() for b in batches[10:]]
    assert BucketBatchSampler(sizes, 16, seed=3, epoch=2).batches()[0].tolist() != batches[0].tolist()
    # two ranks share every global batch
    r0 = list(BucketBatchSampler(sizes, 16, seed=3, epoch=1, rank=0, world_size=2))
    r1 = list(BucketBatchSampler(sizes, 16, seed=3, epoch=1, rank=1, world_size=2))
    assert all(sorted(a + b) == sorted(g.tolist()) for a, b, g in zip(r0, r1, batches, strict=True))
    make = BucketBatchSampler.factory(sizes, 8)
    assert len(make(1000, 16, seed=0, epoch=0, start=0, rank=0, world_size=1)) == 62
    with pytest.raises(ValueError):
        make(999, 16)


def test_collate_pads_sorts_and_normalizes(files: dict[str, Path]) -> None:
    ds = load_point_dataset(files["multi"])
    pre = Preprocessing.fit_points(ds.points, ds.conditions.energy, geometry=ds.geometry)
    batch = PointCollate(pre, (11, 22, 211, 2212), pad_multiple=16)([ds[i] for i in (0, 5, 9)])
    p = batch["x"].shape[1]
    assert p % 16 == 0 and p >= ds.sizes[[0, 5, 9]].max()
    np.testing.assert_array_equal(batch["mask"].sum(1).numpy(), ds.sizes[[0, 5, 9]])
    for lay, m in zip(batch["layer"], batch["mask"], strict=True):
        assert torch.all(torch.diff(lay[m]) >= 0) and not m[int(m.sum()):].any()
    np.testing.assert_array_equal(batch["counts"].numpy(), ds.subset([0, 5, 9]).layer_counts(64))


# -- model and runs -----------------------------------------------------------------------------


def test_config_sections_are_checked() -> None:
    with pytest.raises(InputError, match=r"shower\.n_calo_layers"):
        PointFlowConfig(shower={"n_calo_layers": 3})
    with pytest.raises(InputError, match=r"counts\.bogus"):
        PointFlowConfig(counts={"bogus": 1})
    with pytest.raises(InputError, match=r"shower\.n_heads"):
        PointFlowConfig(shower={"d_model": 30, "n_heads": 4})
    cfg = PointFlowConfig(n_calo_layers=9, particles=(22,), shower={"layer_window": 1})
    m = PointFlow(cfg)
    assert m.shower.config.layer_window == 1 and m.shower.config.particles == (22,)
    assert m.counts.config.n_calo_layers == 9


def test_train_resume_and_sample(files: dict[str, Path], tmp_path: Path) -> None:
    full = train(TINY, files["multi"], tmp_path / "full", progress=False)
    assert full.step == 6 and full.best_val_loss is not None and np.isfinite(full.best_val_loss)
    part = train(TINY, files["multi"], tmp_path / "part", progress=False, stop_at_step=3)
    assert part.interrupted and part.step == 3
    resumed = train(TINY, files["multi"], tmp_path / "part", progress=False, resume=True)
    assert resumed.step == 6
    a = ckpt.load_checkpoint(tmp_path / "full", ema=False)[0].state_dict()
    b = ckpt.load_checkpoint(tmp_path / "part", ema=False)[0].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    model, info = load_generator(tmp_path / "full", device="cpu")
    meta = model.data_state()
    assert meta["source_format"] == "pointcloud" and len(meta["count_limits"]) == 64
    assert info["weights"] == "ema" and model.preprocessing.n_layers == 64
    assert Preprocessing.from_dict(info["preprocessing"]["points"]).n_layers == 64

    s = sample_file(tmp_path / "full", tmp_path / "gen.h5", n=12, particle="gamma,pi+",
                          energy="2-10", seed=1, steps=2, progress=False)
    gen = read_showers(s["path"])
    assert s["format"] == "pointcloud" and len(gen) == 12
    assert set(np.unique(gen.conditions.pdg)) <= {22, 211}
    assert 2000 <= gen.conditions.energy.min() and gen.conditions.energy.max() <= 10000
    limits = np.asarray(meta["count_limits"])
    counts = np.stack([np.bincount(p[:, 4].astype(int), minlength=64) for p in gen.to_ragged()])
    assert (counts <= limits).all()
    again = sample_file(tmp_path / "full", tmp_path / "gen2.h5", n=12, particle="gamma,pi+",
                              energy="2-10", seed=1, steps=2, progress=False)
    np.testing.assert_array_equal(read_showers(again["path"]).points, gen.points)


def test_voxel_trained_model_writes_calochallenge(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"]["max_steps"] = 2
    res = train(cfg, files["ds2"], tmp_path / "run", progress=False)
    model, _info = load_generator(res.out_dir)
    assert model.data_state()["source_format"] == "calochallenge"
    # one point per cell at most
    assert model.data_state()["count_limits"] == [144] * 45
    s = sample_file(res.out_dir, tmp_path / "gen.h5", n=5, steps=2, progress=False)
    assert s["format"] == "calochallenge"
    vox = read_calochallenge(s["path"])
    assert vox.energies.shape == (5, 6480) and vox.geometry.n_layers == 45
    assert np.isfinite(vox.energies).all() and (vox.energies.sum(axis=1) > 0).all()
    with pytest.raises(InputError, match="particle"):
        sample_file(res.out_dir, tmp_path / "x.h5", n=2, particle="pi+", progress=False)
    assert count_limits(load_point_dataset(files["ds2"]), 45).tolist() == [144] * 45


def test_conditions_parsing() -> None:
    spec = parse_energy("1-1000")
    assert spec.kind == "log-uniform" and spec.values == (1000.0, 1_000_000.0)
    assert parse_energy("50").kind == "fixed"
    assert parse_energy("1-1000", "uniform").kind == "uniform"
    info = {"pdg": [22], "energy_mev": [1e3, 2e3], "theta": [1.0, 1.0], "phi": [0.5, 0.7]}
    c = sample_conditions(info, 100, seed=0)
    assert set(c.pdg) == {22} and c.energy.min() >= 1e3 and c.energy.max() <= 2e3
    assert np.all(c.theta == np.float32(1.0)) and 0.5 <= c.phi.min() and c.phi.max() <= 0.7
    assert np.array_equal(sample_conditions(info, 100, seed=0).energy, c.energy)
    with pytest.raises(InputError, match="particle"):
        sample_conditions(info, 3, particle="proton")
    with pytest.raises(InputError, match="energy"):
        sample_conditions(info, 3, energy="lots")


def test_cli_train_and_sample(files: dict[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    cfg = json.loads(json.dumps(TINY))
    cfg["train"]["max_steps"] = 2
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    def cli(*args: str) -> int:
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        return int(exc.value.code or 0)

    assert cli("train", "point-flow", "--data", str(files["multi"]), "--config", str(path),
               "--out", str(tmp_path / "run"), "--layer-window", "1", "--no-progress") == 0
    assert "done: 2 steps" in capsys.readouterr().out
    info = ckpt.read_checkpoint_info(tmp_path / "run")
    assert info["model_config"]["shower"]["layer_window"] == 1
    assert cli("sample", str(tmp_path / "run"), "--n", "4", "--particle", "e-", "--energy", "5",
               "--steps", "2", "--out", str(tmp_path / "g.h5")) == 0
    assert "wrote 4 showers (pointcloud" in capsys.readouterr().out
    g = read_showers(tmp_path / "g.h5")
    assert np.allclose(g.conditions.energy, 5000.0) and set(g.conditions.pdg) == {11}
    assert cli("sample", str(tmp_path / "run"), "--n", "2", "--format", "par04",
               "--out", str(tmp_path / "h.h5")) == 2
    assert "format" in capsys.readouterr().err


def test_generated_energy_outliers_are_clipped(files: dict[str, Path]) -> None:
    ds = load_point_dataset(files["multi"])
    pre = Preprocessing.fit_points(ds.points, ds.conditions.energy, geometry=ds.geometry)
    assert pre.log_energy_max == pytest.approx(np.log(ds.points[:, 3].max() * 2.0), rel=1e-6)
    feats = np.array([[[0.0, 0.0, 1e4]]])
    out = pre.inverse(feats, np.zeros((1, 1), int), np.ones((1, 1), bool))
    assert out[0, 0, 3] == pytest.approx(2.0 * ds.points[:, 3].max(), rel=1e-5)
    assert Preprocessing.from_dict(pre.to_dict()).log_energy_max == pre.log_energy_max


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", ["3", "177", "200", "-10", "10:179"])
def test_theta_limits_are_the_simulators(theta: str) -> None:
    from showerformer.generation import parse_theta
    from showerformer.simulation import Simulator

    with pytest.raises(InputError, match="theta"):
        Simulator("ds2", theta=theta)
    with pytest.raises(InputError, match=r"key '--theta'.*4-176 deg"):
        parse_theta(theta, (1.0, 1.0))


def test_sample_options_are_checked() -> None:
    from showerformer.generation import check_sample_options, parse_theta
    from showerformer.simulation import Simulator

    Simulator("ds2", theta="5:175")  # accepted by both
    lo, hi = parse_theta("5:175", (1.0, 1.0))
    assert lo == pytest.approx(np.radians(5)) and hi == pytest.approx(np.radians(175))
    check_sample_options(n=1, particle="e-,211", energy="1-10", spectrum="uniform", theta="90",
                         phi="0:360", format="pointcloud", seed=0, steps=1, sampler="heun",
                         batch_size=1)
    for kw, key in (({"n": 0}, "--n"), ({"steps": 0}, "--steps"), ({"batch_size": 0},
                    "--batch-size"), ({"sampler": "rk4"}, "--sampler"),
                    ({"spectrum": "flat"}, "--spectrum"), ({"spectrum": "discrete"}, "--spectrum"),
                    ({"energy": "-5"}, "--energy"), ({"energy": "5:1"}, "--energy"),
                    ({"particle": "e-,"}, "--particle"), ({"particle": "muon"}, "--particle"),
                    ({"phi": "400"}, "--phi"), ({"format": "root"}, "--format"),
                    ({"seed": -2}, "--seed")):
        with pytest.raises(InputError) as info:
            check_sample_options(**{"n": 1, **kw})
        assert info.value.key == key, (kw, str(info.value))


def test_sample_conditions_stay_in_the_training_range() -> None:
    info = {"pdg": [22], "energy_mev": [1e3, 2e3], "theta": [1.0, 1.0], "phi": [0.5, 0.7]}
    c = sample_conditions(info, 50, energy="2.1")  # within the 10 % margin
    assert np.allclose(c.energy, 2100.0)
    with pytest.raises(InputError, match=r"key '--energy'.*outside the training range 1-2 GeV"):
        sample_conditions(info, 5, energy="1-3")
    c = sample_conditions(info, 200, spectrum="uniform")  # the training range, uniform
    assert 1e3 <= c.energy.min() and c.energy.max() <= 2e3
    assert abs(np.mean(c.energy) - 1.5e3) < 100  # uniform, not log-uniform (mean 1443)
    with pytest.raises(InputError, match=r"key '--n'"):
        sample_conditions(info, 0)


def test_point_data_checks(files: dict[str, Path], tmp_path: Path) -> None:
    from showerformer.models.point_flow import check_layers, check_particles_known

    with pytest.raises(InputError, match="max_showers"):
        load_point_dataset(files["multi"], max_showers=0)
    ds = load_point_dataset(files["multi"], max_showers=6)
    assert ds.path == str(files["multi"]) and ds.subset([1, 2]).path == ds.path
    check_layers(ds, 64)
    with pytest.raises(InputError, match=r"multi.h5, key 'layer'.*0..9"):
        check_layers(ds, 10)
    with pytest.raises(InputError, match=r"multi.h5, key 'pdg'.*model.particles"):
        check_particles_known(ds, (22,))
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["pad_multiple"] = 0
    with pytest.raises(InputError, match=r"key 'data.pad_multiple'"):
        train(cfg, files["multi"], tmp_path / "run", progress=False)
    with pytest.raises(InputError, match=r"key 'model.shower.layer_window'"):
        train(TINY, files["multi"], tmp_path / "run", overrides=["model.shower.layer_window=-2"],
              progress=False)
    assert not (tmp_path / "run").exists()


def test_generate_checks_its_arguments_first() -> None:
    model = PointFlow(PointFlowConfig(n_calo_layers=3, shower={"d_model": 8, "n_heads": 1,
                                                               "n_blocks": 1},
                                      counts={"d_model": 8, "n_blocks": 1}))
    ds_conditions = sample_conditions({"pdg": [11]}, 2)
    for kw, key in (({"batch_size": 0}, "batch_size"), ({"steps": 0}, "steps"),
                    ({"sampler": "rk4"}, "sampler"), ({}, "preprocessing")):
        with pytest.raises(InputError) as info:
            model.generate(ds_conditions, **kw)  # type: ignore[arg-type]
        assert info.value.key == key
