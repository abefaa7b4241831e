"""HTML reports: self-contained, escaped, images that exist, the metric values shown; strict JSON."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.evaluation.report import (
    Report,
    evaluation_report,
    fmt,
    fmt_pm,
    json_clean,
    regression_report,
    write_json,
)

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff"
       b"\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82")  # a valid 1x1 PNG


class _Collector(HTMLParser):
    """Collects tags, attributes and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html_text: str) -> _Collector:
    c = _Collector()
    c.feed(html_text)
    return c


def _assert_offline(html_text: str) -> None:
    """No network references: no URLs, no scripts, no external stylesheets."""
    assert not re.search(r"(https?:)?//[a-z0-9]", html_text, flags=re.I), "external URL"
    tags = _parse(html_text).tags
    assert not any(t == "script" for t, _ in tags)
    assert not any(t == "link" for t, _ in tags)


def _images(path: Path) -> list[str]:
    return [a["src"] or "" for t, a in _parse(path.read_text()).tags if t == "img"]


def test_fmt():
    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a"
    assert fmt(12345) == "12,345"
    assert fmt(0.123456) == "0.1235"
    assert fmt(True) == "yes"
    assert fmt("text") == "text"
    assert fmt_pm(0.51234, 0.004) == "0.5123 ± 0.0040"
    assert fmt_pm(1551.2, 270.1) == "1551 ± 270"
    assert fmt_pm(0.5, 0.0) == "0.5 ± 0"
    assert fmt_pm(None, 1.0) == "n/a"


def test_report_escapes_and_links_images(tmp_path):
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "a b.png").write_bytes(PNG)
    rep = Report("Title <script>alert(1)</script>", subtitle="a & b")
    rep.heading("Metrics").table(["name", "value"], [["<b>bold</b>", 0.123456], ["count", 42]])
    rep.key_values([("file", "x<y>.h5"), ("n", 7)])
    rep.paragraph("warning: <i>", css="warn")
    rep.figures([out / "plots" / "a b.png"], ["caption <x>"])
    path = rep.write(out / "report.html")
    text = path.read_text()
    _assert_offline(text)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "x&lt;y&gt;.h5" in text
    assert "0.1235" in text and ">42<" in text and "a &amp; b" in text
    srcs = _images(path)
    assert srcs == ["plots/a%20b.png"]
    assert (path.parent / unquote(srcs[0])).is_file()  # relative link that resolves


def test_report_embeds_images(tmp_path):
    (tmp_path / "p.png").write_bytes(PNG)
    path = Report("t").figures([tmp_path / "p.png"]).write(tmp_path / "r.html", embed_images=True)
    srcs = _images(path)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    import base64

    assert base64.b64decode(srcs[0].split(",", 1)[1]) == PNG
    _assert_offline(path.read_text())


def test_report_missing_figure(tmp_path):
    with pytest.raises(InputError, match="figure not found"):
        Report("t").figures([tmp_path / "missing.png"]).write(tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(InputError, match="captions"):
        Report("t").figures([tmp_path / "a.png"], ["x", "y"])


def test_json_clean_and_write(tmp_path):
    data = {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(3), "d": (1, np.inf),
            "e": np.bool_(True), "f": tmp_path, 3: "key"}
    clean = json_clean(data)
    assert clean == {"a": None, "b": 1.5, "c": [0, 1, 2], "d": [1, None], "e": True,
                     "f": str(tmp_path), "3": "key"}
    path = write_json(tmp_path / "m.json", data)

    def reject(name: str) -> float:
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=reject) == clean


