"""Tests of the invertible transforms: round trips, fitting, serialization and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from showerformer.errors import InputError
from showerformer.preprocessing import (
    TRANSFORMS,
    BoxCox,
    Chain,
    Clip,
    Columns,
    Identity,
    Log,
    Logit,
    MinMax,
    Standardize,
    Transform,
    iter_transforms,
    transform_from_dict,
)

RNG_SEED = 11


def data(kind: str, shape: tuple[int, ...] = (500,)) -> np.ndarray:
    """Random values in the domain of a transform: ``real``, ``positive`` or ``unit``."""
    rng = np.random.default_rng(RNG_SEED)
    if kind == "positive":
        return rng.lognormal(0.0, 2.0, shape)
    if kind == "unit":
        return rng.uniform(0.0, 1.0, shape)
    return rng.normal(3.0, 20.0, shape)


def layers(shape: tuple[int, ...] = (500,), n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(RNG_SEED + 1)
    g = np.minimum(rng.geometric(0.35, shape) - 1, n - 1)
    g.reshape(-1)[:n] = np.arange(n)  # every layer present
    return g


def _rel_close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


CASES: dict[str, tuple[Callable[[], Transform], str]] = {
    "identity": (Identity, "real"),
    "log": (Log, "positive"),
    "log-floor": (lambda: Log(1e-3), "positive"),
    "logit": (lambda: Logit(1e-6), "unit"),
    "minmax": (MinMax, "real"),
    "minmax-given": (lambda: MinMax(-100.0, 100.0), "real"),
    "boxcox": (BoxCox, "positive"),
    "boxcox-given": (lambda: BoxCox(0.3), "positive"),
    "clip": (Clip, "real"),
    "standardize": (Standardize, "real"),
    "standardize-per-layer": (lambda: Standardize(per_group=True, min_count=20), "real"),
    "chain-log-standardize": (lambda: Chain([Log(), Clip(hi=50.0), Standardize(per_group=True)]),
                              "positive"),
    "chain-boxcox-minmax-logit": (lambda: Chain([BoxCox(), MinMax(), Logit()]), "positive"),
    "chain-empty": (lambda: Chain([]), "real"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_and_serialization(name: str) -> None:
    make, domain = CASES[name]
    x = data(domain)  # (M,)
    g = layers()
    t = make().fit(x, g)
    y = t.forward(x, g)
    assert y.shape == x.shape and y.dtype == np.float64 and np.all(np.isfinite(y))
    _rel_close(t.inverse(y, g), x)
    d = t.to_dict()
    assert d["kind"] in TRANSFORMS
    again = transform_from_dict(json.loads(json.dumps(d)))  # JSON-ready, exact
    assert again == t and type(again) is type(t)
    np.testing.assert_array_equal(again.forward(x, g), y)
    np.testing.assert_array_equal(again.inverse(y, g), t.inverse(y, g))
    assert repr(t).startswith(type(t).__name__)


def test_columns_round_trip_with_groups_on_padded_shapes() -> None:
    rng = np.random.default_rng(3)
    x = np.stack([rng.normal(0, 10, (4, 50)), rng.uniform(0, 1, (4, 50)),
                  rng.lognormal(0, 1, (4, 50))], axis=-1)  # (N, P, 3)
    g = rng.integers(0, 5, (4, 50))  # (N, P)
    t = Columns([Standardize(per_group=True, min_count=5), Logit(),
                 Chain([Log(), Standardize(per_group=True, min_count=5)])]).fit(x, g)
    y = t.forward(x, g)
    assert y.shape == x.shape
    _rel_close(t.inverse(y, g), x)
    again = transform_from_dict(json.loads(json.dumps(t.to_dict())))
    np.testing.assert_array_equal(again.forward(x, g), y)
    assert [type(s).__name__ for s in iter_transforms(t)] == [
        "Columns", "Standardize", "Logit", "Chain", "Log", "Standardize"]
    with pytest.raises(InputError, match="x"):
        t.forward(x[..., :2], g)


def test_standardize_statistics() -> None:
    x = np.array([1.0, 3.0, 10.0, 10.0, 10.0, 20.0, 30.0])
    g = np.array([0, 0, 1, 1, 1, 2, 3])
    t = Standardize(per_group=True, min_count=2, n_groups=5).fit(x, g)
    np.testing.assert_allclose(t.group_mean, [2.0, 10.0, x.mean(), x.mean(), x.mean()])
    np.testing.assert_allclose(t.group_std, [1.0, 1e-6, x.std(), x.std(), x.std()])  # floored
    np.testing.assert_allclose(t.forward(x, g)[:2], [-1.0, 1.0])
    glob = Standardize().fit(x)
    np.testing.assert_allclose(glob.forward(x), (x - x.mean()) / x.std())
    # groups with fewer than min_count values use the global statistics
    big = Standardize(per_group=True, min_count=3).fit(x, g)
    np.testing.assert_allclose(big.group_mean, [x.mean(), 10.0, x.mean(), x.mean()])
    with pytest.raises(InputError, match="groups"):
        t.forward(x)  # per-group statistics need labels
    with pytest.raises(InputError, match="groups"):
        t.forward(x, np.full(7, 5))
    with pytest.raises(InputError, match="groups"):
        Standardize(per_group=True).fit(x)
    with pytest.raises(InputError, match="groups"):
        Standardize(per_group=True, n_groups=2).fit(x, g)
    with pytest.raises(InputError, match="group_std"):
        Standardize(per_group=True, group_mean=[0.0], group_std=[0.0])


def test_fitted_parameters() -> None:
    x = np.array([0.0, -1.0, 0.5, 2.0, 8.0])
    assert Log().fit(x).floor == 0.5  # the smallest positive value
    assert Log().fit(np.zeros(3)).floor == 1e-6
    assert Log(0.1).fit(x).floor == 0.1  # given parameters are kept
    m = MinMax().fit(x)
    assert (m.lo, m.hi) == (-1.0, 8.0)
    np.testing.assert_allclose(m.forward(x)[[1, 4]], [0.0, 1.0])
    assert MinMax().fit(np.ones(3)).forward(np.ones(3)).tolist() == [0.0, 0.0, 0.0]
    pos = data("positive")
    assert BoxCox().fit(pos).lmbda == pytest.approx(stats.boxcox(pos)[1], rel=1e-12)
    np.testing.assert_allclose(BoxCox(0.0).fit(pos).forward(pos), np.log(pos), rtol=1e-12)
    c = Clip(-1.0, 1.0)
    np.testing.assert_array_equal(c.forward(x), x)  # the forward leaves values alone
    np.testing.assert_array_equal(c.inverse(x), np.clip(x, -1.0, 1.0))
    logit = Logit(0.0)
    np.testing.assert_allclose(logit.forward(np.array([0.5, 0.75])), [0.0, np.log(3.0)])


def test_unfitted_and_bad_parameters() -> None:
    x = data("real")
    for t, key in ((Log(), "floor"), (MinMax(), "lo"), (BoxCox(), "lmbda"),
                   (Standardize(), "mean"), (Standardize(per_group=True), "group_mean")):
        with pytest.raises(InputError, match=key):
            t.forward(x, layers())
    with pytest.raises(InputError, match="floor"):
        Log(-1.0)
    with pytest.raises(InputError, match="eps"):
        Logit(0.5)
    with pytest.raises(InputError, match="hi"):
        MinMax(2.0, 1.0)
    with pytest.raises(InputError, match="hi"):
        Clip(2.0, 1.0)
    with pytest.raises(InputError, match="x"):
        BoxCox().fit(np.array([1.0, -2.0]))
    with pytest.raises(InputError, match="x"):
        BoxCox().fit(np.ones(4))
    with pytest.raises(InputError, match="min_count"):
        Standardize(min_count=0)
    with pytest.raises(InputError, match="columns"):
        Columns([])
    with pytest.raises(InputError, match="steps"):
        Chain(Log())  # type: ignore[arg-type]


def test_from_dict_errors_name_the_key() -> None:
    with pytest.raises(InputError, match="kind") as info:
        transform_from_dict({"floor": 1.0})
    assert info.value.key == "kind"
    with pytest.raises(InputError, match="'sqrt'") as info:
        transform_from_dict({"kind": "sqrt"})
    assert info.value.key == "kind" and "standardize" in str(info.value)
    with pytest.raises(InputError) as info:
        transform_from_dict({"kind": "log", "floor": 1.0, "base": 10})
    assert info.value.key == "base"
    with pytest.raises(InputError) as info:
        transform_from_dict({"kind": "chain", "steps": [{"kind": "log"}, {"kind": "nope"}]})
    assert info.value.key == "steps[1].kind"
    with pytest.raises(InputError) as info:
        transform_from_dict({"kind": "columns", "columns": [{"kind": "log", "floor": "a"}]})
    assert info.value.key == "columns[0].floor"
    with pytest.raises(InputError, match="kind"):
        transform_from_dict(["log"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="kind"):
        Log.from_dict({"kind": "logit"})


def test_transforms_are_equal_by_their_dicts() -> None:
    assert Log(1.0) == Log(1.0) and Log(1.0) != Log(2.0) and Log(1.0) != Logit()
    assert Chain([Log(1.0)]) == Chain([{"kind": "log", "floor": 1.0}])
    with pytest.raises(TypeError):
        hash(Log(1.0))
