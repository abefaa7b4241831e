"""Compare ILD-like photon showers of the built-in simulator with Geant4 reference histograms.

Reads ``../shared/real/cc3_Geant_4_metrics.npz`` (100,000 Geant4 photons, 10-100 GeV, normal
incidence, ILD Si-W ECAL; binned observables from the CaloClouds-3 repository) and the single
full-simulation event ``cc3_single_event_example.edm4hep.root``, simulates the same
configuration (preset ``ild-photons``) and compares normalized shapes: energy and hits per
layer, radial energy and hit profiles, hits per shower and the visible energy per shower.
Writes a figure (default ``docs/simulator_geant4.png``) and prints a table of summary numbers.
Skips with a message when the shared folder is absent.

Usage::

    python benchmarks/compare_geant4.py [--n 5000] [--out docs/simulator_geant4.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "real"
GUN_X = -50.0  # local x (global Z) of the gun; the radius is measured from this axis


def _norm(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    return h / h.sum()


def simulate_histograms(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """The Geant4 file's histograms for ``n`` simulated ILD-like photons (visible energies)."""
    from showerformer.simulation import Simulator

    sim = Simulator("ild-photons", seed=seed)
    f_em = sim.response.f_em
    bins_r = np.linspace(0, 500, 33)
    out = {k: 0.0 for k in ("r_hits", "r_energy", "l_hits", "l_energy")}
    hits, vis_sum, e_inc = [], [], []
    for chunk in sim.run(n):
        m = chunk.mask
        p = chunk.points
        layer = p[..., 4].astype(np.int64)
        vis = np.where(m, p[..., 3] * f_em[layer], 0.0)  # calibrated -> silicon energy (MeV)
        r = np.hypot(p[..., 0] - GUN_X, p[..., 1])
        out["r_hits"] = out["r_hits"] + np.histogram(r[m], bins_r)[0]
        out["r_energy"] = out["r_energy"] + np.histogram(r[m], bins_r, weights=vis[m])[0]
        out["l_hits"] = out["l_hits"] + np.bincount(layer[m], minlength=30)
        out["l_energy"] = out["l_energy"] + np.bincount(layer[m], weights=vis[m], minlength=30)
        hits.append(m.sum(axis=1))
        vis_sum.append(vis.sum(axis=1))
        e_inc.append(chunk.conditions.energy)
    out["hits"] = np.concatenate(hits)
    out["visible"] = np.concatenate(vis_sum)
    out["incident"] = np.concatenate(e_inc)
    at = Simulator("ild-photons", energy=43.7, seed=seed + 1)
    out["hits_43gev"] = np.concatenate([c.n_points for c in at.run(400)])
    return out


def edm4hep_event(path: Path) -> dict[str, float]:
    """Silicon hit count (all and above 0.5 MIP) and energy of the full-simulation event."""
    try:
        import uproot
    except ImportError:
        return {}
    tree = uproot.open(path)["events"]
    e = np.concatenate([tree[f"{c}/{c}.energy"].array(library="np")[0]
                        for c in ("ECalBarrelSiHitsEven", "ECalBarrelSiHitsOdd")]) * 1000.0
    from showerformer.simulation import get_detector

    thr = get_detector("ild-ecal").threshold
    return {"hits": float(len(e)), "hits_above": float((e > thr).sum()), "mev": float(e.sum()),
            "threshold": thr}


def summary(g4: dict[str, np.ndarray], sim: dict[str, np.ndarray], ev: dict[str, float]
            ) -> list[tuple[str, str, str]]:
    layers = np.arange(1, 31)
    r_mid = np.linspace(0, 500, 33)[:-1] + 500 / 64
    hits_mid = np.arange(50) * 200 + 100
    rows = [
        ("energy-weighted mean layer", f"{(_norm(g4['counts_3']) * layers).sum():.2f}",
         f"{(_norm(sim['l_energy']) * layers).sum():.2f}"),
        ("hit-weighted mean layer", f"{(_norm(g4['counts_2']) * layers).sum():.2f}",
         f"{(_norm(sim['l_hits']) * layers).sum():.2f}"),
        ("energy fraction in last 5 layers", f"{_norm(g4['counts_3'])[-5:].sum():.4f}",
         f"{_norm(sim['l_energy'])[-5:].sum():.4f}"),
        ("energy fraction r < 15.6 mm", f"{_norm(g4['counts_1'])[0]:.3f}",
         f"{_norm(sim['r_energy'])[0]:.3f}"),
        ("energy-weighted mean radius [mm]", f"{(_norm(g4['counts_1']) * r_mid).sum():.1f}",
         f"{(_norm(sim['r_energy']) * r_mid).sum():.1f}"),
        ("hit fraction r < 15.6 mm", f"{_norm(g4['counts_0'])[0]:.3f}",
         f"{_norm(sim['r_hits'])[0]:.3f}"),
        ("mean hits per shower (10-100 GeV)",
         f"{(_norm(g4['counts_5']) * hits_mid).sum():.0f}", f"{sim['hits'].mean():.0f}"),
        ("mean visible energy per shower [MeV]",
         f"{(_norm(g4['counts_6']) * hits_mid).sum():.0f}", f"{sim['visible'].mean():.0f}"),
    ]
    if ev:
        rows.append(("Si cells of one 43.7 GeV photon (>0.5 MIP)",
                     f"{ev['hits_above']:.0f} (full sim.)",
                     f"{np.mean(sim['hits_43gev']):.0f} +- {np.std(sim['hits_43gev']):.0f}"))
    return rows


