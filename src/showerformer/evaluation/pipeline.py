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

import contextlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from showerformer import __version__
from showerformer.errors import InputError, OutputError
from showerformer.geometry import Geometry, get_geometry
from showerformer.showers import PointShowers, VoxelShowers, outside_phrase

__all__ = ["CLASSIFIER_KINDS", "CLASSIFIER_MODES", "ShowerSource", "check_classifier_size",
           "evaluate_files", "open_source"]

CLASSIFIER_MODES = ("cpu", "full", "none")
"""``cpu``: :meth:`ClassifierConfig.cpu_friendly` settings; ``full``: the official ones;
``none``: no classifier test."""
CLASSIFIER_KINDS = ("low", "low_normed", "high")
"""The classifier inputs, in the order they are run."""

PathLike = str | os.PathLike[str]
SampleLike = PathLike | VoxelShowers | PointShowers

_CHUNK_BYTES = 64 << 20  # float32 voxel bytes per streamed chunk
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
        outside: what voxelizing does with points outside the geometry: ``"error"`` or
            ``"drop"``.
        dropped: points, energy (MeV) and showers dropped as outside the geometry in the
            counted pass (``outside="drop"``).
    """

    role: str
    label: str
    format: str
    geometry: Geometry | None
    n: int | None = None
    n_in_file: int | None = None
    points: bool = False
    _stream: Callable[[int], Iterator[Any]] | None = field(default=None, repr=False)
    outside: str = "error"
    dropped: dict[str, float] = field(default_factory=lambda: {"points": 0, "energy_mev": 0.0,
                                                               "showers": 0})

    def chunks(self, chunk_size: int | None = None, *, count: bool = False
               ) -> Iterator[VoxelShowers]:
        """The showers as validated :class:`VoxelShowers` chunks (a new pass each call).

        Arguments:
            chunk_size: showers per chunk (default about 64 MB of voxels).
            count: add the points dropped outside the geometry to :attr:`dropped` (once per
                evaluation: the features pass).
        """
        if self.geometry is None:
            raise InputError("point clouds without a geometry", path=self._path, key="geometry",
                             expected="a geometry to voxelize them (e.g. --geometry ds2)")
        size = chunk_size or max(1, _CHUNK_BYTES // (4 * self.geometry.n_cells))
        assert self._stream is not None
        for chunk in self._stream(size):
            if isinstance(chunk, PointShowers):
                chunk.validate(path=self._path)
                if count and self.outside == "drop":
                    out = chunk.outside_mask(self.geometry)  # (N, P)
                    self.dropped["points"] += int(out.sum())
                    self.dropped["energy_mev"] += float(
                        chunk.points[..., 3][out].sum(dtype=np.float64))
                    self.dropped["showers"] += int(out.any(axis=1).sum())
                try:
                    chunk = chunk.to_voxels(self.geometry, outside=self.outside)
                except InputError as exc:  # name the file the points came from
                    if exc.path is not None or self._path is None:
                        raise
                    raise InputError(exc.what, path=self._path, key=exc.key,
                                     expected=exc.expected) from None
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
    """Wraps a chunk stream to count showers, collect particle ids and fill the voxel cache on
    the way."""

    def __init__(self, source: ShowerSource, chunk_size: int | None,
                 cache: Any | None = None) -> None:
        self.source, self.chunk_size, self.cache = source, chunk_size, cache
        self.n = 0
        self.pdg: set[int] = set()

    def __iter__(self) -> Iterator[VoxelShowers]:
        for chunk in self.source.chunks(self.chunk_size, count=True):
            self.n += len(chunk)
            self.pdg.update(int(p) for p in np.unique(chunk.conditions.pdg))
            if self.cache is not None:  # the voxels of the low-level classifier inputs
                self.cache.append(chunk.energies)
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


def check_classifier_size(n_ref: int, n_gen: int, classifier: str = "cpu", seed: int = 0) -> None:
    """Raise :class:`InputError` (key ``classifier``) when samples of ``n_ref`` and ``n_gen``
    showers cannot fill the split of the classifier mode ``classifier`` (``cpu`` or ``full``);
    for callers that generate the showers first and want to fail before."""
    _check_classifier_size(n_ref, n_gen, _classifier_config(classifier, None, seed, None))


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


# ---------------------------------------------------------------------------- output folder
def _where(src: ShowerSource) -> str:
    return src.label if src.format == "memory" else str(Path(src.label).resolve())


def _jsonable(obj: Any) -> Any:
    from showerformer.evaluation.report import json_clean

    return json.loads(json.dumps(json_clean(obj)))


def _previous_metrics(out: Path) -> dict[str, Any] | None:
    """The metrics.json already in ``out`` (``{}`` when unreadable or foreign), None if none."""
    path = out / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != "showerformer-evaluation":
        return {}
    return data


def _legacy_comparison(prev: Mapping[str, Any]) -> dict[str, Any]:
    """What a metrics.json without a ``comparison`` entry says about its comparison."""
    inputs = prev.get("inputs", {})
    return {"reference": inputs.get("reference", {}).get("path"),
            "generated": inputs.get("generated", {}).get("path"),
            "geometry": inputs.get("geometry"), "threshold_mev": inputs.get("threshold_mev"),
            "max_showers": inputs.get("max_showers"), "seed": inputs.get("seed"),
            "classifier": inputs.get("classifier")}


def _difference(prev: Mapping[str, Any], comparison: Mapping[str, Any],
                labels: tuple[str, str]) -> str | None:
    """None when ``prev`` holds this comparison's results, else what differs (one phrase)."""
    if not prev:
        return "a metrics.json that is not a showerformer evaluation"
    old = prev.get("comparison")
    new = dict(comparison)
    if not isinstance(old, dict):  # written before comparisons were recorded
        old = _legacy_comparison(prev)
        new = {k: (labels[0] if k == "reference" else labels[1] if k == "generated"
                   else new.get(k)) for k in old}
    for key in new:
        if old.get(key) != new[key]:
            return f"{key} {old.get(key)!r} instead of {new[key]!r}"
    return None


