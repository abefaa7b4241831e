"""CaloChallenge high-level features: hand-computed showers, the official definitions, streaming."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.evaluation.features import (
    DS23_THRESHOLD,
    FeatureAccumulator,
    FeatureSet,
    classifier_inputs,
    classifier_inputs_streaming,
    compute_features,
    compute_features_streaming,
    default_threshold,
    histogram_names,
    official_binning,
    voxel_grid_edges,
)
from showerformer.geometry import get_geometry
from showerformer.showers import Conditions, VoxelShowers


def _showers(name: str, cells: dict[int, float], e_inc: float = 1000.0) -> VoxelShowers:
    """One shower with the given {cell index: energy}."""
    geo = get_geometry(name)
    e = np.zeros((1, geo.n_cells), dtype=np.float32)
    for c, v in cells.items():
        e[0, c] = v
    return VoxelShowers(e, Conditions([e_inc]), geo)


def _random(name: str, n: int = 40, occupancy: float = 0.3, seed: int = 0) -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = rng.lognormal(-2.0, 2.0, size=(n, geo.n_cells)).astype(np.float32)
    e[rng.random(e.shape) > occupancy] = 0.0
    return VoxelShowers(e, Conditions(10 ** rng.uniform(3, 6, n)), geo)


def _cell(geo, layer: int, alpha: int, r: int) -> int:
    lay = geo.layers[layer]
    return int(geo.layer_offsets[layer]) + alpha * lay.n_r + r


# ---------------------------------------------------------------------------- hand-made, ds2
def test_default_thresholds():
    assert default_threshold("ds1-photons") == 1.0
    assert default_threshold("ds1-pions") == 1.0
    assert default_threshold("ds2") == pytest.approx(0.5e-3 / 0.033)
    assert default_threshold("ds3") == pytest.approx(0.01515151515)
    assert default_threshold("sandwich32") == 0.0


def test_default_threshold_is_the_geometry_s_readout_threshold():
    from showerformer.geometry import CartesianGeometry

    geo = CartesianGeometry((2, 2, 2), (1.0, 1.0, 1.0), name="ds2", readout_threshold_mev=0.2)
    assert default_threshold(geo) == 0.2  # the geometry's own, whatever its name
    assert FeatureAccumulator(geo).threshold == 0.2
    assert default_threshold(get_geometry("ds2")) == DS23_THRESHOLD


def test_single_cell_ds2():
    geo = get_geometry("ds2")
    c = _cell(geo, 3, 5, 2)  # layer 3, alpha bin 5 of 16, r bin 2 (9.3-13.95 mm)
    fs = compute_features(_showers("ds2", {c: 5.0}, e_inc=2000.0))
    f = fs.features
    r_mid = 2.5 * 4.65
    alpha = -math.pi + (5 + 0.5) * 2 * math.pi / 16
    assert f["E_layer_3"][0] == pytest.approx(5.0)
    assert f["E_tot"][0] == pytest.approx(5.0)
    assert f["E_tot/E_inc"][0] == pytest.approx(5.0 / 2000.0)
    assert f["EC_eta_3"][0] == pytest.approx(r_mid * math.cos(alpha), abs=1e-9)
    assert f["EC_phi_3"][0] == pytest.approx(r_mid * math.sin(alpha), abs=1e-9)
    assert f["EC_r_3"][0] == pytest.approx(r_mid)
    for w in ("width_eta_3", "width_phi_3", "width_r_3"):
        assert f[w][0] == pytest.approx(0.0, abs=1e-6)
    assert f["sparsity_3"][0] == pytest.approx(1.0 - 1.0 / 144.0)
    assert f["n_hits"][0] == 1
    # empty layers: centre and width 0 (0 / (0 + 1e-16)), sparsity 1
    assert f["E_layer_0"][0] == 0.0 and f["EC_eta_0"][0] == 0.0 and f["width_r_0"][0] == 0.0
    assert f["sparsity_0"][0] == 1.0
    assert len(fs.longitudinal_profile) == 45 and fs.longitudinal_profile[3] == pytest.approx(5.0)
    np.testing.assert_allclose(fs.radial_edges, np.arange(10) * 4.65)
    assert fs.radial_profile[2] == pytest.approx(5.0) and fs.radial_profile.sum() == pytest.approx(5.0)


def test_two_cells_known_widths_ds2():
    geo = get_geometry("ds2")
    # same alpha bin, r bins 0 and 2 with energies 1 and 3: width_r = |dr| sqrt(p q)
    fs = compute_features(_showers("ds2", {_cell(geo, 10, 7, 0): 1.0, _cell(geo, 10, 7, 2): 3.0}))
    f = fs.features
    r0, r2 = 0.5 * 4.65, 2.5 * 4.65
    alpha = -math.pi + 7.5 * 2 * math.pi / 16
    assert f["EC_r_10"][0] == pytest.approx((r0 + 3 * r2) / 4)
    assert f["width_r_10"][0] == pytest.approx((r2 - r0) * math.sqrt(3.0) / 4.0)
    assert f["EC_eta_10"][0] == pytest.approx(math.cos(alpha) * (r0 + 3 * r2) / 4)
    assert f["width_eta_10"][0] == pytest.approx(abs(math.cos(alpha)) * (r2 - r0) * math.sqrt(3) / 4)
    assert f["width_phi_10"][0] == pytest.approx(abs(math.sin(alpha)) * (r2 - r0) * math.sqrt(3) / 4)
    # opposite angular bins at the same radius, equal energies: centre 0, width r |cos(alpha)|
    fs = compute_features(_showers("ds2", {_cell(geo, 4, 1, 3): 2.0, _cell(geo, 4, 9, 3): 2.0}))
    f = fs.features
    r3 = 3.5 * 4.65
    a1 = -math.pi + 1.5 * 2 * math.pi / 16
    assert f["EC_eta_4"][0] == pytest.approx(0.0, abs=1e-9)
    assert f["EC_phi_4"][0] == pytest.approx(0.0, abs=1e-9)
    assert f["width_eta_4"][0] == pytest.approx(r3 * abs(math.cos(a1)))
    assert f["width_phi_4"][0] == pytest.approx(r3 * abs(math.sin(a1)))
    assert f["EC_r_4"][0] == pytest.approx(r3) and f["width_r_4"][0] == pytest.approx(0, abs=1e-6)
    assert f["sparsity_4"][0] == pytest.approx(1 - 2 / 144)


def test_threshold_zeroes_voxels_before_everything():
    geo = get_geometry("ds2")
    below, above = _cell(geo, 0, 0, 0), _cell(geo, 0, 3, 1)
    showers = _showers("ds2", {below: 0.010, above: 0.020})  # threshold 15.15 keV
    fs = compute_features(showers)
    assert fs.threshold == pytest.approx(DS23_THRESHOLD)
    assert fs.features["E_layer_0"][0] == pytest.approx(0.020)
    assert fs.features["n_hits"][0] == 1
    assert fs.features["sparsity_0"][0] == pytest.approx(1 - 1 / 144)
    assert fs.voxel_hist.sum() == 1 and fs.voxel_min == pytest.approx(0.020)
    assert fs.mean_shower[below] == 0.0
    fs0 = compute_features(showers, threshold=0.0)
    assert fs0.features["E_layer_0"][0] == pytest.approx(0.030)
    assert fs0.features["n_hits"][0] == 2
    fs_hi = compute_features(showers, threshold=0.025)
    assert fs_hi.features["E_tot"][0] == 0.0 and fs_hi.features["n_hits"][0] == 0
    assert np.isnan(fs_hi.voxel_max)
    # a voxel exactly at the (float32) threshold is kept, as `shower < min_energy` zeroes
    at = _showers("ds2", {above: float(np.float32(DS23_THRESHOLD))})
    assert compute_features(at).features["n_hits"][0] == 1
    # negative energies never survive (even with threshold 0)
    neg = compute_features(_showers("ds2", {above: -1.0, below: 1.0}), threshold=0.0)
    assert neg.features["E_tot"][0] == pytest.approx(1.0) and neg.features["n_hits"][0] == 1


# ---------------------------------------------------------------------------- dataset 1
def test_ds1_photons_layers_and_single_alpha():
    geo = get_geometry("ds1-photons")
    fs = compute_features(_random("ds1-photons", n=5))
    assert fs.layers == [0, 1, 2, 3, 12]
    assert fs.alpha_layers == [1, 2]
    names = set(fs.features)
    assert {"E_layer_12", "EC_r_12", "width_r_12", "sparsity_12", "EC_r_0"} <= names
    assert "EC_eta_0" not in names and "EC_eta_12" not in names and "EC_eta_1" in names
    assert not any(n.endswith(("_4", "_11", "_13")) for n in names)
    assert len(fs.longitudinal_profile) == 24 and (fs.longitudinal_profile[4:12] == 0).all()
    # union of the radial edges of all layers, energy conserved when spread by area
    assert fs.radial_edges[0] == 0 and fs.radial_edges[-1] == 2000
    assert fs.radial_profile.sum() == pytest.approx(fs.mean_shower.sum())
    # single cell in layer 12 (one angular bin, r bin 400-1000 mm): 0.5 MeV is below 1 MeV
    c = _cell(geo, 12, 0, 3)
    one = compute_features(_showers("ds1-photons", {c: 7.0, _cell(geo, 0, 0, 0): 0.5}))
    f = one.features
    assert f["E_layer_12"][0] == 7.0 and f["E_layer_0"][0] == 0.0
    assert f["EC_r_12"][0] == pytest.approx(700.0)
    assert f["width_r_12"][0] == pytest.approx(0.0, abs=1e-6)
    assert f["sparsity_12"][0] == pytest.approx(1 - 1 / 5)
    assert f["sparsity_0"][0] == 1.0


def test_ds1_pions_alpha_layers():
    fs = compute_features(_random("ds1-pions", n=5))
    assert fs.layers == [0, 1, 2, 3, 12, 13, 14]
    assert fs.alpha_layers == [1, 2, 12, 13]
    assert classifier_inputs(fs, "high").shape == (5, 1 + 7 + 4 * 4 + 1 + 3 * 7)


# ---------------------------------------------------------------------------- official definitions
def _official_style(showers: VoxelShowers, threshold: float) -> dict[str, np.ndarray]:
    """The official HighLevelFeatures computation written out layer by layer from the binning
    (r_edges, n_bin_alpha), independently of the geometry's cell arrays."""
    geo = showers.geometry
    data = np.where(showers.energies < np.float32(threshold), 0, showers.energies)
    data = data.astype(np.float64)
    out = {"E_tot": data.sum(-1)}
    out["E_tot/E_inc"] = out["E_tot"] / showers.conditions.energy
    edges = np.cumsum([0] + [lay.n_cells for lay in geo.layers])
    for lid, lay in enumerate(geo.layers):
        if lay.n_cells == 0:
            continue
        layer = data[:, edges[lid]:edges[lid + 1]]
        e = layer.sum(-1)
        out[f"E_layer_{lid}"] = e
        out[f"sparsity_{lid}"] = 1 - np.mean(layer > 0, axis=-1)
        r_mid = 0.5 * (lay.r_edges[1:] + lay.r_edges[:-1])
        a_edges = np.linspace(-np.pi, np.pi, lay.n_alpha + 1)
        a_mid = 0.5 * (a_edges[1:] + a_edges[:-1])
        coords = {"eta": (r_mid[None, :] * np.cos(a_mid[:, None])).ravel(),
                  "phi": (r_mid[None, :] * np.sin(a_mid[:, None])).ravel(),
                  "r": np.tile(r_mid, lay.n_alpha)}
        for q, x in coords.items():
            if q != "r" and lay.n_alpha == 1:
                continue
            ec = (layer * x).sum(-1) / (e + 1e-16)
            out[f"EC_{q}_{lid}"] = ec
            out[f"width_{q}_{lid}"] = np.sqrt(np.clip((layer * x * x).sum(-1) / (e + 1e-16)
                                                    - ec**2, 0, None))
    return out


