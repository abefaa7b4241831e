"""Tests of the EDM4hep reader: cellID decoding, the real ILD event, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.ild import ILD_ECAL, ILDGeometry
from showerformer.io.edm4hep import CellIDDecoder, edm4hep_collections, read_edm4hep

ILD_ENCODING = ("system:0:5,module:5:3,stave:8:4,tower:12:4,layer:16:6,wafer:22:6,slice:28:4,"
                "cellX:32:-16,cellY:48:-16")


@pytest.fixture(scope="module")
def event(shared_dir: Path) -> Path:
    pytest.importorskip("uproot")
    path = shared_dir / "real" / "cc3_single_event_example.edm4hep.root"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


# ---------------------------------------------------------------------------- cellID decoding
def _encode(fields: dict[str, tuple[int, int]], values: dict[str, int]) -> np.uint64:
    word = 0
    for name, (offset, width) in fields.items():
        word |= (values[name] & ((1 << width) - 1)) << offset
    return np.uint64(word)


def test_cellid_decoder_explicit_and_implicit_offsets() -> None:
    fields = {"system": (0, 5), "module": (5, 3), "stave": (8, 4), "tower": (12, 4),
              "layer": (16, 6), "wafer": (22, 6), "slice": (28, 4), "cellX": (32, 16),
              "cellY": (48, 16)}
    values = {"system": 20, "module": 3, "stave": 3, "tower": 2, "layer": 29, "wafer": 17,
              "slice": 10, "cellX": -7, "cellY": 12}
    ids = np.array([_encode(fields, values)], dtype=np.uint64)
    implicit = CellIDDecoder("system:5,module:3,stave:4,tower:4,layer:6,wafer:6,slice:4,"
                             "cellX:32:-16,cellY:-16")
    for decoder in (CellIDDecoder(ILD_ENCODING), implicit):
        for name, value in values.items():
            assert decoder(ids, name)[0] == value, name
    assert CellIDDecoder("a:4,b:-4")(np.array([0xF5], dtype=np.uint64), "b")[0] == -1
    with pytest.raises(InputError, match="CellIDEncoding"):
        CellIDDecoder("layer:60:8")
    with pytest.raises(InputError, match="no field"):
        CellIDDecoder(ILD_ENCODING)(ids, "sensor")


# ---------------------------------------------------------------------------- the real event
def test_real_event_collections(event: Path) -> None:
    found = edm4hep_collections(event)
    assert {"ECalBarrelSiHitsEven", "ECalBarrelSiHitsOdd", "ECalBarrelScHitsEven",
            "HcalBarrelRegCollection"} <= set(found)
    assert found["ECalBarrelSiHitsEven"] == "SimCalorimeterHit"


def test_real_event_primary_is_a_43_7_gev_photon(event: Path) -> None:
    import uproot

    with uproot.open(event) as f:
        mc = f["events"].arrays(["MCParticles.PDG", "MCParticles.generatorStatus",
                                 "MCParticles.momentum.y"], library="np")
    assert mc["MCParticles.generatorStatus"][0][0] == 1
    assert mc["MCParticles.PDG"][0][0] == 22
    showers = read_edm4hep(event)
    c = showers.conditions
    assert len(showers) == 1 and c.pdg[0] == 22
    assert c.energy[0] == pytest.approx(43709.7, abs=0.1)  # MeV
    assert c.energy[0] / 1000 == pytest.approx(mc["MCParticles.momentum.y"][0][0], rel=1e-4)
    # fired along +y into the top barrel stave: normal incidence, direction = local +z
    assert c.theta[0] == pytest.approx(np.pi / 2, abs=1e-6)
    assert c.phi[0] == pytest.approx(np.pi / 2, abs=0.01)
    assert c.extra["p_norm_local_z"][0] == pytest.approx(1.0, abs=1e-4)
    assert c.extra["rotation"][0] == 0.0


def test_real_event_hit_counts_and_sampling_fraction(event: Path) -> None:
    # every ECAL hit of the hybrid model (silicon + scintillator, barrel + endcap): 1,584
    every = read_edm4hep(event, collections="ECal*")
    assert len(every) == 1 and int(every.n_points[0]) == 1584
    # the default reads the silicon ECAL: 951 hits holding 2.33 % of the photon energy,
    # the visible fraction of a Si-W ECAL (about 2-3 %)
    showers = read_edm4hep(event)
    assert int(showers.n_points[0]) == 951
    e_sum = float(showers.points[0, :, 3].sum(dtype=np.float64))
    assert e_sum == pytest.approx(1016.8, abs=0.1)
    fraction = e_sum / showers.conditions.energy[0]
    assert 0.020 < fraction < 0.027
    # adding the scintillator hits would count the shower twice
    assert float(every.points[0, :, 3].sum()) / showers.conditions.energy[0] > 0.05


def test_real_event_frame_and_layers(event: Path) -> None:
    showers = read_edm4hep(event)
    assert isinstance(showers.geometry, ILDGeometry)
    pts = showers.points[0][showers.mask[0]]
    layer = pts[:, 4].astype(np.int64)
    assert layer.min() >= 0 and layer.max() <= 29
    in_stave = (pts[:, 2] > 0) & (pts[:, 2] < 210)  # the top barrel stave
    assert in_stave.sum() == 944
    # silicon hits sit in the middle of their sensor: the CaloClouds layer positions
    centre = ILD_ECAL.sensor_depth[layer] + ILD_ECAL.sensor_thickness / 2
    np.testing.assert_allclose(pts[in_stave, 2], centre[in_stave], atol=2e-4)
    # layers from the cellID agree with layers from depth
    np.testing.assert_array_equal(layer[in_stave], ILD_ECAL.layer_of_depth(pts[in_stave, 2]))
    by_depth = read_edm4hep(event, layer_from="depth").points[0][showers.mask[0]]
    np.testing.assert_array_equal(by_depth[in_stave, 4], pts[in_stave, 4])
    # the shower core: energy-weighted transverse centre near the gun at global (X, Z) = (0, -50)
    e = pts[in_stave, 3]
    assert np.average(pts[in_stave, 1], weights=e) == pytest.approx(0.0, abs=5.0)
    assert np.average(pts[in_stave, 0], weights=e) == pytest.approx(-50.0, abs=5.0)
    assert 0.99 < e.sum() / pts[:, 3].sum() <= 1.0


def test_real_event_and_caloclouds_sample_share_the_frame(event: Path, shared_dir: Path) -> None:
    from showerformer.io.pointcloud import read_pointcloud

    mini = shared_dir / "real" / "cc3_mini_data_sample.hdf5"
    if not mini.is_file():
        pytest.skip(f"{mini} is absent")
    cc = read_pointcloud(mini)
    g4 = read_edm4hep(event)
    assert cc.geometry == g4.geometry
    for showers in (cc, g4):
        pts = showers.points[showers.mask]
        pts = pts[(pts[:, 2] > 0) & (pts[:, 2] < 210)]
        layer = pts[:, 4].astype(np.int64)
        front = ILD_ECAL.sensor_depth[layer]
        assert np.all((pts[:, 2] > front - 1e-3)
                      & (pts[:, 2] < front + ILD_ECAL.sensor_thickness + 1e-3))


# ---------------------------------------------------------------------------- bad input
def test_bad_files(tmp_path: Path, event: Path) -> None:
    import uproot

    with pytest.raises(InputError, match="no such file") as err:
        read_edm4hep(tmp_path / "nope.root")
    assert err.value.path == str(tmp_path / "nope.root")
    text = tmp_path / "text.root"
    text.write_text("not a ROOT file")
    with pytest.raises(InputError, match="not a ROOT file"):
        read_edm4hep(text)
    empty = tmp_path / "empty.root"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_edm4hep(empty)
    cut = tmp_path / "cut.root"
    data = event.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable ROOT file") as err:
        read_edm4hep(cut)
    assert err.value.path == str(cut)

    no_events = tmp_path / "no_events.root"
    with uproot.recreate(no_events) as f:
        f["other"] = {"x": np.arange(3.0)}
    with pytest.raises(InputError, match="no 'events' tree") as err:
        read_edm4hep(no_events)
    assert err.value.key == "events"

    no_hits = tmp_path / "no_hits.root"
    with uproot.recreate(no_hits) as f:
        f["events"] = {"EventNumber": np.arange(3)}
    with pytest.raises(InputError, match=r"no calorimeter-hit collections.*EventNumber"):
        read_edm4hep(no_hits)


def test_bad_options(event: Path) -> None:
    with pytest.raises(InputError, match="ECalBarrelSiHitsEven") as err:
        read_edm4hep(event, collections=["NoSuchCollection"])
    assert err.value.key == "collections"
    with pytest.raises(InputError, match="no collection matches"):
        read_edm4hep(event, collections="Tracker*")
    with pytest.raises(InputError, match="layer_from"):
        read_edm4hep(event, layer_from="slice")


def test_ranges_and_files_without_events(tmp_path: Path) -> None:
    pytest.importorskip("uproot")
    import uproot

    for kw, key in (({"entry_stop": -1}, "entry_stop"), ({"entry_start": -2}, "entry_start")):
        with pytest.raises(InputError, match=f"{key}=-") as err:
            read_edm4hep(tmp_path / "any.root", **kw)  # checked before the file is opened
        assert err.value.key == key
    empty = tmp_path / "empty_events.root"
    with uproot.recreate(empty) as f:
        f["events"] = {"EventNumber": np.zeros(0, np.int64)}
    with pytest.raises(InputError, match="the file holds 0 showers") as err:
        read_edm4hep(empty)
    assert err.value.key == "events" and err.value.path == str(empty)


def test_real_event_hits_outside_the_geometry_are_described(event: Path) -> None:
    from showerformer.io import summarize

    showers = read_edm4hep(event)
    n, energy = showers.count_outside()
    assert n == 7 and energy == pytest.approx(1.669, abs=1e-3)  # albedo hits beside the stave
    s = summarize(event)  # described, not refused: such hits are part of EDM4hep events
    assert (s["outside_points"], s["outside_showers"]) == (7, 1)
    assert s["outside_energy_mev"] == pytest.approx(energy)
    with pytest.raises(InputError, match=r"7 points holding 1\.669 MeV in 1 of 1 shower"):
        showers.to_voxels()
    assert showers.to_voxels(outside="drop").energies.sum() == pytest.approx(
        showers.points[..., 3].sum() - energy, rel=1e-6)


def test_read_showers_ranges_select_events(event: Path) -> None:
    from showerformer.io import read_showers

    assert len(read_showers(event, stop=1)) == 1 and len(read_showers(event, start=1)) == 0
    with pytest.raises(InputError, match="stop=-1") as err:
        read_showers(event, stop=-1)
    assert err.value.key == "stop" and err.value.path == str(event)