def _evaluation_files(prev: Mapping[str, Any], out: Path) -> list[Path]:
    """The files an earlier evaluation wrote into ``out``: metrics.json, its report and plots
    (only names inside ``out``)."""
    names = ["metrics.json", str(prev.get("report") or "report.html")]
    plots = prev.get("plots") or {}
    groups = plots.values() if isinstance(plots, dict) else [plots]
    for group in groups:
        if isinstance(group, list):
            names += [p for p in group if isinstance(p, str)]
    root = out.resolve()
    files = []
    for name in dict.fromkeys(names):
        p = (out / name).resolve()
        if p.parent == root or root in p.parents:
            files.append(out / name)
    return files


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        if p.is_file() or p.is_symlink():
            p.unlink()


def _check_out_dir(out: Path, comparison: Mapping[str, Any], replace: bool,
                   labels: tuple[str, str]) -> tuple[list[Path], bool]:
    """Refuse an output folder holding another comparison's results (unless ``replace``).

    Returns:
        The earlier evaluation's files and whether they all go before this one is written
        (another comparison, replaced); for the same comparison only those this run does not
        write again go, afterwards.
    """
    for name in ("metrics.json", "report.html"):
        if (out / name).exists() and not (out / name).is_file():
            raise OutputError(f"{name} in it is not a file", path=out, option="--out",
                              expected="a folder where metrics.json and report.html can be "
                              "written")
    prev = _previous_metrics(out)
    if prev is None:
        return [], False
    diff = _difference(prev, comparison, labels)
    if diff is not None and not replace:
        raise OutputError(f"holds the results of another comparison ({diff})", path=out,
                          option="--out", expected="a new folder, the folder of this same "
                          "comparison, or --replace to remove the earlier results")
    return _evaluation_files(prev, out), diff is not None


