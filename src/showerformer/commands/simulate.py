"""Simulation command: ``showerformer simulate DATASET`` streams showers of the built-in
simulator to an HDF5 file, reproducibly and in independent shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DATASET_NAMES", "simulate"]

DATASET_NAMES = ("ds2", "ds3", "ds1-photons", "ds1-pions", "par04", "par04-scipb", "sandwich64",
                 "sandwich32", "multi", "ild-photons")
"""The presets of :data:`showerformer.simulation.DATASETS` (kept here so --help stays light)."""

_OPTIONS = {"n": "--n", "seed": "--seed", "shard": "--shard", "chunk_size": "--chunk-size",
            "particle": "--particle", "energy": "--energy", "spectrum": "--spectrum",
            "theta": "--theta", "dataset": "DATASET"}
"""The command-line option behind each key of the simulator's option errors."""


def simulate(
    dataset: Annotated[str, typer.Argument(
        help="Dataset preset: ds2, ds3 (CaloChallenge-like e-), ds1-photons, ds1-pions "
             "(ATLAS-like), par04 (e- at 64/128/256 GeV, theta 70-90 deg), sandwich64 "
             "(protons, p 1-20 GeV, 64^3 Fe/scintillator, sparse hit lists), sandwich32 (the same in 32^3 cells), multi (e-, gamma, pi+, proton point "
             "clouds), ild-photons (ILD-like Si-W ECAL point clouds).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output HDF5 file (default DATASET.h5, or DATASET_shard-i-of-N.h5).")
    ] = None,
    particle: Annotated[str | None, typer.Option(
        help="Particle(s), comma-separated: e-, e+, gamma, pi+, pi-, proton, neutron "
             "(default: the preset's).")] = None,
    energy: Annotated[str | None, typer.Option(
        help="Energies in GeV: a value '50', a range '1:1000' or a list '64,128,256' "
             "(kinetic energy for hadrons; momentum with --momentum).")] = None,
    spectrum: Annotated[str | None, typer.Option(
        help="fixed, uniform, log-uniform or discrete (default: from --energy's form, "
             "log-uniform for a range).")] = None,
    theta: Annotated[str | None, typer.Option(
        help="Polar angle in degrees, '90' (normal incidence) or a range '70:90'.")] = None,
    momentum: Annotated[bool | None, typer.Option(
        "--momentum/--kinetic",
        help="--energy gives momenta (hadron kinetic energy T = sqrt(p^2 + m^2) - m) or "
             "kinetic energies (default: the preset's; sandwich64 uses momenta).")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="Showers in the whole run (all shards).")
                 ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    shard: Annotated[str, typer.Option(
        help="Shard 'i/N' of the run: shards are independent, reproducible and together equal "
             "the single run.")] = "0/1",
    chunk_size: Annotated[int | None, typer.Option(
        help="Showers per write (default: one simulation block).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="Show a progress bar.")] = True,
    skip_space_check: Annotated[bool, typer.Option(
        "--skip-space-check",
        help="Write even when the estimated file (measured on the first simulated block) is "
             "larger than the free space on the disk.")] = False,
) -> None:
    """Simulate showers with the built-in parametrized simulator and write them to HDF5.

    Every option and the output path are checked first; then the first block is simulated to
    estimate the file's size, and the run is refused if the disk cannot hold it. Ctrl-C
    (exit status 130) or SIGTERM (143) stops the run and leaves an earlier file unchanged.
    """
    from showerformer.errors import InputError
    from showerformer.simulation import DATASETS, parse_shard, simulate_to_file

    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}", key="DATASET",
                         expected=f"one of {', '.join(DATASETS)}")
    try:
        i, k = parse_shard(shard)
        if out is None:
            out = Path(f"{dataset}.h5" if k == 1 else f"{dataset}_shard-{i}-of-{k}.h5")
        summary = simulate_to_file(out, dataset, particle=particle, energy=energy,
                                   spectrum=spectrum, theta=theta, momentum=momentum, n=n,
                                   seed=seed, shard=(i, k), chunk_size=chunk_size,
                                   progress=progress, space_check=not skip_space_check)
    except InputError as exc:
        option = _OPTIONS.get(exc.key or "")
        if exc.path is not None or option is None:
            raise
        raise InputError(exc.what, key=option, expected=exc.expected) from None
    typer.echo(f"wrote {summary['showers']:,} {dataset} showers (shard {summary['shard']}, "
               f"seed {seed}) to {summary['path']} ({summary['format']}) in "
               f"{summary['seconds']:.1f} s, {summary['showers_per_second']:,.0f} showers/s")
