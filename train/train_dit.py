"""Train the text-to-video DiT on latent shards. Runs top to bottom: setup, resume, loop, checkpoint, export.

    python -m train.train_dit --latents LATENTS --vae runs/vae --run_dir runs/dit --preset B          # 1 GPU / CPU
    torchrun --nproc_per_node=8 -m train.train_dit --latents LATENTS --vae runs/vae --parallel fsdp     # 8 GPUs

Data. Preferred: a latent cache (``tessera cache-latents``): latents and caption token embeddings keyed by
clip_id, so training never decodes video. Without one, ``--data_root DATASET --vae CKPT`` encodes clips on the
fly with the same encoders (``train/latents.py``), cached in memory. Clips keep their native bucket
(resolution, aspect ratio, duration): a batch holds one latent shape, and its size is
``min(max_batch, token_budget // tokens_per_sample)``, so every step costs about the same.
Captions: each sample draws one of its caption kinds (short / dense / expanded) with ``caption_mix``'s
probabilities renormalised over the kinds the clip has; a clip with none trains on the empty caption.

Exact resume. Step s of rank r trains global batch ``s * world + r`` of a plan that is a function of the
seed only (per-epoch shuffles of each bucket and of the batch order), and all randomness of the step (caption
kind, task, caption dropout, t, noise) comes from a generator seeded by ``(seed, global batch)``. The
checkpoint holds the model, optimizer, EMA and RNG states and the data position (the step), so a run stopped
at step k and resumed gives the same losses, step for step, as one that never stopped.

Systems: DDP (``--parallel ddp``) or FSDP2 (``--parallel fsdp``: ``fully_shard`` per block then the root,
bf16 params / fp32 reductions on GPU); bf16 autocast on GPU; activation checkpointing per block; regional
``torch.compile`` (each block compiled once, shapes dynamic across buckets). Checkpoints are written by rank 0
in the one safetensors format (``model/checkpoint.py``); under FSDP the full states are gathered first.
Every ``sample_every`` steps the EMA model renders fixed prompts at fixed seeds (MP4 per sample + a PNG grid).
At the end a ``from_pretrained``-able pipeline is exported to ``RUN/pipeline`` (needs ``--vae``).
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
from torch.nn.parallel import DistributedDataParallel as DDP

from curate.media import contact_sheet, save_media
from model.buckets import BucketConfig
from model.checkpoint import latest_checkpoint, load_checkpoint, load_vae, save_checkpoint
from model.dit import DiT, DiTConfig, dit_config, narrow_output
from model.ema import EMA
from model.conditioning import TaskMix
from model.flow import Flow, FlowConfig
from model.pipeline import TextToVideo, export_pipeline
from model.text import TextConfig
from train.config_cli import parse_config
from train.dist import (
    all_reduce_mean, barrier, cleanup, full_state, init_distributed, out_of_time, set_full_state, shard_fsdp,
    weights_digest,
)
from train.latents import (
    BatchPlan, ClipSource, LatentReader, latent_norm, make_batch, prefetched, scan_latents,
)
from train.packing import Packer
from train.profiling import StepProfiler
from train.progress import FrameLoss, Progress, limits


@dataclass(frozen=True)
class TrainDiTConfig:
    # data
    latents: str = ""  # latent cache folder (preferred)
    data_root: str = ""  # clip shards, encoded on the fly through --vae when no latent cache is given
    vae: str = ""  # VAE checkpoint: on-the-fly encoding, training samples, the exported pipeline
    text_path: str = ""  # text encoder folder for on-the-fly captions and sample prompts ("" = packaged MiniLM)
    text_max_length: int = 256
    caption_mix: tuple[tuple[str, float], ...] = (("short", 0.2), ("dense", 0.5), ("expanded", 0.3))
    bucket_areas: tuple[int, ...] = (256 * 256, 512 * 512)  # on-the-fly buckets (a cache has its own)
    bucket_frames: tuple[int, ...] = (1, 17, 33, 49, 65)
    token_budget: int = 65536  # DiT tokens per batch per GPU
    max_batch: int = 64
    latent_scale: float = 0.0  # the DiT sees (latent - latent_shift) * latent_scale; 0: from the cache's
    latent_shift: float = 0.0  # statistics (scale 1/std, shift mean), or from 64 clips encoded on the fly
    # model and objective
    preset: str = "B"
    hidden: int = 0  # model width, depth and attention heads; 0: the preset's (model.dit.PRESETS)
    depth: int = 0
    heads: int = 0
    patch: tuple[int, int, int] = (1, 2, 2)
    pooled_text: bool = False  # model.dit.DiTConfig.pooled_text: the caption's mean token into every adaLN too
    caption_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: bool = True
    # multiplies the token-count shift of t (model.flow.shift_factor), in training and in the exported sampler;
    # > 1 for VAEs whose latents stay readable at high noise (4x4 spatial stride: try 3)
    time_shift: float = 1.0
    t_uniform: float = 0.0  # model.flow.FlowConfig.uniform_share: this share of training times uniform on [0, 1]
    task_mix: tuple[float, ...] = (0.5, 0.15, 0.1, 0.05, 0.1, 0.1)  # probability of each training task:
    # text-to-video, image-to-video, extend forward, extend backward, keyframes, transition (TaskMix; normalised)
    # optimisation
    steps: int = 100_000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    # the last fraction of the run over which the lr falls linearly to 0 (warmup-stable-decay); the run is
    # ``steps``, or ``time_budget_s`` when that ends it first. 0: constant after the warm-up
    cooldown: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    # systems
    parallel: str = "ddp"  # ddp | fsdp (with world > 1)
    bf16: bool = True  # autocast (and FSDP bf16 params) on CUDA only
    checkpointing: bool = False  # activation checkpointing in every block
    compile: bool = False  # regional torch.compile: each block
    prefetch: int = -1  # batches (with their random draws, pinned on CUDA) prepared ahead on this many threads;
    # 0: inline; -1: 2 on CUDA, 0 on the CPU (where the threads would only compete with the model for cores)
    profile_steps: int = 0  # record this many steps with torch.profiler (rank 0), from step ``profile_from``
    # (after the warm-up and any compilation): RUN/profile/ gets summary.json (wall and GPU-kernel seconds per
    # step), ops.txt (the top ops by device and by host time) and trace.json.gz (for chrome://tracing or
    # Perfetto). The window's two ends synchronise the device; the steps between them run as usual, though the
    # profiler's recording of every op adds some host time to them
    profile_from: int = 50
    # bookkeeping
    run_dir: str = "runs/dit"
    seed: int = 0
    device: str = "auto"  # auto | cpu
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    resume: bool = True
    time_budget_s: float = 0.0  # stop (checkpoint, samples, export as at the last step) once training ran this
    # long; 0 = run all ``steps``. A budgeted run ends where the clock says, so it is not step-for-step repeatable
    stop_at: float = 0.0  # a wall-clock deadline (``time.time()``) for the steps, shared with a caller's other
    # stages (the loop's 10 minutes): the budget becomes what is left of it when stepping starts, or
    # ``time_budget_s`` if that is shorter; 0 = none
    sample_every: int = 1000  # and at the last step; 0: never (samples need --vae)
    sample_prompts: tuple[str, ...] = ("a red fox runs through fresh snow", "waves crash on black volcanic rocks")
    sample_seeds: tuple[int, ...] = (0,)
    sample_frames: int = 17
    sample_size: tuple[int, int] = (256, 256)  # (W, H)
    sample_steps: int = 30
    sample_cfg: float = 5.0
    sample_fps: int = 8
    export: bool = True  # write RUN/pipeline at the end (needs --vae)
    pack: bool = False  # pack clips of mixed shapes into rows, each clip attending only to itself (train/packing.py)
    pack_tokens: int = 0  # tokens per packed row (0: token_budget); token_budget // pack_tokens rows a step
    pack_attention: str = "auto"  # auto (flash varlen or flex on CUDA, sdpa on CPU) | sdpa | flex | varlen | split


# ----------------------------------------------------------------------------------------------------------
# Data: sources (cache or on the fly) and the deterministic batch plan
# ----------------------------------------------------------------------------------------------------------


def clip_source(cfg: TrainDiTConfig, device: torch.device) -> ClipSource:
    """The on-the-fly latent source of ``cfg.data_root`` through ``cfg.vae`` (no latent cache)."""
    return ClipSource(cfg.data_root, cfg.vae, TextConfig(path=cfg.text_path or None, max_length=cfg.text_max_length),
                      BucketConfig(areas=cfg.bucket_areas, frames=cfg.bucket_frames, token_budget=cfg.token_budget,
                                   patch=cfg.patch), device)


def open_data(cfg: TrainDiTConfig, device: torch.device):
    """(source, records, text_dim, latent statistics or None): a latent cache's reader and records, or a
    ``ClipSource`` encoding ``cfg.data_root`` on the fly (its statistics measured when ``latent_scale`` is 0)."""
    if cfg.latents:
        manifest = json.loads((Path(cfg.latents) / "_manifest.json").read_text())
        records, text_dim = scan_latents(cfg.latents), int(manifest["text_dim"] or 384)
        source = LatentReader()
    elif cfg.data_root and cfg.vae:
        source = clip_source(cfg, device)
        records, text_dim = source.records, source.text.dim
        manifest = source.latent_stats() if records and not cfg.latent_scale else None
    else:
        raise ValueError("give --latents (a latent cache) or --data_root with --vae (encode on the fly)")
    if not records:
        raise ValueError("no training clips found")
    return source, records, text_dim, manifest


def check_config(cfg: TrainDiTConfig) -> TaskMix:
    """The task mix; ``ValueError`` for knobs that cannot work, before any work."""
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {cfg.parallel!r}")
    if len(cfg.task_mix) != 6:
        raise ValueError(f"task_mix needs 6 probabilities (t2v, i2v, extend fwd, extend bwd, keyframes, "
                         f"transition), got {cfg.task_mix}")
    tasks = TaskMix(*cfg.task_mix)
    tasks.weights()  # raises on negative or all-zero
    return tasks


def model_config(cfg: TrainDiTConfig, latent_channels: int, text_dim: int) -> DiTConfig:
    sizes = {k: int(v) for k, v in (("hidden", cfg.hidden), ("depth", cfg.depth), ("heads", cfg.heads)) if v}
    dit_cfg = dit_config(cfg.preset, latent_channels=latent_channels, text_dim=text_dim, patch=tuple(cfg.patch),
                         pooled_text=bool(cfg.pooled_text), **sizes)
    if dit_cfg.hidden % dit_cfg.heads:
        raise ValueError(f"hidden {dit_cfg.hidden} is not a multiple of heads {dit_cfg.heads}")
    return dit_cfg


# ----------------------------------------------------------------------------------------------------------
# The trained state: DiT, EMA, optimizer (sharded under FSDP), checkpoints
# ----------------------------------------------------------------------------------------------------------


class DiTState:
    """This rank's DiT, its EMA and optimizer: replicated (DDP, one process) or sharded (FSDP2), with the
    collective save / resume / full-EMA-weights that sharding needs. Same initial weights on every rank."""

    def __init__(self, cfg: TrainDiTConfig, dit_cfg: DiTConfig, world: int, device: torch.device, bf16: bool):
        self.cfg, self.dit_cfg, self.world, self.device = cfg, dit_cfg, world, device
        self.fsdp = cfg.parallel == "fsdp" and world > 1
        torch.manual_seed(cfg.seed)
        self.model = DiT(dit_cfg).to(device)
        self.ema = EMA(self.model, cfg.ema_decay)
        if cfg.checkpointing:
            self.model.set_checkpointing(True)
        if self.fsdp:
            shard_fsdp(self.model, device, world, bf16)
            shard_fsdp(self.ema.module, device, world, False)
        if cfg.compile:
            for block in self.model.blocks:
                block.compile(dynamic=True)  # regional: one compiled block serves every block and bucket
        self.opt = make_optimizer(self.model, cfg)

    def network(self) -> nn.Module:
        """What the objective calls: the model, wrapped in DDP when replicated over ranks."""
        if self.world > 1 and not self.fsdp:
            return DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return self.model

    def num_params(self) -> int:
        return sum(p.numel() for p in (DiT(self.dit_cfg) if self.fsdp else self.model).parameters())

    def resume(self, ckpt_dir: Path) -> int:
        """Load the newest checkpoint of ``ckpt_dir`` (if any); returns its step (0 without one)."""
        last = latest_checkpoint(ckpt_dir)
        if last is None:
            return 0
        if self.fsdp:  # every rank reads the full state on the CPU, then keeps its shards
            plain, plain_opt = plain_copy(self.dit_cfg, DiT(self.dit_cfg).state_dict(), self.cfg)
            plain_ema = DiT(self.dit_cfg)
            meta = load_checkpoint(last, {"dit": plain, "ema": plain_ema}, {"dit": plain_opt})
            set_full_state(self.model, self.opt, plain.state_dict(), plain_opt.state_dict(), True)
            set_full_state(self.ema.module, None, plain_ema.state_dict(), None, True)
        else:
            meta = load_checkpoint(last, {"dit": self.model, "ema": self.ema.module}, {"dit": self.opt})
        if int(meta["extra"].get("world", self.world)) != self.world:
            print(f"warning: resuming a world-{meta['extra']['world']} run on {self.world} ranks: the data order "
                  "from here differs from an uninterrupted run")
        return int(meta["step"])

    def save(self, ckpt_dir: Path, done: int, resolved: dict, is_main: bool) -> None:
        """Checkpoint step ``done`` (rank 0 writes). Collective."""
        if self.fsdp:  # every rank sends its shards, rank 0 receives the full states
            sd, osd = full_state(self.model, self.opt, True)
            esd, _ = full_state(self.ema.module, None, True)
        if is_main:
            extra = {"config": resolved, "data_position": {"step": done, "world": self.world}, "world": self.world}
            if self.fsdp:
                plain, plain_opt = plain_copy(self.dit_cfg, sd, self.cfg, osd)
                plain_ema, _ = plain_copy(self.dit_cfg, esd)
                modules, optimizers = {"dit": plain, "ema": plain_ema}, {"dit": plain_opt}
            else:
                modules, optimizers = {"dit": self.model, "ema": self.ema.module}, {"dit": self.opt}
            save_checkpoint(ckpt_dir, done, modules, optimizers, extra, self.cfg.keep_last)
        barrier()

    def ema_weights(self, is_main: bool) -> dict | None:
        """The full EMA state dict on rank 0 (None elsewhere). Collective under FSDP."""
        return full_state(self.ema.module, None, self.fsdp)[0] if self.fsdp or is_main else None


def plain_copy(dit_cfg: DiTConfig, sd: dict, opt_cfg: TrainDiTConfig | None = None, osd: dict | None = None):
    """A CPU DiT holding ``sd`` (and an AdamW holding ``osd``): what rank 0 saves under FSDP."""
    model = DiT(dit_cfg)
    model.load_state_dict(sd)
    opt = None
    if opt_cfg is not None:
        opt = make_optimizer(model, opt_cfg)
        if osd is not None:
            opt.load_state_dict(osd)
    return model, opt


def make_optimizer(model: nn.Module, cfg: TrainDiTConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainDiTConfig, step: int, progress: float | None = None) -> float:
    """Linear warm-up, then constant; with ``cfg.cooldown`` linear to 0 over the last part of the run, where
    ``progress`` in [0, 1] is how much of it is done (default ``step / cfg.steps``)."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.cooldown > 0:
        p = step / max(1, cfg.steps) if progress is None else progress
        lr *= min(1.0, max(0.0, (1.0 - p) / cfg.cooldown))
    return lr