def _peak_rss_mib() -> float | None:
    """The process's peak resident memory so far (MiB), None where unknown."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if os.uname().sysname != "Darwin" else peak / 1024.0**2


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
    replace: bool = True,
    cache_dir: PathLike | None = None,
    outside: str = "error",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a generated sample against a reference and write metrics.json, plots and
    report.html into ``out_dir``.

    Both samples are streamed in chunks, once: the features are accumulated and, when a
    low-level classifier test is requested, the voxels are copied into an anonymous temporary
    file (:class:`~showerformer.evaluation.inputs.VoxelCache`, 4 bytes per voxel and shower,
    removed at the end) from which the classifier builds its inputs batch by batch. Memory
    therefore stays bounded for samples of any size (the per-shower features, a few hundred
    numbers per shower, are kept).

    Arguments:
        reference, generated: shower files of any supported format (CaloChallenge, Par04,
            point clouds, EDM4hep) or showers in memory.
        out_dir: the output folder (created). With ``replace=False`` a folder holding another
            comparison's metrics.json is refused.
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
        replace: when ``out_dir`` holds another comparison's results, remove its files
            (its metrics.json, report and plots; nothing else) once this evaluation is computed,
            and write this one; False refuses such a folder before any work (the command line's
            default, ``--replace`` to allow it). The same comparison's files are replaced
            either way.
        cache_dir: folder of the temporary voxel cache of the low-level classifier tests
            (default the system temporary folder, ``$TMPDIR``).
        outside: point clouds with points outside the geometry: ``"error"`` (default) refuses
            them, ``"drop"`` leaves those points out and reports how many, their energy and
            in how many showers (in the inputs and the warnings).
        progress: called with a short message at each stage.

    Returns:
        The metrics (as written to metrics.json): ``inputs``, ``comparison`` (what identifies
        this comparison in its folder), ``separation_power`` (``per_histogram``, ``groups``,
        ``mean``, ``mean_official``, ``worst``), ``wasserstein`` and ``ks`` (per feature),
        ``fpd`` and ``kpd`` (``value``, ``error``, ``value_x1e3``, ``error_x1e3``, or
        ``skipped``), ``classifier`` (``settings`` and one result per input kind, or
        ``skipped``), ``plots`` (file names by section), ``warnings``, ``timing_s`` and
        ``peak_rss_mib`` (per stage), ``report``.

    Raises:
        InputError: unreadable inputs, different geometries, incident energies that do not
            overlap, different particles, empty or NaN-containing samples, too few showers for
            the classifier split, bad options.
        OutputError: an output folder that cannot be written or holds another comparison
            (with ``replace=False``), a cache folder without room, a disk that became full.
    """
    from showerformer._paths import check_output_dir
    from showerformer.evaluation import features as F

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
    if outside not in ("error", "drop"):
        raise InputError(f"outside={outside!r}", key="outside", expected="'error' or 'drop'")
    if n_single_showers < 0:
        raise InputError(f"n_single_showers={n_single_showers}", key="n_single_showers",
                         expected="0 or more")
    out = check_output_dir(out_dir, option="--out")
    timing: dict[str, float] = {}
    memory: dict[str, float | None] = {}
    t0 = time.perf_counter()
    geo_in = get_geometry(geometry) if geometry is not None else None
    say("opening the samples")
    ref = open_source(reference, "reference", geometry=geo_in, max_showers=max_showers)
    gen = open_source(generated, "generated", geometry=geo_in, max_showers=max_showers)
    ref.outside = gen.outside = outside
    geo = _check_geometries(ref, gen, explicit=geo_in is not None)
    thr = float(threshold) if threshold is not None else F.default_threshold(geo)
    config = (_classifier_config(classifier, n_repeats, seed, classifier_config)
              if classifier != "none" and kinds else None)
    if config is not None and ref.n is not None and gen.n is not None:
        _check_classifier_size(ref.n, gen.n, config)
    comparison = _jsonable({
        "reference": _where(ref), "generated": _where(gen), "geometry": geo.name,
        "n_cells": geo.n_cells, "threshold_mev": thr, "max_showers": max_showers,
        "seed": seed, "classifier": classifier,
        "classifier_settings": config.describe() if config is not None else None,
        "classifier_inputs": list(kinds) if config is not None else [],
        "fpd_kpd": bool(distances), "plots": bool(plots)})
    earlier, replace_all = _check_out_dir(out, comparison, replace, (ref.label, gen.label))
    low_kinds = [k for k in kinds if k in ("low", "low_normed")] if config is not None else []
    with contextlib.ExitStack() as stack:
        caches: dict[str, Any] = {}
        if low_kinds:
            caches = _open_caches(stack, ref, gen, geo, cache_dir)
        result, fsets, sp, hl = _measure(ref, gen, geo, thr, config, kinds, distances,
                                         max_showers, seed, classifier, fpd_options,
                                         kpd_options, chunk_size, caches, timing, memory, say)
        result["comparison"] = comparison
        for src in (ref, gen):
            if src.dropped["points"]:
                result["warnings"].append(
                    f"{src.role} {src.label}: " + outside_phrase(
                        int(src.dropped["points"]), src.dropped["energy_mev"],
                        int(src.dropped["showers"]), int(src.n or 0))
                    + f" outside geometry {geo.name} were left out (--drop-outside)")
        t = time.perf_counter()
        low = {k: _low_rows(k, caches, fsets, geo, thr) for k in low_kinds}
        result["classifier"] = _classifiers(config, kinds, hl, low, timing, say)
        del low, hl
        timing["classifier"] = time.perf_counter() - t
        memory["classifier"] = _peak_rss_mib()
    ref_fs, gen_fs = fsets

    # outputs: plots, metrics.json, report.html (a full disk becomes one line)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if replace_all:  # another comparison's results go before anything of this one is written
            _remove(earlier)
        t = time.perf_counter()
        result["plots"] = (_plots(ref, gen, ref_fs, gen_fs, sp, out, plot_layers,
                                  n_single_showers, seed, labels, say) if plots else {})
        timing["plots"] = time.perf_counter() - t
        memory["plots"] = _peak_rss_mib()
        timing["total"] = time.perf_counter() - t0
        result["timing_s"] = timing
        result["peak_rss_mib"] = memory
        result["report"] = "report.html"
        result["metrics_file"] = "metrics.json"
        say("writing metrics.json and report.html")
        from showerformer.evaluation import report as R

        clean = R.json_clean(result)
        R.write_json(out / "metrics.json", clean)
        R.evaluation_report(clean, out, embed_images=embed_images)
        if not replace_all:  # the same comparison: files it no longer writes go
            _remove([p for p in earlier
                     if p not in set(_evaluation_files(clean, out))])
    except OSError as exc:
        from showerformer._paths import disk_full_error

        err = disk_full_error(exc, out)
        if err is None or isinstance(exc, OutputError):
            raise
        raise err from exc
    return clean


