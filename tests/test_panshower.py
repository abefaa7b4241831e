"""Tests of PanShower: preprocessing, shapes, loss, gradients, sampling, save/load, layer window."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch

from showerformer.data.batching import size_chunks
from showerformer.data.conditions import CONDITION_KEYS, DEFAULT_PARTICLES, particle_indices
from showerformer.data.points import Preprocessing, layers_from_counts, make_batch
from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.models import MODELS
from showerformer.models.panshower import PanShower, PanShowerConfig, PanShowerSample
from showerformer.nn.layer_window import flex_available
from showerformer.showers import Conditions, PointShowers

L = 6
SMALL = PanShowerConfig(n_calo_layers=L, d_model=32, n_heads=4, n_blocks=2, mlp_ratio=2,
                        layer_window=1, n_fourier=8)
PITCH = 3.4  # mm between layer centres of the toy showers


def toy_showers(n: int = 8, seed: int = 0) -> PointShowers:
    """Small point clouds with every particle type and every layer present."""
    rng = np.random.default_rng(seed)
    ragged = []
    for i in range(n):
        k = int(rng.integers(6, 25))
        layer = np.concatenate([np.arange(L), rng.integers(0, L, k - L)]) if i == 0 else \
            rng.integers(0, L, k)
        ragged.append(np.stack([rng.normal(0, 10, k), rng.normal(5, 20, k), (layer + 0.5) * PITCH,
                                rng.exponential(2.0, k) + 0.05, layer], axis=1))
    cond = Conditions(rng.uniform(1e4, 9e4, n), pdg=np.resize(DEFAULT_PARTICLES, n),
                      theta=rng.uniform(1.2, 1.9, n), phi=rng.uniform(1.2, 1.9, n))
    return PointShowers.from_ragged(ragged, cond)


@pytest.fixture(scope="module")
def showers() -> PointShowers:
    return toy_showers()


@pytest.fixture(scope="module")
def pre(showers: PointShowers) -> Preprocessing:
    return Preprocessing.fit(showers, min_points=3)


def to(batch: dict[str, torch.Tensor], device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}


def small_model(device: str, dtype: torch.dtype, **changes) -> PanShower:
    torch.manual_seed(0)
    return PanShower(dataclasses.replace(SMALL, **changes)).to(device, dtype)


# ---------------------------------------------------------------------------- preprocessing


def test_preprocessing_round_trip(showers: PointShowers, pre: Preprocessing) -> None:
    feats, layer = pre.transform(showers.points, showers.mask)
    assert feats.shape == (*showers.points.shape[:2], 3) and feats.dtype == np.float32
    real = feats[showers.mask]
    assert abs(real.mean()) < 0.2 and abs(real.std() - 1) < 0.2  # standardized
    back = pre.inverse(feats, layer, showers.mask)
    m = showers.mask
    np.testing.assert_allclose(back[m][:, [0, 1]], showers.points[m][:, [0, 1]], atol=1e-3)
    np.testing.assert_allclose(back[m][:, 3], showers.points[m][:, 3], rtol=1e-4)
    np.testing.assert_allclose(back[m][:, 2], showers.points[m][:, 2], atol=1e-4)  # layer depth
    np.testing.assert_array_equal(back[m][:, 4], showers.points[m][:, 4])
    assert (back[~m] == 0).all()
    e0 = showers.conditions.energy
    np.testing.assert_allclose(pre.inverse_incident(pre.transform_incident(e0)), e0, rtol=1e-5)


def test_preprocessing_serializes(pre: Preprocessing) -> None:
    again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    for f in dataclasses.fields(Preprocessing):
        np.testing.assert_array_equal(getattr(again, f.name), getattr(pre, f.name))
    with pytest.raises(InputError, match="mean"):
        Preprocessing.from_dict({"std": [[1, 1, 1]], "layer_z": [0.0]})
    with pytest.raises(InputError, match="bogus"):
        Preprocessing.from_dict({**pre.to_dict(), "bogus": 1})


def test_preprocessing_uses_geometry_depths_and_checks_layers(showers: PointShowers) -> None:
    geo = get_geometry("ds2")  # 45 layers of 3.4 mm
    pre = Preprocessing.fit(PointShowers(showers.points, showers.mask, showers.conditions, geo))
    assert pre.n_layers == 45
    np.testing.assert_allclose(pre.layer_z[:L], (np.arange(L) + 0.5) * PITCH)
    glob = Preprocessing.fit(showers, per_layer=False)
    assert np.all(glob.mean == glob.mean[0])
    bad = showers.points.copy()
    bad[0, 0, 4] = 99
    with pytest.raises(InputError, match="layer"):
        glob.transform(bad, showers.mask)


def test_make_batch_sorts_by_layer_and_counts(showers: PointShowers, pre: Preprocessing) -> None:
    batch = make_batch(showers, pre)
    assert set(batch) == {"x", "layer", "mask", "counts", *CONDITION_KEYS}
    for b in range(len(showers)):
        n = int(batch["mask"][b].sum())
        assert batch["mask"][b, :n].all() and not batch["mask"][b, n:].any()
        lay = batch["layer"][b, :n]
        assert torch.equal(lay, lay.sort().values)
        want = np.bincount(showers.points[b][showers.mask[b], 4].astype(int), minlength=L)
        np.testing.assert_array_equal(batch["counts"][b].numpy(), want)
    np.testing.assert_array_equal(batch["particle"].numpy(), np.arange(8) % 4)


def test_particle_indices() -> None:
    np.testing.assert_array_equal(particle_indices([2212, 11, 22, 211]), [3, 0, 1, 2])
    with pytest.raises(InputError, match="pdg"):
        particle_indices([13])


def test_layers_from_counts() -> None:
    layer, mask = layers_from_counts(torch.tensor([[2, 0, 1], [0, 0, 0], [0, 3, 0]]))
    assert layer.shape == (3, 3)
    assert layer[0].tolist() == [0, 0, 2] and mask[0].all()
    assert not mask[1].any()
    assert layer[2].tolist() == [1, 1, 1]


# ---------------------------------------------------------------------------- network


def test_registry_and_config() -> None:
    assert PanShower not in MODELS.values()  # a network of the point-flow family
    cfg = PanShowerConfig.from_dict(json.loads(json.dumps(SMALL.to_dict())))
    assert cfg == SMALL and cfg.n_particles == 4
    assert PanShowerConfig.for_geometry(get_geometry("ds2")).n_calo_layers == 45
    for key, value in [("layer_window", -1), ("ot_pairing", "global"), ("n_heads", 5),
                       ("attention", "sparse"), ("time_distribution", "beta")]:
        with pytest.raises(InputError, match=key):
            dataclasses.replace(SMALL, **{key: value})
    with pytest.raises(InputError, match="bogus"):
        PanShowerConfig.from_dict({"bogus": 1})


def test_forward_shapes_and_padding(showers, pre, device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype)
    batch = to(make_batch(showers, pre), device, dtype)
    t = torch.rand(len(showers), device=device, dtype=dtype)
    v = model(batch["x"], t, batch, batch["layer"], batch["mask"])
    assert v.shape == batch["x"].shape and v.dtype == dtype
    assert torch.isfinite(v).all() and (v[~batch["mask"]] == 0).all()
    with pytest.raises(InputError, match="x"):
        model(batch["x"][:, :3], t, batch, batch["layer"], batch["mask"])


def test_output_is_permutation_equivariant(showers, pre, device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype).eval()
    batch = to(make_batch(showers, pre), device, dtype)
    t = torch.full((len(showers),), 0.3, device=device, dtype=dtype)
    perm = torch.randperm(batch["x"].shape[1], generator=torch.Generator().manual_seed(0)).to(device)
    v = model(batch["x"], t, batch, batch["layer"], batch["mask"])
    vp = model(batch["x"][:, perm], t, batch, batch["layer"][:, perm], batch["mask"][:, perm])
    torch.testing.assert_close(vp, v[:, perm], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ot_pairing", ["none", "layer"])
def test_loss_and_gradient_on_every_parameter(showers, pre, device, dtype, ot_pairing) -> None:
    model = small_model(device, dtype, ot_pairing=ot_pairing)
    batch = to(make_batch(showers, pre), device, dtype)
    g = torch.Generator(device=device).manual_seed(0)
    loss = model.loss(batch, generator=g)
    assert loss.ndim == 0 and torch.isfinite(loss) and 0.1 < loss.item() < 10.0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # counts are derived from layer and mask when the batch lacks them
    no_counts = {k: v for k, v in batch.items() if k != "counts"}
    again = model.loss(no_counts, generator=torch.Generator(device=device).manual_seed(0))
    torch.testing.assert_close(again, loss.detach())
    with pytest.raises(InputError, match="energy"):
        model.loss({k: v for k, v in batch.items() if k != "energy"})


def test_loss_ignores_padding_values(showers, pre, device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype)
    batch = to(make_batch(showers, pre), device, dtype)
    dirty = dict(batch)
    dirty["x"] = torch.where(batch["mask"][..., None], batch["x"], torch.full_like(batch["x"], 50.0))
    a = model.loss(batch, generator=torch.Generator(device=device).manual_seed(1))
    b = model.loss(dirty, generator=torch.Generator(device=device).manual_seed(1))
    torch.testing.assert_close(a, b)


def test_sampling(showers, pre, device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype, dropout=0.1).train()
    batch = to(make_batch(showers, pre), device, dtype)
    cond = {k: batch[k] for k in CONDITION_KEYS}
    out = model.sample(cond, batch["counts"], generator=torch.Generator(device=device).manual_seed(0),
                       steps=3)
    assert isinstance(out, PanShowerSample) and model.training  # mode restored
    assert out.x.shape == (len(showers), int(batch["counts"].sum(1).max()), 3)
    assert out.x.dtype == dtype and out.layer.dtype == torch.int64 and out.mask.dtype == torch.bool
    assert torch.isfinite(out.x).all() and (out.x[~out.mask] == 0).all()
    for b in range(len(showers)):  # the requested points per layer
        got = torch.bincount(out.layer[b][out.mask[b]], minlength=L)
        assert torch.equal(got, batch["counts"][b])
    again = model.sample(cond, batch["counts"], steps=3,
                         generator=torch.Generator(device=device).manual_seed(0))
    torch.testing.assert_close(again.x, out.x)
    with pytest.raises(InputError, match="counts"):
        model.sample(cond, batch["counts"][:, :3])


def test_generate_physical_showers(showers, pre, device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype)
    counts = make_batch(showers, pre)["counts"].numpy()
    gen = model.generate(showers.conditions, pre, counts=counts, steps=2, batch_size=3,
                         generator=torch.Generator(device=device).manual_seed(0))
    assert isinstance(gen, PointShowers) and len(gen) == len(showers)
    np.testing.assert_array_equal(gen.n_points, counts.sum(1))
    real = gen.points[gen.mask]
    assert (real[:, 3] > 0).all() and np.isfinite(real).all()
    np.testing.assert_allclose(real[:, 2], pre.layer_z[real[:, 4].astype(int)], rtol=1e-6)
    with pytest.raises(InputError, match="counts"):
        model.generate(showers.conditions, pre)


def test_size_chunks_bound_padding() -> None:
    rng = np.random.default_rng(0)
    sizes = np.sort(np.exp(rng.uniform(np.log(100), np.log(6000), 300)).astype(int))
    for batch, tol in ((100, 0.25), (7, 0.0), (1000, 1.0)):
        chunks = size_chunks(sizes, batch, tol)
        assert chunks[0].start == 0 and chunks[-1].stop == len(sizes)
        assert all(a.stop == b.start for a, b in itertools.pairwise(chunks))
        for sl in chunks:
            part = sizes[sl]
            assert 1 <= len(part) <= batch
            if len(part) > 1:
                assert len(part) * part.max() <= (1 + tol) * part.sum()
    # sorted showers fill the calls: 300 sizes spanning 60x need only a few calls
    assert len(size_chunks(sizes, 100, 0.25)) <= 20
    # one call for equal sizes; every shower alone when nothing may be padded and all differ
    assert size_chunks(np.full(10, 50), 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert len(size_chunks(np.arange(1, 6), 10, 0.0)) == 5
    assert size_chunks(np.zeros(0, int), 4) == []
    with pytest.raises(InputError, match="batch_size"):
        size_chunks(sizes, 0)
    with pytest.raises(InputError, match="max_padding"):
        size_chunks(sizes, 4, -0.5)


def test_generate_chunks_by_size(showers, pre, device: str, dtype: torch.dtype) -> None:
    """Size-limited calls return the same counts per layer as one big call."""
    model = small_model(device, dtype)
    counts = make_batch(showers, pre)["counts"].numpy()
    kw = {"counts": counts, "steps": 2, "batch_size": 100}
    one = model.generate(showers.conditions, pre, max_padding=1e9, **kw,
                         generator=torch.Generator(device=device).manual_seed(0))
    many = model.generate(showers.conditions, pre, max_padding=0.0, **kw,
                          generator=torch.Generator(device=device).manual_seed(0))
    for gen in (one, many):
        for i in range(len(gen)):
            layers = gen.points[i][gen.mask[i]][:, 4].astype(int)
            np.testing.assert_array_equal(
                np.bincount(layers, minlength=counts.shape[1]), counts[i])


def test_save_load_round_trip(showers, pre, device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype).eval()
    batch = to(make_batch(showers, pre), device, dtype)
    config = json.loads(json.dumps(model.config.to_dict()))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)  # different random init, Fourier frequencies included
    loaded = PanShower(PanShowerConfig.from_dict(config)).to(device, dtype).eval()
    loaded.load_state_dict(state)
    t = torch.full((len(showers),), 0.5, device=device, dtype=dtype)
    torch.testing.assert_close(loaded(batch["x"], t, batch, batch["layer"], batch["mask"]),
                               model(batch["x"], t, batch, batch["layer"], batch["mask"]))
    cond = {k: batch[k] for k in CONDITION_KEYS}
    a = model.sample(cond, batch["counts"], steps=2, generator=torch.Generator(device=device).manual_seed(4))
    b = loaded.sample(cond, batch["counts"], steps=2, generator=torch.Generator(device=device).manual_seed(4))
    torch.testing.assert_close(a.x, b.x)


@pytest.mark.parametrize("window", [0, 1, 2])
def test_layer_window_is_respected(window: int, device: str, dtype: torch.dtype) -> None:
    # one block: a point's output depends only on points at most `window` layers away
    model = small_model(device, dtype, n_blocks=1, layer_window=window).eval()
    counts = torch.tensor([[2, 2, 2, 2, 2, 2]], device=device)
    layer, mask = layers_from_counts(counts)
    x = torch.randn(1, 12, 3, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    cond = {"particle": torch.tensor([2], device=device), "counts": counts,
            **{k: torch.tensor([0.3], device=device, dtype=dtype) for k in ("energy", "theta", "phi")}}
    t = torch.tensor([0.4], device=device, dtype=dtype)
    moved = x.clone()
    moved[0, 8] += 3.0  # a point of layer 4
    diff = (model(moved, t, cond, layer, mask) - model(x, t, cond, layer, mask)).abs().amax(-1)[0]
    dist = (layer[0] - 4).abs()
    far = dist > window
    assert (diff[far] == 0).all()
    near_others = (dist <= window) & (torch.arange(12, device=device) != 8)
    assert (diff[near_others] > 0).all()


def test_full_attention_without_window(device: str, dtype: torch.dtype) -> None:
    model = small_model(device, dtype, n_blocks=1, layer_window=None).eval()
    counts = torch.tensor([[1, 0, 0, 0, 0, 1]], device=device)
    layer, mask = layers_from_counts(counts)
    x = torch.randn(1, 2, 3).to(device, dtype)
    cond = {"particle": torch.tensor([0], device=device), "counts": counts,
            **{k: torch.zeros(1, device=device, dtype=dtype) for k in ("energy", "theta", "phi")}}
    t = torch.tensor([0.4], device=device, dtype=dtype)
    moved = x.clone()
    moved[0, 1] += 1.0
    assert (model(moved, t, cond, layer, mask)[0, 0] != model(x, t, cond, layer, mask)[0, 0]).any()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.skipif(not flex_available(), reason="this torch build has no FlexAttention")
def test_flex_and_dense_backends_agree(showers, pre, device: str) -> None:
    dense = small_model(device, torch.float32, attention="dense").eval()
    flex = small_model(device, torch.float32, attention="flex").eval()
    flex.load_state_dict(dense.state_dict())
    batch = to(make_batch(showers, pre), device, torch.float32)
    t = torch.full((len(showers),), 0.7, device=device)
    args = (batch["x"], t, batch, batch["layer"], batch["mask"])
    with torch.no_grad():  # FlexAttention has no backward on the CPU in torch 2.13
        torch.testing.assert_close(flex(*args), dense(*args), atol=1e-4, rtol=1e-4)
