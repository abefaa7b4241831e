"""Speed and memory of the built-in simulator on one core: showers per second and peak memory.

Runs single-threaded (OMP/MKL/OpenBLAS threads = 1) and prints a table for

- ds2-like electrons, log-uniform 1 GeV-1 TeV (goal: >= 1,000 showers/s per core),
- 64^3 Fe/scintillator protons, momentum 1-20 GeV,
- optionally (``--write``) the same streamed to HDF5 files, showing bounded memory.

Usage::

    python benchmarks/bench_simulation.py [--n-ds2 20000] [--n-protons 2000] [--write]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402


def _rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports kB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _generate(dataset: str, n: int, seed: int = 1) -> tuple[float, float]:
    """(showers per second, tracemalloc peak MB) of generating n showers without keeping them."""
    from showerformer.simulation import Simulator

    sim = Simulator(dataset, seed=seed)
    next(sim.run(min(n, sim.block_size)))  # warm-up (imports, caches)
    tracemalloc.start()
    t0 = time.perf_counter()
    count = 0
    for chunk in sim.run(n):
        count += len(chunk)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return count / dt, peak / 2**20


def _write(dataset: str, n: int, folder: Path, seed: int = 1) -> float:
    from showerformer.simulation import simulate_to_file

    s = simulate_to_file(folder / f"{dataset}.h5", dataset, n=n, seed=seed, progress=False)
    return s["showers_per_second"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ds2", type=int, default=20_000)
    parser.add_argument("--n-protons", type=int, default=2_000)
    parser.add_argument("--write", action="store_true", help="also stream to HDF5 files")
    args = parser.parse_args(argv)

    import numpy as np

    print(f"numpy {np.__version__}, single-threaded, cpu count {os.cpu_count()}")
    rows = []
    for label, dataset, n in (("ds2 e- log-uniform 1 GeV-1 TeV (6480 cells)", "ds2", args.n_ds2),
                              ("64^3 Fe/scint protons p 1-20 GeV", "sandwich64", args.n_protons)):
        rate, peak = _generate(dataset, n)
        rows.append((label, n, rate, peak))
    if args.write:
        with tempfile.TemporaryDirectory() as tmp:
            for label, dataset, n in (("ds2 -> CaloChallenge HDF5 (gzip)", "ds2", args.n_ds2),
                                      ("sandwich64 -> HDF5 (gzip)", "sandwich64",
                                       args.n_protons)):
                rows.append((label, n, _write(dataset, n, Path(tmp)), float("nan")))
    print(f"{'benchmark':46s} {'showers':>8s} {'showers/s':>10s} {'traced peak MB':>15s}")
    for label, n, rate, peak in rows:
        print(f"{label:46s} {n:8d} {rate:10.0f} {peak:15.1f}")
    print(f"peak resident memory of the process: {_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
