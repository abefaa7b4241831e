"""Golden outputs of the point preprocessing: today's numbers must stay those of the first version."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from showerformer.data.points import PointPreprocessing, Preprocessing
from showerformer.errors import InputError
from showerformer.geometry import get_geometry
from showerformer.preprocessing import BoxCox, Chain, Columns, Log, MinMax, Standardize

# ---------------------------------------------------------------------------- golden data
# Written by the first ``Preprocessing`` (the per-layer statistics in one (L, 3) table) on
# ``golden_input()``, ``fit_points(..., n_layers=4, per_layer=True, min_points=3)``. The dict is
# also the layout of the checkpoints written by that version.


def golden_input() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Three padded showers over 4 layers: layer 3 has two points (global statistics), one point
    has zero energy (the energy floor applies)."""
    rng = np.random.default_rng(20240611)
    n, p, n_layers = 3, 9, 4
    layer = rng.integers(0, 3, (n, p)).astype(np.float64)
    layer[0, :2] = 3
    pts = np.stack([rng.normal(0, 10, (n, p)), rng.normal(5, 20, (n, p)),
                    (layer + 0.5) * 3.4 + rng.normal(0, 0.3, (n, p)),
                    rng.exponential(2.0, (n, p)) + 0.05, layer], axis=-1)  # (N, P, 5)
    pts[1, 3, 3] = 0.0
    mask = np.ones((n, p), bool)  # (N, P)
    mask[1, 6:] = False
    mask[2, 8:] = False
    e0 = rng.uniform(1e3, 9e4, n)  # (N,)
    return pts, mask, e0, n_layers


GOLDEN_DICT = {
    'kind': 'panshower',
    'mean': [[-2.636438163610703, -2.9273255439001247, 0.4461316972040172], [-1.3125987286105663, -4.551337339897844, 0.00870597944880529], [-0.18212540250473813, 1.4020260619622098, 0.06225341430684561], [-1.3700608235178044, -2.375312564308108, 0.27306914833719487]],
    'std': [[11.347527890240883, 14.410382963370179, 0.6970608062448385], [7.150797366632487, 9.610207835112687, 0.7324539871640148], [7.150205708107693, 16.90648994170619, 1.4066723223138573], [8.690894323052369, 14.629264312400576, 1.0809630894091897]],
    'layer_z': [1.861546800337877, 5.19571922702707, 8.400694209168787, 12.08693964247161],
    'energy_floor': 0.14407797581886622,
    'incident_log_mean': 10.541934784978404,
    'incident_log_std': 0.31196113966211053,
    'per_layer': True,
    'log_energy_max': 2.4148996710697723,
}
GOLDEN_FEATURES = [  # transform() of the real points of each shower
    [[0.6667298, -1.128991, 0.86917895],
     [-0.909983, -0.18698992, 0.98816437],
     [-1.1214247, 0.3227465, -1.7902671],
     [-2.0304656, -2.0391936, 1.179734],
     [-0.46181467, -0.6623904, -1.2549583],
     [0.63024336, 0.69021046, 0.34055945],
     [1.2244164, 0.056748755, 0.7995545],
     [0.34546176, -0.5706796, 0.23473337],
     [0.26300272, 0.5444373, -0.96213293]],
    [[-0.53210115, -0.16239423, -0.5812587],
     [0.29926798, 1.6010389, -0.8474143],
     [-0.48648986, -0.57287705, 0.8861609],
     [0.360607, 0.2827346, -1.4215493],
     [-0.2578678, -0.36636382, -1.4215493],
     [0.9867012, 1.7361492, 1.4685636]],
    [[1.2407078, -1.851011, 1.221309],
     [0.49843475, -0.14755706, -0.16977638],
     [1.7274244, 0.67797387, 0.97053045],
     [-1.4967226, -1.5608987, -0.52690506],
     [1.248175, -0.38362873, 0.77662885],
     [-1.2479612, 0.98561114, 0.39817512],
     [-1.1893842, 0.17075223, -0.45817438],
     [-0.00021058808, 1.2485911, 1.1580366]],
]
GOLDEN_POINTS = [  # inverse(transform()) of the real points of each shower
    [[4.4244175, -18.89162, 12.08694, 3.3622806, 3],
     [-9.278626, -5.1108375, 12.08694, 3.8237758, 3],
     [-9.331679, -1.4496765, 5.1957192, 0.27182895, 1],
     [-14.700372, -33.07358, 8.400694, 5.594324, 2],
     [-7.876893, -12.472625, 1.8615468, 0.6513875, 0],
     [3.1941438, 2.0817287, 5.1957192, 1.2945331, 1],
     [8.572703, 2.3614483, 8.400694, 3.277119, 2],
     [2.2879972, -8.246163, 8.400694, 1.4805984, 2],
     [0.34799257, 4.9182243, 1.8615468, 0.79888886, 0]],
    [[-8.674471, -5.2674885, 1.8615468, 1.0418094, 0],
     [1.9577022, 28.469975, 8.400694, 0.32310405, 2],
     [-8.156896, -11.182703, 1.8615468, 2.8974752, 0],
     [2.3962889, 6.182076, 8.400694, 0.14407797, 2],
     [-2.0259333, -4.7919, 8.400694, 0.14407797, 2],
     [8.560181, 22.09125, 1.8615468, 4.3484077, 0]],
    [[7.559451, -22.339937, 5.1957192, 2.467631, 1],
     [2.2516072, -5.9693913, 5.1957192, 0.8907893, 1],
     [16.965559, 6.8425374, 1.8615468, 3.0729883, 0],
     [-19.620539, -25.420473, 1.8615468, 1.0820385, 0],
     [8.742582, -5.0837893, 8.400694, 3.1731212, 2],
     [-10.236516, 4.9205904, 5.1957192, 1.3503326, 1],
     [-8.686467, 4.288847, 8.400694, 0.55864125, 2],
     [-0.18363115, 22.511318, 8.400694, 5.4261584, 2]],
]
GOLDEN_INCIDENT = [-1.399727, 0.8747153, 0.52501166]


