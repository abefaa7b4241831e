"""The sampler benchmark at toy size: a two-step score-diffusion run on simulated ds2-like showers,
three samplers evaluated and timed, network evaluations counted, tables printed; the energy
dependence of hits and radius on known showers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml

from showerformer.benchmark.samplers import (
    energy_dependence,
    parse_sampler_specs,
    run_sampler_benchmark,
)
from showerformer.errors import InputError


def test_sampler_benchmark_tiny(tmp_path: Path) -> None:
    from rich.console import Console

    from showerformer.commands.benchmark import energy_dependence_table, sampler_tables
    from showerformer.commands.tables import show_table
    from showerformer.simulation import simulate_to_file
    from showerformer.training.run import train

    data, test = tmp_path / "ds2.h5", tmp_path / "ds2_test.h5"
    simulate_to_file(data, "ds2", n=24, seed=0, progress=False)
    simulate_to_file(test, "ds2", n=8, seed=1, progress=False)
    cfg = {"model": {"family": "score-diffusion", "embed_dim": 8, "hidden": 8, "n_heads": 2,
                     "n_blocks": 1, "n_fourier": 4, "counts": {"d_model": 8, "n_blocks": 1}},
           "train": {"max_steps": 2, "batch_size": 4, "tensorboard": False, "device": "cpu",
                     "precision": "fp32"},
           "data": {"val_fraction": 0.0}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = train(tmp_path / "run.yaml", data, tmp_path / "run", progress=False).out_dir
    summary = run_sampler_benchmark(run, test, tmp_path / "bench",
                                    samplers=("pc:2", "midpoint:3", "adaptive"),
                                    speed_batches=(1,), classifier="none", device="cpu")
    rows = {r["sampler"]: r for r in summary["samplers"]}
    assert rows["pc"]["evaluations"] == 4  # N (M + 1) with M = 1
    assert rows["midpoint"]["evaluations"] == 6
    assert rows["adaptive"]["evaluations"] > 6
    for r in rows.values():
        assert r["speed"][0]["ms_per_shower"] > 0 and r["evaluation"]["separation_mean"] >= 0
        assert [e["bin"] for e in r["energy_dependence"]] == ["1-10 GeV", "10-100 GeV",
                                                              "100-1000 GeV"]
    assert (tmp_path / "bench" / "samplers.json").exists()
    buf = io.StringIO()
    console = Console(file=buf, width=200)
    for t in [*sampler_tables(summary),
              energy_dependence_table(rows["pc"]["energy_dependence"], "pc:2")]:
        show_table(t, console)
    assert "evaluations" in buf.getvalue() and "radius" in buf.getvalue()
    with pytest.raises(InputError, match="--sampler"):
        run_sampler_benchmark(run, test, tmp_path / "bench", samplers=("ddim:4",),
                              classifier="none")
    with pytest.raises(InputError, match="classifier"):  # 8 showers: refused before sampling
        run_sampler_benchmark(run, test, tmp_path / "bench", samplers=("pc:2",),
                              classifier="cpu")


def test_parse_sampler_specs() -> None:
    assert parse_sampler_specs(["pc:100", "adaptive"]) == [("pc", 100), ("adaptive", None)]
    for bad in ("pc:0", "pc:x", ":4"):
        with pytest.raises(InputError, match="--sampler"):
            parse_sampler_specs([bad])


def test_energy_dependence_on_known_showers() -> None:
    from showerformer.geometry import get_geometry
    from showerformer.showers import Conditions, VoxelShowers

    geo = get_geometry("ds2")
    n = 6
    cond = Conditions(np.array([2e3, 5e3, 2e4, 5e4, 2e5, 5e5]), np.full(n, 11),
                      np.full(n, np.pi / 2), np.zeros(n))
    e = np.zeros((n, geo.n_cells), np.float32)
    r = np.hypot(*geo.cell_centers()[:, :2].T)
    inner, outer = np.argmin(r), np.argmax(r)
    e[:, inner] = 1.0
    ref = VoxelShowers(e.copy(), cond, geo)
    e[:, outer] = 1.0  # every generated shower has one more hit, further out
    gen = VoxelShowers(e, cond, geo)
    rows = energy_dependence(ref, gen)
    assert [row["n"] for row in rows] == [2, 2, 2]
    for row in rows:
        assert row["hits_ref"] == 1 and row["hits_gen"] == 2 and row["hits_separation"] == 1.0
        assert row["radius_ref"] == pytest.approx(r[inner], rel=1e-5)
        assert row["radius_gen"] == pytest.approx((r[inner] + r[outer]) / 2, rel=1e-5)
