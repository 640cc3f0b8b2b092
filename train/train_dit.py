"""Train the text-to-video DiT on latent shards. Runs top to bottom: setup, resume, loop, checkpoint, export.

    python -m train.train_dit --latents LATENTS --vae runs/vae --run_dir runs/dit --preset B          # 1 GPU / CPU
    torchrun --nproc_per_node=8 -m train.train_dit --latents LATENTS --vae runs/vae --parallel fsdp     # 8 GPUs

Data. Preferred: a latent cache (``tessera cache-latents``): latents and caption token embeddings keyed by
clip_id, so training never decodes video. Without one, ``--data_root DATASET --vae CKPT`` encodes clips on the
fly with the same stages (``pipelines/cache_latents.py``), cached in memory. Clips keep their native bucket
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
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from curate.store import open_dataset
from model.buckets import BucketConfig, make_buckets
from model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from model.dit import DiT, DiTConfig, dit_config
from model.ema import EMA
from model.conditioning import TaskMix
from model.flow import Flow, FlowConfig
from model.text import TextConfig, pad_embeddings
from pipelines.cache_latents import (
    CAPTION_KINDS, LatentReader, LatentRecord, bucket_for, clip_pixels, row_captions, scan_latents,
)
from train.config_cli import parse_config
from train.packing import Packer
from train.profiling import StepProfiler
from train.data import decode_frames, resize_crop
from train.dist import all_reduce_mean, barrier, cleanup, init_distributed, out_of_time


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
    # --pack true: clips of mixed shapes packed into rows of pack_tokens tokens (0: token_budget), token_budget //
    # pack_tokens rows a step, attention kept within each clip (train/packing.py). pack_attention: auto (flash
    # varlen or flex on CUDA, sdpa on the CPU) | sdpa | flex | varlen | split (model/packed.py)
    pack: bool = False
    pack_tokens: int = 0
    pack_attention: str = "auto"


# ----------------------------------------------------------------------------------------------------------
# Data: sources (cache or on the fly) and the deterministic batch plan
# ----------------------------------------------------------------------------------------------------------


class ClipSource:
    """On-the-fly stand-in for a latent cache: same records and ``load``, computed with the cache's stages."""

    def __init__(self, cfg: TrainDiTConfig, device: torch.device):
        from model.text import TextEncoder
        from pipelines.cache_latents import load_vae

        self.root = Path(cfg.data_root)
        self.vae = load_vae(cfg.vae, device)
        self.text = TextEncoder(TextConfig(path=cfg.text_path or None, max_length=cfg.text_max_length))
        self.buckets = make_buckets(BucketConfig(areas=cfg.bucket_areas, frames=cfg.bucket_frames,
                                                 token_budget=cfg.token_budget, patch=cfg.patch,
                                                 vae_stride=self.vae.cfg.stride))
        self.memory: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._lock = threading.Lock()
        # where encoding's time went (s): shards read, clips decoded (threads), resized on the VAE's device, VAE
        # (ends in a copy back, so the device's work is inside), text encoder
        self.timings = dict.fromkeys(("read", "decode", "resize", "vae", "text"), 0.0)
        self.records: list[LatentRecord] = []
        self.rows: dict[str, dict] = {}
        c = self.vae.cfg.z_channels
        keep = None
        if (self.root / "selection.parquet").is_file():  # the dataset's filter decision, as the cache applies it
            sel = pq.read_table(self.root / "selection.parquet", columns=["clip_id", "keep"]).to_pylist()
            keep = {r["clip_id"]: bool(r["keep"]) for r in sel}
        for path in open_dataset(self.root).shards:
            names = pq.ParquetFile(path).schema_arrow.names
            cols = [n for n in ("clip_id", "width", "height", "num_frames", "source_uri", "scene_index")
                    + tuple(f"caption_{k}" for k in CAPTION_KINDS) if n in names]
            for i, r in enumerate(pq.read_table(path, columns=cols).to_pylist()):
                b = bucket_for(self.buckets, r["num_frames"], r["height"], r["width"])
                if b is None or (keep is not None and not keep.get(r["clip_id"], False)):
                    continue
                caps = row_captions({k: [v] for k, v in r.items()}, 0)
                self.rows[r["clip_id"]] = {"bucket": b, "captions": caps}
                shape = (c, *b.latent_shape)
                self.records.append(LatentRecord(str(path), i, r["clip_id"], shape,
                                                 tuple(k for k in CAPTION_KINDS if caps[k])))

    @torch.no_grad()
    def preload(self, batch: int = 16, progress: bool = True) -> None:
        """Encode every clip once, shard by shard (each shard's media read once), ``batch`` clips of one bucket
        per VAE call and ``batch`` captions per text-encoder call; results stay in memory."""
        from tqdm import tqdm

        todo = [r for r in self.records if r.clip_id not in self.memory]
        by_file: dict[str, list[LatentRecord]] = {}
        for r in todo:
            by_file.setdefault(r.file, []).append(r)

        def parts() -> Iterator[tuple[list[LatentRecord], list]]:
            for file, recs in by_file.items():
                t = time.perf_counter()
                media = self._media(pq.ParquetFile(file).read(columns=self._media_columns(file)))
                self.timings["read"] += time.perf_counter() - t
                groups: dict[tuple, list[LatentRecord]] = {}
                for r in recs:
                    groups.setdefault(tuple(r.latent_shape), []).append(r)
                for group in groups.values():
                    for k in range(0, len(group), batch):
                        part = group[k: k + batch]
                        yield part, [media[r.row] for r in part]

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
                tqdm(total=len(todo), desc="encode clips (on the fly)", unit="clip", disable=not progress) as bar:
            # Each batch's clips decode on the threads (the decoders release the GIL), then the float conversion
            # and resize run here on the VAE's device, then the VAE and the CPU text encoder. Decoding the next
            # batches while this one encoded was tried and measured on a 16-core H200 host: 14 clips/s against ~117
            # for this order (the likely cause: decoder threads and the text encoder's OpenMP team on the same cores).
            device = next(self.vae.parameters()).device
            for part, media in parts():
                buckets = [self.rows[r.clip_id]["bucket"] for r in part]
                t = time.perf_counter()
                frames = list(pool.map(lambda mb: decode_frames(mb[0], 0, mb[1].frames, 1), zip(media, buckets)))
                t1 = time.perf_counter()
                pixels = [resize_crop(f, (b.height, b.width), 1.0, 0.5, 0.5, device) for f, b in zip(frames, buckets)]
                self.timings["decode"] += t1 - t
                self.timings["resize"] += time.perf_counter() - t1
                self._encode_pixels(part, pixels)
                bar.update(len(part))

    def _media_columns(self, file: str) -> list[str]:
        return [c for c in ("clip_mp4", "clip_path") if c in pq.ParquetFile(file).schema_arrow.names]

    def _media(self, t) -> list[bytes | Path]:
        """Each row's MP4 bytes, or the path of its file under the dataset root."""
        data = t.column("clip_mp4").to_pylist() if "clip_mp4" in t.column_names else [None] * t.num_rows
        paths = t.column("clip_path").to_pylist() if "clip_path" in t.column_names else [None] * t.num_rows
        return [d if d is not None else self.root / p for d, p in zip(data, paths)]

    def _encode(self, recs: list[LatentRecord], media: list[bytes | Path]) -> None:
        """VAE latents (one call) and caption tokens (one call) of clips of one bucket, into ``self.memory``."""
        self._encode_pixels(recs, [clip_pixels(m, self.rows[r.clip_id]["bucket"]) for r, m in zip(recs, media)])

    def _encode_pixels(self, recs: list[LatentRecord], pixels: list[torch.Tensor]) -> None:
        """:meth:`_encode` of clips already decoded to (3, T, H, W) each."""
        device = next(self.vae.parameters()).device
        t = time.perf_counter()
        x = torch.stack(pixels).to(device)
        z = self.vae.encode(x).mode().float().cpu()  # (b, C, T', H', W')
        t1 = time.perf_counter()
        texts = self._encode_texts(recs)
        self.timings["vae"] += t1 - t
        self.timings["text"] += time.perf_counter() - t1
        for r, zi, ti in zip(recs, z, texts):
            self.memory[r.clip_id] = (zi.clone(), ti)

    def _encode_texts(self, recs: list[LatentRecord]) -> list[dict[str, torch.Tensor]]:
        """``{kind: (L, D) unpadded tokens}`` per record, one text-encoder call for all captions of ``recs``."""
        wanted = [(i, k, self.rows[r.clip_id]["captions"][k]) for i, r in enumerate(recs) for k in r.captions]
        out: list[dict[str, torch.Tensor]] = [{} for _ in recs]
        if wanted:
            e = self.text([c for _, _, c in wanted])
            for j, (i, k, _) in enumerate(wanted):
                out[i][k] = e.tokens[j][e.mask[j]].cpu()
        return out

    def latent_stats(self) -> dict[str, float]:
        """``{"latent_mean", "latent_std"}`` over every clip (encoding them all first), so on-the-fly training
        normalises latents as a latent cache would."""
        self.preload()
        n = sum(z.numel() for z, _ in self.memory.values())
        total = sum(float(z.double().sum()) for z, _ in self.memory.values())
        squares = sum(float((z.double() ** 2).sum()) for z, _ in self.memory.values())
        mean = total / n
        return {"latent_mean": mean, "latent_std": float(np.sqrt(max(squares / n - mean * mean, 0.0)))}

    @torch.no_grad()
    def load(self, rec: LatentRecord) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self._lock:  # batches are prepared on threads
            if rec.clip_id not in self.memory:  # one row group read, not the whole shard
                f = pq.ParquetFile(rec.file)
                per_group = f.metadata.row_group(0).num_rows
                media = self._media(f.read_row_group(rec.row // per_group, columns=self._media_columns(rec.file)))
                self._encode([rec], [media[rec.row % per_group]])
            return self.memory[rec.clip_id]


class BatchPlan:
    """Global batch g -> record indices. Each epoch shuffles every latent shape's clips and the batch order."""

    def __init__(self, records: list[LatentRecord], token_budget: int, max_batch: int,
                 patch: tuple[int, int, int], seed: int):
        self.seed = seed
        self.groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(records):
            self.groups.setdefault(tuple(r.latent_shape), []).append(i)
        self.sizes = {}
        for shape in self.groups:
            tokens = -(-shape[1] // patch[0]) * (shape[2] // patch[1]) * (shape[3] // patch[2])
            self.sizes[shape] = max(1, min(max_batch, token_budget // max(1, tokens), len(self.groups[shape])))
        self.per_epoch = sum(-(-len(v) // self.sizes[s]) for s, v in self.groups.items())
        self._epoch: tuple[int, list[list[int]]] | None = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 3])
            batches = []
            for shape in sorted(self.groups):
                idx = [self.groups[shape][j] for j in rng.permutation(len(self.groups[shape]))]
                size = self.sizes[shape]
                batches += [idx[k: k + size] for k in range(0, len(idx), size)]
            self._epoch = (epoch, [batches[j] for j in rng.permutation(len(batches))])
        return self._epoch[1]

    def batch(self, g: int) -> list[int]:
        return self._epoch_batches(g // self.per_epoch)[g % self.per_epoch]


def pick_caption(available: tuple[str, ...], mix: tuple[tuple[str, float], ...], rng: np.random.Generator) -> str | None:
    """One caption kind from ``mix`` renormalised over ``available`` (None when no kind is available)."""
    kinds = [(k, w) for k, w in mix if k in available and w > 0]
    if not kinds:
        return None
    w = np.array([w for _, w in kinds], dtype=np.float64)
    return kinds[int(rng.choice(len(kinds), p=w / w.sum()))][0]


def latent_norm(cfg: TrainDiTConfig, manifest: dict | None) -> tuple[float, float]:
    """(scale, shift): the config's, or 1/std and mean from a latent cache's manifest when scale is 0."""
    if cfg.latent_scale:
        return cfg.latent_scale, cfg.latent_shift
    if manifest and manifest.get("latent_std"):
        return 1.0 / float(manifest["latent_std"]), float(manifest["latent_mean"])
    return 1.0, 0.0


def make_batch(source, records: list[LatentRecord], idx: list[int], cfg: TrainDiTConfig, g: int,
               text_dim: int, scale: float = 1.0, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (B, C, T', H', W') normalised as (z - shift) * scale, text tokens (B, L, D) and mask (B, L)
    of global batch g."""
    rng = np.random.default_rng([cfg.seed, g, 5])
    latents, texts = [], []
    for i in idx:
        z, text = source.load(records[i])
        kind = pick_caption(records[i].captions, cfg.caption_mix, rng)
        latents.append((z - shift) * scale)
        texts.append(text[kind] if kind else torch.zeros(0, text_dim))
    if max(t.shape[0] for t in texts) == 0:  # every caption empty: one masked-out token
        emb_tokens, emb_mask = torch.zeros(len(texts), 1, text_dim), torch.zeros(len(texts), 1, dtype=torch.bool)
    else:
        emb = pad_embeddings(texts)
        emb_tokens, emb_mask = emb.tokens, emb.mask
    return torch.stack(latents), emb_tokens, emb_mask


T = TypeVar("T")


def prefetched(fn: Callable[[int], T], items: Iterable[int], depth: int,
               initializer: Callable[[], None] | None = None) -> Iterator[tuple[int, T]]:
    """``(i, fn(i))`` for each i of ``items`` in order, with ``fn`` run up to ``depth`` items ahead on ``depth``
    threads (0: inline). ``fn`` must depend on ``i`` only (every batch is seeded by its index), so the results are
    those of the inline loop. An exception in ``fn`` is raised at its item; closing the iterator early (``break``
    inside ``contextlib.closing``) cancels what has not started and waits for what has."""
    if depth <= 0:
        for i in items:
            yield i, fn(i)
        return
    it = iter(items)
    pool = ThreadPoolExecutor(max_workers=depth, initializer=initializer, thread_name_prefix="tessera-prefetch")
    pending = deque((i, pool.submit(fn, i)) for i in islice(it, depth))
    try:
        while pending:
            i, fut = pending.popleft()
            pending.extend((j, pool.submit(fn, j)) for j in islice(it, 1))  # keep ``depth`` in flight
            yield i, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------------
# Model wrapping: DDP / FSDP2, full state dicts for checkpoints and samples
# ----------------------------------------------------------------------------------------------------------


def shard_fsdp(model: DiT, device: torch.device, world: int, bf16: bool) -> None:
    """FSDP2 in place: each block is one all-gather unit, then the root (embeddings, final layer)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
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


def _grow(x: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    """``x`` (2, m), or None, zero-padded to (2, n), float32 on ``like``'s device."""
    out = like.new_zeros(2, n, dtype=torch.float32)
    if x is not None:
        out[:, :x.shape[1]] = x
    return out


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
# Samples during training
# ----------------------------------------------------------------------------------------------------------


def write_samples(pipe, cfg: TrainDiTConfig, out_dir: Path, writer, step: int) -> list[Path]:
    """Render every (prompt, seed) with a TextToVideo pipeline: MP4 (PNG for one frame) each + ``grid.png``."""
    from pipelines.generate import contact_sheet, save_media

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


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def main(cfg: TrainDiTConfig) -> dict:
    """Train; returns ``{"losses": [this rank's loss per step], "step", "run_dir", "world", "seconds"}``
    (``seconds``: setup, including any on-the-fly encoding of the clips; the step loop; the samples within it;
    the export)."""
    # 1. setup -------------------------------------------------------------------------------------------
    t_start, t_samples = time.time(), 0.0
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {cfg.parallel!r}")
    if len(cfg.task_mix) != 6:
        raise ValueError(f"task_mix needs 6 probabilities (t2v, i2v, extend fwd, extend bwd, keyframes, "
                         f"transition), got {cfg.task_mix}")
    tasks = TaskMix(*cfg.task_mix)
    tasks.weights()  # raises on negative or all-zero
    info = init_distributed(force_cpu=cfg.device == "cpu")
    device = info.device
    use_bf16 = cfg.bf16 and device.type == "cuda"
    fsdp = cfg.parallel == "fsdp" and info.world > 1
    run_dir, ckpt_dir = Path(cfg.run_dir), Path(cfg.run_dir) / "checkpoints"
    if cfg.latents:
        source, manifest = LatentReader(), json.loads((Path(cfg.latents) / "_manifest.json").read_text())
        records, text_dim = scan_latents(cfg.latents), int(manifest["text_dim"] or 384)
    elif cfg.data_root and cfg.vae:
        source = ClipSource(cfg, device)
        records, text_dim = source.records, source.text.dim
        manifest = source.latent_stats() if records and not cfg.latent_scale else None
    else:
        raise ValueError("give --latents (a latent cache) or --data_root with --vae (encode on the fly)")
    if not records:
        raise ValueError("no training clips found")
    sizes = {k: int(v) for k, v in (("hidden", cfg.hidden), ("depth", cfg.depth), ("heads", cfg.heads)) if v}
    dit_cfg = dit_config(cfg.preset, latent_channels=int(records[0].latent_shape[0]), text_dim=text_dim,
                         patch=tuple(cfg.patch), pooled_text=bool(cfg.pooled_text), **sizes)
    if dit_cfg.hidden % dit_cfg.heads:
        raise ValueError(f"hidden {dit_cfg.hidden} is not a multiple of heads {dit_cfg.heads}")
    plan = BatchPlan(records, cfg.token_budget, cfg.max_batch, dit_cfg.patch, cfg.seed)
    scale, shift = latent_norm(cfg, manifest)
    resolved = {"train": dataclasses.asdict(cfg), "dit": dataclasses.asdict(dit_cfg), "world": info.world,
                "latent_scale": scale, "latent_shift": shift}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=1))
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = DiT(dit_cfg).to(device)
    ema = EMA(model, cfg.ema_decay)
    if cfg.checkpointing:
        model.set_checkpointing(True)
    if fsdp:
        shard_fsdp(model, device, info.world, use_bf16)
        shard_fsdp(ema.module, device, info.world, False)
    if cfg.compile:
        for block in model.blocks:
            block.compile(dynamic=True)  # regional: one compiled block serves every block and bucket
    opt = make_optimizer(model, cfg)

    # 2. resume ------------------------------------------------------------------------------------------
    start = 0
    last = latest_checkpoint(ckpt_dir) if cfg.resume else None
    if last is not None:
        if fsdp:  # every rank reads the full state on the CPU, then keeps its shards
            plain, plain_opt = plain_copy(dit_cfg, DiT(dit_cfg).state_dict(), cfg)
            plain_ema = DiT(dit_cfg)
            meta = load_checkpoint(last, {"dit": plain, "ema": plain_ema}, {"dit": plain_opt})
            set_full_state(model, opt, plain.state_dict(), plain_opt.state_dict(), True)
            set_full_state(ema.module, None, plain_ema.state_dict(), None, True)
        else:
            meta = load_checkpoint(last, {"dit": model, "ema": ema.module}, {"dit": opt})
        start = int(meta["step"])
        if int(meta["extra"].get("world", info.world)) != info.world:
            print(f"warning: resuming a world-{meta['extra']['world']} run on {info.world} ranks: the data order "
                  "from here differs from an uninterrupted run")
    barrier()
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if info.world > 1 and not fsdp else model
    sampler_shift = cfg.time_shift if cfg.shift else 0.0  # what samples and the export use (0: unshifted)
    flow = Flow(net, FlowConfig(logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, shift=cfg.shift,
                                shift_scale=cfg.time_shift, uniform_share=cfg.t_uniform,
                                caption_dropout=cfg.caption_dropout, tasks=tasks))
    packer = (Packer(cfg, records, dit_cfg.patch, flow, pick_caption, text_dim, scale, shift, device)
              if cfg.pack else None)  # --pack
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        n_params = sum(p.numel() for p in DiT(dit_cfg).parameters()) if fsdp else sum(p.numel() for p in model.parameters())
        print(f"dit {cfg.preset}: {n_params / 1e6:.1f}M params, {len(records)} clips, {len(plan.sizes)} latent "
              f"shapes, {plan.per_epoch} batches/epoch, start step {start}, world {info.world} "
              f"({'fsdp' if fsdp else 'ddp' if info.world > 1 else 'single'})")
        if packer is not None:
            print(packer.describe())

    def save(done: int) -> None:
        if fsdp:  # collective: every rank sends its shards, rank 0 receives the full states
            sd, osd = full_state(model, opt, fsdp)
            esd, _ = full_state(ema.module, None, fsdp)
        if info.is_main:
            extra = {"config": resolved, "data_position": {"step": done, "world": info.world}, "world": info.world}
            if fsdp:
                plain, plain_opt = plain_copy(dit_cfg, sd, cfg, osd)
                plain_ema, _ = plain_copy(dit_cfg, esd)
                save_checkpoint(ckpt_dir, done, {"dit": plain, "ema": plain_ema}, {"dit": plain_opt}, extra, cfg.keep_last)
            else:
                save_checkpoint(ckpt_dir, done, {"dit": model, "ema": ema.module}, {"dit": opt}, extra, cfg.keep_last)
        barrier()

    pipes: list = []  # rank 0's sampling pipeline: VAE and text encoder load once, the EMA weights each time

    def ema_pipeline():
        """The current EMA weights as a TextToVideo on rank 0 (None elsewhere, or without a VAE). Collective."""
        esd = full_state(ema.module, None, fsdp)[0] if fsdp or info.is_main else None
        if not info.is_main or not cfg.vae:
            return None
        if not pipes:
            from pipelines.cache_latents import load_vae
            from pipelines.generate import TextToVideo

            text_cfg = TextConfig(path=cfg.text_path or None, max_length=cfg.text_max_length)
            pipes.append(TextToVideo(DiT(dit_cfg).to(device).requires_grad_(False), load_vae(cfg.vae, device),
                                     text_cfg, latent_scale=scale, latent_shift=shift, time_shift=sampler_shift))
        pipes[0].dit.load_state_dict(esd)
        return pipes[0]

    # 3. loop --------------------------------------------------------------------------------------------
    # No host-device sync inside a step on the GPU: the batch and every random draw are made on the CPU,
    # ``cfg.prefetch`` steps ahead on threads (torch's CPU ops release the GIL; at 128 clips the noise alone is
    # ~25 ms), pinned and copied asynchronously; losses are read back only at log steps.
    losses: list[float] = []
    pending: list[torch.Tensor] = []  # this rank's losses not read back yet
    frames = None  # (2, T'): per latent frame, the flow loss summed over the log window and its step count
    pin = device.type == "cuda"

    def prepare(step: int):
        g = step * info.world + info.rank
        if packer is not None:  # --pack: a PackedStep in x0's place (train/packing.py)
            return packer.prepare(source, g, pin), None, None, None
        x0, text, mask = make_batch(source, records, plan.batch(g), cfg, g, text_dim, scale, shift)
        draws = flow.draw(tuple(x0.shape), torch.Generator().manual_seed(cfg.seed * 1_000_003 + g))
        if pin:
            x0, text, mask, draws = x0.pin_memory(), text.pin_memory(), mask.pin_memory(), draws.pin_memory()
        return x0, text, mask, draws

    init = (lambda: torch.cuda.set_device(device)) if pin else None  # pinning in a thread must not touch GPU 0
    depth = cfg.prefetch if cfg.prefetch >= 0 else (2 if pin else 0)
    batches = prefetched(prepare, range(start, cfg.steps), depth, init)
    t0, tokens_seen = time.time(), 0
    # share of the run done, for the lr cool-down: by steps, or by the time budget when one is set (measured at
    # log steps and averaged over ranks, so every rank steps with the same lr)
    budget = cfg.time_budget_s
    if cfg.stop_at > 0:  # what is left of the deadline, the same number on every rank
        left = max(1e-9, float(all_reduce_mean(torch.tensor(cfg.stop_at - t0, device=device))))
        budget = left if budget <= 0 else min(budget, left)
    progress = start / max(1, cfg.steps) if budget > 0 else None
    profiler = (StepProfiler(run_dir / "profile", max(start, cfg.profile_from), cfg.profile_steps, device)
                if cfg.profile_steps > 0 and info.is_main else None)
    try:
        for step, (x0, text, mask, draws) in batches:
            if profiler is not None:
                profiler.step(step)
            if packer is None:
                x0, text, mask = (v.to(device, non_blocking=True) for v in (x0, text, mask))
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step, progress)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if packer is not None:  # --pack
                    loss, per_frame, n_tokens = packer.loss(x0, device)
                else:
                    loss, per_frame = flow.loss(x0, text, mask, draws=draws, per_frame=True)
                    n_tokens = x0.shape[0] * x0.shape[2] * x0.shape[3] * x0.shape[4] // int(np.prod(dit_cfg.patch))
            if frames is None or frames.shape[1] < len(per_frame):
                frames = _grow(frames, len(per_frame), per_frame)
            frames[0, :len(per_frame)] += per_frame
            frames[1, :len(per_frame)] += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(model, step)
            pending.append(loss.detach().float())
            tokens_seen += n_tokens
            if profiler is not None:
                profiler.done(step)

            # 4. log, sample, checkpoint ---------------------------------------------------------------------
            done = step + 1
            last = done == cfg.steps or out_of_time(budget, t0)
            if done % cfg.log_every == 0 or last or len(pending) >= 100:
                losses.extend(torch.stack(pending).cpu().tolist())  # read back at log steps only
                pending.clear()
            if done % cfg.log_every == 0 or last:
                mean_loss = float(all_reduce_mean(loss.detach().float()))
                if progress is not None:
                    elapsed = float(all_reduce_mean(torch.tensor(time.time() - t0, device=device)))
                    progress = max(done / cfg.steps, elapsed / budget)
                if writer is not None:
                    elapsed = max(1e-9, time.time() - t0)
                    writer.add_scalar("loss/flow", mean_loss, done)
                    writer.add_scalar("train/lr", opt.param_groups[0]["lr"], done)
                    writer.add_scalar("train/grad_norm", float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor")
                                                               else grad_norm), done)
                    writer.add_scalar("train/steps_per_s", (done - start) / elapsed, done)
                    writer.add_scalar("train/tokens_per_s_per_rank", tokens_seen / elapsed, done)
                    for i, (v, n) in enumerate(zip(*frames.tolist())):
                        if n:  # this rank's loss on latent frame i, over the steps since the last log
                            writer.add_scalar(f"frames/flow_t{i}", v / n, done)
                frames.zero_()
            if done % cfg.ckpt_every == 0 or last:
                save(done)
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

    # 5. export --------------------------------------------------------------------------------------------
    if cfg.export and cfg.vae and losses:
        pipe = ema_pipeline()
        if pipe is not None:
            from pipelines.generate import export_pipeline

            export_pipeline(run_dir / "pipeline", pipe.dit, pipe.vae, pipe.text_cfg, latent_scale=scale,
                            latent_shift=shift, extra={"train_config": resolved}, time_shift=sampler_shift)
        barrier()
    digest = weights_digest(model)
    if writer is not None:
        writer.close()
    cleanup()
    seconds = {"setup": t0 - t_start, "loop": t_loop - t0, "samples": t_samples, "export": time.time() - t_loop}
    encode = getattr(source, "timings", None)  # on-the-fly encoding only (a latent cache was encoded before)
    return {"losses": losses, "step": start + len(losses), "run_dir": str(run_dir), "world": info.world,
            "weights_digest": digest, "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "encode_seconds": {k: round(v, 2) for k, v in encode.items()} if encode else None,
            "time_budget_s": round(budget, 1)}


# ----------------------------------------------------------------------------------------------------------
# CLI: every config field is a flag (tuples as JSON, e.g. --caption_mix '[["dense", 0.7], ["short", 0.3]]')
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> TrainDiTConfig:
    return parse_config(TrainDiTConfig, argv, prog="tessera train-dit", description="Train the Tessera text-to-video DiT")


if __name__ == "__main__":
    main(parse_args())