def _open_caches(stack: contextlib.ExitStack, ref: ShowerSource, gen: ShowerSource,
                 geo: Geometry, cache_dir: PathLike | None) -> dict[str, Any]:
    """One voxel cache per sample, closed (removed) when ``stack`` closes; refused before any
    work when the folder has no room for them."""
    from showerformer._paths import check_output_dir
    from showerformer.evaluation.inputs import VoxelCache

    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir())
    need = (None if ref.n is None or gen.n is None
            else float(ref.n + gen.n) * geo.n_cells * 4)
    check_output_dir(folder, option="--cache-dir", estimated_bytes=need)
    folder.mkdir(parents=True, exist_ok=True)
    return {src.role: stack.enter_context(VoxelCache(geo.n_cells, folder))
            for src in (ref, gen)}


def _measure(ref: ShowerSource, gen: ShowerSource, geo: Geometry, thr: float, config: Any,
             kinds: Sequence[str], distances: bool, max_showers: int | None, seed: int,
             classifier: str, fpd_options: Mapping[str, Any] | None,
             kpd_options: Mapping[str, Any] | None, chunk_size: int | None,
             caches: Mapping[str, Any], timing: dict[str, float],
             memory: dict[str, float | None],
             say: Callable[[str], None]) -> tuple[dict[str, Any], tuple[Any, Any],
                                                  dict[str, float], dict[str, np.ndarray]]:
    """Features (one streamed pass per sample, filling the caches), histogram metrics and
    FPD / KPD: the metrics without classifier and plots, the two feature sets, the separation
    powers and the high-level matrices (float32 when the classifier trains in float32)."""
    from showerformer.evaluation import features as F
    from showerformer.evaluation import metrics as M

    t = time.perf_counter()
    say("computing features")
    trackers = {}
    fsets = {}
    for src in (ref, gen):
        tracker = _Tracker(src, chunk_size, caches.get(src.role))
        fsets[src.role] = F.compute_features_streaming(tracker, threshold=thr, geometry=geo)
        trackers[src.role] = tracker
        src.n = tracker.n
    ref_fs, gen_fs = fsets["reference"], fsets["generated"]
    timing["features"] = time.perf_counter() - t
    memory["features"] = _peak_rss_mib()
    warnings_ = _check_conditions(ref_fs.incident_energy, gen_fs.incident_energy,
                                  trackers["reference"].pdg, trackers["generated"].pdg, ref, gen)
    if config is not None:
        _check_classifier_size(len(ref_fs), len(gen_fs), config)
    n_min = min(len(ref_fs), len(gen_fs))
    fpd_opts, kpd_opts = _distance_design(n_min, fpd_options, kpd_options)
    if distances and n_min < _FPD_MAX:
        warnings_.append(
            f"FPD and KPD from {n_min:,} showers per sample: the JetNet "
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
        "warnings": warnings_,
    }
    timing["histogram_metrics"] = time.perf_counter() - t
    memory["histogram_metrics"] = _peak_rss_mib()

    # FPD / KPD on the high-level features (the same matrix as the high-level classifier's)
    t = time.perf_counter()
    hl: dict[str, np.ndarray] = {}
    if distances or (config is not None and "high" in kinds):
        hl = {"reference": M.high_level_feature_matrix(ref_fs),
              "generated": M.high_level_feature_matrix(gen_fs)}
    if distances:
        say("FPD and KPD")
        real_hl, gen_hl = hl["reference"], hl["generated"]
        d = real_hl.shape[1]
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
    if hl and config is not None and config.dtype == "float32":
        # the classifier rounds its inputs to float32 first: keep only that copy from now on
        hl = {role: m.astype(np.float32) for role, m in hl.items()}
    timing["fpd_kpd"] = time.perf_counter() - t
    memory["fpd_kpd"] = _peak_rss_mib()
    return result, (ref_fs, gen_fs), sp, hl


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
        "dropped_outside_geometry": dict(src.dropped) if src.outside == "drop" else None,
    }


