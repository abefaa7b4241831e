"""Regression metrics on hand-made cases, sigma68 of a Gaussian, resolution fits, the file command."""

from __future__ import annotations

import json
import math
import re

import h5py
import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.evaluation.regression import (
    evaluate_regression_file,
    fit_resolution,
    read_predictions,
    regression_metrics,
    resolution_model,
    sigma68,
)


def test_hand_made_metrics():
    true = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 1.5, 3.0, 5.0])  # residuals 0.5, -0.5, 0, 1
    m = regression_metrics(true, pred, bins=2, n_bootstrap=0)
    assert m["count"] == 4
    assert m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(math.sqrt(1.5 / 4))
    assert m["bias"] == pytest.approx(0.25)
    assert m["mape"] == pytest.approx(100 * (0.5 + 0.25 + 0 + 0.25) / 4)
    assert m["rel_bias"] == pytest.approx((0.5 - 0.25 + 0 + 0.25) / 4)
    b = m["bins"]
    assert b["edges"] == [1.0, 2.5, 4.0]
    assert b["count"] == [2, 2]  # the maximum (4) falls in the last bin
    assert b["mae"] == pytest.approx([0.5, 0.5])
    assert b["rmse"] == pytest.approx([0.5, math.sqrt(0.5)])
    assert b["bias"] == pytest.approx([0.0, 0.5])
    assert b["mape"] == pytest.approx([100 * 0.375, 100 * 0.125])
    assert b["mean_true"] == pytest.approx([1.5, 3.5])
    assert all(math.isnan(e) for e in b["rel_sigma68_err"])  # bootstrap disabled


def test_explicit_edges_and_empty_bins():
    true = np.array([0.5, 1.5, 1.6, 5.0])
    m = regression_metrics(true, true + 1.0, bins=[1.0, 2.0, 3.0], n_bootstrap=10)
    assert m["count"] == 4  # overall counts everything
    assert m["bins"]["count"] == [2, 0]  # 0.5 and 5.0 lie outside the bins
    assert math.isnan(m["bins"]["mae"][1]) and math.isnan(m["bins"]["sigma68"][1])
    assert m["bins"]["mae"][0] == pytest.approx(1.0)
    assert m["sigma68"] == pytest.approx(0.0)  # constant residual


def test_sigma68_of_a_gaussian():
    rng = np.random.default_rng(0)
    sigma = 2.5
    r = rng.normal(0.3, sigma, 200_000)
    assert sigma68(r) == pytest.approx(sigma, rel=0.01)
    # tails do not move it: 5% outliers far away change sigma68 only slightly, RMS a lot
    r2 = np.concatenate([r, rng.normal(0, 100 * sigma, 10_000)])
    assert sigma68(r2) == pytest.approx(sigma, rel=0.08)
    assert np.std(r2) > 10 * sigma
    assert math.isnan(sigma68([]))


def test_relative_resolution_and_bootstrap_error():
    rng = np.random.default_rng(1)
    n = 40_000
    true = rng.uniform(10.0, 20.0, n)
    pred = true * (1.0 + rng.normal(0.0, 0.1, n))
    m = regression_metrics(true, pred, bins=4, n_bootstrap=100, seed=3)
    b = m["bins"]
    assert b["rel_sigma68"] == pytest.approx([0.1] * 4, rel=0.05)
    # the error of a quantile-based width of a Gaussian: about 0.96 sigma / sqrt(n)
    for count, err in zip(b["count"], b["rel_sigma68_err"], strict=True):
        assert err == pytest.approx(0.96 * 0.1 / math.sqrt(count), rel=0.35)
    again = regression_metrics(true, pred, bins=4, n_bootstrap=100, seed=3)
    assert again["bins"]["rel_sigma68_err"] == b["rel_sigma68_err"]  # seeded


@pytest.mark.parametrize("true, pred, match", [
    ([], [], "no values"),
    ([1.0, 2.0], [1.0], "predictions for 2"),
    ([1.0, np.nan], [1.0, 2.0], "non-finite"),
    ([1.0, 2.0], [1.0, np.inf], "non-finite"),
])
def test_bad_metric_input(true, pred, match):
    with pytest.raises(InputError, match=match):
        regression_metrics(true, pred)