def _metrics(plot_names: list[str]) -> dict:
    return {
        "inputs": {
            "reference": {"path": "ref<1>.h5", "format": "calochallenge", "n_showers": 1000,
                          "n_showers_in_file": 5000, "energy_min_mev": 1e3,
                          "energy_max_mev": 1e6, "particles": "11"},
            "generated": {"path": "gen.h5", "format": "pointcloud", "n_showers": 1000,
                          "energy_min_mev": 1.1e3, "energy_max_mev": 0.9e6, "particles": None},
            "geometry": "ds2", "geometry_description": "ds2: cylindrical", "threshold_mev": 0.01515,
            "seed": 0, "classifier": "cpu",
        },
        "separation_power": {
            "mean": 0.0123, "n": 364, "mean_official": 0.0111, "n_official": 227,
            "groups": {"E_layer": {"n": 45, "mean": 0.02, "max": 0.05,
                                   "worst": [["E_layer_3", 0.05]]}},
            "worst": [["E_layer_3", 0.05], ["width_r_1", 0.04]],
            "skipped": {"E_layer_44": "no binning"},
        },
        "wasserstein": {"E_layer_3": 1.25}, "ks": {"E_layer_3": 0.0625},
        "fpd": {"value": 0.00123, "error": 0.0000456},
        "kpd": {"skipped": "too few showers"},
        "classifier": {
            "settings": {"hidden": [256, 256, 256], "epochs": 20},
            "low": {"auc_mean": 0.6789, "auc_std": 0.0123, "jsd_mean": 0.0456,
                    "jsd_std": 0.0011, "aucs": [0.67, 0.68, 0.69]},
            "high": {"skipped": "not run"},
        },
        "plots": {"features": plot_names, "profiles": []},
        "warnings": ["energies <differ>"],
    }


def test_evaluation_report_shows_metrics(tmp_path):
    for name in ("hist_E_layer.png", "hist_voxel_energy.png"):
        (tmp_path / name).write_bytes(PNG)
    path = evaluation_report(_metrics(["hist_E_layer.png", "hist_voxel_energy.png"]), tmp_path)
    assert path == tmp_path / "report.html"
    text = path.read_text()
    _assert_offline(text)
    for expected in ("0.679 ± 0.012", "0.0456 ± 0.0011", "1.230 ± 0.046", "0.0123",
                     "0.0111", "E_layer_3", "ref&lt;1&gt;.h5", "1,000 of 5,000",
                     "1 - 1000 GeV", "energies &lt;differ&gt;", "skipped: too few showers",
                     "256, 256, 256", "E_layer_44", "1.25", "0.0625"):
        assert expected in text, expected
    srcs = _images(path)
    assert srcs == ["hist_E_layer.png", "hist_voxel_energy.png"]
    assert all((tmp_path / s).is_file() for s in srcs)


def test_regression_report(tmp_path):
    (tmp_path / "rmse_per_bin.png").write_bytes(PNG)
    result = {
        "file": "pred.h5", "quantity": "momentum", "unit": "GeV", "n": 100,
        "methods": {"cnn": {
            "mae": 1.0851, "rmse": 1.8426, "mape": 10.5, "bias": -0.01, "sigma68": 1.2,
            "rel_bias": 0.001, "rel_sigma68": 0.1,
            "bins": {"edges": [1.0, 10.0, 20.0], "count": [60, 40], "mae": [1.0, 1.2],
                     "rmse": [1.5, 2.0], "mape": [12.0, 8.0], "bias": [0.0, 0.1],
                     "sigma68": [1.0, 1.4], "rel_sigma68": [0.12, 0.08],
                     "rel_sigma68_err": [0.01, math.nan]},
            "resolution_fit": {"a": 0.5, "a_err": 0.02, "b": 0.03, "b_err": 0.004, "c": 0.2,
                               "c_err": 0.05, "chi2": 3.2, "ndf": 4}}},
        "plots": ["rmse_per_bin.png"],
    }
    text = regression_report(result, tmp_path).read_text()
    _assert_offline(text)
    for expected in ("1.085", "1.843", "10.5", "0.500 ± 0.020", "0.0300 ± 0.0040",
                     "3.2 / 4", "1 - 10", "0.08 ± n/a", "0.120 ± 0.010", "momentum [GeV]"):
        assert expected in text, expected
    assert _images(tmp_path / "report.html") == ["rmse_per_bin.png"]
