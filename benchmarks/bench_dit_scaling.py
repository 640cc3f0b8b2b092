"""DDP and FSDP2 scaling efficiency of DiT training on one host.

    python benchmarks/bench_dit_scaling.py --gpus 2                 # a table is printed last; JSON to --out
    python benchmarks/bench_dit_scaling.py --smoke --gpus 2         # CPU + gloo, tiny model: code paths only

Efficiency = tokens/s on N GPUs / (N x tokens/s on 1 GPU), with the same per-GPU batch (weak scaling), so
1.0 means communication is fully hidden. DDP is compared with the plain single-GPU step; FSDP with FSDP on one
GPU, since its bf16 parameters make even one GPU faster than autocast over fp32 weights (both are printed). Each mode runs in its own ``torchrun`` job (``single`` with one
process and no wrapper; ``ddp`` and ``fsdp`` with N), using the training script's own pieces: ``Flow.loss``
with random tasks, bf16 autocast, ``clip_grad_norm_``, fused AdamW, ``train.dist.shard_fsdp`` for FSDP2
(per-block ``fully_shard``, bf16 params, fp32 reductions) and ``DistributedDataParallel`` for DDP. Inputs
are random latents of one fixed bucket and random text tokens; weights are random. Step times are wall
clock with a CUDA synchronize, median over ``iters`` steps after ``warmup``; a job reports its slowest
rank. NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends are set for every job).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def worker(a: argparse.Namespace) -> None:
    """One torchrun job: time training steps in mode ``a.mode``; rank 0 writes JSON to ``a.result``."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from model.dit import DiT, count_parameters, dit_config, forward_flops
    from model.flow import Flow
    from train.dist import init_distributed, shard_fsdp

    info = init_distributed(force_cpu=a.smoke)
    dev = info.device
    if a.mode == "fsdp" and not dist.is_initialized():  # FSDP on one GPU (the baseline of its own scaling)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=0, world_size=1)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    cfg = dit_config(a.preset, latent_channels=16, text_dim=a.text_dim)
    with torch.device(dev):
        model = DiT(cfg)
    if a.checkpointing:
        model.set_checkpointing(True)
    if a.mode == "fsdp":
        shard_fsdp(model, dev, info.world, bf16=cuda)
    net = DDP(model, device_ids=[dev.index] if cuda else None) if a.mode == "ddp" else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    flow = Flow(net)
    grid = tuple(a.grid)  # latent (T', H', W')
    g = torch.Generator().manual_seed(1 + info.rank)
    x0 = torch.randn(a.batch, 16, *grid, generator=g).to(dev)
    text = torch.randn(a.batch, a.text_len, a.text_dim, generator=g).to(dev)
    mask = torch.ones(a.batch, a.text_len, dtype=torch.bool, device=dev)

    def step(i: int) -> None:
        gen = torch.Generator().manual_seed(1000 * info.rank + i)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = flow.loss(x0, text, mask, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    times = []
    for i in range(a.warmup + a.iters):
        if cuda:
            torch.cuda.synchronize()
        if info.world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        step(i)
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = torch.tensor(statistics.median(times), dtype=torch.float64, device=dev)
    if info.world > 1:
        dist.all_reduce(med, op=dist.ReduceOp.MAX)  # the job is as fast as its slowest rank
    tokens = a.batch * (grid[0] // cfg.patch[0]) * (grid[1] // cfg.patch[1]) * (grid[2] // cfg.patch[2])
    if info.is_main:
        flops = 3 * forward_flops(cfg, (grid[0] // cfg.patch[0], grid[1] // cfg.patch[1], grid[2] // cfg.patch[2]),
                                  a.text_len) * a.batch
        res = {"mode": a.mode, "world": info.world, "step_s": float(med), "tokens_per_gpu": tokens,
               "tokens_per_s": info.world * tokens / float(med), "tflops_per_gpu": flops / float(med) / 1e12,
               "params_m": count_parameters(cfg) / 1e6, "peak_mem_gib":
                   torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
               "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
        Path(a.result).write_text(json.dumps(res))
    if info.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def launch(a: argparse.Namespace, mode: str, nproc: int) -> dict:
    """Run one mode as its own torchrun job and read its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
           "--worker", "--mode", mode, "--result", result, "--preset", a.preset, "--grid", *map(str, a.grid),
           "--batch", str(a.batch), "--text-len", str(a.text_len), "--text-dim", str(a.text_dim),
           "--warmup", str(a.warmup), "--iters", str(a.iters)] + (["--smoke"] if a.smoke else []) \
        + (["--checkpointing"] if a.checkpointing else [])
    env = {**os.environ, **SAFE_ENV, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, check=True, env=env, cwd=str(REPO))
    out = json.loads(Path(result).read_text())
    os.unlink(result)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--preset", default="1B")
    p.add_argument("--grid", type=int, nargs=3, default=[16, 64, 64], help="latent T' H' W' (16k tokens at 1x2x2)")
    p.add_argument("--batch", type=int, default=1, help="samples per GPU")
    p.add_argument("--text-len", type=int, default=128)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--modes", default="ddp,fsdp")
    p.add_argument("--smoke", action="store_true", help="CPU + gloo, tiny preset and grid")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    # worker-only
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="single", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke and not a.worker:
        a.preset, a.grid, a.text_dim, a.text_len, a.warmup, a.iters = "tiny", [2, 8, 8], 32, 8, 1, 3
    os.environ.update(SAFE_ENV)
    if a.worker:
        worker(a)
        return 0
    single = launch(a, "single", 1)
    rows = [dict(single, efficiency=1.0, vs="")]
    for mode in a.modes.split(","):
        base = single
        if mode == "fsdp":  # FSDP keeps bf16 params (no per-step casts): compare with FSDP on one GPU too
            base = launch(a, "fsdp", 1)
            rows.append(dict(base, efficiency=1.0, vs=""))
        r = launch(a, mode, a.gpus)
        rows.append(dict(r, efficiency=r["tokens_per_s"] / (a.gpus * base["tokens_per_s"]),
                         vs=f"{base['mode']} x1"))
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "preset": a.preset, "grid": a.grid,
            "batch_per_gpu": a.batch, "text_len": a.text_len, "checkpointing": a.checkpointing, "rows": rows}
    print(f"\nDiT scaling on {rows[0]['device']} ({info['date']}), preset {a.preset} ({rows[0]['params_m']:.0f} M), "
          f"{rows[0]['tokens_per_gpu']} tokens/GPU, torch {rows[0]['torch']}")
    print(f"{'mode':>7} {'GPUs':>5} {'step s':>8} {'tokens/s':>10} {'TFLOP/s/GPU':>12} {'peak GiB':>9} {'efficiency':>10} vs")
    for r in rows:
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['mode']:>7} {r['world']:>5} {r['step_s']:>8.3f} {r['tokens_per_s']:>10.0f} {r['tflops_per_gpu']:>12.1f} "
              f"{mem:>9} {r['efficiency']:>10.3f} {r['vs']}")
    if a.out:
        Path(a.out).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
