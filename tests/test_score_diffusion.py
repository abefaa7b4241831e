"""The score-diffusion family: network symmetries and masking, training reduces the score-matching
loss, every sampler generates, options and their errors, the generic sampling path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from showerformer.errors import InputError
from showerformer.models.score_diffusion import (
    DIFFUSION_SAMPLERS,
    ScoreDiffusion,
    ScoreDiffusionConfig,
    ScoreTransformer,
)
from showerformer.showers import Conditions, PointShowers

L = 5
SMALL = {"embed_dim": 16, "hidden": 16, "n_heads": 2, "n_blocks": 2, "n_fourier": 8,
         "sampling_steps": 4, "counts": {"d_model": 16, "n_blocks": 1}}


def point_data(n: int = 24, seed: int = 0):
    from showerformer.data.points import PointCloudDataset
    from showerformer.geometry import CartesianGeometry

    geo = CartesianGeometry((6, 6, L), (10.0, 10.0, 5.0), name="diffusion-grid")
    rng = np.random.default_rng(seed)
    ragged = []
    for i in range(n):
        m = int(rng.integers(4, 24))
        cells = rng.choice(geo.n_cells, m, replace=False)
        if i == 0:
            cells[:L] = geo.layer_offsets[:L] + rng.integers(0, 36, L)
        xyz = geo.dequantize(cells, rng)
        ragged.append(np.column_stack([xyz, rng.exponential(5.0, m) + 0.01,
                                       geo.layer_of_cell[cells]]))
    cond = Conditions(rng.uniform(1e3, 1e5, n), np.full(n, 11), np.full(n, np.pi / 2),
                      np.zeros(n))
    return PointCloudDataset.from_showers(PointShowers.from_ragged(ragged, cond, geo))


def model_and_batch(**overrides):
    data = point_data()
    model = ScoreDiffusion.from_data({**SMALL, **overrides}, data, {"per_layer": True})
    collate = model.collate_fn({})
    batch = collate([data[i] for i in range(8)])
    return model, batch


def test_score_network_is_permutation_equivariant_and_ignores_padding() -> None:
    torch.manual_seed(0)
    net = ScoreTransformer(ScoreDiffusionConfig(n_calo_layers=L, **{
        k: v for k, v in SMALL.items() if k != "counts"}))
    b, p = 2, 7
    x = torch.randn(b, p, 3)
    layer = torch.randint(0, L, (b, p))
    mask = torch.ones(b, p, dtype=torch.bool)
    mask[1, 5:] = False
    cond = {"particle": torch.zeros(b, dtype=torch.long), "energy": torch.randn(b),
            "theta": torch.full((b,), 1.5), "phi": torch.zeros(b),
            "counts": torch.randint(0, 4, (b, L))}
    t = torch.rand(b)
    out = net(x, t, cond, layer, mask)
    perm = torch.randperm(p)
    # permuting the real points of shower 0 permutes its output
    out_p = net(x[:, perm], t, cond, layer[:, perm], mask[:, perm])
    torch.testing.assert_close(out_p[0], out[0][perm], rtol=1e-5, atol=1e-6)
    assert torch.all(out[1, 5:] == 0)
    x2 = x.clone()
    x2[1, 5:] = 1e3  # padding values never matter
    layer2 = layer.clone()
    layer2[1, 5:] = 0
    torch.testing.assert_close(net(x2, t, cond, layer2, mask)[1, :5], out[1, :5])


def test_training_reduces_the_score_matching_loss() -> None:
    torch.manual_seed(0)
    model, batch = model_and_batch(sde="vp")
    before = model.validation_metric([batch])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        opt.zero_grad()
        model.loss(batch, generator=g).backward()
        opt.step()
    after = model.validation_metric([batch])
    assert after < 0.8 * before, (before, after)
    assert model.validation_metric([batch]) == after  # fixed times and noise


@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
def test_every_sampler_generates_showers_in_the_cells(sampler: str) -> None:
    torch.manual_seed(0)
    model, _ = model_and_batch(sde="subvp" if sampler == "heun" else "ve")
    cond = Conditions(np.array([2e3, 5e4, 9e4]), np.full(3, 11), np.full(3, np.pi / 2),
                      np.zeros(3))
    counts = torch.tensor([[1, 2, 0, 3, 1], [0, 0, 4, 0, 0], [2, 2, 2, 2, 2]])
    gen = model.generate(cond, generator=torch.Generator().manual_seed(1), steps=3,
                         sampler=sampler, counts=counts)
    assert gen.n_points.tolist() == [7, 4, 10]
    pts = gen.to_ragged()
    assert all(np.isfinite(p).all() for p in pts)
    assert sorted(pts[0][:, 4].astype(int).tolist()) == [0, 1, 1, 3, 3, 3, 4]
    again = model.generate(cond, generator=torch.Generator().manual_seed(1), steps=3,
                           sampler=sampler, counts=counts)
    assert all(np.array_equal(a, b) for a, b in zip(pts, again.to_ragged(), strict=True))


def test_sampler_and_config_errors_name_the_key() -> None:
    model, _ = model_and_batch()
    cond = Conditions(np.array([2e3]), np.full(1, 11), np.full(1, np.pi / 2), np.zeros(1))
    with pytest.raises(InputError, match="sampler"):
        model.generate(cond, sampler="ddim")
    with pytest.raises(InputError, match="steps"):
        model.generate(cond, steps=0)
    for bad, key in (({"sde": "ddpm"}, "sde"), ({"n_heads": 5}, "n_heads"),
                     ({"weighting": "snr"}, "weighting"),
                     ({"correlation_features": ["x", "r"]}, "correlation_features"),
                     ({"sigma_min": 100.0}, "sigma_min"), ({"sampler": "rk4"}, "sampler"),
                     ({"counts": {"n_calo_layers": 3}}, "counts.n_calo_layers")):
        with pytest.raises(InputError, match=key):
            ScoreDiffusionConfig.from_dict(bad)


def test_correlation_term_adds_to_the_loss() -> None:
    torch.manual_seed(0)
    plain, batch = model_and_batch(count_loss_weight=0.0)
    torch.manual_seed(0)
    with_cor, _ = model_and_batch(count_loss_weight=0.0, correlation_features=["x", "energy"],
                                  correlation_weight=10.0, correlation_target="zero")
    a = plain.loss(batch, generator=torch.Generator().manual_seed(3))
    b = with_cor.loss(batch, generator=torch.Generator().manual_seed(3))
    assert float(b.detach()) > float(a.detach())  # same weights, times and noise: the extra term is positive


def test_sample_file_through_the_generic_path(tmp_path: Path) -> None:
    """Train two steps through the generic entry point, then sample a point-cloud file."""
    import yaml

    from showerformer.generation import sample_file
    from showerformer.io import read_showers, write_pointcloud
    from showerformer.training.run import train

    data = tmp_path / "points.h5"
    write_pointcloud(data, point_data(16).to_showers())
    cfg = {"model": {"family": "score-diffusion", **SMALL},
           "train": {"max_steps": 2, "batch_size": 4, "tensorboard": False, "device": "cpu",
                     "precision": "fp32", "lr": 1e-3},
           "data": {"val_fraction": 0.25}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = train(tmp_path / "run.yaml", data, tmp_path / "run", progress=False)
    out = tmp_path / "gen.h5"
    sample_file(res.out_dir, out, n=3, seed=0, steps=2, sampler="euler-maruyama",
                format="pointcloud", device="cpu")
    gen = read_showers(out)
    assert len(gen) == 3 and isinstance(gen, PointShowers)



@pytest.mark.parametrize("name", ["score_diffusion_ds2", "score_diffusion_ds2_gpu"])
def test_shipped_configs_are_valid(name: str) -> None:
    from showerformer.training.config import load_run_config

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    run = load_run_config(path)
    cfg = ScoreDiffusionConfig.from_dict(run.model)
    assert run.family == "score-diffusion" and cfg.hidden in (64, 96)
    assert run.train.lr == 3e-4
