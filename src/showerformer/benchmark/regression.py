"""``showerformer benchmark regression``: ParticleCNNTransformer against classical baselines on
one simulated proton dataset and one held-out test set.

Steps: simulate (or take) a training and an independent test file of the built-in 64^3
Fe/scintillator protons (momentum 1-20 GeV); fit the calibrated energy sum, the per-layer linear
weights and the gradient-boosted trees (:mod:`showerformer.baselines`); train the regressor of a
run config with the shared training engine; predict the test set with every method; write one
predictions file and the regression report (:func:`evaluate_regression_file`); return the table:
MAE, RMSE, sigma68, the fitted resolution terms and training / inference events per second.

References:
    Seed 000 (ParticleCNNTransformer): MAE 1.085 GeV and RMSE 1.843 GeV on its own detector.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from showerformer._atomic import atomic_path
from showerformer.errors import InputError
from showerformer.io._h5file import create_h5

__all__ = ["SEED_REFERENCE", "default_config_path", "run_regression_benchmark"]

SEED_REFERENCE = {"mae": 1.085, "rmse": 1.843}
"""The seed document's ParticleCNNTransformer result in GeV (a different detector)."""

PathLike = str | os.PathLike[str]


def default_config_path(name: str) -> Path:
    """A config of the repository's ``configs/`` folder by name (``"regressor_64"``) or a path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise InputError("no such file", path=p, expected="a YAML run config")
        return p
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root / "configs" / f"{name}.yaml"
        if candidate.exists():
            return candidate
    raise InputError(f"unknown config {name!r}", key="config",
                     expected="a YAML path or the name of a file in configs/ "
                     "(regressor_64, regressor_32_cpu)")


def _simulate(path: Path, dataset: str, n: int, seed: int, progress: bool) -> Path:
    from showerformer.simulation import simulate_to_file

    if not path.exists():
        simulate_to_file(path, dataset, n=n, seed=seed, progress=progress)
    return path


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_regression_benchmark(
    out_dir: PathLike,
    *,
    train: PathLike | None = None,
    test: PathLike | None = None,
    dataset: str = "sandwich64",
    n_train: int = 50_000,
    n_test: int = 10_000,
    seed: int = 0,
    config: PathLike | Mapping[str, Any] = "regressor_64",
    overrides: Sequence[str] = (),
    max_steps: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    baselines: Sequence[str] | None = None,
    model: bool = True,
    bins: int = 10,
    plots: bool = True,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    budget_minutes: float | None = None,
    curve_points: int = 0,
    curve_events: int = 1000,
) -> dict[str, Any]:
    """Run the regression benchmark and write ``predictions.h5``, ``report/`` and
    ``benchmark.json`` into ``out_dir``.

    Arguments:
        out_dir: the output folder (created).
        train, test: sparse voxel files; simulated into ``out_dir`` when omitted (the test file
            with a different seed, so the two are independent).
        dataset: simulator preset for the simulated files (``sandwich64``; ``sandwich32`` for
            a quick CPU run).
        n_train, n_test: events to simulate.
        seed: seed of the simulation (train: ``seed``, test: ``seed + 1``) and the baselines.
        config: run config of the regressor (YAML path, a name in ``configs/``, or a mapping).
        overrides: ``KEY=VALUE`` changes of the config (``--set``, e.g.
            ``model.energy_scale_mev=30``).
        max_steps, epochs: override the config's training length.
        device: override the config's device.
        baselines: names of :data:`showerformer.baselines.BASELINES` (default all).
        model: train and evaluate the network (False: baselines only).
        bins: true-momentum bins of the per-bin metrics.
        plots: write the report's PNG plots.
        progress: progress bars.
        say: receives one line per step (default: nothing).
        budget_minutes: train the network for about this wall time: the number of steps comes
            from a timed probe of 8 steps (the cosine schedule then ends at the budget; capped
            by ``max_steps`` and the config's epochs).
        curve_points: keep this many evenly spaced checkpoints of the training and measure
            MAE and RMSE of each on the first ``curve_events`` test events, with the baselines
            on the same events, against the events seen (``learning_curve`` in the result,
            ``learning_curve.png`` in the report folder). 0: no curve.
        curve_events: test events of the learning curve.

    Returns:
        ``{"rows": [{"method", "mae", "rmse", "sigma68", "a", "b", "c", "train_events_per_s",
        "infer_events_per_s", ...}], "report": path, "predictions": path, "n_train", "n_test",
        ...}``, also written to ``benchmark.json``.
    """
    import h5py

    from showerformer.baselines import BASELINES, true_momentum
    from showerformer.evaluation.regression import evaluate_regression_file
    from showerformer.io.sparse import SparseVoxelFile

    note = say or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if curve_points < 0 or curve_events < 1:
        raise InputError(f"curve_points={curve_points}, curve_events={curve_events}",
                         key="curve_points" if curve_points < 0 else "curve_events",
                         expected="curve_points >= 0 and curve_events >= 1")
    names = list(BASELINES) if baselines is None else list(baselines)
    for name in names:
        if name not in BASELINES:
            raise InputError(f"unknown baseline {name!r}", key="baselines",
                             expected=f"some of {', '.join(BASELINES)}")
    if train is None:
        note(f"simulating {n_train:,} {dataset} training events")
        train = _simulate(out / f"{dataset}_train_seed{seed}_n{n_train}.h5", dataset, n_train,
                          seed, progress)
    if test is None:
        note(f"simulating {n_test:,} {dataset} test events")
        test = _simulate(out / f"{dataset}_test_seed{seed + 1}_n{n_test}.h5", dataset, n_test,
                         seed + 1, progress)
    train_file, test_file = SparseVoxelFile(train), SparseVoxelFile(test)
    if not train_file.geometry.same_cells(test_file.geometry):
        raise InputError(f"test geometry {test_file.geometry.name}", path=test, key="geometry",
                         expected=f"{train_file.geometry.name} as the training file")
    truth = true_momentum(test_file)  # (N,) GeV
    n_tr, n_te = len(train_file), len(test_file)
    preds: list[np.ndarray] = []
    methods: list[str] = []
    timing: dict[str, dict[str, Any]] = {}
    analysis: dict[str, np.ndarray] | None = None
    curve: dict[str, Any] | None = None
    analysis_method, net = "", None

    for name in names:
        note(f"fitting the {name} baseline on {n_tr:,} events")
        kwargs: dict[str, Any] = {"seed": seed} if name == "gradient-boosted-trees" else {}
        baseline = BASELINES[name](**kwargs)
        _, t_fit = _timed(lambda b=baseline: b.fit(train_file))
        pred, t_pred = _timed(lambda b=baseline: b.predict(test_file))
        suffix = "pkl" if name == "gradient-boosted-trees" else "json"
        baseline.save(out / "baselines" / f"{name}.{suffix}")
        preds.append(np.asarray(pred, dtype=np.float64))
        methods.append(name)
        timing[name] = {"train_seconds": t_fit, "train_events_per_s": n_tr / t_fit,
                        "infer_seconds": t_pred, "infer_events_per_s": n_te / t_pred,
                        "epochs": 1, "parameters": None}
    train_file = None  # free the hits before the network trains on its own copy

    if model:
        from showerformer.training.checkpoint import load_checkpoint
        from showerformer.training.config import load_yaml
        from showerformer.training.data import SparseVoxelDataset
        from showerformer.training.distributed import resolve_device
        from showerformer.training.regressor import predict_dataset, train_regressor

        if isinstance(config, Mapping):
            cfg: Any = dict(config)
            label = "the given config"
        else:
            path = default_config_path(str(config))
            cfg, label = (path, str(path)) if epochs is None else (load_yaml(path), str(path))
        if overrides:
            from showerformer.training.config import apply_overrides

            cfg = apply_overrides(load_yaml(cfg) if not isinstance(cfg, Mapping) else cfg,
                                  overrides)
            label += " with " + ", ".join(overrides)
        if epochs is not None:
            cfg = {**cfg, "train": {**dict(cfg.get("train") or {}), "epochs": int(epochs)}}
        budget: dict[str, Any] | None = None
        if budget_minutes is not None or curve_points:
            cfg = load_yaml(cfg) if not isinstance(cfg, Mapping) else dict(cfg)
            cfg = {k: dict(cfg.get(k) or {}) for k in ("model", "train", "data")}
        if budget_minutes is not None:
            note(f"timing the network's training steps for a {budget_minutes:g}-minute budget")
            max_steps, budget = _budget_steps(train, cfg, out / "model_probe", budget_minutes,
                                              max_steps, device)
            note(f"training {max_steps:,} steps (~{budget['step_seconds']:.2f} s each)")
        if curve_points:
            total = max_steps or cfg["train"].get("max_steps")
            if total:
                cfg["train"]["checkpoint_every"] = max(1, int(total) // int(curve_points))
            cfg["train"]["keep_checkpoints"] = int(curve_points) + 2
        run_dir = out / "model"
        note(f"training the network ({label})")
        result, t_train = _timed(lambda: train_regressor(
            train, cfg, run_dir, max_steps=max_steps, device=device, progress=progress,
            overwrite=True))
        dev = resolve_device(device or "auto")
        try:
            net, info = load_checkpoint(run_dir, device=dev, ema=True, which="best")
        except InputError:  # no validation, hence no best checkpoint
            net, info = load_checkpoint(run_dir, device=dev, ema=True, which="last")
        family = info.get("family", "network")
        run_cfg = json.loads((run_dir / "run_config.json").read_text())
        n_seen = int(result.step) * int(run_cfg["train"]["batch_size"])
        test_ds = SparseVoxelDataset(test, "momentum", 1e-3)
        note(f"predicting {n_te:,} test events with {family}")
        if hasattr(net, "analyse"):  # with the seed's analyses (a few small extra tensors)
            (pred, analysis), t_pred = _timed(lambda: predict_dataset(
                net, test_ds, batch_size=32, device=dev, analysis=True))
            analysis_method = family
        else:
            pred, t_pred = _timed(lambda: predict_dataset(net, test_ds, batch_size=32,
                                                          device=dev))
        preds.append(np.asarray(pred, dtype=np.float64))
        methods.append(family)
        if curve_points:
            note(f"learning curve: {curve_events:,} test events per checkpoint")
            baseline_preds = {m: p for m, p in zip(methods, preds, strict=True) if m != family}
            curve = _learning_curve(run_dir, test, curve_events, dev, run_cfg, truth,
                                    baseline_preds)
        timing[family] = {"budget": budget, "train_seconds": t_train,
                          "train_events_per_s": n_seen / t_train if n_seen else None,
                          "infer_seconds": t_pred, "infer_events_per_s": n_te / t_pred,
                          "steps": result.step, "epochs": result.epoch,
                          "events_seen": n_seen,
                          "parameters": sum(p.numel() for p in net.parameters()),
                          "best_val_loss": result.best_val_loss, "device": str(dev)}

    if not preds:
        raise InputError("nothing to compare", key="baselines",
                         expected="at least one baseline or the network")
    pred_path = out / "predictions.h5"
    with create_h5(pred_path) as (f, _):
        f["true"] = truth
        f["pred"] = np.stack(preds)  # (M, N)
        f["method"] = np.array(methods, dtype=h5py.string_dtype())
        f.attrs["quantity"] = "momentum"
        f.attrs["unit"] = "GeV"
        f.attrs["train"] = str(train)
        f.attrs["test"] = str(test)
        if analysis is not None:
            from showerformer.training.regressor import write_analysis

            write_analysis(f, analysis, method=analysis_method, model=net)
    note("evaluating")
    report = evaluate_regression_file(pred_path, out / "report", bins=bins, seed=seed,
                                      plots=plots)
    rows = []
    for name in methods:
        m = report["methods"][name]
        fit = m.get("resolution_fit") or {}
        rows.append({"method": name, "mae": m["mae"], "rmse": m["rmse"],
                     "sigma68": m["sigma68"], "mape": m["mape"], "bias": m["bias"],
                     "a": fit.get("a"), "b": fit.get("b"), "c": fit.get("c"),
                     "a_err": fit.get("a_err"), "b_err": fit.get("b_err"),
                     "c_err": fit.get("c_err"),
                     "bins": {k: m["bins"][k] for k in ("center", "count", "rmse", "mape")},
                     **timing[name]})
    if curve is not None and plots:
        _plot_learning_curve(curve, out / "report" / "learning_curve.png")
    summary = {"rows": rows, "n_train": n_tr, "n_test": n_te, "train": str(train),
               "test": str(test), "dataset": dataset, "seed": seed,
               "predictions": str(pred_path), "report": str(out / "report" / "report.html"),
               "seed_reference": SEED_REFERENCE, "learning_curve": curve}
    with atomic_path(out / "benchmark.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
    return summary


def _budget_steps(train: PathLike, cfg: dict[str, Any], probe_dir: Path, minutes: float,
                  cap: int | None, device: str | None) -> tuple[int, dict[str, Any]]:
    """Steps that fit ``minutes`` of training, from 8 timed steps of the same run config."""
    import shutil

    from showerformer.training.regressor import train_regressor

    if not minutes > 0:
        raise InputError(f"budget_minutes={minutes}", key="budget_minutes",
                         expected="a positive number of minutes")
    probe_steps = 8
    probe = {**cfg, "train": {**cfg["train"], "max_steps": probe_steps, "epochs": None,
                              "checkpoint_every": None, "val_every": None,
                              "early_stopping_patience": None}}
    t0 = time.perf_counter()
    train_regressor(train, probe, probe_dir, device=device, progress=False, overwrite=True)
    step_s = (time.perf_counter() - t0) / probe_steps
    shutil.rmtree(probe_dir, ignore_errors=True)
    steps = max(1, int(minutes * 60 / step_s))
    if cap:
        steps = min(steps, int(cap))
    return steps, {"minutes": minutes, "step_seconds": step_s, "steps": steps}


def _learning_curve(run_dir: Path, test: PathLike, n_events: int, dev: Any,
                    run_cfg: Mapping[str, Any], truth: np.ndarray,
                    baselines: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """MAE and RMSE of every kept checkpoint on the first ``n_events`` test events."""
    from showerformer.training.checkpoint import list_checkpoints, load_checkpoint
    from showerformer.training.data import SparseVoxelDataset
    from showerformer.training.regressor import predict_dataset

    ds = SparseVoxelDataset(test, "momentum", 1e-3)
    n = min(int(n_events), len(ds))
    ds = ds.subset(np.arange(n))
    true = truth[:n]
    batch = int(run_cfg["train"]["batch_size"])
    points = []
    for folder in list_checkpoints(run_dir / "checkpoints"):
        net, info = load_checkpoint(folder, device=dev, ema=True)
        pred = predict_dataset(net, ds, batch_size=32, device=dev)
        d = pred - true
        step = int(info.get("step", 0))
        points.append({"step": step, "events_seen": step * batch,
                       "mae": float(np.mean(np.abs(d))), "rmse": float(np.sqrt(np.mean(d * d)))})
    refs = {name: {"mae": float(np.mean(np.abs(p[:n] - true))),
                   "rmse": float(np.sqrt(np.mean((p[:n] - true) ** 2)))}
            for name, p in baselines.items()}
    return {"n_events": n, "points": points, "baselines": refs,
            "trend": _power_law_trend(points)}


def _power_law_trend(points: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Fit ``y = y_inf + b * n^-c`` (n = events seen) to MAE and to RMSE; None with fewer than
    four points or without convergence. Early in training the points often fix only the slope:
    ``asymptote_constrained`` is False when the fitted ``y_inf`` sits at its lower bound 0."""
    from scipy.optimize import curve_fit

    pts = [p for p in points if p["events_seen"] > 0]
    if len(pts) < 4:
        return None
    n = np.array([p["events_seen"] for p in pts], dtype=np.float64)
    out: dict[str, Any] = {}
    for key in ("mae", "rmse"):
        y = np.array([p[key] for p in pts], dtype=np.float64)

        def model(x: np.ndarray, y_inf: float, b: float, c: float) -> np.ndarray:
            return y_inf + b * (x / n[-1]) ** (-c)

        try:
            theta, _ = curve_fit(model, n, y, p0=(0.8 * y[-1], 0.2 * y[-1], 0.5),
                                 bounds=([0.0, 0.0, 0.01], [np.inf, np.inf, 3.0]), maxfev=20000)
        except (RuntimeError, ValueError):
            return None
        out[key] = {"asymptote": float(theta[0]), "b": float(theta[1]),
                    "exponent": float(theta[2]),
                    # an asymptote at its bound means the points do not constrain it
                    "asymptote_constrained": bool(theta[0] > 1e-3 * y.min()),
                    "at_2x_events": float(model(np.array(2 * n[-1]), *theta))}
    return out


def _plot_learning_curve(curve: Mapping[str, Any], path: Path) -> Path:
    """MAE and RMSE of the network against events seen, baselines as horizontal lines."""
    from showerformer.evaluation import plots as P

    return P.plot_learning_curve(curve, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
