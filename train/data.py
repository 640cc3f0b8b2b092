"""Clip-shard dataset for VAE training: batches of random crops at configurable sizes, images and videos mixed.

Reads ``DATASET/clips/*.parquet`` (``clip_id``, ``clip_mp4`` bytes or ``clip_path`` relative to DATASET,
``width``, ``height``, ``num_frames``) and, when present and ``use_selection``, keeps only rows with
``keep`` true in ``DATASET/selection.parquet``. Clips are read and decoded by ``curate/media.py``; one row
group's media is held at a time (the clip order keeps row groups together).

``ClipBatches`` is an ``IterableDataset`` that yields whole **batches** (use ``DataLoader(batch_size=None)``),
because every batch has one shape: per batch it draws a resolution from ``resolutions`` and a frame count
from ``num_frames`` (each ``1 + 4k``), or ``T = 1`` (one random frame: an image) with ``image_prob``.
Each clip is resized by a random factor in ``[1, max_upscale]`` above the smallest cover of the target and
randomly cropped. Output: ``{"video": float (B, 3, T, H, W) in [-1, 1], "clip_id": list[str]}``.

Determinism and sharding. The clip order of an epoch is a function of ``(seed, epoch)``: row groups shuffled,
rows shuffled inside each; global worker ``g = rank * num_workers + worker`` of ``n`` takes every n-th clip.
All random draws come from one generator per global worker seeded by ``(seed, g)``, consumed while
*planning* batches from metadata only. So ``start_batch`` skips already-trained batches without decoding
anything, and a resumed run sees exactly the batches an uninterrupted one would (``DataLoader`` hands out
batches round-robin over its workers, which ``start_batch`` accounts for). Exact replay needs the same
``seed``, ``world`` and ``num_workers`` as the interrupted run.

Held-out split: a clip is held out when ``crc32(clip_id) % 10000 < holdout_pct * 100``; training uses
``split="train"``, evaluation ``split="heldout"``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from curate.media import clip_media, decode_frames, media_columns, resize_crop
from curate.store import open_dataset, parquet_file, read_optional_table


@dataclass(frozen=True)
class ClipDataConfig:
    root: str = ""
    resolutions: tuple[tuple[int, int], ...] = ((256, 256),)  # (H, W) choices
    num_frames: tuple[int, ...] = (17,)  # each 1 + 4k
    image_prob: float = 0.1  # chance a batch is single frames
    batch_size: int = 2
    frame_stride: int = 1  # take every n-th frame when the clip is long enough
    max_upscale: float = 1.25
    split: str = "train"  # train | heldout | all
    holdout_pct: float = 5.0
    use_selection: bool = True
    seed: int = 0


@dataclass(frozen=True)
class _Clip:
    unit: int  # index into the row-group list
    row: int  # row inside that row group
    clip_id: str
    num_frames: int


@dataclass(frozen=True)
class _Plan:
    clip: _Clip
    start: int
    stride: int
    frames: int
    size: tuple[int, int]
    scale: float
    fy: float
    fx: float


def is_heldout(clip_id: str, holdout_pct: float) -> bool:
    return zlib.crc32(clip_id.encode()) % 10000 < holdout_pct * 100


def read_selection(root: str | Path) -> dict[str, bool] | None:
    """``{clip_id: keep}`` of a dataset's ``selection.parquet`` (the filter's decision), or None without one."""
    t = read_optional_table(root, "selection.parquet", ["clip_id", "keep"])  # root: a path or a dataset URI
    if t is None:
        return None
    return dict(zip(t.column("clip_id").to_pylist(), t.column("keep").to_pylist()))


def scan_clips(cfg: ClipDataConfig) -> tuple[list[tuple[Path, int]], list[_Clip]]:
    """Row groups of ``clips/*.parquet`` and the eligible clips in them (metadata columns only)."""
    root = cfg.root
    files = open_dataset(root).shards
    if not files:
        raise FileNotFoundError(f"no clip shards under {root}/clips")
    keep = read_selection(root) if cfg.use_selection else None
    units: list[tuple[Path, int]] = []
    clips: list[_Clip] = []
    for path in files:
        pf = parquet_file(path)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["clip_id", "num_frames"])
            unit = len(units)
            units.append((path, rg))
            for row, (cid, n) in enumerate(zip(t.column("clip_id").to_pylist(), t.column("num_frames").to_pylist())):
                if keep is not None and not keep.get(cid, False):
                    continue
                held = is_heldout(cid, cfg.holdout_pct)
                if (cfg.split == "train" and held) or (cfg.split == "heldout" and not held) or not n:
                    continue
                clips.append(_Clip(unit, row, cid, int(n)))
    return units, clips


class ClipBatches(IterableDataset):
    """Infinite, sharded, resumable stream of batches (see the module docstring)."""

    def __init__(self, cfg: ClipDataConfig, rank: int = 0, world: int = 1, start_batch: int = 0) -> None:
        super().__init__()
        for t in cfg.num_frames:
            if t < 1 or (t - 1) % 4:
                raise ValueError(f"num_frames entries must be 1 + 4k, got {t}")
        self.cfg, self.rank, self.world, self.start_batch = cfg, rank, world, start_batch
        self.units, self.clips = scan_clips(cfg)
        if not self.clips:
            raise ValueError(f"no eligible clips under {cfg.root} (split={cfg.split})")

    # -- planning (metadata only) ----------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[_Clip]:
        rng = np.random.default_rng([self.cfg.seed, epoch, 7])
        by_unit: dict[int, list[_Clip]] = {}
        for c in self.clips:
            by_unit.setdefault(c.unit, []).append(c)
        order: list[_Clip] = []
        for u in rng.permutation(sorted(by_unit)):
            rows = by_unit[int(u)]
            order += [rows[i] for i in rng.permutation(len(rows))]
        return order

    def _clip_stream(self, g: int, n: int) -> Iterator[_Clip]:
        epoch = 0
        while True:
            mine = self._epoch_order(epoch)[g::n]
            if not mine:  # more workers than clips: share the clips round-robin instead of starving
                mine = self._epoch_order(epoch)[g % len(self.clips) :: max(1, len(self.clips))]
            yield from mine
            epoch += 1

    def _plans(self, g: int, n: int) -> Iterator[list[_Plan]]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, g, 11])
        clips = self._clip_stream(g, n)
        while True:
            size = cfg.resolutions[int(rng.integers(len(cfg.resolutions)))]
            image = rng.random() < cfg.image_prob
            frames = 1 if image else cfg.num_frames[int(rng.integers(len(cfg.num_frames)))]
            batch: list[_Plan] = []
            misses = 0
            while len(batch) < cfg.batch_size:
                clip = next(clips)
                stride = cfg.frame_stride if clip.num_frames >= (frames - 1) * cfg.frame_stride + 1 else 1
                span = (frames - 1) * stride + 1
                if clip.num_frames < span:
                    misses += 1
                    if misses > 10 * len(self.clips):
                        raise ValueError(f"no clip has {frames} frames; lower num_frames")
                    continue
                start = int(rng.integers(clip.num_frames - span + 1))
                scale = float(rng.uniform(1.0, cfg.max_upscale))
                batch.append(_Plan(clip, start, stride, frames, size, scale, float(rng.random()), float(rng.random())))
            yield batch

    # -- decoding ----------------------------------------------------------------------------------------
    def _media(self, unit: int, cache: dict) -> pa.Table:
        if cache.get("unit") != unit:
            path, rg = self.units[unit]
            pf = parquet_file(path)
            cols = media_columns(pf.schema_arrow.names)
            cache.clear()
            cache.update(unit=unit, table=pf.read_row_group(rg, columns=cols))
        return cache["table"]

    def _load(self, plan: _Plan, cache: dict) -> torch.Tensor:
        row = self._media(plan.clip.unit, cache).slice(plan.clip.row, 1).to_pylist()[0]
        frames = decode_frames(clip_media(row, self.cfg.root), plan.start, plan.frames, plan.stride)  # (T, h, w, 3)
        return resize_crop(frames, plan.size, plan.scale, plan.fy, plan.fx)  # (3, T, H, W)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        # DataLoader takes batch b from worker b % nw and restarts at worker 0, so after a resume at batch S
        # loader worker ``wid`` plays the stream of original worker ``(wid + S) % nw``.
        lw = (wid + self.start_batch) % nw
        g, n = self.rank * nw + lw, self.world * nw
        skip = max(0, -(-(self.start_batch - lw) // nw))  # batches that stream produced before the resume
        cache: dict = {}
        for i, plans in enumerate(self._plans(g, n)):
            if i < skip:
                continue
            video = torch.stack([self._load(p, cache) for p in plans])  # (B, 3, T, H, W)
            yield {"video": video, "clip_id": [p.clip.clip_id for p in plans]}
