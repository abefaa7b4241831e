"""Regression evaluation: MAE, RMSE, MAPE, bias and sigma68 per true-value bin, resolution fits, report.

Predictions file layout (HDF5, read by :func:`evaluate_regression_file` and
``showerformer evaluate-regression``):

- ``true``: (N,) float, the true values (e.g. the incident momentum in GeV);
- ``pred``: (N,) float for one method, or (M, N) for M methods compared on the same showers;
- ``method`` (optional): (M,) strings, the method names (default ``"prediction"`` for one,
  ``"method i"`` for several);
- ``bins`` (optional): (n_bins + 1,) increasing edges of the true-value bins;
- file attributes (optional): ``quantity`` (default ``"energy"``) and ``unit`` (default
  ``"GeV"``), used in labels only;
- ``analysis`` (optional group, written by ``showerformer predict --analysis``): per-event
  internals of one method (attribute ``method``): ``cls`` (N, d), the network's final CLS token,
  plotted as a PCA coloured by the true value; ``cross_scale_attention`` (N, blocks, keys), its
  stage-2 attention, averaged into a block x scale map (attribute ``scales``: key labels).

Definitions (residual ``d = pred - true``, relative residual ``d / true``):
MAE = mean |d|; RMSE = sqrt(mean d^2); MAPE = 100 mean |d / true| (showers with true = 0 are left
out of the relative quantities); bias = mean d; sigma68 = half the width of the central 68.27%
interval of d, (q(0.841345) - q(0.158655)) / 2, which equals sigma for a Gaussian and ignores
tails. The relative resolution per bin is sigma68 of d / true, its uncertainty a seeded bootstrap.

References:
    Calorimeter energy resolution sigma/E = a/sqrt(E) (+) b (+) c/E: C. W. Fabjan and
    F. Gianotti, Rev. Mod. Phys. 75 (2003) 1243.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from showerformer.errors import InputError, OutputError

__all__ = [
    "ANALYSIS_ARRAYS",
    "QUANTILES_68",
    "evaluate_regression_file",
    "fit_resolution",
    "read_predictions",
    "regression_metrics",
    "resolution_model",
    "sigma68",
]

QUANTILES_68 = (0.158655, 0.841345)
"""The quantiles bounding the central 68.27% (+-1 sigma of a Gaussian) interval."""

PathLike = str | os.PathLike[str]
_SYMBOLS = {"energy": "E", "momentum": "p", "transverse momentum": "p_T"}


# ---------------------------------------------------------------------------- metrics
def sigma68(residuals: Any) -> float:
    """Half the width of the central 68.27% interval of the residuals (NaN when empty).

    Arguments:
        residuals: (n,) values.

    Returns:
        ``(q(0.841345) - q(0.158655)) / 2``; equals sigma for a Gaussian.
    """
    r = np.asarray(residuals, dtype=np.float64).reshape(-1)
    if r.size == 0:
        return math.nan
    if not np.isfinite(r).all():
        i = int(np.flatnonzero(~np.isfinite(r))[0])
        raise InputError(f"non-finite residual {r[i]!r} at index {i}", key="residuals",
                         expected="finite numbers")
    lo, hi = np.quantile(r, QUANTILES_68)
    return float(0.5 * (hi - lo))


def _check_pair(true: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise InputError("no values", key="true", expected="at least one true value")
    if t.shape != p.shape:
        raise InputError(f"{p.size} predictions for {t.size} true values", key="pred",
                         expected="one prediction per true value")
    for name, arr in (("true", t), ("pred", p)):
        if not np.isfinite(arr).all():
            i = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise InputError(f"non-finite value {arr[i]!r} at index {i}", key=name,
                             expected="finite numbers")
    return t, p


def _bin_edges(true: np.ndarray, bins: int | Sequence[float] | np.ndarray) -> np.ndarray:
    if isinstance(bins, int | np.integer):
        if bins < 1:
            raise InputError(f"bins={bins}", key="bins", expected="an integer >= 1 or edges")
        lo, hi = float(true.min()), float(true.max())
        if hi <= lo:
            lo, hi = lo - 0.5 * max(1.0, abs(lo)), hi + 0.5 * max(1.0, abs(hi))
        return np.linspace(lo, hi, int(bins) + 1)
    edges = np.asarray(bins, dtype=np.float64).reshape(-1)
    if len(edges) < 2 or not np.isfinite(edges).all() or np.any(np.diff(edges) <= 0):
        raise InputError(f"bin edges {edges.tolist()[:6]}", key="bins",
                         expected="at least two increasing finite edges")
    return edges


def _summary(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    d = p - t
    nz = t != 0
    rel = d[nz] / t[nz]
    n = len(d)
    return {
        "count": int(n),
        "mae": float(np.abs(d).mean()) if n else math.nan,
        "rmse": float(np.sqrt(np.mean(d**2))) if n else math.nan,
        "mape": float(100.0 * np.abs(rel).mean()) if rel.size else math.nan,
        "bias": float(d.mean()) if n else math.nan,
        "sigma68": sigma68(d),
        "rel_bias": float(rel.mean()) if rel.size else math.nan,
        "rel_sigma68": sigma68(rel),
    }


def regression_metrics(
    true: Any,
    pred: Any,
    *,
    bins: int | Sequence[float] | np.ndarray = 10,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Regression metrics overall and per bin of the true value.

    Arguments:
        true: true values, (N,).
        pred: predictions, (N,).
        bins: number of equal-width bins over [min, max] of ``true`` (the maximum falls in the
            last bin), or the bin edges; values outside the edges count only overall.
        n_bootstrap: bootstrap resamples for the uncertainty of the relative sigma68 per bin
            (0 disables it).
        seed: seed of the bootstrap.

    Returns:
        ``{"count", "mae", "rmse", "mape" (percent), "bias", "sigma68", "rel_bias",
        "rel_sigma68", "bins": {"edges", "center", "mean_true", "count", "mae", "rmse",
        "mape", "bias", "sigma68", "rel_bias", "rel_sigma68", "rel_sigma68_err"}}``; per-bin
        entries are lists with NaN for empty bins.

    Raises:
        InputError: empty input, different lengths, non-finite values, bad bins.
    """
    t, p = _check_pair(true, pred)
    edges = _bin_edges(t, bins)
    out: dict[str, Any] = _summary(t, p)
    idx = np.searchsorted(edges, t, side="right") - 1
    idx[t == edges[-1]] = len(edges) - 2  # right edge inclusive, as np.histogram
    rng = np.random.default_rng(seed)
    keys = ("count", "mae", "rmse", "mape", "bias", "sigma68", "rel_bias", "rel_sigma68")
    per: dict[str, list[float]] = {k: [] for k in keys}
    mean_true: list[float] = []
    rel_err: list[float] = []
    for b in range(len(edges) - 1):
        sel = idx == b
        tb, pb = t[sel], p[sel]
        s = _summary(tb, pb)
        for k in keys:
            per[k].append(s[k])
        mean_true.append(float(tb.mean()) if tb.size else math.nan)
        nz = tb != 0
        rel = (pb[nz] - tb[nz]) / tb[nz]
        if n_bootstrap > 0 and rel.size >= 2:
            draws = rng.integers(0, rel.size, size=(n_bootstrap, rel.size))
            q = np.quantile(rel[draws], QUANTILES_68, axis=1)  # (2, n_bootstrap)
            rel_err.append(float(np.std(0.5 * (q[1] - q[0]), ddof=1)))
        else:
            rel_err.append(math.nan)
    out["bins"] = {
        "edges": edges.tolist(),
        "center": (0.5 * (edges[1:] + edges[:-1])).tolist(),
        "mean_true": mean_true,
        **per,
        "rel_sigma68_err": rel_err,
    }
    return out


