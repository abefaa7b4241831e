"""Composable, invertible, serializable transforms of per-point or per-shower values (NumPy)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar

import numpy as np

from showerformer.errors import InputError

__all__ = [
    "TRANSFORMS",
    "BoxCox",
    "Chain",
    "Clip",
    "Columns",
    "Identity",
    "Log",
    "Logit",
    "MinMax",
    "Standardize",
    "Transform",
    "iter_transforms",
    "register_transform",
    "transform_from_dict",
]

TRANSFORMS: dict[str, type[Transform]] = {}
"""Transform classes by their ``"kind"`` (the key of :func:`transform_from_dict`)."""

_T = TypeVar("_T", bound="type[Transform]")

STD_FLOOR = 1e-6
"""Smallest standard deviation :class:`Standardize` divides by."""

LOG_MAX = 700.0
"""Largest log value :meth:`Log.inverse` exponentiates (``exp(700)`` ~ 1e304 stays finite)."""


def register_transform(kind: str) -> Callable[[_T], _T]:
    """Class decorator adding a :class:`Transform` to :data:`TRANSFORMS` under ``kind``.

    Arguments:
        kind: the name stored as ``"kind"`` in :meth:`Transform.to_dict`.

    Returns:
        The decorator; it sets ``cls.kind = kind`` and returns the class.
    """

    def decorator(cls: _T) -> _T:
        if kind in TRANSFORMS and TRANSFORMS[kind] is not cls:
            raise ValueError(f"transform kind '{kind}' is already registered by {TRANSFORMS[kind]!r}")
        TRANSFORMS[kind] = cls
        cls.kind = kind
        return cls

    return decorator


def transform_from_dict(data: Mapping[str, Any]) -> Transform:
    """Rebuild any registered transform from its :meth:`Transform.to_dict`.

    Arguments:
        data: ``{"kind": ..., <parameters>}``.

    Returns:
        The transform, fitted as it was saved.

    Raises:
        InputError: not a mapping, a missing or unknown ``"kind"``, or a bad parameter (naming
            its key).
    """
    known = "one of " + ", ".join(repr(k) for k in sorted(TRANSFORMS))
    if not isinstance(data, Mapping):
        raise InputError(f"a {type(data).__name__}", key="kind",
                         expected="a mapping with a transform 'kind'")
    if "kind" not in data:
        raise InputError("transform without a kind", key="kind", expected=known)
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in TRANSFORMS:
        raise InputError(f"unknown transform kind {kind!r}", key="kind", expected=known)
    return TRANSFORMS[kind].from_dict(data)


def iter_transforms(transform: Transform) -> Iterator[Transform]:
    """``transform`` and every transform nested in it (steps of chains, columns), depth first."""
    yield transform
    for child in transform.children():
        yield from iter_transforms(child)


# ---------------------------------------------------------------------------- helpers


def _values(x: Any) -> np.ndarray:
    """``x`` as a float64 array (torch tensors are copied to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _groups(groups: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Integer group labels broadcast to ``shape``."""
    if hasattr(groups, "detach"):
        groups = groups.detach().cpu().numpy()
    g = np.asarray(groups)
    if g.dtype.kind not in "iub":
        if g.dtype.kind != "f" or not np.all(np.isfinite(g)) or np.any(np.rint(g) != g):
            raise InputError("group labels that are not whole numbers", key="groups",
                             expected="integer labels such as calorimeter layers")
    try:
        return np.broadcast_to(g.astype(np.int64), shape)
    except ValueError:
        raise InputError(f"group labels of shape {g.shape} for values of shape {shape}",
                         key="groups", expected="one label per value") from None


def _number(value: Any, key: str, *, positive: bool = False, optional: bool = True) -> float | None:
    """A finite float parameter (None allowed when ``optional``)."""
    if value is None:
        if optional:
            return None
        raise InputError("missing parameter", key=key, expected="a number")
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{value!r}", key=key, expected="a number")
    out = float(value)
    if not math.isfinite(out) or (positive and out <= 0):
        raise InputError(f"{value!r}", key=key,
                         expected="a positive finite number" if positive else "a finite number")
    return out


def _vector(value: Any, key: str) -> np.ndarray | None:
    if value is None:
        return None
    try:
        out = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError("not a list of numbers", key=key, expected="a list of numbers") from None
    if not np.all(np.isfinite(out)):
        raise InputError("non-finite values", key=key, expected="finite numbers")
    return out


def _unfitted(t: Transform, key: str) -> InputError:
    return InputError(f"{type(t).__name__} used before it was fitted", key=key,
                      expected="fit() on data first, or the parameter given")


# ---------------------------------------------------------------------------- base class


class Transform:
    """An invertible map of values, fitted on data, saved as a JSON-ready dict.

    Every transform except :class:`Columns` maps values element by element (any shape);
    :class:`Standardize` can use per-element group labels (``groups``, e.g. the calorimeter
    layer of every point). ``fit`` sets the parameters left unset (None) from data and keeps
    the ones given; ``forward`` and ``inverse`` return float64 arrays of the input's shape.
    Two transforms are equal when their :meth:`to_dict` are.
    """

    kind: ClassVar[str] = ""
    _params: ClassVar[tuple[str, ...]] = ()

    def fit(self, x: Any, groups: Any = None) -> Self:
        """Set the unset parameters from the values ``x`` (and their ``groups``); returns self."""
        return self

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        """Values -> transformed values (float64, shape of ``x``)."""
        raise NotImplementedError

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        """Transformed values -> values (float64, shape of ``y``)."""
        raise NotImplementedError

    def fit_forward(self, x: Any, groups: Any = None) -> np.ndarray:
        """:meth:`fit`, then :meth:`forward` on the same values."""
        return self.fit(x, groups).forward(x, groups)

    def children(self) -> tuple[Transform, ...]:
        """Transforms nested in this one (none for the elementwise transforms)."""
        return ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"kind": ..., <parameters>}``; :func:`transform_from_dict` inverts it."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in self._params:
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_dict` for this class.

        Raises:
            InputError: another kind, or an unknown or bad parameter, naming its key.
        """
        if not isinstance(data, Mapping):
            raise InputError(f"a {type(data).__name__}", key=cls.kind,
                             expected=f"a mapping of {cls.__name__} parameters")
        params = dict(data)
        kind = params.pop("kind", cls.kind)
        if kind != cls.kind:
            raise InputError(f"transform kind {kind!r}", key="kind", expected=repr(cls.kind))
        unknown = sorted(str(k) for k in set(params) - set(cls._params))
        if unknown:
            raise InputError(f"unknown {cls.__name__} parameter {unknown[0]!r}", key=unknown[0],
                             expected="one of " + ", ".join(cls._params) if cls._params
                             else "no parameters")
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "kind")
        return f"{type(self).__name__}({params})"


# ---------------------------------------------------------------------------- elementwise


@register_transform("identity")
class Identity(Transform):
    """``y = x``."""

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        return _values(x).copy()

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        return _values(y).copy()


@register_transform("log")
class Log(Transform):
    """``y = log(max(x, floor))``; inverse ``x = exp(min(y, 700))``.

    Arguments:
        floor: smallest value before the log (positive). None: fitted as the smallest positive
            value of the data (1e-6 when there is none).
    """

    _params = ("floor",)

    def __init__(self, floor: float | None = None) -> None:
        self.floor = _number(floor, "floor", positive=True)

    def fit(self, x: Any, groups: Any = None) -> Self:
        if self.floor is None:
            v = _values(x)
            positive = v[v > 0]
            self.floor = float(positive.min()) if positive.size else 1e-6
        return self

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        if self.floor is None:
            raise _unfitted(self, "floor")
        return np.log(np.maximum(_values(x), self.floor))

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        return np.exp(np.minimum(_values(y), LOG_MAX))


@register_transform("logit")
class Logit(Transform):
    """``y = logit(eps + (1 - 2 eps) x)`` of values in [0, 1]; inverse through the sigmoid.

    Arguments:
        eps: squeeze of [0, 1] into [eps, 1 - eps] so that 0 and 1 stay finite; in [0, 0.5).
    """

    _params = ("eps",)

    def __init__(self, eps: float = 1e-6) -> None:
        e = _number(eps, "eps", optional=False)
        if not 0.0 <= e < 0.5:  # type: ignore[operator]
            raise InputError(f"eps={eps!r}", key="eps", expected="a number in [0, 0.5)")
        self.eps = float(e)  # type: ignore[arg-type]

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        p = self.eps + (1.0 - 2.0 * self.eps) * _values(x)
        return np.log(p) - np.log1p(-p)

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        from scipy.special import expit

        return (expit(_values(y)) - self.eps) / (1.0 - 2.0 * self.eps)


@register_transform("minmax")
class MinMax(Transform):
    """``y = (x - lo) / (hi - lo)``: the fitted range to [0, 1] (a span of 1 when hi == lo).

    Arguments:
        lo, hi: the range; None: fitted as the smallest and largest value.
    """

    _params = ("lo", "hi")

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        self.lo, self.hi = _number(lo, "lo"), _number(hi, "hi")
        if self.lo is not None and self.hi is not None and self.hi < self.lo:
            raise InputError(f"lo={lo!r} above hi={hi!r}", key="hi", expected="hi >= lo")

    def fit(self, x: Any, groups: Any = None) -> Self:
        v = _values(x)
        if v.size == 0 and (self.lo is None or self.hi is None):
            raise InputError("no values to fit on", key="x", expected="at least one value")
        if self.lo is None:
            self.lo = float(v.min())
        if self.hi is None:
            self.hi = float(max(v.max(), self.lo))
        return self

    def _range(self) -> tuple[float, float]:
        if self.lo is None or self.hi is None:
            raise _unfitted(self, "lo" if self.lo is None else "hi")
        span = self.hi - self.lo
        return self.lo, span if span > 0 else 1.0

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        lo, span = self._range()
        return (_values(x) - lo) / span

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        lo, span = self._range()
        return _values(y) * span + lo


@register_transform("boxcox")
class BoxCox(Transform):
    """Box-Cox power transform of positive values, ``y = (x^lmbda - 1) / lmbda`` (``log x`` at
    ``lmbda = 0``).

    Arguments:
        lmbda: the power; None: fitted by maximum likelihood (``scipy.stats.boxcox``).

    References:
        Box & Cox, "An Analysis of Transformations", J. R. Stat. Soc. B 26 (1964) 211.
    """

    _params = ("lmbda",)

    def __init__(self, lmbda: float | None = None) -> None:
        self.lmbda = _number(lmbda, "lmbda")

    @staticmethod
    def _positive(x: Any) -> np.ndarray:
        v = _values(x)
        if v.size and not np.all(v > 0):
            raise InputError(f"{int(np.sum(~(v > 0)))} values that are not positive", key="x",
                             expected="positive values for a Box-Cox transform")
        return v

    def fit(self, x: Any, groups: Any = None) -> Self:
        if self.lmbda is None:
            from scipy.stats import boxcox

            v = self._positive(x).reshape(-1)
            if v.size < 2 or np.all(v == v[0]):
                raise InputError("fewer than two distinct values", key="x",
                                 expected="varied positive values to fit the Box-Cox power")
            self.lmbda = float(boxcox(v)[1])
        return self

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        from scipy.special import boxcox

        if self.lmbda is None:
            raise _unfitted(self, "lmbda")
        return np.asarray(boxcox(self._positive(x), self.lmbda), dtype=np.float64)

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        from scipy.special import inv_boxcox

        if self.lmbda is None:
            raise _unfitted(self, "lmbda")
        return np.asarray(inv_boxcox(_values(y), self.lmbda), dtype=np.float64)


@register_transform("clip")
class Clip(Transform):
    """``y = x``; the inverse clips to ``[lo, hi]`` (bounds generated outliers, e.g. energies).

    Arguments:
        lo, hi: bounds of the inverse; None: unbounded on that side.
    """

    _params = ("lo", "hi")

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        self.lo, self.hi = _number(lo, "lo"), _number(hi, "hi")
        if self.lo is not None and self.hi is not None and self.hi < self.lo:
            raise InputError(f"lo={lo!r} above hi={hi!r}", key="hi", expected="hi >= lo")

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        return _values(x).copy()

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        out = _values(y)
        if self.lo is not None:
            out = np.maximum(out, self.lo)
        if self.hi is not None:
            out = np.minimum(out, self.hi)
        return out.copy() if self.lo is None and self.hi is None else out


@register_transform("standardize")
class Standardize(Transform):
    """``y = (x - mean) / std``, globally or per group (e.g. per calorimeter layer).

    Arguments:
        per_group: use the statistics of every element's group (``groups`` labels
            ``0 .. n_groups - 1``); groups with fewer than ``max(min_count, 2)`` values use the
            global statistics.
        min_count: see ``per_group``.
        n_groups: number of groups; None: the largest label seen by :meth:`fit` + 1.
        mean, std: the global statistics (None: fitted). ``std`` is floored at 1e-6.
        group_mean, group_std: the per-group statistics (``n_groups`` each; None: fitted).
    """

    _params = ("per_group", "min_count", "n_groups", "mean", "std", "group_mean", "group_std")

    def __init__(
        self,
        per_group: bool = False,
        min_count: int = 10,
        *,
        n_groups: int | None = None,
        mean: float | None = None,
        std: float | None = None,
        group_mean: Sequence[float] | np.ndarray | None = None,
        group_std: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        if not isinstance(per_group, bool | np.bool_):
            raise InputError(f"{per_group!r}", key="per_group", expected="true or false")
        for key, value in (("min_count", min_count), ("n_groups", n_groups)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)
                                      or value < 1):
                raise InputError(f"{value!r}", key=key, expected="a positive integer")
        if min_count is None:
            raise InputError("None", key="min_count", expected="a positive integer")
        self.per_group, self.min_count = bool(per_group), int(min_count)
        self.n_groups = None if n_groups is None else int(n_groups)
        self.mean = _number(mean, "mean")
        self.std = _number(std, "std", positive=True)
        self.group_mean, self.group_std = _vector(group_mean, "group_mean"), _vector(group_std, "group_std")
        if (self.group_mean is None) != (self.group_std is None):
            raise InputError("only one of group_mean and group_std", key="group_std",
                             expected="both per-group statistics or neither")
        if self.group_mean is not None and self.group_std is not None:
            n = len(self.group_mean)
            if len(self.group_std) != n or n == 0 or (self.n_groups is not None and n != self.n_groups):
                raise InputError(f"{len(self.group_mean)} group means and {len(self.group_std)} "
                                 f"standard deviations for n_groups={self.n_groups}",
                                 key="group_mean", expected="one of each per group")
            if not np.all(self.group_std > 0):
                raise InputError("non-positive spread", key="group_std",
                                 expected="positive standard deviations")
            self.n_groups = n

    def fit(self, x: Any, groups: Any = None) -> Self:
        v = _values(x)
        flat = v.reshape(-1)
        if self.mean is None or self.std is None:
            if flat.size == 0:
                raise InputError("no values to fit on", key="x", expected="at least one value")
            if self.mean is None:
                self.mean = float(flat.mean())
            if self.std is None:
                self.std = float(max(flat.std(), STD_FLOOR))
        if self.per_group and self.group_mean is None:
            if groups is None:
                raise InputError("per-group statistics without group labels", key="groups",
                                 expected="a label per value (e.g. the layer of every point)")
            g = _groups(groups, v.shape).reshape(-1)
            if g.size and g.min() < 0:
                raise InputError(f"group label {int(g.min())}", key="groups",
                                 expected="labels >= 0")
            n = self.n_groups if self.n_groups is not None else int(g.max(initial=-1)) + 1
            if g.size and g.max() >= n:
                raise InputError(f"group labels from {g.min()} to {g.max()}", key="groups",
                                 expected=f"0 .. {n - 1}")
            n = max(n, 1)
            counts = np.bincount(g, minlength=n)  # (G,)
            own = counts >= max(self.min_count, 2)  # (G,) groups with their own statistics
            per = np.maximum(counts, 1)
            gm = np.where(own, np.bincount(g, weights=flat, minlength=n) / per, self.mean)
            dev = flat - gm[g]  # (M,) two passes: stable for large offsets
            var = np.bincount(g, weights=dev * dev, minlength=n) / per
            gs = np.where(own, np.maximum(np.sqrt(var), STD_FLOOR), self.std)
            self.n_groups, self.group_mean, self.group_std = n, gm, gs
        return self

    def _stats(self, shape: tuple[int, ...], groups: Any) -> tuple[Any, Any]:
        if self.per_group:
            if self.group_mean is None or self.group_std is None:
                raise _unfitted(self, "group_mean")
            if groups is None:
                raise InputError("per-group statistics without group labels", key="groups",
                                 expected="a label per value (e.g. the layer of every point)")
            g = _groups(groups, shape)
            n = len(self.group_mean)
            if g.size and (g.min() < 0 or g.max() >= n):
                raise InputError(f"group labels from {g.min()} to {g.max()}", key="groups",
                                 expected=f"0 .. {n - 1}")
            return self.group_mean[g], self.group_std[g]
        if self.mean is None or self.std is None:
            raise _unfitted(self, "mean")
        return self.mean, self.std

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        v = _values(x)
        mean, std = self._stats(v.shape, groups)
        return (v - mean) / std

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        v = _values(y)
        mean, std = self._stats(v.shape, groups)
        return v * std + mean


# ---------------------------------------------------------------------------- composition


@register_transform("chain")
class Chain(Transform):
    """Transforms applied in order (each fitted on the output of the previous ones) and
    inverted in reverse order.

    Arguments:
        steps: the transforms (instances or their dicts).
    """

    _params = ("steps",)

    def __init__(self, steps: Sequence[Transform | Mapping[str, Any]] = ()) -> None:
        if isinstance(steps, Transform | Mapping | str) or not isinstance(steps, Sequence):
            raise InputError(f"a {type(steps).__name__}", key="steps",
                             expected="a list of transforms")
        self.steps: list[Transform] = [_nested(s, f"steps[{i}]") for i, s in enumerate(steps)]

    def children(self) -> tuple[Transform, ...]:
        return tuple(self.steps)

    def fit(self, x: Any, groups: Any = None) -> Self:
        v = _values(x)
        for step in self.steps:
            v = step.fit_forward(v, groups)
        return self

    def fit_forward(self, x: Any, groups: Any = None) -> np.ndarray:
        v = _values(x)
        for step in self.steps:
            v = step.fit_forward(v, groups)
        return v

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        v = _values(x)
        for step in self.steps:
            v = step.forward(v, groups)
        return v if self.steps else v.copy()

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        v = _values(y)
        for step in reversed(self.steps):
            v = step.inverse(v, groups)
        return v if self.steps else v.copy()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": [s.to_dict() for s in self.steps]}


@register_transform("columns")
class Columns(Transform):
    """One transform per column of ``(..., k)`` values; ``groups`` label the rows (``(...)``).

    Arguments:
        columns: ``k`` transforms (instances or their dicts).
    """

    _params = ("columns",)

    def __init__(self, columns: Sequence[Transform | Mapping[str, Any]]) -> None:
        if isinstance(columns, Transform | Mapping | str) or not isinstance(columns, Sequence) \
                or len(columns) == 0:
            raise InputError(f"{columns!r}"[:80], key="columns",
                             expected="a non-empty list of transforms, one per column")
        self.columns: list[Transform] = [_nested(c, f"columns[{i}]") for i, c in enumerate(columns)]

    def children(self) -> tuple[Transform, ...]:
        return tuple(self.columns)

    def _split(self, x: Any) -> np.ndarray:
        v = _values(x)
        if v.ndim == 0 or v.shape[-1] != len(self.columns):
            raise InputError(f"values of shape {v.shape}", key="x",
                             expected=f"(..., {len(self.columns)}): one column per transform")
        return v

    def fit(self, x: Any, groups: Any = None) -> Self:
        v = self._split(x)
        for j, col in enumerate(self.columns):
            col.fit(v[..., j], groups)
        return self

    def forward(self, x: Any, groups: Any = None) -> np.ndarray:
        v = self._split(x)
        return np.stack([c.forward(v[..., j], groups) for j, c in enumerate(self.columns)], axis=-1)

    def inverse(self, y: Any, groups: Any = None) -> np.ndarray:
        v = self._split(y)
        return np.stack([c.inverse(v[..., j], groups) for j, c in enumerate(self.columns)], axis=-1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "columns": [c.to_dict() for c in self.columns]}


def _nested(item: Transform | Mapping[str, Any], where: str) -> Transform:
    """A transform, or one rebuilt from its dict (errors name ``where`` in the key)."""
    if isinstance(item, Transform):
        return item
    if isinstance(item, Mapping):
        try:
            return transform_from_dict(item)
        except InputError as exc:
            raise InputError(exc.what, key=f"{where}.{exc.key}" if exc.key else where,
                             expected=exc.expected) from None
    raise InputError(f"a {type(item).__name__}", key=where, expected="a transform or its dict")
