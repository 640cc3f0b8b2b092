"""Packed training batches (``train-dit --pack``): clips of mixed (frames, height, width) in fixed-token rows.

Bucketing gives every batch one latent shape, so a clip waits for its bucket and odd shapes are cropped to the
nearest one. Packing puts clips of any shapes one after another into rows of ``length`` tokens, never splitting a
clip, and the DiT keeps them apart (``model/packed.py``: document masks, positions, time and caption per clip).

1. ``PackPlan``: the clips' token counts -> for each global batch, ``rows`` rows of record indices. Per epoch the
   clips are shuffled, cut into windows of ``window`` clips, and each window is packed best-fit decreasing
   (``pack_bins``: the largest clip first, each into the fullest row it fits). Rows of a window filled below
   ``min_fill`` go back into the next window (not past a quarter of a window; the last window keeps all), then
   the epoch's rows are shuffled and grouped. A function of the seed only, so resume is exact.
2. ``train.latents.load_clips`` (shared with the unpacked batches): records -> latents (normalised), one
   caption per clip, in row order.
3. ``build_step``: latents, captions and the step's random draws (one ``Flow.draw`` per clip: task, caption
   dropout, time shifted for the clip's own token count, noise) -> ``PackedStep``: clean latents, noise and
   given-frame masks as packed tokens, per-clip times and captions, the layout. All on the CPU.
4. ``packed_loss``: the rectified-flow loss of a ``PackedStep``.

Loss weighting: per token. Every generated latent element of every clip counts once: the loss is the sum of
squared errors over the generated frames of all clips over their element count. On a batch of clips of one shape
it equals ``Flow.loss`` exactly (Flow.loss averages frames, and every frame of a bucket has the same H x W); it is
the weighting bucketed training has across steps in expectation (each bucketed batch holds about
``token_budget`` tokens and is averaged, so every token weighs about 1 / token_budget), so ``--pack`` trains the
same objective. A per-clip mean would instead weigh a one-frame image as much as a 65-frame video.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, insort
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor

from model.dit import pack_tokens
from model.flow import Draws, Flow, apply_caption_drop
from model.packed import BACKENDS, PackedLayout, varlen_kernel, pack_layout
from train.latents import load_clips

# ----------------------------------------------------------------------------------------------------------
# The packer
# ----------------------------------------------------------------------------------------------------------


def pack_bins(sizes: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of ``sizes``, largest first, each into the fullest bin with room for it (else a
    new bin). No item is split and no bin holds more than ``capacity``."""
    too_big = [s for s in sizes if s > capacity]
    if too_big:
        raise ValueError(f"a clip of {max(too_big)} tokens does not fit a packed row of {capacity}")
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, bin), sorted: bisect finds the fullest bin that fits
    for i in sorted(range(len(sizes)), key=lambda j: -sizes[j]):
        j = bisect_left(room, (sizes[i], -1))
        if j == len(room):
            bins.append([i])
            left, b = capacity - sizes[i], len(bins) - 1
        else:
            left, b = room.pop(j)
            bins[b].append(i)
            left -= sizes[i]
        if left > 0:
            insort(room, (left, b))
    return bins


