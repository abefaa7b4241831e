"""Classifier test of a generated sample against its reference: calibrated AUC and JSD, seeded.

A fully connected network learns to tell reference showers (label 1) from generated ones
(label 0), as in the CaloChallenge evaluation (``code/evaluate.py``, ``DNN``): 3 hidden layers of
2048 LeakyReLU units (the ``more_evaluations`` branch; 512 on main), no dropout, Adam with
learning rate 2e-4, batches of 1000, 50 epochs, binary cross-entropy on logits, everything in
float64. Each sample is split into train / test / validation parts (60 / 20 / 20 % of the
smaller sample, validation the remainder, as the official fractional split); the epoch with the
best test accuracy is kept (training stops early at a test accuracy of 1); an isotonic
regression fitted on the test split calibrates the outputs, and the AUC and
``JSD = (ln 2 - BCE) / ln 2`` are measured on the validation split. Unlike the official code,
everything is seeded, and the test is repeated ``n_repeats`` times with new splits and
initialisations to give a mean and a standard deviation.

Inputs are arrays or row sources (:mod:`showerformer.evaluation.inputs`): when the prepared
inputs of a repetition exceed a few hundred MB (the low-level inputs of CaloChallenge-size
samples), each batch is read, built and preprocessed on the fly, the next one while the network
trains on the current one, so that memory does not grow with the sample. Optionally
(:meth:`ClassifierConfig.cpu_friendly`) training stops once a number of epochs have passed
without a better test accuracy; the kept epoch is still the one with the best test accuracy, and
the validation split, which gives the reported numbers, plays no part in either choice.

References:
    Krause and Shih, arXiv:2106.05285 (classifier metric); Das et al., arXiv:2309.06457 and the
    CaloChallenge paper arXiv:2410.21611 (the setup used here).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from showerformer.errors import InputError
from showerformer.evaluation.inputs import ArrayRows, RowSource

__all__ = ["ClassifierConfig", "ClassifierResult", "run_classifier"]

_MATERIALIZE_BYTES = 512 << 20  # prepared inputs of one repetition built once up to this size
_BLOCK_BYTES = 64 << 20  # input bytes handled at once when fitting or predicting


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of the classifier test; the defaults are the official ones.

    Attributes:
        hidden: widths of the hidden layers.
        negative_slope: LeakyReLU slope (torch default 0.01).
        dropout: dropout probability after every hidden layer.
        lr: Adam learning rate.
        batch_size: training batch size.
        epochs: maximum number of epochs.
        split: fractions (train, test, validation) of each sample; validation takes the rest.
        n_repeats: independent repetitions (new split, new initialisation) for mean and std.
        seed: base seed; repetition ``i`` uses ``seed + i``.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: ``"float64"`` (official) or ``"float32"``.
        num_threads: torch CPU threads; None keeps ``torch.get_num_threads()``.
        min_per_split: the fewest showers per sample in the test and validation splits.
        standardize: shift and scale every input by the mean and standard deviation of the
            training split (not done officially; it lets small networks and short trainings
            resolve differences such as log E_tot - log E_inc).
        whiten: decorrelate the inputs with a PCA whitening fitted on the training split
            (directions with variance below 1e-12 of the largest are dropped). Not done
            officially; an invertible linear map that leaves the best achievable AUC unchanged
            but lets small networks find differences hidden in strongly correlated inputs
            (log E_inc, log E_layer, log E_tot) within a CPU budget.
        whiten_max_features: inputs with more features than this are standardized instead of
            whitened (the eigendecomposition costs d^3: the low-level voxel inputs of ds2 have
            6,481 features).
        patience: stop training once this many epochs have passed without a better test
            accuracy than the best so far; None trains all ``epochs`` (official). The epoch
            kept is the one with the best test accuracy either way, so a stopped training keeps
            the epoch the full one would have kept unless a better one would have come later.
        fit_rows: the standardization / whitening is fitted on at most this many training
            showers (a seeded random subset); None uses the whole training split. Any fixed
            invertible map fitted on training showers leaves the test sound; the subset
            bounds the cost of a pass over large low-level inputs.
    """

    hidden: tuple[int, ...] = (2048, 2048, 2048)
    negative_slope: float = 0.01
    dropout: float = 0.0
    lr: float = 2e-4
    batch_size: int = 1000
    epochs: int = 50
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    n_repeats: int = 3
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"
    num_threads: int | None = None
    min_per_split: int = 50
    standardize: bool = False
    whiten: bool = False
    whiten_max_features: int = 1024
    patience: int | None = None
    fit_rows: int | None = None

    def __post_init__(self) -> None:
        if not self.hidden or min(self.hidden) < 1:
            raise InputError(f"hidden={self.hidden}", key="hidden",
                             expected="one or more positive layer widths")
        if len(self.split) != 3 or min(self.split) <= 0 or sum(self.split) > 1 + 1e-9:
            raise InputError(f"split={self.split}", key="split",
                             expected="three positive fractions summing to at most 1")
        if self.epochs < 1 or self.batch_size < 1 or self.n_repeats < 1:
            raise InputError(f"epochs={self.epochs}, batch_size={self.batch_size}, "
                             f"n_repeats={self.n_repeats}", expected="positive integers")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout={self.dropout}", key="dropout", expected="in [0, 1)")
        if self.dtype not in ("float32", "float64"):
            raise InputError(f"dtype={self.dtype!r}", key="dtype",
                             expected="'float32' or 'float64'")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"patience={self.patience}", key="patience",
                             expected="None or a positive number of epochs")
        if self.fit_rows is not None and self.fit_rows < 2:
            raise InputError(f"fit_rows={self.fit_rows}", key="fit_rows",
                             expected="None or at least 2 showers")

    @classmethod
    def cpu_friendly(cls, **overrides: Any) -> ClassifierConfig:
        """Smaller settings for a CPU: 3 x 256 units, at most 20 epochs with early stopping
        after 5 epochs without a better test accuracy, float32, whitened inputs fitted on at
        most 50,000 training showers; print them with the result (:meth:`describe`), since they
        differ from the official ones."""
        base: dict[str, Any] = {"hidden": (256, 256, 256), "epochs": 20, "dtype": "float32",
                                "whiten": True, "patience": 5, "fit_rows": 50_000}
        base.update(overrides)
        return cls(**base)

    def is_official(self) -> bool:
        """Whether the network and training match the official ``more_evaluations`` setup."""
        off = ClassifierConfig()
        keys = ("hidden", "negative_slope", "dropout", "lr", "batch_size", "epochs", "dtype",
                "standardize", "whiten", "patience")
        return all(getattr(self, k) == getattr(off, k) for k in keys)

    def describe(self) -> str:
        """One line with every setting, marked ``official`` or ``NOT the official settings``."""
        tag = "official settings" if self.is_official() else "NOT the official settings"
        hidden = "x".join(str(h) for h in self.hidden)
        split = "/".join(f"{s:g}" for s in self.split)
        fitted = (f" fitted on <= {self.fit_rows:,} training showers"
                  if self.fit_rows is not None and (self.whiten or self.standardize) else "")
        inputs = (f", whitened inputs (standardized above {self.whiten_max_features} "
                  f"features){fitted}" if self.whiten
                  else f", standardized inputs{fitted}" if self.standardize else "")
        epochs = (f"{self.epochs} epochs" if self.patience is None else
                  f"at most {self.epochs} epochs (stop after {self.patience} without a better "
                  "test accuracy)")
        return (f"DNN {hidden} LeakyReLU({self.negative_slope:g}), dropout {self.dropout:g}, "
                f"Adam lr {self.lr:g}, batch {self.batch_size}, {epochs}, "
                f"{self.dtype}{inputs}, split {split}, {self.n_repeats} repeats from seed "
                f"{self.seed}, {self.device} ({tag})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable settings."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["split"] = list(self.split)
        return d


@dataclass
class ClassifierResult:
    """Outcome of :func:`run_classifier`.

    Attributes:
        auc_mean, auc_std: calibrated validation AUC, mean and standard deviation (ddof 1; 0 for
            a single repeat) over the repeats.
        jsd_mean, jsd_std: ``(ln 2 - BCE) / ln 2`` of the calibrated outputs, likewise.
        aucs, jsds: the values of each repeat.
        config: the settings used.
        auc_raw: uncalibrated validation AUC per repeat.
        best_epochs: the epoch (1-based) kept in each repeat.
        n_per_class: showers used from each sample (the smaller sample's size).
        n_split: showers per sample in train, test and validation.
        input_dim: number of input features.
        epochs_run: epochs trained in each repeat (fewer than ``epochs`` after an early stop).
        streamed: whether the inputs were built batch by batch instead of held in memory.
    """

    auc_mean: float
    auc_std: float
    jsd_mean: float
    jsd_std: float
    aucs: list[float]
    jsds: list[float]
    config: ClassifierConfig
    auc_raw: list[float] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)
    n_per_class: int = 0
    n_split: tuple[int, int, int] = (0, 0, 0)
    input_dim: int = 0
    epochs_run: list[int] = field(default_factory=list)
    streamed: bool = False

    def summary(self) -> str:
        """``AUC 0.5123 ± 0.0040, JSD 0.0012 ± 0.0008 (settings...)``."""
        return (f"AUC {self.auc_mean:.4f} ± {self.auc_std:.4f}, JSD {self.jsd_mean:.4f} ± "
                f"{self.jsd_std:.4f} [{self.config.describe()}]")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable result."""
        d = {k: getattr(self, k) for k in ("auc_mean", "auc_std", "jsd_mean", "jsd_std",
                                           "aucs", "jsds", "auc_raw", "best_epochs",
                                           "epochs_run", "n_per_class", "input_dim",
                                           "streamed")}
        d["n_split"] = list(self.n_split)
        d["config"] = self.config.to_dict()
        d["settings"] = self.config.describe()
        return d


# ---------------------------------------------------------------------------- inputs
def _check_array(arr: Any, what: str) -> np.ndarray:
    """An in-memory (N, d) input array, refused if empty, not numeric or not finite."""
    a = np.asarray(arr)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{what} classifier inputs of shape {a.shape}",
                         expected="a numeric (N, d) array")
    if len(a) == 0:
        raise InputError(f"{what} classifier inputs are empty", expected="N > 0 showers")
    rows = max(1, (64 << 20) // max(1, a.shape[1]))  # check ~64M values at a time
    for start in range(0, len(a), rows):
        bad = ~np.isfinite(a[start:start + rows])
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise InputError(f"{what} classifier inputs contain NaN or inf (shower "
                             f"{start + row}, feature {col})", expected="finite inputs")
    return a


def _as_rows(inputs: Any, what: str) -> RowSource:
    """A row source: arrays are checked and wrapped, row sources are taken as they are."""
    if hasattr(inputs, "take") and isinstance(getattr(inputs, "dim", None), int):
        if len(inputs) == 0:
            raise InputError(f"{what} classifier inputs are empty", expected="N > 0 showers")
        return inputs
    return ArrayRows(_check_array(inputs, what))


def _split_sizes(n: int, config: ClassifierConfig) -> tuple[int, int, int]:
    n_train = int(n * config.split[0])
    n_test = int(n * config.split[1])
    return n_train, n_test, n - n_train - n_test


def _needed(config: ClassifierConfig) -> int:
    """Smallest sample size that gives every split ``min_per_split`` showers (and train 1)."""
    smallest = min(config.split[1], 1.0 - config.split[0] - config.split[1])
    n = max(1, math.floor(config.min_per_split / max(smallest, 1e-12)) - 2)
    while True:
        tr, te, va = _split_sizes(n, config)
        if tr >= 1 and te >= config.min_per_split and va >= config.min_per_split:
            return n
        n += 1


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities, logs clamped at -100 as torch.nn.BCELoss."""
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), -100.0)
        log_q = np.maximum(np.log1p(-p), -100.0)
    return float(-np.mean(y * log_p + (1.0 - y) * log_q))


