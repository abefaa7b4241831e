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

References:
    Krause and Shih, arXiv:2106.05285 (classifier metric); Das et al., arXiv:2309.06457 and the
    CaloChallenge paper arXiv:2410.21611 (the setup used here).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from showerformer.errors import InputError

__all__ = ["ClassifierConfig", "ClassifierResult", "run_classifier"]


def _whiten(tensors: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """PCA-whiten every split with the mean and covariance of the training split."""
    import torch

    x_tr = tensors["train"][0].double()
    mean = x_tr.mean(dim=0)
    cov = torch.cov((x_tr - mean).T).reshape(x_tr.shape[1], x_tr.shape[1])
    eigval, eigvec = torch.linalg.eigh(cov)
    keep = eigval > 1e-12 * eigval.max().clamp_min(1e-300)
    proj = eigvec[:, keep] / eigval[keep].sqrt()  # (d, d_kept)
    return {k: (((x.double() - mean) @ proj).to(x.dtype), y) for k, (x, y) in tensors.items()}


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

    @classmethod
    def cpu_friendly(cls, **overrides: Any) -> ClassifierConfig:
        """Smaller settings for a CPU: 3 x 256 units, 20 epochs, float32, whitened inputs; print
        them with the result (:meth:`describe`), since they differ from the official ones."""
        base: dict[str, Any] = {"hidden": (256, 256, 256), "epochs": 20, "dtype": "float32",
                                "whiten": True}
        base.update(overrides)
        return cls(**base)

    def is_official(self) -> bool:
        """Whether the network and training match the official ``more_evaluations`` setup."""
        off = ClassifierConfig()
        keys = ("hidden", "negative_slope", "dropout", "lr", "batch_size", "epochs", "dtype",
                "standardize", "whiten")
        return all(getattr(self, k) == getattr(off, k) for k in keys)

    def describe(self) -> str:
        """One line with every setting, marked ``official`` or ``NOT the official settings``."""
        tag = "official settings" if self.is_official() else "NOT the official settings"
        hidden = "x".join(str(h) for h in self.hidden)
        split = "/".join(f"{s:g}" for s in self.split)
        inputs = (f", whitened inputs (standardized above {self.whiten_max_features} features)"
                  if self.whiten else ", standardized inputs" if self.standardize else "")
        return (f"DNN {hidden} LeakyReLU({self.negative_slope:g}), dropout {self.dropout:g}, "
                f"Adam lr {self.lr:g}, batch {self.batch_size}, {self.epochs} epochs, "
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

    def summary(self) -> str:
        """``AUC 0.5123 ± 0.0040, JSD 0.0012 ± 0.0008 (settings...)``."""
        return (f"AUC {self.auc_mean:.4f} ± {self.auc_std:.4f}, JSD {self.jsd_mean:.4f} ± "
                f"{self.jsd_std:.4f} [{self.config.describe()}]")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable result."""
        d = {k: getattr(self, k) for k in ("auc_mean", "auc_std", "jsd_mean", "jsd_std",
                                           "aucs", "jsds", "auc_raw", "best_epochs",
                                           "n_per_class", "input_dim")}
        d["n_split"] = list(self.n_split)
        d["config"] = self.config.to_dict()
        d["settings"] = self.config.describe()
        return d


def _check_inputs(ref: Any, gen: Any) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for arr, what in ((ref, "reference"), (gen, "generated")):
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
        out.append(a)
    if out[0].shape[1] != out[1].shape[1]:
        raise InputError(f"{out[0].shape[1]} reference and {out[1].shape[1]} generated features",
                         expected="the same feature dimension")
    return out[0], out[1]


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


def run_classifier(
    ref_inputs: np.ndarray,
    gen_inputs: np.ndarray,
    config: ClassifierConfig | None = None,
) -> ClassifierResult:
    """Train the classifier test ``n_repeats`` times and report the calibrated AUC and JSD.

    Arguments:
        ref_inputs: (N, d) inputs of the reference showers (label 1), e.g. from
            :func:`~showerformer.evaluation.features.classifier_inputs`.
        gen_inputs: (M, d) inputs of the generated showers (label 0).
        config: settings, default the official ones (slow on a CPU: see
            :meth:`ClassifierConfig.cpu_friendly`).

    Returns:
        A :class:`ClassifierResult`. Both samples are cut to the smaller size (random
        showers, seeded) so that the classes are balanced, as the official test requires.

    Raises:
        InputError: on NaN or inf inputs, different feature dimensions or too few showers.
    """
    import torch

    config = config or ClassifierConfig()
    ref, gen = _check_inputs(ref_inputs, gen_inputs)
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
    aucs, jsds, raws, epochs = [], [], [], []
    for rep in range(config.n_repeats):
        auc, jsd, raw, best = _run_once(ref, gen, n, config, config.seed + rep)
        aucs.append(auc)
        jsds.append(jsd)
        raws.append(raw)
        epochs.append(best)
    ddof = 1 if len(aucs) > 1 else 0
    return ClassifierResult(
        auc_mean=float(np.mean(aucs)), auc_std=float(np.std(aucs, ddof=ddof)),
        jsd_mean=float(np.mean(jsds)), jsd_std=float(np.std(jsds, ddof=ddof)),
        aucs=aucs, jsds=jsds, config=config, auc_raw=raws, best_epochs=epochs,
        n_per_class=n, n_split=_split_sizes(n, config), input_dim=ref.shape[1],
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


def _run_once(ref: np.ndarray, gen: np.ndarray, n: int, config: ClassifierConfig,
              seed: int) -> tuple[float, float, float, int]:
    """One split, one training: (calibrated AUC, calibrated JSD, raw AUC, best epoch)."""
    import torch
    from sklearn.isotonic import IsotonicRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n_train, n_test, _ = _split_sizes(n, config)
    dtype = getattr(torch, config.dtype)
    device = torch.device(config.device)
    parts: dict[str, list[Any]] = {"train": [], "test": [], "val": []}
    for label, data in ((0.0, gen), (1.0, ref)):
        rows = rng.permutation(len(data))[:n]
        bounds = {"train": rows[:n_train], "test": rows[n_train:n_train + n_test],
                  "val": rows[n_train + n_test:]}
        for key, idx in bounds.items():
            parts[key].append((torch.as_tensor(data[np.sort(idx)], dtype=dtype),
                               torch.full((len(idx),), label, dtype=dtype)))
    tensors = {}
    for key, items in parts.items():
        x = torch.cat([a for a, _ in items]).to(device)
        y = torch.cat([b for _, b in items]).to(device)
        tensors[key] = (x, y)
    d_in = tensors["train"][0].shape[1]
    whiten = config.whiten and d_in <= config.whiten_max_features
    if config.standardize or (config.whiten and not whiten):
        mean = tensors["train"][0].mean(dim=0)
        std = tensors["train"][0].std(dim=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        tensors = {k: ((x - mean) / std, y) for k, (x, y) in tensors.items()}
    if whiten:
        tensors = _whiten(tensors)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        gen_t = torch.Generator(device="cpu").manual_seed(seed)
        model = _network(tensors["train"][0].shape[1], config).to(device=device, dtype=dtype)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        x_tr, y_tr = tensors["train"]
        best_acc, best_epoch, best_state = -math.inf, 0, None
        for epoch in range(config.epochs):
            model.train()
            perm = torch.randperm(len(x_tr), generator=gen_t).to(device)
            for start in range(0, len(perm), config.batch_size):
                idx = perm[start:start + config.batch_size]
                loss = loss_fn(model(x_tr[idx]).squeeze(1), y_tr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            p_test = _predict(model, tensors["test"][0])
            acc = float(np.mean(np.round(p_test) == tensors["test"][1].cpu().numpy()))
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
            if acc == 1.0:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    p_test = _predict(model, tensors["test"][0])
    p_val = _predict(model, tensors["val"][0])
    y_test = tensors["test"][1].cpu().numpy().astype(np.float64)
    y_val = tensors["val"][1].cpu().numpy().astype(np.float64)
    raw_auc = float(roc_auc_score(y_val, p_val))
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1.0 - 1e-6)
    iso.fit(p_test, y_test)
    p_cal = iso.predict(p_val)
    auc = float(roc_auc_score(y_val, p_cal))
    jsd = (math.log(2.0) - _bce(p_cal, y_val)) / math.log(2.0)
    return auc, jsd, raw_auc, best_epoch


def _predict(model: Any, x: Any, block: int = 8192) -> np.ndarray:
    """Sigmoid outputs as float64 NumPy, in blocks, without gradients."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), block):
            out.append(torch.sigmoid(model(x[start:start + block]).squeeze(1)))
    return torch.cat(out).double().cpu().numpy()
