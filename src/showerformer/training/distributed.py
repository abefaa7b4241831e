"""Distributed data parallel under torchrun: process group, rank sharding, reductions, barriers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from showerformer.errors import InputError

__all__ = [
    "DistEnv",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "env_from_environment",
    "init_distributed",
    "resolve_device",
    "shard_slice",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the torch device of this process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes logs and checkpoints."""
        return self.rank == 0


def env_from_environment() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the variables torchrun sets (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``); ``(0, 1, 0)`` when they are absent."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise InputError(f"non-integer distributed environment ({exc})", key="RANK/WORLD_SIZE",
                         expected="integers as set by torchrun") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} with WORLD_SIZE={world}", key="RANK",
                         expected="0 <= RANK < WORLD_SIZE")
    return rank, world, local


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The torch device for ``device`` (``"auto"``/None: CUDA when available, else CPU).

    Under torchrun a plain ``"cuda"`` becomes ``cuda:LOCAL_RANK``.
    """
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r}", key="device",
                         expected="auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but CUDA is not available", key="device",
                             expected="cpu or auto on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def init_distributed(device: str | torch.device | None = "auto") -> DistEnv:
    """Initialise the process group when launched by torchrun, else describe a single process.

    Uses NCCL on CUDA and Gloo on CPU; an already initialised group is reused.

    Arguments:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The :class:`DistEnv` of this process (its CUDA device is made current).
    """
    rank, world, local = env_from_environment()
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup_distributed() -> None:
    """Destroy the process group if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for a single process)."""
    if env.distributed:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: Tensor, env: DistEnv) -> Tensor:
    """Sum of ``tensor`` over the ranks (returns ``tensor`` itself for a single process)."""
    if env.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for a single process."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj if env.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_slice(global_batch: int, env: DistEnv) -> slice:
    """The part of a global batch that rank ``env.rank`` processes: equal, contiguous shards.

    Raises:
        InputError: when ``global_batch`` is not divisible by the world size (equal shards make
            the mean of the per-rank mean losses equal the global-batch mean).
    """
    if global_batch % env.world_size:
        raise InputError(f"batch_size={global_batch} for {env.world_size} processes",
                         key="batch_size", expected="a multiple of the number of processes")
    per = global_batch // env.world_size
    return slice(env.rank * per, (env.rank + 1) * per)


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module`` unchanged.

    DDP broadcasts rank 0's parameters and buffers at construction and averages the gradients
    over the ranks during ``backward``.
    """
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if env.device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[env.device.index],
                                       output_device=env.device.index)
    return DistributedDataParallel(module)
