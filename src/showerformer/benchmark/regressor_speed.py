"""Training and inference speed of ParticleCNNTransformer: plain vs fast convolution path.

For every grid (64^3, 32^3), batch size (8, 32) and backbone path (``"plain"``: PyTorch's default
contiguous layout; ``"fast"``: channels-last 3-D, see
:meth:`~showerformer.models.particle_cnn_transformer.CNNBackbone.memory_format`) one fresh
process builds the network (the seed's architecture at that grid, or the model of a run
config), then times

* a training step: forward, Huber loss, backward, gradient clipping and an AdamW step, in
  training mode (DropPath on), on sparse random voxels (5 % of the cells lit, 0-50 MeV: the
  convolutions cost the same for any content);
* inference: ``predict`` (evaluation mode, no gradients) on the same batch.

Each measurement repeats until ``steps`` timed repetitions (after ``warmup`` untimed ones) or
until ``max_seconds`` have passed; a single repetition longer than ``max_seconds`` is reported
alone (its one-time set-up cost is then negligible). Peak memory is the process's peak resident
memory (``VmHWM``) on a CPU, measured from its value after building the model, and
``torch.cuda.max_memory_allocated`` on a GPU. On CUDA the default precision is bf16 autocast.

``background_load = N`` runs every measurement next to N busy processes (pure-Python loops), the
situation of a training next to its data-loading workers or a second job on the same cores. The
plain path suffers there far more than the fast one: PyTorch's contiguous depthwise 3-D
convolution backward goes through oneDNN's im2col + GEMM implementation, thousands of short
parallel regions whose threads wait for each other, while the channels-last kernels are few and
long.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["SPEED_PATHS", "measure_speed", "regressor_speed"]

SPEED_PATHS = ("plain", "fast")
"""Backbone paths compared by :func:`regressor_speed`."""


def _spin() -> None:  # pragma: no cover - runs in a helper process until terminated
    while True:
        pass


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _timed_loop(fn: Callable[[], None], *, steps: int, warmup: int, max_seconds: float,
                sync: Callable[[], None]) -> tuple[float, int]:
    """Seconds per call and the number of timed calls (see the module docstring)."""
    start = time.perf_counter()
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    if first >= max_seconds or (warmup == 0 and steps == 1):
        return first, 1
    done = 1
    while done < warmup and time.perf_counter() - start < max_seconds:
        fn()
        sync()
        done += 1
    times = [] if warmup > 0 else [first]
    while len(times) < steps and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    if not times:
        return first, 1
    return sum(times) / len(times), len(times)


def measure_speed(grid: int, batch: int, path: str, *, device: str = "cpu",
                  precision: str | None = None, steps: int = 3, warmup: int = 1,
                  max_seconds: float = 60.0, threads: int | None = None,
                  model_config: Mapping[str, Any] | None = None, seed: int = 0,
                  train: bool = True, infer: bool = True) -> dict[str, Any]:
    """Time one (grid, batch, path) in this process; see the module docstring.

    Arguments:
        grid: voxels per axis.
        batch: events per step.
        path: ``"plain"`` or ``"fast"``.
        device: ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast); default bf16 on CUDA, fp32 on a CPU.
        steps, warmup, max_seconds: repetitions (see the module docstring).
        threads: ``torch.set_num_threads`` (default: unchanged).
        model_config: fields of the model configuration (the seed's 64^3 architecture when
            omitted); ``grid`` is replaced by ``grid``.
        seed: seed of the weights and the voxels.
        train, infer: which measurements to make.

    Returns:
        ``{"grid", "batch", "path", "device", "precision", "parameters", "train_events_per_s",
        "train_step_s", "train_steps", "infer_events_per_s", "infer_batch_s", "infer_batches",
        "peak_mb", "threads"}``.
    """
    import torch

    from showerformer.models.particle_cnn_transformer import (
        ParticleCNNTransformer,
        ParticleCNNTransformerConfig,
    )

    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    fields = {k: v for k, v in dict(model_config or {}).items() if k != "family"}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    config = dataclasses.replace(ParticleCNNTransformerConfig(**fields), grid=grid)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ParticleCNNTransformer(config).set_conv_path(path).to(dev)
    e = torch.rand(batch, grid, grid, grid, generator=gen) * 50.0
    voxels = (e * (torch.rand(batch, grid, grid, grid, generator=gen) < 0.05)).to(dev)
    target = (1.0 + 19.0 * torch.rand(batch, generator=gen)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def autocast() -> Any:
        return torch.autocast(device_type=dev.type, dtype=dtype, enabled=dtype is not None)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model.loss({"voxels": voxels, "target": target})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def infer_step() -> None:
        with autocast():
            model.predict(voxels)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.max_memory_allocated(dev)
    else:
        base = _peak_rss_bytes()
    out: dict[str, Any] = {"grid": grid, "batch": batch, "path": path, "device": str(dev),
                           "precision": precision, "threads": torch.get_num_threads(),
                           "parameters": sum(p.numel() for p in model.parameters())}
    kw = {"steps": steps, "warmup": warmup, "max_seconds": max_seconds, "sync": sync}
    if train:
        seconds, n = _timed_loop(train_step, **kw)
        out.update(train_step_s=seconds, train_steps=n, train_events_per_s=batch / seconds)
    if infer:
        seconds, n = _timed_loop(infer_step, **kw)
        out.update(infer_batch_s=seconds, infer_batches=n, infer_events_per_s=batch / seconds)
    if dev.type == "cuda":
        out["peak_mb"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:
        peak = _peak_rss_bytes()
        out["peak_mb"] = None if peak is None or base is None else (peak - base) / 2**20
    return out


def regressor_speed(
    grids: Sequence[int] = (64, 32),
    batches: Sequence[int] = (8, 32),
    paths: Sequence[str] = SPEED_PATHS,
    *,
    device: str = "cpu",
    precision: str | None = None,
    steps: int = 3,
    warmup: int = 1,
    max_seconds: float = 60.0,
    threads: int | None = None,
    model_config: Mapping[str, Any] | None = None,
    seed: int = 0,
    background_load: int = 0,
    isolate: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (grid, batch, path) of :func:`measure_speed`, each in a fresh process.

    Arguments:
        grids, batches, paths: the grid of measurements.
        device, precision, steps, warmup, max_seconds, threads, model_config, seed: see
            :func:`measure_speed`.
        background_load: busy processes running beside every measurement (see the module
            docstring); recorded in each row as ``background_load``.
        isolate: one fresh process per measurement (peak memory of that measurement alone);
            False runs them in this process (tests).
        on_result: called with each result as it arrives.

    Returns:
        One dictionary per measurement (see :func:`measure_speed`), with ``speedup_train`` and
        ``speedup_infer`` (fast over plain at the same grid and batch) on the fast rows.
    """
    from showerformer.errors import InputError
    from showerformer.models.particle_cnn_transformer import CONV_PATHS

    for p in paths:
        if p not in CONV_PATHS:
            raise InputError(f"path {p!r}", key="--paths", expected=" and/or ".join(SPEED_PATHS))
    if precision not in (None, "fp32", "bf16"):
        raise InputError(f"precision {precision!r}", key="--precision", expected="fp32 or bf16")
    if background_load < 0:
        raise InputError(f"{background_load}", key="--background-load",
                         expected="0 or more busy processes")
    for key, values in (("--grids", grids), ("--batches", batches)):
        if not values or any(int(v) < 1 for v in values):
            raise InputError(f"{list(values)}", key=key, expected="positive integers")
    kwargs = {"device": device, "precision": precision, "steps": steps, "warmup": warmup,
              "max_seconds": max_seconds, "threads": threads,
              "model_config": dict(model_config) if model_config else None, "seed": seed}
    results: list[dict[str, Any]] = []
    for grid in grids:
        for batch in batches:
            for path in paths:
                ctx = multiprocessing.get_context("spawn")
                spinners = [ctx.Process(target=_spin, daemon=True)
                            for _ in range(background_load)]
                for proc in spinners:
                    proc.start()
                try:
                    if isolate:
                        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                            r = pool.submit(measure_speed, int(grid), int(batch), path,
                                            **kwargs).result()
                    else:
                        r = measure_speed(int(grid), int(batch), path, **kwargs)
                finally:
                    for proc in spinners:
                        proc.terminate()
                        proc.join()
                r["background_load"] = background_load
                _add_speedup(r, results)
                results.append(r)
                if on_result is not None:
                    on_result(r)
    return results


def _add_speedup(r: dict[str, Any], done: Sequence[Mapping[str, Any]]) -> None:
    """Events/s of a non-plain row over the plain row of the same grid and batch."""
    if r["path"] == "plain":
        return
    for prev in done:
        if prev["path"] == "plain" and (prev["grid"], prev["batch"]) == (r["grid"], r["batch"]):
            for kind in ("train", "infer"):
                a, b = r.get(f"{kind}_events_per_s"), prev.get(f"{kind}_events_per_s")
                if a and b and math.isfinite(a / b):
                    r[f"speedup_{kind}"] = a / b
