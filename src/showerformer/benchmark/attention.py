"""Cost of layer-window attention against full attention: time per call, allowed pairs and memory.

One :class:`~showerformer.nn.layer_window.LayerWindowSelfAttention` call (``d_model``
channels, ``n_heads`` heads) is timed on showers of ``P`` points for every backend:

* ``"full"``: full attention, plain SDPA without a mask (the baseline; window ignored);
* ``"dense"``: the layer window as a ``(B, 1, P, P)`` boolean mask (skipped when building it
  would need more than ``dense_cap_bytes``);
* ``"blocked"``: the layer window tile by tile (``B * P * K`` mask);
* ``"flex"``: FlexAttention with a block-sparse mask, compiled (CUDA only; skipped elsewhere).

The points of a shower are spread over ``n_layers`` calorimeter layers either uniformly or along
a gamma-shaped longitudinal profile (``profile="gamma"``, the default): layer ``l`` gets a share
proportional to ``x^(a - 1) exp(-x / theta)`` at ``x = l + 1/2`` with ``a = 4`` and
``theta = n_layers / 12`` (maximum near a quarter of the depth, mean at a third), rounded to
whole points by largest remainders; the points are sorted by layer as :func:`make_batch` does.
Every shower of the batch has the same points and no padding.

Memory columns: ``mask_mb`` is the exact size of the mask tensors kept for the batch;
``gather_mb`` the size of the keys and values the blocked backend copies tile by tile;
``scores_mb`` is an analytic estimate, the size of the score matrix ``B * H * pairs`` that an
unfused (math) kernel would hold (the fused SDPA kernels of torch 2.13 work in blocks and hold
neither the scores nor a float copy of a boolean mask, forward or backward, in float32 on the
CPU); ``peak_mb`` is ``torch.cuda.max_memory_allocated`` during the call on CUDA (None on CPU).

References:
    Dong et al. (FlexAttention), arXiv:2412.05496; Longo and Sestili (gamma-distribution
    longitudinal profile of electromagnetic showers), Nucl. Instrum. Meth. 128 (1975) 283, as
    used in the PDG review "Passage of particles through matter" (electromagnetic cascades).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from showerformer.nn.layer_window import (
    BlockedLayerWindowMask,
    LayerWindowSelfAttention,
    blocked_layer_window_mask,
    dense_layer_window_mask,
    flex_available,
    flex_layer_window_mask,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "PROFILES",
    "allowed_fraction",
    "attention_cost",
    "format_attention_table",
    "layer_counts",
    "shower_layers",
]

ATTENTION_BACKENDS = ("full", "dense", "blocked", "flex")
"""Backends that :func:`attention_cost` can time."""

PROFILES = ("gamma", "uniform")
"""Longitudinal profiles of the synthetic showers."""

DENSE_BUILD_BYTES_PER_PAIR = 17
"""Bytes per query-key pair while the dense mask is built (int64 layer distances and booleans,
measured with ``ru_maxrss`` at ``P = 8000``); the kept mask is one byte per pair."""


def layer_counts(points: int, n_layers: int, profile: str = "gamma") -> np.ndarray:
    """Points per layer of a synthetic shower with ``points`` points in total.

    Arguments:
        points: total number of points.
        n_layers: calorimeter layers.
        profile: ``"gamma"`` (longitudinal shower profile, see the module docstring) or
            ``"uniform"``.

    Returns:
        ``(n_layers,)`` int64 counts summing to ``points``.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
    if points < 0 or n_layers < 1:
        raise ValueError(f"points={points}, n_layers={n_layers}: expected points >= 0 and a "
                         "positive number of layers")
    if profile == "uniform":
        weight = np.ones(n_layers)
    else:
        x = np.arange(n_layers) + 0.5
        shape, theta = 4.0, n_layers / 12.0
        weight = x ** (shape - 1.0) * np.exp(-x / theta)
    share = points * weight / weight.sum()  # (L,)
    counts = np.floor(share).astype(np.int64)
    rest = points - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1  # largest remainders
    return counts


