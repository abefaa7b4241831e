"""The voxel-sequence transformers: voxel scalings and the voxels data kind, TransformerMLM
masking and training, the VQ-VAE tokenizer, the autoregressive prior (frozen tokenizer, causal
mask, cached sampling, checkpoints), the discrete default energies of ``sample``, the benchmark
helpers, the commands, and the ``par04-scipb`` preset."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_in_process

from showerformer.data.voxels import VoxelGridDataset, VoxelScaling, grid_shape
from showerformer.errors import InputError
from showerformer.geometry import CylindricalGeometry, get_geometry
from showerformer.io import write_calochallenge
from showerformer.models import transformer_mlm
from showerformer.models.transformer_mlm import TransformerMLM, random_patch_mask
from showerformer.models.vq_prior import VQPrior
from showerformer.models.vq_vae import VQVAE
from showerformer.showers import Conditions, VoxelShowers
from showerformer.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (4, 10, 3)  # (z, phi, r)
ENERGIES = (64e3, 128e3, 256e3)
PATCH = [3, 5, 2]  # (dr, dphi, dz): 1 x 2 x 2 = 4 tokens on GRID
MLM = {"patch_size": PATCH, "d_model": 8, "n_heads": 2, "n_blocks": 1, "ffn_dim": 16}
VQ = {"patch_size": PATCH, "d_model": 8, "n_heads": 2, "encoder_blocks": 1, "decoder_blocks": 1,
      "ffn_dim": 16, "latent_tokens": 6, "code_dim": 4, "n_codes": 8}
PRIOR = {"d_model": 8, "n_heads": 2, "n_blocks": 1, "ffn_dim": 16}
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_geometry(pitch: float = 2.0, name: str = "tiny") -> CylindricalGeometry:
    return CylindricalGeometry.uniform(GRID[0], GRID[1], np.arange(4) * pitch, 3.4, name)


def tiny_showers(n: int = 24, seed: int = 0, geometry: Any = None) -> VoxelShowers:
    """``n`` showers of exponential cell energies (60 % of the cells hit) at 64 / 128 / 256 GeV,
    every energy present."""
    geometry = geometry or tiny_geometry()
    rng = np.random.default_rng(seed)
    cells = int(np.prod(GRID))
    energies = rng.exponential(50.0, (n, cells)) * (rng.random((n, cells)) < 0.6)
    e = np.asarray(ENERGIES)[np.arange(n) % 3]
    cond = Conditions(e, np.full(n, 11), rng.uniform(1.22, 1.57, n), np.zeros(n))
    return VoxelShowers(energies.astype(np.float32), cond, geometry)


def tiny_dataset(n: int = 24, seed: int = 0) -> VoxelGridDataset:
    s = tiny_showers(n, seed)
    return VoxelGridDataset(s.energies.reshape(n, *GRID), s.conditions, s.geometry)


def batch_of(ds: VoxelGridDataset, n: int = 6) -> dict[str, torch.Tensor]:
    return ds.collate_fn([ds[i] for i in range(n)])


def save(model: Any, root: Path) -> Path:
    info = {"family": model.family, "model_config": model.config.to_dict(),
            "preprocessing": model.data_state(), "state": {"step": 1}}
    return ckpt.save_checkpoint(root, 1, model=model, info=info)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VQ-VAE checkpoint trained on nothing (its weights are what the prior copies)."""
    torch.manual_seed(0)
    vq = VQVAE.from_data(VQ, tiny_dataset(), {})
    return save(vq, tmp_path_factory.mktemp("tokenizer") / "checkpoints")


def make_prior(tokenizer_path: Path, **overrides: Any) -> VQPrior:
    torch.manual_seed(1)
    return VQPrior.from_data({**PRIOR, "tokenizer_checkpoint": str(tokenizer_path), **overrides},
                             tiny_dataset(), {})


