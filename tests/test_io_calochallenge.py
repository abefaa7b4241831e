"""CaloChallenge HDF5: exact round trips, chunked reads, official layout, validation, atomicity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.io.calochallenge import (
    CaloChallengeWriter,
    iter_calochallenge,
    read_calochallenge,
    write_calochallenge,
)
from showerformer.showers import Conditions, VoxelShowers

# number of voxels per dataset, as in the official evaluate.py check_file()
OFFICIAL_FEATURES = {"1-photons": 368, "1-pions": 533, "2": 6480, "3": 40500}


def make_showers(name: str = "ds2", n: int = 12, seed: int = 0, extra: bool = True) -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = rng.lognormal(0.0, 2.0, size=(n, geo.n_cells)).astype(np.float32)
    e[rng.random(e.shape) > 0.1] = 0.0
    cond = Conditions(
        10 ** rng.uniform(3, 6, n), pdg=rng.choice([11, 22, 211], n),
        theta=rng.uniform(0.8, 2.3, n), phi=rng.uniform(-np.pi, np.pi, n),
        extra={"momentum": rng.uniform(1e3, 1e6, n)} if extra else {},
    )
    return VoxelShowers(e, cond, geo)


def assert_same(a: VoxelShowers, b: VoxelShowers) -> None:
    assert a.energies.dtype == b.energies.dtype == np.float32
    np.testing.assert_array_equal(a.energies, b.energies)
    for field in ("energy", "pdg", "theta", "phi"):
        x, y = getattr(a.conditions, field), getattr(b.conditions, field)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert a.conditions.extra.keys() == b.conditions.extra.keys()
    for k in a.conditions.extra:
        np.testing.assert_array_equal(a.conditions.extra[k], b.conditions.extra[k])
    assert a.geometry == b.geometry


def raw_file(path: Path, showers: np.ndarray, energies: np.ndarray, **more: np.ndarray) -> Path:
    """A file written like the published ones: plain h5py, only the given datasets."""
    with h5py.File(path, "w") as f:
        f.create_dataset("incident_energies", data=energies)
        f.create_dataset("showers", data=showers)
        for k, v in more.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize("name,n", [("ds1-photons", 30), ("ds1-pions", 30), ("ds2", 12),
                                    ("ds3", 3), ("sandwich32", 2)])
def test_round_trip_exact(tmp_path, name, n):
    vox = make_showers(name, n)
    path = write_calochallenge(tmp_path / f"{name}.hdf5", vox)
    back = read_calochallenge(path)
    assert_same(back, vox)
    assert back.geometry.name == name


def test_round_trip_float64_showers_and_no_extras(tmp_path):
    vox = make_showers("ds1-pions", 10)
    path = write_calochallenge(tmp_path / "f64.h5", vox, showers_dtype=np.float64, extra_keys=None)
    with h5py.File(path) as f:
        assert set(f) == {"incident_energies", "showers"}
        assert f["showers"].dtype == np.float64
    back = read_calochallenge(path)
    np.testing.assert_array_equal(back.energies, vox.energies)
    np.testing.assert_array_equal(back.conditions.energy, vox.conditions.energy)
    assert (back.conditions.pdg == 0).all()  # not stored -> defaults
    assert back.conditions.extra == {}


def test_chunked_reading_equals_full(tmp_path):
    vox = make_showers("ds2", 23)
    path = write_calochallenge(tmp_path / "a.h5", vox)
    full = read_calochallenge(path)
    for chunk_size in (1, 4, 7, 23, 100):
        assert_same(read_calochallenge(path, chunk_size=chunk_size), full)
    assert_same(read_calochallenge(path, start=5, stop=17, chunk_size=4), full[5:17])
    assert_same(read_calochallenge(path, start=20), full[20:])
    assert_same(read_calochallenge(path, stop=100), full)  # a stop past the end reads all
    chunks = list(iter_calochallenge(path, chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    assert_same(VoxelShowers.concatenate(chunks), full)
    assert [len(c) for c in iter_calochallenge(path, chunk_size=10, start=4, stop=19)] == [10, 5]


def test_float64_file_read_without_full_size_temporary(tmp_path):
    """A float64 file is converted block by block: peak memory ~ the float32 output only."""
    n, geo = 1000, get_geometry("ds2")
    rng = np.random.default_rng(1)
    data = rng.random((n, geo.n_cells))  # float64, 52 MB
    path = raw_file(tmp_path / "f64.h5", data, np.full((n, 1), 5e4))
    tracemalloc.start()
    try:
        vox = read_calochallenge(path, chunk_size=50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out_bytes = vox.energies.nbytes  # 26 MB
    assert peak < out_bytes + 4 * 50 * geo.n_cells * 8, (peak, out_bytes)  # no full temporary
    np.testing.assert_array_equal(vox.energies, data.astype(np.float32))


def test_written_file_is_what_the_official_evaluation_reads(tmp_path):
    vox = make_showers("ds2", 12)
    path = write_calochallenge(tmp_path / "gen.hdf5", vox)
    with h5py.File(path, "r") as f:
        # check_file(): both keys, equal lengths, the voxel count of the dataset
        energy, showers = f["incident_energies"], f["showers"]
        assert energy.shape == (12, 1) and energy.dtype == np.float64
        assert showers.shape == (12, OFFICIAL_FEATURES["2"]) and showers.dtype == np.float32
        assert showers.compression == "gzip" and energy.compression == "gzip"
        assert f.attrs["geometry"] == "ds2" and f.attrs["format"] == "calochallenge"
        # extract_shower_and_energy() + prepare_low_data_for_classifier(): 2-D concatenation
        e_inc, voxel = energy[:], showers[:]
    low = np.concatenate([np.log10(e_inc), 100.0 * voxel / e_inc, np.ones_like(e_inc)], axis=1)
    assert low.shape == (12, 1 + 6480 + 1) and low.dtype == np.float64
    np.testing.assert_array_equal(e_inc[:, 0], vox.conditions.energy)


@pytest.mark.parametrize("n_cells,name", [(368, "ds1-photons"), (533, "ds1-pions"),
                                          (6480, "ds2"), (40500, "ds3")])
def test_geometry_inferred_from_voxel_count(tmp_path, n_cells, name):
    path = raw_file(tmp_path / "x.h5", np.zeros((2, n_cells)), np.full((2, 1), 1e3))
    vox = read_calochallenge(path)
    assert vox.geometry.name == name and vox.energies.shape == (2, n_cells)
    assert vox.energies.dtype == np.float32


def test_given_geometry(tmp_path):
    path = raw_file(tmp_path / "x.h5", np.zeros((2, 40500), np.float32), np.full((2, 1), 1e3))
    assert read_calochallenge(path, "par04").geometry.name == "par04"
    with pytest.raises(InputError) as exc:
        read_calochallenge(path, "ds2")
    msg = str(exc.value)
    assert str(path) in msg and "'showers'" in msg and "6480" in msg


def test_one_dimensional_incident_energies_accepted(tmp_path):
    path = raw_file(tmp_path / "x.h5", np.ones((3, 368)), np.array([1e3, 2e3, 4e3]))
    np.testing.assert_array_equal(read_calochallenge(path).conditions.energy, [1e3, 2e3, 4e3])


def _bad_file(tmp_path: Path, case: str) -> tuple[Path, str | None]:
    """A bad input and the key its error must name (None: a problem of the whole file)."""
    path = tmp_path / f"{case}.hdf5"
    ok_s, ok_e = np.ones((4, 6480), np.float32), np.full((4, 1), 1e4)
    if case == "missing_path":
        return path, None
    if case == "directory":
        path.mkdir()
        return path, None
    if case == "empty_bytes":
        path.write_bytes(b"")
        return path, None
    if case == "not_hdf5":
        path.write_text("incident_energies,showers\n1,2\n")
        return path, None
    if case == "truncated":
        write_calochallenge(tmp_path / "full.h5", make_showers("ds2", 40))
        data = (tmp_path / "full.h5").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, None
    if case == "corrupt_chunk":
        write_calochallenge(path, make_showers("ds2", 100))
        with h5py.File(path) as f:
            offset = f["showers"].id.get_chunk_info(1).byte_offset
        with open(path, "r+b") as fh:  # garble the compressed data of the second chunk
            fh.seek(offset + 20)
            fh.write(b"\xff" * 200)
        return path, "showers"
    if case == "no_datasets":
        h5py.File(path, "w").close()
        return path, "showers"
    if case == "missing_showers":
        with h5py.File(path, "w") as f:
            f["incident_energies"] = ok_e
        return path, "showers"
    if case == "missing_energies":
        with h5py.File(path, "w") as f:
            f["showers"] = ok_s
        return path, "incident_energies"
    if case == "showers_3d":
        return raw_file(path, np.ones((4, 6480, 2)), ok_e), "showers"
    if case == "energies_2_columns":
        return raw_file(path, ok_s, np.ones((4, 2))), "incident_energies"
    if case == "mismatched_n":
        return raw_file(path, ok_s, np.full((3, 1), 1e4)), "incident_energies"
    if case == "unknown_count":
        return raw_file(path, np.ones((4, 1234)), ok_e), "showers"
    if case == "zero_showers":
        return raw_file(path, np.ones((0, 6480)), np.ones((0, 1))), "showers"
    if case == "string_showers":
        return raw_file(path, np.array([[b"a"]] * 4), ok_e), "showers"
    if case in ("nan", "inf", "negative"):
        s = ok_s.copy()
        s[2, 17] = {"nan": np.nan, "inf": np.inf, "negative": -0.5}[case]
        return raw_file(path, s, ok_e), "showers"
    if case in ("energy_nan", "energy_negative", "energy_zero"):
        e = ok_e.copy()
        e[1, 0] = {"energy_nan": np.nan, "energy_negative": -1.0, "energy_zero": 0.0}[case]
        return raw_file(path, ok_s, e), "incident_energies"
    if case == "bad_theta":
        return raw_file(path, ok_s, ok_e, theta=np.array([0.1, np.nan, 0.2, 0.3])), "theta"
    if case == "short_pdg":
        return raw_file(path, ok_s, ok_e, pdg=np.array([11, 11])), "pdg"
    raise AssertionError(case)


BAD_CASES = ["missing_path", "directory", "empty_bytes", "not_hdf5", "truncated", "corrupt_chunk",
             "no_datasets",
             "missing_showers", "missing_energies", "showers_3d", "energies_2_columns",
             "mismatched_n", "unknown_count", "zero_showers", "string_showers", "nan", "inf",
             "negative", "energy_nan", "energy_negative", "energy_zero", "bad_theta", "short_pdg"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_input_error_naming_file_and_key(tmp_path, case):
    path, key = _bad_file(tmp_path, case)
    with pytest.raises(InputError) as exc:
        read_calochallenge(path)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    if key is not None:
        assert f"'{key}'" in msg, msg
    if case == "unknown_count":
        assert "1234" in msg and "6480" in msg and "40500" in msg
    if case in ("nan", "negative"):
        assert "shower 2, voxel 17" in msg
    if case == "missing_showers":
        assert "incident_energies" in msg  # says what the file holds instead


@pytest.mark.parametrize("case", ["nan", "missing_showers", "unknown_count", "truncated"])
def test_bad_input_also_raised_by_streaming(tmp_path, case):
    path, _ = _bad_file(tmp_path, case)
    with pytest.raises(InputError):
        list(iter_calochallenge(path, chunk_size=1))


def test_bad_value_reported_at_its_global_index(tmp_path):
    s = np.ones((30, 368), np.float32)
    s[23, 5] = -1.0
    path = raw_file(tmp_path / "x.h5", s, np.full((30, 1), 1e3))
    with pytest.raises(InputError, match="shower 23, voxel 5"):
        read_calochallenge(path, chunk_size=4)
    assert len(read_calochallenge(path, stop=20, chunk_size=4)) == 20  # before the bad shower


def test_writer_streams_chunks(tmp_path):
    vox = make_showers("ds2", 17)
    with CaloChallengeWriter(tmp_path / "s.h5", "ds2") as w:
        for a in range(0, 17, 5):
            w.append(vox[a:a + 5])
        assert w.n_written == 17
        assert not (tmp_path / "s.h5").exists()  # only the temporary file so far
    assert_same(read_calochallenge(tmp_path / "s.h5"), vox)
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["showers"].chunks[1] == 6480 and f["showers"].maxshape == (None, 6480)


def test_writer_exception_keeps_earlier_file(tmp_path):
    target = tmp_path / "t.h5"
    old = make_showers("ds2", 4, seed=1)
    write_calochallenge(target, old)
    with pytest.raises(RuntimeError, match="boom"), CaloChallengeWriter(target, "ds2") as w:
        w.append(make_showers("ds2", 6, seed=2))
        raise RuntimeError("boom")
    assert_same(read_calochallenge(target), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5"]  # temporary file removed


def test_writer_rejects_bad_appends(tmp_path):
    target = tmp_path / "t.h5"
    with pytest.raises(InputError, match="ds1-photons"), CaloChallengeWriter(target, "ds2") as w:
        w.append(make_showers("ds1-photons", 2))
    with pytest.raises(InputError, match="momentum"), CaloChallengeWriter(target, "ds2") as w:
        w.append(make_showers("ds2", 2))
        w.append(make_showers("ds2", 2, extra=False))
    bad = make_showers("ds2", 3)
    bad.energies[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_calochallenge(target, bad)
    with pytest.raises(InputError, match="no showers"), CaloChallengeWriter(target, "ds2"):
        pass
    assert list(tmp_path.iterdir()) == []


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from showerformer.geometry import get_geometry
    from showerformer.io.calochallenge import CaloChallengeWriter
    from showerformer.showers import Conditions, VoxelShowers
    geo = get_geometry("ds2")
    rng = np.random.default_rng(0)
    with CaloChallengeWriter(sys.argv[1], geo) as w:
        for i in range(100000):
            e = rng.random((100, geo.n_cells), dtype=np.float32)
            w.append(VoxelShowers(e, Conditions(np.full(100, 1e4)), geo))
            if i == 3:
                print("writing", flush=True)
            time.sleep(0.02)
""")


