"""Geometry: CaloChallenge XML parsing, presets, cell order, locate/dequantize round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.geometry import (
    PRESETS,
    CartesianGeometry,
    CylindricalGeometry,
    Geometry,
    geometry_for_cells,
    get_geometry,
)

XML_COUNTS = {
    "binning_dataset_1_photons.xml": ("ds1-photons", 368),
    "binning_dataset_1_pions.xml": ("ds1-pions", 533),
    "binning_dataset_2.xml": ("ds2", 6480),
    "binning_dataset_3.xml": ("ds3", 40500),
}


@pytest.mark.parametrize("fname", sorted(XML_COUNTS))
def test_xml_voxel_counts_and_presets(shared_dir, fname):
    name, count = XML_COUNTS[fname]
    geo = CylindricalGeometry.from_xml(shared_dir / "calochallenge" / fname)
    assert geo.n_cells == count
    # the presets are built from numbers alone and agree with the published files
    assert geo.same_cells(get_geometry(name))
    assert geo.name == name
    assert geometry_for_cells(count).same_cells(geo)


def test_xml_empty_layers_and_official_bin_edges(shared_dir):
    xml = shared_dir / "calochallenge" / "binning_dataset_1_photons.xml"
    geo = CylindricalGeometry.from_xml(xml)
    assert geo.n_layers == 24
    assert geo.relevant_layers == [0, 1, 2, 3, 12]
    assert geo.alpha_binned_layers == [1, 2]
    # the official XMLHandler's bin_edges: cumulative cell counts per layer
    per_layer = [8, 160, 190, 5] + [0] * 8 + [5] + [0] * 11
    assert geo.cells_per_layer().tolist() == per_layer
    assert geo.layer_offsets.tolist() == np.concatenate([[0], np.cumsum(per_layer)]).tolist()


def test_cell_order_is_layer_alpha_r():
    geo = get_geometry("ds2")
    assert geo.shape == (45, 16, 9)
    idx = (7 * 16 + 3) * 9 + 5  # layer 7, alpha bin 3, r bin 5
    assert geo.layer_of_cell[idx] == 7
    assert geo.alpha_bin[idx] == 3
    assert geo.r_bin[idx] == 5
    assert geo.r_mid[idx] == pytest.approx(4.65 * 5.5)
    alpha_c = -math.pi + (3.5) * 2 * math.pi / 16
    assert geo.alpha_mid[idx] == pytest.approx(alpha_c)
    assert geo.eta[idx] == pytest.approx(4.65 * 5.5 * math.cos(alpha_c))
    assert geo.phi[idx] == pytest.approx(4.65 * 5.5 * math.sin(alpha_c))
    # r runs fastest, then alpha, then layer
    assert geo.r_bin[:9].tolist() == list(range(9))
    assert geo.alpha_bin[:20].tolist() == [0] * 9 + [1] * 9 + [2] * 2


def test_single_alpha_bin_layer_sits_on_positive_eta():
    geo = get_geometry("ds1-photons")
    sl = geo.layer_slice(0)
    assert np.allclose(geo.alpha_mid[sl], 0.0)
    assert np.allclose(geo.phi[sl], 0.0)
    assert np.allclose(geo.eta[sl], geo.r_mid[sl])


@pytest.mark.parametrize("name,shape", [("ds2", (45, 16, 9)), ("ds3", (45, 50, 18)),
                                        ("par04", (45, 50, 18))])
def test_presets_from_numbers(name, shape):
    geo = get_geometry(name)
    assert geo.shape == shape
    assert geo.z_edges[-1] == pytest.approx(45 * 3.4)
    assert geo.layers[0].r_edges[-1] == pytest.approx(41.85)


def test_cartesian_grid_defaults_and_order():
    geo = get_geometry("sandwich64")
    assert isinstance(geo, CartesianGeometry)
    assert geo.n_cells == 64**3 and geo.n_layers == 64
    assert geo.shape == (64, 64, 64)
    c = geo.cell_centers()
    # C order of (nz, ny, nx): x fastest
    assert c[1, 0] - c[0, 0] == pytest.approx(geo.dx)
    assert c[64, 1] - c[0, 1] == pytest.approx(geo.dy)
    assert c[64 * 64, 2] - c[0, 2] == pytest.approx(geo.dz)
    assert abs(c[:, 0].mean()) < 1e-9 and abs(c[:, 1].mean()) < 1e-9
    custom = CartesianGeometry((4, 5, 6), (1.0, 2.0, 3.0))
    assert custom.n_cells == 120
    assert custom.cell_volumes().sum() == pytest.approx(4 * 5 * 6 * 6.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_locate_inverts_centres_and_dequantize(name):
    geo = get_geometry(name)
    cells = np.arange(geo.n_cells)
    if geo.n_cells > 50_000:
        cells = np.random.default_rng(0).choice(geo.n_cells, 50_000, replace=False)
    centres = geo.cell_centers()[cells]
    assert np.array_equal(geo.locate(*centres.T), cells)
    pos = geo.dequantize(cells, rng=1).astype(np.float32)  # float32 as stored in point clouds
    assert np.array_equal(geo.locate(*pos.T), cells)
    assert np.array_equal(geo.locate(pos[:, 0], pos[:, 1], layer=geo.layer_of_cell[cells]), cells)


def test_dequantize_is_uniform_in_volume():
    geo = get_geometry("ds2")
    cell = 4  # layer 0, alpha 0, r bin 4: 18.6 .. 23.25 mm
    pos = geo.dequantize(np.full(200_000, cell), rng=2)
    r2 = np.hypot(pos[:, 0], pos[:, 1]) ** 2
    # uniform in area <=> r^2 uniform
    lo, hi = 18.6**2, 23.25**2
    assert r2.min() >= lo and r2.max() <= hi
    assert np.mean(r2) == pytest.approx(0.5 * (lo + hi), rel=2e-3)
    assert np.std(r2) == pytest.approx((hi - lo) / math.sqrt(12), rel=1e-2)


def test_locate_outside_gives_minus_one():
    geo = get_geometry("ds2")
    x = np.array([0.0, 50.0, 1.0, 1.0])
    y = np.array([0.0, 0.0, 1.0, 1.0])
    z = np.array([1.0, 1.0, -1.0, 45 * 3.4 + 1])
    out = geo.locate(x, y, z)
    assert out[0] == 8 * 9  # layer 0; alpha = 0 opens bin 8 of 16; r bin 0
    assert (out[1:] == -1).all()
    ds1 = get_geometry("ds1-photons")
    # layer 5 is empty: nothing can land there
    assert ds1.locate(np.array([1.0]), np.array([0.0]), layer=np.array([5]))[0] == -1


def test_cell_volumes_sum_to_cylinder():
    geo = get_geometry("ds3")
    assert geo.cell_volumes().sum() == pytest.approx(math.pi * 41.85**2 * 45 * 3.4)


@pytest.mark.parametrize("name", ["ds1-pions", "ds2", "sandwich32"])
def test_to_dict_round_trip(name):
    geo = get_geometry(name)
    again = Geometry.from_dict(geo.to_dict())
    assert again == geo
    assert again.n_cells == geo.n_cells


def test_bad_geometry_inputs(tmp_path):
    with pytest.raises(InputError, match="unknown geometry"):
        get_geometry("ds9")
    missing = tmp_path / "nope.xml"
    with pytest.raises(InputError, match=str(missing)):
        get_geometry(str(missing))
    bad = tmp_path / "bad.xml"
    bad.write_text("<Bins><Bin><Layer id='0' r_edges='0,a' n_bin_alpha='1'/></Bin></Bins>")
    with pytest.raises(InputError, match="r_edges"):
        CylindricalGeometry.from_xml(bad)
    broken = tmp_path / "broken.xml"
    broken.write_text("<Bins><Bin>")
    with pytest.raises(InputError, match="not a readable XML"):
        CylindricalGeometry.from_xml(broken)
    assert geometry_for_cells(1234) is None


@pytest.mark.parametrize("name", ["ds2", "sandwich32", "ild-ecal"])
def test_locate_absurd_values_are_outside_without_warnings(name):
    geo = get_geometry(name)
    big = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e13]
    x = np.array([0.0, *big, 0.0, 0.0, 0.0])
    y = np.zeros_like(x)
    z = np.full_like(x, 0.5 * (geo.z_edges[0] + geo.z_edges[1]))
    layer = np.array([0, *[0] * len(big), np.nan, 1e30, -1e30])  # float layer indices
    cells = geo.locate(x, y, z, layer=layer)
    assert cells[0] >= 0 and (cells[1:] == -1).all()
    assert geo.locate(x[:1], y[:1], np.array([np.nan]))[0] == -1  # depth NaN: no layer


def test_dequantize_names_the_key():
    with pytest.raises(InputError, match="cell index out of range") as err:
        get_geometry("ds2").dequantize(np.array([0, 6480]))
    assert err.value.key == "cell"


# ---------------------------------------------------------------------------- readout thresholds
# the table of the evaluation before the presets carried their thresholds (MeV)
OLD_THRESHOLDS = {"ds1-photons": 1.0, "ds1-pions": 1.0, "ds2": 0.5e-3 / 0.033,
                  "ds3": 0.5e-3 / 0.033}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_carry_their_readout_threshold(name):
    from showerformer.evaluation.features import DEFAULT_THRESHOLDS, default_threshold

    geo = get_geometry(name)
    assert geo.readout_threshold_mev == OLD_THRESHOLDS.get(name, 0.0)
    assert default_threshold(geo) == default_threshold(name) == OLD_THRESHOLDS.get(name, 0.0)
    assert DEFAULT_THRESHOLDS == OLD_THRESHOLDS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_readout_threshold_survives_to_dict_round_trip(name):
    geo = get_geometry(name)
    d = geo.to_dict()
    assert d["readout_threshold_mev"] == geo.readout_threshold_mev
    again = Geometry.from_dict(d)
    assert type(again) is type(geo)
    assert again.readout_threshold_mev == geo.readout_threshold_mev
    assert again == geo


def test_custom_readout_thresholds_round_trip_and_only_change_equality():
    from showerformer.ild import ILDGeometry

    for plain, thr in [
        (CartesianGeometry((4, 5, 6), (1.0, 2.0, 3.0), name="grid"),
         CartesianGeometry((4, 5, 6), (1.0, 2.0, 3.0), name="grid", readout_threshold_mev=0.25)),
        (CylindricalGeometry.uniform(3, 2, [0, 1, 2], 1.5, "cyl"),
         CylindricalGeometry.uniform(3, 2, [0, 1, 2], 1.5, "cyl", readout_threshold_mev=0.5)),
        (ILDGeometry(), ILDGeometry(readout_threshold_mev=0.1)),
    ]:
        assert plain.readout_threshold_mev == 0.0
        again = Geometry.from_dict(thr.to_dict())
        assert again.readout_threshold_mev == thr.readout_threshold_mev
        assert again == thr and plain != thr
        assert plain.same_cells(thr)  # the cells do not depend on the readout


def test_dicts_without_a_threshold_get_their_preset_s():
    """Geometry dicts stored before geometries carried a threshold (checkpoints, files)."""
    for name in PRESETS:
        d = get_geometry(name).to_dict()
        del d["readout_threshold_mev"]
        assert Geometry.from_dict(d).readout_threshold_mev == OLD_THRESHOLDS.get(name, 0.0)
    old = {"kind": "cartesian", "shape": [4, 4, 4], "cell_size": [1.0, 1.0, 1.0]}
    assert Geometry.from_dict(old).readout_threshold_mev == 0.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "x"])
def test_bad_readout_threshold_names_the_key(bad):
    with pytest.raises(InputError, match="readout threshold") as err:
        CartesianGeometry((2, 2, 2), (1.0, 1.0, 1.0), readout_threshold_mev=bad)
    assert err.value.key == "readout_threshold_mev"
    d = get_geometry("ds2").to_dict()
    d["readout_threshold_mev"] = bad
    with pytest.raises(InputError) as err:
        Geometry.from_dict(d)
    assert err.value.key == "readout_threshold_mev"