def one_line(exc: pytest.ExceptionInfo[InputError]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# -- VoxelScaling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "log"])
def test_scaling_maps_into_the_unit_interval_and_inverts(kind: str) -> None:
    ds = tiny_dataset()
    scaling = VoxelScaling.fit(kind, ds.voxels, ds.conditions.energy, threshold_mev=2.0)
    x = torch.from_numpy(ds.voxels).double()
    e = torch.as_tensor(ds.conditions.energy, dtype=torch.float64)
    y = scaling.forward(x, e)
    assert y.shape == x.shape and float(y.min()) == 0.0 and float(y.max()) <= 1.0
    if kind == "linear":
        assert float(y.max()) == 1.0  # the brightest training cell
    back = scaling.inverse(y, e)
    above = x >= 2.0 * (1 + 1e-6)
    below = x < 2.0 * (1 - 1e-6)
    assert above.any() and (below & (x > 0)).any()
    torch.testing.assert_close(back[above], x[above], rtol=1e-5, atol=0.0)
    assert torch.all(back[below] == 0)
    unthresholded = scaling.inverse(y, e, threshold=False)
    torch.testing.assert_close(unthresholded[x > 0], x[x > 0], rtol=1e-5, atol=0.0)


def test_scaling_defaults_its_threshold_and_clips_brighter_showers() -> None:
    ds = tiny_dataset()
    scaling = VoxelScaling.fit("linear", ds.voxels, ds.conditions.energy)
    assert scaling.threshold_mev == float(ds.voxels[ds.voxels > 0].min())
    x = torch.from_numpy(ds.voxels[:3]) * 10
    y = scaling.forward(x, torch.as_tensor(ds.conditions.energy[:3], dtype=torch.float32))
    assert float(y.max()) == 1.0 and float(y.min()) == 0.0


def test_scaling_dict_round_trip_and_errors() -> None:
    ds = tiny_dataset()
    for kind in ("linear", "log"):
        s = VoxelScaling.fit(kind, ds.voxels, ds.conditions.energy, log_floor=1e-3)
        assert VoxelScaling.from_dict(s.to_dict()) == s
        assert VoxelScaling.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(InputError, match="scaling") as exc:
        VoxelScaling("sqrt", 1.0)
    one_line(exc)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="max_ratio") as exc:
            VoxelScaling("linear", bad)
        one_line(exc)
    with pytest.raises(InputError, match="max_ratio"):  # showers without energy
        VoxelScaling.fit("log", np.zeros((3, 4, 10, 3)), np.full(3, 64e3))
    with pytest.raises(InputError) as exc:
        VoxelScaling.from_dict({"kind": "linear"})
    assert exc.value.key == "scaling.max_ratio"
    with pytest.raises(InputError, match="scaling"):
        VoxelScaling.from_dict({"kind": "linear", "max_ratio": "big"})


# -- the voxels data kind -------------------------------------------------------------------------


def test_voxel_datasets_read_grids_split_and_cap(tmp_path: Path) -> None:
    from showerformer.training.datasets import voxel_datasets

    showers = tiny_showers(24)
    path = write_calochallenge(tmp_path / "tiny.h5", showers)
    train, val = voxel_datasets(path)
    assert val is None and train.voxels.shape == (24, *GRID) and train.shape == GRID
    np.testing.assert_array_equal(train.voxels, showers.energies.reshape(24, *GRID))
    np.testing.assert_array_equal(train.conditions.energy, showers.conditions.energy)
    item = train[5]
    assert item["voxels"].shape == GRID and float(item["energy"]) == ENERGIES[2]

    train, val = voxel_datasets(path, val_fraction=0.25, seed=3)
    assert (len(train), len(val)) == (18, 6)
    both = np.concatenate([train.voxels, val.voxels]).reshape(24, -1)
    assert len(np.unique(both, axis=0)) == 24  # disjoint, nothing lost
    again, _ = voxel_datasets(path, val_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.voxels, train.voxels)

    train, val = voxel_datasets(path, val_fraction=0.2, max_showers=10)
    assert (len(train), len(val)) == (8, 2)
    train, _ = voxel_datasets(path, max_showers=7)
    np.testing.assert_array_equal(train.voxels, showers.energies[:7].reshape(7, *GRID))


