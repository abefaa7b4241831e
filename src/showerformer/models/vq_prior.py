"""Autoregressive prior over a frozen VQ-VAE's tokens: the generator of seed 001.

Raikwar et al., "Transformers for generalized fast shower simulation", arXiv:2312.09290,
Sec. 5.2 (two stages as in DALL-E, Ramesh et al., arXiv:2102.12092): a condition token made from
the incident energy and angle by a linear projection starts the sequence; four decoder-only
blocks (8 heads, causal mask) predict each of the VQ-VAE's 150 latent tokens from the condition
and the tokens before it (cross-entropy on the tokens of the frozen tokenizer). Generation: the
condition token, then 150 tokens drawn one by one with a key-value cache, temperature and
top-k / top-p filtering (:mod:`showerformer.samplers.tokens`), then the VQ-VAE decoder gives the
shower. The tokenizer is a trained ``vq-vae`` checkpoint named by ``tokenizer_checkpoint``; its
config and weights travel inside this model's checkpoint (frozen: no gradients, no codebook
updates), so adapting to a new detector fine-tunes only the prior (the paper's hypothesis).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from showerformer.data.voxels import VoxelGridDataset, grid_shape
from showerformer.errors import InputError
from showerformer.models import register
from showerformer.models.config import ModelConfig
from showerformer.models.family import FamilyModule
from showerformer.models.voxel_sequence import PAR04_GRID, condition_values
from showerformer.models.vq_vae import VQVAE, VQVAEConfig
from showerformer.nn.causal import CausalTransformer
from showerformer.samplers.tokens import sample_autoregressive
from showerformer.showers import Conditions, VoxelShowers

__all__ = ["VQPrior", "VQPriorConfig"]


@dataclasses.dataclass(frozen=True)
class VQPriorConfig(ModelConfig):
    """The prior's sizes (the paper's 4 blocks and 8 heads), its default sampling and the
    tokenizer it models.

    Attributes:
        tokenizer_checkpoint: the trained ``vq-vae`` checkpoint or run folder (read by
            ``from_data``; the model keeps a copy of its weights).
        tokenizer: the VQ-VAE's config (set from the checkpoint).
        d_model: token width.
        n_heads: attention heads (8).
        n_blocks: decoder blocks (4).
        ffn_dim: feed-forward width.
        dropout: dropout inside the blocks.
        temperature: default sampling temperature (0: greedy).
        top_k: default top-k filter (None: off).
        top_p: default nucleus filter (None: off).
        kv_cache: sample with the key-value cache (False: re-run the prefix at every token;
            same tokens, for benchmarks).
    """

    tokenizer_checkpoint: str | None = None
    tokenizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    d_model: int = 128
    n_heads: int = 8
    n_blocks: int = 4
    ffn_dim: int = 512
    dropout: float = 0.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    kv_cache: bool = True

    def __post_init__(self) -> None:
        self.check_types()
        self.require_positive("d_model", "n_heads", "n_blocks", "ffn_dim")
        if self.d_model % self.n_heads:
            raise self.invalid("d_model", f"a multiple of n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise self.invalid("dropout", "a probability in [0, 1)")
        if not self.temperature >= 0:
            raise self.invalid("temperature", "a number >= 0 (0: greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise self.invalid("top_k", "an integer >= 1, or null")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise self.invalid("top_p", "a number in (0, 1], or null")
        if self.tokenizer:
            try:
                VQVAEConfig.from_dict(self.tokenizer)
            except InputError as exc:
                raise InputError(exc.what, key=f"tokenizer.{exc.key}",
                                 expected=exc.expected) from None


def _unit(x: Tensor, lo: float, hi: float) -> Tensor:
    """``x`` mapped from ``[lo, hi]`` to ``[-1, 1]`` (0 when the range is a single value)."""
    if hi <= lo:
        return torch.zeros_like(x)
    return 2.0 * (x - lo) / (hi - lo) - 1.0


@register("vq-prior")
class VQPrior(FamilyModule):
    """Conditional autoregressive transformer over VQ-VAE tokens (see the module docstring)."""

    config_class: ClassVar[type] = VQPriorConfig
    task: ClassVar[str] = "generation"
    data_kind: ClassVar[str] = "voxels"
    pretrained: ClassVar[dict[str, str]] = {"tokenizer_checkpoint": "vq-vae"}

    def __init__(self, config: VQPriorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VQPriorConfig()
        if not config.tokenizer:
            raise InputError("no tokenizer config", key="tokenizer_checkpoint",
                             expected="a trained vq-vae checkpoint (from_data reads it)")
        self.tokenizer = VQVAE(VQVAEConfig.from_dict(config.tokenizer))
        self.freeze("tokenizer")
        t, v, d = self.n_tokens, self.n_codes, config.d_model
        self.condition = nn.Linear(2, d)  # (log E, theta) in [-1, 1] -> the condition token
        self.embed = nn.Embedding(v, d)
        self.transformer = CausalTransformer(d, config.n_heads, config.n_blocks, config.ffn_dim,
                                             max_len=t, dropout=config.dropout)
        self.head = nn.Linear(d, v)
        self._ranges: dict[str, tuple[float, float]] = {}

    @classmethod
    def for_summary(cls) -> VQPrior:
        """The default prior over the default VQ-VAE on the paper's Par04 grid
        (``showerformer model-summary``)."""
        return cls(VQPriorConfig(tokenizer=VQVAEConfig(grid=PAR04_GRID).to_dict()))

    @property
    def n_tokens(self) -> int:
        """Tokens per shower (the VQ-VAE's ``latent_tokens``)."""
        return int(self.tokenizer.config.latent_tokens)

    @property
    def n_codes(self) -> int:
        """Vocabulary (the VQ-VAE's codebook size)."""
        return int(self.tokenizer.config.n_codes)

    # -- the family contract ----------------------------------------------------------------------

    @classmethod
    def from_data(cls, overrides: Mapping[str, Any], train: VoxelGridDataset,
                  settings: Mapping[str, Any], *, val: VoxelGridDataset | None = None
                  ) -> VQPrior:
        """The prior for the training showers, with the tokenizer of ``tokenizer_checkpoint``.

        The tokenizer keeps the scaling it was trained with (the prior models its tokens); the
        condition ranges are fitted on the prior's training showers.

        Raises:
            InputError: no ``tokenizer_checkpoint``, a checkpoint of another family, or a
                tokenizer made for other cells than the data's, naming the key.
        """
        from showerformer.training.checkpoint import load_checkpoint

        path = overrides.get("tokenizer_checkpoint")
        if not path:
            raise InputError("no tokenizer_checkpoint", key="tokenizer_checkpoint",
                             expected="the checkpoint or run folder of a trained vq-vae")
        try:
            tok, info = load_checkpoint(path, device="cpu")
        except InputError as exc:  # about the tokenizer's files: name them
            raise InputError(exc.what, path=exc.path or path,
                             key=exc.key or "tokenizer_checkpoint",
                             expected=exc.expected) from None
        if not isinstance(tok, VQVAE):
            raise InputError(f"a '{info.get('family')}' checkpoint", path=path,
                             key="tokenizer_checkpoint", expected="a vq-vae checkpoint")
        shape = grid_shape(train.geometry, train.path)
        if tuple(tok.config.grid) != shape:
            raise InputError(f"a tokenizer for grid {list(tok.config.grid)}", path=path,
                             key="tokenizer_checkpoint",
                             expected=f"a vq-vae trained on {list(shape)} cells as the data")
        config = cls.config_class.from_dict({**overrides, "tokenizer_checkpoint": str(path),
                                             "tokenizer": tok.config.to_dict()})
        model = cls(config)
        model.tokenizer.load_state_dict(tok.state_dict())
        model.load_data_state({"kind": "vq-prior", "tokenizer": tok.data_state(),
                               "conditions": condition_values(train.conditions)}, {})
        return model

    def load_data_state(self, state: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Restore the tokenizer's scaling and the training conditions."""
        if state:
            if "tokenizer" not in state or "conditions" not in state:
                raise InputError("no tokenizer or conditions", key="preprocessing",
                                 expected="the state of a vq-prior model")
            self.tokenizer.load_data_state(state["tokenizer"], info)
            cond = state["conditions"]
            e_lo, e_hi = (float(x) for x in cond["energy_mev"])
            self._ranges = {"log_energy": (math.log(e_lo), math.log(e_hi)),
                            "theta": (float(cond["theta"][0]), float(cond["theta"][1]))}
        super().load_data_state(state, info)

    # -- network ---------------------------------------------------------------------------------

    def condition_token(self, energy: Tensor, theta: Tensor) -> Tensor:
        """Incident energy (MeV) and angle (rad), ``(B,)`` each -> ``(B, 1, d)``."""
        if not self._ranges:
            raise InputError("the model has no training conditions", key="preprocessing",
                             expected="a model built by from_data or loaded from a checkpoint")
        dtype = self.head.weight.dtype
        u = torch.stack([_unit(energy.to(torch.float64).log(), *self._ranges["log_energy"]),
                         _unit(theta.to(torch.float64), *self._ranges["theta"])], dim=-1)
        return self.condition(u.to(dtype))[:, None, :]

    def forward(self, cond_token: Tensor, tokens: Tensor) -> Tensor:
        """Teacher forcing: condition ``(B, 1, d)`` and tokens ``(B, T)`` -> logits of every
        token ``(B, T, V)`` (position ``i`` sees the condition and tokens ``< i``)."""
        x = torch.cat([cond_token, self.embed(tokens[:, :-1])], dim=1)  # (B, T, d)
        return self.head(self.transformer(x))

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Cross-entropy of the frozen tokenizer's tokens of the batch."""
        for key in ("voxels", "energy", "theta"):
            if key not in batch:
                raise InputError(f"no {key!r} in the batch", key=key,
                                 expected="voxels, energy and theta of every shower")
        tokens = self.tokenizer.tokenize(batch["voxels"], batch["energy"])  # (B, T)
        logits = self(self.condition_token(batch["energy"], batch["theta"]), tokens)
        return F.cross_entropy(logits.reshape(-1, self.n_codes).float(), tokens.reshape(-1))

    # -- generation ------------------------------------------------------------------------------

    def _step(self, kv_cache: bool, batch: int) -> Callable[[Tensor, Tensor], Tensor]:
        """The next-token function of :func:`sample_autoregressive` (cached or not)."""
        if not kv_cache:
            def uncached(first: Tensor, tokens: Tensor) -> Tensor:
                x = torch.cat([first, self.embed(tokens)], dim=1)  # (B, 1 + t, d)
                return self.head(self.transformer(x)[:, -1])

            return uncached
        cache = self.transformer.new_cache(batch, self.n_tokens)

        def cached(first: Tensor, tokens: Tensor) -> Tensor:
            if tokens.shape[1] == 0:
                cache.reset()
                x = first  # (B, 1, d)
            else:
                x = self.embed(tokens[:, -1:])  # (B, 1, d)
            return self.head(self.transformer(x, cache)[:, -1])

        return cached

    @torch.no_grad()
    def sample_tokens(self, energy: Tensor, theta: Tensor, *,
                      generator: torch.Generator | None = None, temperature: float | None = None,
                      top_k: int | None = None, top_p: float | None = None,
                      kv_cache: bool | None = None,
                      callback: Callable[[dict[str, Any]], None] | None = None) -> Tensor:
        """Draw the tokens of showers ``(B, T)`` for incident energies (MeV) and angles (rad)
        ``(B,)`` (sampling options default to the config's)."""
        cfg = self.config
        with self.evaluating():
            first = self.condition_token(energy, theta)
            step = self._step(cfg.kv_cache if kv_cache is None else kv_cache, len(energy))
            return sample_autoregressive(
                step, first, self.n_tokens,
                temperature=cfg.temperature if temperature is None else temperature,
                top_k=cfg.top_k if top_k is None else top_k,
                top_p=cfg.top_p if top_p is None else top_p,
                generator=generator, callback=callback)

    @torch.no_grad()
    def generate(self, conditions: Conditions, *, generator: torch.Generator | None = None,
                 steps: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None,
                 kv_cache: bool | None = None, batch_size: int = 256) -> VoxelShowers:
        """Showers in MeV on the tokenizer's cells for the incident particles.

        Arguments:
            conditions: incident energies (MeV) and angles (rad).
            generator: source of the token draws.
            steps: not used (an autoregressive prior draws exactly one token per step, 150 per
                shower); accepted so that the generic sampling call works.
            temperature, top_k, top_p, kv_cache: sampling options (default: the config's).
            batch_size: showers per draw.

        Raises:
            InputError: a model without fitted state or a bad sampling option.
        """
        geometry = self.tokenizer.geometry
        if geometry is None:
            raise InputError("the model has no fitted state", key="preprocessing",
                             expected="a model built by from_data or loaded from a checkpoint")
        device = self.head.weight.device
        out = []
        for lo in range(0, len(conditions), max(int(batch_size), 1)):
            c = conditions[lo:lo + batch_size]
            energy = torch.as_tensor(np.asarray(c.energy, dtype=np.float64), device=device)
            theta = torch.as_tensor(np.asarray(c.theta, dtype=np.float64), device=device)
            tokens = self.sample_tokens(energy, theta, generator=generator,
                                        temperature=temperature, top_k=top_k, top_p=top_p,
                                        kv_cache=kv_cache)
            grid = self.tokenizer.detokenize(tokens, energy.to(self.head.weight.dtype))
            out.append(grid.reshape(len(c), -1).float().cpu().numpy())
        energies = np.concatenate(out) if out else np.zeros((0, geometry.n_cells), np.float32)
        return VoxelShowers(energies, conditions, geometry)
