"""Benchmark of the full evaluation at CaloChallenge size: time and peak memory per stage.

Runs ``showerformer evaluate`` (all three classifier tests with the default CPU settings,
FPD/KPD, histograms, plots, report) in a fresh process on a reference and a generated sample,
and prints the time and the process's peak resident memory after each stage (from the
``timing_s`` and ``peak_rss_mib`` entries of metrics.json), the total wall time and peak RSS of
the process, and the CPU load average seen meanwhile (other work on the machine slows every
stage down).

Without ``--reference``/``--generated`` the samples come from the built-in simulator:
``showerformer simulate DATASET --n N --seed 1`` (reference) and ``--seed 2`` (generated), written
into ``--workdir`` once and reused.

Goals (2-core CPU): 100k vs 100k ds2 showers within 20 minutes and 4 GB peak RSS; 100k vs 100k
ds3 within 8 GB.

Usage::

    python benchmarks/bench_evaluation_full.py --dataset ds2 [--n 100000] [--workdir /tmp/evalbench]
    python benchmarks/bench_evaluation_full.py --reference REF.h5 --generated GEN.h5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["main"]


def _simulate(dataset: str, n: int, seed: int, path: Path) -> Path:
    if path.is_file():
        return path
    print(f"simulating {n:,} {dataset} showers (seed {seed}) into {path}", flush=True)
    subprocess.run([sys.executable, "-m", "showerformer", "simulate", dataset, "--n", str(n),
                    "--seed", str(seed), "--out", str(path)], check=True)
    return path


class _LoadSampler:
    """Samples the 1-minute load average every ``every`` seconds in a thread."""

    def __init__(self, every: float = 15.0) -> None:
        self.every, self.values = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.values.append(os.getloadavg()[0])

    def __enter__(self) -> _LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.values.append(os.getloadavg()[0])


def main(argv: list[str] | None = None) -> None:
    """Simulate (or take) the samples, evaluate in a child process, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ds2", help="simulator preset (ds2, ds3)")
    ap.add_argument("--n", type=int, default=100_000, help="showers per simulated sample")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/evalbench"),
                    help="folder of the simulated samples and of the evaluation output")
    ap.add_argument("--reference", type=Path, help="reference file instead of simulating")
    ap.add_argument("--generated", type=Path, help="generated file instead of simulating")
    ap.add_argument("--out", type=Path, help="evaluation folder (default WORKDIR/eval_DATASET)")
    ap.add_argument("--classifier", default="cpu", help="cpu, full or none")
    ap.add_argument("--extra", default="", help="more options for showerformer evaluate")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    n_tag = f"{args.n // 1000}k" if args.n % 1000 == 0 else str(args.n)
    ref = args.reference or _simulate(args.dataset, args.n, 1,
                                      args.workdir / f"{args.dataset}_{n_tag}_ref.h5")
    gen = args.generated or _simulate(args.dataset, args.n, 2,
                                      args.workdir / f"{args.dataset}_{n_tag}_gen.h5")
    out = args.out or args.workdir / f"eval_{args.dataset}"
    cmd = [sys.executable, "-m", "showerformer", "evaluate", "--reference", str(ref),
           "--generated", str(gen), "--out", str(out), "--classifier", args.classifier,
           "--replace", *args.extra.split()]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    with _LoadSampler() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=dict(os.environ, COLUMNS="120"))
    wall = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        raise SystemExit(proc.returncode)
    metrics = json.loads((out / "metrics.json").read_text())
    timing, memory = metrics["timing_s"], metrics.get("peak_rss_mib", {})
    inputs = metrics["inputs"]
    print(f"\n{inputs['geometry']}: {inputs['reference']['n_showers']:,} vs "
          f"{inputs['generated']['n_showers']:,} showers, classifier {args.classifier}, "
          f"torch threads {_threads()}")
    print(f"{'stage':24} {'seconds':>9} {'peak RSS after (GiB)':>21}")
    for stage, seconds in timing.items():
        if stage == "total":
            continue
        mib = memory.get(stage.split("_")[0] if stage.startswith("classifier_") else stage)
        shown = f"{mib / 1024:21.2f}" if mib is not None and not stage.startswith(
            "classifier_") else f"{'':21}"
        print(f"{stage:24} {seconds:9.1f} {shown}")
    print(f"{'total (in the process)':24} {timing.get('total', float('nan')):9.1f}")
    print(f"{'wall (with start-up)':24} {wall:9.1f} {peak_gib:21.2f}")
    print(f"load average (1 min) during the run: min {min(load.values):.2f}, mean "
          f"{sum(load.values) / len(load.values):.2f}, max {max(load.values):.2f} "
          f"({len(load.values)} samples, {os.cpu_count()} CPUs)")
    cls = metrics.get("classifier", {})
    for kind in ("low", "low_normed", "high"):
        r = cls.get(kind)
        if isinstance(r, dict) and "auc_mean" in r:
            print(f"classifier {kind:10} AUC {r['auc_mean']:.4f} ± {r['auc_std']:.4f}, "
                  f"epochs run {r.get('epochs_run')}, best {r.get('best_epochs')}")
    for key in ("fpd", "kpd"):
        r = metrics.get(key, {})
        if "value_x1e3" in r:
            print(f"{key.upper()} x 10^3 {r['value_x1e3']:.4f} ± {r['error_x1e3']:.4f}")
    print("goals: ds2 100k vs 100k within 20 min and 4 GB; ds3 100k vs 100k within 8 GB")


def _threads() -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "n/a"
    return str(torch.get_num_threads())


if __name__ == "__main__":
    main()
