"""The representation probe of seed 001 (its Table 1): classify incident energy and angle from showers.

Raikwar et al., arXiv:2312.09290, Sec. 4.2: a 3-layer perceptron predicts the incident energy
(three classes: 64, 128, 256 GeV) and the angle from (a) the shower itself, (b) the latent
representation of an MLP-based VAE and (c) the TransformerMLM representation; the paper found
60 / 33 %, 99 / 65 % and 99 / 99 % accuracy. Here:

- the shower input is the scaled grid the models see (cell MeV / incident GeV over its training
  maximum, :class:`~showerformer.data.voxels.VoxelScaling`), so the total energy does not give
  the class away;
- the MLP-VAE (Kingma and Welling, arXiv:1312.6114) is trained here on the same scaled grids,
  unconditionally (a VAE conditioned on E and theta would be taught to leave them out of its
  latent): encoder ``cells -> 256 -> 128 -> 2 x latent``, mirrored decoder with a sigmoid, BCE +
  KL; its representation is the posterior mean;
- the TransformerMLM representation is the mean of its encoded tokens (no masking);
- the energy classes are the training energies when there are at most 16 of them (else
  ``energy_bins`` equal bins in log E), the angle classes ``theta_bins`` equal bins of theta over
  the training range (the built-in ``par04`` preset draws theta uniformly in 70-90 degrees, so 5
  bins of 4 degrees; the paper's angle classes are not given).

Every classifier gets the same training showers, epochs and seed; accuracies are on held-out
showers, with their binomial standard error.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.data.voxels import VoxelGridDataset, VoxelScaling
from showerformer.errors import InputError

__all__ = [
    "MLPVAE",
    "ProbeSettings",
    "angle_classes",
    "energy_classes",
    "probe_accuracy",
    "run_probe",
    "train_mlp_vae",
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe classifiers and the MLP-VAE are trained.

    Attributes:
        hidden: width of the classifier's two hidden layers.
        epochs: classifier epochs.
        lr: classifier learning rate (Adam).
        batch_size: classifier and VAE batch size.
        theta_bins: angle classes.
        energy_bins: energy classes when the training energies are continuous.
        vae_latent: MLP-VAE latent size.
        vae_epochs: MLP-VAE epochs.
        seed: seed of every initialisation and shuffle.
    """

    hidden: int = 128
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 128
    theta_bins: int = 5
    energy_bins: int = 3
    vae_latent: int = 32
    vae_epochs: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("hidden", "epochs", "batch_size", "vae_latent", "vae_epochs"):
            if int(getattr(self, key)) < 1:
                raise InputError(f"{key}={getattr(self, key)}", key=f"--{key.replace('_', '-')}",
                                 expected="a positive integer")
        for key in ("theta_bins", "energy_bins"):
            if int(getattr(self, key)) < 2:
                raise InputError(f"{key}={getattr(self, key)}", key=f"--{key.replace('_', '-')}",
                                 expected="at least 2 classes")
        if not self.lr > 0:
            raise InputError(f"lr={self.lr}", key="--lr", expected="a positive learning rate")


# ---------------------------------------------------------------------------- classes


def energy_classes(train_energy: np.ndarray, energy: np.ndarray, bins: int = 3
                   ) -> tuple[np.ndarray, list[str]]:
    """Class of every incident energy: the nearest training energy when there are at most 16
    distinct ones, else ``bins`` equal bins of log E over the training range.

    Returns:
        ``(classes (N,) int64, labels)``.
    """
    values = np.unique(np.asarray(train_energy, dtype=np.float64))
    energy = np.asarray(energy, dtype=np.float64)
    if len(values) <= 16:
        cls = np.abs(np.log(energy)[:, None] - np.log(values)[None, :]).argmin(axis=1)
        return cls.astype(np.int64), [f"{v / 1e3:g} GeV" for v in values]
    edges = np.linspace(math.log(values[0]), math.log(values[-1]), bins + 1)
    cls = np.clip(np.searchsorted(edges, np.log(energy), side="right") - 1, 0, bins - 1)
    labels = [f"{math.exp(a) / 1e3:.3g}-{math.exp(b) / 1e3:.3g} GeV"
              for a, b in pairwise(edges)]
    return cls.astype(np.int64), labels


def angle_classes(train_theta: np.ndarray, theta: np.ndarray, bins: int = 5
                  ) -> tuple[np.ndarray, list[str]]:
    """Class of every polar angle: ``bins`` equal bins over the training range (rad in,
    degrees in the labels).

    Raises:
        InputError: training showers all at one angle (nothing to classify).
    """
    lo, hi = float(np.min(train_theta)), float(np.max(train_theta))
    if not hi > lo:
        raise InputError(f"every training shower at theta = {math.degrees(lo):.3g} deg",
                         key="theta", expected="showers at several angles for the angle probe")
    edges = np.linspace(lo, hi, bins + 1)
    cls = np.clip(np.searchsorted(edges, np.asarray(theta, np.float64), side="right") - 1, 0,
                  bins - 1)
    labels = [f"{math.degrees(a):.3g}-{math.degrees(b):.3g} deg"
              for a, b in pairwise(edges)]
    return cls.astype(np.int64), labels


