"""torchrun / DDP helpers. One process per GPU under torchrun; a single process (world 1) otherwise.

``init_distributed()`` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). It uses NCCL when CUDA is there and gloo on CPU, so the same training
script runs in CPU tests, on one GPU, and under ``torchrun --nproc_per_node=N``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(force_cpu: bool = False) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not force_cpu
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is untouched)."""
    if not is_dist():
        return value.detach().clone()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def out_of_time(budget_s: float, start: float) -> bool:
    """True once ``budget_s`` seconds (> 0) have passed since ``start`` on any rank (every rank gets the same
    answer, so all of them stop at the same step). Collective when distributed and ``budget_s > 0``."""
    if budget_s <= 0:
        return False
    import time

    flag = torch.tensor([float(time.time() - start > budget_s)])
    if is_dist():
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def cleanup() -> None:
    """Leave the process group together: a barrier first, so no rank tears its connections down while a peer
    may still be using them."""
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()