def test_bad_bins():
    with pytest.raises(InputError, match="bins"):
        regression_metrics([1.0, 2.0], [1.0, 2.0], bins=0)
    with pytest.raises(InputError, match="increasing"):
        regression_metrics([1.0, 2.0], [1.0, 2.0], bins=[2.0, 1.0])


def test_fit_recovers_exact_parameters():
    e = np.geomspace(1.0, 500.0, 12)
    s = resolution_model(e, 0.15, 0.01, 0.3)
    fit = fit_resolution(e, s, 1e-4 * s)
    assert fit["a"] == pytest.approx(0.15, rel=1e-6)
    assert fit["b"] == pytest.approx(0.01, rel=1e-5)
    assert fit["c"] == pytest.approx(0.3, rel=1e-6)
    assert fit["chi2"] == pytest.approx(0.0, abs=1e-6)
    assert fit["ndf"] == 9 and fit["n_points"] == 12


def test_fit_recovers_parameters_within_errors():
    rng = np.random.default_rng(7)
    a, b, c = 0.5, 0.03, 0.8
    e = np.geomspace(1.0, 200.0, 15)
    truth = resolution_model(e, a, b, c)
    err = 0.03 * truth
    pulls = {"a": [], "b": [], "c": []}
    chi2 = []
    for _ in range(30):
        fit = fit_resolution(e, truth + rng.normal(0.0, err), err)
        for k, v in (("a", a), ("b", b), ("c", c)):
            assert np.isfinite(fit[f"{k}_err"]) and fit[f"{k}_err"] > 0
            pulls[k].append((fit[k] - v) / fit[f"{k}_err"])
        chi2.append(fit["chi2"] / fit["ndf"])
    for k, p in pulls.items():
        p = np.asarray(p)
        assert abs(p.mean()) < 0.8, (k, p.mean())  # unbiased within the errors
        assert 0.5 < p.std() < 1.6, (k, p.std())  # errors of the right size
        assert np.mean(np.abs(p) < 3) > 0.9
    assert 0.6 < np.mean(chi2) < 1.5


def test_fit_fixed_term_and_bad_input():
    e = np.array([2.0, 8.0, 32.0, 128.0])
    s = resolution_model(e, 0.2, 0.02, 0.0)
    fit = fit_resolution(e, s, 0.01 * s, fixed={"c": 0.0})
    assert fit["c"] == 0.0 and fit["c_err"] == 0.0 and fit["fixed"] == ["c"]
    assert fit["a"] == pytest.approx(0.2, rel=1e-4) and fit["b"] == pytest.approx(0.02, rel=1e-3)
    assert fit["ndf"] == 2
    with pytest.raises(InputError, match="usable points"):
        fit_resolution(e[:2], s[:2], 0.01 * s[:2])
    with pytest.raises(InputError, match="usable points"):  # zero errors are left out
        fit_resolution(e, s, [0.01, 0.0, 0.0, 0.0])
    with pytest.raises(InputError, match="one resolution"):
        fit_resolution(e, s[:3], s)
    with pytest.raises(InputError, match="unknown terms"):
        fit_resolution(e, s, s, fixed={"d": 1.0})


def _write(path, true, pred, **kw):
    with h5py.File(path, "w") as f:
        f["true"] = true
        f["pred"] = pred
        for k, v in kw.items():
            if k in ("quantity", "unit"):
                f.attrs[k] = v
            else:
                f[k] = v
    return path


def _reject(name: str) -> float:
    raise AssertionError(f"non-standard JSON constant {name}")


