"""HEP-style evaluation plots (matplotlib + mplhep, Agg canvas): features, profiles, showers, regression.

Every function draws one figure on a non-interactive Agg canvas (no pyplot state, so nothing is left
open and no GUI backend is touched), writes it as a PNG through an atomic rename and returns the
path. matplotlib and mplhep are imported lazily (``pip install 'showerformer[plot]'``).

References:
    CaloChallenge 2022 evaluation (histograms with ratio panels, average showers per layer in polar
    coordinates), https://calochallenge.github.io/homepage/ (arXiv:2410.21611); separation power,
    arXiv:2009.03796 eq. 15.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from showerformer._atomic import atomic_path
from showerformer.errors import InputError, require
from showerformer.geometry import CartesianGeometry, CylindricalGeometry, Geometry

__all__ = [
    "FeatureHistogram",
    "feature_family",
    "feature_histograms",
    "feature_label",
    "plot_attention_matrix",
    "plot_average_shower",
    "plot_binned_metric",
    "plot_embedding_pca",
    "plot_feature",
    "plot_feature_group",
    "plot_feature_set",
    "plot_learning_curve",
    "plot_pred_vs_true",
    "plot_profile",
    "plot_profiles",
    "plot_residuals",
    "plot_resolution",
    "plot_shower_projections",
]

PathLike = str | os.PathLike[str]

_DPI = 100
_REF_COLOR = "#9c9ca1"  # grey fill for the reference
_GEN_COLOR = "#e42536"  # red line for the generated sample
_COLORS = ("#5790fc", "#f89c20", "#e42536", "#964a8b", "#9c9ca1", "#7a21dd")
_RATIO_RANGE = (0.5, 1.5)


# ---------------------------------------------------------------------------- infrastructure
def _modules() -> SimpleNamespace:
    """matplotlib, mplhep and the Agg canvas, imported on first use."""
    mpl = require("matplotlib", "plot", "Plotting the evaluation")
    hep = require("mplhep", "plot", "HEP-style evaluation plots")
    from matplotlib import colors, ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return SimpleNamespace(mpl=mpl, hep=hep, Figure=Figure, Canvas=FigureCanvasAgg, colors=colors,
                           ticker=ticker)


def _style(m: SimpleNamespace, font_size: float, minor: bool) -> list[dict[str, Any]]:
    """mplhep's ROOT-like style with sizes scaled to the figure."""
    scale = font_size / 26.0
    return [m.hep.style.ROOT, {
        "xtick.minor.visible": minor, "ytick.minor.visible": minor,
        "font.size": font_size,
        "axes.linewidth": max(0.8, 2.0 * scale),
        "xtick.major.size": 12 * scale, "xtick.minor.size": 6 * scale,
        "ytick.major.size": 12 * scale, "ytick.minor.size": 6 * scale,
        "xtick.major.pad": 6 * scale, "ytick.major.pad": 6 * scale,
        "lines.linewidth": max(1.0, 2.0 * scale),
    }]


@contextlib.contextmanager
def _figure(path: PathLike, figsize: tuple[float, float], *, font_size: float = 14,
            dpi: int = _DPI, constrained: bool = True, minor: bool = True) -> Iterator[Any]:
    """A Figure on an Agg canvas; saved as PNG to ``path`` (atomically) on exit.

    Large grids pass ``constrained=False`` and ``minor=False``: the constrained layout and minor
    ticks of a hundred axes cost seconds. The figure is not cleared afterwards (clearing a
    hundred axes costs seconds too); nothing else refers to it, so it is simply collected.
    """
    m = _modules()
    with m.mpl.style.context(_style(m, font_size, minor)):
        fig = m.Figure(figsize=figsize, dpi=dpi,
                       layout="constrained" if constrained else None)
        m.Canvas(fig)
        yield fig
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")


