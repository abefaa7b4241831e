"""``showerformer benchmark point-flow``: train, sample and evaluate a point-cloud generator.

For each dataset (the built-in ds2-like electrons, the multi-particle Fe/scintillator set):
simulate a training and an independent held-out file; time a few training steps and set the
number of steps that fits the stated time budget; train the configured family (point-flow by
default: PanShower + PointCountFM; ``--config`` picks MDMA or score diffusion) with the shared
engine; generate as many showers as the held-out set has, with the same incident particles;
compare them with the evaluation suite (classifier AUCs, FPD, KPD, separation powers; per
particle type for the multi-particle set). Then time sampling at the requested batch sizes
(ms/shower, peak memory) and compare the cost of layer-window and full attention.

References:
    Buss et al., "PanShower" (seed document 004); CaloChallenge evaluation, arXiv:2410.21611.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from showerformer._atomic import atomic_path
from showerformer.errors import InputError

__all__ = ["DATASET_CONFIGS", "measure_sampling", "run_point_flow_benchmark"]

DATASET_CONFIGS = {"ds2": "point_flow_ds2", "multi": "point_flow_multi"}
"""Default run config (in ``configs/``) of each benchmark dataset."""

PathLike = str | os.PathLike[str]


def _peak_rss_reset() -> bool:
    """Reset the process's peak resident memory (Linux ``clear_refs``); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status_gib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _peak_rss_gib() -> float:
    peak = _proc_status_gib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure_sampling(
    model: Any,
    conditions: Any,
    batch_sizes: Sequence[int] = (1, 100),
    *,
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    max_chunk: int = 1000,
    repeats_at_1: int = 5,
) -> list[dict[str, Any]]:
    """Sampling time per shower (count model + shower model + inverse preprocessing).

    Arguments:
        model: a generator from :func:`~showerformer.generation.load_generator`.
        conditions: incident particles to draw from (cycled when too few).
        batch_sizes: showers per request.
        seed: noise seed.
        steps, sampler: ODE integration (default midpoint, 16 steps).
        max_chunk: showers per network call at most (bounds memory; a request of 10,000 on a
            CPU is processed in chunks of this size, which the row states).
        repeats_at_1: requests timed at batch size 1.

    Returns:
        Rows with ``batch``, ``chunk``, ``ms_per_shower``, ``ms_per_shower_voxelized``
        (generation and voxelization into the geometry's cells; None without a geometry),
        ``peak_memory_gib`` (CUDA allocator
        peak on GPUs, process peak RSS on CPUs), ``baseline_memory_gib`` (the same measure just
        before the request: the request needed the difference), ``memory_kind``,
        ``mean_points``.
    """
    from showerformer.generation import generate

    device = next(model.parameters()).device
    rows = []
    n_cond = len(conditions)
    # warm up (allocations, FlexAttention compilation on GPUs)
    generate(model, conditions[np.arange(min(4, n_cond))], seed=seed, steps=steps,
             sampler=sampler)
    for b in batch_sizes:
        idx = np.arange(b) % n_cond
        cond = conditions[idx]
        chunk = min(b, max_chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset = _peak_rss_reset()
        # the process's memory before the request (data and freed-but-kept training memory)
        baseline = (torch.cuda.memory_allocated() / 1024**3 if device.type == "cuda"
                    else _proc_status_gib("VmRSS"))
        reps = repeats_at_1 if b == 1 else 1
        t0 = time.perf_counter()
        for r in range(reps):
            showers = generate(model, cond, seed=seed + r, steps=steps, sampler=sampler,
                               batch_size=chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak, kind = torch.cuda.max_memory_allocated() / 1024**3, "cuda allocator peak"
        else:
            # the kernel updates VmHWM lazily: it may lag behind the RSS read just before
            peak = max(_peak_rss_gib(), baseline or 0.0)
            kind = "process peak RSS" if reset else "process peak RSS (since start)"
        seconds = (time.perf_counter() - t0) / reps
        voxel_s = None
        if showers.geometry is not None:  # the seed reports both: generation, + voxelization
            t1 = time.perf_counter()
            showers.to_voxels(outside="drop")
            voxel_s = time.perf_counter() - t1
        rows.append({"batch": int(b), "chunk": int(chunk), "ms_per_shower": 1e3 * seconds / b,
                     "ms_per_shower_voxelized": (None if voxel_s is None
                                                 else 1e3 * (seconds + voxel_s) / b),
                     "peak_memory_gib": peak, "memory_kind": kind,
                     "baseline_memory_gib": baseline,
                     "mean_points": float(showers.n_points.mean()), "device": str(device)})
    return rows


def _simulate(path: Path, dataset: str, n: int, seed: int) -> Path:
    from showerformer.simulation import simulate_to_file

    if not path.exists():
        simulate_to_file(path, dataset, n=n, seed=seed, progress=False)
    return path


def _batch_shapes(sizes: np.ndarray, batch_size: int, bucket_batches: int, pad_multiple: int,
                  seed: int, min_batches: int = 1) -> np.ndarray:
    """``(showers, padded points)`` of the trainer's batches, in its order: every batch of
    epoch 0, and of the following epochs until there are ``min_batches``.  # (nb, 2)"""
    from showerformer.data.batching import BucketBatchSampler

    pad = max(1, pad_multiple)
    shapes: list[tuple[int, int]] = []
    epoch = 0
    while epoch == 0 or len(shapes) < min_batches:
        sampler = BucketBatchSampler(sizes, batch_size, seed=seed, epoch=epoch,
                                     bucket_batches=bucket_batches)
        batches = sampler.batches()
        if not batches:
            raise InputError(f"{len(sizes)} showers", key="batch_size",
                             expected=f"at least batch_size={batch_size} training showers")
        shapes += [(len(b), math.ceil(int(sizes[b].max()) / pad) * pad) for b in batches]
        epoch += 1
    return np.array(shapes, dtype=np.float64)


def _step_cost_features(shapes: np.ndarray) -> np.ndarray:
    """Regressors of a step's time: a constant, the padded points and their square per shower
    (the projections and MLPs scale with B*P, the attention within the layer window with
    about B*P^2).  # (nb, 3)"""
    b, p = shapes[:, 0], shapes[:, 1]
    return np.stack([np.ones_like(b), b * p / 1e4, b * p * p / 1e8], axis=1)


def _probe_step_seconds(data: Path, run: Mapping[str, Any], out: Path, steps: int,
                        device: str | None) -> dict[str, float]:
    """Predicted mean seconds per training step of ``run``, from a short timed run.

    Showers differ in size by orders of magnitude (1 GeV - 1 TeV), so the mean of a few steps
    says little about an epoch. The probe's step times (which include fetching and collating
    the batch) are fitted with a non-negative cost model in the batch shape, which is then
    averaged over every batch of the real run's epoch.

    Returns:
        ``predicted`` (the model's mean over the real run's batches), ``probe_mean`` (the
        probe's measured mean), ``probe_steps``.
    """
    from scipy.optimize import nnls

    from showerformer.data.batching import split_indices
    from showerformer.training.datasets import point_datasets
    from showerformer.training.run import train

    raw = {k: dict(v) for k, v in run.items()}
    raw["train"].update(max_steps=steps, epochs=None, log_every=1, checkpoint_every=None,
                        tensorboard=False, warmup_steps=0)
    raw["data"]["val_fraction"] = 0.0  # no validation pass in the timing run
    res = train(raw, data, out, max_steps=steps, device=device, progress=False,
                overwrite=True)
    t, d = raw["train"], raw["data"]
    batch, seed = int(t.get("batch_size", 32)), int(t.get("seed", 0))
    bucket, pad = int(d.get("bucket_batches", 32)), int(d.get("pad_multiple", 1))
    rows = [r for r in res.history if r.get("samples_per_s")]
    seconds = np.array([batch / r["samples_per_s"] for r in rows])
    threshold = None if d.get("threshold") is None else float(d["threshold"])
    full, _ = point_datasets(data, val_fraction=0.0, seed=seed, threshold=threshold)
    sizes = full.sizes
    probe_shapes = _batch_shapes(sizes, batch, bucket, pad, seed, len(seconds))[: len(seconds)]
    val_fraction = float(run["data"].get("val_fraction") or 0.0)
    if val_fraction:
        train_idx, _ = split_indices(len(sizes), val_fraction, seed)
        sizes = sizes[train_idx]
    run_shapes = _batch_shapes(sizes, batch, bucket, pad, seed)
    # the first step includes one-off costs (allocations, thread pools)
    x, y = _step_cost_features(probe_shapes)[1:], seconds[1:]
    predicted = float(np.mean(y))
    if len(y) >= 6:
        coef, _ = nnls(x, y)
        if np.any(coef > 0):
            predicted = float(np.mean(_step_cost_features(run_shapes) @ coef))
    return {"predicted": predicted, "probe_mean": float(np.mean(y)), "probe_steps": len(seconds)}


def _evaluate(reference: Any, generated: Any, out: Path, classifier: str, seed: int,
              kinds: Sequence[str], plots: bool) -> dict[str, Any]:
    from showerformer.evaluation.pipeline import evaluate_files

    m = evaluate_files(reference, generated, out_dir=out, classifier=classifier, seed=seed,
                       kinds=kinds, plots=plots, n_single_showers=2)
    cls = m.get("classifier", {})
    row: dict[str, Any] = {"report": m.get("report")}
    for kind in ("low", "low_normed", "high"):
        r = cls.get(kind) if isinstance(cls, Mapping) else None
        r = r if isinstance(r, Mapping) else {}
        row[f"auc_{kind}"] = r.get("auc_mean")
        row[f"auc_{kind}_err"] = r.get("auc_std")
    for key in ("fpd", "kpd"):
        d = m.get(key) or {}
        row[f"{key}_x1e3"] = d.get("value_x1e3")
        row[f"{key}_x1e3_err"] = d.get("error_x1e3")
    sp = m.get("separation_power") or {}
    row["separation_mean"] = sp.get("mean")
    return row


def run_point_flow_benchmark(
    out_dir: PathLike,
    *,
    datasets: Sequence[str] = ("ds2", "multi"),
    n_train: int = 20_000,
    n_test: int = 2_000,
    budget_minutes: float = 120.0,
    configs: Mapping[str, PathLike] | None = None,
    device: str | None = None,
    seed: int = 0,
    speed_batches: Sequence[int] | None = None,
    attention_points: Sequence[int] = (1000, 4000, 16000),
    classifier: str = "cpu",
    steps: int | None = None,
    sampler: str | None = None,
    plots: bool = True,
    overrides: Sequence[str] = (),
    resume: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the point-flow benchmark; writes ``summary.json`` into ``out_dir`` and returns it.

    Arguments:
        out_dir: folder for data, runs, generated samples, evaluation reports.
        datasets: ``"ds2"`` (ds2-like electrons, voxels dequantized to points) and/or
            ``"multi"`` (e-, gamma, pi+, proton point clouds).
        n_train, n_test: showers simulated for training and for the held-out comparison.
        budget_minutes: training wall time per dataset; the number of steps is set from a
            timed probe (the cosine schedule ends at the budget), capped by the config.
        configs: run config (path or name in ``configs/``) per dataset; default
            :data:`DATASET_CONFIGS`.
        device: ``auto``, ``cpu`` or ``cuda`` (default: the configs').
        seed: seed of data, training and sampling.
        speed_batches: batch sizes of the speed measurement (default 1, 100 and, on a GPU,
            10,000).
        attention_points: point counts of the attention-cost comparison (empty: skip).
        classifier: evaluation classifier mode (``cpu``, ``full``, ``none``).
        steps, sampler: ODE integration for sampling.
        plots: write the evaluation plots.
        overrides: ``KEY=VALUE`` changes of every dataset's run config (``--set``, e.g.
            ``model.sde=vp``).
        resume: continue an interrupted benchmark in ``out_dir``: data files are reused, a
            dataset's training continues from its last checkpoint to the planned number of
            steps (the probe is not repeated), a finished training is not repeated. The
            training time is recorded only when every step ran under the benchmark with
            ``resume`` or in one go (``train_seconds`` is then the sum of its parts).
        say: progress messages.
    """
    from showerformer.benchmark.regression import default_config_path
    from showerformer.generation import generate, load_generator
    from showerformer.io import read_showers
    from showerformer.training.config import load_yaml
    from showerformer.training.run import train

    say = say or (lambda _m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [d for d in datasets if d not in DATASET_CONFIGS]
    if unknown:
        raise InputError(f"dataset {unknown[0]!r}", key="datasets",
                         expected=" or ".join(DATASET_CONFIGS))
    if not budget_minutes > 0:
        raise InputError(f"budget_minutes={budget_minutes}", key="budget_minutes",
                         expected="a positive number of minutes")
    configs = dict(configs or {})
    summary: dict[str, Any] = {"datasets": {}, "budget_minutes": budget_minutes,
                               "overrides": list(overrides),
                               "n_train": n_train, "n_test": n_test, "seed": seed,
                               "torch_threads": torch.get_num_threads()}
    for name in datasets:
        cfg_path = default_config_path(str(configs.get(name, DATASET_CONFIGS[name])))
        run = load_yaml(cfg_path)
        if overrides:
            from showerformer.training.config import apply_overrides

            run = apply_overrides(run, overrides)
        run = {k: dict(run.get(k) or {}) for k in ("model", "train", "data")}
        train_file = _simulate(out / f"{name}_train.h5", name, n_train, seed)
        test_file = _simulate(out / f"{name}_test.h5", name, n_test, seed + 1)
        run_dir = out / f"{name}_run"
        plan_file = run_dir / "benchmark_plan.json"
        plan = _read_plan(plan_file, run_dir) if resume else None
        if plan is None:
            say(f"{name}: timing training steps")
            probe = _probe_step_seconds(train_file, run, out / f"{name}_probe", 24, device)
            step_s = probe["predicted"]
            budget_steps = max(1, int(budget_minutes * 60 / step_s))
            cap = run["train"].get("max_steps")
            total = min(budget_steps, int(cap)) if cap else budget_steps
            plan = {"max_steps": total, "step_seconds_predicted": step_s,
                    "step_seconds_probe_mean": probe["probe_mean"],
                    "warmup_steps": min(int(run["train"].get("warmup_steps", 0)), total // 10),
                    "train_seconds": 0.0}
            continuing = False
        else:
            total, step_s = int(plan["max_steps"]), plan.get("step_seconds_predicted")
            continuing = True
        run["train"]["max_steps"] = total
        run["train"]["epochs"] = None
        run["train"]["warmup_steps"] = int(plan["warmup_steps"])
        say(f"{name}: {'continuing' if continuing else 'training'} {total:,} steps"
            + (f" (~{step_s:.2f} s each)" if step_s else "")
            + f" in a {budget_minutes:g}-minute budget")
        prior_s = plan.get("train_seconds")
        run_dir.mkdir(parents=True, exist_ok=True)
        _write(plan_file, {**plan, "train_seconds": None})  # unknown if interrupted
        t0 = time.perf_counter()
        res = train(run, train_file, run_dir, device=device, progress=True,
                    overwrite=not continuing, resume=continuing)
        elapsed = time.perf_counter() - t0
        train_s = None if prior_s is None else float(prior_s) + elapsed
        plan["train_seconds"] = train_s
        _write(plan_file, plan)
        model, _ = load_generator(res.out_dir, device=device or "auto")
        params = model.n_parameters()
        test = read_showers(test_file)
        cond = test.conditions
        say(f"{name}: generating {len(cond):,} showers")
        t0 = time.perf_counter()
        gen = generate(model, cond, seed=seed + 7, steps=steps, sampler=sampler,
                       progress=True)
        gen_s = time.perf_counter() - t0
        row: dict[str, Any] = {
            "config": str(cfg_path), "family": str(getattr(model, "family", "?")),
            "steps": res.step, "epochs": res.epoch,
            "train_seconds": train_s, "step_seconds_predicted": step_s,
            "step_seconds_probe_mean": plan.get("step_seconds_probe_mean"),
            "step_seconds_actual": None if train_s is None else train_s / max(res.step, 1),
            "best_val_loss": res.best_val_loss, "parameters": params,
            "showers_seen": res.step * int(run["train"].get("batch_size", 32)),
            "generate_seconds": gen_s, "generate_ms_per_shower": 1e3 * gen_s / len(cond),
            "mean_points_generated": float(gen.n_points.mean()),
            "device": str(next(model.parameters()).device),
        }
        say(f"{name}: evaluating against the held-out showers")
        row["outside"] = gen.describe_outside()  # generated points in no cell: left out
        if row["outside"]:
            say(f"{name}: {row['outside']} fell outside the cells and are left out")
        if name == "ds2":
            gen_v = gen.to_voxels(outside="drop")
            row["evaluation"] = {"e-": _evaluate(test, gen_v, out / f"{name}_eval", classifier,
                                                 seed, ("low", "low_normed", "high"), plots)}
            from showerformer.benchmark.samplers import energy_dependence

            row["energy_dependence"] = energy_dependence(test, gen_v)
        else:
            row["evaluation"] = {}
            from showerformer.incident import PARTICLES

            names = {p.pdg: n for n, p in PARTICLES.items()}
            for pdg in np.unique(cond.pdg):
                sel = np.flatnonzero(cond.pdg == pdg)
                label = names.get(int(pdg), str(pdg))
                row["evaluation"][label] = _evaluate(
                    test[sel].to_voxels(), gen[sel].to_voxels(outside="drop"),
                    out / f"{name}_eval_{label}", classifier, seed, ("high",), plots)
        if name == "ds2" or len(datasets) == 1:
            batches = list(speed_batches) if speed_batches else (
                [1, 100, 10_000] if next(model.parameters()).device.type == "cuda" else [1, 100])
            say(f"{name}: sampling speed at batch sizes {batches}")
            row["speed"] = measure_sampling(model, cond, batches, seed=seed,
                                            steps=steps, sampler=sampler)
        summary["datasets"][name] = row
        _write(out / "summary.json", summary)
    if attention_points:
        from showerformer.benchmark.attention import attention_cost

        dev = "cuda" if (device or "auto") != "cpu" and torch.cuda.is_available() else "cpu"
        say(f"attention cost at {list(attention_points)} points ({dev})")
        summary["attention"] = attention_cost(points=tuple(attention_points), device=dev)
    _write(out / "summary.json", summary)
    return summary


def _read_plan(plan_file: Path, run_dir: Path) -> dict[str, Any] | None:
    """The training plan of an earlier benchmark run in ``run_dir`` (None: start afresh).

    A run folder without a plan (a run from before plans were kept) is continued to the
    ``max_steps`` its ``run_config.json`` records; its training time is then unknown."""
    if plan_file.is_file():
        try:
            plan = json.loads(plan_file.read_text())
            int(plan["max_steps"]), int(plan["warmup_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{plan_file}", key="max_steps",
                             expected="the benchmark's JSON training plan; delete the "
                                      "folder to start afresh") from None
        return dict(plan)
    cfg = run_dir / "run_config.json"
    if not cfg.is_file():
        return None
    try:
        t = json.loads(cfg.read_text())["train"]
        return {"max_steps": int(t["max_steps"]), "warmup_steps": int(t.get("warmup_steps") or 0),
                "step_seconds_predicted": None, "step_seconds_probe_mean": None,
                "train_seconds": None}
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{cfg}", key="train.max_steps",
                         expected="a run configuration with an integer max_steps") from None


def _write(path: Path, data: Mapping[str, Any]) -> None:
    def default(v: Any) -> Any:
        if isinstance(v, np.integer | np.floating):
            return v.item()
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, float) and not math.isfinite(v):
            return None
        raise TypeError(type(v).__name__)

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=default) + "\n")
