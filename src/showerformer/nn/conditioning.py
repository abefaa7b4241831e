"""The global condition vector of the point-cloud generators: time, incident energy, direction, particle."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from showerformer.data.conditions import CONDITION_KEYS, require_keys
from showerformer.errors import InputError
from showerformer.nn.embeddings import GaussianFourierFeatures, direction_vector

__all__ = ["ConditionEmbedding"]


class ConditionEmbedding(nn.Module):
    """Per-shower condition vector ``c`` (B, d) of a generator.

    ``c = MLP([F_t(t), F_E(energy), u(theta, phi)]) + E_particle[particle]``: Gaussian Fourier
    features ``F_t`` of the diffusion or flow time (when the model has one) and ``F_E`` of the
    normalized log incident energy, the direction unit vector ``u``, an MLP to width ``d``, plus
    a learned particle-type embedding (initialized ~ N(0, 0.02^2)).

    Arguments:
        d: output width.
        n_particles: number of particle types (rows of the embedding).
        n_fourier: Fourier features of each scalar (even).
        time_fourier_std: frequency spread of the time features; None: no time input (e.g. a
            GAN generator).
        energy_fourier_std: frequency spread of the energy features.
        n_hidden: hidden layers of width ``d`` (with SiLU) before the output Linear; 0: a
            single Linear.

    References:
        Tancik et al. (Fourier features), arXiv:2006.10739; Peebles & Xie (DiT conditioning),
        arXiv:2212.09748.
    """

    def __init__(
        self,
        d: int,
        n_particles: int,
        *,
        n_fourier: int = 16,
        time_fourier_std: float | None = 4.0,
        energy_fourier_std: float = 1.0,
        n_hidden: int = 1,
    ) -> None:
        super().__init__()
        if d < 1 or n_particles < 1 or n_hidden < 0:
            raise ValueError(f"d={d}, n_particles={n_particles}, n_hidden={n_hidden}: expected "
                             "positive widths and a non-negative number of hidden layers")
        self.time_features = (None if time_fourier_std is None
                              else GaussianFourierFeatures(n_fourier, time_fourier_std))
        self.energy_features = GaussianFourierFeatures(n_fourier, energy_fourier_std)
        n_in = self.energy_features.out_features + 3
        if self.time_features is not None:
            n_in += self.time_features.out_features
        layers: list[nn.Module] = []
        for _ in range(n_hidden):
            layers += [nn.Linear(n_in, d), nn.SiLU()]
            n_in = d
        self.mlp = nn.Sequential(*layers, nn.Linear(n_in, d))
        self.particle_embed = nn.Embedding(n_particles, d)
        nn.init.normal_(self.particle_embed.weight, std=0.02)

    @property
    def uses_time(self) -> bool:
        """Whether :meth:`forward` takes a time."""
        return self.time_features is not None

    def forward(self, t: Tensor | None, cond: Mapping[str, Tensor]) -> Tensor:
        """The condition vector.

        Arguments:
            t: diffusion or flow time (None for a module built without time).  # (B,)
            cond: ``"particle"`` (B,) int64, ``"energy"`` (B,) normalized log incident energy,
                ``"theta"``, ``"phi"`` (B,) rad (see
                :func:`~showerformer.data.conditions.condition_tensors`).

        Returns:
            ``(B, d)`` in the dtype of the module's parameters.

        Raises:
            InputError: a missing condition, or a time given to (or missing from) the module.
        """
        require_keys(cond, CONDITION_KEYS, "cond")
        if (t is None) == self.uses_time:
            raise InputError("time given to a condition embedding without time" if t is not None
                             else "no time for a condition embedding with time", key="t",
                             expected="a time (B,)" if self.uses_time else "None")
        dtype = self.particle_embed.weight.dtype
        direction = direction_vector(cond["theta"].to(dtype), cond["phi"].to(dtype))  # (B, 3)
        parts = [self.energy_features(cond["energy"].to(dtype)), direction]
        if self.time_features is not None and t is not None:
            parts.insert(0, self.time_features(t.to(dtype)))
        scalars = torch.cat(parts, dim=-1)  # (B, n_in)
        return self.mlp(scalars) + self.particle_embed(cond["particle"].long())  # (B, d)