def _out(path: PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise InputError(f"plot path {p} does not end in .png", key="path",
                         expected="a .png file name")
    return p


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def _is_log_binning(edges: np.ndarray) -> bool:
    if len(edges) < 3 or edges[0] <= 0:
        return False
    ratios = edges[1:] / edges[:-1]
    return bool(np.allclose(ratios, ratios[0], rtol=1e-6)) and ratios[0] > 1.0 + 1e-9


def _density(counts: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Density normalized by the entries inside the range (as ``np.histogram(density=True)``)
    and its Poisson error; zeros when no entry falls inside."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    widths = np.diff(edges)
    if total <= 0:
        return np.zeros(len(widths)), np.zeros(len(widths))
    return counts / (total * widths), np.sqrt(counts) / (total * widths)


# ---------------------------------------------------------------------------- labels
_LAYERED = re.compile(r"^(?P<family>.+?)_(?P<layer>\d+)$")

_FAMILY_LABELS = {
    "E_layer": r"$E_\mathrm{layer}$ [MeV]",
    "EC_eta": r"centre of energy in $\eta$ [mm]",
    "EC_phi": r"centre of energy in $\phi$ [mm]",
    "EC_r": r"centre of energy in $r$ [mm]",
    "width_eta": r"width in $\eta$ [mm]",
    "width_phi": r"width in $\phi$ [mm]",
    "width_r": r"width in $r$ [mm]",
    "sparsity": "sparsity (fraction of empty voxels)",
}
_SINGLE_LABELS = {
    "E_tot/E_inc": r"$E_\mathrm{tot} / E_\mathrm{inc}$",
    "n_hits": "number of voxels above threshold",
    "voxel_energy": "voxel energy [MeV]",
}


def feature_label(name: str) -> str:
    """An axis label for a feature name such as ``"E_layer_12"`` or ``"E_tot/E_inc"``.

    Arguments:
        name: the feature name as used in ``FeatureSet.features``.

    Returns:
        A matplotlib label (mathtext), e.g. ``"$E_\\mathrm{layer}$ [MeV], layer 12"``.
    """
    if name in _SINGLE_LABELS:
        return _SINGLE_LABELS[name]
    match = _LAYERED.match(name)
    if match and match["family"] in _FAMILY_LABELS:
        return f"{_FAMILY_LABELS[match['family']]}, layer {int(match['layer'])}"
    return name


# ---------------------------------------------------------------------------- histograms
@dataclass
class FeatureHistogram:
    """One feature to draw: the counts of both samples in common bins and the separation power
    to print (None to leave it out).

    Attributes:
        name: the feature name (e.g. ``"E_layer_3"``, ``"voxel_energy"``).
        reference: reference counts per bin, (n_bins,); entries outside the edges not included.
        generated: generated counts per bin, (n_bins,).
        edges: bin edges, (n_bins + 1,).
        separation_power: the value to print in the legend, or None.
    """

    name: str
    reference: np.ndarray
    generated: np.ndarray
    edges: np.ndarray
    separation_power: float | None = None

    def __post_init__(self) -> None:
        self.edges = _check_edges(self.edges, self.name)
        self.reference = np.asarray(self.reference, dtype=np.float64).reshape(-1)
        self.generated = np.asarray(self.generated, dtype=np.float64).reshape(-1)
        n = len(self.edges) - 1
        for counts in (self.reference, self.generated):
            if not np.isfinite(counts).all() or (counts < 0).any():
                raise InputError(f"counts of {self.name or 'a feature'} are negative or not "
                                 "finite", key="counts", expected="finite counts >= 0")
        if len(self.reference) != n or len(self.generated) != n:
            raise InputError(f"{len(self.reference)} and {len(self.generated)} counts for {n} "
                             f"bins of {self.name or 'a feature'}", key="counts",
                             expected="one count per bin")

    @classmethod
    def from_values(cls, name: str, reference: Any, generated: Any, edges: Any,
                    separation_power: float | None = None) -> FeatureHistogram:
        """Histogram per-shower values (non-finite values and values outside the edges are
        dropped).

        Arguments:
            name: the feature name.
            reference, generated: per-shower values, (N_ref,) and (N_gen,).
            edges: bin edges, (n_bins + 1,).
            separation_power: the value to print, or None.

        Returns:
            The histogram.
        """
        e = _check_edges(edges, name)
        ref, _ = np.histogram(_finite(reference), bins=e)
        gen, _ = np.histogram(_finite(generated), bins=e)
        return cls(name, ref, gen, e, separation_power)


def _hist_ratio(ax: Any, rax: Any, h: FeatureHistogram, *, labels: tuple[str, str],
                logx: bool | None, logy: bool, compact: bool, xlabel: str | None) -> None:
    """Reference (filled) vs generated (step) densities on ``ax`` and generated/reference on
    ``rax``."""
    m = _modules()
    edges = np.asarray(h.edges, dtype=np.float64)
    ref, ref_err = _density(h.reference, edges)
    gen, gen_err = _density(h.generated, edges)
    if compact:  # plain stairs: a grid of a hundred panels stays fast to draw
        ax.stairs(ref, edges, fill=True, color=_REF_COLOR, alpha=0.6, label=labels[0])
        ax.stairs(gen, edges, color=_GEN_COLOR, label=labels[1])
    else:
        m.hep.histplot(ref, edges, ax=ax, histtype="fill", color=_REF_COLOR, alpha=0.6,
                       label=labels[0], flow=None)
        m.hep.histplot(gen, edges, yerr=gen_err, ax=ax, histtype="step", color=_GEN_COLOR,
                       label=labels[1], flow=None)
    if logx is None:
        logx = _is_log_binning(edges)
    if logx:
        ax.set_xscale("log")
        rax.set_xscale("log")
    if compact:
        for axis in (ax.xaxis, rax.xaxis):
            if logx:
                axis.set_major_locator(m.ticker.LogLocator(base=10.0, numticks=4))
            else:
                axis.set_major_locator(m.ticker.MaxNLocator(4))
            axis.set_minor_locator(m.ticker.NullLocator())
    if logy and (ref > 0).any():
        ax.set_yscale("log")
    # legend: the two samples and the separation power
    from matplotlib.lines import Line2D

    handles, names = ax.get_legend_handles_labels()
    if h.separation_power is not None and np.isfinite(h.separation_power):
        handles.append(Line2D([], [], linestyle="none"))
        names.append(f"S = {h.separation_power:.4f}")
    if compact:
        if len(handles) > 2:
            ax.legend(handles[2:], names[2:], loc="upper right", handlelength=0,
                      fontsize="small")
    else:
        ax.legend(handles, names, loc="best")
    ax.set_ylabel("normalized entries" if not compact else "")
    ax.tick_params(labelbottom=False)
    ax.set_xlim(edges[0], edges[-1])
    # ratio panel
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ref > 0, gen / ref, np.nan)
        ratio_err = np.where(ref > 0, np.hypot(gen_err / ref, gen * ref_err / ref**2), np.nan)
    centers = np.sqrt(edges[1:] * edges[:-1]) if logx else 0.5 * (edges[1:] + edges[:-1])
    rax.errorbar(centers, ratio, yerr=ratio_err, fmt="o", color=_GEN_COLOR,
                 markersize=2.5 if compact else 4, elinewidth=1)
    rax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    rax.set_ylim(*_RATIO_RANGE)
    rax.set_xlim(edges[0], edges[-1])
    if not compact:
        rax.set_ylabel("gen / ref")
    if xlabel:
        rax.set_xlabel(xlabel)


def plot_feature(
    histogram: FeatureHistogram,
    path: PathLike,
    *,
    xlabel: str | None = None,
    labels: tuple[str, str] = ("Reference", "Generated"),
    logx: bool | None = None,
    logy: bool = False,
    title: str | None = None,
) -> Path:
    """One feature: reference (filled) and generated (step, with Poisson errors) densities, a
    generated / reference ratio panel and the separation power in the legend.

    Densities are normalized to the entries inside the binning, as in the CaloChallenge
    evaluation (entries outside are dropped, not piled into the edge bins).

    Arguments:
        histogram: the counts of both samples (see :meth:`FeatureHistogram.from_values`).
        path: the PNG to write.
        xlabel: the x-axis label (default :func:`feature_label` of the feature name).
        labels: legend names of the two samples.
        logx: logarithmic x axis; None picks it for geometric binnings.
        logy: logarithmic y axis.
        title: an optional title.

    Returns:
        The path written.
    """
    path = _out(path)
    with _figure(path, (7.0, 6.5), font_size=15) as fig:
        gs = fig.add_gridspec(2, 1, height_ratios=(3, 1))
        ax = fig.add_subplot(gs[0])
        rax = fig.add_subplot(gs[1], sharex=ax)
        _hist_ratio(ax, rax, histogram, labels=labels, logx=logx, logy=logy, compact=False,
                    xlabel=xlabel if xlabel is not None else feature_label(histogram.name))
        if title:
            ax.set_title(title)
    return path


def _check_edges(edges: Any, name: str) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64).reshape(-1)
    if len(e) < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise InputError(f"bin edges of {name or 'a feature'} are not increasing", key="edges",
                         expected="at least two increasing finite edges")
    return e


