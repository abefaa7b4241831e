"""Benchmarks of the voxel-sequence transformers (seed 001): ablations, speed, reconstruction vs generation.

- :func:`run_mlm_ablation`: the paper's ablations (Raikwar et al., arXiv:2312.09290, Sec. 4.2):
  patch sizes and positional encodings against the TransformerMLM validation loss, every
  variant trained with the same steps, data and seed.
- :func:`prior_sampling_speed`: ms/shower of the autoregressive prior with and without the
  key-value cache; :func:`training_throughput`: showers/s of a training step of any family.
- :func:`profile_tails` and :func:`voxel_energy_separation`: the paper's comparison (Sec. 5.3):
  the mismatch of the mean lateral and longitudinal profiles at their tails, and the cell-energy
  spectrum it names as its weak point.
- :func:`run_generation_benchmark`: reconstruction (VQ-VAE alone) against generation (prior +
  decoder) on held-out showers, through the evaluation suite and the measures above.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from showerformer.errors import InputError

__all__ = [
    "ABLATIONS",
    "prior_sampling_speed",
    "profile_tails",
    "run_generation_benchmark",
    "run_mlm_ablation",
    "training_throughput",
    "voxel_energy_separation",
]

Say = Callable[[str], None]

ABLATIONS: dict[str, dict[str, Any]] = {
    "patch 18x10x3, sincos-3d (default)": {},
    "patch 18x5x3": {"patch_size": [18, 5, 3]},
    "patch 18x10x5": {"patch_size": [18, 10, 5]},
    "patch 9x10x3": {"patch_size": [9, 10, 3]},
    "patch 18x25x9": {"patch_size": [18, 25, 9]},
    "sincos-1d": {"positional_encoding": "sincos-1d"},
    "learned-1d": {"positional_encoding": "learned-1d"},
    "learned-3d": {"positional_encoding": "learned-3d"},
    "sincos-3d, phi roll-over": {"periodic_phi": True},
    "no positions": {"positional_encoding": "none"},
}
"""The ablation variants: overrides of the TransformerMLM config (patch sizes are (dr, dphi, dz)
on the 18 x 50 x 45 Par04 grid)."""


# ---------------------------------------------------------------------------- ablation


def run_mlm_ablation(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    steps: int = 300,
    max_showers: int | None = 5_000,
    device: str = "cpu",
    say: Say | None = None,
) -> dict[str, Any]:
    """Train one TransformerMLM per variant and compare their validation losses.

    Arguments:
        data: voxel showers (e.g. ``showerformer simulate par04``).
        out_dir: one run folder per variant and ``ablation.json``.
        config: the base run config (``model:``, ``train:``, ``data:``) as a mapping.
        variants: ``{label: model overrides}`` (default :data:`ABLATIONS`).
        steps: optimizer steps of every variant (validation at the end).
        max_showers: showers read from ``data``.
        device: where to train.
        say: called with a line before every variant.

    Returns:
        ``{"steps", "max_showers", "rows"}``; a row holds ``variant``, ``overrides``,
        ``tokens``, ``patch_dim``, ``parameters``, ``val_loss`` (binary cross-entropy of every
        cell, masks from a fixed seed), ``train_loss`` (mean of the last 10 % of the logged
        steps) and ``seconds``.
    """
    from showerformer.models.transformer_mlm import TransformerMLMConfig
    from showerformer.training.run import train

    say = say or (lambda _line: None)
    variants = dict(variants or ABLATIONS)
    if steps < 1:
        raise InputError(f"{steps}", key="--steps", expected="at least one step")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (label, overrides) in enumerate(variants.items()):
        cfg = copy.deepcopy(dict(config))
        cfg["model"] = {**dict(cfg.get("model") or {}), **dict(overrides)}
        if cfg["model"].get("family", "transformer-mlm") != "transformer-mlm":
            raise InputError(f"family {cfg['model']['family']!r}", key="model.family",
                             expected="transformer-mlm for the MLM ablation")
        cfg["train"] = {**dict(cfg.get("train") or {}), "max_steps": steps, "val_every": steps,
                        "checkpoint_every": steps, "tensorboard": False, "device": device}
        cfg["data"] = {**dict(cfg.get("data") or {}), "max_showers": max_showers}
        say(f"[{i + 1}/{len(variants)}] {label}")
        start = time.perf_counter()
        result = train(cfg, data, out / f"variant_{i:02d}", max_steps=steps, overwrite=True,
                       progress=False)
        seconds = time.perf_counter() - start
        tokens = patch_dim = None
        if result.checkpoint is not None:  # the trained config holds the data's grid
            from showerformer.training.checkpoint import read_checkpoint_info

            trained = read_checkpoint_info(result.checkpoint).get("model_config") or {}
            mc = TransformerMLMConfig.from_dict(trained)
            tokens, patch_dim = mc.n_patches, mc.patch_dim
        losses = [float(r["loss"]) for r in result.history if r.get("loss") not in (None, "")]
        tail = losses[-max(len(losses) // 10, 1):] if losses else []
        params = _parameters(result.checkpoint)
        rows.append({"variant": label, "overrides": dict(overrides), "tokens": tokens,
                     "patch_dim": patch_dim, "parameters": params,
                     "val_loss": result.last_val_loss,
                     "train_loss": float(np.mean(tail)) if tail else None,
                     "seconds": seconds})
    summary = {"data": str(data), "steps": steps, "max_showers": max_showers, "rows": rows}
    _write_json(out / "ablation.json", summary)
    return summary


def _parameters(checkpoint: Path | None) -> int | None:
    if checkpoint is None:
        return None
    from safetensors import safe_open

    from showerformer.training.checkpoint import MODEL_FILE

    with safe_open(str(Path(checkpoint) / MODEL_FILE), "pt") as f:
        return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def _write_json(path: Path, data: Any) -> None:
    from showerformer._atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------------- speed


def _timed(fn: Callable[[], Any], repeats: int, cap_s: float) -> float:
    """Shortest wall time of up to ``repeats`` calls after one warm-up (no new call starts
    after ``cap_s`` seconds)."""
    fn()
    best, start = math.inf, time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > cap_s:
            break
    return best


def prior_sampling_speed(model: Any, batches: Sequence[int] = (1, 100), *, repeats: int = 3,
                         cap_s: float = 60.0, seed: int = 0) -> list[dict[str, Any]]:
    """ms/shower of drawing the tokens of a ``vq-prior`` (and of decoding them), with and
    without the key-value cache, from the same seed.

    Returns:
        Rows ``batch``, ``kv_cache``, ``tokens_ms_per_shower``, ``decode_ms_per_shower``,
        ``speedup`` (uncached / cached token time, on the cached rows) and ``same_tokens``
        (share of the tokens both paths drew alike; 1 up to float32 rounding at near-ties).
    """
    device = next(model.parameters()).device
    state = model.data_state()
    cond = state["conditions"]
    rows = []
    for b in batches:
        e_lo, e_hi = cond["energy_mev"]
        energy = torch.full((b,), math.sqrt(e_lo * e_hi), dtype=torch.float64, device=device)
        theta = torch.full((b,), 0.5 * sum(cond["theta"]), dtype=torch.float64, device=device)
        times, tokens = {}, {}

        def draw(kv: bool, energy: torch.Tensor = energy, theta: torch.Tensor = theta
                 ) -> torch.Tensor:
            g = torch.Generator(device=device).manual_seed(seed)
            t = model.sample_tokens(energy, theta, generator=g, kv_cache=kv)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return t

        for kv in (True, False):
            times[kv] = _timed(lambda kv=kv: draw(kv), repeats, cap_s)
            tokens[kv] = draw(kv)
        # float32 rounding differs between the two paths; a token can flip where two
        # candidates tie to ~1e-7 after the Gumbel noise, so the agreement is reported
        same = float((tokens[True] == tokens[False]).float().mean())
        e32 = energy.to(next(model.parameters()).dtype)
        drawn = tokens[True]
        decode = _timed(lambda t=drawn, e=e32: model.tokenizer.detokenize(t, e), repeats, cap_s)
        for kv in (True, False):
            rows.append({"batch": b, "kv_cache": kv,
                         "tokens_ms_per_shower": 1e3 * times[kv] / b,
                         "decode_ms_per_shower": 1e3 * decode / b,
                         "speedup": times[False] / times[True] if kv else None,
                         "same_tokens": same})
    return rows


def training_throughput(model: Any, batch: Mapping[str, torch.Tensor], *, steps: int = 5,
                        lr: float = 1e-4) -> dict[str, float]:
    """Showers per second of full training steps (loss, backward, AdamW step) of a family
    with a ``loss`` on one batch, after one warm-up step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    device = next(model.parameters()).device

    def step() -> None:
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    n = len(next(iter(batch.values())))
    return {"batch": n, "ms_per_step": 1e3 * seconds, "showers_per_s": n / seconds}


