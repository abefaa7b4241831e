"""Tests of the attention cost comparison: synthetic layer profiles, allowed fractions, rows, table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from showerformer.benchmark.attention import (
    ATTENTION_BACKENDS,
    allowed_fraction,
    attention_cost,
    format_attention_table,
    layer_counts,
    shower_layers,
)
from showerformer.nn.layer_window import dense_layer_window_mask


@pytest.mark.parametrize("profile", ["gamma", "uniform"])
def test_layer_counts_sum_and_shape(profile: str) -> None:
    for points in (0, 7, 1000, 4001):
        counts = layer_counts(points, 45, profile)
        assert counts.shape == (45,) and counts.dtype == np.int64
        assert counts.sum() == points and (counts >= 0).all()
    uniform = layer_counts(450, 45, "uniform")
    assert (uniform == 10).all()
    gamma = layer_counts(4000, 45, "gamma")
    assert 8 <= int(np.argmax(gamma)) <= 14  # maximum near a quarter of the depth
    assert gamma[-1] < gamma.max() / 50  # a thin tail
    with pytest.raises(ValueError, match="profile"):
        layer_counts(10, 5, "flat")


def test_shower_layers_are_sorted_and_match_counts() -> None:
    layer = shower_layers(500, 30, "gamma", batch=2)
    assert layer.shape == (2, 500) and layer.dtype == torch.int64
    assert torch.equal(layer[0], layer[1]) and (layer[:, 1:] >= layer[:, :-1]).all()
    assert torch.bincount(layer[0], minlength=30).tolist() == layer_counts(500, 30).tolist()


@pytest.mark.parametrize("window", [0, 2, 5, None])
def test_allowed_fraction_matches_the_dense_mask(window: int | None) -> None:
    for profile in ("gamma", "uniform"):
        layer = shower_layers(300, 20, profile)
        dense = dense_layer_window_mask(layer, torch.ones_like(layer, dtype=torch.bool), window)
        want = dense.double().mean().item()
        assert allowed_fraction(layer_counts(300, 20, profile), window) == pytest.approx(want)
    assert allowed_fraction([0, 0], 1) == 0.0


def test_attention_cost_rows() -> None:
    threads = torch.get_num_threads()
    rows = attention_cost(points=(64, 256), n_layers=16, window=1, d_model=16, n_heads=2,
                          repeats=1, backward=True, profile="uniform", block_size=32, threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert [(r["points"], r["backend"]) for r in rows] == [
        (p, b) for p in (64, 256) for b in ATTENTION_BACKENDS]
    keys = {"points", "batch", "backend", "window", "status", "allowed_fraction",
            "scored_fraction", "n_keys", "mask_ms", "forward_ms", "backward_ms", "mask_mb",
            "gather_mb", "scores_mb", "peak_mb", "device", "threads"}
    for r in rows:
        assert set(r) == keys and r["device"] == "cpu" and r["threads"] == 1
        if r["backend"] == "flex":  # needs CUDA
            assert r["status"].startswith("skipped") and r["forward_ms"] is None
            continue
        assert r["status"] == "ok"
        assert r["forward_ms"] > 0 and r["backward_ms"] > 0 and r["peak_mb"] is None
        layer = shower_layers(r["points"], 16, "uniform")
        dense = dense_layer_window_mask(layer, torch.ones_like(layer, dtype=torch.bool), 1)
        if r["backend"] == "full":
            assert r["window"] is None and r["allowed_fraction"] == 1.0 and r["mask_mb"] == 0
            assert r["scored_fraction"] == 1.0
        else:
            assert r["window"] == 1
            assert r["allowed_fraction"] == pytest.approx(dense.double().mean().item())
            assert r["allowed_fraction"] <= r["scored_fraction"] <= 1.0
        if r["backend"] == "dense":
            assert r["scored_fraction"] == 1.0 and r["mask_mb"] == r["points"] ** 2 / 2**20
        if r["backend"] == "blocked":
            assert r["n_keys"] >= 1 and r["gather_mb"] > 0
            if r["points"] == 256:  # 16 points per layer, tiles of 32 see at most 4 layers
                assert r["n_keys"] == 64 and r["scored_fraction"] < 0.25
    # the score estimate is heads x scored pairs x 4 bytes
    full = rows[ATTENTION_BACKENDS.index("full")]
    assert full["scores_mb"] == pytest.approx(2 * 64 * 64 * 4 / 2**20)


def test_dense_is_skipped_above_the_cap_and_table() -> None:
    rows = attention_cost(points=(128,), n_layers=8, window=0, d_model=8, n_heads=2, repeats=1,
                          backends=("dense", "blocked"), dense_cap_bytes=1000)
    assert rows[0]["status"].startswith("skipped: dense mask needs")
    assert rows[0]["forward_ms"] is None and rows[1]["status"] == "ok"
    table = format_attention_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) + 1
    assert "allowed" in lines[0] and "fwd ms" in lines[0]
    assert "skipped: dense mask needs" in lines[2] and lines[3].split()[:2] == ["128", "blocked"]
    assert "window 0" in lines[-1] and "estimate" in lines[-1]
    with pytest.raises(ValueError, match="backends"):
        attention_cost(points=(8,), backends=("sparse",))