# ---------------------------------------------------------------------------- resolution fit
def resolution_model(energy: Any, a: float, b: float, c: float) -> np.ndarray:
    """sigma / E = a / sqrt(E) (+) b (+) c / E, the terms added in quadrature.

    Arguments:
        energy: E (> 0), any shape.
        a: stochastic term (units sqrt(E)).
        b: constant term (dimensionless).
        c: noise term (units of E).

    Returns:
        sigma / E, the shape of ``energy``.
    """
    e = np.asarray(energy, dtype=np.float64)
    return np.sqrt(a**2 / e + b**2 + c**2 / e**2)


def fit_resolution(
    energy: Any,
    sigma_over_e: Any,
    err: Any,
    *,
    fixed: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Fit sigma/E = a/sqrt(E) (+) b (+) c/E (quadrature sum) with ``scipy.optimize.curve_fit``.

    The terms enter squared, so the fit runs on the squares A = a^2, B = b^2, C = c^2 >= 0
    (a bounded least-squares fit); this keeps the covariance defined when a term is compatible
    with zero, where the derivative with respect to a itself vanishes. The uncertainty of
    a is the upper one-standard-deviation step propagated from A,
    ``sqrt(A + sigma_A) - sqrt(A)``, which is ``sigma_A / (2 a)`` for a well-measured term and
    ``sqrt(sigma_A)`` for a term at zero. Points with a non-finite value, E <= 0 or err <= 0 are
    left out.

    Arguments:
        energy: E per point, (n,).
        sigma_over_e: the relative resolution per point, (n,).
        err: its uncertainty (one standard deviation), (n,); used as absolute weights.
        fixed: terms to hold fixed, e.g. ``{"c": 0.0}`` when the range cannot constrain them.

    Returns:
        ``{"a", "b", "c", "a_err", "b_err", "c_err" (0 for fixed terms, NaN when the
        covariance cannot be estimated), "cov_squared" (3 x 3 covariance of A, B, C; zeros for
        fixed terms), "chi2", "ndf", "n_points", "fixed" (names)}``.

    Raises:
        InputError: fewer usable points than free parameters, or shapes that differ.

    References:
        C. W. Fabjan and F. Gianotti, Rev. Mod. Phys. 75 (2003) 1243.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    e = np.asarray(energy, dtype=np.float64).reshape(-1)
    s = np.asarray(sigma_over_e, dtype=np.float64).reshape(-1)
    w = np.asarray(err, dtype=np.float64).reshape(-1)
    if not (e.shape == s.shape == w.shape):
        raise InputError(f"{e.size} energies, {s.size} resolutions and {w.size} errors",
                         key="sigma_over_E", expected="one resolution and error per energy")
    fixed = dict(fixed or {})
    unknown = set(fixed) - {"a", "b", "c"}
    if unknown:
        raise InputError(f"unknown terms {sorted(unknown)}", key="fixed",
                         expected="a subset of 'a', 'b', 'c'")
    names = [k for k in ("a", "b", "c") if k not in fixed]
    ok = np.isfinite(e) & np.isfinite(s) & np.isfinite(w) & (e > 0) & (w > 0)
    e, s, w = e[ok], s[ok], w[ok]
    if len(e) < max(1, len(names)):
        raise InputError(f"{len(e)} usable points for {len(names)} free parameters",
                         key="sigma_over_E", expected=f"at least {len(names)} points with "
                         "E > 0, finite values and errors > 0")
    squares_fixed = {k: float(v) ** 2 for k, v in fixed.items()}

    def squares(theta: Sequence[float]) -> dict[str, float]:
        values = dict(squares_fixed)
        values.update(zip(names, theta, strict=True))
        return values

    def model(x: np.ndarray, *theta: float) -> np.ndarray:
        q = squares(theta)
        return np.sqrt(np.maximum(q["a"] / x + q["b"] + q["c"] / x**2, 1e-300))

    # starting point: the stochastic term explains the median point, the rest is small
    guess = {"a": float(np.median(s * np.sqrt(e))) ** 2, "b": float(0.5 * s.min()) ** 2,
             "c": float(0.1 * np.median(s * e)) ** 2}
    p0 = [max(guess[k], 1e-12) for k in names]
    cov_ok = True
    if names:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            kwargs = {"p0": p0, "sigma": w, "absolute_sigma": True,
                      "bounds": (0.0, np.inf), "max_nfev": 20000}
            try:
                popt, pcov = curve_fit(model, e, s, **kwargs)
            except OptimizeWarning:
                cov_ok = False
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    popt, pcov = curve_fit(model, e, s, **kwargs)
            except RuntimeError as exc:  # no convergence
                raise InputError(f"the resolution fit did not converge ({exc})",
                                 key="sigma_over_E",
                                 expected="points a resolution curve fits") from None
    else:
        popt, pcov = np.zeros(0), np.zeros((0, 0))
    index = {k: i for i, k in enumerate(names)}
    result: dict[str, Any] = {}
    for k in ("a", "b", "c"):
        if k in fixed:
            result[k], result[f"{k}_err"] = abs(float(fixed[k])), 0.0
            continue
        q = max(float(popt[index[k]]), 0.0)
        var = float(pcov[index[k], index[k]])
        result[k] = math.sqrt(q)
        result[f"{k}_err"] = (math.sqrt(q + math.sqrt(var)) - math.sqrt(q)
                              if cov_ok and math.isfinite(var) and var >= 0 else math.nan)
    cov = np.zeros((3, 3))
    for k1, i1 in index.items():
        for k2, i2 in index.items():
            cov["abc".index(k1), "abc".index(k2)] = pcov[i1, i2] if cov_ok else math.nan
    resid = (s - model(e, *popt)) / w
    result.update({
        "cov_squared": cov.tolist(),
        "chi2": float(np.sum(resid**2)),
        "ndf": int(len(e) - len(names)),
        "n_points": len(e),
        "fixed": sorted(fixed),
    })
    return result


# ---------------------------------------------------------------------------- files
def read_predictions(path: PathLike) -> dict[str, Any]:
    """Read a predictions file (layout in the module docstring).

    Arguments:
        path: the HDF5 file.

    Returns:
        ``{"true": (N,), "pred": (M, N), "methods": [M names], "bins": edges or None,
        "quantity": str, "unit": str}``.

    Raises:
        InputError: missing file or dataset, wrong shapes, non-finite values.
    """
    import h5py

    p = Path(path)
    expected = "an HDF5 file with datasets 'true' (N,) and 'pred' (N,) or (M, N)"
    if p.is_dir():
        raise InputError("is a directory, not a file", path=p, expected=expected)
    if not p.is_file():
        raise InputError("no such file", path=p, expected=expected)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"not a readable HDF5 file ({' '.join(str(exc).split())})", path=p,
                         expected=expected) from None
    with f:
        for key in ("true", "pred", "bins"):
            if key not in f:
                if key == "bins":
                    continue
                found = ", ".join(repr(k) for k in f.keys()) or "nothing"
                raise InputError(f"missing (the file holds {found})", path=p, key=key,
                                 expected=expected)
            if not isinstance(f[key], h5py.Dataset):
                raise InputError("is a group, not a dataset", path=p, key=key,
                                 expected=expected)
            if f[key].dtype.kind not in "fiu":
                raise InputError(f"has dtype {f[key].dtype}", path=p, key=key,
                                 expected="numbers")
        true = np.asarray(f["true"][()], dtype=np.float64)
        pred = np.asarray(f["pred"][()], dtype=np.float64)
        methods_raw = f["method"][()] if "method" in f else None
        bins = np.asarray(f["bins"][()], dtype=np.float64) if "bins" in f else None
        quantity = _attr(f.attrs.get("quantity"), "energy")
        unit = _attr(f.attrs.get("unit"), "GeV")
        analysis = _read_analysis(f, p) if "analysis" in f else None
    if bins is not None:
        bins = bins.reshape(-1)
        if len(bins) < 2 or not np.isfinite(bins).all() or (np.diff(bins) <= 0).any():
            raise InputError(f"bin edges {bins.tolist()[:6]}", path=p, key="bins",
                             expected="at least two increasing finite edges")
    if true.ndim == 2 and true.shape[1] == 1:
        true = true[:, 0]
    if true.ndim != 1 or true.size == 0:
        raise InputError(f"shape {true.shape}", path=p, key="true",
                         expected="(N,) true values, N >= 1")
    n = len(true)
    if pred.ndim == 2 and pred.shape == (n, 1):
        pred = pred[:, 0]
    if pred.ndim == 1:
        pred = pred[None]
    if pred.ndim != 2 or pred.shape[1] != n:
        raise InputError(f"shape {pred.shape} for {n} true values", path=p, key="pred",
                         expected=f"({n},) or (M, {n})")
    if methods_raw is None:
        methods = ["prediction"] if len(pred) == 1 else [f"method {i}" for i in range(len(pred))]
    else:
        arr = np.atleast_1d(methods_raw)
        methods = [m.decode() if isinstance(m, bytes) else str(m) for m in arr.tolist()]
        if len(methods) != len(pred):
            raise InputError(f"{len(methods)} names for {len(pred)} methods", path=p,
                             key="method", expected="one name per row of 'pred'")
        if len(set(methods)) != len(methods):
            raise InputError(f"repeated names {methods}", path=p, key="method",
                             expected="distinct method names")
    for key, arr in (("true", true), ("pred", pred)):
        if not np.isfinite(arr).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise InputError(f"non-finite value at index {idx}", path=p, key=key,
                             expected="finite numbers")
    if analysis is not None:
        if analysis["method"] not in methods:
            raise InputError(f"method {analysis['method']!r}", path=p, key="analysis.method",
                             expected=f"one of the methods {methods}")
        for key in ANALYSIS_ARRAYS:
            arr = analysis.get(key)
            if arr is not None and len(arr) != n:
                raise InputError(f"{len(arr)} rows for {n} true values", path=p,
                                 key=f"analysis/{key}", expected=f"{n} rows, one per event")
    return {"true": true, "pred": pred, "methods": methods, "bins": bins,
            "quantity": quantity, "unit": unit, "analysis": analysis}