# ---------------------------------------------------------------------------- classifier


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """The paper's 3-layer perceptron: two hidden ReLU layers and the output layer."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


def probe_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                   n_classes: int, settings: ProbeSettings) -> dict[str, float]:
    """Train the 3-layer classifier on standardized features and return its accuracies.

    Arguments:
        x_train, x_test: features ``(N, F)``.
        y_train, y_test: classes ``(N,)`` int64.
        n_classes: number of classes.
        settings: epochs, width, learning rate, batch size and seed.

    Returns:
        ``{"accuracy", "accuracy_err", "train_accuracy", "seconds"}`` (test accuracy with its
        binomial standard error).
    """
    start = time.perf_counter()
    mean = x_train.mean(0, keepdim=True)
    std = x_train.std(0, keepdim=True).clamp_min(1e-6)
    xt, xs = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(settings.seed)
    net = _mlp(xt.shape[1], settings.hidden, n_classes)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    n = len(xt)
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, settings.batch_size):
            idx = order[lo:lo + settings.batch_size]
            loss = F.cross_entropy(net(xt[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((net(xs).argmax(1) == y_test).float().mean())
        train_acc = float((net(xt).argmax(1) == y_train).float().mean())
    return {"accuracy": acc, "accuracy_err": math.sqrt(max(acc * (1 - acc), 1e-12) / len(xs)),
            "train_accuracy": train_acc, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------- MLP-VAE


class MLPVAE(nn.Module):
    """Fully connected VAE on flattened scaled grids: ``cells -> 256 -> 128 -> (mu, log var)``
    and back through a sigmoid (BCE + KL; Kingma and Welling, arXiv:1312.6114).

    Arguments:
        n_cells: input size.
        latent: latent size.
    """

    def __init__(self, n_cells: int, latent: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_cells, 256), nn.ReLU(), nn.Linear(256, 128),
                                     nn.ReLU(), nn.Linear(128, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 128), nn.ReLU(), nn.Linear(128, 256),
                                     nn.ReLU(), nn.Linear(256, n_cells))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, cells)`` -> posterior mean and log-variance ``(B, latent)`` each."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Negative ELBO per shower: BCE summed over the cells + KL to N(0, 1)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
        recon = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
        return (recon + kl) / len(x)


def train_mlp_vae(x: Tensor, settings: ProbeSettings) -> MLPVAE:
    """An :class:`MLPVAE` trained on flattened scaled grids ``x`` ``(N, cells)`` (Adam, 1e-3,
    ``vae_epochs``, seeded)."""
    torch.manual_seed(settings.seed)
    vae = MLPVAE(x.shape[1], settings.vae_latent)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(settings.seed + 1)
    for _ in range(settings.vae_epochs):
        order = torch.randperm(len(x), generator=gen)
        for lo in range(0, len(x), settings.batch_size):
            loss = vae.loss(x[order[lo:lo + settings.batch_size]], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return vae.eval()


# ---------------------------------------------------------------------------- the probe


def _scaled(ds: VoxelGridDataset, scaling: VoxelScaling) -> Tensor:
    """Flattened scaled grids ``(N, cells)`` float32."""
    out = []
    for lo in range(0, len(ds), 1024):
        v = torch.from_numpy(ds.voxels[lo:lo + 1024])
        e = torch.as_tensor(np.asarray(ds.conditions.energy[lo:lo + 1024], dtype=np.float32))
        out.append(scaling.forward(v, e).reshape(len(v), -1))
    return torch.cat(out)


def _represent(model: Any, ds: VoxelGridDataset, batch: int = 256) -> Tensor:
    """``model.represent`` of every shower, ``(N, D)``."""
    out = []
    for lo in range(0, len(ds), batch):
        v = torch.from_numpy(ds.voxels[lo:lo + batch])
        e = torch.as_tensor(np.asarray(ds.conditions.energy[lo:lo + batch], dtype=np.float32))
        out.append(model.represent(v, e).float())
    return torch.cat(out)


def run_probe(
    train: str | os.PathLike[str],
    test: str | os.PathLike[str],
    models: Mapping[str, str | os.PathLike[str]],
    *,
    n_train: int | None = 10_000,
    n_test: int | None = 2_000,
    settings: ProbeSettings | None = None,
    raw: bool = True,
    vae: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Table 1 of the paper: energy and angle accuracy from each representation.

    Arguments:
        train: voxel showers the classifiers (and the MLP-VAE) train on.
        test: held-out voxel showers they are scored on.
        models: ``{label: checkpoint}`` of representation models (``transformer-mlm``,
            ``vq-vae``); the first one's scaling also scales the raw and VAE inputs.
        n_train, n_test: showers read from each file (None: all).
        settings: classifier and VAE settings.
        raw: include the raw-shower row.
        vae: include the MLP-VAE row.
        progress: called with a line before every step.

    Returns:
        ``{"settings", "n_train", "n_test", "energy_classes", "angle_classes", "rows"}``; every
        row has ``input``, ``features``, ``energy`` and ``angle`` (the dicts of
        :func:`probe_accuracy`).

    Raises:
        InputError: no representation model, a checkpoint that is not a representation model,
            files of other cells than the models', or showers at a single angle.
    """
    from showerformer.training.checkpoint import load_checkpoint
    from showerformer.training.datasets import voxel_datasets

    settings = settings or ProbeSettings()
    say = progress or (lambda _line: None)
    if not models:
        raise InputError("no representation model", key="--mlm",
                         expected="at least one transformer-mlm or vq-vae checkpoint")
    loaded = {}
    for label, path in models.items():
        model, info = load_checkpoint(path, device="cpu")
        if getattr(model, "task", None) != "representation":
            raise InputError(f"a '{info.get('family')}' checkpoint", path=path, key="family",
                             expected="a representation model (transformer-mlm or vq-vae)")
        loaded[label] = model.float().eval()
    first = next(iter(loaded.values()))
    say(f"reading {train} and {test}")
    tr, _ = voxel_datasets(train, max_showers=n_train)
    te, _ = voxel_datasets(test, max_showers=n_test)
    for label, model in loaded.items():
        if tuple(model.config.grid) != tr.shape or tuple(model.config.grid) != te.shape:
            raise InputError(f"showers of {list(tr.shape)} / {list(te.shape)} cells",
                             path=train, key="showers",
                             expected=f"{list(model.config.grid)} cells as the model '{label}'")
    ye_tr, e_labels = energy_classes(tr.conditions.energy, tr.conditions.energy,
                                     settings.energy_bins)
    ye_te, _ = energy_classes(tr.conditions.energy, te.conditions.energy, settings.energy_bins)
    ya_tr, a_labels = angle_classes(tr.conditions.theta, tr.conditions.theta,
                                    settings.theta_bins)
    ya_te, _ = angle_classes(tr.conditions.theta, te.conditions.theta, settings.theta_bins)
    targets = {"energy": (torch.from_numpy(ye_tr), torch.from_numpy(ye_te), len(e_labels)),
               "angle": (torch.from_numpy(ya_tr), torch.from_numpy(ya_te), len(a_labels))}

    features: list[tuple[str, Tensor, Tensor, float]] = []
    if raw or vae:
        scaled_tr, scaled_te = _scaled(tr, first.scaling), _scaled(te, first.scaling)
        if raw:
            features.append(("shower (scaled cells)", scaled_tr, scaled_te, 0.0))
        if vae:
            say(f"training the MLP-VAE ({settings.vae_epochs} epochs on {len(tr):,} showers)")
            start = time.perf_counter()
            model_vae = train_mlp_vae(scaled_tr, settings)
            with torch.no_grad():
                features.append(("MLP-VAE latent mean", model_vae.encode(scaled_tr)[0],
                                 model_vae.encode(scaled_te)[0], time.perf_counter() - start))
    for label, model in loaded.items():
        say(f"representing the showers with {label}")
        start = time.perf_counter()
        features.append((f"{label} representation", _represent(model, tr), _represent(model, te),
                         time.perf_counter() - start))
    rows = []
    for name, x_tr, x_te, seconds in features:
        row: dict[str, Any] = {"input": name, "features": int(x_tr.shape[1]),
                               "representation_seconds": seconds}
        for what, (y_tr, y_te, k) in targets.items():
            say(f"classifying {what} from {name}")
            row[what] = probe_accuracy(x_tr, y_tr, x_te, y_te, k, settings)
        rows.append(row)
    return {"settings": asdict(settings), "n_train": len(tr), "n_test": len(te),
            "train": str(train), "test": str(test),
            "models": {k: str(v) for k, v in models.items()},
            "energy_classes": e_labels, "angle_classes": a_labels, "rows": rows,
            "paper": [{"input": "shower", "energy": 0.60, "angle": 0.33},
                      {"input": "MLP-based VAE representation", "energy": 0.99, "angle": 0.65},
                      {"input": "TransformerMLM representation", "energy": 0.99, "angle": 0.99}]}
