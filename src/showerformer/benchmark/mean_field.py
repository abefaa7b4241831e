"""Cost of mean-field attention (MDMA) against full self-attention: time per call and memory.

For every shower size ``N`` and attention kind one call is timed on ``B`` showers of ``N``
points with ``dim`` channels and ``n_heads`` heads:

* ``"mean-field"``: one :class:`~showerformer.nn.mean_field.MeanFieldAttention` call, one
  query per shower (the mean field) over the ``N`` points: ``B * H * N`` scores;
* ``"full"``: one ``torch.nn.MultiheadAttention`` self-attention over the same points at the
  same width: ``B * H * N^2`` scores, through SDPA's fused kernel (the module is kept in
  training mode, without dropout: in evaluation mode without gradients it would take its
  inference fast path, which on a CPU in torch 2.13 materializes the score matrix, 0.98 GB at
  4,000 points and the default width).

Both modules have ``4 (dim^2 + dim)`` parameters. The showers are full (no padding, no mask);
points and weights are Gaussian, seeded. Each measurement is one untimed warm-up call, then up to
``repeats`` timed calls, the shortest of which counts (the least disturbed on a shared
machine); no timed call starts once the measurement has taken ``time_cap_s``, and a warm-up
longer than that is reported alone. Once a call of one kind (forward + backward when timed,
else forward) took longer than ``time_cap_s``, the larger sizes of that kind are skipped
(quadratic full attention on a CPU) and the row says why.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the warm-up call, minus the memory
allocated before it. On a CPU, the growth of the process's peak resident memory (``VmHWM``,
reset through ``/proc/self/clear_refs``) during the warm-up call over the resident memory
before it, after returning freed heap memory to the system (glibc ``malloc_trim``); this
counts what the call obtains from the system, so values below about 1 MiB are noise, and is
None where the peak cannot be reset. ``scores_mb`` is an analytic estimate, the score matrix
``B * H * scores`` that an unfused (math) kernel would hold; the fused kernels never hold it.

References:
    Käch and Melzer-Pellmann (mean-field attention, MDMA), arXiv:2305.15254; Dao et al.
    (FlashAttention, the blockwise kernels behind SDPA), arXiv:2205.14135.
"""

from __future__ import annotations

import ctypes
import gc
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from showerformer.errors import InputError
from showerformer.nn.mean_field import MeanFieldAttention

__all__ = ["MEAN_FIELD_KINDS", "mean_field_cost"]

MEAN_FIELD_KINDS = ("mean-field", "full")
"""Attention kinds that :func:`mean_field_cost` times."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _trim_heap() -> None:
    """Return freed heap memory to the system (glibc only; nothing elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_rss_reset() -> bool:
    """Reset the process's peak resident memory (Linux ``clear_refs``); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Memory:
    """Peak memory of one call: :meth:`start` before it, :meth:`stop` (MiB or None) after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base: int | None = None

    @property
    def kind(self) -> str:
        return ("cuda max_memory_allocated" if self.device.type == "cuda"
                else "peak RSS increase")

    def start(self) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        _trim_heap()
        rss = _status_kib("VmRSS")
        self.base = rss * 1024 if rss is not None and _peak_rss_reset() else None

    def stop(self) -> float | None:
        if self.base is None:
            return None
        if self.device.type == "cuda":
            _sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _status_kib("VmHWM")
            if hwm is None:
                return None
            peak = hwm * 1024
        return max(0, peak - self.base) / 2**20


def _measure(fn: Callable[[], Any], device: torch.device, repeats: int,
             cap_s: float) -> tuple[float, int, float | None]:
    """Time ``fn`` (see the module docstring).

    Returns:
        ``(ms, timed_calls, peak_mb)``: the shortest timed call in ms (the warm-up call when it
        alone took ``cap_s``; then ``timed_calls`` is 0) and the peak memory of the warm-up.
    """
    memory = _Memory(device)
    memory.start()
    start = time.perf_counter()
    fn()
    _sync(device)
    warm = time.perf_counter() - start
    peak = memory.stop()
    if warm >= cap_s:
        return warm * 1e3, 0, peak
    times: list[float] = []
    while len(times) < repeats and (not times or time.perf_counter() - start < cap_s):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), len(times), peak