# ----------------------------------------------------------------------------------------------------------
# Training, and its samples
# ----------------------------------------------------------------------------------------------------------


def write_samples(pipe, cfg: TrainDiTConfig, out_dir: Path, writer, step: int) -> list[Path]:
    """Render every (prompt, seed) with a TextToVideo pipeline: MP4 (PNG for one frame) each + ``grid.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, paths = [], []
    for i, prompt in enumerate(cfg.sample_prompts):
        for seed in cfg.sample_seeds:
            frames = pipe(prompt, frames=cfg.sample_frames, size=cfg.sample_size, steps=cfg.sample_steps,
                          cfg=cfg.sample_cfg, seed=seed)  # (T, H, W, 3) uint8
            paths.append(save_media(frames, out_dir / f"p{i:02d}-s{seed}", cfg.sample_fps))
            rows.append(frames)
    grid = np.concatenate([contact_sheet(f, columns=4) for f in rows], axis=0)  # one row per sample
    from PIL import Image

    Image.fromarray(grid).save(out_dir / "grid.png")
    if writer is not None:
        writer.add_image("samples/grid", grid, step, dataformats="HWC")
    return paths


def main(cfg: TrainDiTConfig) -> dict:
    """Train; returns ``{"losses": [this rank's loss per step], "step", "run_dir", "world", "seconds"}``
    (``seconds``: setup, including any on-the-fly encoding of the clips; the step loop; the samples within it;
    the export)."""
    t_start, t_samples = time.time(), 0.0
    tasks = check_config(cfg)
    info = init_distributed(force_cpu=cfg.device == "cpu")
    device, run_dir, ckpt_dir = info.device, Path(cfg.run_dir), Path(cfg.run_dir) / "checkpoints"
    use_bf16 = cfg.bf16 and device.type == "cuda"

    # 1. data: latents and caption tokens (a cache, or clips encoded on the fly), the batch plan -----------------
    source, records, text_dim, stats = open_data(cfg, device)
    dit_cfg = model_config(cfg, int(records[0].latent_shape[0]), text_dim)
    plan = BatchPlan(records, cfg.token_budget, cfg.max_batch, dit_cfg.patch, cfg.seed)
    scale, shift = latent_norm(cfg.latent_scale, cfg.latent_shift, stats)
    resolved = {"train": dataclasses.asdict(cfg), "dit": dataclasses.asdict(dit_cfg), "world": info.world,
                "latent_scale": scale, "latent_shift": shift}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=1))

    # 2. model, EMA and optimizer (sharded under FSDP), resumed from the newest checkpoint ------------------------
    dit = DiTState(cfg, dit_cfg, info.world, device, use_bf16)
    start = dit.resume(ckpt_dir) if cfg.resume else 0
    barrier()
    flow = Flow(dit.network(), FlowConfig(logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, shift=cfg.shift,
                                          shift_scale=cfg.time_shift, uniform_share=cfg.t_uniform,
                                          caption_dropout=cfg.caption_dropout, tasks=tasks))
    packer = (Packer(cfg, records, dit_cfg.patch, flow, text_dim, scale, shift, device)
              if cfg.pack else None)  # --pack
    sampler_shift = cfg.time_shift if cfg.shift else 0.0  # what samples and the export use (0: unshifted)
    pipes: list = []  # rank 0's sampling pipeline: VAE and text encoder load once, the EMA weights each time

    def ema_pipeline():
        """The current EMA weights as a TextToVideo on rank 0 (None elsewhere, or without a VAE). Collective."""
        esd = dit.ema_weights(info.is_main)
        if not info.is_main or not cfg.vae:
            return None
        if not pipes:
            text_cfg = TextConfig(path=cfg.text_path or None, max_length=cfg.text_max_length)
            pipes.append(TextToVideo(DiT(dit_cfg).to(device).requires_grad_(False), load_vae(cfg.vae, device),
                                     text_cfg, latent_scale=scale, latent_shift=shift, time_shift=sampler_shift))
        pipes[0].dit.load_state_dict(esd)
        return pipes[0]

    # 3. batches ahead on threads; the time budget --------------------------------------------------------------
    # No host-device sync inside a step on the GPU: the batch and every random draw are made on the CPU,
    # ``cfg.prefetch`` steps ahead on threads (torch's CPU ops release the GIL; at 128 clips the noise alone is
    # ~25 ms), pinned and copied asynchronously; losses are read back only at log steps.
    pin = device.type == "cuda"

    def prepare(step: int):
        g = step * info.world + info.rank
        if packer is not None:  # --pack: a PackedStep in x0's place (train/packing.py)
            return packer.prepare(source, g, pin), None, None, None
        x0, text, mask = make_batch(source, records, plan.batch(g), cfg.caption_mix, cfg.seed, g, text_dim, scale,
                                     shift)
        draws = flow.draw(tuple(x0.shape), torch.Generator().manual_seed(cfg.seed * 1_000_003 + g))
        if pin:
            x0, text, mask, draws = x0.pin_memory(), text.pin_memory(), mask.pin_memory(), draws.pin_memory()
        return x0, text, mask, draws

    init = (lambda: torch.cuda.set_device(device)) if pin else None  # pinning in a thread must not touch GPU 0
    batches = prefetched(prepare, range(start, cfg.steps), cfg.prefetch if cfg.prefetch >= 0 else 2 * pin, init)
    t0, tokens_seen = time.time(), 0
    budget = cfg.time_budget_s
    if cfg.stop_at > 0:  # what is left of the deadline, the same number on every rank
        left = max(1e-9, float(all_reduce_mean(torch.tensor(cfg.stop_at - t0, device=device))))
        budget = left if budget <= 0 else min(budget, left)
    # share of the run done, for the lr cool-down: by steps, or by the time budget when one is set (measured at
    # log steps and averaged over ranks, so every rank steps with the same lr)
    done_share = start / max(1, cfg.steps) if budget > 0 else None
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        print(f"dit {cfg.preset}: {dit.num_params() / 1e6:.1f}M params, {len(records)} clips, {len(plan.sizes)} "
              f"latent shapes, {plan.per_epoch} batches/epoch, start step {start}, world {info.world} "
              f"({'fsdp' if dit.fsdp else 'ddp' if info.world > 1 else 'single'}), "
              f"training for {limits(cfg.steps, budget)}" + (f"\n{packer.describe()}" if packer else ""), flush=True)
        if note := narrow_output(dit_cfg):
            print(f"[dit] WARNING: {note}", flush=True)
    progress = Progress("dit", start, cfg.steps, budget, enabled=info.is_main)
    profiler = (StepProfiler(run_dir / "profile", max(start, cfg.profile_from), cfg.profile_steps, device)
                if cfg.profile_steps > 0 and info.is_main else None)
    losses: list[float] = []
    pending: list[torch.Tensor] = []  # this rank's losses not read back yet
    frame_loss = FrameLoss()

    # 4. steps ----------------------------------------------------------------------------------------------------
    try:
        for step, (x0, text, mask, draws) in batches:
            if profiler is not None:
                profiler.step(step)
            for group in dit.opt.param_groups:
                group["lr"] = lr_at(cfg, step, done_share)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if packer is not None:  # --pack
                    loss, per_frame, n_tokens = packer.loss(x0, device)
                else:
                    x0, text, mask = (v.to(device, non_blocking=True) for v in (x0, text, mask))
                    loss, per_frame = flow.loss(x0, text, mask, draws=draws, per_frame=True)
                    n_tokens = x0.shape[0] * x0.shape[2] * x0.shape[3] * x0.shape[4] // int(np.prod(dit_cfg.patch))
            frame_loss.add(per_frame)
            dit.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(dit.model.parameters(), cfg.grad_clip)
            dit.opt.step()
            dit.ema.update(dit.model, step)
            pending.append(loss.detach().float())
            tokens_seen += n_tokens
            if profiler is not None:
                profiler.done(step)

            # 5. log, sample, checkpoint -----------------------------------------------------------------------
            done = step + 1
            last = done == cfg.steps or out_of_time(budget, t0)
            if done % cfg.log_every == 0 or last or len(pending) >= 100:
                losses.extend(torch.stack(pending).cpu().tolist())  # read back at log steps only
                pending.clear()
            if done % cfg.log_every == 0 or last:
                mean_loss = float(all_reduce_mean(loss.detach().float()))
                if done_share is not None:
                    elapsed = float(all_reduce_mean(torch.tensor(time.time() - t0, device=device)))
                    done_share = max(done / cfg.steps, elapsed / budget)
                if writer is not None:
                    elapsed = max(1e-9, time.time() - t0)
                    norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                    for tag, value in (("loss/flow", mean_loss), ("train/lr", dit.opt.param_groups[0]["lr"]),
                                       ("train/grad_norm", float(norm)),
                                       ("train/steps_per_s", (done - start) / elapsed),
                                       ("train/tokens_per_s_per_rank", tokens_seen / elapsed)):
                        writer.add_scalar(tag, value, done)
                frame_loss.log(writer, done)
                progress(done, mean_loss, last)
            if done % cfg.ckpt_every == 0 or last:
                dit.save(ckpt_dir, done, resolved, info.is_main)
            if cfg.vae and cfg.sample_every and (done % cfg.sample_every == 0 or last):
                t_sample = time.time()
                pipe = ema_pipeline()
                if pipe is not None:
                    write_samples(pipe, cfg, run_dir / "samples" / f"step-{done:09d}", writer, done)
                barrier()
                t_samples += time.time() - t_sample
            if last and done != cfg.steps:  # out of time
                break
    finally:
        batches.close()  # stop preparing batches past the last step (or after an error)
        if profiler is not None:
            profiler.close()  # a window the run ended inside, with the steps it got
    t_loop = time.time()

    # 6. export the EMA weights as a from_pretrained-able pipeline ---------------------------------------------
    if cfg.export and cfg.vae and losses:
        pipe = ema_pipeline()
        if pipe is not None:
            export_pipeline(run_dir / "pipeline", pipe.dit, pipe.vae, pipe.text_cfg, latent_scale=scale,
                            latent_shift=shift, extra={"train_config": resolved}, time_shift=sampler_shift)
        barrier()
    digest = weights_digest(dit.model)
    if writer is not None:
        writer.close()
    cleanup()
    seconds = {"setup": t0 - t_start, "loop": t_loop - t0, "samples": t_samples, "export": time.time() - t_loop}
    encode = getattr(source, "timings", None)  # on-the-fly encoding only (a latent cache was encoded before)
    return {"losses": losses, "step": start + len(losses), "run_dir": str(run_dir), "world": info.world,
            "weights_digest": digest, "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "encode_seconds": {k: round(v, 2) for k, v in encode.items()} if encode else None,
            "time_budget_s": round(budget, 1)}


# CLI: every config field is a flag (tuples as JSON, e.g. --caption-mix '[["dense", 0.7], ["short", 0.3]]')


def parse_args(argv: list[str] | None = None) -> TrainDiTConfig:
    return parse_config(TrainDiTConfig, argv, prog="tessera train-dit", description="Train the Tessera text-to-video DiT")


if __name__ == "__main__":
    main(parse_args())