def test_writer_killed_mid_write_leaves_earlier_file_intact(tmp_path):
    target = tmp_path / "gen.hdf5"
    old = make_showers("ds2", 5, seed=3)
    write_calochallenge(target, old)
    before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60.0, proc.kill)  # never hang the suite on a stuck child
    watchdog.start()
    try:
        line = proc.stdout.readline()  # the writer has appended 400 showers by now
        assert line.strip() == "writing", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert target.read_bytes() == before
    assert_same(read_calochallenge(target), old)
    others = sorted(p.name for p in tmp_path.iterdir() if p.name != target.name)
    assert others and all(n.startswith(".gen.hdf5.") and n.endswith(".tmp") for n in others)


@pytest.mark.parametrize(("kw", "key"), [({"stop": -1}, "stop"), ({"start": -3}, "start"),
                                         ({"stop": 2.5}, "stop"), ({"start": True}, "start")])
def test_negative_or_fractional_range_is_refused(tmp_path, kw, key):
    path = write_calochallenge(tmp_path / "a.h5", make_showers("ds2", 5))
    for call in (lambda: read_calochallenge(path, **kw),
                 lambda: list(iter_calochallenge(path, chunk_size=2, **kw))):
        with pytest.raises(InputError, match=f"{key}=") as err:
            call()
        assert err.value.key == key and err.value.path == str(path)
        assert "integer >= 0" in str(err.value)