def test_voxel_datasets_refuse_other_cells_and_irregular_grids(tmp_path: Path) -> None:
    from showerformer.training.datasets import DATA_KINDS, read_data_settings, voxel_datasets

    path = write_calochallenge(tmp_path / "tiny.h5", tiny_showers(12))
    other = write_calochallenge(tmp_path / "wide.h5",
                                tiny_showers(6, geometry=tiny_geometry(3.0, "wide")))
    with pytest.raises(InputError) as exc:
        voxel_datasets(path, val_data=other)
    assert exc.value.key == "geometry" and "wide.h5" in one_line(exc)
    train, val = voxel_datasets(path, val_data=path)
    assert len(train) == len(val) == 12

    with pytest.raises(InputError) as exc:
        grid_shape(get_geometry("ds1-photons"))
    assert exc.value.key == "geometry" and "ds1-photons" in one_line(exc)
    ds1 = get_geometry("ds1-photons")
    irregular = write_calochallenge(
        tmp_path / "ds1.h5", VoxelShowers(np.ones((2, ds1.n_cells), np.float32),
                                          Conditions(np.full(2, 1e4), np.full(2, 22),
                                                     np.full(2, np.pi / 2), np.zeros(2)), ds1))
    with pytest.raises(InputError) as exc:
        voxel_datasets(irregular)
    assert "ds1.h5" in one_line(exc) and exc.value.key == "geometry"

    with pytest.raises(InputError, match="val-fraction"):
        voxel_datasets(path, val_fraction=1.0)
    with pytest.raises(InputError, match="max-showers"):
        voxel_datasets(path, max_showers=0)
    with pytest.raises(InputError) as exc:
        read_data_settings(DATA_KINDS["voxels"], {}, {"max_showers": 0})
    assert exc.value.key == "data.max_showers"


# -- TransformerMLM -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "ratio", "k"), [(75, 0.75, 56), (4, 0.75, 3), (12, 0.75, 9),
                                               (10, 0.5, 5), (20, 0.1, 2), (3, 0.1, 1),
                                               (3, 0.99, 2)])