ANALYSIS_ARRAYS = {"cls": 2, "cross_scale_attention": 3}
"""Optional per-event arrays of the ``analysis`` group and their number of dimensions."""


def _read_analysis(f: Any, p: Path) -> dict[str, Any]:
    """The ``analysis`` group of a predictions file, checked (see :func:`read_predictions`)."""
    import h5py

    g = f["analysis"]
    if not isinstance(g, h5py.Group):
        raise InputError("is a dataset, not a group", path=p, key="analysis",
                         expected="a group of per-event analysis arrays")
    out: dict[str, Any] = {"method": _attr(g.attrs.get("method"), "prediction")}
    for key, ndim in ANALYSIS_ARRAYS.items():
        if key not in g:
            continue
        d = g[key]
        if not isinstance(d, h5py.Dataset) or d.dtype.kind != "f" or d.ndim != ndim:
            raise InputError(f"{'a group' if not isinstance(d, h5py.Dataset) else d.dtype} "
                             f"of {getattr(d, 'ndim', 0)} dimensions", path=p,
                             key=f"analysis/{key}",
                             expected=f"a float array of {ndim} dimensions, one row per event")
        arr = np.asarray(d[()], dtype=np.float64)
        if not np.isfinite(arr).all():
            raise InputError("non-finite values", path=p, key=f"analysis/{key}",
                             expected="finite numbers")
        out[key] = arr
    scales = g.attrs.get("scales")
    if scales is not None:
        out["scales"] = [_attr(v, "?") for v in np.atleast_1d(scales).tolist()]
    att = out.get("cross_scale_attention")
    if att is not None and "scales" in out and len(out["scales"]) != att.shape[2]:
        raise InputError(f"{len(out['scales'])} scale labels for {att.shape[2]} keys", path=p,
                         key="analysis.scales", expected="one label per attention key")
    return out


