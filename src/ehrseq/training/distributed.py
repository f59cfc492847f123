"""Data parallelism through torch.distributed, as launched by torchrun (one process per GPU or CPU share).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in each process's environment;
without them (a plain process) every helper here is a no-op, so single-process training is unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> None:
    """Joins the process group torchrun set up: NCCL between GPUs, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any: ranks agree on stopping, so all stop at the same step."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over ranks (a copy; gloo has no average)."""
    if world_size() == 1:
        return t
    t = t.to(_collective_device(), copy=True)
    dist.all_reduce(t)
    return t


def from_rank_zero(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object): one decision, taken once, followed by all."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block (e.g. filling a shared cache) before the others do."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