def plot(g4: dict[str, np.ndarray], sim: dict[str, np.ndarray], out: Path) -> None:
    from showerformer.errors import require

    mpl = require("matplotlib", "plot", "the Geant4 comparison plot")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(15, 8.5))
    np.arange(1, 31)
    r_edges = np.linspace(0, 500, 33)
    nh_edges = np.linspace(0, 10000, 51)
    g4_style = {"color": "black", "label": "Geant4 (CaloClouds-3 metrics)"}
    sim_style = {"color": "tab:red", "label": "showerformer simulator"}

    def step(a, edges, h, **kw):
        a.stairs(_norm(h), edges, linewidth=1.8, **kw)

    le = np.arange(0.5, 31.5)
    step(ax[0, 0], le, g4["counts_3"], **g4_style)
    step(ax[0, 0], le, sim["l_energy"], **sim_style)
    ax[0, 0].set(xlabel="layer", ylabel="visible energy fraction", title="energy per layer")
    step(ax[0, 1], le, g4["counts_2"], **g4_style)
    step(ax[0, 1], le, sim["l_hits"], **sim_style)
    ax[0, 1].set(xlabel="layer", ylabel="hit fraction", title="hits per layer")
    step(ax[0, 2], r_edges, g4["counts_1"], **g4_style)
    step(ax[0, 2], r_edges, sim["r_energy"], **sim_style)
    ax[0, 2].set(xlabel="radius from the shower axis [mm]", ylabel="energy fraction",
                 yscale="log", xlim=(0, 320), title="radial energy profile")
    step(ax[1, 0], r_edges, g4["counts_0"], **g4_style)
    step(ax[1, 0], r_edges, sim["r_hits"], **sim_style)
    ax[1, 0].set(xlabel="radius from the shower axis [mm]", ylabel="hit fraction",
                 yscale="log", xlim=(0, 320), title="radial hit profile")
    step(ax[1, 1], nh_edges, g4["counts_5"], **g4_style)
    step(ax[1, 1], nh_edges, np.histogram(sim["hits"], nh_edges)[0], **sim_style)
    ax[1, 1].set(xlabel="hits per shower", ylabel="fraction of showers",
                 title="hits per shower (Geant4 hits are not 5 mm cells)")
    step(ax[1, 2], nh_edges, g4["counts_6"], **g4_style)
    step(ax[1, 2], nh_edges, np.histogram(sim["visible"], nh_edges)[0], **sim_style)
    ax[1, 2].set(xlabel="visible (silicon) energy per shower [MeV]",
                 ylabel="fraction of showers", xlim=(0, 3000), title="visible energy per shower")
    for a in ax[0, :2]:
        a.set_xticks([1, 5, 10, 15, 20, 25, 30])
    ax[0, 2].legend(frameon=False, loc="upper right")
    fig.suptitle("ILD-like Si-W ECAL, photons 10-100 GeV at normal incidence (shapes normalized)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="simulated showers")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "simulator_geant4.png")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    metrics = SHARED / "cc3_Geant_4_metrics.npz"
    if not metrics.is_file():
        print(f"skipped: {metrics} is absent (the Geant4 reference lives outside the repository)")
        return 0
    g4 = dict(np.load(metrics))
    sim = simulate_histograms(args.n, args.seed)
    ev = edm4hep_event(SHARED / "cc3_single_event_example.edm4hep.root")
    rows = summary(g4, sim, ev)
    width = max(len(r[0]) for r in rows)
    print(f"| {'quantity':{width}s} | Geant4 | simulator |")
    print(f"|{'-' * (width + 2)}|--------|-----------|")
    for name, a, b in rows:
        print(f"| {name:{width}s} | {a} | {b} |")
    plot(g4, sim, args.out)
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