def test_random_patch_mask_masks_exactly_k_patches(n: int, ratio: float, k: int) -> None:
    g = torch.Generator().manual_seed(0)
    mask = random_patch_mask(16, n, ratio, generator=g)
    assert mask.shape == (16, n) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [k] * 16
    if 0 < k < n and math.comb(n, k) > 16:
        assert len({tuple(row) for row in mask.tolist()}) > 1  # drawn per shower
    again = random_patch_mask(16, n, ratio, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_mlm_network_sees_the_masked_patches_zeroed(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    ds = tiny_dataset()
    model = TransformerMLM.from_data(MLM, ds, {})
    assert model.config.n_patches == 4 and model.config.patch_dim == 30
    masks: list[torch.Tensor] = []

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        masks.append(random_patch_mask(*args, **kwargs))
        return masks[-1]

    seen: list[torch.Tensor] = []
    monkeypatch.setattr(transformer_mlm, "random_patch_mask", recording)
    hook = model.embed.proj_in.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    batch = batch_of(ds, 8)
    model.train()
    loss = model.loss(batch)
    hook.remove()
    assert torch.isfinite(loss)
    (mask,), (inp,) = masks, seen
    assert mask.shape == (8, 4) and mask.sum(1).tolist() == [3] * 8
    patches = model.embed.tokens(model.scaling.forward(batch["voxels"], batch["energy"]))
    assert inp.shape == patches.shape == (8, 4, 30)
    assert torch.all(inp[mask] == 0)
    assert torch.equal(inp[~mask], patches[~mask]) and bool((patches[mask] != 0).any())


def test_mlm_training_reduces_the_loss_and_represents_deterministically() -> None:
    torch.manual_seed(0)
    ds = tiny_dataset()
    model = TransformerMLM.from_data(MLM, ds, {})
    batch = batch_of(ds, 12)
    model.eval()
    with torch.no_grad():
        before = float(model.loss(batch))
        assert float(model.loss(batch)) == before  # fixed validation masks
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        loss = model.loss(batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = float(model.loss(batch))
    assert after < before, (before, after)
    model.train()
    rep = model.represent(batch["voxels"], batch["energy"])
    assert rep.shape == (12, 8) and torch.isfinite(rep).all()
    assert torch.equal(rep, model.represent(batch["voxels"], batch["energy"]))
    assert not torch.allclose(rep[0], rep[1])
    assert model.training  # represent restores the mode
    rec = model.reconstruct(batch["voxels"], batch["energy"])
    assert rec.shape == (12, *GRID) and bool((rec >= 0).all())


@pytest.mark.parametrize(("overrides", "key"), [
    ({"mask_ratio": 1.0}, "mask_ratio"), ({"mask_ratio": 0.0}, "mask_ratio"),
    ({"patch_size": [2, 5, 2]}, "patch_size"), ({"patch_size": [3, 3, 2]}, "patch_size"),
    ({"d_model": 10, "n_heads": 4}, "d_model"), ({"loss_on": "some"}, "loss_on"),
    ({"scaling": "sqrt"}, "scaling"), ({"grid": [4, 10, 4]}, "grid"),
])
def test_mlm_config_errors_name_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(InputError) as exc:
        TransformerMLM.from_data({**MLM, **overrides}, tiny_dataset(6), {})
    assert exc.value.key == key and key in one_line(exc)


# -- VQ-VAE ---------------------------------------------------------------------------------------


def test_vq_vae_tokens_reconstruction_and_straight_through_gradients() -> None:
    torch.manual_seed(0)
    ds = tiny_dataset()
    model = VQVAE.from_data(VQ, ds, {})
    batch = batch_of(ds, 8)
    tokens = model.tokenize(batch["voxels"], batch["energy"])
    assert tokens.shape == (8, 6) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 8
    rec = model.reconstruct(batch["voxels"], batch["energy"])
    assert torch.equal(model.detokenize(tokens, batch["energy"]), rec)
    assert rec.shape == (8, *GRID) and bool((rec >= 0).all()) and torch.isfinite(rec).all()
    rep = model.represent(batch["voxels"], batch["energy"])
    assert rep.shape == (8, 8)

    torch.manual_seed(0)
    model = VQVAE.from_data({**VQ, "beta": 0.0}, ds, {})  # no commitment term: the
    model.train()  # encoder's gradient comes through the quantizer alone
    loss = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("embed.proj_in.weight", "to_latent.weight", "from_latent.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_vq_vae_codebook_updates_only_in_training_mode() -> None:
    torch.manual_seed(0)
    ds = tiny_dataset()
    model = VQVAE.from_data({**VQ, "restart_threshold": 0.0}, ds, {})
    batch = batch_of(ds, 8)
    names = ("embedding", "cluster_size", "embed_sum")

    def buffers() -> dict[str, torch.Tensor]:
        return {n: getattr(model.quantizer, n).clone() for n in names}

    model.eval()
    start = buffers()
    model.loss(batch)
    model.tokenize(batch["voxels"], batch["energy"])
    assert all(torch.equal(start[n], getattr(model.quantizer, n)) for n in names)
    model.train()
    model.loss(batch)
    assert all(not torch.equal(start[n], getattr(model.quantizer, n)) for n in names)
    before = buffers()
    model.tokenize(batch["voxels"], batch["energy"])  # no update while tokenizing
    assert all(torch.equal(before[n], getattr(model.quantizer, n)) for n in names)
    assert model.training


def test_vq_vae_detokenize_refuses_bad_tokens() -> None:
    torch.manual_seed(0)
    model = VQVAE.from_data(VQ, tiny_dataset(6), {})
    e = torch.full((2,), 64e3)
    for bad in (torch.full((2, 6), 8), torch.full((2, 6), -1)):
        with pytest.raises(InputError) as exc:
            model.detokenize(bad, e)
        assert exc.value.key == "tokens" and "codebook" in one_line(exc)
    with pytest.raises(InputError) as exc:
        model.detokenize(torch.zeros(2, 5, dtype=torch.int64), e)
    assert exc.value.key == "tokens"


# -- the VQ prior ---------------------------------------------------------------------------------


def test_prior_keeps_its_tokenizer_frozen(tokenizer_path: Path) -> None:
    prior = make_prior(tokenizer_path)
    tok, _ = ckpt.load_checkpoint(tokenizer_path)
    for name, value in tok.state_dict().items():
        assert torch.equal(prior.tokenizer.state_dict()[name], value), name
    trainable = [n for n, p in prior.named_parameters() if p.requires_grad]
    assert trainable and not [n for n in trainable if n.startswith("tokenizer.")]
    prior.train()
    assert prior.training and not any(m.training for m in prior.tokenizer.modules())
    codes = prior.tokenizer.quantizer.embedding.clone()
    loss = prior.loss(batch_of(tiny_dataset(), 8))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.equal(codes, prior.tokenizer.quantizer.embedding)
    assert all(p.grad is None for p in prior.tokenizer.parameters())
    assert prior.embed.weight.grad is not None


def test_prior_is_causal(tokenizer_path: Path) -> None:
    prior = make_prior(tokenizer_path).double().eval()
    g = torch.Generator().manual_seed(0)
    b, t, v = 3, prior.n_tokens, prior.n_codes
    tokens = torch.randint(0, v, (b, t), generator=g)
    cond = prior.condition_token(torch.tensor([64e3, 128e3, 256e3], dtype=torch.float64),
                                 torch.tensor([1.3, 1.4, 1.5], dtype=torch.float64))
    with torch.no_grad():
        logits = prior(cond, tokens)
        assert logits.shape == (b, t, v) and logits.dtype == torch.float64
        for i in range(t - 1):
            changed = tokens.clone()
            changed[:, i:] = (changed[:, i:] + 1 + torch.arange(t - i)) % v
            out = prior(cond, changed)
            torch.testing.assert_close(out[:, :i + 1], logits[:, :i + 1], rtol=0, atol=1e-12)
            assert not torch.allclose(out[:, i + 1], logits[:, i + 1])  # token i is seen next


@pytest.mark.parametrize("filters", [{}, {"top_k": 3}, {"top_p": 0.8},
                                     {"top_k": 5, "top_p": 0.9, "temperature": 0.7}])
def test_cached_and_uncached_sampling_draw_the_same_tokens(tokenizer_path: Path,
                                                           filters: dict[str, Any]) -> None:
    prior = make_prior(tokenizer_path)
    energy = torch.tensor([64e3, 128e3, 256e3, 64e3], dtype=torch.float64)
    theta = torch.tensor([1.25, 1.3, 1.4, 1.55], dtype=torch.float64)
    opts = {"temperature": 1.0, **filters}
    logits: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    drawn = [prior.sample_tokens(energy, theta, kv_cache=kv,
                                 generator=torch.Generator().manual_seed(5),
                                 callback=lambda step, kv=kv: logits[kv].append(step["logits"]),
                                 **opts)
             for kv in (True, False)]
    assert drawn[0].shape == (4, prior.n_tokens) and drawn[0].dtype == torch.int64
    assert torch.equal(drawn[0], drawn[1])
    assert len(logits[True]) == len(logits[False]) == prior.n_tokens
    torch.testing.assert_close(torch.stack(logits[True]), torch.stack(logits[False]),
                               rtol=1e-5, atol=1e-6)
    assert len(torch.unique(drawn[0])) > 1
    if "top_k" in filters:
        assert int(drawn[0].max()) < prior.n_codes
    other = prior.sample_tokens(energy, theta, kv_cache=True,
                                generator=torch.Generator().manual_seed(6), **opts)
    assert not torch.equal(other, drawn[0])


def test_greedy_sampling_needs_no_generator(tokenizer_path: Path) -> None:
    prior = make_prior(tokenizer_path)
    energy, theta = torch.full((2,), 128e3), torch.full((2,), 1.4)
    a = prior.sample_tokens(energy, theta, temperature=0.0)
    b = prior.sample_tokens(energy, theta, temperature=0.0, kv_cache=False)
    assert torch.equal(a, b) and torch.equal(a, prior.sample_tokens(energy, theta,
                                                                     temperature=0.0))


def test_prior_generates_showers_on_the_tokenizer_cells(tokenizer_path: Path) -> None:
    from showerformer.generation import sample_conditions, trained_conditions

    prior = make_prior(tokenizer_path)
    cond = sample_conditions(trained_conditions(prior), 5, seed=1)
    gen = prior.generate(cond, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert isinstance(gen, VoxelShowers) and len(gen) == 5
    assert gen.geometry.same_cells(prior.tokenizer.geometry)
    assert gen.geometry.shape == GRID
    assert np.isfinite(gen.energies).all() and (gen.energies >= 0).all()
    again = prior.generate(cond, generator=torch.Generator().manual_seed(0), batch_size=2,
                           kv_cache=False)
    np.testing.assert_array_equal(again.energies, gen.energies)
    assert prior.training


def test_prior_needs_a_vq_vae_tokenizer(tmp_path: Path) -> None:
    ds = tiny_dataset(6)
    with pytest.raises(InputError) as exc:
        VQPrior.from_data(PRIOR, ds, {})
    assert exc.value.key == "tokenizer_checkpoint" and "vq-vae" in one_line(exc)
    torch.manual_seed(0)
    mlm = save(TransformerMLM.from_data(MLM, ds, {}), tmp_path / "mlm")
    with pytest.raises(InputError) as exc:
        VQPrior.from_data({**PRIOR, "tokenizer_checkpoint": str(mlm)}, ds, {})
    text = one_line(exc)
    assert exc.value.key == "tokenizer_checkpoint" and "transformer-mlm" in text
    with pytest.raises(InputError) as exc:
        VQPrior.from_data({**PRIOR, "tokenizer_checkpoint": str(tmp_path / "none")}, ds, {})
    assert exc.value.key.startswith("tokenizer_checkpoint")
    one_line(exc)


def test_prior_checkpoint_round_trip_generates_the_same_showers(tokenizer_path: Path,
                                                                tmp_path: Path) -> None:
    prior = make_prior(tokenizer_path, top_k=4)
    folder = save(prior, tmp_path / "prior")
    loaded, info = ckpt.load_checkpoint(folder)
    assert info["family"] == "vq-prior" and loaded.config == prior.config
    assert loaded.data_state() == prior.data_state()
    assert not any(p.requires_grad for p in loaded.tokenizer.parameters())
    cond = Conditions(np.array(ENERGIES), np.full(3, 11), np.array([1.3, 1.4, 1.5]),
                      np.zeros(3))
    a = prior.eval().generate(cond, generator=torch.Generator().manual_seed(2))
    b = loaded.generate(cond, generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(a.energies, b.energies)


def test_prior_sampling_speed_rows(tokenizer_path: Path) -> None:
    from showerformer.benchmark.voxel_transformers import prior_sampling_speed

    rows = prior_sampling_speed(make_prior(tokenizer_path), (2,), repeats=1, cap_s=1.0)
    assert [(r["batch"], r["kv_cache"]) for r in rows] == [(2, True), (2, False)]
    assert rows[0]["speedup"] > 0 and rows[1]["speedup"] is None
    assert all(r["tokens_ms_per_shower"] > 0 and r["decode_ms_per_shower"] > 0 for r in rows)
    assert rows[0]["same_tokens"] == 1.0


def test_mlm_ablation_reports_the_tokens_of_the_data_grid(tmp_path: Path) -> None:
    from showerformer.benchmark.voxel_transformers import run_mlm_ablation

    data = write_calochallenge(tmp_path / "tiny.h5", tiny_showers())
    cfg = {"model": {"family": "transformer-mlm", **MLM},
           "train": {"batch_size": 8, "warmup_steps": 0, "precision": "fp32"},
           "data": {"val_fraction": 0.25}}
    out = run_mlm_ablation(data, tmp_path / "abl", config=cfg,
                           variants={"base": {}, "finer": {"patch_size": [3, 5, 1]}}, steps=1,
                           max_showers=None)
    rows = {r["variant"]: r for r in out["rows"]}
    assert (rows["base"]["tokens"], rows["base"]["patch_dim"]) == (4, 30)
    assert (rows["finer"]["tokens"], rows["finer"]["patch_dim"]) == (8, 15)
    assert all(math.isfinite(r["val_loss"]) and r["parameters"] > 0 for r in rows.values())
    assert json.loads((tmp_path / "abl" / "ablation.json").read_text())["rows"][0]["tokens"] == 4


# -- sample_conditions ----------------------------------------------------------------------------


def test_sample_conditions_draw_the_discrete_training_energies() -> None:
    from showerformer.generation import sample_conditions

    trained = {"pdg": [11], "energy_mev": [64e3, 256e3], "energy_values_mev": list(ENERGIES),
               "theta": [1.22, 1.57], "phi": [0.0, 0.0]}
    c = sample_conditions(trained, 300, seed=0)
    assert set(np.unique(c.energy).tolist()) == set(ENERGIES)
    assert (c.theta >= 1.22).all() and (c.theta <= 1.57).all() and (c.pdg == 11).all()
    uniform = sample_conditions(trained, 50, spectrum="uniform", seed=0)
    assert len(np.unique(uniform.energy)) > 3
    assert uniform.energy.min() >= 64e3 and uniform.energy.max() <= 256e3
    continuous = sample_conditions({k: v for k, v in trained.items()
                                    if k != "energy_values_mev"}, 50, seed=0)
    assert len(np.unique(continuous.energy)) > 3
    fixed = sample_conditions(trained, 4, energy="100", seed=0)
    assert np.allclose(fixed.energy, 100e3)


# -- benchmark helpers ----------------------------------------------------------------------------


def test_energy_classes_discrete_and_continuous() -> None:
    from showerformer.benchmark.probe import energy_classes

    # the nearest training energy in log E: 93 GeV is nearer 128 than 64, 186 nearer 256
    cls, labels = energy_classes(np.array([64e3, 128e3, 256e3, 64e3]),
                                 np.array([60e3, 130e3, 250e3, 88e3, 93e3, 175e3, 186e3, 64e3]))
    assert cls.tolist() == [0, 1, 2, 0, 1, 1, 2, 0] and cls.dtype == np.int64
    assert labels == ["64 GeV", "128 GeV", "256 GeV"]
    train = np.logspace(3, 6, 40)
    cls, labels = energy_classes(train, np.array([500.0, 2e3, 2e4, 5e5, 1e6, 2e6]), bins=3)
    assert cls.tolist() == [0, 0, 1, 2, 2, 2] and len(labels) == 3


def test_angle_classes() -> None:
    from showerformer.benchmark.probe import angle_classes

    train = np.linspace(1.2, 1.7, 30)
    cls, labels = angle_classes(train, np.array([1.1, 1.25, 1.35, 1.45, 1.55, 1.65, 1.7, 1.8]))
    assert cls.tolist() == [0, 0, 1, 2, 3, 4, 4, 4] and len(labels) == 5
    with pytest.raises(InputError) as exc:
        angle_classes(np.full(5, 1.4), np.full(2, 1.4))
    assert exc.value.key == "theta"
    one_line(exc)


def test_profile_tails_and_cell_energy_separation() -> None:
    from showerformer.benchmark.voxel_transformers import profile_tails, voxel_energy_separation

    ref = tiny_showers(30)
    same = profile_tails(ref, ref, GRID)
    assert [r["energy"] for r in same] == ["all", "64 GeV", "128 GeV", "256 GeV"]
    for row in same:
        for axis in ("longitudinal", "lateral"):
            assert row[axis]["tail_rel_diff"] == 0.0 and row[axis]["max_bin_rel_diff"] == 0.0
    grids = ref.energies.reshape(-1, *GRID).copy()
    grids[:, 2:] *= 2.0  # the last two of four layers
    brighter = profile_tails(ref, VoxelShowers(grids.reshape(30, -1), ref.conditions,
                                               ref.geometry), GRID)
    grids[:, 2:] *= 0.25
    dimmer = profile_tails(ref, VoxelShowers(grids.reshape(30, -1), ref.conditions,
                                             ref.geometry), GRID)
    for up, down in zip(brighter, dimmer, strict=True):
        assert up["longitudinal"]["first_bin"] >= 2
        assert up["longitudinal"]["tail_rel_diff"] == pytest.approx(1.0, rel=1e-6)
        assert down["longitudinal"]["tail_rel_diff"] == pytest.approx(-0.5, rel=1e-6)

    sep = voxel_energy_separation(ref, ref)
    assert sep["separation"] == 0.0 and sep["cells_ref"] == sep["cells_gen"] > 0
    hot = VoxelShowers(ref.energies * 30, ref.conditions, ref.geometry)
    assert voxel_energy_separation(ref, hot)["separation"] > 0.1


def test_probe_separates_an_easy_problem_and_the_mlp_vae_runs() -> None:
    from showerformer.benchmark.probe import MLPVAE, ProbeSettings, probe_accuracy

    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 4.0, 0.0], [0.0, 4.0, 0.0, 4.0]])

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 3
        return centers[y] + 0.5 * torch.randn(n, 4, generator=g), y

    (xt, yt), (xs, ys) = draw(150), draw(60)
    settings = ProbeSettings(hidden=16, epochs=15, batch_size=32)
    res = probe_accuracy(xt, yt, xs, ys, 3, settings)
    assert res["accuracy"] > 0.9 and res["train_accuracy"] > 0.9
    assert 0 <= res["accuracy_err"] < 0.05
    assert probe_accuracy(xt, yt, xs, ys, 3, settings)["accuracy"] == res["accuracy"]

    torch.manual_seed(0)
    vae = MLPVAE(120, latent=4)
    x = torch.rand(6, 120)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (6, 4)
    loss = vae.loss(x, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    with pytest.raises(InputError, match="theta-bins"):
        ProbeSettings(theta_bins=1)


# -- commands -------------------------------------------------------------------------------------

TINY_TRAIN = ["--max-steps", "2", "--no-progress", "--set", "train.batch_size=8",
              "--set", "train.warmup_steps=0", "--set", "train.device=cpu"]


def test_train_vq_vae_then_prior_then_sample(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from showerformer.io.detect import read_showers

    data = write_calochallenge(tmp_path / "tiny.h5", tiny_showers(24))
    vq = [f"model.{k}={json.dumps(v)}" for k, v in VQ.items()]
    res = run_in_process(capsys, "train", "--config", CONFIGS / "vq_vae_par04.yaml", "--data",
                         data, "--out", tmp_path / "vq", *TINY_TRAIN,
                         *[a for s in vq for a in ("--set", s)])
    assert res.code == 0, res.stderr
    prior = [f"model.{k}={json.dumps(v)}" for k, v in PRIOR.items()]
    res = run_in_process(capsys, "train", "--config", CONFIGS / "vq_prior_par04.yaml", "--data",
                         data, "--out", tmp_path / "prior", *TINY_TRAIN,
                         "--set", f"model.tokenizer_checkpoint={tmp_path / 'vq'}",
                         *[a for s in prior for a in ("--set", s)])
    assert res.code == 0, res.stderr
    out = tmp_path / "gen.h5"
    res = run_in_process(capsys, "sample", tmp_path / "prior", "--n", "5", "--out", out,
                         "--top-k", "4", "--device", "cpu")
    assert res.code == 0, res.stderr
    gen = read_showers(out)
    assert isinstance(gen, VoxelShowers) and len(gen) == 5
    assert gen.geometry.shape == GRID and (gen.energies >= 0).all()
    assert set(np.unique(gen.conditions.energy).tolist()) <= set(ENERGIES)


def test_mlm_ablation_refuses_an_unknown_variant(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = write_calochallenge(tmp_path / "tiny.h5", tiny_showers(6))
    res = run_in_process(capsys, "benchmark", "mlm-ablation", "--data", data, "--config",
                         CONFIGS / "transformer_mlm_par04.yaml", "--variant", "patch 1x1x1",
                         "--out", tmp_path / "ablation")
    assert_one_line_error(res, "--variant", "patch 1x1x1")
    assert not (tmp_path / "ablation").exists()


def test_voxel_speed_refuses_a_missing_mlm_config(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    res = run_in_process(capsys, "benchmark", "voxel-speed", tmp_path / "prior",
                         "--mlm-config", tmp_path / "missing.yaml")
    assert_one_line_error(res, "missing.yaml")


@pytest.mark.parametrize(("family", "part", "count"), [
    ("transformer-mlm", "encoder", "530,176"),  # 4 blocks, d = 128, feed-forward 256
    ("vq-vae", "to_latent", "23,042,400"),  # 75 x 128 -> 150 x 16, with bias
    ("vq-prior", "tokenizer (frozen)", "46,761,340"),
])
def test_model_summary_of_the_voxel_families(family: str, part: str, count: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    res = run_in_process(capsys, "model-summary", family)
    assert res.code == 0
    line = next(t for t in res.stdout.splitlines() if t.startswith(part))
    assert line.split()[-1] == count


# -- the par04-scipb preset -----------------------------------------------------------------------


def test_par04_scipb_preset() -> None:
    from showerformer.simulation import simulate

    showers = simulate("par04-scipb", n=6, seed=0)
    geo = showers.geometry
    assert isinstance(showers, VoxelShowers) and len(showers) == 6
    assert geo.name == "par04-scipb" and geo.shape == (45, 50, 18)
    assert showers.energies.shape == (6, 45 * 50 * 18)
    assert np.isfinite(showers.energies).all() and (showers.energies >= 0).all()
    assert (showers.energies.sum(axis=1) > 0).all()
    assert set(np.unique(showers.conditions.energy).tolist()) <= set(ENERGIES)
    par04 = get_geometry("par04")
    assert par04.shape == geo.shape and par04.n_cells == geo.n_cells
    assert not geo.same_cells(par04)
    np.testing.assert_allclose(geo.layers[0].r_edges, 2 * par04.layers[0].r_edges)
    assert np.diff(geo.z_edges)[0] > 2 * np.diff(par04.z_edges)[0]
    assert get_geometry("par04-scipb").same_cells(geo)