class _Full(nn.Module):
    """Self-attention of the points through ``nn.MultiheadAttention`` (the quadratic baseline)."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, n_heads, batch_first=True)

    def forward(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # m unused
        return self.attn(x, x, x, need_weights=False)[0]  # (B, N, d)


def _check(points: Sequence[int], dim: int, n_heads: int, batch: int, repeats: int,
           time_cap_s: float, kinds: Sequence[str]) -> None:
    if not points or any(not isinstance(p, int) or p < 1 for p in points):
        raise InputError(f"{list(points)}", key="--points",
                         expected="one or more positive point counts")
    if dim < 1 or n_heads < 1 or dim % n_heads:
        raise InputError(f"dim={dim}, heads={n_heads}", key="--heads",
                         expected="a positive number of heads that divides --dim")
    if batch < 1:
        raise InputError(f"{batch}", key="--batch", expected="at least 1 shower")
    if repeats < 1:
        raise InputError(f"{repeats}", key="--repeats", expected="at least 1 timed call")
    if not (math.isfinite(time_cap_s) and time_cap_s > 0):
        raise InputError(f"{time_cap_s}", key="--time-cap", expected="a positive time in s")
    unknown = [k for k in kinds if k not in MEAN_FIELD_KINDS]
    if unknown or not kinds:
        raise InputError(f"{list(kinds)}", key="--kinds",
                         expected=f"any of {', '.join(MEAN_FIELD_KINDS)}")


def mean_field_cost(
    points: Sequence[int] = (1000, 4000, 16000, 64000),
    dim: int = 48,
    n_heads: int = 16,
    batch: int = 1,
    backward: bool = True,
    repeats: int = 3,
    time_cap_s: float = 10.0,
    *,
    kinds: Sequence[str] = MEAN_FIELD_KINDS,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    threads: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time one mean-field and one full self-attention call per shower size.

    Arguments:
        points: shower sizes ``N``, in the order measured (ascending, so that the time cap
            skips the largest).
        dim: channels (the seed's generator: hidden 48); n_heads: heads (16 in the seed).
        batch: showers per call ``B``.
        backward: also time forward + backward (the inputs and weights require gradients).
        repeats: timed calls per measurement at most (the shortest counts).
        time_cap_s: time per measurement after which no timed call starts; a kind whose call
            took longer is skipped at the following sizes.
        kinds: any of :data:`MEAN_FIELD_KINDS`.
        device: where to run; dtype: of the weights and activations.
        threads: CPU threads of torch during the run (restored afterwards); None: unchanged.
        seed: seeds the weights and the inputs.

    Returns:
        One dict per (points, kind), sizes outer: ``kind``, ``points``, ``batch``, ``dim``,
        ``n_heads``, ``status`` (``"ok"`` or ``"skipped: <why>"``), ``forward_ms`` (no-grad
        forward), ``backward_ms`` (forward + backward; None unless ``backward``),
        ``forward_calls`` / ``backward_calls`` (timed calls; 0: the warm-up alone),
        ``forward_peak_mb`` / ``backward_peak_mb`` (peak memory of the call, see the module
        docstring), ``memory`` (how it was measured), ``scores_mb`` (analytic), ``parameters``,
        ``device``, ``threads``. Measured values are None when skipped.

    References:
        Käch and Melzer-Pellmann (MDMA), arXiv:2305.15254.
    """
    _check(points, dim, n_heads, batch, repeats, time_cap_s, kinds)
    dev = torch.device(device)
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _mean_field_cost(points, dim, n_heads, batch, backward, repeats, time_cap_s,
                                kinds, dev, dtype, seed)
    finally:
        torch.set_num_threads(saved)


def _mean_field_cost(
    points: Sequence[int], dim: int, n_heads: int, batch: int, backward: bool, repeats: int,
    time_cap_s: float, kinds: Sequence[str], dev: torch.device, dtype: torch.dtype, seed: int,
) -> list[dict[str, Any]]:
    """:func:`mean_field_cost` after the argument checks, with the thread count set."""
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        modules: dict[str, nn.Module] = {
            "mean-field": MeanFieldAttention(dim, n_heads), "full": _Full(dim, n_heads)}
    for module in modules.values():
        # training mode (no dropout either way): in evaluation mode without gradients
        # nn.MultiheadAttention takes its inference fast path, which on a CPU is an unfused
        # kernel holding the B * H * N^2 scores; in training mode it calls SDPA's fused kernel
        module.to(dev, dtype).train()
    gen = torch.Generator().manual_seed(seed)
    for module in modules.values():  # one-time initializations, outside the measurements
        tiny = torch.zeros(1, 8, dim, device=dev, dtype=dtype, requires_grad=True)  # (1, 8, d)
        module(tiny[:, 0], tiny).sum().backward()
        module.zero_grad(set_to_none=True)
    slow: dict[str, str] = {}  # kind -> why its larger sizes are skipped
    rows: list[dict[str, Any]] = []
    itemsize = torch.empty((), dtype=dtype).element_size()
    for p in points:
        x = torch.randn(batch, p, dim, generator=gen).to(dev, dtype)  # (B, N, d)
        m = torch.randn(batch, dim, generator=gen).to(dev, dtype)  # (B, d)
        for kind in kinds:
            module = modules[kind]
            scores = batch * n_heads * p * (p if kind == "full" else 1)
            row: dict[str, Any] = {
                "kind": kind, "points": p, "batch": batch, "dim": dim, "n_heads": n_heads,
                "status": "ok", "forward_ms": None, "backward_ms": None, "forward_calls": None,
                "backward_calls": None, "forward_peak_mb": None, "backward_peak_mb": None,
                "memory": _Memory(dev).kind, "scores_mb": scores * itemsize / 2**20,
                "parameters": sum(t.numel() for t in module.parameters()),
                "device": str(dev), "threads": torch.get_num_threads(),
            }
            rows.append(row)
            if kind in slow:
                row["status"] = slow[kind]
                continue
            ms = _measure_row(row, module, m, x, backward, repeats, time_cap_s)
            if ms > time_cap_s * 1e3:
                slow[kind] = (f"skipped: one call at {p:,} points took {ms / 1e3:.1f} s "
                              f"(> time cap {time_cap_s:g} s)")
    return rows


def _measure_row(row: dict[str, Any], module: nn.Module, m: torch.Tensor, x: torch.Tensor,
                 backward: bool, repeats: int, cap_s: float) -> float:
    """Fill the measured columns of ``row``; returns the ms of the last measurement."""
    dev = x.device

    def forward() -> None:
        with torch.no_grad():
            module(m, x)

    ms, calls, peak = _measure(forward, dev, repeats, cap_s)
    row.update(forward_ms=ms, forward_calls=calls, forward_peak_mb=peak)
    if not backward:
        return ms
    m_grad, x_grad = m.detach().requires_grad_(), x.detach().requires_grad_()

    def step() -> None:
        module(m_grad, x_grad).sum().backward()
        module.zero_grad(set_to_none=True)
        m_grad.grad = x_grad.grad = None

    ms, calls, peak = _measure(step, dev, repeats, cap_s)
    row.update(backward_ms=ms, backward_calls=calls, backward_peak_mb=peak)
    return ms
