"""MDMA: cell-index preprocessing, the networks, WGAN-GP training with exact resume, generation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from showerformer.errors import InputError
from showerformer.generation import load_generator, sample_file
from showerformer.geometry import CartesianGeometry, get_geometry
from showerformer.io import read_calochallenge
from showerformer.models.mdma import MDMA, MDMAConfig, MDMAPreprocessing
from showerformer.simulation import simulate_to_file
from showerformer.training import checkpoint as ckpt
from showerformer.training.run import train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model": {"family": "mdma", "embed_dim": 8, "gen_hidden": 8, "gen_blocks": 2, "gen_heads": 2,
              "critic_hidden": 8, "critic_blocks": 2, "critic_heads": 2,
              "critic_head_hidden": 8, "counts": {"d_model": 16, "n_blocks": 1}},
    "train": {"lr": 1e-4, "max_steps": 6, "batch_size": 4, "checkpoint_every": 3,
              "val_every": 3, "ema_decay": 0.9, "log_every": 1, "tensorboard": False,
              "device": "cpu", "precision": "fp32", "grad_clip": None},
    "data": {"val_fraction": 0.2, "pad_multiple": 4},
}


@pytest.fixture(scope="module")
def ds2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mdma") / "ds2.h5"
    simulate_to_file(path, "ds2", n=24, seed=3, energy="1:4", progress=False)
    return path


def _hits(geo, n: int, rng: np.random.Generator) -> np.ndarray:
    cells = rng.choice(geo.n_cells, n, replace=False)
    xyz = geo.dequantize(cells, rng)
    layer = geo.layer_of_cell[cells]
    return np.column_stack([xyz, rng.exponential(5.0, n) + 0.05, layer])


@pytest.mark.parametrize("geometry", ["ds2", "cartesian"])
def test_preprocessing_round_trip_is_exact_per_cell(geometry: str) -> None:
    geo = (get_geometry("ds2") if geometry == "ds2"
           else CartesianGeometry((6, 5, 4), (10.0, 10.0, 20.0)))
    rng = np.random.default_rng(0)
    pts = _hits(geo, 60, rng)
    pre = MDMAPreprocessing.fit(pts, np.array([1e3, 2e3, 5e3]), geo, rng=1)
    assert pre.mean_points == 20.0
    cells = pre.cells(pts)
    feats = pre.transform(cells, pts[:, 3], rng.random((60, 3)))
    assert feats.shape == (60, 4) and np.isfinite(feats).all()
    assert abs(feats.mean()) < 0.5  # standardized
    back = pre.inverse(feats)
    np.testing.assert_array_equal(pre.cells(back), cells)  # the same cells
    np.testing.assert_allclose(back[:, 3], pts[:, 3], rtol=1e-4)
    again = MDMAPreprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.inverse(feats), back)
    # generated features far outside the training range still land in a cell of the geometry
    wild = np.array([[40.0, -40.0, 40.0, 0.0], [-40.0, 40.0, -40.0, 1.0]])
    out = pre.inverse(wild)
    assert (pre.cells(out) >= 0).all()


def test_preprocessing_refuses_hits_outside_and_geometries_without_cells() -> None:
    geo = get_geometry("ds2")
    pts = np.array([[1e4, 0.0, 1.0, 1.0, 0.0]])
    with pytest.raises(InputError, match="outside"):
        MDMAPreprocessing.fit(pts, np.array([1e3]), geo)
    with pytest.raises(InputError, match="key 'kind'"):
        MDMAPreprocessing.from_dict({"kind": "points"})


def test_default_networks_and_their_sizes() -> None:
    model = MDMA(MDMAConfig())
    counts = model.n_parameters()
    # the seed's dataset-2 model: about 66 k generator and 40 k critic parameters; ours differ
    # by the block's layout (see docs/generation.md), within a factor 1.5
    assert 40_000 < counts["generator"] < 100_000, counts
    assert 25_000 < counts["critic"] < 60_000, counts
    assert "generator" in model.summary() and "critic" in model.summary()
    with pytest.raises(InputError) as err:
        MDMAConfig(gen_hidden=48, gen_heads=5)
    assert err.value.key == "gen_heads"
    with pytest.raises(InputError) as err:
        MDMAConfig(optimizer="sgd")
    assert err.value.key == "optimizer"


def _log(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv") as fh:
        return [{k: v for k, v in row.items() if k != "samples_per_s"}
                for row in csv.DictReader(fh)]


def test_training_resumes_bit_for_bit_and_samples_voxels(ds2: Path, tmp_path: Path) -> None:
    full = train(TINY, ds2, tmp_path / "full", progress=False)
    assert full.step == 6 and full.best_val_loss is not None and np.isfinite(full.best_val_loss)
    part = train(TINY, ds2, tmp_path / "part", progress=False, stop_at_step=3)
    resumed = train(TINY, ds2, tmp_path / "part", progress=False, resume=True)
    assert part.step == 3 and resumed.step == 6
    a = ckpt.load_checkpoint(tmp_path / "full", ema=False)[0].state_dict()
    b = ckpt.load_checkpoint(tmp_path / "part", ema=False)[0].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = _log(tmp_path / "full")
    for key in ("critic_loss", "gradient_penalty", "wasserstein", "feature_matching",
                "response_matching", "count_loss"):
        assert all(np.isfinite(float(r[key])) for r in rows if r["loss"]), key
    info = ckpt.read_checkpoint_info(tmp_path / "full")
    assert info["optimizer_names"] == ["critic", "generator", "counts"]
    assert info["preprocessing"]["source_format"] == "calochallenge"

    model, _ = load_generator(tmp_path / "full", device="cpu")
    assert isinstance(model, MDMA) and model.preprocessing is not None
    s = sample_file(tmp_path / "full", tmp_path / "gen.h5", n=5, steps=2, seed=1,
                    progress=False, device="cpu")
    assert s["format"] == "calochallenge" and s["family"] == "mdma"
    vox = read_calochallenge(tmp_path / "gen.h5")
    assert vox.energies.shape == (5, 6480) and np.isfinite(vox.energies).all()
    again = sample_file(tmp_path / "full", tmp_path / "gen2.h5", n=5, steps=2, seed=1,
                        progress=False, device="cpu")
    assert again["showers"] == 5
    np.testing.assert_array_equal(read_calochallenge(tmp_path / "gen2.h5").energies,
                                  vox.energies)


def test_generation_uses_the_given_multiplicities(ds2: Path, tmp_path: Path) -> None:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"]["max_steps"] = 1
    res = train(cfg, ds2, tmp_path / "run", progress=False)
    model, _ = load_generator(res.out_dir, device="cpu")
    from showerformer.generation import sample_conditions, trained_conditions

    cond = sample_conditions(trained_conditions(model), 3, seed=0)
    counts = torch.zeros(3, 45, dtype=torch.long)
    counts[:, 10] = torch.tensor([5, 1, 9])
    out = model.generate(cond, generator=torch.Generator().manual_seed(0), counts=counts)
    assert out.n_points.tolist() == [5, 1, 9]
    assert (model.preprocessing.cells(out.points[out.mask]) >= 0).all()


def test_accumulation_updates_every_k_batches(ds2: Path, tmp_path: Path) -> None:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(max_steps=1, checkpoint_every=None, val_every=None)
    cfg["data"]["val_fraction"] = 0.0
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "family"}
    torch.manual_seed(0)  # the initial weights of train(), which seeds before building
    init = MDMA(MDMAConfig.from_dict({**model_cfg, "n_calo_layers": 45})).state_dict()
    moved = {}
    for k in (1, 2):
        cfg["model"]["accumulate"] = k
        train(cfg, ds2, tmp_path / f"acc{k}", progress=False)
        state = ckpt.load_checkpoint(tmp_path / f"acc{k}", ema=False)[0].state_dict()
        moved[k] = any(not torch.equal(state[n], init[n]) for n in init
                       if n.startswith(("generator.", "critic.")))
    assert moved == {1: True, 2: False}  # after one of two accumulated batches: no update


def test_init_from_fine_tunes_a_ds2_model_on_ds3(ds2: Path, tmp_path: Path) -> None:
    """The seed's transfer experiment in small: ds2 weights, ds3 data (same 45 layers)."""
    ds3 = tmp_path / "ds3.h5"
    simulate_to_file(ds3, "ds3", n=12, seed=5, energy="1:2", progress=False)
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(max_steps=2, checkpoint_every=None, val_every=None)
    base = train(cfg, ds2, tmp_path / "ds2", progress=False)
    tuned = train(cfg, ds3, tmp_path / "ds3", progress=False, init_from=base.out_dir,
                  max_steps=1)
    info = ckpt.read_checkpoint_info(tuned.out_dir)
    assert info["metadata"]["init_from"].startswith(str(base.out_dir))
    assert info["preprocessing"]["points"]["geometry"]["name"] == "ds3"
    # one step from the ds2 weights: still close to them, far from a fresh initialisation
    a = ckpt.load_checkpoint(base.out_dir, ema=False)[0].state_dict()
    b = ckpt.load_checkpoint(tuned.out_dir, ema=False)[0].state_dict()
    near = [float((a[k] - b[k]).abs().max()) for k in a if k.startswith("generator.")]
    assert max(near) < 0.01
    with pytest.raises(InputError, match="--init-from"):
        train(cfg, ds3, tmp_path / "x", progress=False, init_from=base.out_dir, resume=True)
    reg = {"model": {"family": "point-flow"}, "train": cfg["train"], "data": {}}
    with pytest.raises(InputError, match=r"a 'mdma' checkpoint .expected a 'point-flow'"):
        train(reg, ds2, tmp_path / "y", progress=False, init_from=base.out_dir)


def test_point_clouds_on_cartesian_cells(tmp_path: Path) -> None:
    """The built-in multi-particle point clouds lie on the cells of sandwich64."""
    multi = tmp_path / "multi.h5"
    simulate_to_file(multi, "multi", n=12, seed=2, energy="1:3", progress=False)
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(max_steps=1, checkpoint_every=None, val_every=None)
    res = train(cfg, multi, tmp_path / "run", progress=False)
    model, _ = load_generator(res.out_dir, device="cpu")
    assert model.preprocessing.geometry.name == "sandwich64"
    s = sample_file(res.out_dir, tmp_path / "gen.h5", n=3, particle="gamma", steps=2,
                    progress=False, device="cpu")
    assert s["format"] == "pointcloud" and s["showers"] == 3


def test_normalized_feature_matching_trains(ds2: Path, tmp_path: Path) -> None:
    cfg = json.loads(json.dumps(TINY))
    cfg["model"]["feature_matching_norm"] = True
    cfg["train"].update(max_steps=2, checkpoint_every=None, val_every=None)
    train(cfg, ds2, tmp_path / "run", progress=False)
    rows = _log(tmp_path / "run")
    assert all(0 <= float(r["feature_matching"]) < 10 for r in rows if r["loss"])