def shower_layers(points: int, n_layers: int, profile: str = "gamma", batch: int = 1) -> torch.Tensor:
    """Layer of every point of ``batch`` identical synthetic showers, sorted by layer.

    Arguments:
        points, n_layers, profile: as in :func:`layer_counts`.
        batch: showers ``B``.

    Returns:
        ``(B, points)`` int64.
    """
    counts = torch.as_tensor(layer_counts(points, n_layers, profile))
    layer = torch.repeat_interleave(torch.arange(n_layers), counts)  # (P,)
    return layer[None].expand(batch, points).contiguous()


def allowed_fraction(counts: Sequence[int] | np.ndarray, window: int | None) -> float:
    """Fraction of the ``P^2`` query-key pairs of one shower that the layer window allows.

    Arguments:
        counts: points per layer.  # (L,)
        window: largest allowed layer distance; None: every pair.

    Returns:
        ``sum_l n_l * (points within window layers of l) / P^2`` (1.0 without window; 0.0 for
        an empty shower).
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total == 0:
        return 0.0
    if window is None:
        return 1.0
    cum = np.concatenate([[0.0], np.cumsum(c)])  # (L + 1,)
    idx = np.arange(len(c))
    near = cum[np.minimum(idx + window + 1, len(c))] - cum[np.maximum(idx - window, 0)]  # (L,)
    return float((c * near).sum() / total**2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Shortest wall time of ``fn`` in ms over ``repeats`` calls after one warm-up call (the
    least disturbed one on a shared machine)."""
    fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def _mask_bytes(mask: Any) -> int:
    """Bytes of the tensors held by a mask of any backend (0 for no mask)."""
    if mask is None:
        return 0
    if isinstance(mask, torch.Tensor):
        return mask.nbytes
    if isinstance(mask, BlockedLayerWindowMask):
        return mask.nbytes
    parts = tuple(getattr(mask, "as_tuple", lambda: ())())  # a FlexAttention BlockMask
    return sum(t.nbytes for t in parts if isinstance(t, torch.Tensor))


