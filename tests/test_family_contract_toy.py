"""A family written outside the library (a tiny WGAN-GP on 2-D points, two optimizers, a best
checkpoint picked on a sample metric) trains, resumes bit for bit and samples through the
generic path; a frozen sub-module stays untouched while the rest trains."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from torch import Tensor, nn

from showerformer.generation import sample_file
from showerformer.io import read_pointcloud
from showerformer.models import MODELS, register
from showerformer.models.config import ModelConfig
from showerformer.models.family import FamilyModule
from showerformer.showers import Conditions, PointShowers
from showerformer.training.data import TensorDictDataset
from showerformer.training.run import train
from showerformer.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class ToyGANConfig(ModelConfig):
    """Width of both networks and the gradient-penalty weight."""

    width: int = 16
    gp_weight: float = 1.0

    def __post_init__(self) -> None:
        self.check_types()


class ToyWGAN(FamilyModule):
    """WGAN-GP on 2-D points: each step one critic update, then one generator update."""

    config_class: ClassVar[type] = ToyGANConfig
    task: ClassVar[str] = "generation"
    log_metrics: ClassVar[tuple[str, ...]] = ("critic_loss", "gradient_penalty")

    def __init__(self, config: ToyGANConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ToyGANConfig()
        w = config.width
        self.generator = nn.Sequential(nn.Linear(2, w), nn.LeakyReLU(0.2), nn.Linear(w, 2))
        self.critic = nn.Sequential(nn.Linear(2, w), nn.LeakyReLU(0.2), nn.Linear(w, 1))

    @classmethod
    def load_data(cls, data: Any, val_data: Any, settings: Mapping[str, Any],
                  seed: int) -> tuple[TensorDictDataset, TensorDictDataset | None]:
        x = np.load(data).astype(np.float32)
        n_val = int(len(x) * float(settings["val_fraction"] or 0))
        val = TensorDictDataset({"x": x[:n_val]}) if n_val else None
        return TensorDictDataset({"x": x[n_val:]}), val

    @classmethod
    def from_data(cls, overrides: Mapping[str, Any], train: Any, settings: Mapping[str, Any],
                  *, val: Any = None) -> ToyWGAN:
        model = cls(cls.config_class.from_dict(overrides))
        x = train.tensors["x"].double()
        model.load_data_state({
            "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "conditions": {"pdg": [11], "energy_mev": [1e3, 1e3], "theta": [math.pi / 2] * 2,
                           "phi": [0.0, 0.0]}}, {})
        return model

    def configure_optimizers(self, cfg: Any) -> dict[str, torch.optim.Optimizer]:
        return {"critic": torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=(0.0, 0.9)),
                "generator": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr,
                                              betas=(0.0, 0.9))}

    def _scale(self) -> tuple[Tensor, Tensor]:
        state = self.data_state()
        return torch.tensor(state["mean"]), torch.tensor(state["std"])

    def training_step(self, batch: Mapping[str, Tensor], step: int,
                      optimizers: Any) -> dict[str, Tensor]:
        mean, std = self._scale()
        real = (batch["x"] - mean) / std
        z = torch.randn(real.shape)
        fake = self.generator(z).detach()
        critic_loss = self.critic(fake).mean() - self.critic(real).mean()
        eps = torch.rand(len(real), 1)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad = torch.autograd.grad(self.critic(mix).sum(), mix, create_graph=True)[0]
        penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
        optimizers.step(critic_loss + self.config.gp_weight * penalty, "critic")
        loss = -self.critic(self.generator(z)).mean()
        optimizers.step(loss, "generator")
        return {"loss": loss, "critic_loss": critic_loss, "gradient_penalty": penalty}

    def _sample(self, n: int, generator: torch.Generator | None) -> np.ndarray:
        mean, std = self._scale()
        with torch.no_grad():
            z = torch.randn(n, 2, generator=generator)
            return (self.generator(z) * std + mean).numpy()

    def validation_metric(self, batches: Iterable[Mapping[str, Tensor]]) -> float:
        real = torch.cat([b["x"] for b in batches]).numpy()
        fake = self._sample(len(real), torch.Generator().manual_seed(0))
        return float(np.mean([wasserstein_distance(real[:, i], fake[:, i]) for i in range(2)]))

    def generate(self, conditions: Conditions, *, generator: torch.Generator | None = None,
                 steps: int | None = None) -> PointShowers:
        xy = self._sample(len(conditions), generator)
        return PointShowers.from_ragged([np.array([[x, y, 0.0, 1.0, 0.0]]) for x, y in xy],
                                        conditions)


@pytest.fixture(scope="module")
def toy_family() -> Iterator[type[ToyWGAN]]:
    register("toy-wgan-2d")(ToyWGAN)
    try:
        yield ToyWGAN
    finally:
        MODELS.pop("toy-wgan-2d", None)


@pytest.fixture(scope="module")
def points(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal((-2, 0), 0.5, (150, 2)), rng.normal((2, 1), 0.5, (150, 2))])
    path = tmp_path_factory.mktemp("toy") / "points.npy"
    np.save(path, rng.permutation(x))
    return path


CONFIG = {
    "model": {"family": "toy-wgan-2d", "width": 16},
    "train": {"lr": 1e-3, "max_steps": 12, "batch_size": 32, "checkpoint_every": 4,
              "val_every": 4, "warmup_steps": 2, "ema_decay": 0.9, "seed": 3, "device": "cpu",
              "tensorboard": False, "keep_checkpoints": 10},
    "data": {"val_fraction": 0.2},
}


def _state(run: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    folder = run / "checkpoints" / "step-0000012"
    out = {}
    for name in ("model", "ema", "optimizer", "optimizer-1"):
        for k, v in load_file(str(folder / f"{name}.safetensors")).items():
            out[f"{name}/{k}"] = v
    return out


def _log(run: Path) -> list[dict[str, str]]:
    """The rows of log.csv without the timing column."""
    with open(run / "log.csv") as fh:
        return [{k: v for k, v in row.items() if k != "samples_per_s"}
                for row in csv.DictReader(fh)]


def test_toy_gan_trains_resumes_bit_for_bit_and_samples(toy_family: type, points: Path,
                                                         tmp_path: Path) -> None:
    full = train(CONFIG, points, tmp_path / "full", progress=False)
    assert full.step == 12 and full.best_val_loss is not None
    part = train(CONFIG, points, tmp_path / "part", progress=False, stop_at_step=6)
    assert part.step == 6 and part.interrupted
    resumed = train(CONFIG, points, tmp_path / "part", progress=False, resume=True)
    assert resumed.step == 12
    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert a.keys() == b.keys() and len([k for k in a if k.startswith("optimizer-1/")]) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # validation rows agree (training rows average over windows the interruption cut)
    assert ([r for r in _log(tmp_path / "full") if r["val_loss"]]
            == [r for r in _log(tmp_path / "part") if r["val_loss"]])

    # both optimizers are named in the checkpoint; the log has the family's own columns
    info = json.loads((tmp_path / "full" / "checkpoints" / "step-0000012" / "checkpoint.json")
                      .read_text())
    assert info["optimizer_names"] == ["critic", "generator"]
    assert info["preprocessing"]["conditions"]["pdg"] == [11]
    rows = _log(tmp_path / "full")
    assert {"critic_loss", "gradient_penalty"} <= set(rows[0])
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(val) == 3 and all(v > 0 for v in val)
    best = json.loads((tmp_path / "full" / "checkpoints" / "best.json").read_text())
    assert best["step"] in (4, 8, 12) and min(val) == pytest.approx(full.best_val_loss)

    # generic sampling: the family's generate, the trained conditions, a point-cloud file
    summary = sample_file(tmp_path / "full", tmp_path / "gen.h5", n=40, seed=5,
                          progress=False, device="cpu")
    assert summary["family"] == "toy-wgan-2d" and summary["format"] == "pointcloud"
    showers = read_pointcloud(tmp_path / "gen.h5")
    assert len(showers) == 40 and (showers.n_points == 1).all()
    assert np.isfinite(showers.points[showers.mask]).all()
    again = sample_file(tmp_path / "full", tmp_path / "gen2.h5", n=40, seed=5, progress=False,
                        device="cpu")
    assert again["showers"] == 40
    assert np.array_equal(read_pointcloud(tmp_path / "gen2.h5").points, showers.points)
    # an option the family's generate() does not take is refused in one line, before any work
    from showerformer.errors import InputError

    with pytest.raises(InputError) as err:
        sample_file(tmp_path / "full", tmp_path / "gen3.h5", n=4, sampler="heun",
                    progress=False, device="cpu")
    assert err.value.key == "--sampler" and "toy-wgan-2d" in str(err.value)
    assert not (tmp_path / "gen3.h5").exists()


class _Frozen(FamilyModule):
    """A regressor-shaped toy whose ``tokenizer`` (with BatchNorm and dropout) is frozen."""

    config_class: ClassVar[type] = ToyGANConfig
    task: ClassVar[str] = "regression"

    def __init__(self) -> None:
        super().__init__()
        self.config = ToyGANConfig()
        self.tokenizer = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))
        self.head = nn.Linear(8, 1)
        self.freeze("tokenizer")

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        return ((self.head(self.tokenizer(batch["x"])).squeeze(-1) - batch["y"]) ** 2).mean()


def test_frozen_submodule_is_not_trained_and_stays_in_eval_mode(tmp_path: Path) -> None:
    from showerformer.training.config import TrainConfig

    torch.manual_seed(0)
    model = _Frozen()
    before = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    head = model.head.weight.detach().clone()
    x = torch.randn(64, 2)
    data = TensorDictDataset({"x": x, "y": x.sum(1)})
    cfg = TrainConfig(max_steps=5, batch_size=16, lr=1e-2, out_dir=str(tmp_path / "run"),
                      device="cpu", tensorboard=False)
    trainer = Trainer(model, data, None, cfg, progress=False)
    trainer.fit()
    after = model.tokenizer.state_dict()
    for k, v in before.items():  # weights and BatchNorm running statistics unchanged
        assert torch.equal(v, after[k]), k
    assert not model.head.weight.detach().equal(head)
    model.train()
    assert model.training and not model.tokenizer.training and not model.tokenizer[2].training
    names = [n for g in trainer.optimizer.param_groups for n in g["names"]]
    assert names and all(n.startswith("head.") for n in names)
    assert model.n_parameters() == {"trainable": 9, "frozen": 24 + 16, "total": 49}
