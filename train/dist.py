"""torchrun / DDP / FSDP2 helpers. One process per GPU under torchrun; a single process (world 1) otherwise.

``init_distributed()`` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). It uses NCCL when CUDA is there and gloo on CPU, so the same training
script runs in CPU tests, on one GPU, and under ``torchrun --nproc_per_node=N``. ``shard_fsdp`` wraps a model
with FSDP2 (one all-gather unit per block, then the root); ``full_state`` / ``set_full_state`` move full
(unsharded) model and optimizer states in and out of a sharded model, for checkpoints and samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


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


# ----------------------------------------------------------------------------------------------------------
# FSDP2: sharding, full state dicts for checkpoints and samples
# ----------------------------------------------------------------------------------------------------------


def shard_fsdp(model: nn.Module, device: torch.device, world: int, bf16: bool) -> None:
    """FSDP2 in place: each block is one all-gather unit, then the root (embeddings, final layer)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def _fqn_names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters()]


def full_state(model: nn.Module, opt: torch.optim.Optimizer | None, fsdp: bool) -> tuple[dict, dict | None]:
    """Full (unsharded, CPU) model state dict and index-keyed optimizer state dict. Collective under FSDP."""
    if not fsdp:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return sd, (opt.state_dict() if opt is not None else None)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(model, options=opts)
    if opt is None:
        return sd, None
    osd = get_optimizer_state_dict(model, opt, options=opts)  # keyed by parameter name; empty off rank 0
    if not osd:
        return sd, None
    index = {n: i for i, n in enumerate(_fqn_names(model))}
    groups = [{**{k: v for k, v in grp.items() if k != "params"}, "params": [index[n] for n in grp["params"]]}
              for grp in osd["param_groups"]]
    return sd, {"state": {index[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def set_full_state(model: nn.Module, opt: torch.optim.Optimizer | None, sd: dict, osd: dict | None, fsdp: bool) -> None:
    """Inverse of ``full_state``: load full states into a (possibly sharded) model and optimizer."""
    if not fsdp:
        model.load_state_dict(sd)
        if opt is not None and osd is not None:
            opt.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, sd, options=opts)
    if opt is not None and osd is not None:
        names = _fqn_names(model)
        groups = [{**{k: v for k, v in grp.items() if k != "params"}, "params": [names[i] for i in grp["params"]]}
                  for grp in osd["param_groups"]]
        set_optimizer_state_dict(model, opt, {"state": {names[i]: s for i, s in osd["state"].items()},
                                              "param_groups": groups}, options=opts)


def weights_digest(model: nn.Module) -> float:
    """Sum of every weight of the full model (float64): equal on all ranks when replicas agree. Collective."""
    total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    sharded = False
    for p in model.parameters():
        local = p.detach()
        if hasattr(local, "to_local"):  # an FSDP2 DTensor: this rank's shard
            local, sharded = local.to_local(), True
        total += local.double().sum()
    if sharded:
        import torch.distributed as dist

        dist.all_reduce(total)
    return float(total)
