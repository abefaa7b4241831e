"""Self-contained HTML reports (inline CSS, no scripts, no network) of evaluation metrics and plots.

A :class:`Report` collects headings, paragraphs, tables and figures and writes one ``.html`` file
that opens offline: images are linked by relative path (the PNGs beside it) or embedded as base64
``data:`` URIs; every text is HTML-escaped. :func:`evaluation_report` and
:func:`regression_report` lay out the metrics dictionaries of
:func:`showerformer.evaluation.pipeline.evaluate_files` and
:func:`showerformer.evaluation.regression.evaluate_regression_file`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from showerformer import __version__
from showerformer._atomic import atomic_path
from showerformer.errors import InputError

__all__ = [
    "Report",
    "evaluation_report",
    "fmt",
    "fmt_pm",
    "json_clean",
    "regression_report",
    "write_json",
]

PathLike = str | os.PathLike[str]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1400px; padding: 0 1.5em; color: #222; line-height: 1.4; }
h1 { font-size: 1.7em; border-bottom: 2px solid #5790fc; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.1em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: .6em 0 1em 0; font-size: .93em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f0f3fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
.note { color: #555; font-size: .9em; }
.warn { background: #fff4e0; border-left: 4px solid #f89c20; padding: .4em .8em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


def fmt(value: Any, digits: int = 4) -> str:
    """A value for a table cell: ``n/a`` for None and NaN, ``1,234`` for integers, 4 significant
    digits for floats."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def fmt_pm(value: Any, error: Any, digits: int = 4) -> str:
    """``value ± error``: the error with two significant digits and the value rounded to the
    same decimal place (``1551 ± 270``, ``0.5123 ± 0.0040``); ``n/a`` for missing numbers."""
    if value is None:
        return "n/a"
    try:
        v, e = float(value), float(error)
    except (TypeError, ValueError):
        return f"{fmt(value, digits)} ± {fmt(error, 2)}"
    if not math.isfinite(v):
        return "n/a"
    if not math.isfinite(e) or e <= 0:
        return f"{fmt(v, digits)} ± {fmt(e, 2) if math.isfinite(e) else 'n/a'}"
    decimals = max(0, 1 - math.floor(math.log10(e)))
    if decimals > 8 or abs(v) >= 1e7:
        return f"{v:.{digits}g} ± {e:.2g}"
    return f"{v:.{decimals}f} ± {e:.{decimals}f}"


@dataclass
class _Block:
    kind: str
    payload: Any


@dataclass
class Report:
    """An HTML report built block by block.

    Arguments:
        title: the page title and top heading.
        subtitle: an optional line under the title.
    """

    title: str
    subtitle: str | None = None
    blocks: list[_Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> Report:
        """A section heading (level 2 or 3)."""
        self.blocks.append(_Block("heading", (int(min(max(level, 2), 4)), str(text))))
        return self

    def paragraph(self, text: str, *, css: str | None = None) -> Report:
        """A paragraph of plain text; ``css`` = ``"note"`` or ``"warn"`` styles it."""
        self.blocks.append(_Block("paragraph", (str(text), css)))
        return self

    def key_values(self, rows: Sequence[tuple[str, Any]]) -> Report:
        """A two-column table of names and values."""
        self.blocks.append(_Block("table", (None, [(k, fmt(v) if not isinstance(v, str) else v)
                                                   for k, v in rows], None)))
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], *,
              caption: str | None = None) -> Report:
        """A table; numbers are formatted with :func:`fmt`, strings are shown as given."""
        cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
        self.blocks.append(_Block("table", (list(header), cells, caption)))
        return self

    def figures(self, paths: Sequence[PathLike], captions: Sequence[str] | None = None) -> Report:
        """Figures (PNG files), one per line, with optional captions."""
        caps = list(captions) if captions is not None else [Path(p).stem for p in paths]
        if len(caps) != len(paths):
            raise InputError(f"{len(caps)} captions for {len(paths)} figures", key="captions",
                             expected="one caption per figure")
        for p, c in zip(paths, caps, strict=True):
            self.blocks.append(_Block("figure", (Path(p), c)))
        return self

    # ------------------------------------------------------------------ rendering
    def to_html(self, base_dir: PathLike, *, embed_images: bool = False) -> str:
        """The page as a string; figure links are relative to ``base_dir``.

        Raises:
            InputError: a figure file does not exist.
        """
        base = Path(base_dir)
        e = html.escape
        parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style>", "</head>",
                 "<body>", f"<h1>{e(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f'<p class="note">{e(self.subtitle)}</p>')
        for block in self.blocks:
            if block.kind == "heading":
                level, text = block.payload
                parts.append(f"<h{level}>{e(text)}</h{level}>")
            elif block.kind == "paragraph":
                text, css = block.payload
                cls = f' class="{e(css)}"' if css else ""
                parts.append(f"<p{cls}>{e(text)}</p>")
            elif block.kind == "table":
                parts.append(_table_html(*block.payload))
            elif block.kind == "figure":
                path, caption = block.payload
                parts.append(_figure_html(path, caption, base, embed_images))
        parts.append(f'<p class="note">Written by showerformer {e(__version__)}.</p>')
        parts += ["</body>", "</html>"]
        return "\n".join(parts) + "\n"

    def write(self, path: PathLike, *, embed_images: bool = False) -> Path:
        """Write the page atomically; figure links are relative to the page's folder."""
        p = Path(path)
        text = self.to_html(p.parent, embed_images=embed_images)
        with atomic_path(p) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return p


