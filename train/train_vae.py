"""Train the video VAE on clip shards. Runs top to bottom: setup, resume, loop, checkpoint.

    python -m train.train_vae --data_root DATASET --run_dir runs/vae --preset base            # one GPU / CPU
    torchrun --nproc_per_node=8 -m train.train_vae --data_root DATASET --run_dir runs/vae      # DDP

Loss: ``L1 + kl_weight * KL`` (KL per input element, so 1e-6 matches the usual per-pixel-sum weighting),
plus ``lpips_weight * LPIPS`` when ``lpips_path`` names a local safetensors file, plus ``edge_weight`` times the
L1 of the spatial gradients (:func:`edge_l1`), plus a hinge GAN term from a 3-D patch discriminator after
``disc_start`` steps when ``disc_weight > 0``.

Exact resume. Everything a step depends on is a function of the step number or lives in the checkpoint:
weights, EMA, discriminator, optimizer states (checkpoint); learning rate (computed from the step);
posterior noise (a generator seeded by ``(seed, rank, step)``); data (``ClipBatches(start_batch=step)``
replays the sample plan without decoding). So a run stopped after step k and resumed gives the same losses
as an uninterrupted run (``tests/test_train_vae.py`` checks this).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from model.ema import EMA
from model.metrics import LPIPS, psnr
from model.vae import build_vae, num_params
from train.config_cli import parse_config
from train.data import ClipBatches, ClipDataConfig
from train.dist import all_reduce_mean, barrier, cleanup, init_distributed, out_of_time
from train.progress import Progress, limits


@dataclass(frozen=True)
class TrainVAEConfig:
    data_root: str = ""
    run_dir: str = "runs/vae"
    preset: str = "base"
    # data
    resolutions: tuple[tuple[int, int], ...] = ((256, 256),)
    num_frames: tuple[int, ...] = (17,)
    image_prob: float = 0.1
    batch_size: int = 1  # per rank
    num_workers: int = 4
    holdout_pct: float = 5.0
    # optimisation
    steps: int = 100_000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = True  # autocast on CUDA only
    # losses
    kl_weight: float = 1e-6
    lpips_path: str = ""  # local safetensors (see model/metrics.py); empty: no perceptual loss
    lpips_weight: float = 0.1
    edge_weight: float = 0.0  # L1 between the spatial gradients (horizontal and vertical neighbour differences)
    # of reconstruction and input: weighs silhouettes, which a plain L1 lets blur (0: off)
    disc_weight: float = 0.0  # 0: no discriminator
    disc_start: int = 5000
    disc_lr: float = 1e-4
    disc_channels: int = 64
    # bookkeeping
    seed: int = 0
    device: str = "auto"  # auto | cpu
    log_every: int = 10
    preview_every: int = 500
    ckpt_every: int = 1000
    keep_last: int = 3
    resume: bool = True
    time_budget_s: float = 0.0  # stop (checkpoint, samples, export as at the last step) once training ran this
    # long; 0 = run all ``steps``. A budgeted run ends where the clock says, so it is not step-for-step repeatable


def edge_l1(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean L1 between the spatial gradients of two videos (B, C, T, H, W): neighbour differences along W and H.
    Zero for a reconstruction that is the input plus a constant; large where an edge is blurred or moved."""
    def grads(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return v[..., :, 1:] - v[..., :, :-1], v[..., 1:, :] - v[..., :-1, :]

    (rx, ry), (xx, xy) = grads(recon), grads(x)
    return 0.5 * ((rx - xx).abs().mean() + (ry - xy).abs().mean())


class PatchDiscriminator3D(nn.Module):
    """3-D PatchGAN: strided Conv3d stack -> one logit per space-time patch. Works for T = 1 too."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv3d(3, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            mods += [nn.Conv3d(c, 2 * c, (3, 4, 4), (2, 2, 2), (1, 1, 1)), nn.GroupNorm(min(32, 2 * c), 2 * c),
                     nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv3d(c, 1, (3, 3, 3), 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, T', H', W') logits


def lr_at(cfg: TrainVAEConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def preview_grid(x: torch.Tensor, recon: torch.Tensor, max_frames: int = 4) -> np.ndarray:
    """uint8 (rows*H, 2*W, 3): input | reconstruction, one row per sampled frame of the first sample."""
    t = x.shape[2]
    idx = sorted(set(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int).tolist()))
    rows = [torch.cat([x[0, :, i], recon[0, :, i]], dim=2) for i in idx]  # each (3, H, 2W)
    grid = torch.cat(rows, dim=1).float().clamp(-1, 1)  # (3, rows*H, 2W)
    return ((grid + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def main(cfg: TrainVAEConfig) -> dict:
    """Train; returns ``{"losses": [per-step total loss of this rank], "step": last step, "run_dir": ...}``."""
    # 1. setup ----------------------------------------------------------------------------------------
    info = init_distributed(force_cpu=cfg.device == "cpu")
    device = info.device
    use_bf16 = cfg.bf16 and device.type == "cuda"
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_vae(cfg.preset).to(device)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    modules: dict[str, nn.Module] = {"vae": model, "ema": ema.module}
    optimizers: dict[str, torch.optim.Optimizer] = {"vae": opt}
    disc = opt_d = None
    if cfg.disc_weight > 0:
        disc = PatchDiscriminator3D(cfg.disc_channels).to(device)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
        modules["disc"], optimizers["disc"] = disc, opt_d
    lpips = LPIPS(cfg.lpips_path).to(device) if cfg.lpips_path else None

    # 2. resume ---------------------------------------------------------------------------------------
    start = 0
    last = latest_checkpoint(ckpt_dir) if cfg.resume else None
    if last is not None:
        start = int(load_checkpoint(last, modules, optimizers)["step"])
    barrier()
    ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if info.world > 1 else model
    ddp_disc = disc
    if disc is not None and info.world > 1:
        ddp_disc = DDP(disc, device_ids=[device.index] if device.type == "cuda" else None)

    data_cfg = ClipDataConfig(root=cfg.data_root, resolutions=cfg.resolutions, num_frames=cfg.num_frames,
                              image_prob=cfg.image_prob, batch_size=cfg.batch_size, split="train",
                              holdout_pct=cfg.holdout_pct, seed=cfg.seed)
    dataset = ClipBatches(data_cfg, rank=info.rank, world=info.world, start_batch=start)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.num_workers > 0)
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        print(f"vae {cfg.preset}: {num_params(model) / 1e6:.1f}M params, start step {start}, world {info.world}, "
              f"training for {limits(cfg.steps, cfg.time_budget_s)}", flush=True)

    # 3. loop -----------------------------------------------------------------------------------------
    losses: list[float] = []
    batches = iter(loader)
    t0 = time.time()
    progress = Progress("vae", start, cfg.steps, cfg.time_budget_s, enabled=info.is_main)
    step = start
    for step in range(start, cfg.steps):
        x = next(batches)["video"].to(device, non_blocking=True)  # (B, 3, T, H, W) in [-1, 1]
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + info.rank * 10_007 + step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            recon, post = ddp_model(x, sample=True, generator=gen)  # (B, 3, T, H, W)
            recon = recon.float()
            l1 = (recon - x).abs().mean()
            kl = post.kl().mean() / x[0].numel()
            loss = l1 + cfg.kl_weight * kl
            terms = {"l1": l1.detach(), "kl": kl.detach()}
            if cfg.edge_weight:
                edge = edge_l1(recon, x)
                loss = loss + cfg.edge_weight * edge
                terms["edge"] = edge.detach()
            if lpips is not None:
                lp = lpips(recon, x).mean()
                loss = loss + cfg.lpips_weight * lp
                terms["lpips"] = lp.detach()
            gan_on = disc is not None and step >= cfg.disc_start
            if gan_on:
                g = -ddp_disc(recon).float().mean()
                loss = loss + cfg.disc_weight * g
                terms["g"] = g.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model, step)
        if gan_on:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = ddp_disc(torch.cat([x, recon.detach()])).float()  # one forward: DDP-friendly
                d_real, d_fake = logits.chunk(2)
                d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
            opt_d.step()
            terms["d"] = d_loss.detach()
        losses.append(float(loss.detach()))

        # 4. log, preview, checkpoint -------------------------------------------------------------
        done = step + 1
        last = done == cfg.steps or out_of_time(cfg.time_budget_s, t0)
        if done % cfg.log_every == 0 or last:
            names = sorted(terms)
            vals = all_reduce_mean(torch.stack([loss.detach()] + [terms[k].float() for k in names]))
            if writer is not None:
                writer.add_scalar("loss/total", float(vals[0]), done)
                for k, v in zip(names, vals[1:]):
                    writer.add_scalar(f"loss/{k}", float(v), done)
                writer.add_scalar("train/lr", lr_at(cfg, step), done)
                writer.add_scalar("train/grad_norm", float(grad_norm), done)
                writer.add_scalar("train/psnr", float(psnr(recon.detach(), x).mean()), done)
                writer.add_scalar("train/steps_per_s", (done - start) / max(1e-9, time.time() - t0), done)
            progress(done, float(vals[0]), last)
        if writer is not None and (done % cfg.preview_every == 0 or last):
            from PIL import Image

            grid = preview_grid(x, recon.detach())
            (run_dir / "previews").mkdir(exist_ok=True)
            Image.fromarray(grid).save(run_dir / "previews" / f"step-{done:09d}.png")
            writer.add_image("preview/input|recon", grid, done, dataformats="HWC")
        if done % cfg.ckpt_every == 0 or last:
            if info.is_main:
                extra = {"config": dataclasses.asdict(cfg), "data_start_batch": done, "world": info.world}
                save_checkpoint(ckpt_dir, done, modules, optimizers, extra=extra, keep_last=cfg.keep_last)
            barrier()
        if last:
            break
    if writer is not None:
        writer.close()
    cleanup()
    return {"losses": losses, "step": start + len(losses), "run_dir": str(run_dir)}


# ---------------------------------------------------------------------------------------------------------
#   CLI: every config field is a flag (tuples as JSON, e.g. --resolutions "[[256,256],[480,848]]")
# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> TrainVAEConfig:
    return parse_config(TrainVAEConfig, argv, prog="tessera train-vae", description="Train the Tessera video VAE")


if __name__ == "__main__":
    main(parse_args())