def test_evaluate_regression_file(tmp_path):
    pytest.importorskip("mplhep")
    rng = np.random.default_rng(2)
    n = 4000
    true = rng.uniform(1.0, 20.0, n)
    res = resolution_model(true, 0.5, 0.05, 0.3)
    pred = np.stack([true * (1 + res * rng.normal(size=n)),
                     true * (1.1 + 2 * res * rng.normal(size=n))])
    path = _write(tmp_path / "pred.h5", true, pred, method=np.array([b"cnn", b"transformer"]),
                  quantity="momentum")
    out = tmp_path / "out"
    result = evaluate_regression_file(path, out, bins=8, seed=1)
    assert set(result["methods"]) == {"cnn", "transformer"}
    assert result["quantity"] == "momentum" and result["unit"] == "GeV" and result["n"] == n
    cnn, tr = result["methods"]["cnn"], result["methods"]["transformer"]
    assert cnn["mae"] == pytest.approx(np.abs(pred[0] - true).mean())
    assert tr["rel_bias"] == pytest.approx(0.1, abs=0.02)
    assert tr["rmse"] > cnn["rmse"]
    assert sum(cnn["bins"]["count"]) == n and len(cnn["bins"]["count"]) == 8
    fit = cnn["resolution_fit"]
    assert fit["a"] == pytest.approx(0.5, abs=5 * fit["a_err"] + 0.05)
    on_disk = json.loads((out / "metrics.json").read_text(), parse_constant=_reject)
    assert on_disk == result
    assert sorted(result["plots"]) == ["mape_per_bin.png", "pred_vs_true.png", "residuals.png",
                                       "resolution.png", "rmse_per_bin.png"]
    for name in result["plots"]:
        assert (out / name).stat().st_size > 2000
    html = (out / "report.html").read_text()
    assert "transformer" in html and f"{cnn['mae']:.4g}" in html


def test_single_method_and_file_bins(tmp_path):
    true = np.linspace(1.0, 10.0, 200)
    path = _write(tmp_path / "p.h5", true[:, None], true * 1.01, bins=np.array([1.0, 5.0, 10.0]),
                  unit="MeV")
    data = read_predictions(path)
    assert data["pred"].shape == (1, 200) and data["methods"] == ["prediction"]
    assert data["true"].shape == (200,)
    result = evaluate_regression_file(path, tmp_path / "o", plots=False)
    m = result["methods"]["prediction"]
    assert m["bins"]["edges"] == [1.0, 5.0, 10.0]
    assert m["mape"] == pytest.approx(1.0)
    assert "skipped" in m["resolution_fit"]  # two bins cannot fit three terms
    assert result["plots"] == [] and (tmp_path / "o" / "report.html").is_file()