def _low_rows(kind: str, caches: Mapping[str, Any], fsets: tuple[Any, Any], geo: Geometry,
              thr: float) -> tuple[Any, Any]:
    """The low-level inputs of both samples, built from the caches batch by batch."""
    from showerformer.evaluation.inputs import LowLevelRows

    rows = []
    for role, fs in zip(("reference", "generated"), fsets, strict=True):
        e_layer = np.stack([fs.features[f"E_layer_{lid}"] for lid in fs.layers], axis=1)
        rows.append(LowLevelRows(caches[role], kind, fs.incident_energy, e_layer, geo, thr))
    return rows[0], rows[1]


def _classifiers(config: Any, kinds: Sequence[str], hl: Mapping[str, np.ndarray],
                 low: Mapping[str, tuple[Any, Any]], timing: dict[str, float],
                 say: Callable[[str], None]) -> dict[str, Any]:
    if config is None:
        return {"skipped": "classifier test not requested"}
    from showerformer.evaluation.classifier import run_classifier

    out: dict[str, Any] = {"settings": config.to_dict(), "description": config.describe()}
    for kind in kinds:
        t = time.perf_counter()
        say(f"classifier test on {kind} inputs")
        x_ref, x_gen = (hl["reference"], hl["generated"]) if kind == "high" else low[kind]
        res = run_classifier(x_ref, x_gen, config,
                             progress=lambda msg, k=kind: say(f"classifier test on {k} inputs, "
                                                              f"{msg}"))
        d = res.to_dict()
        d.pop("config", None)
        out[kind] = d
        timing[f"classifier_{kind}"] = time.perf_counter() - t
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