def attention_cost(
    points: Sequence[int] = (1000, 4000, 16000),
    n_layers: int = 45,
    window: int = 2,
    d_model: int = 128,
    n_heads: int = 4,
    batch: int = 1,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    backends: Sequence[str] = ATTENTION_BACKENDS,
    *,
    backward: bool = False,
    profile: str = "gamma",
    block_size: int = 128,
    group_tiles: bool = True,
    dense_cap_bytes: int = 2 * 2**30,
    dtype: torch.dtype = torch.float32,
    threads: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time one layer-window self-attention call per backend and shower size.

    Arguments:
        points: shower sizes ``P`` to time.
        n_layers: calorimeter layers the points are spread over.
        window: layer window ``k`` of the masked backends.
        d_model: channels; n_heads: heads.
        batch: showers per call ``B`` (identical, no padding).
        device: where to run.
        repeats: timed calls per measurement (the shortest counts, after one warm-up call).
        backends: any of :data:`ATTENTION_BACKENDS`.
        backward: also time forward + backward (input and weights require gradients).
        profile: ``"gamma"`` or ``"uniform"`` spread over layers (module docstring).
        block_size: tile of the blocked and flex backends.
        group_tiles: blocked backend: group tiles by key length (see
            :func:`~showerformer.nn.layer_window.blocked_layer_window_mask`).
        dense_cap_bytes: skip the dense backend when building its mask would need more, estimated
            as :data:`DENSE_BUILD_BYTES_PER_PAIR` bytes per query-key pair.
        dtype: dtype of the activations and weights.
        threads: CPU threads of torch during the run (restored afterwards); None: unchanged.
        seed: seeds the weights and the input.

    Returns:
        One dict per (points, backend): ``points``, ``batch``, ``backend``, ``window`` (None for
        full), ``status`` (``"ok"`` or ``"skipped: <why>"``), ``allowed_fraction`` (query-key
        pairs the window allows, of ``P^2``), ``scored_fraction`` (pairs whose score is computed,
        of ``P^2``; None when unknown), ``n_keys`` (longest key length of a tile, blocked only),
        ``mask_ms`` (building the mask), ``forward_ms`` (no_grad forward), ``backward_ms``
        (forward + backward, None unless ``backward``), ``mask_mb`` (exact size of the mask),
        ``gather_mb`` (keys and values copied tile by tile, blocked only), ``scores_mb`` (analytic
        estimate), ``peak_mb`` (CUDA only), ``device``, ``threads``. Timings are None when
        skipped; times in ms, sizes in MiB.
    """
    unknown = [b for b in backends if b not in ATTENTION_BACKENDS]
    if unknown:
        raise ValueError(f"backends {unknown}: expected any of {', '.join(ATTENTION_BACKENDS)}")
    dev = torch.device(device)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _attention_cost(points, n_layers, window, d_model, n_heads, batch, dev, repeats,
                               backends, backward, profile, block_size, group_tiles,
                               dense_cap_bytes, dtype, seed)
    finally:
        torch.set_num_threads(saved_threads)


def _attention_cost(
    points: Sequence[int], n_layers: int, window: int, d_model: int, n_heads: int, batch: int,
    dev: torch.device, repeats: int, backends: Sequence[str], backward: bool, profile: str,
    block_size: int, group_tiles: bool, dense_cap_bytes: int, dtype: torch.dtype, seed: int,
) -> list[dict[str, Any]]:
    """:func:`attention_cost` after the argument checks, with the thread count set."""
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        module = LayerWindowSelfAttention(d_model, n_heads).to(dev, dtype)
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    for p in points:
        layer = shower_layers(p, n_layers, profile, batch).to(dev)  # (B, P)
        valid = torch.ones_like(layer, dtype=torch.bool)  # (B, P)
        x = torch.randn(batch, p, d_model, generator=gen, dtype=dtype).to(dev)  # (B, P, d)
        fraction = allowed_fraction(layer_counts(p, n_layers, profile), window)
        for name in backends:
            row: dict[str, Any] = {
                "points": p, "batch": batch, "backend": name,
                "window": None if name == "full" else window, "status": "ok",
                "allowed_fraction": 1.0 if name == "full" else fraction,
                "scored_fraction": None, "n_keys": None, "mask_ms": None, "forward_ms": None,
                "backward_ms": None, "mask_mb": None, "gather_mb": None, "scores_mb": None,
                "peak_mb": None, "device": str(dev), "threads": torch.get_num_threads(),
            }
            rows.append(row)
            build: Callable[[], Any] | None = None
            if name == "full":
                build = _no_mask
            elif name == "dense":
                need = DENSE_BUILD_BYTES_PER_PAIR * batch * p * p
                if need > dense_cap_bytes:
                    row["status"] = (f"skipped: dense mask needs ~{need / 2**30:.1f} GiB to build "
                                     f"(cap {dense_cap_bytes / 2**30:.1f} GiB)")
                else:
                    build = functools.partial(dense_layer_window_mask, layer, valid, window)
            elif name == "blocked":
                build = functools.partial(blocked_layer_window_mask, layer, valid, window,
                                          block_size=block_size, group_tiles=group_tiles)
            elif dev.type != "cuda" or not flex_available():
                row["status"] = "skipped: flex needs CUDA (compiled FlexAttention)"
            else:
                build = functools.partial(flex_layer_window_mask, layer, valid, window,
                                          block_size=block_size)
            if build is not None:
                _measure(row, module, x, build, repeats, backward)
    return rows


def _no_mask() -> None:
    return None


def _measure(
    row: dict[str, Any], module: nn.Module, x: torch.Tensor, build: Callable[[], Any],
    repeats: int, backward: bool,
) -> None:
    """Fill the measured columns of ``row``: build the mask, time forward (and backward)."""
    dev = x.device
    b, p, d = x.shape
    itemsize = x.element_size()
    with torch.no_grad():
        row["mask_ms"] = _best_ms(build, dev, repeats)
        mask = build()
    gathered = 0  # keys (and as many values) copied tile by tile, blocked only
    if mask is None or isinstance(mask, torch.Tensor):
        scored = b * p * p
    elif isinstance(mask, BlockedLayerWindowMask):
        scored = mask.scored_pairs
        gathered = sum(g.key_index.numel() for g in mask.groups)
        row["n_keys"] = mask.n_keys
    else:  # FlexAttention BlockMask: the tiles it does not skip
        scored = round(b * p * p * (1.0 - float(mask.sparsity()) / 100.0))
    row["scored_fraction"] = scored / max(1, b * p * p)  # scored counts every shower
    row["mask_mb"] = _mask_bytes(mask) / 2**20
    row["gather_mb"] = 2 * gathered * d * itemsize / 2**20
    row["scores_mb"] = module.n_heads * scored * itemsize / 2**20

    def forward() -> None:
        with torch.no_grad():
            module(x, mask)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    row["forward_ms"] = _best_ms(forward, dev, repeats)
    if dev.type == "cuda":
        row["peak_mb"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    if backward:
        x_grad = x.detach().requires_grad_()

        def step() -> None:
            module(x_grad, mask).sum().backward()
            module.zero_grad(set_to_none=True)
            x_grad.grad = None

        row["backward_ms"] = _best_ms(step, dev, repeats)


def format_attention_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of :func:`attention_cost` rows (one line per row, fixed columns).

    Arguments:
        rows: from :func:`attention_cost`.

    Returns:
        The table, with a header line; ``-`` marks a missing value, skipped rows give the reason.
    """
    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    head = (f"{'points':>7} {'backend':<8} {'allowed':>8} {'scored':>8} {'K':>6} {'mask ms':>9} "
            f"{'fwd ms':>9} {'fwd+bwd ms':>11} {'mask MB':>9} {'gather MB':>10} {'scores MB*':>10} "
            f"{'peak MB':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['points']:>7} {r['backend']:<8} {num(r['allowed_fraction'], '.3f'):>8} "
                f"{num(r['scored_fraction'], '.3f'):>8} {num(r['n_keys'], 'd'):>6} "
                f"{num(r['mask_ms'], '.1f'):>9} {num(r['forward_ms'], '.1f'):>9} "
                f"{num(r['backward_ms'], '.1f'):>11} {num(r['mask_mb'], '.2f'):>9} "
                f"{num(r['gather_mb'], '.1f'):>10} {num(r['scores_mb'], '.1f'):>10} "
                f"{num(r['peak_mb'], '.1f'):>9}")
        if r["status"] != "ok":
            line += f"  {r['status']}"
        lines.append(line)
    if rows:
        r = rows[0]
        window = next((x["window"] for x in rows if x["backend"] != "full"), None)
        lines.append(f"batch {r['batch']}, window {window}, "
                     f"device {r['device']}, {r['threads']} threads; allowed/scored: fractions of "
                     "the P^2 query-key pairs; * analytic estimate (score matrix of an unfused "
                     "kernel)")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m showerformer.benchmark.attention --points 1000 4000
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--layers", type=int, default=45)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(ATTENTION_BACKENDS))
    parser.add_argument("--backward", action="store_true")
    parser.add_argument("--profile", choices=PROFILES, default="gamma")
    parser.add_argument("--dense-cap-gb", type=float, default=2.0)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--single-key-length", action="store_true",
                        help="blocked: one key length for all tiles (no grouping)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(format_attention_table(attention_cost(
        args.points, args.layers, args.window, args.d_model, args.heads, args.batch, args.device,
        args.repeats, args.backends, backward=args.backward, profile=args.profile,
        block_size=args.block_size, group_tiles=not args.single_key_length,
        dense_cap_bytes=int(args.dense_cap_gb * 2**30), threads=args.threads)))