# ---------------------------------------------------------------------------- the old formulas
# A frozen copy of the first version's arithmetic, to compare on any input.


def old_fit(points: np.ndarray, e0: np.ndarray, *, geometry: Any = None,
            n_layers: int | None = None, per_layer: bool = True,
            min_points: int = 10) -> dict[str, Any]:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 5)
    layer = np.rint(pts[:, 4]).astype(np.int64)
    if n_layers is None:
        n_layers = geometry.n_layers if geometry is not None else int(layer.max()) + 1
    positive = pts[:, 3][pts[:, 3] > 0]
    floor = float(positive.min()) if len(positive) else 1e-6
    feats = np.stack([pts[:, 0], pts[:, 1], np.log(np.maximum(pts[:, 3], floor))], axis=1)
    g_mean, g_std = feats.mean(axis=0), np.maximum(feats.std(axis=0), 1e-6)
    mean, std = np.tile(g_mean, (n_layers, 1)), np.tile(g_std, (n_layers, 1))
    counts = np.bincount(layer, minlength=n_layers)
    if per_layer:
        for lay in np.flatnonzero(counts >= max(min_points, 2)):
            sel = feats[layer == lay]
            mean[lay], std[lay] = sel.mean(axis=0), np.maximum(sel.std(axis=0), 1e-6)
    if geometry is not None and geometry.n_layers == n_layers:
        layer_z = 0.5 * (geometry.z_edges[:-1] + geometry.z_edges[1:])
    else:
        filled = np.flatnonzero(counts > 0)
        z_mean = np.bincount(layer, weights=pts[:, 2], minlength=n_layers)[filled] / counts[filled]
        layer_z = np.interp(np.arange(n_layers), filled, z_mean)
    log_e0 = np.log(np.maximum(np.asarray(e0, dtype=np.float64), 1e-12))
    return {"mean": mean, "std": std, "layer_z": layer_z, "energy_floor": floor,
            "incident_log_mean": float(log_e0.mean()),
            "incident_log_std": float(max(log_e0.std(), 1e-6)), "per_layer": per_layer,
            "log_energy_max": float(feats[:, 2].max() + np.log(2.0))}