# ---------------------------------------------------------------------------- splits
class _Split:
    """One split of a repetition: the showers of both samples, generated (label 0) first.

    Arguments:
        parts: (source, sorted rows, label) per sample.
    """

    def __init__(self, parts: Sequence[tuple[RowSource, np.ndarray, float]]) -> None:
        self.parts = list(parts)
        sizes = [len(rows) for _, rows, _ in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self.dim = int(self.parts[0][0].dim)
        self.y = np.concatenate([np.full(len(rows), label) for _, rows, label in self.parts])
        self.row_bytes = 4 * self.dim
        self.prepared: Any = None  # (n, d_out) tensor once materialized

    def raw(self, pos: np.ndarray) -> np.ndarray:
        """Inputs of the split's showers at sorted positions ``pos``, (len(pos), dim)."""
        cut = np.searchsorted(pos, self.offsets[1:-1])
        blocks = []
        for (src, rows, _), off, seg in zip(self.parts, self.offsets[:-1],
                                            np.split(pos, cut), strict=True):
            if len(seg):
                blocks.append(src.take(rows[seg - off]))
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def blocks(self, block_rows: int) -> list[np.ndarray]:
        """Consecutive position blocks covering the split in order."""
        return [np.arange(a, min(self.n, a + block_rows)) for a in range(0, self.n, block_rows)]


@dataclass
class _Prep:
    """The fitted preprocessing: ``"none"``, ``"standardize"`` or ``"whiten"``."""

    kind: str
    dim_out: int
    mean: np.ndarray | None = None  # (d,) float64
    std: np.ndarray | None = None  # (d,) standardize
    proj: np.ndarray | None = None  # (d, d_out) whiten

    def apply(self, x: np.ndarray, dtype: Any) -> np.ndarray:
        """Preprocessed inputs, (b, dim_out) in ``dtype``."""
        x = np.asarray(x, dtype=dtype)
        if self.kind == "none":
            return x
        assert self.mean is not None
        if self.kind == "standardize":
            assert self.std is not None
            if not x.flags.writeable or not x.flags.c_contiguous:
                x = x.copy()
            x -= self.mean.astype(dtype)
            x /= self.std.astype(dtype)
            return x
        assert self.proj is not None
        return ((x.astype(np.float64) - self.mean) @ self.proj).astype(dtype)


def _fit_prep(train: _Split, config: ClassifierConfig, rng: np.random.Generator,
              dtype: Any) -> _Prep:
    """Fit the standardization or whitening on the training split (or a subset of it)."""
    d = train.dim
    whiten = config.whiten and d <= config.whiten_max_features
    standardize = config.standardize or (config.whiten and not whiten)
    if not (whiten or standardize):
        return _Prep("none", d)
    pos = np.arange(train.n)
    if config.fit_rows is not None and train.n > config.fit_rows:
        pos = np.sort(rng.choice(train.n, size=config.fit_rows, replace=False))
    step = max(1, _BLOCK_BYTES // train.row_bytes)
    shift: np.ndarray | None = None
    s1 = np.zeros(d)
    s2 = np.zeros((d, d) if whiten else d)
    for a in range(0, len(pos), step):
        # the inputs rounded to the training dtype first, as the network sees them
        x = np.asarray(train.raw(pos[a:a + step]), dtype=dtype).astype(np.float64)
        if shift is None:
            shift = x.mean(axis=0)  # sums around a shift: no cancellation in the variance
        x -= shift
        s1 += x.sum(axis=0)
        s2 += x.T @ x if whiten else np.einsum("ij,ij->j", x, x)
    m = len(pos)
    assert shift is not None
    mean = shift + s1 / m
    if standardize:
        var = np.maximum(s2 - s1 * s1 / m, 0.0) / max(m - 1, 1)
        std = np.sqrt(var)
        std = np.where(std > 0, std, 1.0)
        return _Prep("standardize", d, mean=mean, std=std)
    import torch

    cov = (s2 - np.outer(s1, s1) / m) / max(m - 1, 1)
    eigval, eigvec = torch.linalg.eigh(torch.from_numpy(cov))
    keep = eigval > 1e-12 * eigval.max().clamp_min(1e-300)
    proj = (eigvec[:, keep] / eigval[keep].sqrt()).numpy()  # (d, d_kept)
    return _Prep("whiten", int(proj.shape[1]), mean=mean, proj=proj)


def _prefetched(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """``fn(item)`` for each item, the next one computed in a thread while the caller works."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(fn, items[0])
        for nxt in items[1:]:
            current = future.result()
            future = pool.submit(fn, nxt)
            yield current
        yield future.result()


# ---------------------------------------------------------------------------- the test
def run_classifier(
    ref_inputs: Any,
    gen_inputs: Any,
    config: ClassifierConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> ClassifierResult:
    """Train the classifier test ``n_repeats`` times and report the calibrated AUC and JSD.

    Arguments:
        ref_inputs: (N, d) inputs of the reference showers (label 1), e.g. from
            :func:`~showerformer.evaluation.features.classifier_inputs`, or a row source such
            as :class:`~showerformer.evaluation.inputs.LowLevelRows`.
        gen_inputs: (M, d) inputs of the generated showers (label 0), likewise.
        config: settings, default the official ones (slow on a CPU: see
            :meth:`ClassifierConfig.cpu_friendly`).
        progress: called with a short message at each epoch.

    Returns:
        A :class:`ClassifierResult`. Both samples are cut to the smaller size (random
        showers, seeded) so that the classes are balanced, as the official test requires.

    Raises:
        InputError: on NaN or inf inputs, different feature dimensions or too few showers.
    """
    import torch

    config = config or ClassifierConfig()
    ref = _as_rows(ref_inputs, "reference")
    gen = _as_rows(gen_inputs, "generated")
    if ref.dim != gen.dim:
        raise InputError(f"{ref.dim} reference and {gen.dim} generated features",
                         expected="the same feature dimension")
    n = min(len(ref), len(gen))
    need = _needed(config)
    if n < need:
        raise InputError(
            f"too few showers for the classifier split: {len(ref)} reference and {len(gen)} "
            f"generated", expected=f"at least {need} in each sample for the "
            f"{'/'.join(f'{s:g}' for s in config.split)} split with >= "
            f"{config.min_per_split} test and validation showers")
    if config.num_threads is not None:
        torch.set_num_threads(int(config.num_threads))
    say = progress or (lambda _msg: None)
    aucs, jsds, raws, epochs, runs = [], [], [], [], []
    streamed = False
    for rep in range(config.n_repeats):
        out = _run_once(ref, gen, n, config, config.seed + rep,
                        lambda msg, r=rep: say(f"repeat {r + 1}/{config.n_repeats}, {msg}"))
        aucs.append(out["auc"])
        jsds.append(out["jsd"])
        raws.append(out["raw_auc"])
        epochs.append(out["best_epoch"])
        runs.append(out["epochs_run"])
        streamed = streamed or out["streamed"]
    ddof = 1 if len(aucs) > 1 else 0
    return ClassifierResult(
        auc_mean=float(np.mean(aucs)), auc_std=float(np.std(aucs, ddof=ddof)),
        jsd_mean=float(np.mean(jsds)), jsd_std=float(np.std(jsds, ddof=ddof)),
        aucs=aucs, jsds=jsds, config=config, auc_raw=raws, best_epochs=epochs,
        n_per_class=n, n_split=_split_sizes(n, config), input_dim=ref.dim,
        epochs_run=runs, streamed=streamed,
    )


def _network(d: int, config: ClassifierConfig) -> Any:
    import torch

    layers: list[torch.nn.Module] = []
    width = d
    for h in config.hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.LeakyReLU(config.negative_slope),
                   torch.nn.Dropout(config.dropout)]
        width = h
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


def _adam(params: Any, config: ClassifierConfig) -> Any:
    """Adam; the fused kernel where torch has it (one pass over the parameters per step)."""
    import torch

    try:
        return torch.optim.Adam(params, lr=config.lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch / devices
        return torch.optim.Adam(params, lr=config.lr)


def _run_once(ref: RowSource, gen: RowSource, n: int, config: ClassifierConfig,
              seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """One split, one training: calibrated AUC and JSD, raw AUC, best epoch, epochs run."""
    import torch
    from sklearn.isotonic import IsotonicRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n_train, n_test, _ = _split_sizes(n, config)
    np_dtype = np.dtype(config.dtype)
    dtype = getattr(torch, config.dtype)
    device = torch.device(config.device)
    parts: dict[str, list[tuple[RowSource, np.ndarray, float]]] = {
        "train": [], "test": [], "val": []}
    for label, data in ((0.0, gen), (1.0, ref)):
        rows = rng.permutation(len(data))[:n]
        bounds = {"train": rows[:n_train], "test": rows[n_train:n_train + n_test],
                  "val": rows[n_train + n_test:]}
        for key, idx in bounds.items():
            parts[key].append((data, np.sort(idx), label))
    splits = {key: _Split(p) for key, p in parts.items()}
    prep = _fit_prep(splits["train"], config, rng, np_dtype)
    total = 2 * n * prep.dim_out * np_dtype.itemsize
    streamed = total > _MATERIALIZE_BYTES
    if not streamed:  # small enough: preprocess every split once
        for sp in splits.values():
            step = max(1, _BLOCK_BYTES // sp.row_bytes)
            x = np.empty((sp.n, prep.dim_out), dtype=np_dtype)
            for pos in sp.blocks(step):
                x[pos[0]:pos[-1] + 1] = prep.apply(sp.raw(pos), np_dtype)
            sp.prepared = torch.from_numpy(x).to(device)
    labels = {k: torch.as_tensor(sp.y, dtype=dtype).to(device) for k, sp in splits.items()}

    def load(split: _Split, pos: np.ndarray) -> Any:
        return torch.from_numpy(prep.apply(split.raw(pos), np_dtype)).to(device)

    def predict(split: _Split) -> np.ndarray:
        model.eval()
        out = []
        with torch.no_grad():
            if split.prepared is not None:
                for start in range(0, split.n, 8192):
                    out.append(torch.sigmoid(model(split.prepared[start:start + 8192])
                                             .squeeze(1)))
            else:
                step = max(1, _BLOCK_BYTES // split.row_bytes)
                for xb in _prefetched(lambda pos: load(split, pos), split.blocks(step)):
                    out.append(torch.sigmoid(model(xb).squeeze(1)))
        return torch.cat(out).double().cpu().numpy()

    train, test, val = splits["train"], splits["test"], splits["val"]
    y_tr = labels["train"]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        gen_t = torch.Generator(device="cpu").manual_seed(seed)
        model = _network(prep.dim_out, config).to(device=device, dtype=dtype)
        opt = _adam(model.parameters(), config)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        best_acc, best_epoch, best_state = -math.inf, 0, None
        epochs_run = 0
        for epoch in range(config.epochs):
            model.train()
            perm = torch.randperm(train.n, generator=gen_t)
            chunks = [perm[a:a + config.batch_size] for a in range(0, train.n,
                                                                   config.batch_size)]
            if train.prepared is not None:
                batches: Iterator[tuple[Any, Any]] = (
                    (train.prepared[idx.to(device)], y_tr[idx.to(device)]) for idx in chunks)
            else:  # read in sorted order: the loss is a mean, the order inside a batch is free
                sorted_chunks = [np.sort(idx.numpy()) for idx in chunks]
                batches = zip(_prefetched(lambda pos: load(train, pos), sorted_chunks),
                              (y_tr[torch.from_numpy(pos).to(device)] for pos in sorted_chunks),
                              strict=True)
            for xb, yb in batches:
                loss = loss_fn(model(xb).squeeze(1), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            epochs_run = epoch + 1
            p_test = predict(test)
            acc = float(np.mean(np.round(p_test) == test.y))
            say(f"epoch {epoch + 1}/{config.epochs}: test accuracy {acc:.4f}")
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
            if acc == 1.0:
                break
            if config.patience is not None and epoch + 1 - best_epoch >= config.patience:
                break  # no better epoch for a while: the one kept would rarely change
    assert best_state is not None
    model.load_state_dict(best_state)
    p_test = predict(test)
    p_val = predict(val)
    y_test = test.y.astype(np.float64)
    y_val = val.y.astype(np.float64)
    raw_auc = float(roc_auc_score(y_val, p_val))
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1.0 - 1e-6)
    iso.fit(p_test, y_test)
    p_cal = iso.predict(p_val)
    auc = float(roc_auc_score(y_val, p_cal))
    jsd = (math.log(2.0) - _bce(p_cal, y_val)) / math.log(2.0)
    return {"auc": auc, "jsd": jsd, "raw_auc": raw_auc, "best_epoch": best_epoch,
            "epochs_run": epochs_run, "streamed": streamed, "dim_out": prep.dim_out}