def _attr(value: Any, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _attr(value.reshape(-1)[0], default)
    return str(value)


def _resolution_fit_or_reason(metrics: Mapping[str, Any], min_count: int) -> dict[str, Any]:
    b = metrics["bins"]
    e = np.asarray(b["mean_true"], dtype=np.float64)
    s = np.asarray(b["rel_sigma68"], dtype=np.float64)
    err = np.asarray(b["rel_sigma68_err"], dtype=np.float64)
    count = np.asarray(b["count"])
    use = (count >= min_count) & np.isfinite(err) & (err > 0) & (e > 0)
    if use.sum() < 3:
        return {"skipped": f"{int(use.sum())} bins with >= {min_count} entries and E > 0, "
                           "at least 3 needed"}
    try:
        return fit_resolution(e[use], s[use], err[use])
    except InputError as exc:
        return {"skipped": str(exc)}


def evaluate_regression_file(
    predictions_h5: PathLike,
    out_dir: PathLike,
    *,
    bins: int | Sequence[float] | None = None,
    seed: int = 0,
    plots: bool = True,
    embed_images: bool = False,
    min_bin_count: int = 20,
) -> dict[str, Any]:
    """Evaluate the predictions in a file: metrics.json, PNG plots and report.html in ``out_dir``.

    Arguments:
        predictions_h5: the predictions file (layout in the module docstring).
        out_dir: the output folder (created).
        bins: true-value bins: a number of equal-width bins or edges; default the file's
            ``bins`` dataset, else 10.
        seed: seed of the bootstrap uncertainties.
        plots: write the PNGs (RMSE and MAPE per bin, residuals, predicted vs true, resolution).
        embed_images: embed the PNGs in report.html (base64) instead of linking them.
        min_bin_count: bins with fewer entries are left out of the resolution fit.

    Returns:
        The metrics written to metrics.json: ``{"file", "quantity", "unit", "n",
        "methods": {name: regression_metrics(...) + {"resolution_fit": fit or {"skipped"}}},
        "plots": [file names], "report": "report.html"}``.

    Raises:
        InputError: an unreadable or malformed predictions file (named with the dataset),
            bad bins.
        OutputError: an output folder that cannot be written, a disk that became full.
    """
    from showerformer._paths import check_output_dir
    from showerformer.evaluation import report as report_mod

    out = check_output_dir(out_dir, option="--out")
    data = read_predictions(predictions_h5)
    chosen = bins if bins is not None else (data["bins"] if data["bins"] is not None else 10)
    true, preds, names = data["true"], data["pred"], data["methods"]
    methods: dict[str, Any] = {}
    for name, pred in zip(names, preds, strict=True):
        m = regression_metrics(true, pred, bins=chosen, seed=seed)
        m["resolution_fit"] = _resolution_fit_or_reason(m, min_bin_count)
        methods[name] = m
    result: dict[str, Any] = {
        "format": "showerformer-regression-evaluation",
        "file": str(predictions_h5),
        "quantity": data["quantity"],
        "unit": data["unit"],
        "n": len(true),
        "methods": methods,
        "plots": [],
    }
    result["report"] = "report.html"
    try:  # a full disk becomes one line; earlier files are replaced atomically or kept
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            result["plots"] = [p.name for p in _regression_plots(result, true, preds, names,
                                                                 out)]
        if data["analysis"] is not None:
            result["analysis"] = _analysis(data["analysis"], true, result, out, plots=plots,
                                           seed=seed)
        report_mod.write_json(out / "metrics.json", result)
        report_mod.regression_report(result, out, embed_images=embed_images)
    except OSError as exc:
        from showerformer._paths import disk_full_error

        err = disk_full_error(exc, out)
        if err is None or isinstance(exc, OutputError):
            raise
        raise err from exc
    return report_mod.json_clean(result)


def _regression_plots(result: Mapping[str, Any], true: np.ndarray, preds: np.ndarray,
                      names: Sequence[str], out: Path) -> list[Path]:
    from showerformer.evaluation import plots as P

    q, unit = result["quantity"], result["unit"]
    u = f" [{unit}]" if unit else ""
    methods = result["methods"]
    first = methods[names[0]]["bins"]
    edges = first["edges"]
    per = lambda key: [methods[n]["bins"][key] for n in names]  # noqa: E731
    paths = [
        P.plot_binned_metric(edges, per("rmse"), out / "rmse_per_bin.png",
                             ylabel=f"RMSE{u}", xlabel=f"true {q}{u}", labels=names,
                             title=f"RMSE per {q} bin"),
        P.plot_binned_metric(edges, per("mape"), out / "mape_per_bin.png",
                             ylabel="MAPE [%]", xlabel=f"true {q}{u}", labels=names,
                             title=f"MAPE per {q} bin"),
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = {n: np.where(true != 0, (p - true) / np.where(true != 0, true, 1.0), np.nan)
               for n, p in zip(names, preds, strict=True)}
    paths.append(P.plot_residuals(rel, out / "residuals.png",
                                  xlabel=f"(predicted - true) / true {q}",
                                  sigma68={n: methods[n]["rel_sigma68"] for n in names},
                                  title="relative residuals"))
    paths.append(P.plot_pred_vs_true(true, preds, out / "pred_vs_true.png", labels=names,
                                     quantity=q, unit=unit))
    fits = [methods[n]["resolution_fit"] for n in names]
    paths.append(P.plot_resolution(first["mean_true"], per("rel_sigma68"),
                                   per("rel_sigma68_err"), out / "resolution.png",
                                   labels=names,
                                   fits=[f if "a" in f else None for f in fits],
                                   quantity=_SYMBOLS.get(q, q), unit=unit))
    return paths


def _analysis(analysis: Mapping[str, Any], true: np.ndarray, result: dict[str, Any], out: Path,
              *, plots: bool, seed: int) -> dict[str, Any]:
    """The seed's analyses of a network's internals: PCA of the final CLS token coloured by the
    true value, and the stage-2 attention (block x scale) averaged over the events."""
    from showerformer.evaluation import plots as P

    q, unit = result["quantity"], result["unit"]
    u = f" [{unit}]" if unit else ""
    method = analysis["method"]
    summary: dict[str, Any] = {"method": method}
    cls = analysis.get("cls")
    if cls is not None:
        if plots:
            path, ratio = P.plot_embedding_pca(
                cls, true, out / "cls_pca.png", label=f"true {q}{u}", seed=seed,
                title=f"{method}: final CLS token")
            result["plots"].append(path.name)
        else:
            from sklearn.decomposition import PCA

            ratio = [float(r) for r in PCA(n_components=2).fit(cls).explained_variance_ratio_]
        pc1 = _pca_first_component(cls)
        summary["cls_pca"] = {"explained_variance_ratio": ratio,
                              "pc1_spearman_with_true": _spearman(pc1, true)}
    att = analysis.get("cross_scale_attention")
    if att is not None:
        mean = att.mean(axis=0)  # (nB, 1 + S)
        scales = analysis.get("scales") or ["query", *(f"scale {s}" for s in
                                                       range(att.shape[2] - 1))]
        summary["cross_scale_attention"] = {"keys": scales, "mean": mean.tolist(),
                                            "mean_over_blocks": mean.mean(axis=0).tolist()}
        if plots:
            path = P.plot_attention_matrix(
                mean, out / "cross_scale_attention.png",
                row_labels=[f"block {b}" for b in range(mean.shape[0])], column_labels=scales,
                xlabel="key (the query itself, then each scale's CLS token)",
                ylabel="block query", title=f"{method}: cross-scale attention, "
                                            f"mean of {len(att):,} events")
            result["plots"].append(path.name)
    return summary


def _pca_first_component(x: np.ndarray) -> np.ndarray:
    """Projection of the rows of ``x`` on their first principal axis (sign: largest loading
    positive)."""
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    v = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])
    return xc @ v


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