class PackPlan:
    """Global batch g -> ``rows`` rows (lists of record indices) of at most ``length`` tokens each."""

    def __init__(self, tokens: list[int], length: int, rows: int, seed: int, window: int = 4096,
                 min_fill: float = 0.95):
        if not tokens:
            raise ValueError("no clips to pack")
        if max(tokens) > length:
            i = int(np.argmax(tokens))
            raise ValueError(f"clip {i} has {tokens[i]} tokens, more than a packed row of {length}: raise "
                             f"--pack_tokens to at least {tokens[i]}")
        self.tokens, self.length, self.rows, self.seed = list(tokens), length, max(1, rows), seed
        self.window, self.min_fill = max(1, window), min_fill
        self._counts: list[int] = []  # batches in each epoch so far
        self._epoch: tuple[int, list[list[list[int]]]] | None = None
        self._lock = threading.Lock()  # the trainer prepares batches on threads

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """Every packed row of an epoch, in training order; each clip in exactly one row."""
        rng = np.random.default_rng([self.seed, epoch, 7])
        order = [int(i) for i in rng.permutation(len(self.tokens))]
        rows, carried = [], []
        for start in range(0, len(order), self.window):
            items = carried + order[start:start + self.window]
            last = start + self.window >= len(order)
            carried = []
            for b in pack_bins([self.tokens[i] for i in items], self.length):
                row = [items[j] for j in b]
                underfull = sum(self.tokens[i] for i in row) < self.min_fill * self.length
                if underfull and not last and len(carried) + len(row) <= self.window // 4:
                    carried += row  # packed again with the next window's clips
                else:
                    rows.append(row)
        return [rows[j] for j in rng.permutation(len(rows))]

    def _batches(self, epoch: int) -> list[list[list[int]]]:
        if self._epoch is None or self._epoch[0] != epoch:
            rows = self.epoch_rows(epoch)
            self._epoch = (epoch, [rows[k:k + self.rows] for k in range(0, len(rows), self.rows)])
        return self._epoch[1]

    def batch(self, g: int) -> list[list[int]]:
        """The rows of global batch g (epochs follow one another; each may hold a different number of batches)."""
        with self._lock:
            epoch, first = 0, 0
            while True:
                if epoch == len(self._counts):
                    self._counts.append(len(self._batches(epoch)))
                if g < first + self._counts[epoch]:
                    return self._batches(epoch)[g - first]
                first += self._counts[epoch]
                epoch += 1

    def fill(self, epoch: int = 0) -> float:
        """Share of the epoch's row slots that hold clip tokens."""
        rows = self.epoch_rows(epoch)
        return sum(self.tokens) / (len(rows) * self.length)


# ----------------------------------------------------------------------------------------------------------
# A step's tensors
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedStep:
    """Everything one packed training step needs (CPU-built; ``to`` moves it in one go)."""

    x0: Tensor  # (S, L, C*pt*ph*pw) clean latents as packed tokens, zeros in the padding
    noise: Tensor  # (S, L, C*pt*ph*pw) the noise, packed the same way
    given: Tensor  # (S, L, pt*ph*pw) 1 where the voxel is in a given (condition) frame of its clip's task
    t: Tensor  # (K,) each clip's time (shifted for its own token count)
    text: Tensor  # (K, Lt, text_dim) each clip's caption, empty where caption dropout chose so
    text_mask: Tensor  # (K, Lt) bool
    layout: PackedLayout

    @property
    def tokens(self) -> int:
        """Clip tokens of the step (padding not counted)."""
        return sum(self.layout.tokens)

    def _map(self, fn) -> PackedStep:
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedStep:
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedStep:
        return self._map(lambda x: x.pin_memory())


def draw_clips(flow: Flow, latents: list[Tensor], rng: torch.Generator) -> list[Draws]:
    """One ``Flow.draw`` per clip, in order, from one CPU generator: each clip's task, caption dropout, time
    (shifted for its own token count) and noise, as if it were a batch of one."""
    return [flow.draw((1, *z.shape), rng) for z in latents]