def _panel_title(name: str) -> str:
    per_energy = _PER_ENERGY.match(name)
    if per_energy:
        e = int(per_energy["energy"])
        return f"E_inc in [{e}, {2 * e}) MeV"
    match = _LAYERED.match(name)
    return f"layer {int(match['layer'])}" if match else name


def plot_feature_group(
    histograms: Sequence[FeatureHistogram],
    path: PathLike,
    *,
    xlabel: str | None = None,
    title: str | None = None,
    labels: tuple[str, str] = ("Reference", "Generated"),
    logy: bool = False,
    ncols: int | None = None,
) -> Path:
    """A grid of histogram + ratio panels, one per feature, e.g. one feature family over all
    layers; each panel shows its separation power and is titled by its layer.

    Arguments:
        histograms: the features to draw, in panel order.
        path: the PNG to write.
        xlabel: the common x-axis label (default: the family label of the first feature).
        title: the figure title; the sample names go there too.
        labels: names of the reference and generated samples.
        logy: logarithmic y axes.
        ncols: panels per row (default: about 1.6 times as many columns as rows).

    Returns:
        The path written.
    """
    path = _out(path)
    if not histograms:
        raise InputError("no features to plot", key="histograms", expected="at least one")
    m = _modules()
    n = len(histograms)
    ncols = ncols or max(1, min(n, math.ceil(math.sqrt(n * 1.6))))
    nrows = math.ceil(n / ncols)
    if xlabel is None:
        match = _LAYERED.match(histograms[0].name)
        xlabel = (_FAMILY_LABELS.get(match["family"], match["family"]) if match
                  else feature_label(histograms[0].name))
    head = f"{title}: " if title else ""
    suptitle = (f"{head}{labels[0]} (filled) vs {labels[1]} (red), ratio {labels[1]} / "
                f"{labels[0]}; S = separation power")
    width, height = 2.9 * ncols, 2.7 * nrows + 0.8
    with _figure(path, (width, height), font_size=9, constrained=False, minor=False) as fig:
        outer = fig.add_gridspec(nrows, ncols, left=0.45 / width, right=1 - 0.15 / width,
                                 bottom=0.55 / height, top=1 - 0.8 / height, wspace=0.28,
                                 hspace=0.32)
        for i, h in enumerate(histograms):
            inner = outer[i // ncols, i % ncols].subgridspec(2, 1, height_ratios=(3, 1), hspace=0)
            ax = fig.add_subplot(inner[0])
            rax = fig.add_subplot(inner[1], sharex=ax)
            _hist_ratio(ax, rax, h, labels=labels, logx=None, logy=logy, compact=True,
                        xlabel=None)
            ax.set_title(_panel_title(h.name), fontsize=9)
            ax.yaxis.set_major_locator(m.ticker.MaxNLocator(4))
            rax.yaxis.set_major_locator(m.ticker.FixedLocator([0.5, 1.0]))
        fig.supxlabel(xlabel)
        fig.suptitle(suptitle, fontsize=10)
    return path


_SINGLE_FEATURES = ("E_tot/E_inc", "E_tot", "n_hits", "voxel_energy")
_GROUP_ORDER = ("E_layer", "EC_eta", "EC_phi", "width_eta", "width_phi", "EC_r", "width_r",
                "sparsity", "E_tot/E_inc_at_E")
_PER_ENERGY = re.compile(r"^E_tot/E_inc_at_E_(?P<energy>\d+)$")


def feature_family(name: str) -> str | None:
    """The per-layer (or dataset-1 per-energy) family of a histogram name: ``"E_layer_3"`` ->
    ``"E_layer"``, ``"E_tot/E_inc_at_E_256"`` -> ``"E_tot/E_inc_at_E"``; None for the single
    histograms (``E_tot/E_inc``, ``E_tot``, ``n_hits``, ``voxel_energy``)."""
    if name in _SINGLE_FEATURES:
        return None
    if _PER_ENERGY.match(name):
        return "E_tot/E_inc_at_E"
    match = _LAYERED.match(name)
    return match["family"] if match else None


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("/", "_over_")).strip("_")


def feature_histograms(
    reference: Any,
    generated: Any,
    *,
    names: Sequence[str] | None = None,
    separation_powers: Mapping[str, float] | None = None,
) -> tuple[dict[str, FeatureHistogram], dict[str, str]]:
    """Histograms of two :class:`~showerformer.evaluation.features.FeatureSet` objects in the
    official binnings (from the reference sample).

    Arguments:
        reference, generated: the feature sets (same geometry).
        names: the histograms to make (default ``histogram_names(geometry)``).
        separation_powers: values to print, by name.

    Returns:
        (histograms by name, reasons by name for those that could not be binned, e.g. a layer
        without any reference energy above the threshold).
    """
    from showerformer.evaluation import features as F

    geo = reference.geometry
    names = list(names) if names is not None else F.histogram_names(geo)
    sp = separation_powers or {}
    out: dict[str, FeatureHistogram] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            edges = F.official_binning(name, geo, reference=reference)
            ref = reference.histogram(name, edges)
            gen = generated.histogram(name, edges)
        except InputError as exc:
            skipped[name] = str(exc)
            continue
        value = sp.get(name)
        out[name] = FeatureHistogram(name, ref, gen, edges,
                                     None if value is None else float(value))
    return out, skipped


