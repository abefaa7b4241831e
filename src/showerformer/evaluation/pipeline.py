"""The evaluation of a generated sample against a reference: read, check, measure, plot, report.

:func:`evaluate_files` streams both samples (CaloChallenge and Par04 files chunk by chunk; point
clouds are voxelized through the geometry), checks that they can be compared, computes the
CaloChallenge high-level features, the separation powers, 1-D Wasserstein distances and KS
statistics, FPD and KPD, the classifier tests, and writes ``metrics.json``, the PNG plots and a
self-contained ``report.html``.

References:
    CaloChallenge 2022 evaluation, https://github.com/CaloChallenge/homepage (arXiv:2410.21611);
    separation power arXiv:2009.03796 eq. 15; FPD/KPD arXiv:2211.10295; classifier metric
    arXiv:2106.05285.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from showerformer import __version__
from showerformer.errors import InputError
from showerformer.geometry import Geometry, get_geometry
from showerformer.showers import PointShowers, VoxelShowers

__all__ = ["CLASSIFIER_KINDS", "CLASSIFIER_MODES", "ShowerSource", "evaluate_files", "open_source"]

CLASSIFIER_MODES = ("cpu", "full", "none")
"""``cpu``: :meth:`ClassifierConfig.cpu_friendly` settings; ``full``: the official ones;
``none``: no classifier test."""
CLASSIFIER_KINDS = ("low", "low_normed", "high")
"""The classifier inputs, in the order they are run."""

PathLike = str | os.PathLike[str]
SampleLike = PathLike | VoxelShowers | PointShowers

_CHUNK_BYTES = 64 << 20  # float32 voxel bytes per streamed chunk
_COLLECT_BYTES = 2 << 30  # low-level classifier inputs kept from the feature pass up to this
_MIN_SHARE = 0.5  # each sample must have this share of showers inside the other's energy range
_WORST = 10
_FPD_MIN, _FPD_MAX, _KPD_BATCH = 20_000, 50_000, 5_000  # JetNet's default batch sizes


# ---------------------------------------------------------------------------- sources
@dataclass
class ShowerSource:
    """One sample to evaluate: where it comes from and how to stream it as voxels.

    Attributes:
        role: ``"reference"`` or ``"generated"``.
        label: the file path, or ``"<in memory>"``.
        format: ``"calochallenge"``, ``"par04"``, ``"sparse-voxels"``, ``"pointcloud"``,
            ``"edm4hep"`` or ``"memory"``.
        geometry: the voxel geometry (point clouds are voxelized into it).
        n: showers used (after ``max_showers``), None until known.
        n_in_file: showers in the file, None when not cheaply known.
        points: whether the sample is a point cloud (voxelized on the fly).
    """

    role: str
    label: str
    format: str
    geometry: Geometry | None
    n: int | None = None
    n_in_file: int | None = None
    points: bool = False
    _stream: Callable[[int], Iterator[Any]] | None = field(default=None, repr=False)

    def chunks(self, chunk_size: int | None = None) -> Iterator[VoxelShowers]:
        """The showers as validated :class:`VoxelShowers` chunks (a new pass each call)."""
        if self.geometry is None:
            raise InputError("point clouds without a geometry", path=self._path, key="geometry",
                             expected="a geometry to voxelize them (e.g. --geometry ds2)")
        size = chunk_size or max(1, _CHUNK_BYTES // (4 * self.geometry.n_cells))
        assert self._stream is not None
        for chunk in self._stream(size):
            if isinstance(chunk, PointShowers):
                chunk.validate(path=self._path)
                chunk = chunk.to_voxels(self.geometry)
            else:
                chunk.validate(path=self._path)
            yield chunk

    def head(self, k: int) -> VoxelShowers:
        """The first ``k`` showers (fewer if the sample is smaller)."""
        return next(iter(self.chunks(max(1, k))))[:k]

    @property
    def _path(self) -> str | None:
        return None if self.format == "memory" else self.label


def _slices(obj: Any, stop: int) -> Callable[[int], Iterator[Any]]:
    def stream(size: int) -> Iterator[Any]:
        for a in range(0, stop, size):
            yield obj[a:min(stop, a + size)]
    return stream


def open_source(
    spec: SampleLike,
    role: str,
    *,
    geometry: Geometry | None = None,
    max_showers: int | None = None,
) -> ShowerSource:
    """Open a sample for streaming: a file of any supported format or showers in memory.

    Arguments:
        spec: a path, :class:`VoxelShowers` or :class:`PointShowers`.
        role: ``"reference"`` or ``"generated"`` (for messages).
        geometry: the geometry to read voxels with / voxelize points into; default the file's.
        max_showers: use only the first showers.

    Returns:
        The :class:`ShowerSource`.

    Raises:
        InputError: missing or unreadable file, unknown layout, voxels that do not fit the
            geometry, an empty sample.
    """
    if isinstance(spec, VoxelShowers | PointShowers):
        return _memory_source(spec, role, geometry, max_showers)
    from showerformer.io import detect_format, iter_calochallenge, iter_par04, read_showers

    path = Path(spec)
    fmt = detect_format(path)
    stop = max_showers
    if fmt in ("calochallenge", "par04"):
        iterate = iter_calochallenge if fmt == "calochallenge" else iter_par04
        # validates the layout and resolves the geometry now, streams later
        first = next(iter(iterate(path, 1, geometry, stop=1)), None)
        if first is None:
            raise InputError("the file holds 0 showers", path=path, expected="at least one shower")
        n_in_file = _count_showers(path, fmt)
        n = None if n_in_file is None else (n_in_file if stop is None else min(stop, n_in_file))

        def stream(size: int) -> Iterator[Any]:
            return iterate(path, size, first.geometry, stop=stop)

        return ShowerSource(role, str(path), fmt, first.geometry, n, n_in_file, False, stream)
    if fmt == "sparse-voxels":  # hit lists of large grids: densified chunk by chunk
        from showerformer.io.sparse import SparseVoxelFile, iter_sparse

        sparse = SparseVoxelFile(path, geometry=geometry, in_memory=False)
        n_in_file = len(sparse)
        if n_in_file == 0:
            raise InputError("the file holds 0 showers", path=path, expected="at least one shower")
        n = n_in_file if stop is None else min(stop, n_in_file)
        geo = sparse.geometry

        def stream_sparse(size: int) -> Iterator[Any]:
            return iter_sparse(path, size, stop=stop, geometry=geo)

        return ShowerSource(role, str(path), fmt, geo, n, n_in_file, False, stream_sparse)
    showers = read_showers(path, geometry=geometry)
    src = _memory_source(showers, role, geometry, max_showers)
    src.label, src.format = str(path), fmt
    return src


def _memory_source(showers: VoxelShowers | PointShowers, role: str, geometry: Geometry | None,
                   max_showers: int | None) -> ShowerSource:
    n_total = len(showers)
    if n_total == 0:
        raise InputError(f"the {role} sample holds 0 showers", key=role,
                         expected="at least one shower")
    n = n_total if max_showers is None else min(max_showers, n_total)
    if isinstance(showers, VoxelShowers):
        if geometry is not None and not showers.geometry.same_cells(geometry):
            raise InputError(f"{role} showers of geometry {showers.geometry.describe()}",
                             key="geometry", expected=f"{geometry.describe()}")
        geo: Geometry | None = showers.geometry
    else:
        geo = geometry or showers.geometry
    return ShowerSource(role, "<in memory>", "memory", geo, n, n_total,
                        isinstance(showers, PointShowers), _slices(showers, n))


def _count_showers(path: Path, fmt: str) -> int | None:
    """Showers in a CaloChallenge file (the layout was validated before); None otherwise."""
    if fmt != "calochallenge":
        return None
    import h5py

    from showerformer.io.calochallenge import SHOWERS_KEY

    with h5py.File(path, "r") as f:
        return int(f[SHOWERS_KEY].shape[0])


# ---------------------------------------------------------------------------- checks
def _check_geometries(ref: ShowerSource, gen: ShowerSource, explicit: bool) -> Geometry:
    """The common geometry. Voxel samples keep theirs; point clouds are voxelized into the
    explicit geometry, else into the voxel sample's, else (two point clouds) into the
    reference's own (the generated one's if the reference has none)."""
    if not explicit:
        if ref.points and not gen.points:
            ref.geometry = gen.geometry
        elif gen.points and not ref.points:
            gen.geometry = ref.geometry
        elif ref.points and gen.points:
            common = ref.geometry or gen.geometry
            ref.geometry = gen.geometry = common
    if ref.geometry is None or gen.geometry is None:
        raise InputError("point clouds without a geometry", key="geometry",
                         expected="a geometry to voxelize them, e.g. --geometry ds2")
    if not ref.geometry.same_cells(gen.geometry):
        raise InputError(
            f"different geometries: reference {ref.label} is {ref.geometry.describe()}, "
            f"generated {gen.label} is {gen.geometry.describe()}", key="geometry",
            expected="both samples in the same geometry")
    return ref.geometry


class _Tracker:
    """Wraps a chunk stream to count showers and collect particle ids on the way."""

    def __init__(self, source: ShowerSource, chunk_size: int | None) -> None:
        self.source, self.chunk_size = source, chunk_size
        self.n = 0
        self.pdg: set[int] = set()

    def __iter__(self) -> Iterator[VoxelShowers]:
        for chunk in self.source.chunks(self.chunk_size):
            self.n += len(chunk)
            self.pdg.update(int(p) for p in np.unique(chunk.conditions.pdg))
            yield chunk


def _range_text(e: np.ndarray) -> str:
    return f"{e.min() / 1e3:.4g} - {e.max() / 1e3:.4g} GeV"


def _check_conditions(ref_e: np.ndarray, gen_e: np.ndarray, ref_pdg: set[int],
                      gen_pdg: set[int], ref: ShowerSource, gen: ShowerSource) -> list[str]:
    """Raise on incompatible conditions; return warnings for suspicious ones."""
    lo, hi = max(ref_e.min(), gen_e.min()), min(ref_e.max(), gen_e.max())
    tol = 1e-6 * max(abs(hi), abs(lo), 1.0)
    if hi + tol < lo:
        raise InputError(
            f"mismatched conditions: incident energies do not overlap (reference {ref.label}: "
            f"{_range_text(ref_e)}, generated {gen.label}: {_range_text(gen_e)})",
            key="incident_energies", expected="samples generated for the same energies")
    for name, e, other in (("reference", ref_e, gen), ("generated", gen_e, ref)):
        share = float(np.mean((e >= lo - tol) & (e <= hi + tol)))
        if share < _MIN_SHARE:
            raise InputError(
                f"mismatched conditions: only {100 * share:.1f}% of the {name} showers lie in "
                f"the incident-energy range shared with {other.label} "
                f"({lo / 1e3:.4g} - {hi / 1e3:.4g} GeV)", key="incident_energies",
                expected=f"at least {100 * _MIN_SHARE:.0f}% of each sample in the common range")
    known_ref, known_gen = ref_pdg - {0}, gen_pdg - {0}
    if known_ref and known_gen and known_ref != known_gen:
        raise InputError(
            f"mismatched conditions: reference particles (PDG) {sorted(known_ref)}, generated "
            f"{sorted(known_gen)}", key="pdg", expected="the same particle in both samples")
    warnings_: list[str] = []
    from scipy.stats import ks_2samp

    test = ks_2samp(np.log(ref_e), np.log(gen_e))
    if test.pvalue < 1e-3:
        warnings_.append(
            f"the incident-energy distributions differ (KS statistic {test.statistic:.3f}, "
            f"p = {test.pvalue:.1e}); the classifier sees log10 E_inc and may separate the "
            "samples by it alone")
    return warnings_


# ---------------------------------------------------------------------------- metrics
def _summarize_separation(sp: Mapping[str, float], official: Sequence[str]) -> dict[str, Any]:
    from showerformer.evaluation.plots import feature_family

    finite = {k: float(v) for k, v in sp.items() if v is not None and math.isfinite(v)}
    groups: dict[str, dict[str, float]] = {}
    for name, v in finite.items():
        groups.setdefault(feature_family(name) or name, {})[name] = v
    summary: dict[str, Any] = {}
    for g, vals in groups.items():
        arr = np.fromiter(vals.values(), dtype=np.float64)
        worst = sorted(vals.items(), key=lambda kv: -kv[1])[:3]
        summary[g] = {"n": len(vals), "mean": float(arr.mean()), "median": float(np.median(arr)),
                      "max": float(arr.max()), "worst": [[k, v] for k, v in worst]}
    off = [finite[n] for n in official if n in finite]
    return {
        "per_histogram": dict(sp),
        "groups": summary,
        "mean": float(np.mean(list(finite.values()))) if finite else None,
        "n": len(finite),
        "mean_official": float(np.mean(off)) if off else None,
        "n_official": len(off),
        "worst": [[k, v] for k, v in sorted(finite.items(), key=lambda kv: -kv[1])[:_WORST]],
        "skipped": {k: "no binning (no reference entries above the threshold)"
                    for k, v in sp.items() if v is None or not math.isfinite(v)},
    }


def _captured(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """``fn(*args, **kwargs)`` and the distinct messages of the warnings it raised (numerical
    notes such as scipy's switch to the asymptotic KS distribution go into the metrics)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args, **kwargs)
    return value, sorted({" ".join(str(w.message).split()) for w in caught})


def _distance(fn: Callable[..., Any], real: np.ndarray, gen: np.ndarray,
              options: Mapping[str, Any]) -> dict[str, Any]:
    """FPD or KPD as a metrics entry; numerical warnings are kept in the entry."""
    try:
        est, notes = _captured(fn, real, gen, **options)
    except InputError as exc:
        return {"skipped": str(exc)}
    value, error = float(est[0]), float(est[1])
    entry: dict[str, Any] = {"value": value, "error": error, "value_x1e3": value * 1e3,
                             "error_x1e3": error * 1e3, "options": dict(options)}
    if notes:
        entry["warnings"] = notes
    return entry


def _distance_design(n: int, fpd_options: Mapping[str, Any] | None,
                     kpd_options: Mapping[str, Any] | None) -> tuple[dict[str, Any],
                                                                     dict[str, Any]]:
    """FPD / KPD keyword arguments: the caller's, else JetNet's defaults, which draw batches of
    20,000-50,000 (FPD) and 5,000 (KPD) showers with replacement. For smaller samples the
    batches shrink to the sample (FPD from 0.4 N to N, the defaults' ratio; KPD at most N), so
    that the cost follows the sample size rather than the defaults."""
    fpd_opts = dict(fpd_options) if fpd_options is not None else {}
    kpd_opts = dict(kpd_options) if kpd_options is not None else {}
    if fpd_options is None and n < _FPD_MAX:
        fpd_opts = {"min_samples": max(2, round(n * _FPD_MIN / _FPD_MAX)),
                    "max_samples": max(2, n)}
    if kpd_options is None and n < _KPD_BATCH:
        kpd_opts = {"batch_size": max(2, n)}
    return fpd_opts, kpd_opts


def _classifier_config(mode: str, n_repeats: int | None, seed: int,
                       config: Any | None) -> Any:
    from showerformer.evaluation.classifier import ClassifierConfig

    overrides: dict[str, Any] = {"seed": int(seed)}
    if n_repeats is not None:
        overrides["n_repeats"] = int(n_repeats)
    if config is not None:
        import dataclasses

        return dataclasses.replace(config, **overrides)
    if mode == "full":  # the official settings, on a GPU when there is one
        import torch

        overrides["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        return ClassifierConfig(**overrides)
    return ClassifierConfig.cpu_friendly(**overrides)


def _check_classifier_size(n_ref: int, n_gen: int, config: Any) -> None:
    """Fail before any training when the smaller sample cannot fill the split."""
    split = config.split
    n = min(n_ref, n_gen)
    n_train, n_test = int(n * split[0]), int(n * split[1])
    n_val = n - n_train - n_test
    if n_train < 1 or min(n_test, n_val) < config.min_per_split:
        raise InputError(
            f"too few showers for the classifier split: {n_ref} reference and {n_gen} "
            f"generated give {n_train}/{n_test}/{n_val} train/test/validation showers per sample",
            key="classifier", expected=f"at least {config.min_per_split} test and validation "
            "showers per sample (more showers, or --classifier none)")


# ---------------------------------------------------------------------------- main
def evaluate_files(
    reference: SampleLike,
    generated: SampleLike,
    *,
    out_dir: PathLike,
    geometry: str | os.PathLike[str] | Geometry | None = None,
    classifier: str = "cpu",
    n_repeats: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    max_showers: int | None = None,
    plots: bool = True,
    kinds: Sequence[str] = CLASSIFIER_KINDS,
    classifier_config: Any | None = None,
    distances: bool = True,
    fpd_options: Mapping[str, Any] | None = None,
    kpd_options: Mapping[str, Any] | None = None,
    plot_layers: Sequence[int] | None = None,
    n_single_showers: int = 3,
    embed_images: bool = False,
    chunk_size: int | None = None,
    labels: tuple[str, str] = ("Reference", "Generated"),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a generated sample against a reference and write metrics.json, plots and
    report.html into ``out_dir``.

    Both samples are streamed in chunks (bounded memory for the features; the low-level
    classifier inputs are (N, n_cells) arrays and are kept only while their test runs).

    Arguments:
        reference, generated: shower files of any supported format (CaloChallenge, Par04,
            point clouds, EDM4hep) or showers in memory.
        out_dir: the output folder (created).
        geometry: preset name, binning XML or :class:`Geometry`; default the files' own
            (point clouds without one take the other sample's).
        classifier: ``"cpu"`` (small network on the CPU, printed with the result), ``"full"``
            (the official settings, on CUDA when available) or ``"none"``.
        n_repeats: classifier repetitions (default that of the configuration, 3).
        seed: seed of the classifier splits and initialisations.
        threshold: voxel threshold in MeV; default 1 for ds1, 15.15e-3 for ds2/ds3, else 0.
        max_showers: use only the first showers of each sample.
        plots: write the PNGs (feature histograms, profiles, average and single showers).
        kinds: classifier inputs to test, a subset of :data:`CLASSIFIER_KINDS`.
        classifier_config: a :class:`~showerformer.evaluation.classifier.ClassifierConfig`
            replacing the one ``classifier`` picks (``n_repeats`` and ``seed`` still apply).
        distances: compute FPD and KPD.
        fpd_options, kpd_options: keyword arguments of
            :func:`~showerformer.evaluation.metrics.fpd` / ``kpd``; default JetNet's, with the
            batches shrunk to the sample for samples under 50,000 (FPD) / 5,000 (KPD) showers
            (a warning says so).
        plot_layers: layers drawn in the per-layer histogram grids (default all).
        n_single_showers: single showers drawn per sample (0 for none).
        embed_images: embed the PNGs in report.html instead of linking them.
        chunk_size: showers per streamed chunk (default about 64 MB of voxels).
        labels: names of the two samples in plots.
        progress: called with a short message at each stage.

    Returns:
        The metrics (as written to metrics.json): ``inputs``, ``separation_power``
        (``per_histogram``, ``groups``, ``mean``, ``mean_official``, ``worst``),
        ``wasserstein`` and ``ks`` (per feature), ``fpd`` and ``kpd`` (``value``, ``error``,
        ``value_x1e3``, ``error_x1e3``, or ``skipped``), ``classifier`` (``settings`` and one
        result per input kind, or ``skipped``), ``plots`` (file names by section),
        ``warnings``, ``timing_s``, ``report``.

    Raises:
        InputError: unreadable inputs, different geometries, incident energies that do not
            overlap, different particles, empty or NaN-containing samples, too few showers for
            the classifier split, bad options.
    """
    from showerformer.evaluation import features as F
    from showerformer.evaluation import metrics as M
    from showerformer.evaluation import report as R

    say = progress or (lambda _msg: None)
    if classifier not in CLASSIFIER_MODES:
        raise InputError(f"classifier={classifier!r}", key="classifier",
                         expected=" or ".join(repr(m) for m in CLASSIFIER_MODES))
    bad_kinds = [k for k in kinds if k not in CLASSIFIER_KINDS]
    if bad_kinds:
        raise InputError(f"unknown classifier inputs {bad_kinds}", key="kinds",
                         expected=f"a subset of {list(CLASSIFIER_KINDS)}")
    if max_showers is not None and max_showers < 1:
        raise InputError(f"max_showers={max_showers}", key="max_showers",
                         expected="a positive number of showers")
    if n_repeats is not None and n_repeats < 1:
        raise InputError(f"n_repeats={n_repeats}", key="repeats", expected="at least 1")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise InputError(f"threshold={threshold}", key="threshold",
                         expected="a voxel energy >= 0 MeV")
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    geo_in = get_geometry(geometry) if geometry is not None else None
    say("opening the samples")
    ref = open_source(reference, "reference", geometry=geo_in, max_showers=max_showers)
    gen = open_source(generated, "generated", geometry=geo_in, max_showers=max_showers)
    geo = _check_geometries(ref, gen, explicit=geo_in is not None)
    thr = float(threshold) if threshold is not None else F.default_threshold(geo)
    config = (_classifier_config(classifier, n_repeats, seed, classifier_config)
              if classifier != "none" and kinds else None)
    if config is not None and ref.n is not None and gen.n is not None:
        _check_classifier_size(ref.n, gen.n, config)

    # features (one streamed pass per sample), low-level inputs kept when small
    low_kinds = [k for k in kinds if k in ("low", "low_normed")] if config is not None else []
    collect: tuple[str, ...] = ()
    if low_kinds and ref.n is not None and gen.n is not None:
        per_row = sum(geo.n_cells + 1 + (geo.n_layers if k == "low_normed" else 0)
                      for k in low_kinds)
        if (ref.n + gen.n) * per_row * 4 <= _COLLECT_BYTES:
            collect = tuple(low_kinds)
    say("computing features")
    trackers = {}
    fsets = {}
    for src in (ref, gen):
        tracker = _Tracker(src, chunk_size)
        fsets[src.role] = F.compute_features_streaming(tracker, threshold=thr, geometry=geo,
                                                       collect=collect)
        trackers[src.role] = tracker
        src.n = tracker.n
    ref_fs, gen_fs = fsets["reference"], fsets["generated"]
    timing["features"] = time.perf_counter() - t0
    warnings_ = _check_conditions(ref_fs.incident_energy, gen_fs.incident_energy,
                                  trackers["reference"].pdg, trackers["generated"].pdg, ref, gen)
    if config is not None:
        _check_classifier_size(len(ref_fs), len(gen_fs), config)
    fpd_opts, kpd_opts = _distance_design(min(len(ref_fs), len(gen_fs)), fpd_options,
                                          kpd_options)
    if distances and min(len(ref_fs), len(gen_fs)) < _FPD_MAX:
        warnings_.append(
            f"FPD and KPD from {min(len(ref_fs), len(gen_fs)):,} showers per sample: the JetNet "
            f"design assumes at least {_FPD_MAX:,}; used FPD batches of "
            f"{fpd_opts.get('min_samples', _FPD_MIN):,}-{fpd_opts.get('max_samples', _FPD_MAX):,}"
            f" and KPD batches of {kpd_opts.get('batch_size', _KPD_BATCH):,} showers, so the "
            "values are not comparable with published ones")

    # histogram metrics
    t = time.perf_counter()
    say("separation powers, Wasserstein distances, KS statistics")
    sp, notes = _captured(M.separation_power_features, ref_fs, gen_fs)
    w1, notes_w1 = _captured(M.wasserstein_features, ref_fs, gen_fs)
    ks, notes_ks = _captured(M.ks_features, ref_fs, gen_fs)
    warnings_ += [f"separation power: {w}" for w in notes]
    warnings_ += [f"Wasserstein: {w}" for w in notes_w1] + [f"KS: {w}" for w in notes_ks]
    official = F.histogram_names(geo, extra=False)
    result: dict[str, Any] = {
        "format": "showerformer-evaluation",
        "version": 1,
        "showerformer_version": __version__,
        "inputs": {
            "reference": _source_info(ref, ref_fs, trackers["reference"].pdg),
            "generated": _source_info(gen, gen_fs, trackers["generated"].pdg),
            "geometry": geo.name,
            "geometry_description": geo.describe(),
            "threshold_mev": thr,
            "max_showers": max_showers,
            "seed": seed,
            "classifier": classifier,
        },
        "separation_power": _summarize_separation(sp, official),
        "wasserstein": w1,
        "ks": ks,
    }
    timing["histogram_metrics"] = time.perf_counter() - t

    # FPD / KPD on the high-level features
    t = time.perf_counter()
    if distances:
        say("FPD and KPD")
        real_hl = M.high_level_feature_matrix(ref_fs)
        gen_hl = M.high_level_feature_matrix(gen_fs)
        n_min, d = min(len(real_hl), len(gen_hl)), real_hl.shape[1]
        if n_min <= d and fpd_options is None:
            result["fpd"] = {"skipped": f"{n_min} showers for {d} high-level features: the "
                                        "covariance matrices would be singular"}
        else:
            result["fpd"] = _distance(M.fpd, real_hl, gen_hl, fpd_opts)
        result["kpd"] = _distance(M.kpd, real_hl, gen_hl, kpd_opts)
        for key in ("fpd", "kpd"):
            warnings_ += [f"{key.upper()}: {w}" for w in result[key].get("warnings", [])]
        outliers = M.scale_outliers(real_hl, gen_hl, F.high_level_names(ref_fs))
        warnings_ += [f"FPD/KPD: {w}" for w in outliers[:3]]
        if len(outliers) > 3:
            warnings_.append(f"FPD/KPD: {len(outliers) - 3} more features beyond 1000x the "
                             "reference maximum")
    else:
        result["fpd"] = result["kpd"] = {"skipped": "not requested"}
    timing["fpd_kpd"] = time.perf_counter() - t

    # classifier tests
    t = time.perf_counter()
    result["classifier"] = _classifiers(config, kinds, ref, gen, ref_fs, gen_fs, thr, geo,
                                        chunk_size, say)
    timing["classifier"] = time.perf_counter() - t

    # plots and report
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    result["plots"] = (_plots(ref, gen, ref_fs, gen_fs, sp, out, plot_layers, n_single_showers,
                              seed, labels, say) if plots else {})
    timing["plots"] = time.perf_counter() - t
    result["warnings"] = warnings_
    timing["total"] = time.perf_counter() - t0
    result["timing_s"] = timing
    result["report"] = "report.html"
    result["metrics_file"] = "metrics.json"
    say("writing metrics.json and report.html")
    R.write_json(out / "metrics.json", result)
    R.evaluation_report(R.json_clean(result), out, embed_images=embed_images)
    return R.json_clean(result)


def _source_info(src: ShowerSource, fs: Any, pdg: set[int]) -> dict[str, Any]:
    e = fs.incident_energy
    return {
        "path": src.label,
        "format": src.format + (" (point cloud, voxelized)" if src.points else ""),
        "n_showers": len(fs),
        "n_showers_in_file": src.n_in_file,
        "energy_min_mev": float(e.min()),
        "energy_max_mev": float(e.max()),
        "energy_mean_mev": float(e.mean()),
        "particles": ", ".join(str(p) for p in sorted(pdg - {0})) or None,
    }


def _classifiers(config: Any, kinds: Sequence[str], ref: ShowerSource, gen: ShowerSource,
                 ref_fs: Any, gen_fs: Any, thr: float, geo: Geometry, chunk_size: int | None,
                 say: Callable[[str], None]) -> dict[str, Any]:
    if config is None:
        return {"skipped": "classifier test not requested"}
    from showerformer.evaluation import features as F
    from showerformer.evaluation.classifier import run_classifier

    out: dict[str, Any] = {"settings": config.to_dict(), "description": config.describe()}
    for kind in kinds:
        say(f"classifier test on {kind} inputs ({config.describe()})")
        if kind == "high" or kind in ref_fs.low_level:
            x_ref = F.classifier_inputs(ref_fs, kind)
            x_gen = F.classifier_inputs(gen_fs, kind)
        else:  # stream the sample again: (N, n_cells) inputs exist only during this test
            x_ref = F.classifier_inputs_streaming(ref.chunks(chunk_size), kind, threshold=thr,
                                                  geometry=geo)
            x_gen = F.classifier_inputs_streaming(gen.chunks(chunk_size), kind, threshold=thr,
                                                  geometry=geo)
        res = run_classifier(x_ref, x_gen, config)
        del x_ref, x_gen
        d = res.to_dict()
        d.pop("config", None)
        out[kind] = d
    return out


def _plots(ref: ShowerSource, gen: ShowerSource, ref_fs: Any, gen_fs: Any,
           sp: Mapping[str, float], out: Path, layers: Sequence[int] | None, n_single: int,
           seed: int, labels: tuple[str, str], say: Callable[[str], None]) -> dict[str, list[str]]:
    from showerformer.evaluation import plots as P

    say("plotting")
    geo = ref_fs.geometry
    sections: dict[str, list[str]] = {}

    def rel(paths: Sequence[Path]) -> list[str]:
        return [Path(os.path.relpath(p, out)).as_posix() for p in paths]

    sections["features"] = rel(P.plot_feature_set(ref_fs, gen_fs, out, separation_powers=sp,
                                                   layers=layers, labels=labels))
    sections["profiles"] = rel(P.plot_profiles(ref_fs, gen_fs, out, labels=labels))
    both = np.concatenate([ref_fs.mean_shower, gen_fs.mean_shower])
    positive = both[both > 0]
    if positive.size:
        vmax = float(positive.max())
        vmin = max(float(positive.min()), vmax * 1e-6)
        sections["average_showers"] = rel([
            P.plot_average_shower(ref_fs.mean_shower, geo, out / "average_shower_reference.png",
                                  title=f"{labels[0]}: average shower", vmin=vmin, vmax=vmax),
            P.plot_average_shower(gen_fs.mean_shower, geo, out / "average_shower_generated.png",
                                  title=f"{labels[1]}: average shower", vmin=vmin, vmax=vmax),
        ])
    if n_single > 0:
        paths = []
        for src, label in ((ref, labels[0]), (gen, labels[1])):
            head = src.head(n_single)
            titles = [f"{label} {i} ({e / 1e3:.3g} GeV)"
                      for i, e in enumerate(head.conditions.energy)]
            paths.append(P.plot_shower_projections(head.energies, geo,
                                                   out / f"showers_{src.role}.png",
                                                   titles=titles, seed=seed))
        sections["single_showers"] = rel(paths)
    return sections
