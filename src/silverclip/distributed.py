"""Distributed setup from ``torchrun``'s environment; the same calls work in a single process.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and starts NCCL (GPU) or gloo (CPU). Without
them (``python -m ...``) nothing is initialised and every helper degrades to the 1-process answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "broadcast_object",
    "all_gather_objects",
    "all_gather_with_grad",
    "all_gather_varlen",
    "all_reduce_mean",
    "cleanup",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


DEFAULT_TIMEOUT_S = 1800.0


def init_distributed(
    backend: str | None = None, device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``. ``device`` defaults to
    ``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``; the CUDA device is made current.
    ``device="auto"`` is the same as ``None``. ``timeout_s``: how long a collective may wait for the
    slowest rank before the job fails (``train.dist_timeout_s``; set explicitly rather than left to the
    backend's default, which differs between NCCL and gloo and between torch versions). Every rank
    validates its share and rank 0's checkpoint writes are short, so the only long waits are a slow
    rank's data; raise it for very slow storage.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from silverclip.device import resolve_device

    dev = resolve_device(device, local_rank)  # a device that is not there: one clear error
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=float(timeout_s)), **kwargs
        )
    return DistInfo(rank=get_rank(), local_rank=local_rank, world_size=get_world_size(), device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself in a single process).
    Only for objects this run created (it pickles over the process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process).

    For sharded evaluation (each rank's ids and embeddings; only objects this run created: it pickles).
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``(B, ...)`` from every rank along dim 0 -> ``(world_size * B, ...)``, in rank order.

    Gradients flow back to every rank's slice (``torch.distributed.nn.all_gather``: its backward sums
    the gradients from all ranks onto each owner). Every rank must pass the same shape (drop_last).
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def all_gather_varlen(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``(B_r, ...)`` from every rank (sizes may differ), without gradient, in rank order.

    For evaluation: gathers predictions of unevenly split validation sets.
    """
    if not is_distributed():
        return x
    world = get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s.item()) for s in sizes]
    longest = max(sizes_int)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:n] for o, n in zip(out, sizes_int, strict=True)], dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a copy; no gradient). For logging losses and metrics."""
    if not is_distributed():
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / get_world_size()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