@pytest.mark.parametrize("content, match", [
    ({"true": np.ones(3)}, "'pred'"),
    ({"true": np.ones(3), "pred": np.ones(4)}, "shape"),
    ({"true": np.ones(3), "pred": np.ones((2, 3)), "method": np.array([b"a"])}, "names for 2"),
    ({"true": np.ones(3), "pred": np.ones((2, 3)), "method": np.array([b"a", b"a"])},
     "distinct"),
    ({"true": np.array([1.0, np.nan, 2.0]), "pred": np.ones(3)}, "non-finite"),
    ({"true": np.zeros((0,)), "pred": np.zeros((0,))}, "N >= 1"),
])
def test_bad_prediction_files(tmp_path, content, match):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        for k, v in content.items():
            f[k] = v
    with pytest.raises(InputError, match=match):
        evaluate_regression_file(path, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_missing_and_non_hdf5_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_predictions(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5"):
        read_predictions(tmp_path / "text.h5")


def test_evaluate_regression_command(tmp_path):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from showerformer.commands.evaluate import evaluate_regression

    app = typer.Typer()
    app.command()(evaluate_regression)
    app.command("noop")(lambda: None)  # two commands: the command name is required
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 20, 500)
    path = _write(tmp_path / "p.h5", true, true + rng.normal(0, 0.5, 500))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["evaluate-regression", str(path), "--out", str(out),
                                   "--bins", "5", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "MAE" in res.output and "report.html" in res.output
    assert (out / "metrics.json").is_file()
    bad = CliRunner().invoke(app, ["evaluate-regression", str(tmp_path / "nope.h5")])
    assert isinstance(bad.exception, InputError)


def _write_analysis(path, true, cls, att, *, method="net", scales=None):
    with h5py.File(path, "a") as f:
        g = f.create_group("analysis")
        g.attrs["method"] = method
        g["cls"] = cls.astype(np.float32)
        g["cross_scale_attention"] = att.astype(np.float32)
        if scales is not None:
            g.attrs["scales"] = scales


def _toy_analysis(n: int, rng):
    true = rng.uniform(1.0, 20.0, n)
    # the first principal axis of the embedding follows the true value
    direction = rng.normal(size=16)
    cls = np.outer(true - true.mean(), direction) + 0.3 * rng.normal(size=(n, 16))
    logits = rng.normal(size=(n, 8, 5))
    logits[:, :, 4] += 2.0  # every block looks mostly at the coarsest scale
    att = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return true, cls, att


def test_analysis_plots_and_summary(tmp_path):
    pytest.importorskip("mplhep")
    rng = np.random.default_rng(5)
    true, cls, att = _toy_analysis(3000, rng)
    path = _write(tmp_path / "p.h5", true, np.stack([true, true + 0.1]),
                  method=np.array([b"sum", b"net"]), quantity="momentum")
    scales = ["query", "64^3", "32^3", "16^3", "8^3"]
    _write_analysis(path, true, cls, att, scales=scales)
    result = evaluate_regression_file(path, tmp_path / "out", bins=5)
    a = result["analysis"]
    assert a["method"] == "net"
    assert a["cls_pca"]["explained_variance_ratio"][0] > 0.9
    assert abs(a["cls_pca"]["pc1_spearman_with_true"]) > 0.95
    mean = np.asarray(a["cross_scale_attention"]["mean"])
    np.testing.assert_allclose(mean, att.astype(np.float32).mean(0), rtol=1e-5)
    assert a["cross_scale_attention"]["keys"] == scales
    assert np.argmax(a["cross_scale_attention"]["mean_over_blocks"]) == 4
    for name in ("cls_pca.png", "cross_scale_attention.png"):
        assert name in result["plots"] and (tmp_path / "out" / name).stat().st_size > 5000
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Network analysis: net" in html and "8^3" in html
    # without plots the numbers are still there
    assert evaluate_regression_file(path, tmp_path / "o2", bins=5, plots=False)["analysis"][
        "cls_pca"]["explained_variance_ratio"] == pytest.approx(
            a["cls_pca"]["explained_variance_ratio"], rel=1e-6)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"method": "other"}, "analysis.method"),
    ({"rows": 10}, "analysis/cls"),
    ({"nan": True}, "analysis/cross_scale_attention"),
    ({"scales": ["query", "a"]}, "analysis.scales"),
])
def test_bad_analysis_group(tmp_path, kwargs, key):
    rng = np.random.default_rng(1)
    true, cls, att = _toy_analysis(50, rng)
    path = _write(tmp_path / "p.h5", true, true, method=np.array([b"net"]))
    if "rows" in kwargs:
        cls = cls[:kwargs["rows"]]
    if kwargs.get("nan"):
        att[3, 2, 1] = np.nan
    _write_analysis(path, true, cls, att, method=kwargs.get("method", "net"),
                    scales=kwargs.get("scales"))
    with pytest.raises(InputError, match=re.escape(f"key '{key}'")):
        read_predictions(path)


def test_analysis_plot_input_checks(tmp_path):
    pytest.importorskip("mplhep")
    from showerformer.evaluation.plots import plot_attention_matrix, plot_embedding_pca

    with pytest.raises(InputError, match="weights"):
        plot_attention_matrix(np.ones((2, 3)), tmp_path / "a.png", row_labels=["a"],
                              column_labels=["x", "y", "z"])
    with pytest.raises(InputError, match="embedding"):
        plot_embedding_pca(np.ones((5, 1)), np.arange(5.0), tmp_path / "p.png")
    with pytest.raises(InputError, match="embedding"):
        plot_embedding_pca(np.ones((5, 3)), np.arange(4.0), tmp_path / "p.png")
