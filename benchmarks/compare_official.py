"""Cross-check of showerformer's CaloChallenge evaluation against the official evaluation code.

On one pair of CaloChallenge files (reference and generated), both implementations compute:

(a) every high-level feature array of the official ``HighLevelFeatures`` class (E_tot,
    E_tot/E_inc, energy per layer, centre and width in eta, phi and r per layer, sparsity),
    compared element by element (largest relative difference per feature group), together with
    the cell positions (eta, phi, r) and layer boundaries of the two geometries;
(b) the separation power of every histogram the official plotting helper
    (``evaluate_plotting_helper.py``) builds, with its binnings and its ``_separation_power``,
    against :func:`showerformer.evaluation.separation_power_features` with
    :func:`~showerformer.evaluation.official_binning` (largest absolute difference, the number of
    histogram entries that differ, the largest relative difference of the bin edges);
(c) with ``--classifier``: the classifier test, the official network and training loop
    (``DNN``, ``prepare_*_data_for_classifier``, ``ttv_split``, ``train_and_evaluate_cls``,
    ``load_classifier``, ``evaluate_cls`` of the main-branch ``evaluate.py``, in the order of its
    main block) against :func:`showerformer.evaluation.run_classifier` with the same settings
    (width, depth, epochs, learning rate, batch, 60/20/20 split, float64, CPU). Both are repeated
    with new splits and initialisations; the official code draws from the global NumPy and torch
    generators, which are seeded here before each repeat. Reported: mean and standard deviation
    of the calibrated AUC, and the difference of the means in standard errors. Use
    ``--simulate N --scale-generated 1.05`` for a pair with a known difference.

The official code is not part of showerformer: ``--official-code`` names a checkout of the
``code/`` folder of https://github.com/CaloChallenge/homepage, imported from there at run time
and never changed. Two official variants exist (``--variant``, default both): the main branch
(voxels not thresholded; the thresholds, 10 MeV for dataset 1 and 0.5 keV / 0.033 for datasets
2 and 3, are only the lower edges of the logarithmic binnings) and the ``more_evaluations``
branch (voxels below 1 MeV (dataset 1) or 0.5 keV / 0.033 set to zero in both samples before
everything). Both share ``HighLevelFeatures.py`` and the plotting helper; for the
``more_evaluations`` variant this script applies that branch's zeroing,
``np.where(shower < min_energy, 0, shower)``, before handing the showers to the official
classes. showerformer runs with ``threshold=0`` and ``floor=<min_energy>`` for the main branch
and with its defaults for ``more_evaluations``. The classifier is compared for the main variant.

What the official code needs to run headless, done here without editing it:

- the matplotlib backend is set to Agg before the import, and LaTeX text (``evaluate.py`` turns
  ``text.usetex`` on when imported) is switched off again; its default torch dtype (float64,
  also set on import) is restored after each use;
- the plotting functions get an ``argparse.Namespace`` with the attributes ``evaluate.py`` sets
  (``mode="hist-chi"``, ``dataset``, ``output_dir`` (a temporary folder), ``min_energy``,
  ``x_scale="log"``); the showers' incident energies are attached as ``hlf.Einc``;
- ``_separation_power`` of the helper module is wrapped to record the histograms it receives
  (the value it returns is unchanged); the separation powers themselves are read back from the
  ``histogram_chi2_<dataset>.txt`` file the helper writes (``str`` of a float64: exact), and
  each official histogram is recomputed from the official feature values to make sure the
  entries are the ones compared;
- ``HighLevelFeatures`` (the version with sparsity and r features) keeps the radial bin centres
  of each non-empty layer as a plain list and looks them up by *layer id*. ``r * r`` on a list
  raises TypeError in ``_calculate_Width_r``, and for dataset 1 (non-empty layers 0, 1, 2, 3,
  12 for photons) the lookup of layer 12 raises IndexError. The instance attribute
  ``radial_center_mult`` is therefore replaced by arrays of the same values, keyed by layer id
  where the ids run past the list; the output says which adaptation was made.

Precision and tolerances. The official ``evaluate.py`` reads ``showers`` as stored (float32 in
showerformer's files) and sums voxel energies in that dtype (numpy pairwise summation, relative
rounding of a few 1e-7); showerformer reads float32 voxels and accumulates in float64. The
official classes therefore run twice: on the stored arrays (what the official evaluation
computes) and on float64 arrays of the values showerformer reads (the voxels rounded to float32,
which changes nothing for float32 files): the official definitions on identical input without
float32 accumulation. The exit status requires:

- features: relative difference <= ``--rtol`` (1e-6) against the stored-array run and
  <= ``--rtol64`` (1e-9) against the float64 run. Float32 pairwise sums are accurate to about
  (log2 n) 2^-24 ~ 1e-7, float64 ones to ~1e-15, while a wrong cell, layer, threshold or formula
  changes features at the percent level. Energies are compared relative to their value; the
  centre ``c`` and width ``w`` of a layer are weighted means whose rounding scales with the
  rms coordinate ``sqrt(m2) = sqrt(c^2 + w^2)``, so centres are compared relative to
  ``sqrt(m2)`` (centres near 0 mm included) and widths, ``sqrt(m2 - c^2)``, as
  ``|w_a^2 - w_b^2| / m2``. Layers with less than 1.2e-38 MeV (float32 subnormals, fewer than
  24 significant bits) are left out of the centre and width comparison (column ``skipped``);
- separation powers: |difference| <= ``--atol-sep`` (1e-9) against both runs. Moving one entry
  between bins changes S by roughly 1/N^2 / (p_i + p_j) or more, above 1e-9 up to ~10^5 showers,
  while float64 rounding of S is ~1e-16. One difference is accepted against the stored-array run:
  showers counted in another bin whose official value lies on a bin edge (within 1e-5
  relative, float32 rounding of a sum and of a ``log10``; columns ``moved`` and ``ties``), where the last bits, float32 or float64
  accumulation, decide the bin. It happens in two ways. The energy-per-layer binning ends at
  the reference maximum, ``logspace(..., log10(max), 40)``, and whether ``10**log10(max)``
  rounds above or below ``max`` decides whether that shower is counted; the official code
  decides on a float32 sum and a float32 ``log10``, showerformer (like the official code on
  float64 input) in float64. And a layer whose energy sits in one cell has its centre on that
  cell's coordinate, which for dataset 1 can be a bin edge (70 mm with 2 mm bins). The voxel spectrum is not held to 1e-9: showerformer accumulates
  it on a fine logarithmic grid (2^-12 relative bin width) and splits the fine bin holding each
  official edge log-linearly (see ``showerformer.evaluation.features``), which can misplace at
  most the entries of those fine bins. Its check is on the counts: no official bin may differ
  by more than the entries of the fine bins at its two edges (a wrong threshold, binning or
  voxel would move far more); the difference of S is printed.

Exit status: 0 when all of the above hold for every variant, 1 otherwise. The classifier AUCs
are reported, not checked.

Usage::

    python benchmarks/compare_official.py --official-code ~/homepage/code --dataset 2 \\
        --simulate 2000
    python benchmarks/compare_official.py --official-code ~/homepage/code --dataset 2 \\
        --reference ref.hdf5 --generated gen.hdf5 [--classifier --cls-epochs 10]

References:
    CaloChallenge 2022 evaluation, https://github.com/CaloChallenge/homepage (``code/``),
    arXiv:2410.21611; separation power arXiv:2009.03796 (eq. 15); classifier test
    arXiv:2106.05285.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import math
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["DATASETS", "MIN_ENERGY", "compare", "main"]

DATASETS: dict[str, tuple[str, str, int]] = {
    "1-photons": ("ds1-photons", "photon", 368),
    "1-pions": ("ds1-pions", "pion", 533),
    "2": ("ds2", "electron", 6480),
    "3": ("ds3", "electron", 40500),
}
"""Official dataset name -> (showerformer preset, particle name of the XML, voxels)."""

_DS23 = 0.5e-3 / 0.033
MIN_ENERGY: dict[str, dict[str, float]] = {
    "main": {"1-photons": 10.0, "1-pions": 10.0, "2": _DS23, "3": _DS23},
    "more_evaluations": {"1-photons": 1.0, "1-pions": 1.0, "2": _DS23, "3": _DS23},
}
"""Voxel readout threshold (MeV) of each official variant, per dataset."""

# official HighLevelFeatures attribute -> showerformer feature stem
_PER_LAYER = {
    "E_layers": "E_layer",
    "EC_etas": "EC_eta",
    "EC_phis": "EC_phi",
    "width_etas": "width_eta",
    "width_phis": "width_phi",
    "EC_r": "EC_r",
    "width_r": "width_r",
    "sparsity": "sparsity",
}

# official separation-power labels (histogram_chi2_<ds>.txt) -> showerformer histogram names
_LABELS = [
    (re.compile(r"Etot / Einc"), lambda m: "E_tot/E_inc"),
    (re.compile(r"E layer (\d+)"), lambda m: f"E_layer_{m.group(1)}"),
    (re.compile(r"EC Eta layer (\d+)"), lambda m: f"EC_eta_{m.group(1)}"),
    (re.compile(r"EC Phi layer (\d+)"), lambda m: f"EC_phi_{m.group(1)}"),
    (re.compile(r"Width Eta layer (\d+)"), lambda m: f"width_eta_{m.group(1)}"),
    (re.compile(r"Width Phi layer (\d+)"), lambda m: f"width_phi_{m.group(1)}"),
    (re.compile(r"Etot / Einc at E = ([0-9.eE+]+)"),
     lambda m: f"E_tot/E_inc_at_E_{round(float(m.group(1)))}"),
    (re.compile(r"Voxel distribution"), lambda m: "voxel_energy"),
]


# ---------------------------------------------------------------------------- official code
def load_official(code_dir: Path) -> SimpleNamespace:
    """Import ``HighLevelFeatures`` and ``evaluate_plotting_helper`` from a checkout of the
    official ``code/`` folder (matplotlib switched to Agg first)."""
    import matplotlib

    matplotlib.use("Agg")
    for name in ("HighLevelFeatures.py", "XMLHandler.py", "evaluate_plotting_helper.py"):
        if not (code_dir / name).is_file():
            raise SystemExit(f"error: {code_dir / name} not found; --official-code must be the "
                             "code/ folder of a CaloChallenge/homepage checkout")
    sys.path.insert(0, str(code_dir))
    hlf = importlib.import_module("HighLevelFeatures")
    helper = importlib.import_module("evaluate_plotting_helper")
    return SimpleNamespace(hlf=hlf, helper=helper, dir=code_dir, evaluate=None)


def load_official_evaluate(off: SimpleNamespace) -> ModuleType:
    """Import the official ``evaluate.py`` (for its classifier); undo its LaTeX setting."""
    if off.evaluate is None:
        import matplotlib.pyplot as plt
        import torch

        path = off.dir / "evaluate.py"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (needed for --classifier)")
        dtype = torch.get_default_dtype()
        off.evaluate = importlib.import_module("evaluate")  # sets float64 as default dtype
        torch.set_default_dtype(dtype)
        plt.rcParams["text.usetex"] = False
    return off.evaluate


def official_hlf(off: SimpleNamespace, dataset: str, xml: Path) -> tuple[Any, list[str]]:
    """A HighLevelFeatures instance and the run-time adaptations made to its radial centres."""
    particle = DATASETS[dataset][1]
    h = off.hlf.HighLevelFeatures(particle, filename=str(xml))
    patches = []
    centres = getattr(h, "radial_center_mult", None)
    if isinstance(centres, list):
        if any(not isinstance(c, np.ndarray) for c in centres):
            # plain lists: ``r * r`` in _calculate_Width_r would be list * list (TypeError)
            centres = [np.asarray(c, dtype=np.float64) for c in centres]
            patches.append("radial centres as arrays")
        if max(h.relevantLayers) >= len(centres):
            # looked up by layer id in a list with one entry per non-empty layer (IndexError)
            centres = dict(zip(h.relevantLayers, centres, strict=True))
            patches.append("radial centres keyed by layer id")
        h.radial_center_mult = centres
    return h, patches


@dataclass
class OfficialRun:
    """Features and separation powers of the official code for one input pair."""

    ref: Any
    gen: Any
    seps: dict[str, float] = field(default_factory=dict)
    hists: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    log: str = ""
    warnings: list[str] = field(default_factory=list)


def run_official(off: SimpleNamespace, dataset: str, xml: Path, ref: tuple[np.ndarray, ...],
                 gen: tuple[np.ndarray, ...], min_energy: float, workdir: Path) -> OfficialRun:
    """Official features of both samples and the separation powers of its histograms.

    Arguments:
        ref, gen: (showers (N, n_voxels), incident energies (N, 1)) as the official code reads
            them (after this variant's zeroing).
        min_energy: ``args.min_energy`` of ``evaluate.py``.
        workdir: where the helper writes its ``histogram_chi2`` file.
    """
    import matplotlib.pyplot as plt

    plt.rcParams["text.usetex"] = False
    helper = off.helper
    h_ref, _ = official_hlf(off, dataset, xml)
    h_gen, _ = official_hlf(off, dataset, xml)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        h_ref.CalculateFeatures(ref[0])
        h_ref.Einc = ref[1]
        h_gen.CalculateFeatures(gen[0])
        h_gen.Einc = gen[1]
    run = OfficialRun(ref=h_ref, gen=h_gen)
    workdir.mkdir(parents=True, exist_ok=True)
    arg = argparse.Namespace(mode="hist-chi", dataset=dataset, output_dir=str(workdir),
                             min_energy=min_energy, x_scale="log")
    chi2 = workdir / f"histogram_chi2_{dataset}.txt"
    chi2.write_text("header\n")
    recorded: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    original = helper._separation_power

    def recording(hist1: Any, hist2: Any, bins: Any) -> Any:
        recorded.append((np.array(hist1, dtype=np.float64), np.array(hist2, dtype=np.float64),
                         np.array(bins, dtype=np.float64)))
        return original(hist1, hist2, bins)

    helper._separation_power = recording
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # the sequence of evaluate.py's plot_histograms() followed by plot_cell_dist()
            helper.plot_Etot_Einc(h_gen, h_ref, arg)
            helper.plot_E_layers(h_gen, h_ref, arg)
            helper.plot_ECEtas(h_gen, h_ref, arg)
            helper.plot_ECPhis(h_gen, h_ref, arg)
            helper.plot_ECWidthEtas(h_gen, h_ref, arg)
            helper.plot_ECWidthPhis(h_gen, h_ref, arg)
            if dataset.startswith("1"):
                helper.plot_Etot_Einc_discrete(h_gen, h_ref, arg)
            helper.plot_cell_dist(gen[0], ref[0], arg)
        run.warnings = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    finally:
        helper._separation_power = original
        plt.close("all")
    run.log = out.getvalue()
    text = chi2.read_text().split("\n", 1)[1]
    blocks = re.findall(r"(.+?): \n(.*?)\n\n", text)
    if len(blocks) != len(recorded):
        raise RuntimeError(f"{len(blocks)} separation powers written, {len(recorded)} computed")
    for (label, value), hist in zip(blocks, recorded, strict=True):
        name = _label_to_name(label)
        run.seps[name] = float(value)
        run.hists[name] = hist
    return run


def _label_to_name(label: str) -> str:
    for pattern, make in _LABELS:
        m = pattern.fullmatch(label.strip())
        if m:
            return make(m)
    raise RuntimeError(f"unknown histogram label {label!r} in the official output")


def official_features(h: Any) -> dict[str, np.ndarray]:
    """Per-shower arrays of an official HighLevelFeatures instance, by showerformer name."""
    out = {"E_tot": np.asarray(h.GetEtot(), dtype=np.float64),
           "E_tot/E_inc": np.asarray(h.GetEtot() / h.Einc.squeeze(), dtype=np.float64)}
    for attr, stem in _PER_LAYER.items():
        for lid, values in (getattr(h, attr, None) or {}).items():
            out[f"{stem}_{lid}"] = np.asarray(values, dtype=np.float64)
    return out


# ---------------------------------------------------------------------------- showerformer
def ours(paths: tuple[Path, Path], xml: Path, threshold: float,
         collect: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """showerformer FeatureSets of (reference, generated)."""
    from showerformer.evaluation import FeatureAccumulator
    from showerformer.geometry import get_geometry
    from showerformer.io.calochallenge import read_calochallenge

    geo = get_geometry(xml)
    out = []
    for path in paths:
        acc = FeatureAccumulator(geo, threshold=threshold, collect=collect,
                                 low_dtype=np.float64)
        acc.update(read_calochallenge(path, geometry=geo))
        out.append(acc.result())
    return out[0], out[1]


# ---------------------------------------------------------------------------- comparisons
def _group(name: str) -> str:
    m = re.fullmatch(r"(.+)_(\d+)", name)
    if name.startswith("E_tot/E_inc_at_E_"):
        return "E_tot/E_inc per E_inc"
    return m.group(1) if m else name


_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32 (MeV): 1.2e-38


def feature_diffs(official: dict[str, np.ndarray],
                  mine: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per feature group: largest relative difference, largest absolute difference, number of
    values compared and skipped, and the features showerformer lacks.

    Energies and ratios: ``|a - b| / max(|a|, |b|, 1.2e-38)``. A centre ``c`` and width ``w`` of
    a layer are weighted means whose rounding scales with the layer's rms coordinate
    ``sqrt(m2) = sqrt(c^2 + w^2)``: centres are compared as ``|c_a - c_b| / max(sqrt(m2))``
    (centres near 0 mm included) and widths, the square root of ``m2 - c^2``, as
    ``|w_a^2 - w_b^2| / max(m2)``. Centres and widths of layers with less than 1.2e-38 MeV (a
    float32 subnormal, stored with fewer than 24 significant bits) are skipped.
    """
    groups: dict[str, dict[str, Any]] = {}
    for name, a in official.items():
        g = groups.setdefault(_group(name), {"pairs": [], "missing": [], "skipped": 0})
        if name not in mine:
            g["missing"].append(name)
            continue
        b = np.asarray(mine[name], dtype=np.float64)
        m = re.fullmatch(r"(EC|width)_(eta|phi|r)_(\d+)", name)
        if m and not all(f"{k}_{m.group(2)}_{m.group(3)}" in mine for k in ("EC", "width")):
            m = None  # no matching centre or width: compared as a plain value
        if m:
            c_name, w_name = f"EC_{m.group(2)}_{m.group(3)}", f"width_{m.group(2)}_{m.group(3)}"
            e_name = f"E_layer_{m.group(3)}"
            e_layer = official[e_name]
            keep = (e_layer == 0) | (e_layer >= _TINY)
            m2 = np.maximum(official[c_name] ** 2 + official[w_name] ** 2,
                            np.asarray(mine[c_name]) ** 2 + np.asarray(mine[w_name]) ** 2)
            a, b, m2 = a[keep], b[keep], m2[keep]
            g["skipped"] += int((~keep).sum())
            if m.group(1) == "EC":
                num, den = np.abs(a - b), np.sqrt(m2)
            else:
                num, den = np.abs(a**2 - b**2), m2
        else:
            num = np.abs(a - b)
            den = np.maximum(np.maximum(np.abs(a), np.abs(b)), _TINY)
        g["pairs"].append((a, b, num, den))
    out: dict[str, dict[str, Any]] = {}
    for gname, g in groups.items():
        rel = absd = 0.0
        n = 0
        for a, b, num, den in g["pairs"]:
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.where(num == 0, 0.0, num / den)
            d = np.abs(a - b)
            same = (np.isnan(a) & np.isnan(b)) | (a == b)
            r = np.where(same, 0.0, np.where(np.isnan(r), math.inf, r))
            d = np.where(same, 0.0, np.where(np.isnan(d), math.inf, d))
            rel = max(rel, float(np.max(r)) if r.size else 0.0)
            absd = max(absd, float(np.max(d)) if d.size else 0.0)
            n += a.size
        if not g["pairs"]:
            rel = absd = math.inf
        out[gname] = {"n": n, "rel": rel, "abs": absd, "missing": g["missing"],
                      "skipped": g["skipped"]}
    return out


def geometry_diffs(h: Any, xml: Path) -> dict[str, float]:
    """Largest differences (mm) of cell eta, phi, r and the layer boundaries."""
    from showerformer.geometry import get_geometry

    geo = get_geometry(xml)
    d_eta = d_phi = d_r = 0.0
    bounds_ok = True
    for idx, lid in enumerate(h.relevantLayers):
        sl = geo.layer_slice(lid)
        bounds_ok &= (sl.start, sl.stop) == (h.bin_edges[lid], h.bin_edges[lid + 1])
        d_eta = max(d_eta, float(np.max(np.abs(np.asarray(h.eta_all_layers[lid]) - geo.eta[sl]))))
        d_phi = max(d_phi, float(np.max(np.abs(np.asarray(h.phi_all_layers[lid]) - geo.phi[sl]))))
        centres = getattr(h, "radial_center_mult", None)
        if centres is not None:
            rc = centres[lid] if isinstance(centres, dict) else centres[idx]
            d_r = max(d_r, float(np.max(np.abs(np.asarray(rc) - geo.r_mid[sl]))))
    return {"eta": d_eta, "phi": d_phi, "r": d_r, "layer_bounds_equal": float(bounds_ok),
            "n_cells": float(geo.n_cells), "n_cells_official": float(h.bin_edges[-1])}


def _official_values(h: Any, values: dict[str, np.ndarray], showers: np.ndarray,
                     name: str) -> np.ndarray:
    """The entries the official helper histograms for ``name``."""
    if name == "voxel_energy":
        return showers.ravel()
    m = re.fullmatch(r"E_tot/E_inc_at_E_(\d+)", name)
    if m:
        e = h.Einc.squeeze()
        lo = float(m.group(1))
        return values["E_tot/E_inc"][(e >= lo) & (e < 2 * lo)]
    return values[name]


def _fine_bin_counts(fs: Any, edges: np.ndarray) -> np.ndarray:
    """Entries of showerformer's fine voxel grid in the fine bin holding each edge (0 for an
    edge on a grid edge or outside the grid): the most its log-linear split can misplace."""
    from showerformer.evaluation.features import voxel_grid_edges

    grid = voxel_grid_edges()
    k = np.searchsorted(grid, edges, side="right") - 1
    out = np.zeros(len(edges))
    for j, i in enumerate(k):
        if 0 <= i < len(grid) - 1 and grid[i] != edges[j]:
            out[j] = float(fs.voxel_histogram(grid[[i, i + 1]]).sum())
    return out


def _bin_index(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Bin of each value as ``np.histogram`` counts it (last edge included; -1 outside)."""
    idx = np.searchsorted(bins, values, side="right") - 1
    idx[values == bins[-1]] = len(bins) - 2
    idx[(idx < 0) | (idx > len(bins) - 2) | np.isnan(values)] = -1
    return idx


def _edge_ties(v_off: np.ndarray, v_my: np.ndarray, bins: np.ndarray,
               my_bins: np.ndarray) -> tuple[int, int]:
    """(entries counted in different bins, how many of them lie on an official edge, i.e.
    within float32 rounding of it: 1e-5 relative, which covers a float32 sum and the float32
    ``log10`` the official code applies to the maximum that ends its logarithmic binnings)."""
    moved = _bin_index(v_off, bins) != _bin_index(v_my, my_bins)
    v = v_off[moved]
    if not len(v):
        return 0, 0
    k = np.clip(np.searchsorted(bins, v), 1, len(bins) - 1)
    gap = np.minimum(np.abs(v - bins[k - 1]), np.abs(v - bins[k]))
    tol = 1e-5 * np.maximum(np.abs(v), np.min(np.abs(bins[[0, -1]])))
    tol += 1e-12 * float(bins[-1] - bins[0])
    return int(moved.sum()), int((gap <= tol).sum())


def separation_diffs(run: OfficialRun, ref_in: tuple[np.ndarray, ...],
                     gen_in: tuple[np.ndarray, ...], ref_fs: Any, gen_fs: Any,
                     floor: float | None) -> dict[str, dict[str, Any]]:
    """Per official histogram: both separation powers and their difference; the largest relative
    difference of the bin edges; the entries that differ (sum of |count differences| over both
    samples, each in its own binning); for per-shower features, the showers counted in different
    bins and whether all of them lie on an official bin edge (``edge_ties``: rounding decides
    the bin); for the voxel spectrum, whether the count differences stay within what
    showerformer's fine grid can misplace (``fine_grid_ok``)."""
    from showerformer.errors import InputError
    from showerformer.evaluation import official_binning, separation_power_features

    names = list(run.seps)
    mine = separation_power_features(ref_fs, gen_fs, names=names, floor=floor)
    vals = {"ref": official_features(run.ref), "gen": official_features(run.gen)}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        h_ref, h_gen, bins = run.hists[name]
        try:
            my_bins = official_binning(name, ref_fs.geometry, reference=ref_fs, floor=floor)
            d_bins = float(np.max(np.abs(my_bins - bins) / np.abs(bins).clip(1e-300)))
        except InputError:  # no binning from this reference: reported as infinite
            my_bins, d_bins = bins, math.inf
        moved = allowance = 0.0
        n_moved = n_ties = 0
        within = True
        for role, h, fs, showers, density in (("ref", run.ref, ref_fs, ref_in[0], h_ref),
                                              ("gen", run.gen, gen_fs, gen_in[0], h_gen)):
            v = _official_values(h, vals[role], showers, name)
            c_off = np.histogram(v, bins)[0].astype(np.float64)
            if c_off.sum() > 0 and not np.allclose(c_off / c_off.sum() / np.diff(bins), density,
                                                   rtol=1e-12, atol=0.0):
                raise RuntimeError(f"{name}: the official histogram could not be reproduced")
            c_my = fs.histogram(name, my_bins)
            diff = np.abs(c_my - c_off)
            moved += float(diff.sum())
            if name == "voxel_energy":  # per bin: what the fine bins at its two edges hold
                err = np.maximum(_fine_bin_counts(fs, bins), _fine_bin_counts(fs, my_bins))
                allowed = err[:-1] + err[1:] + 1e-9
                within &= bool(np.all(diff <= allowed))
                allowance += float(allowed.sum())
            else:
                m, t = _edge_ties(np.asarray(v, dtype=np.float64), fs.values(name), bins, my_bins)
                n_moved += m
                n_ties += t
        a, b = run.seps[name], mine[name]
        d = 0.0 if (a == b or (math.isnan(a) and math.isnan(b))) else abs(a - b)
        out[name] = {"official": a, "ours": b, "abs": d if not math.isnan(d) else math.inf,
                     "d_bins": d_bins, "entries": moved, "showers_moved": n_moved,
                     "edge_ties": n_ties, "all_edge_ties": n_moved > 0 and n_ties == n_moved}
        if name == "voxel_energy":
            out[name].update(fine_grid_ok=within, fine_grid_allowance=allowance)
    return out


# ---------------------------------------------------------------------------- classifier
def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``showers`` and ``incident_energies`` exactly as the official ``evaluate.py`` reads them."""
    import h5py

    with h5py.File(path, "r") as f:
        return f["showers"][:], f["incident_energies"][:]


def classifier_compare(off: SimpleNamespace, dataset: str, variant: str, run: OfficialRun,
                       run64: OfficialRun, ref: tuple[np.ndarray, np.ndarray],
                       gen: tuple[np.ndarray, np.ndarray], ref64: tuple[np.ndarray, np.ndarray],
                       gen64: tuple[np.ndarray, np.ndarray], ref_fs: Any, gen_fs: Any,
                       opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Official classifier vs :func:`run_classifier` with the same settings, ``opts.cls_repeats``
    times each (the official one on the inputs from the stored arrays, as evaluate.py does);
    also the largest difference of the two implementations' inputs, per column relative to its
    largest |value|, against the stored-array and the float64 official runs."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from showerformer.evaluation import ClassifierConfig, run_classifier
    from showerformer.evaluation.features import high_level_matrix

    ev = load_official_evaluate(off)
    if "split" not in inspect.signature(ev.ttv_split).parameters:
        raise SystemExit("error: --classifier supports the main-branch evaluate.py "
                         "(ttv_split(data1, data2, split=...)); this checkout has another API")
    mode = opts.cls_mode

    def official_inputs(r: OfficialRun, ref: tuple[np.ndarray, np.ndarray],
                        gen: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(reference, generated) inputs with the label column, as evaluate.py prepares them."""
        if mode == "high":
            return (ev.prepare_high_data_for_classifier(ref[1], r.ref, 1.),
                    ev.prepare_high_data_for_classifier(gen[1], r.gen, 0.))
        normed = mode == "low-normed"
        return (ev.prepare_low_data_for_classifier(ref[0], ref[1], r.ref, 1., normed=normed),
                ev.prepare_low_data_for_classifier(gen[0], gen[1], r.gen, 0., normed=normed))

    a_ref, a_gen = official_inputs(run, ref, gen)
    # ours, in the variant's form (main: voxels x 100, the shorter high-level vector)
    mine = []
    for fs in (ref_fs, gen_fs):
        if mode == "high":
            x = high_level_matrix(fs)
            if variant == "main":
                x = x[:, :1 + len(fs.layers) + 4 * len(fs.alpha_layers)]
        else:
            x = fs.low_level["low" if mode == "low" else "low_normed"].copy()
            if mode == "low" and variant == "main":
                x[:, 1:] *= 100.0
        mine.append(x)

    def input_diff(a_ref: np.ndarray, a_gen: np.ndarray) -> float:
        """Largest |difference| per column relative to the column's largest |value|."""
        out = 0.0
        for a, b in ((a_ref[:, :-1], mine[0]), (a_gen[:, :-1], mine[1])):
            scale = np.max(np.abs(a), axis=0)
            scale[scale == 0] = 1.0
            out = max(out, float(np.max(np.abs(a - b) / scale)))
        return out

    d_in = input_diff(a_ref, a_gen)
    d_in64 = input_diff(*official_inputs(run64, ref64, gen64))
    hidden = (opts.cls_hidden,) * (opts.cls_layers + 1)
    settings = {"hidden": hidden, "epochs": opts.cls_epochs, "lr": opts.cls_lr,
                "batch_size": opts.cls_batch, "repeats": opts.cls_repeats}

    # official: the steps of evaluate.py's main block, seeded from outside for reproducibility
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    off_aucs, off_jsds, off_epochs = [], [], []
    args = argparse.Namespace(
        cls_n_layer=opts.cls_layers, cls_n_hidden=opts.cls_hidden, cls_dropout_probability=0.0,
        cls_batch_size=opts.cls_batch, cls_n_epochs=opts.cls_epochs, cls_lr=opts.cls_lr,
        no_cuda=True, which_cuda=0, save_mem=False, mode=f"cls-{mode}", dataset=dataset,
        output_dir=str(workdir), device=torch.device("cpu"))
    workdir.mkdir(parents=True, exist_ok=True)  # evaluate.py saves the best epoch there
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        for rep in range(opts.cls_repeats):
            np.random.seed(opts.seed + rep)  # noqa: NPY002 - the official code uses it
            torch.manual_seed(opts.seed + rep)
            train, test, val = ev.ttv_split(a_gen.copy(), a_ref.copy())
            model = ev.DNN(num_layer=opts.cls_layers, num_hidden=opts.cls_hidden,
                           input_dim=train.shape[1] - 1, dropout_probability=0.0)
            optim = torch.optim.Adam(model.parameters(), lr=opts.cls_lr)
            loaders = [DataLoader(TensorDataset(torch.tensor(d)), batch_size=opts.cls_batch,
                                  shuffle=(i == 0)) for i, d in enumerate((train, test, val))]
            with contextlib.redirect_stdout(log):
                ev.train_and_evaluate_cls(model, loaders[0], loaders[1], optim, args)
                model = ev.load_classifier(model, args)
                with torch.no_grad():
                    _, auc, jsd = ev.evaluate_cls(model, loaders[2], args, final_eval=True,
                                                  calibration_data=loaders[1])
            off_aucs.append(float(auc))
            off_jsds.append(float(jsd))
            off_epochs.append(int(args.best_epoch))
    finally:
        torch.set_default_dtype(dtype)
    t_off = time.perf_counter() - t0

    t0 = time.perf_counter()
    cfg = ClassifierConfig(hidden=hidden, lr=opts.cls_lr, batch_size=opts.cls_batch,
                           epochs=opts.cls_epochs, split=(0.6, 0.2, 0.2),
                           n_repeats=opts.cls_repeats, seed=opts.seed, dtype="float64")
    res = run_classifier(mine[0], mine[1], cfg)
    t_ours = time.perf_counter() - t0
    ddof = 1 if opts.cls_repeats > 1 else 0
    o_mean, o_std = float(np.mean(off_aucs)), float(np.std(off_aucs, ddof=ddof))
    se = math.sqrt((o_std**2 + res.auc_std**2) / opts.cls_repeats)
    return {
        "mode": f"cls-{mode}", "settings": settings, "input_max_rel_diff": d_in, "input_max_rel_diff_float64": d_in64,
        "official": {"auc_mean": o_mean, "auc_std": o_std, "aucs": off_aucs, "jsds": off_jsds,
                     "best_epochs": off_epochs, "seconds": t_off},
        "ours": {"auc_mean": res.auc_mean, "auc_std": res.auc_std, "aucs": res.aucs,
                 "jsds": res.jsds, "best_epochs": res.best_epochs, "seconds": t_ours},
        "z": (res.auc_mean - o_mean) / se if se > 0 else math.nan,
    }


# ---------------------------------------------------------------------------- driver
def compare(opts: argparse.Namespace, off: SimpleNamespace, ref_path: Path, gen_path: Path,
            variant: str, workdir: Path) -> dict[str, Any]:
    """All comparisons for one official variant; a JSON-serializable result."""
    ds = opts.dataset
    min_e = MIN_ENERGY[variant][ds]
    xml = opts.xml
    t0 = time.perf_counter()
    ref_raw, gen_raw = _read(ref_path), _read(gen_path)
    if variant == "more_evaluations":  # the branch's zeroing, applied to both samples
        ref_in = (np.where(ref_raw[0] < min_e, 0, ref_raw[0]), ref_raw[1])
        gen_in = (np.where(gen_raw[0] < min_e, 0, gen_raw[0]), gen_raw[1])
    else:
        ref_in, gen_in = ref_raw, gen_raw
    run = run_official(off, ds, xml, ref_in, gen_in, min_e, workdir / f"{variant}_stored")
    t_off = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the values showerformer reads (voxels as float32), in float64
    ref64 = (np.asarray(ref_in[0], np.float32).astype(np.float64), ref_in[1])
    gen64 = (np.asarray(gen_in[0], np.float32).astype(np.float64), gen_in[1])
    run64 = run_official(off, ds, xml, ref64, gen64, min_e, workdir / f"{variant}_float64")
    t_off64 = time.perf_counter() - t0
    threshold = 0.0 if variant == "main" else min_e
    floor = min_e if variant == "main" else None
    collect: tuple[str, ...] = ()
    if opts.classifier and opts.cls_mode != "high":
        collect = ("low",) if opts.cls_mode == "low" else ("low_normed",)
    t0 = time.perf_counter()
    ref_fs, gen_fs = ours((ref_path, gen_path), xml, threshold, collect)
    t_ours = time.perf_counter() - t0
    seps = separation_diffs(run, ref_in, gen_in, ref_fs, gen_fs, floor)
    seps64 = separation_diffs(run64, ref64, gen64, ref_fs, gen_fs, floor)
    _, patches = official_hlf(off, ds, xml)
    feats: dict[str, Any] = {}
    for label, r in (("stored", run), ("float64", run64)):
        for h, fs in ((r.ref, ref_fs), (r.gen, gen_fs)):
            d = feature_diffs(official_features(h), fs.features)
            for g, v in d.items():
                cur = feats.setdefault(g, {"n": 0, "skipped": 0,
                                           "stored": {"rel": 0.0, "abs": 0.0},
                                           "float64": {"rel": 0.0, "abs": 0.0},
                                           "missing": []})
                if label == "stored":
                    cur["n"] += v["n"]
                    cur["skipped"] += v["skipped"]
                    cur["missing"] += v["missing"]
                cur[label]["rel"] = max(cur[label]["rel"], v["rel"])
                cur[label]["abs"] = max(cur[label]["abs"], v["abs"])
    result: dict[str, Any] = {
        "variant": variant, "min_energy": min_e, "showerformer_threshold": threshold,
        "showerformer_floor": floor, "patches": patches,
        "stored_dtype": str(ref_raw[0].dtype), "official_warnings": run.warnings,
        "geometry": geometry_diffs(run.ref, xml), "features": feats,
        "separation": seps, "separation_float64": seps64,
        "seconds": {"official": t_off, "official_float64": t_off64, "showerformer": t_ours},
    }
    if opts.classifier and variant == "main":  # the evaluate.py API this script drives
        result["classifier"] = classifier_compare(off, ds, variant, run, run64, ref_in, gen_in,
                                                  ref64, gen64, ref_fs, gen_fs, opts,
                                                  workdir / "cls")
    return result


def check(result: dict[str, Any], opts: argparse.Namespace) -> list[str]:
    """Failed checks of one variant (empty when everything agrees).

    Features: relative difference <= ``rtol`` against the official code on the stored arrays
    and <= ``rtol64`` against it on float64 arrays. Separation powers: |difference| <=
    ``atol_sep`` against both runs, except that against the stored arrays a histogram may
    differ by showers whose official value lies on a bin edge (``all_edge_ties``);
    ``voxel_energy`` may also differ where no bin's count differs by more than the entries of
    showerformer's fine-grid bins at its two edges (``fine_grid_ok``).
    """
    bad = []
    geo = result["geometry"]
    if not geo["layer_bounds_equal"] or geo["n_cells"] != geo["n_cells_official"]:
        bad.append("geometry: layer boundaries differ")
    for k in ("eta", "phi", "r"):
        if geo[k] > 1e-9:
            bad.append(f"geometry: cell {k} differs by {geo[k]:.3g} mm")
    for g, v in result["features"].items():
        if v["missing"]:
            bad.append(f"features {g}: no showerformer value for {v['missing'][:3]}")
        if not v["stored"]["rel"] <= opts.rtol:
            bad.append(f"features {g}: relative difference {v['stored']['rel']:.3g} "
                       "(official on the stored arrays)")
        if not v["float64"]["rel"] <= opts.rtol64:
            bad.append(f"features {g}: relative difference {v['float64']['rel']:.3g} "
                       "(official on float64 arrays)")
    for label, key in (("stored arrays", "separation"), ("float64 arrays", "separation_float64")):
        for name, v in result[key].items():
            if v["abs"] <= opts.atol_sep or (key == "separation" and v["all_edge_ties"]):
                continue
            if name == "voxel_energy" and v["fine_grid_ok"]:
                continue
            bad.append(f"separation power {name} (official on {label}): official "
                       f"{v['official']:.10g}, showerformer {v['ours']:.10g}")
    return bad


def _moved(x: dict[str, Any]) -> float:
    return float(x["entries"]) if "fine_grid_ok" in x else float(x["showers_moved"])


def print_report(result: dict[str, Any], opts: argparse.Namespace, bad: list[str]) -> None:
    """Tables of one variant."""
    v = result["variant"]
    print(f"\n=== official variant: {v} (min_energy {result['min_energy']:.6g} MeV; "
          f"showerformer threshold {result['showerformer_threshold']:.6g} MeV, floor "
          f"{result['showerformer_floor']}) ===")
    if result["patches"]:
        print("adapted at run time (HighLevelFeatures.radial_center_mult, same values): "
              + "; ".join(result["patches"]))
    for w in result["official_warnings"]:
        print(f"official code warned: {w}")
    g = result["geometry"]
    print(f"geometry: {int(g['n_cells'])} cells; max |d eta| {g['eta']:.2e} mm, |d phi| "
          f"{g['phi']:.2e} mm, |d r| {g['r']:.2e} mm; layer bounds "
          f"{'equal' if g['layer_bounds_equal'] else 'DIFFER'}")
    print(f"\n(a) features: official on the stored {result['stored_dtype']} arrays | on float64 "
          f"arrays (tolerance {opts.rtol:g} | {opts.rtol64:g} relative)")
    print(f"{'group':<24}{'values':>9}{'skipped':>8}{'max rel':>11}{'max abs':>11}"
          f"{'rel f64':>11}{'abs f64':>11}")
    for name, f in result["features"].items():
        print(f"{name:<24}{f['n']:>9}{f['skipped']:>8}{f['stored']['rel']:>11.2e}"
              f"{f['stored']['abs']:>11.2e}{f['float64']['rel']:>11.2e}"
              f"{f['float64']['abs']:>11.2e}")
    print(f"\n(b) separation powers S: official helper on the stored arrays | on float64 arrays "
          f"(tolerance {opts.atol_sep:g})")
    groups: dict[str, list[str]] = {}
    for name in result["separation"]:
        groups.setdefault(_group(name), []).append(name)
    print(f"{'histograms':<22}{'n':>4}{'max |dS|':>10}{'moved':>7}{'ties':>6}"
          f"{'|dS| f64':>10}{'moved':>7}{'max dbins':>10}{'S official':>28}")
    for gname, names in groups.items():
        st = [result["separation"][n] for n in names]
        sf = [result["separation_float64"][n] for n in names]
        vals = [x["official"] for x in st]
        n_nan = sum(math.isnan(x) for x in vals)
        fin = [x for x in vals if not math.isnan(x)] or [math.nan]
        rng = (f"{min(fin):.2e}..{max(fin):.2e}" if len(vals) > 1 else f"{vals[0]:.4e}")
        rng += f" ({n_nan} NaN)" if n_nan else ""
        print(f"{gname:<22}{len(names):>4}{max(x['abs'] for x in st):>10.1e}"
              f"{sum(_moved(x) for x in st):>7.4g}{sum(x['edge_ties'] for x in st):>6}"
              f"{max(x['abs'] for x in sf):>10.1e}{sum(_moved(x) for x in sf):>7.4g}"
              f"{max(x['d_bins'] for x in st):>10.1e}{rng:>28}")
    print("moved: showers counted in another bin (voxel_energy: sum of |count differences|); "
          "ties: of them, on an official bin edge")
    vox = result["separation"].get("voxel_energy")
    if vox is not None:
        v64 = result["separation_float64"]["voxel_energy"]
        print(f"voxel_energy: S official {vox['official']:.6e}, showerformer {vox['ours']:.6e}; "
              "count differences within the fine-grid allowance of "
              f"{vox['fine_grid_allowance']:.0f} entries: {vox['fine_grid_ok']} | float64 run: "
              f"{v64['fine_grid_ok']}")
    if "classifier" in result:
        c = result["classifier"]
        s = c["settings"]
        print(f"\n(c) classifier {c['mode']}: DNN {'x'.join(map(str, s['hidden']))}, "
              f"{s['epochs']} epochs, lr {s['lr']:g}, batch {s['batch_size']}, "
              f"{s['repeats']} repeats, float64, CPU; inputs differ by at most "
              f"{c['input_max_rel_diff']:.2e} | {c['input_max_rel_diff_float64']:.2e} (float64 "
              "run), relative to each column's largest |value|")
        for who in ("official", "ours"):
            r = c[who]
            print(f"  {who:<9} AUC {r['auc_mean']:.4f} ± {r['auc_std']:.4f}  "
                  f"(runs {', '.join(f'{a:.4f}' for a in r['aucs'])}; best epochs "
                  f"{r['best_epochs']}; {r['seconds']:.0f} s)")
        if not math.isnan(c["z"]):
            print(f"  difference of the means: {c['z']:+.2f} standard errors "
                  "(sqrt((std_a^2 + std_b^2) / repeats))")
    sec = result["seconds"]
    print(f"\ntime: official {sec['official']:.1f} s (+{sec['official_float64']:.1f} s float64 "
          f"run), showerformer {sec['showerformer']:.1f} s")
    print("result: " + ("AGREE" if not bad else "DISAGREE\n  " + "\n  ".join(bad)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official-code", type=Path, required=True,
                   help="the code/ folder of a CaloChallenge/homepage checkout")
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--reference", type=Path, help="reference CaloChallenge HDF5 file")
    p.add_argument("--generated", type=Path, help="generated CaloChallenge HDF5 file")
    p.add_argument("--simulate", type=int, metavar="N",
                   help="instead of files: N showers of the built-in simulator per sample "
                        "(seed 1 = reference, seed 2 = generated)")
    p.add_argument("--scale-generated", type=float, default=1.0, metavar="S",
                   help="with --simulate: multiply the generated voxel energies by S, a known "
                        "mismodelling for the classifier to find")
    p.add_argument("--workdir", type=Path,
                   help="where simulated files and the official outputs go (default temporary)")
    p.add_argument("--xml", type=Path,
                   help="binning XML (default: binning_dataset_<dataset>.xml in --official-code)")
    p.add_argument("--variant", choices=["main", "more_evaluations", "both"], default="both")
    p.add_argument("--rtol", type=float, default=1e-6, help="feature tolerance (relative)")
    p.add_argument("--rtol64", type=float, default=1e-9,
                   help="feature tolerance (relative) against the official code on float64")
    p.add_argument("--atol-sep", type=float, default=1e-9,
                   help="separation-power tolerance (absolute)")
    p.add_argument("--classifier", action="store_true",
                   help="also compare the classifier test (main variant, main-branch "
                        "evaluate.py)")
    p.add_argument("--cls-mode", choices=["low", "low-normed", "high"], default="low")
    p.add_argument("--cls-epochs", type=int, default=5)
    p.add_argument("--cls-hidden", type=int, default=512, help="512 main, 2048 more_evaluations")
    p.add_argument("--cls-layers", type=int, default=2, help="cls_n_layer (hidden layers - 1)")
    p.add_argument("--cls-lr", type=float, default=2e-4)
    p.add_argument("--cls-batch", type=int, default=1000)
    p.add_argument("--cls-repeats", type=int, default=3)
    p.add_argument("--cls-threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the classifier runs")
    p.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    return p


def _scale_file(path: Path, factor: float) -> None:
    """Multiply every voxel energy of a CaloChallenge file by ``factor`` (rewritten in place)."""
    import dataclasses

    from showerformer.io.calochallenge import read_calochallenge, write_calochallenge

    showers = read_calochallenge(path)
    write_calochallenge(path, dataclasses.replace(showers, energies=showers.energies * factor))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    opts = _parser().parse_args(argv)
    t_start = time.perf_counter()
    if (opts.simulate is None) == (opts.reference is None or opts.generated is None):
        raise SystemExit("error: give --reference and --generated, or --simulate N")
    code_dir = opts.official_code.expanduser().resolve()
    if opts.xml is None:
        opts.xml = code_dir / f"binning_dataset_{opts.dataset.replace('-', '_')}.xml"
    if not opts.xml.is_file():
        raise SystemExit(f"error: binning file {opts.xml} not found (use --xml)")
    if opts.cls_threads:
        import torch

        torch.set_num_threads(opts.cls_threads)
    off = load_official(code_dir)
    with contextlib.ExitStack() as stack:
        if opts.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            workdir = opts.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        if opts.simulate is not None:
            from showerformer.simulation import simulate_to_file

            preset = DATASETS[opts.dataset][0]
            t0 = time.perf_counter()
            ref_path, gen_path = workdir / "reference.hdf5", workdir / "generated.hdf5"
            simulate_to_file(ref_path, preset, n=opts.simulate, seed=1, progress=False)
            simulate_to_file(gen_path, preset, n=opts.simulate, seed=2, progress=False)
            if opts.scale_generated != 1.0:
                _scale_file(gen_path, opts.scale_generated)
            print(f"simulated 2 x {opts.simulate} {preset} showers in "
                  f"{time.perf_counter() - t0:.1f} s")
        else:
            ref_path, gen_path = opts.reference, opts.generated
        print(f"official code: {code_dir}\nreference: {ref_path}\ngenerated: {gen_path}\n"
              f"binning: {opts.xml}")
        variants = ["main", "more_evaluations"] if opts.variant == "both" else [opts.variant]
        results, failed = [], False
        for variant in variants:
            res = compare(opts, off, ref_path, gen_path, variant, workdir / "official")
            bad = check(res, opts)
            res["failures"] = bad
            failed |= bool(bad)
            print_report(res, opts, bad)
            results.append(res)
    total = time.perf_counter() - t_start
    print(f"\ntotal time {total:.1f} s")
    if opts.json:
        opts.json.write_text(json.dumps({"dataset": opts.dataset, "results": results,
                                         "seconds": total}, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