def plot_feature_set(
    reference: Any,
    generated: Any,
    out_dir: PathLike,
    *,
    separation_powers: Mapping[str, float] | None = None,
    names: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    labels: tuple[str, str] = ("Reference", "Generated"),
) -> list[Path]:
    """Every feature histogram of two samples: one figure per single feature
    (``hist_E_tot_over_E_inc.png``, ``hist_voxel_energy.png``, ...) and one grid per per-layer
    family (``hist_E_layer.png``, ``hist_EC_eta.png``, ...; dataset 1 also
    ``hist_E_tot_over_E_inc_at_E.png``, one panel per incident energy).

    Arguments:
        reference, generated: the :class:`~showerformer.evaluation.features.FeatureSet` objects.
        out_dir: the folder of the PNGs.
        separation_powers: values to print, by histogram name.
        names: the histograms to draw (default all of ``histogram_names``).
        layers: draw only these layers in the per-layer grids (default all).
        labels: names of the two samples.

    Returns:
        The paths written, singles first, then the grids in a fixed family order.
    """
    out_dir = Path(out_dir)
    hists, _ = feature_histograms(reference, generated, names=names,
                                  separation_powers=separation_powers)
    keep = None if layers is None else {int(layer) for layer in layers}
    singles: list[FeatureHistogram] = []
    groups: dict[str, list[FeatureHistogram]] = {}
    for name, h in hists.items():
        family = feature_family(name)
        if family is None:
            singles.append(h)
            continue
        match = _LAYERED.match(name)
        if (keep is not None and family != "E_tot/E_inc_at_E" and match
                and int(match["layer"]) not in keep):
            continue
        groups.setdefault(family, []).append(h)
    paths = []
    for h in singles:
        logy = h.name in ("voxel_energy",)
        paths.append(plot_feature(h, out_dir / f"hist_{_file_stem(h.name)}.png", labels=labels,
                                  logy=logy))
    order = [f for f in _GROUP_ORDER if f in groups] + [f for f in groups
                                                         if f not in _GROUP_ORDER]
    for family in order:
        title = ("E_tot / E_inc per incident energy" if family == "E_tot/E_inc_at_E"
                 else family)
        xlabel = (_SINGLE_LABELS["E_tot/E_inc"] if family == "E_tot/E_inc_at_E" else None)
        paths.append(plot_feature_group(groups[family],
                                        out_dir / f"hist_{_file_stem(family)}.png",
                                        title=title, xlabel=xlabel, labels=labels))
    return paths


def plot_profiles(
    reference: Any,
    generated: Any,
    out_dir: PathLike,
    *,
    labels: tuple[str, str] = ("Reference", "Generated"),
) -> list[Path]:
    """Longitudinal (mean energy per layer) and radial (mean energy per radial bin, summed over
    layers) profiles of two feature sets: ``profile_longitudinal.png``, ``profile_radial.png``.

    Arguments:
        reference, generated: the :class:`~showerformer.evaluation.features.FeatureSet` objects.
        out_dir: the folder of the PNGs.
        labels: names of the two samples.

    Returns:
        The two paths written.
    """
    out_dir = Path(out_dir)
    n_layers = len(reference.longitudinal_profile)
    layer_edges = np.arange(n_layers + 1) - 0.5
    paths = [plot_profile(np.arange(n_layers), reference.longitudinal_profile,
                          generated.longitudinal_profile, out_dir / "profile_longitudinal.png",
                          xlabel="layer", ylabel="mean energy per layer [MeV]",
                          x_edges=layer_edges, labels=labels, title="longitudinal profile")]
    r_edges = np.asarray(reference.radial_edges, dtype=np.float64)
    paths.append(plot_profile(0.5 * (r_edges[1:] + r_edges[:-1]), reference.radial_profile,
                              generated.radial_profile, out_dir / "profile_radial.png",
                              xlabel="r [mm]", ylabel="mean energy per radial bin [MeV]",
                              x_edges=r_edges, labels=labels, title="radial profile"))
    return paths


# ---------------------------------------------------------------------------- profiles
def plot_profile(
    x: Any,
    reference: Any,
    generated: Any,
    path: PathLike,
    *,
    xlabel: str,
    ylabel: str,
    reference_err: Any = None,
    generated_err: Any = None,
    labels: tuple[str, str] = ("Reference", "Generated"),
    x_edges: Any = None,
    logy: bool = True,
    title: str | None = None,
) -> Path:
    """A mean profile (e.g. energy per layer or per radial bin) of both samples with a ratio
    panel.

    Arguments:
        x: bin centres, (n,).
        reference, generated: profile values, (n,).
        path: the PNG to write.
        xlabel, ylabel: axis labels.
        reference_err, generated_err: optional uncertainties, (n,).
        labels: names of the two samples.
        x_edges: bin edges (n + 1,); when given the profiles are drawn as histograms.
        logy: logarithmic y axis (when some value is positive).
        title: an optional title.

    Returns:
        The path written.
    """
    path = _out(path)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    gen = np.asarray(generated, dtype=np.float64).reshape(-1)
    if not (len(x) == len(ref) == len(gen)) or len(x) == 0:
        raise InputError(f"profile lengths {len(x)}, {len(ref)}, {len(gen)} differ",
                         key="profile", expected="one value per bin for both samples")
    ref_err = None if reference_err is None else np.asarray(reference_err, float).reshape(-1)
    gen_err = None if generated_err is None else np.asarray(generated_err, float).reshape(-1)
    m = _modules()
    with _figure(path, (7.0, 6.5), font_size=15) as fig:
        gs = fig.add_gridspec(2, 1, height_ratios=(3, 1))
        ax = fig.add_subplot(gs[0])
        rax = fig.add_subplot(gs[1], sharex=ax)
        if x_edges is not None:
            edges = _check_edges(x_edges, "profile")
            m.hep.histplot(ref, edges, ax=ax, histtype="fill", color=_REF_COLOR, alpha=0.6,
                           label=labels[0], flow=None)
            m.hep.histplot(gen, edges, yerr=gen_err if gen_err is not None else False, ax=ax,
                           histtype="step", color=_GEN_COLOR, label=labels[1], flow=None)
        else:
            ax.errorbar(x, ref, yerr=ref_err, fmt="s-", color=_REF_COLOR, label=labels[0],
                        markersize=4)
            ax.errorbar(x, gen, yerr=gen_err, fmt="o--", color=_GEN_COLOR, label=labels[1],
                        markersize=4)
        if logy and (ref > 0).any():
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend(loc="best")
        ax.tick_params(labelbottom=False)
        if title:
            ax.set_title(title)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ref > 0, gen / ref, np.nan)
            err = None
            if gen_err is not None or ref_err is not None:
                ge = gen_err if gen_err is not None else np.zeros_like(gen)
                re_ = ref_err if ref_err is not None else np.zeros_like(ref)
                err = np.where(ref > 0, np.hypot(ge / ref, gen * re_ / ref**2), np.nan)
        rax.errorbar(x, ratio, yerr=err, fmt="o", color=_GEN_COLOR, markersize=3)
        rax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        rax.set_ylim(*_RATIO_RANGE)
        rax.set_ylabel("gen / ref")
        rax.set_xlabel(xlabel)
    return path


