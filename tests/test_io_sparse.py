"""Sparse voxel files: exact round trips, dense batches, format detection and clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.io import detect_format, read_showers, summarize, write_showers
from showerformer.io.sparse import (
    SparseVoxelFile,
    SparseVoxelWriter,
    iter_sparse,
    read_sparse,
    write_sparse,
)
from showerformer.showers import Conditions, VoxelShowers


def _showers(n: int, seed: int = 0, name: str = "sandwich32") -> VoxelShowers:
    geo = get_geometry(name)
    rng = np.random.default_rng(seed)
    e = np.zeros((n, geo.n_cells), dtype=np.float32)
    for i in range(n):
        k = int(rng.integers(0, 200))  # shower 0 may be empty
        cells = rng.choice(geo.n_cells, size=k, replace=False)
        e[i, cells] = rng.gamma(1.0, 5.0, size=k).astype(np.float32) + 1e-3
    cond = Conditions(rng.uniform(1e3, 2e4, n), pdg=np.full(n, 2212), theta=np.full(n, 1.5),
                      extra={"momentum": rng.uniform(1e3, 2e4, n)})
    return VoxelShowers(e, cond, geo)


def test_round_trip_exact_and_dense_batches(tmp_path):
    showers = _showers(40)
    path = write_sparse(tmp_path / "p.h5", showers)
    f = SparseVoxelFile(path)
    assert len(f) == 40 and f.geometry.name == "sandwich32"
    np.testing.assert_array_equal(f.counts, (showers.energies > 0).sum(1))
    np.testing.assert_array_equal(f.dense(np.arange(40)), showers.energies)
    np.testing.assert_array_equal(f.dense([7, 3, -1]), showers.energies[[7, 3, 39]])
    cells, e = f.hits(5)
    np.testing.assert_array_equal(cells, np.flatnonzero(showers.energies[5]))
    np.testing.assert_array_equal(e, showers.energies[5][cells])
    np.testing.assert_array_equal(f.conditions.energy, showers.conditions.energy)
    np.testing.assert_array_equal(f.conditions.extra["momentum"],
                                  showers.conditions.extra["momentum"])
    assert (f.conditions.pdg == 2212).all()
    lazy = SparseVoxelFile(path, in_memory=False)
    np.testing.assert_array_equal(lazy.dense([1, 2]), showers.energies[[1, 2]])
    part = read_sparse(path, 10, 20)
    np.testing.assert_array_equal(part.energies, showers.energies[10:20])
    chunks = list(iter_sparse(path, chunk_size=16))
    assert [len(c) for c in chunks] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([c.energies for c in chunks]),
                                  showers.energies)


def test_streaming_writer_and_generic_io(tmp_path):
    a, b = _showers(10, seed=1), _showers(7, seed=2)
    path = tmp_path / "s.h5"
    with SparseVoxelWriter(path, "sandwich32") as w:
        w.append(a)
        w.append(b)
    assert detect_format(path) == "sparse-voxels"
    both = read_showers(path)
    np.testing.assert_array_equal(both.energies, np.concatenate([a.energies, b.energies]))
    info = summarize(path)
    assert info["format"] == "sparse-voxels" and info["n_showers"] == 17
    hits = int((both.energies > 0).sum())
    assert info["sparsity"] == pytest.approx(1 - hits / (17 * 32**3))
    assert info["mean_points"] == pytest.approx(hits / 17)
    out = write_showers(tmp_path / "t.h5", a, format="sparse-voxels")
    np.testing.assert_array_equal(read_sparse(out).energies, a.energies)


def test_failed_write_keeps_earlier_file(tmp_path):
    path = write_sparse(tmp_path / "p.h5", _showers(5))
    before = path.read_bytes()
    with pytest.raises(RuntimeError), SparseVoxelWriter(path, "sandwich32") as w:
        w.append(_showers(3, seed=4))
        raise RuntimeError("killed")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]


def _corrupt(path, key, value):
    with h5py.File(path, "a") as f:
        del f[key]
        if value is not None:
            f[key] = value


@pytest.mark.parametrize("key, value, match", [
    ("offsets", np.array([0, 5, 3]), "non-decreasing"),
    ("cell", None, "missing"),
    ("energy", np.array([1.0, -2.0]), "shape"),
    ("incident_energies", np.ones((1, 1)), "incident energies for"),
])
def test_bad_files_raise_input_errors(tmp_path, key, value, match):
    path = write_sparse(tmp_path / "bad.h5", _showers(3, seed=5))
    _corrupt(path, key, value)
    with pytest.raises(InputError, match=match) as err:
        SparseVoxelFile(path)
    assert "bad.h5" in str(err.value) and key in str(err.value)


def test_bad_hit_values(tmp_path):
    path = write_sparse(tmp_path / "bad.h5", _showers(3, seed=6))
    with h5py.File(path, "a") as f:
        f["cell"][0] = 32**3
    with pytest.raises(InputError, match="cell index 32768"):
        SparseVoxelFile(path)
    with pytest.raises(InputError, match="cell index 32768"):
        SparseVoxelFile(path, in_memory=False).dense([0])
    path2 = write_sparse(tmp_path / "bad2.h5", _showers(3, seed=6))
    with h5py.File(path2, "a") as f:
        f["energy"][1] = np.nan
    with pytest.raises(InputError, match="energy nan at hit 1"):
        SparseVoxelFile(path2)
    with pytest.raises(InputError, match="out of range"):
        SparseVoxelFile(path2, in_memory=False).dense([3])


def _set_hit(path, key, hit, value):
    with h5py.File(path, "a") as f:
        f[key][hit] = value


@pytest.mark.parametrize(("key", "value", "match"), [
    ("cell", 10**8, "cell index 100000000 at hit {hit} \\(shower 1\\)"),
    ("cell", -3, "cell index -3 at hit {hit}"),
    ("cell", "repeat", "after cell .* at hit {hit} \\(shower 1\\)"),
    ("energy", np.nan, "energy nan at hit {hit}"),
    ("energy", -1.0, "energy -1.0 at hit {hit}"),
])
def test_every_reader_and_summary_check_the_hits(tmp_path, key, value, match):
    path = write_sparse(tmp_path / "bad.h5", _showers(4, seed=7))
    offsets = SparseVoxelFile(path).offsets
    hit = int(offsets[1]) + 2
    assert hit < offsets[2]  # inside shower 1
    if value == "repeat":  # a cell twice in one shower would overwrite energy when densified
        with h5py.File(path) as f:
            value = int(f["cell"][hit - 1])
    _set_hit(path, key, hit, value)
    for call in (lambda: SparseVoxelFile(path), lambda: read_sparse(path),
                 lambda: list(iter_sparse(path, chunk_size=2)), lambda: summarize(path),
                 lambda: SparseVoxelFile(path, in_memory=False).validate(chunk_hits=3)):
        with pytest.raises(InputError, match=match.format(hit=hit)) as err:
            call()
        assert err.value.key == key and err.value.path == str(path)


def test_order_is_checked_across_chunk_boundaries(tmp_path):
    path = write_sparse(tmp_path / "s.h5", _showers(3, seed=8))
    f = SparseVoxelFile(path)
    a = int(f.offsets[1]) + 3  # swap two neighbouring hits inside shower 1
    with h5py.File(path, "a") as h:
        cells = h["cell"][:]
        cells[[a, a + 1]] = cells[[a + 1, a]]
        h["cell"][:] = cells
    for chunk in (3, a, a + 1, a + 2, 10**6):
        with pytest.raises(InputError, match=f"at hit {a + 1} "):
            SparseVoxelFile(path, in_memory=False).validate(chunk_hits=chunk)
    # a new shower may start with a smaller cell than the last one of the shower before
    good = write_sparse(tmp_path / "g.h5", _showers(5, seed=9))
    for chunk in (7, 50):
        SparseVoxelFile(good, in_memory=False).validate(chunk_hits=chunk)


@pytest.mark.parametrize(("key", "value", "match"), [
    ("offsets", np.array([0.0, 3.0, 5.0]), "dtype float64"),
    ("offsets", np.array([2, 3, 5]), "first offset 2"),
    ("offsets", np.zeros((2, 2), np.int64), "shape"),
    ("incident_energies", np.ones((3, 3)), "shape \\(3, 3\\)"),
    ("incident_energies", np.array([1.0, 0.0, 2.0]), "invalid incident energy 0.0 at shower 1"),
])
def test_bad_offsets_and_incident_energies(tmp_path, key, value, match):
    path = write_sparse(tmp_path / "bad.h5", _showers(3, seed=5))
    _corrupt(path, key, value)
    with pytest.raises(InputError, match=match) as err:
        SparseVoxelFile(path, in_memory=False)
    assert err.value.key == key and err.value.path == str(path)


def test_zero_showers_and_bad_ranges(tmp_path):
    path = write_sparse(tmp_path / "s.h5", _showers(3, seed=1))
    empty = tmp_path / "empty.h5"
    with h5py.File(path) as src, h5py.File(empty, "w") as f:
        f.attrs.update(src.attrs)
        f["offsets"] = np.zeros(1, np.int64)
        f["cell"] = np.zeros(0, np.int32)
        f["energy"] = np.zeros(0, np.float32)
        f["incident_energies"] = np.zeros((0, 1))
    for call in (lambda: SparseVoxelFile(empty), lambda: read_sparse(empty),
                 lambda: summarize(empty), lambda: read_showers(empty)):
        with pytest.raises(InputError, match="the file holds 0 showers") as err:
            call()
        assert err.value.key == "offsets" and err.value.path == str(empty)
    for kw, key in (({"stop": -1}, "stop"), ({"start": -2}, "start")):
        with pytest.raises(InputError, match=f"{key}=-") as err:
            read_sparse(path, **kw)
        assert err.value.key == key
        with pytest.raises(InputError, match=f"{key}=-"):
            list(iter_sparse(path, **kw))
        with pytest.raises(InputError, match=f"{key}=-"):
            SparseVoxelFile(path).read(**kw)
    assert len(read_sparse(path, stop=2)) == 2 and len(read_sparse(path, start=3)) == 0


def test_geometry_override_must_have_the_files_cells(tmp_path):
    path = write_sparse(tmp_path / "s.h5", _showers(2, seed=1))
    with pytest.raises(InputError, match="has 262144 cells, the file's sandwich32 32768") as err:
        SparseVoxelFile(path, geometry="sandwich64")
    assert err.value.key == "geometry"
    assert SparseVoxelFile(path, geometry=get_geometry("sandwich32")).geometry.n_cells == 32**3