def build_step(latents: list[Tensor], text: Tensor, text_mask: Tensor, rows: list[list[int]], draws: list[Draws],
               length: int, patch: tuple[int, int, int], backend: str = "sdpa") -> PackedStep:
    """A ``PackedStep`` from clips (C, T', H', W') each, their captions (K, Lt, D) and mask (K, Lt), the rows
    (lists of indices into ``latents``) and each clip's draws, in the order of ``latents``."""
    order = [i for row in rows for i in row]  # layout order: row by row
    if sorted(order) != list(range(len(latents))):
        raise ValueError("rows must hold every clip exactly once")
    pt, ph, pw = patch
    grids = [[(latents[i].shape[1] // pt, latents[i].shape[2] // ph, latents[i].shape[3] // pw) for i in row]
             for row in rows]
    drop = torch.cat([draws[i].drop for i in order])  # (K,)
    text, text_mask = apply_caption_drop(text[order], text_mask[order], drop)
    layout = pack_layout(grids, length, text_mask, backend=backend)
    given = []
    for i in order:
        _, t, h, w = latents[i].shape
        given.append(draws[i].mask[0].to(latents[i].dtype)[None, :, None, None].expand(1, t, h, w))
    return PackedStep(
        x0=pack_tokens([latents[i] for i in order], layout, patch),
        noise=pack_tokens([draws[i].noise[0].to(latents[i].dtype) for i in order], layout, patch),
        given=pack_tokens(given, layout, patch),
        t=torch.cat([draws[i].t for i in order]),
        text=text, text_mask=text_mask, layout=layout)


def packed_loss(model, step: PackedStep, patch: tuple[int, int, int],
                per_frame: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Rectified-flow loss of a packed step (per-token weighting, see the module docstring); ``model`` is the DiT
    (or its DDP / FSDP wrapper), called once on the packed rows. With ``per_frame``, also the loss of each latent
    frame index over the clips that generate it (detached; 0 where none does), for logging.

    The same arithmetic as ``Flow.loss`` on each clip: x_t = (1 - t) x0 + t noise with the clip's t; the input is
    [x_t, reference * mask, mask] (``Condition.channels``), here as packed tokens; the target is noise - x0."""
    lay = step.layout
    s, n, cp = step.x0.shape
    pv = patch[0] * patch[1] * patch[2]
    c = cp // pv
    x0, noise, dtype = step.x0, step.noise, step.x0.dtype
    t = step.t.to(dtype)  # (K,)
    tt = t[lay.seg.clamp_min(0)][..., None]  # (S, L, 1): each token its clip's time
    x_t = (1 - tt) * x0 + tt * noise  # (S, L, C*pv)
    m = step.given.to(dtype)  # (S, L, pv)
    reference = x0.view(s, n, c, pv) * m[:, :, None]  # the condition's reference: latents x mask
    x_in = torch.cat([x_t, (reference * m[:, :, None]).flatten(2), m], dim=-1)  # (S, L, (2C+1)*pv)
    v = model(x_in, t, step.text, step.text_mask, packed=lay)  # (S, L, C*pv)
    err = (v.float() - (noise - x0).float()).pow(2).view(s, n, c, pv)  # (S, L, C, pv)
    w = (1.0 - step.given.float()) * (lay.seg >= 0)[..., None]  # (S, L, pv): generated voxels of real tokens
    loss = (err * w[:, :, None]).sum() / (c * w.sum()).clamp_min(1.0)
    if not per_frame:
        return loss
    pt = patch[0]
    e = (err.detach() * w[:, :, None]).sum(2).view(s, n, pt, -1).sum(-1)  # (S, L, pt): per token and sub-frame
    cnt = c * w.view(s, n, pt, -1).sum(-1)  # (S, L, pt)
    frame = (lay.pos[..., :1] * pt + torch.arange(pt, device=x0.device)).flatten()  # latent frame of each
    frames = max(g[0] for g in lay.grids) * pt
    total = torch.zeros(frames, device=x0.device).index_add_(0, frame, e.flatten())
    count = torch.zeros(frames, device=x0.device).index_add_(0, frame, cnt.flatten())
    return loss, total / count.clamp_min(1.0)


# ----------------------------------------------------------------------------------------------------------
# train-dit --pack
# ----------------------------------------------------------------------------------------------------------


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: the flash varlen kernel on CUDA when one is importable, else FlexAttention on CUDA; SDPA with
    dense masks on the CPU."""
    if backend == "auto":
        if device.type != "cuda":
            return "sdpa"
        return "varlen" if varlen_kernel() is not None else "flex"
    if backend not in BACKENDS:
        raise ValueError(f"pack_attention must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


class Packer:
    """What ``train-dit --pack`` adds to the loop: the plan, each step's CPU batch, and its loss.

    Rows of ``cfg.pack_tokens`` tokens (0: ``cfg.token_budget``), ``token_budget // pack_tokens`` rows a step
    (at least one), so a packed step holds as many token slots as a bucketed one may. Step g draws its random
    numbers from the generator the unpacked loop uses (``seed * 1_000_003 + g``), one clip after another."""

    def __init__(self, cfg, records: list, patch: tuple[int, int, int], flow: Flow, text_dim: int,
                 scale: float, shift: float, device: torch.device):
        self.cfg, self.records, self.patch, self.flow = cfg, records, tuple(patch), flow
        self.text_dim, self.scale, self.shift = text_dim, scale, shift
        self.length = int(cfg.pack_tokens or cfg.token_budget)
        self.backend = resolve_backend(cfg.pack_attention, device)
        pt, ph, pw = self.patch
        tokens = [math.ceil(r.latent_shape[1] / pt) * (r.latent_shape[2] // ph) * (r.latent_shape[3] // pw)
                  for r in records]
        self.plan = PackPlan(tokens, self.length, max(1, cfg.token_budget // self.length), cfg.seed)

    def describe(self) -> str:
        return (f"packed: rows of {self.length} tokens, {self.plan.rows} a step, {self.plan.fill():.1%} filled "
                f"(epoch 0), attention {self.backend}")

    def prepare(self, source, g: int, pin: bool = False) -> PackedStep:
        rows = self.plan.batch(g)
        idx = [i for row in rows for i in row]
        latents, text, mask = load_clips(source, self.records, idx, self.cfg.caption_mix,
                                         np.random.default_rng([self.cfg.seed, g, 5]), self.text_dim, self.scale,
                                         self.shift)
        draws = draw_clips(self.flow, latents, torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + g))
        positions, k = [], 0
        for row in rows:
            positions.append(list(range(k, k + len(row))))
            k += len(row)
        step = build_step(latents, text, mask, positions, draws, self.length, self.patch, self.backend)
        return step.pin_memory() if pin else step

    def loss(self, step: PackedStep, device: torch.device) -> tuple[Tensor, Tensor, int]:
        """(loss, per-frame loss, clip tokens) of a prepared step, moved to ``device`` first."""
        loss, per_frame = packed_loss(self.flow.model, step.to(device, non_blocking=True), self.patch, per_frame=True)
        return loss, per_frame, step.tokens


# ----------------------------------------------------------------------------------------------------------
# A realistic mix of clip shapes (for the packer's tests and benchmark)
# ----------------------------------------------------------------------------------------------------------

# (width, height, weight) of source videos: the frame sizes of the real test videos (720p, 1080p, 2.35:1 scope,
# PAL 4:3 with non-square pixels shown at 838x576, 432p/360p web video, 4:3 VGA, 3:2) plus phone portrait and square
SOURCES = ((1280, 720, 0.30), (1920, 1080, 0.20), (1280, 544, 0.07), (838, 576, 0.05), (768, 432, 0.08),
           (640, 360, 0.07), (640, 480, 0.06), (480, 320, 0.03), (1080, 1920, 0.10), (1080, 1080, 0.04))


def shape_mix(n: int, seed: int = 0, max_tokens: int = 32768,
              areas: tuple[int, ...] = (256 * 256, 384 * 384, 512 * 512), image_share: float = 0.2,
              channels: int = 16, patch: tuple[int, int, int] = (1, 2, 2),
              bucketed: bool = False) -> list[tuple[int, int, int, int]]:
    """Latent shapes (C, T', H', W') of ``n`` curated clips: a source frame size from ``SOURCES``, scaled to one of
    ``areas`` at its own aspect ratio (sides multiples of 16 px), ``image_share`` single frames and otherwise
    17-129 frames (1 + 4k), trimmed to the longest that keeps a clip within ``max_tokens``; 8x8x4 VAE strides.
    ``bucketed``: each clip as ``tessera cache-latents`` stores it today, resized to its nearest bucket."""
    from model.buckets import BucketConfig, assign_bucket, make_buckets

    rng = np.random.default_rng([seed, 11])
    weights = np.array([w for _, _, w in SOURCES])
    buckets = make_buckets(BucketConfig(token_budget=max_tokens, patch=patch)) if bucketed else None
    pt, ph, pw = patch
    shapes = []
    for _ in range(n):
        w, h, _ = SOURCES[rng.choice(len(SOURCES), p=weights / weights.sum())]
        area = min(areas[rng.integers(len(areas))], max_tokens * 64 * ph * pw)  # one frame always fits
        f = min(w * h, area) / (w * h)
        height, width = max(16, round(h * f ** 0.5 / 16) * 16), max(16, round(w * f ** 0.5 / 16) * 16)
        frames = 1 if rng.random() < image_share else 1 + 4 * int(rng.integers(4, 33))
        if buckets is not None:
            b = assign_bucket(buckets, frames, h, w)
            frames, height, width = b.frames, b.height, b.width
        per_frame = (height // 8 // ph) * (width // 8 // pw)
        latent_t = min(1 + (frames - 1) // 4, max(1, max_tokens // per_frame) * pt)  # trimmed to fit
        latent_t = max(pt, latent_t // pt * pt)  # whole temporal patches
        shapes.append((channels, latent_t, height // 8, width // 8))
    return shapes