# ---------------------------------------------------------------------------- showers
def _log_norm(m: SimpleNamespace, values: np.ndarray, vmin: float | None,
              vmax: float | None) -> Any:
    positive = values[values > 0]
    top = float(vmax) if vmax is not None else float(positive.max()) if positive.size else 1.0
    if vmin is not None:
        bottom = float(vmin)
    else:
        floor = float(positive.min()) if positive.size else top * 1e-6
        bottom = max(floor, top * 1e-6)
    if not bottom < top:
        bottom = top / 10.0
    return m.colors.LogNorm(vmin=bottom, vmax=top)


def _cell_energies(energies: Any, geometry: Geometry, what: str) -> np.ndarray:
    e = np.asarray(energies, dtype=np.float64).reshape(-1)
    if e.shape != (geometry.n_cells,):
        raise InputError(f"{what} has {e.size} values", key=what,
                         expected=f"{geometry.n_cells} cells of {geometry.name}")
    if not np.isfinite(e).all():
        raise InputError(f"{what} contains NaN or inf", key=what, expected="finite energies")
    return e


def plot_average_shower(
    mean_energies: Any,
    geometry: Geometry,
    path: PathLike,
    *,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """The average shower on a logarithmic colour scale.

    Cylindrical geometries: one polar image per non-empty layer (angle = alpha bin, radius =
    radial bin; the radius is drawn on a log(1 + r / mm) scale when the radial bins are uneven),
    as the CaloChallenge ``DrawAverageShower``. Cartesian grids: the energy summed onto the
    x-y, x-z and y-z planes.

    Arguments:
        mean_energies: mean energy per cell in MeV, (n_cells,).
        geometry: the geometry the cells belong to.
        path: the PNG to write.
        title: the figure title.
        vmin, vmax: colour range per cell in MeV (default: from the data, at most 6 decades);
            pass the same values for the reference and the generated sample to compare them.
            On the projections of Cartesian grids the upper end is multiplied by the number
            of cells summed along the projected axis.

    Returns:
        The path written.
    """
    path = _out(path)
    e = _cell_energies(mean_energies, geometry, "mean shower")
    if isinstance(geometry, CartesianGeometry):
        return _draw_projections(e[None], geometry, path, titles=[title or "average shower"],
                                      vmin=vmin, vmax=vmax, label="mean energy [MeV]")
    if not isinstance(geometry, CylindricalGeometry):
        raise InputError(f"cannot draw showers of a {type(geometry).__name__}", key="geometry",
                         expected="a cylindrical or Cartesian geometry")
    m = _modules()
    layers = geometry.relevant_layers
    n = len(layers)
    ncols = min(n, 9)
    nrows = math.ceil(n / ncols)
    uneven = any(not np.allclose(np.diff(geometry.layers[i].r_edges),
                                 np.diff(geometry.layers[i].r_edges)[0]) for i in layers)
    rmax = max(float(geometry.layers[i].r_edges[-1]) for i in layers)
    norm = _log_norm(m, e, vmin, vmax)
    width, height = 1.9 * ncols + 0.6, 2.0 * nrows + 1.4
    with _figure(path, (width, height), font_size=8, constrained=False, minor=False) as fig:
        gs = fig.add_gridspec(nrows, ncols, left=0.3 / width, right=1 - 0.3 / width,
                              bottom=1.0 / height, top=1 - 0.5 / height, wspace=0.1, hspace=0.25)
        axes = [fig.add_subplot(gs[k // ncols, k % ncols], projection="polar") for k in range(n)]
        mesh = None
        for ax, layer in zip(axes, layers, strict=True):
            lay = geometry.layers[layer]
            values = e[geometry.layer_slice(layer)].reshape(lay.n_alpha, lay.n_r)
            split = max(1, math.ceil(96 / lay.n_alpha))  # smooth arcs: sub-divide alpha bins
            theta = np.linspace(-math.pi, math.pi, lay.n_alpha * split + 1)
            radii = np.log1p(lay.r_edges) if uneven else lay.r_edges
            shown = np.repeat(values, split, axis=0).T  # (n_r, n_alpha * split)
            shown = np.where(shown > 0, shown, np.nan)
            mesh = ax.pcolormesh(theta, radii, shown, norm=norm, cmap="viridis", shading="flat")
            ax.set_ylim(0, math.log1p(rmax) if uneven else rmax)
            ax.grid(False)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {layer}", fontsize=8, pad=2)
        if mesh is not None:
            cax = fig.add_axes((0.2, 0.35 / height, 0.6, 0.15 / height))
            cbar = fig.colorbar(mesh, cax=cax, orientation="horizontal")
            cbar.set_label("mean energy per voxel [MeV]")
        scale = "log(1 + r/mm)" if uneven else "linear in r"
        fig.suptitle(f"{title or 'average shower'} ({geometry.name}; radius {scale}, "
                     f"r_max = {rmax:g} mm)")
    return path


def _projections(energies: np.ndarray, geometry: Geometry, *, samples_per_cell: int,
                 n_transverse: int, seed: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Energy summed onto the x-y, x-z and y-z planes for each shower (rows of ``energies``).

    Cartesian grids are summed exactly; other geometries are sampled: ``samples_per_cell``
    points drawn uniformly inside every hit cell, each carrying its share of the energy.
    """
    if isinstance(geometry, CartesianGeometry):
        grids = []
        for e in energies:
            cube = e.reshape(geometry.shape)  # (nz, ny, nx)
            grids.append([cube.sum(axis=0), cube.sum(axis=1), cube.sum(axis=2)])
        edges = {"x": geometry.x_edges, "y": geometry.y_edges, "z": geometry.z_edges}
        return grids, edges
    if isinstance(geometry, CylindricalGeometry):
        rmax = float(max(geometry.layers[i].r_edges[-1] for i in geometry.relevant_layers))
    else:
        centers = geometry.cell_centers()
        rmax = float(np.abs(centers[:, :2]).max()) or 1.0
    t = np.linspace(-rmax, rmax, n_transverse + 1)
    edges = {"x": t, "y": t, "z": geometry.z_edges}
    rng = np.random.default_rng(seed)
    grids = []
    for e in energies:
        cells = np.flatnonzero(e > 0)
        cells_rep = np.repeat(cells, samples_per_cell)
        xyz = geometry.dequantize(cells_rep, rng) if cells.size else np.zeros((0, 3))
        w = np.repeat(e[cells] / samples_per_cell, samples_per_cell)
        xy, _, _ = np.histogram2d(xyz[:, 1], xyz[:, 0], bins=(edges["y"], edges["x"]), weights=w)
        xz, _, _ = np.histogram2d(xyz[:, 2], xyz[:, 0], bins=(edges["z"], edges["x"]), weights=w)
        yz, _, _ = np.histogram2d(xyz[:, 2], xyz[:, 1], bins=(edges["z"], edges["y"]), weights=w)
        grids.append([xy, xz, yz])
    return grids, edges


def _draw_projections(energies: np.ndarray, geometry: Geometry, path: Path, *,
                           titles: Sequence[str], vmin: float | None, vmax: float | None,
                           label: str, samples_per_cell: int = 16, n_transverse: int = 64,
                           seed: int = 0) -> Path:
    m = _modules()
    grids, edges = _projections(energies, geometry, samples_per_cell=samples_per_cell,
                                n_transverse=n_transverse, seed=seed)
    axes_names = (("x", "y"), ("x", "z"), ("y", "z"))  # (horizontal, vertical)
    # a per-cell colour range grows with the number of cells summed along the projection
    summed = {"x": len(edges["x"]) - 1, "y": len(edges["y"]) - 1, "z": len(edges["z"]) - 1}
    depth = {("x", "y"): summed["z"], ("x", "z"): summed["y"], ("y", "z"): summed["x"]}
    with _figure(path, (13.0, 3.8 * len(grids) + 0.6), font_size=11) as fig:
        for row, (planes, title) in enumerate(zip(grids, titles, strict=True)):
            for col, (plane, (hx, vy)) in enumerate(zip(planes, axes_names, strict=True)):
                ax = fig.add_subplot(len(grids), 3, 3 * row + col + 1)
                shown = np.where(plane > 0, plane, np.nan)
                top = None if vmax is None else vmax * depth[(hx, vy)]
                mesh = ax.pcolormesh(edges[hx], edges[vy], shown,
                                     norm=_log_norm(m, plane, vmin, top), cmap="viridis")
                ax.set_xlabel(f"{hx} [mm]")
                ax.set_ylabel(f"{vy} [mm]")
                ax.set_title(f"{title}: {hx}-{vy}", fontsize=10)
                cbar = fig.colorbar(mesh, ax=ax)
                cbar.set_label(label)
        fig.suptitle(f"energy projections, logarithmic colour scale ({geometry.name})")
    return path


def plot_shower_projections(
    energies: Any,
    geometry: Geometry,
    path: PathLike,
    *,
    titles: Sequence[str] | None = None,
    samples_per_cell: int = 16,
    n_transverse: int = 64,
    seed: int = 0,
) -> Path:
    """Single showers projected onto the x-y, x-z and y-z planes on a logarithmic colour scale,
    one row per shower.

    Cartesian grids are summed exactly along the third axis; for cylindrical geometries each hit
    cell is sampled with ``samples_per_cell`` uniform points carrying equal shares of its energy
    (seeded), then binned on an ``n_transverse`` x ``n_transverse`` transverse grid and the layer
    boundaries in depth.

    Arguments:
        energies: energy per cell in MeV, (n_cells,) or (k, n_cells).
        geometry: the geometry of the cells.
        path: the PNG to write.
        titles: one title per shower (default ``"shower i"``).
        samples_per_cell: points per hit cell for non-Cartesian geometries.
        n_transverse: transverse bins for non-Cartesian geometries.
        seed: seed of the sampling inside cells.

    Returns:
        The path written.
    """
    path = _out(path)
    e = np.asarray(energies, dtype=np.float64)
    e = e[None] if e.ndim == 1 else e
    if e.ndim != 2 or e.shape[1] != geometry.n_cells or len(e) == 0:
        raise InputError(f"showers of shape {e.shape}", key="energies",
                         expected=f"(k, {geometry.n_cells}) cell energies of {geometry.name}")
    if not np.isfinite(e).all():
        raise InputError("showers contain NaN or inf", key="energies", expected="finite energies")
    titles = list(titles) if titles is not None else [f"shower {i}" for i in range(len(e))]
    if len(titles) != len(e):
        raise InputError(f"{len(titles)} titles for {len(e)} showers", key="titles",
                         expected="one title per shower")
    return _draw_projections(e, geometry, path, titles=titles, vmin=None, vmax=None,
                                  label="energy [MeV]", samples_per_cell=samples_per_cell,
                                  n_transverse=n_transverse, seed=seed)


# ---------------------------------------------------------------------------- regression
def _series(values: Any, labels: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[None] if arr.ndim == 1 else arr
    names = list(labels) if labels is not None else [f"method {i}" for i in range(len(arr))]
    if len(names) != len(arr):
        raise InputError(f"{len(names)} labels for {len(arr)} series", key="labels",
                         expected="one label per method")
    return arr, names


def plot_binned_metric(
    edges: Any,
    values: Any,
    path: PathLike,
    *,
    ylabel: str,
    xlabel: str = "true value",
    labels: Sequence[str] | None = None,
    errors: Any = None,
    title: str | None = None,
) -> Path:
    """A metric per true-value bin (e.g. RMSE or MAPE): bars for one method, markers joined by
    steps for several.

    Arguments:
        edges: bin edges of the true value, (n_bins + 1,).
        values: the metric per bin, (n_bins,) or (n_methods, n_bins); NaN for empty bins.
        path: the PNG to write.
        ylabel, xlabel: axis labels.
        labels: one name per method.
        errors: optional uncertainties with the shape of ``values``.
        title: an optional title.

    Returns:
        The path written.
    """
    path = _out(path)
    edges = _check_edges(edges, "bins")
    vals, names = _series(values, labels)
    errs = None if errors is None else np.broadcast_to(np.asarray(errors, float), vals.shape)
    if vals.shape[1] != len(edges) - 1:
        raise InputError(f"{vals.shape[1]} values for {len(edges) - 1} bins", key="values",
                         expected="one value per bin")
    centers = 0.5 * (edges[1:] + edges[:-1])
    with _figure(path, (8.0, 5.5), font_size=14) as fig:
        ax = fig.add_subplot()
        if len(vals) == 1:
            ax.bar(centers, np.nan_to_num(vals[0]), width=np.diff(edges) * 0.9,
                   color=_COLORS[0], edgecolor="black", linewidth=0.8, label=names[0],
                   yerr=None if errs is None else np.nan_to_num(errs[0]), capsize=2)
        else:
            for i, (v, name) in enumerate(zip(vals, names, strict=True)):
                ax.errorbar(centers, v, yerr=None if errs is None else errs[i], fmt="o-",
                            color=_COLORS[i % len(_COLORS)], label=name, markersize=4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(bottom=0)
        ax.legend(loc="best")
        if title:
            ax.set_title(title)
    return path


def plot_residuals(
    residuals: Mapping[str, Any],
    path: PathLike,
    *,
    xlabel: str,
    bins: int = 60,
    sigma68: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """Residual distributions, one step histogram per method, with bias and sigma68 in the
    legend.

    Arguments:
        residuals: method name -> residuals (N,).
        path: the PNG to write.
        xlabel: the x-axis label (e.g. ``"(pred - true) / true"``).
        bins: number of bins over the central 99.8% of all residuals.
        sigma68: method name -> sigma68 to print (default: computed from the residuals).
        title: an optional title.

    Returns:
        The path written.
    """
    path = _out(path)
    series = {k: _finite(v) for k, v in residuals.items()}
    pooled = np.concatenate([v for v in series.values() if v.size] or [np.zeros(1)])
    lo, hi = np.quantile(pooled, [0.001, 0.999])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    m = _modules()
    with _figure(path, (8.0, 5.5), font_size=14) as fig:
        ax = fig.add_subplot()
        for i, (name, v) in enumerate(series.items()):
            counts, _ = np.histogram(v, bins=edges)
            if sigma68 is not None and name in sigma68:
                s68 = sigma68[name]
            else:
                q = np.quantile(v, [0.15865, 0.84135]) if v.size else (np.nan, np.nan)
                s68 = 0.5 * (q[1] - q[0])
            bias = float(v.mean()) if v.size else float("nan")
            m.hep.histplot(counts, edges, ax=ax, histtype="step",
                           color=_COLORS[i % len(_COLORS)], flow=None,
                           label=f"{name}: bias {bias:.3g}, $\\sigma_{{68}}$ {s68:.3g}")
        ax.axvline(0.0, color="black", linewidth=1, linestyle="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("entries")
        ax.legend(loc="upper right", fontsize="small")
        if title:
            ax.set_title(title)
    return path


def plot_pred_vs_true(
    true: Any,
    pred: Any,
    path: PathLike,
    *,
    labels: Sequence[str] | None = None,
    quantity: str = "value",
    unit: str = "",
    bins: int = 60,
) -> Path:
    """Predicted against true values: a 2-D histogram on a log colour scale per method, the
    diagonal and the median prediction per true-value bin.

    Arguments:
        true: true values, (N,).
        pred: predictions, (N,) or (n_methods, N).
        path: the PNG to write.
        labels: one name per method.
        quantity, unit: for the axis labels.
        bins: bins per axis.

    Returns:
        The path written.
    """
    path = _out(path)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    preds, names = _series(pred, labels)
    lo = float(min(t.min(), np.nanmin(preds)))
    hi = float(max(t.max(), np.nanmax(preds)))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    t_edges = np.linspace(float(t.min()), float(t.max()) + 1e-12 * max(1.0, abs(t.max())),
                          min(bins, 20) + 1)
    unit_s = f" [{unit}]" if unit else ""
    m = _modules()
    with _figure(path, (6.2 * len(preds), 5.6), font_size=13) as fig:
        for i, (p, name) in enumerate(zip(preds, names, strict=True)):
            ax = fig.add_subplot(1, len(preds), i + 1)
            h, _, _ = np.histogram2d(t, p, bins=(edges, edges))
            shown = np.where(h.T > 0, h.T, np.nan)
            mesh = ax.pcolormesh(edges, edges, shown, norm=_log_norm(m, h, None, None),
                                 cmap="viridis")
            ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1,
                    label="pred = true")
            idx = np.digitize(t, t_edges) - 1
            med = [np.median(p[idx == k]) if np.any(idx == k) else np.nan
                   for k in range(len(t_edges) - 1)]
            ax.plot(0.5 * (t_edges[1:] + t_edges[:-1]), med, "o", color=_COLORS[1],
                    markersize=4, label="median prediction")
            ax.set_xlabel(f"true {quantity}{unit_s}")
            ax.set_ylabel(f"predicted {quantity}{unit_s}")
            ax.set_title(name)
            ax.legend(loc="upper left", fontsize="small")
            fig.colorbar(mesh, ax=ax).set_label("entries")
    return path


def plot_resolution(
    energy: Any,
    resolution: Any,
    errors: Any,
    path: PathLike,
    *,
    labels: Sequence[str] | None = None,
    fits: Sequence[Mapping[str, Any] | None] | None = None,
    quantity: str = "E",
    unit: str = "GeV",
) -> Path:
    """Relative resolution per bin with the fitted curve sqrt((a/sqrt(E))^2 + b^2 + (c/E)^2).

    Arguments:
        energy: bin centres, (n_bins,).
        resolution: sigma / E per bin, (n_bins,) or (n_methods, n_bins).
        errors: their uncertainties, same shape.
        path: the PNG to write.
        labels: one name per method.
        fits: one :func:`showerformer.evaluation.regression.fit_resolution` result (or None)
            per method.
        quantity, unit: for the axis label.

    Returns:
        The path written.
    """
    path = _out(path)
    e = np.asarray(energy, dtype=np.float64).reshape(-1)
    res, names = _series(resolution, labels)
    err = np.broadcast_to(np.asarray(errors, dtype=np.float64), res.shape)
    fits = list(fits) if fits is not None else [None] * len(res)
    ok = np.isfinite(e) & (e > 0)
    grid = np.geomspace(e[ok].min(), e[ok].max(), 200) if ok.any() else np.array([])
    with _figure(path, (8.0, 5.5), font_size=14) as fig:
        ax = fig.add_subplot()
        for i, (r, s, name, fit) in enumerate(zip(res, err, names, fits, strict=True)):
            color = _COLORS[i % len(_COLORS)]
            label = name
            if fit is not None and grid.size:
                a, b, c = fit["a"], fit["b"], fit["c"]
                curve = np.sqrt((a / np.sqrt(grid)) ** 2 + b**2 + (c / grid) ** 2)
                ax.plot(grid, curve, color=color, linewidth=1.5)
                label = (f"{name}: a = {a:.3g} $\\pm$ {fit['a_err']:.2g}, "
                         f"b = {b:.3g} $\\pm$ {fit['b_err']:.2g}, "
                         f"c = {c:.3g} $\\pm$ {fit['c_err']:.2g}")
            ax.errorbar(e, r, yerr=s, fmt="o", color=color, markersize=4, label=label)
        ax.set_xlabel(f"{quantity} [{unit}]" if unit else quantity)
        ax.set_ylabel(rf"$\sigma_{{68}} / {quantity}$")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper right", fontsize="x-small")
        ax.set_title(r"$\sigma/E = a/E^{1/2} \oplus b \oplus c/E$", fontsize=12)
    return path


def plot_embedding_pca(
    embedding: Any,
    values: Any,
    path: PathLike,
    *,
    label: str = "true value",
    title: str = "PCA of the embedding",
    max_points: int = 20_000,
    seed: int = 0,
) -> tuple[Path, list[float]]:
    """The first two principal components of per-event embeddings, coloured by a true value.

    Arguments:
        embedding: one vector per event, (N, D) with N >= 3 and D >= 2.
        values: the colour of each event, (N,), e.g. the true momentum.
        path: the PNG to write.
        label: colour-bar label.
        title: the axes title (the explained variances are appended to the axis labels).
        max_points: events drawn (a random subset above it; the PCA is fitted on all).
        seed: seed of that subset.

    Returns:
        ``(path, explained variance ratio of PC1 and PC2)``.
    """
    from sklearn.decomposition import PCA

    path = _out(path)
    x = np.asarray(embedding, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2 or len(v) != x.shape[0]:
        raise InputError(f"embedding of shape {x.shape} with {len(v)} values", key="embedding",
                         expected="(N, D) with N >= 3, D >= 2 and one value per row")
    pca = PCA(n_components=2, random_state=seed)
    z = pca.fit_transform(x)  # (N, 2)
    ratio = [float(r) for r in pca.explained_variance_ratio_]
    order = np.arange(len(z))
    if len(z) > max_points:
        order = np.random.default_rng(seed).choice(len(z), max_points, replace=False)
    order = order[np.argsort(v[order], kind="stable")]  # high values drawn last
    with _figure(path, (7.2, 6.0), font_size=13) as fig:
        ax = fig.add_subplot(1, 1, 1)
        sc = ax.scatter(z[order, 0], z[order, 1], c=v[order], s=4, cmap="viridis",
                        rasterized=True, linewidths=0)
        ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f}% of the variance)")
        ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f}%)")
        ax.set_title(title)
        fig.colorbar(sc, ax=ax).set_label(label)
    return path, ratio


def plot_attention_matrix(
    weights: Any,
    path: PathLike,
    *,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    xlabel: str = "key",
    ylabel: str = "query",
    title: str = "mean attention",
) -> Path:
    """A matrix of attention probabilities (e.g. blocks x scales) as an annotated heat map.

    Arguments:
        weights: (R, C) values in [0, 1], e.g. averaged over a test set.
        path: the PNG to write.
        row_labels, column_labels: one label per row / column.
        xlabel, ylabel, title: axis labels and title.

    Returns:
        The path written.
    """
    path = _out(path)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape != (len(row_labels), len(column_labels)):
        raise InputError(f"weights of shape {w.shape}", key="weights",
                         expected=f"({len(row_labels)}, {len(column_labels)}), one per label")
    with _figure(path, (1.3 * w.shape[1] + 3.0, 0.55 * w.shape[0] + 2.2), font_size=12,
                 minor=False) as fig:
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(w, cmap="magma", vmin=0.0, vmax=max(float(w.max()), 1e-12), aspect="auto")
        for (r, c), value in np.ndenumerate(w):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if value < 0.6 * w.max() else "black")
        ax.set_xticks(range(w.shape[1]), list(column_labels))
        ax.set_yticks(range(w.shape[0]), list(row_labels))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.colorbar(im, ax=ax).set_label("attention probability")
    return path


def plot_learning_curve(curve: Mapping[str, Any], path: PathLike) -> Path:
    """MAE and RMSE of a network on a fixed test subset against the training events seen.

    Arguments:
        curve: ``{"n_events", "points": [{"events_seen", "mae", "rmse"}], "baselines":
            {name: {"mae", "rmse"}}, "trend": {"mae"|"rmse": {"asymptote", "exponent"}} or
            None}`` (see ``showerformer benchmark regression --curve-points``).
        path: the PNG to write.

    Returns:
        The path written.
    """
    path = _out(path)
    pts = sorted(curve["points"], key=lambda p: p["events_seen"])
    if not pts:
        raise InputError("no checkpoints", key="points", expected="at least one point")
    n = np.array([max(p["events_seen"], 1) for p in pts], dtype=np.float64)
    trend = curve.get("trend") or {}
    with _figure(path, (12.0, 5.0), font_size=12) as fig:
        for i, key in enumerate(("mae", "rmse")):
            ax = fig.add_subplot(1, 2, i + 1)
            ax.plot(n, [p[key] for p in pts], "o-", color=_COLORS[0], label="network")
            fit = trend.get(key)
            if fit:
                xs = np.geomspace(n[0], 4 * n[-1], 60)
                ys = fit["asymptote"] + fit["b"] * (xs / n[-1]) ** (-fit["exponent"])
                asym = (f"asymptote {fit['asymptote']:.3f}"
                        if fit.get("asymptote_constrained", True) else "asymptote not constrained")
                ax.plot(xs, ys, "--", color=_COLORS[0], alpha=0.6, label=f"power-law fit, {asym}")
            for j, (name, ref) in enumerate(curve.get("baselines", {}).items()):
                ax.axhline(ref[key], color=_COLORS[(j + 1) % len(_COLORS)], linestyle=":",
                           label=name)
            ax.set_xscale("log")
            ax.set_xlabel("training events seen")
            ax.set_ylabel(f"{key.upper()} [GeV]")
            ax.set_title(f"{key.upper()} on {curve.get('n_events', '?'):,} test events")
            ax.legend(fontsize="small")
    return path