# ---------------------------------------------------------------------------- comparisons


def _profiles(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean longitudinal (per layer) and lateral (per r bin) energy profiles of grids
    ``(N, Z, A, R)``, MeV."""
    return grid.sum(axis=(2, 3)).mean(axis=0), grid.sum(axis=(1, 2)).mean(axis=0)


def _tail_mismatch(ref: np.ndarray, gen: np.ndarray, containment: float) -> dict[str, Any]:
    """Relative mismatch of the energy beyond the ``containment`` point of the reference
    profile (its tail), and the largest per-bin mismatch there."""
    cum = np.cumsum(ref) / max(ref.sum(), 1e-30)
    first = int(np.searchsorted(cum, containment, side="right"))
    first = min(first + 1, len(ref) - 1)  # the bins wholly beyond the containment point
    tail_ref, tail_gen = ref[first:], gen[first:]
    frac = float(tail_gen.sum() / tail_ref.sum() - 1) if tail_ref.sum() > 0 else None
    keep = tail_ref > 1e-3 * ref.max()
    per_bin = (np.abs(tail_gen[keep] / tail_ref[keep] - 1) if keep.any() else np.array([]))
    return {"first_bin": first, "tail_rel_diff": frac,
            "max_bin_rel_diff": float(per_bin.max()) if per_bin.size else None}


def profile_tails(reference: Any, generated: Any, grid: Sequence[int], *,
                  containment: float = 0.9) -> list[dict[str, Any]]:
    """The paper's profile comparison: per incident energy (and for all showers) the relative
    difference of the energy in the tails of the mean longitudinal and lateral profiles
    (the bins beyond the reference's ``containment`` point).

    Arguments:
        reference, generated: :class:`~showerformer.showers.VoxelShowers` on the same grid.
        grid: ``(Z, A, R)``.
        containment: share of the reference profile before the tail.

    Returns:
        Rows ``energy``, ``n``, ``longitudinal`` and ``lateral`` (dicts of the tail mismatch:
        ``tail_rel_diff`` (generated / reference - 1 of the tail energy), ``max_bin_rel_diff``
        (the largest ``|gen / ref - 1|`` of a tail bin holding at least 1e-3 of the profile
        peak), ``first_bin``).
    """
    shape = (-1, *(int(g) for g in grid))
    ref = np.asarray(reference.energies, dtype=np.float64).reshape(shape)
    gen = np.asarray(generated.energies, dtype=np.float64).reshape(shape)
    e_r, e_g = np.asarray(reference.conditions.energy), np.asarray(generated.conditions.energy)
    groups = [("all", np.ones(len(ref), bool), np.ones(len(gen), bool))]
    values = np.unique(e_r)
    if len(values) <= 16:
        groups += [(f"{v / 1e3:g} GeV", np.isclose(e_r, v), np.isclose(e_g, v)) for v in values]
    rows = []
    for label, sr, sg in groups:
        if not sr.any() or not sg.any():
            continue
        lr, tr = _profiles(ref[sr])
        lg, tg = _profiles(gen[sg])
        rows.append({"energy": label, "n": int(sr.sum()), "n_generated": int(sg.sum()),
                     "longitudinal": _tail_mismatch(lr, lg, containment),
                     "lateral": _tail_mismatch(tr, tg, containment)})
    return rows


def voxel_energy_separation(reference: Any, generated: Any, *, bins: int = 50
                            ) -> dict[str, Any]:
    """Separation power of the cell-energy spectra (log10 MeV of the cells with energy, 50 bins
    over the reference range), and the mean number of cells with energy."""
    from showerformer.evaluation.metrics import separation_power

    r = np.asarray(reference.energies)
    g = np.asarray(generated.energies)
    lr, lg = np.log10(r[r > 0]), np.log10(g[g > 0])
    if not lr.size or not lg.size:
        return {"separation": None, "cells_ref": float((r > 0).sum(1).mean()),
                "cells_gen": float((g > 0).sum(1).mean())}
    edges = np.linspace(lr.min(), lr.max(), bins + 1)
    h_r = np.histogram(np.clip(lr, edges[0], edges[-1]), edges)[0].astype(np.float64)
    h_g = np.histogram(np.clip(lg, edges[0], edges[-1]), edges)[0].astype(np.float64)
    return {"separation": separation_power(h_r / h_r.sum(), h_g / h_g.sum()),
            "cells_ref": float((r > 0).sum(1).mean()), "cells_gen": float((g > 0).sum(1).mean())}


def run_generation_benchmark(
    checkpoint: str | os.PathLike[str],
    test: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    n: int | None = 2_000,
    classifier: str = "cpu",
    seed: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    plots: bool = False,
    device: str = "cpu",
    say: Say | None = None,
) -> dict[str, Any]:
    """Reconstruction (the prior's VQ-VAE alone) against generation (prior + decoder) on the
    conditions of held-out showers.

    Arguments:
        checkpoint: a ``vq-prior`` checkpoint or run folder.
        test: held-out voxel showers of the same cells.
        out_dir: evaluation reports, ``generation.json``.
        n: held-out showers used (None: all).
        classifier: the evaluation suite's classifier mode (``cpu``, ``full`` or ``none``).
        seed: seed of the token draws.
        temperature, top_k, top_p: sampling options (default: the model's).
        plots: write the evaluation plots.
        device: where the model runs.
        say: progress lines.

    Returns:
        ``{"checkpoint", "test", "n", "scaling", "rows"}``; rows ``reconstruction`` and
        ``generation``, each with ``evaluation`` (AUCs, FPD, KPD, mean separation power),
        ``profiles`` (:func:`profile_tails`), ``cells`` (:func:`voxel_energy_separation`) and
        ``ms_per_shower``.
    """
    from showerformer.benchmark.point_flow import _evaluate
    from showerformer.generation import load_generator
    from showerformer.io.detect import read_showers
    from showerformer.showers import VoxelShowers
    from showerformer.training.distributed import resolve_device

    say = say or (lambda _line: None)
    model, _info = load_generator(checkpoint, device=device)
    if getattr(model, "family", None) != "vq-prior":
        raise InputError(f"a '{getattr(model, 'family', '?')}' checkpoint", path=checkpoint,
                         key="family", expected="a vq-prior checkpoint")
    ref = read_showers(test, stop=n)
    if not isinstance(ref, VoxelShowers) or ref.energies.shape[1] != model.tokenizer.geometry.n_cells:
        raise InputError("showers of other cells", path=test, key="showers",
                         expected=f"voxel showers on {model.tokenizer.geometry.name}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = tuple(model.tokenizer.config.grid)
    dev = resolve_device(device)
    rows = []
    say(f"reconstructing {len(ref):,} showers with the VQ-VAE")
    start = time.perf_counter()
    rec = []
    for lo in range(0, len(ref), 256):
        v = torch.from_numpy(ref.energies[lo:lo + 256].reshape(-1, *grid)).to(dev)
        e = torch.as_tensor(ref.conditions.energy[lo:lo + 256], dtype=torch.float32, device=dev)
        rec.append(model.tokenizer.reconstruct(v, e).reshape(len(v), -1).cpu().numpy())
    recon = VoxelShowers(np.concatenate(rec), ref.conditions, ref.geometry)
    rec_ms = 1e3 * (time.perf_counter() - start) / len(ref)
    say(f"generating {len(ref):,} showers with the prior")
    start = time.perf_counter()
    gen = model.generate(ref.conditions, generator=torch.Generator(device=dev).manual_seed(seed),
                         temperature=temperature, top_k=top_k, top_p=top_p)
    gen = VoxelShowers(gen.energies, ref.conditions, ref.geometry)
    gen_ms = 1e3 * (time.perf_counter() - start) / len(ref)
    for name, showers, ms in (("reconstruction", recon, rec_ms), ("generation", gen, gen_ms)):
        say(f"evaluating the {name}")
        rows.append({"name": name, "ms_per_shower": ms,
                     "evaluation": _evaluate(ref, showers, out / f"eval_{name}", classifier,
                                             seed, ("low", "low_normed", "high"), plots),
                     "profiles": profile_tails(ref, showers, grid),
                     "cells": voxel_energy_separation(ref, showers)})
    summary = {"checkpoint": str(checkpoint), "test": str(test), "n": len(ref),
               "scaling": model.tokenizer.scaling.kind,
               "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
               "rows": rows}
    _write_json(out / "generation.json", summary)
    return summary