def old_transform(s: dict[str, Any], points: np.ndarray, mask: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    layer = np.where(mask, np.rint(points[..., 4]), 0).astype(np.int64)
    e = np.log(np.maximum(points[..., 3], s["energy_floor"]))
    feats = np.stack([points[..., 0], points[..., 1], e], axis=-1)
    out = (feats - s["mean"][layer]) / s["std"][layer]
    return np.where(mask[..., None], out, 0.0).astype(np.float32), layer


def old_inverse(s: dict[str, Any], feats: np.ndarray, layer: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    layer = np.clip(np.asarray(layer, dtype=np.int64), 0, len(s["layer_z"]) - 1)
    phys = feats * s["std"][layer] + s["mean"][layer]
    cap = 700.0 if s["log_energy_max"] is None else min(700.0, float(s["log_energy_max"]))
    out = np.stack([phys[..., 0], phys[..., 1], s["layer_z"][layer],
                    np.exp(np.minimum(phys[..., 2], cap)), layer.astype(np.float64)], axis=-1)
    return np.where(mask[..., None], out, 0.0).astype(np.float32)


def old_incident(s: dict[str, Any], e0: np.ndarray) -> np.ndarray:
    e = np.maximum(np.asarray(e0, dtype=np.float64), 1e-12)
    return ((np.log(e) - s["incident_log_mean"]) / s["incident_log_std"]).astype(np.float32)


def _stats(pre: Preprocessing) -> dict[str, Any]:
    return {k: getattr(pre, k) for k in ("mean", "std", "layer_z", "energy_floor",
                                         "incident_log_mean", "incident_log_std", "per_layer",
                                         "log_energy_max")}


def _close(a: Any, b: Any) -> None:
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- tests


def test_fit_matches_the_golden_statistics() -> None:
    pts, mask, e0, n_layers = golden_input()
    pre = Preprocessing.fit_points(pts[mask], e0, n_layers=n_layers, min_points=3)
    for key, want in GOLDEN_DICT.items():
        if key != "kind":
            _close(getattr(pre, key), want)


@pytest.mark.parametrize("source", ["fitted", "old dict", "new dict"])
def test_outputs_match_the_golden_arrays(source: str) -> None:
    pts, mask, e0, n_layers = golden_input()
    pre = Preprocessing.fit_points(pts[mask], e0, n_layers=n_layers, min_points=3)
    if source == "old dict":  # a checkpoint of the first version, also after a re-save
        pre = Preprocessing.from_dict(json.loads(json.dumps(GOLDEN_DICT)))
        pre = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    elif source == "new dict":
        pre = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    feats, layer = pre.transform(pts, mask)
    for s in range(len(pts)):
        _close(feats[s][mask[s]], GOLDEN_FEATURES[s])
    assert (feats[~mask] == 0).all()
    back = pre.inverse(feats, layer, mask)
    for s in range(len(pts)):
        _close(back[s][mask[s]], GOLDEN_POINTS[s])
    _close(pre.transform_incident(e0), GOLDEN_INCIDENT)
    _close(pre.inverse_incident(GOLDEN_INCIDENT), e0)


@pytest.mark.parametrize("per_layer", [True, False])
@pytest.mark.parametrize("with_geometry", [True, False])
def test_matches_the_old_formulas_on_random_showers(per_layer: bool, with_geometry: bool) -> None:
    rng = np.random.default_rng(7)
    geo = get_geometry("ds2") if with_geometry else None  # 45 layers
    n, p, n_layers = 40, 60, 45
    layer = np.minimum(rng.geometric(0.08, (n, p)) - 1, n_layers - 1).astype(np.float64)
    pts = np.stack([rng.normal(0, 15, (n, p)), rng.normal(0, 15, (n, p)),
                    (layer + 0.5) * 3.4, rng.lognormal(0.0, 1.5, (n, p)), layer], axis=-1)
    pts[..., 3] *= rng.random((n, p)) > 0.02  # a few zero energies
    mask = rng.random((n, p)) < 0.8
    e0 = rng.uniform(1e3, 1e6, n)
    kw = {"geometry": geo, "n_layers": n_layers, "per_layer": per_layer, "min_points": 10}
    pre = Preprocessing.fit_points(pts[mask], e0, **kw)
    old = old_fit(pts[mask], e0, **kw)
    for key, value in old.items():
        _close(getattr(pre, key), value)
    feats, layer_idx = pre.transform(pts, mask)
    want, want_layer = old_transform(old, pts, mask)
    _close(feats, want)
    np.testing.assert_array_equal(layer_idx, want_layer)
    # generated features, outliers included: the energy is clipped the same way
    gen = rng.normal(0, 1, (n, p, 3)) * np.where(rng.random((n, p, 1)) < 0.05, 40.0, 1.0)
    gen_layer = rng.integers(-2, n_layers + 2, (n, p))  # out of range: clipped
    got, ref = pre.inverse(gen, gen_layer, mask), old_inverse(old, gen, gen_layer, mask)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    _close(pre.transform_incident(e0), old_incident(old, e0))
    again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.transform(pts, mask)[0], feats)
    np.testing.assert_array_equal(again.inverse(gen, gen_layer, mask), got)


def test_old_dict_without_energy_limit_and_bad_dicts() -> None:
    old = {k: v for k, v in GOLDEN_DICT.items() if k != "log_energy_max"}
    pre = Preprocessing.from_dict(old)
    assert pre.log_energy_max is None
    s = {**{k: np.asarray(v) if isinstance(v, list) else v for k, v in GOLDEN_DICT.items()},
         "log_energy_max": None}
    feats = np.full((1, 4, 3), 30.0)  # far beyond the training energies
    layer, mask = np.arange(4)[None], np.ones((1, 4), bool)
    _close(pre.inverse(feats, layer, mask), old_inverse(s, feats, layer, mask))
    with pytest.raises(InputError, match="mean"):
        Preprocessing.from_dict({k: v for k, v in GOLDEN_DICT.items() if k != "mean"})
    with pytest.raises(InputError, match="bogus"):
        Preprocessing.from_dict({**GOLDEN_DICT, "bogus": 1})
    with pytest.raises(InputError, match="kind"):
        Preprocessing.from_dict({**GOLDEN_DICT, "kind": "voxels"})


def test_new_layout_is_built_from_transforms() -> None:
    pts, mask, e0, n_layers = golden_input()
    pre = Preprocessing.fit_points(pts[mask], e0, n_layers=n_layers, min_points=3)
    d = pre.to_dict()
    assert set(d) == {"kind", "features", "incident", "layer_z"} and d["kind"] == "points"
    json.dumps(d)
    cols = pre.features.columns
    assert [type(c).__name__ for c in cols] == ["Standardize", "Standardize", "Chain"]
    assert [type(s).__name__ for s in cols[2].steps] == ["Log", "Clip", "Standardize"]
    assert all(c.per_group for c in (cols[0], cols[1], cols[2].steps[2]))
    assert [type(s).__name__ for s in pre.incident.steps] == ["Log", "Standardize"]
    assert PointPreprocessing is Preprocessing
    with pytest.raises(InputError, match="features") as info:
        Preprocessing.from_dict({k: v for k, v in d.items() if k != "features"})
    assert info.value.key == "features"
    with pytest.raises(InputError) as info:
        Preprocessing.from_dict({**d, "mean": [[0, 0, 0]]})
    assert info.value.key == "mean"
    bad = json.loads(json.dumps(d))
    bad["features"]["columns"][2]["steps"][0]["kind"] = "sqrt"
    with pytest.raises(InputError) as info:
        Preprocessing.from_dict(bad)
    assert info.value.key == "features.columns[2].steps[0].kind"
    bad = json.loads(json.dumps(d))
    bad["layer_z"] = bad["layer_z"][:2]  # per-layer statistics for 4 layers
    with pytest.raises(InputError, match="layer"):
        Preprocessing.from_dict(bad)
    with pytest.raises(InputError, match="features"):
        PointPreprocessing(features=Columns([Standardize(), Standardize()]),
                           incident=pre.incident, layer_z=pre.layer_z)


def test_other_feature_transforms_round_trip() -> None:
    """A generator may model other features (here Box-Cox energies, min-max positions): the
    transform, its inverse and the dict work the same way."""
    pts, mask, e0, _ = golden_input()
    real = pts[mask]
    features = Columns([MinMax(), MinMax(), Chain([BoxCox(), Standardize(per_group=True,
                                                                        min_count=3)])])
    features.fit(real[:, [0, 1, 3]][real[:, 3] > 0], groups=real[:, 4][real[:, 3] > 0])
    incident = Chain([Log(), MinMax()]).fit(e0)
    pre = PointPreprocessing(features=features, incident=incident, layer_z=np.arange(4) * 3.4)
    ok = mask & (pts[..., 3] > 0)
    feats, layer = pre.transform(pts, ok)
    assert feats[ok][:, :2].min() >= 0 and feats[ok][:, :2].max() <= 1
    back = pre.inverse(feats, layer, ok)
    np.testing.assert_allclose(back[ok][:, [0, 1, 3]], pts[ok][:, [0, 1, 3]], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pre.inverse_incident(pre.transform_incident(e0)), e0, rtol=1e-5)
    again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.transform(pts, ok)[0], feats)
    assert pre.log_energy_max is None and pre.per_layer
    with pytest.raises(AttributeError):
        _ = pre.energy_floor


def test_data_layer_imports_neither_models_nor_training() -> None:
    code = ("import sys, showerformer.data, showerformer.preprocessing, showerformer.nn.conditioning;"
            "bad = sorted(m for m in sys.modules if m.startswith(('showerformer.models', "
            "'showerformer.training'))); print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
