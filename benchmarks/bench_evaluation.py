"""Benchmark of the evaluation features: speed on 100k ds2 showers, peak memory on 100k ds3 showers.

Targets (issue 4): the features of 100k ds2 showers in at most 20 s on 2 cores, and streaming
features of 100k ds3 showers (40,500 voxels each) under 4 GB of memory.

Showers come from the built-in simulator (ds2-like and ds3-like electrons, 1 GeV - 1 TeV) and are
fed chunk by chunk, never all at once: a pool of simulated showers is drawn once and every chunk
is a random selection from it. Each measurement runs in its own process, so that ``ru_maxrss``
is its own peak (it includes the pool).

Usage::

    python benchmarks/bench_evaluation.py [--n 100000] [--chunk 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

from showerformer.evaluation.features import FeatureAccumulator
from showerformer.showers import VoxelShowers

__all__ = ["main", "simulated_chunks"]


def simulated_chunks(name: str, n: int, chunk: int, seed: int = 0,
                     pool_size: int = 2000) -> Iterator[VoxelShowers]:
    """``n`` showers of the built-in simulator's preset ``name`` in chunks of ``chunk``.

    A pool of ``pool_size`` simulated showers is drawn once and chunks are random selections
    from it, so that the measurement is the features' cost and not the simulation's.
    """
    from showerformer.simulation import simulate

    pool = simulate(name, pool_size, seed=seed)
    assert isinstance(pool, VoxelShowers)
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        b = min(chunk, n - done)
        yield pool[np.sort(rng.integers(0, pool_size, b))]
        done += b


def _run(name: str, n: int, chunk: int) -> dict[str, float]:
    acc = FeatureAccumulator(name)
    t_feat = 0.0
    t0 = time.perf_counter()
    for showers in simulated_chunks(name, n, chunk):
        t = time.perf_counter()
        acc.update(showers)
        t_feat += time.perf_counter() - t
    t = time.perf_counter()
    fs = acc.result()
    t_feat += time.perf_counter() - t
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    return {"geometry": name, "showers": len(fs), "features": len(fs.features),
            "feature_seconds": t_feat, "total_seconds": total, "peak_rss_gib": peak}


def main(argv: list[str] | None = None) -> None:
    """Run both measurements in child processes and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--child", choices=["ds2", "ds3"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_run(args.child, args.n, args.chunk)))
        return
    import torch

    rows = []
    for name in ("ds2", "ds3"):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(args.n),
                              "--chunk", str(args.chunk)], check=True, capture_output=True,
                             text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"threads: torch {torch.get_num_threads()}, chunk {args.chunk} showers")
    print(f"{'geometry':8} {'showers':>8} {'features':>8} {'features s':>11} "
          f"{'total s':>8} {'peak RSS GiB':>12}")
    for r in rows:
        print(f"{r['geometry']:8} {r['showers']:8d} {r['features']:8d} "
              f"{r['feature_seconds']:11.1f} {r['total_seconds']:8.1f} {r['peak_rss_gib']:12.2f}")
    print("targets: ds2 features <= 20 s (2 cores); ds3 streaming peak < 4 GB")


if __name__ == "__main__":
    main()