def _is_number_text(text: str) -> bool:
    t = text.replace(",", "").replace("±", " ").replace("%", "").split()
    if not t:
        return False
    try:
        for tok in t:
            if tok != "n/a":
                float(tok)
    except ValueError:
        return False
    return True


def _table_html(header: list[str] | None, rows: list[list[str]], caption: str | None) -> str:
    e = html.escape
    out = ["<table>"]
    if caption:
        out.append(f"<caption class=\"note\">{e(caption)}</caption>")
    if header:
        out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            if header is None and i == 0:
                cells.append(f"<th>{e(c)}</th>")
            elif _is_number_text(c):
                cells.append(f'<td class="num">{e(c)}</td>')
            else:
                cells.append(f"<td>{e(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure_html(path: Path, caption: str, base: Path, embed: bool) -> str:
    e = html.escape
    full = path if path.is_absolute() else base / path
    if not full.is_file():
        raise InputError("figure not found", path=full, key="figures",
                         expected="a PNG written before the report")
    if embed:
        data = base64.b64encode(full.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    else:
        rel = Path(os.path.relpath(full.resolve(), base.resolve())).as_posix()
        src = urllib.parse.quote(rel)
    return (f'<figure><img src="{e(src)}" alt="{e(caption)}" loading="lazy">'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def json_clean(obj: Any) -> Any:
    """A copy that strict JSON accepts: NaN and inf become None, NumPy arrays and scalars become
    lists and Python numbers, tuples become lists, keys become strings."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def write_json(path: PathLike, data: Mapping[str, Any]) -> Path:
    """Write strict JSON (NaN -> null) atomically; returns the path."""
    p = Path(path)
    text = json.dumps(json_clean(dict(data)), indent=2, allow_nan=False)
    with atomic_path(p) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return p


# ---------------------------------------------------------------------------- evaluation report
_KIND_NAMES = {"low": "low-level (log10 E_inc, E_i / E_inc)",
               "low_normed": "low-level normalized (log10 E_inc, E_i / E_layer, log10 E_layer)",
               "high": "high-level features"}
_GROUP_NAMES = {"E_layer": "energy per layer", "EC_eta": "centre of energy in eta",
                "EC_phi": "centre of energy in phi", "width_eta": "width in eta",
                "width_phi": "width in phi", "EC_r": "centre of energy in r",
                "width_r": "width in r", "sparsity": "sparsity",
                "E_tot/E_inc_at_E": "E_tot / E_inc per incident energy (ds1)"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _energy_range(info: Mapping[str, Any]) -> str:
    lo, hi = info.get("energy_min_mev"), info.get("energy_max_mev")
    if lo is None or hi is None:
        return "n/a"
    return f"{fmt(lo / 1e3)} - {fmt(hi / 1e3)} GeV"


def _plot_list(plots: Any) -> list[tuple[str, list[str]]]:
    if isinstance(plots, Mapping):
        return [(str(k), [str(p) for p in v]) for k, v in plots.items() if v]
    if plots:
        return [("plots", [str(p) for p in plots])]
    return []


_PLOT_SECTIONS = {"features": "Feature histograms", "profiles": "Longitudinal and radial profiles",
                  "average_showers": "Average showers", "single_showers": "Single showers"}
_PLOT_NOTES = {
    "features": "Reference filled, generated as a red line with Poisson errors; densities "
                "normalized to the entries inside the official binning; the lower panels show "
                "generated / reference; S is the separation power.",
    "average_showers": "Mean energy per voxel on a logarithmic colour scale, reference and "
                       "generated on the same scale.",
    "single_showers": "The first showers of each sample, energy summed onto the x-y, x-z and "
                      "y-z planes, logarithmic colour scale.",
}


def evaluation_report(
    metrics: Mapping[str, Any],
    out_dir: PathLike,
    *,
    embed_images: bool = False,
    filename: str = "report.html",
) -> Path:
    """Write ``report.html`` for the metrics of
    :func:`showerformer.evaluation.pipeline.evaluate_files`.

    Arguments:
        metrics: the metrics dictionary (as written to metrics.json).
        out_dir: the folder of the report and the PNGs (plot paths are relative to it).
        embed_images: embed the PNGs as base64 instead of linking them.
        filename: the report's file name.

    Returns:
        The path written.
    """
    out = Path(out_dir)
    inputs = metrics.get("inputs", {})
    rep = Report("Shower evaluation: generated vs reference",
                 subtitle=f"geometry {inputs.get('geometry', 'n/a')}; CaloChallenge definitions "
                          "(arXiv:2410.21611); separation power arXiv:2009.03796 eq. 15; "
                          "FPD/KPD as JetNet (arXiv:2211.10295)")
    # inputs
    rep.heading("Inputs")
    rows = []
    for role in ("reference", "generated"):
        info = inputs.get(role, {})
        used, total = info.get("n_showers"), info.get("n_showers_in_file")
        count = fmt(used) if total in (None, used) else f"{fmt(used)} of {fmt(total)}"
        rows.append([role, str(info.get("path", "n/a")), str(info.get("format", "n/a")), count,
                     _energy_range(info), str(info.get("particles") or "not stored")])
    rep.table(["sample", "file", "format", "showers", "incident energy", "particles"], rows)
    rep.key_values([
        ("geometry", str(inputs.get("geometry_description", inputs.get("geometry", "n/a")))),
        ("voxel threshold", f"{fmt(inputs.get('threshold_mev'))} MeV"),
        ("seed", inputs.get("seed")),
        ("classifier", str(inputs.get("classifier", "n/a"))),
    ])
    for w in metrics.get("warnings", []):
        rep.paragraph(f"Warning: {w}", css="warn")
    # headline
    rep.heading("Headline metrics")
    head: list[list[Any]] = []
    cls = metrics.get("classifier", {})
    for kind in ("low", "low_normed", "high"):
        r = cls.get(kind)
        if isinstance(r, Mapping) and "auc_mean" in r:
            head.append([f"classifier AUC, {kind}", fmt_pm(r["auc_mean"], r.get("auc_std")),
                         f"{_plural(len(r.get('aucs', [])), 'repetition')}; 0.5 = indistinguishable"])
            head.append([f"classifier JSD, {kind}", fmt_pm(r["jsd_mean"], r.get("jsd_std")),
                         "(ln 2 - BCE) / ln 2 after isotonic calibration; 0 = indistinguishable"])
    for key, label in (("fpd", "FPD x 10^3"), ("kpd", "KPD x 10^3")):
        r = metrics.get(key, {})
        if isinstance(r, Mapping) and r.get("value") is not None:
            head.append([label, fmt_pm(r["value"] * 1e3, (r.get("error") or 0.0) * 1e3),
                         "high-level features, reference first (JetNet definitions)"])
        elif isinstance(r, Mapping) and r.get("skipped"):
            head.append([label, "n/a", f"skipped: {r['skipped']}"])
    sp = metrics.get("separation_power", {})
    if sp.get("mean_official") is not None:
        head.append(["separation power, mean of the official histograms",
                     fmt(sp["mean_official"]), f"{sp.get('n_official', 'n/a')} histograms"])
    if sp.get("mean") is not None:
        head.append(["separation power, mean of all histograms", fmt(sp["mean"]),
                     f"{sp.get('n', 'n/a')} histograms"])
    rep.table(["metric", "value", "note"], head)
    # classifier details
    if cls:
        rep.heading("Classifier tests")
        if cls.get("skipped"):
            rep.paragraph(f"Skipped: {cls['skipped']}", css="note")
        rows = []
        for kind, r in cls.items():
            if isinstance(r, Mapping) and "auc_mean" in r:
                rows.append([_KIND_NAMES.get(kind, kind), fmt_pm(r["auc_mean"], r.get("auc_std")),
                             fmt_pm(r["jsd_mean"], r.get("jsd_std")),
                             ", ".join(fmt(a) for a in r.get("aucs", []))])
            elif isinstance(r, Mapping) and r.get("skipped"):
                rows.append([_KIND_NAMES.get(kind, kind), "n/a", "n/a", f"skipped: {r['skipped']}"])
        if rows:
            rep.table(["inputs", "AUC (mean ± std)", "JSD (mean ± std)", "AUC per repetition"],
                      rows)
        settings = cls.get("settings")
        if isinstance(settings, Mapping):
            rep.heading("Classifier settings", level=3)
            rep.key_values([(str(k), v if not isinstance(v, list | tuple | dict) else str(v))
                            for k, v in settings.items()])
    # separation powers
    groups = sp.get("groups", {})
    if groups:
        rep.heading("Separation power per feature group")
        rows = []
        for name, g in groups.items():
            worst = "; ".join(f"{n}: {fmt(v)}" for n, v in g.get("worst", []))
            rows.append([_GROUP_NAMES.get(name, name), g.get("n"), g.get("mean"), g.get("max"),
                         worst])
        rep.table(["group", "histograms", "mean", "max", "worst features"], rows)
    worst = sp.get("worst", [])
    if worst:
        w1 = metrics.get("wasserstein", {})
        ks = metrics.get("ks", {})
        rep.heading("Worst features", level=3)
        rep.table(["feature", "separation power", "Wasserstein-1", "KS statistic"],
                  [[n, v, w1.get(n), ks.get(n)] for n, v in worst],
                  caption="Wasserstein-1 in the feature's units (MeV, mm); all values in "
                          "metrics.json")
    skipped = sp.get("skipped", {})
    if skipped:
        rep.paragraph("Histograms without a binning (no reference entries above the "
                      f"threshold): {', '.join(sorted(skipped))}", css="note")
    # plots
    for section, paths in _plot_list(metrics.get("plots")):
        rep.heading(_PLOT_SECTIONS.get(section, section))
        if section in _PLOT_NOTES:
            rep.paragraph(_PLOT_NOTES[section], css="note")
        rep.figures(paths, [Path(p).stem.replace("_", " ") for p in paths])
    return rep.write(out / filename, embed_images=embed_images)


# ---------------------------------------------------------------------------- regression report
def regression_report(
    result: Mapping[str, Any],
    out_dir: PathLike,
    *,
    embed_images: bool = False,
    filename: str = "report.html",
) -> Path:
    """Write ``report.html`` for the result of
    :func:`showerformer.evaluation.regression.evaluate_regression_file`.

    Arguments:
        result: the metrics dictionary (as written to metrics.json).
        out_dir: the folder of the report and the PNGs.
        embed_images: embed the PNGs as base64 instead of linking them.
        filename: the report's file name.

    Returns:
        The path written.
    """
    out = Path(out_dir)
    q, unit = str(result.get("quantity", "value")), str(result.get("unit", ""))
    u = f" [{unit}]" if unit else ""
    rep = Report(f"Regression evaluation: {q}",
                 subtitle="sigma68 = half width of the central 68.27% interval of the residuals; "
                          "MAPE in percent; resolution sigma/E = a/sqrt(E) (+) b (+) c/E")
    rep.heading("Input")
    methods: Mapping[str, Any] = result.get("methods", {})
    rep.key_values([("file", str(result.get("file", "n/a"))), ("entries", result.get("n")),
                    ("quantity", f"{q}{u}"), ("methods", ", ".join(methods) or "none")])
    rep.heading("Overall")
    rep.table(["method", f"MAE{u}", f"RMSE{u}", "MAPE [%]", f"bias{u}", f"sigma68{u}",
               "relative bias", "relative sigma68"],
              [[name, m.get("mae"), m.get("rmse"), m.get("mape"), m.get("bias"), m.get("sigma68"),
                m.get("rel_bias"), m.get("rel_sigma68")] for name, m in methods.items()])
    rep.heading("Resolution fit")
    rows = []
    for name, m in methods.items():
        fit = m.get("resolution_fit") or {}
        if "a" in fit:
            rows.append([name, fmt_pm(fit["a"], fit["a_err"]), fmt_pm(fit["b"], fit["b_err"]),
                         fmt_pm(fit["c"], fit["c_err"]),
                         f"{fmt(fit['chi2'])} / {fit['ndf']}"])
        else:
            rows.append([name, "n/a", "n/a", "n/a", f"skipped: {fit.get('skipped', 'n/a')}"])
    rep.table(["method", "a (stochastic)", "b (constant)", "c (noise)", "chi2 / ndf"], rows,
              caption=f"a in sqrt({unit or 'unit'}), b dimensionless, c in {unit or 'units'}; "
                      "fit to the relative sigma68 per bin with bootstrap errors")
    for name, m in methods.items():
        b = m.get("bins", {})
        edges = b.get("edges", [])
        rep.heading(f"Per bin: {name}", level=3)
        rows = []
        for i in range(max(0, len(edges) - 1)):
            rows.append([f"{fmt(edges[i])} - {fmt(edges[i + 1])}", b["count"][i], b["mae"][i],
                         b["rmse"][i], b["mape"][i], b["bias"][i], b["sigma68"][i],
                         fmt_pm(b["rel_sigma68"][i], b["rel_sigma68_err"][i])])
        rep.table([f"true {q}{u}", "count", f"MAE{u}", f"RMSE{u}", "MAPE [%]", f"bias{u}",
                   f"sigma68{u}", "relative sigma68"], rows)
    analysis = result.get("analysis")
    if analysis:
        rep.heading(f"Network analysis: {analysis.get('method', 'network')}")
        pca = analysis.get("cls_pca")
        if pca:
            ratio = pca.get("explained_variance_ratio") or []
            rep.key_values([
                ("final CLS token, variance in PC 1 / PC 2",
                 " / ".join(f"{100 * r:.1f}%" for r in ratio)),
                (f"Spearman correlation of PC 1 with the true {q}",
                 fmt(pca.get("pc1_spearman_with_true"))),
            ])
        att = analysis.get("cross_scale_attention")
        if att:
            rep.table(["", *att["keys"]],
                      [[f"block {b}", *row] for b, row in enumerate(att["mean"])]
                      + [["mean", *att["mean_over_blocks"]]],
                      caption="stage-2 (cross-scale) attention of each block's query to itself "
                              "and to the CLS token of each scale, averaged over heads and events")
    plots = [str(p) for p in result.get("plots", [])]
    if plots:
        rep.heading("Plots")
        rep.figures(plots, [Path(p).stem.replace("_", " ") for p in plots])
    return rep.write(out / filename, embed_images=embed_images)