@pytest.mark.parametrize("name", ["ds1-photons", "ds1-pions", "ds2"])
def test_matches_official_definitions(name):
    showers = _random(name, n=30, seed=4)
    thr = default_threshold(name)
    fs = compute_features(showers)
    ref = _official_style(showers, thr)
    assert set(ref) | {"n_hits"} == set(fs.features)
    for k, v in ref.items():
        np.testing.assert_allclose(fs.features[k], v, rtol=1e-10, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(fs.mean_shower, np.where(showers.energies < np.float32(thr), 0,
                                                        showers.energies).mean(0), rtol=1e-6)


def test_cartesian_geometry_features():
    fs = compute_features(_random("sandwich32", n=3))
    assert fs.alpha_layers == fs.layers == list(range(32))
    assert "EC_eta_31" in fs.features and fs.radial_profile.sum() == pytest.approx(
        fs.mean_shower.sum())


def test_point_clouds_through_geometry():
    vox = _random("ds2", n=6)
    pts = vox.to_points(dequantize=True, rng=1)
    a, b = compute_features(vox), compute_features(pts)
    for k in a.features:
        np.testing.assert_allclose(b.features[k], a.features[k], rtol=1e-12, atol=1e-12)
    c = compute_features_streaming([pts[:2], pts[2:]])
    np.testing.assert_array_equal(c.voxel_hist, a.voxel_hist)


# ---------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("name", ["ds1-pions", "ds2"])
def test_streaming_equals_one_shot(name):
    showers = _random(name, n=57, seed=2)
    one = compute_features(showers, collect=("low", "low_normed"))
    chunks = [showers[0:7], showers[7:20], showers[20:21], showers[21:]]
    st = compute_features_streaming(iter(chunks), collect=("low", "low_normed"))
    assert list(st.features) == list(one.features)
    for k in one.features:
        np.testing.assert_allclose(st.features[k], one.features[k], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(st.voxel_hist, one.voxel_hist)
    np.testing.assert_array_equal(st.incident_energy, one.incident_energy)
    np.testing.assert_allclose(st.mean_shower, one.mean_shower, rtol=1e-12)
    assert (st.voxel_min, st.voxel_max, st.n_voxels) == (one.voxel_min, one.voxel_max,
                                                         one.n_voxels)
    for kind in ("low", "low_normed"):
        np.testing.assert_array_equal(st.low_level[kind], one.low_level[kind])
    high = classifier_inputs_streaming(iter(chunks), "high")
    np.testing.assert_allclose(high, classifier_inputs(one, "high"), rtol=1e-12)


def test_accumulator_rejects_other_geometry_and_bad_values():
    acc = FeatureAccumulator("ds2")
    with pytest.raises(InputError, match="geometry"):
        acc.update(_random("ds3", n=1))
    # non-finite voxels are refused before any arithmetic touches them: with every floating
    # point error raised, inf * 0 in the moment matmul would fail first
    for value, row in ((np.nan, 1), (np.inf, 0), (-np.inf, 2)):
        bad = _random("ds2", n=3)
        bad.energies[row, 5] = value
        with np.errstate(all="raise"), warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(InputError, match=f"shower {row} contains NaN or inf"):
                compute_features(bad)
    zero_e = VoxelShowers(np.zeros((2, 6480), np.float32), Conditions([1.0, 0.0]),
                          get_geometry("ds2"))
    with pytest.raises(InputError, match="incident"):
        compute_features(zero_e)
    with pytest.raises(InputError, match="empty"):
        compute_features_streaming(iter([]))
    with pytest.raises(InputError, match=r"empty|no showers"):
        compute_features(_random("ds2", n=0))
    with pytest.raises(InputError, match="threshold"):
        FeatureAccumulator("ds2", threshold=-1.0)
    with pytest.raises(InputError, match="collect"):
        FeatureAccumulator("ds2", collect=("high",))


# ---------------------------------------------------------------------------- voxel spectrum
def test_voxel_spectrum_rebinning_matches_numpy():
    showers = _random("ds2", n=200, occupancy=0.5, seed=9)
    fs = compute_features(showers)
    xt = np.where(showers.energies < np.float32(fs.threshold), 0, showers.energies).ravel()
    bins = official_binning("voxel_energy", "ds2", reference=fs)
    np.testing.assert_allclose(bins, np.logspace(np.log10(DS23_THRESHOLD),
                                                 np.log10(xt.max()), 50))
    exact, _ = np.histogram(xt, bins=bins)
    got = fs.histogram("voxel_energy", bins)
    assert got.sum() == pytest.approx(exact.sum())  # first and last edge exact
    np.testing.assert_allclose(got, exact, rtol=2e-3, atol=3)
    # edges on the fine grid: exact counts
    grid = voxel_grid_edges()
    gbins = grid[(grid > 0.05) & (grid < 50)][::997]
    exact_g, _ = np.histogram(xt, bins=gbins)
    np.testing.assert_array_equal(fs.voxel_histogram(gbins), exact_g)


# ---------------------------------------------------------------------------- binnings
def test_official_binnings():
    ref = compute_features(_random("ds2", n=30))
    np.testing.assert_array_equal(official_binning("E_tot/E_inc", "ds2"), np.linspace(0.5, 1.5, 101))
    np.testing.assert_array_equal(official_binning("EC_eta_7", "ds2"), np.linspace(-30, 30, 101))
    np.testing.assert_array_equal(official_binning("width_phi_7", "ds3"), np.linspace(0, 30, 101))
    np.testing.assert_array_equal(official_binning("EC_phi_12", "ds1-pions"),
                                  np.linspace(-500, 500, 101))
    np.testing.assert_array_equal(official_binning("width_eta_13", "ds1-pions"),
                                  np.linspace(0, 400, 101))
    np.testing.assert_array_equal(official_binning("EC_eta_1", "ds1-photons"),
                                  np.linspace(-100, 100, 101))
    np.testing.assert_array_equal(official_binning("width_eta_2", "ds1-photons"),
                                  np.linspace(0, 100, 101))
    np.testing.assert_allclose(
        official_binning("E_layer_5", "ds2", reference=ref),
        np.logspace(np.log10(DS23_THRESHOLD), np.log10(ref.features["E_layer_5"].max()), 40))
    np.testing.assert_allclose(official_binning("E_layer_5", "ds2", reference=ref, floor=1.0)[0],
                               1.0)
    np.testing.assert_array_equal(official_binning("E_tot/E_inc_at_E_256", "ds1-photons"),
                                  np.linspace(0.4, 1.4, 21))
    np.testing.assert_array_equal(official_binning("E_tot/E_inc_at_E_8192", "ds1-photons"),
                                  np.linspace(0.9, 1.1, 21))
    np.testing.assert_array_equal(official_binning("E_tot/E_inc_at_E_8192", "ds1-pions"),
                                  np.linspace(0.4, 1.4, 21))
    with pytest.raises(InputError, match="reference"):
        official_binning("E_layer_5", "ds2")
    with pytest.raises(InputError, match="layers"):
        official_binning("EC_eta_0", "ds1-photons")
    with pytest.raises(InputError, match="no histogram"):
        official_binning("bogus", "ds2")
    names = histogram_names("ds1-photons", extra=False)
    assert names[0] == "E_tot/E_inc" and names[-1] == "voxel_energy"
    assert names[1:6] == [f"E_layer_{lid}" for lid in (0, 1, 2, 3, 12)]
    assert sum(n.startswith("E_tot/E_inc_at_E_") for n in names) == 15
    assert len(histogram_names("ds2", extra=False)) == 1 + 45 + 4 * 45 + 1


def test_ds1_energy_subsets():
    showers = _random("ds1-photons", n=20, seed=1)
    showers.conditions.energy[:] = [256.0] * 10 + [8192.0] * 10
    fs = compute_features(showers)
    assert len(fs.values("E_tot/E_inc_at_E_256")) == 10
    assert len(fs.values("E_tot/E_inc_at_E_512")) == 0
    np.testing.assert_array_equal(fs.values("E_tot/E_inc_at_E_8192"),
                                  fs.features["E_tot/E_inc"][10:])


# ---------------------------------------------------------------------------- classifier inputs
def test_classifier_inputs_official_layout():
    showers = _random("ds2", n=8, seed=3)
    fs = compute_features(showers, collect=("low", "low_normed"))
    thr = np.float32(fs.threshold)
    xt = np.where(showers.energies < thr, 0, showers.energies).astype(np.float64)
    e_inc = showers.conditions.energy
    low = classifier_inputs(fs, "low")
    assert low.shape == (8, 6481) and low.dtype == np.float32
    np.testing.assert_allclose(low[:, 0], np.log10(e_inc), rtol=1e-6)
    np.testing.assert_allclose(low[:, 1:], xt / e_inc[:, None], rtol=1e-6, atol=1e-12)
    normed = classifier_inputs(fs, "low_normed")
    e_layer = xt.reshape(8, 45, 144).sum(-1)
    raw = showers.energies.astype(np.float64)  # officially not thresholded here
    np.testing.assert_allclose(normed[:, 1:6481],
                               raw / (np.repeat(e_layer, 144, axis=1) + 1e-16), rtol=1e-6)
    np.testing.assert_allclose(normed[:, 6481:], np.log10(e_layer + 1e-8), rtol=1e-6)
    high = classifier_inputs(fs, "high")
    assert high.shape == (8, 362)
    f = fs.features
    np.testing.assert_allclose(high[:, 0], np.log10(e_inc))
    np.testing.assert_allclose(high[:, 1:46], np.log10(e_layer + 1e-8))
    np.testing.assert_allclose(high[:, 46], f["EC_eta_0"] / 100)
    np.testing.assert_allclose(high[:, 46 + 45], f["EC_phi_0"] / 100)
    np.testing.assert_allclose(high[:, 46 + 135], f["width_phi_0"] / 100)
    np.testing.assert_allclose(high[:, 226], np.log10(f["E_tot"] + 1e-8))
    np.testing.assert_allclose(high[:, 227], f["sparsity_0"])
    np.testing.assert_allclose(high[:, 272], f["EC_r_0"] / 100)
    np.testing.assert_allclose(high[:, 361], f["width_r_44"] / 100)
    np.testing.assert_allclose(classifier_inputs(showers, "high"), high)
    np.testing.assert_allclose(classifier_inputs(showers, "low"), low)
    with pytest.raises(InputError, match="not collected"):
        classifier_inputs(compute_features(showers), "low")
    with pytest.raises(InputError, match="unknown classifier input"):
        classifier_inputs(fs, "pixels")  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path):
    fs = compute_features(_random("ds1-pions", n=9), collect=("low",))
    path = tmp_path / "ref_features.npz"
    fs.save(path)
    back = FeatureSet.load(path)
    assert back.geometry == fs.geometry and back.threshold == fs.threshold
    assert list(back.features) == list(fs.features)
    for k in fs.features:
        np.testing.assert_array_equal(back.features[k], fs.features[k])
    np.testing.assert_array_equal(back.voxel_hist, fs.voxel_hist)
    np.testing.assert_array_equal(back.low_level["low"], fs.low_level["low"])
    assert (back.voxel_min, back.voxel_max, back.n_voxels) == (fs.voxel_min, fs.voxel_max,
                                                               fs.n_voxels)
    with pytest.raises(InputError, match="no such file"):
        FeatureSet.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="feature file"):
        FeatureSet.load(tmp_path / "junk.npz")
