"""Resolution / aspect-ratio / duration buckets, each with a batch size from a token budget.

The DiT runs one token grid per batch (no padding, no attention mask: flash attention stays on). Clips of any
size are resized and center-cropped to the nearest bucket's (frames, height, width); each bucket's batch size
is ``token_budget // tokens_per_sample`` so a step costs about the same in every bucket.

Sizes are in pixels and frames. Heights and widths are multiples of the VAE's spatial stride times the patch
(8 x 2 = 16 by default, 4 x 4 for a 4x-spatial VAE); frame counts are 1 + 4k (the causal VAE's
T' = 1 + (T - 1) / 4); one frame is an image. ``vae_stride`` must be the VAE's (``VideoVAE.stride``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketConfig:
    """The bucket grid and the budget that sets batch sizes."""

    areas: tuple[int, ...] = (256 * 256, 512 * 512)  # target pixel areas (one "resolution" each)
    aspect_ratios: tuple[float, ...] = (9 / 16, 3 / 4, 1.0, 4 / 3, 16 / 9)  # width / height
    frames: tuple[int, ...] = (1, 17, 33, 49, 65)  # pixel frame counts, each 1 + 4k
    token_budget: int = 65536  # DiT tokens per batch (per GPU)
    max_batch: int = 256
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # (t, h, w) compression of the VAE
    patch: tuple[int, int, int] = (1, 2, 2)  # the DiT's patch in latent voxels


@dataclass(frozen=True)
class Bucket:
    """One (frames, height, width) shape and its batch size."""

    frames: int
    height: int
    width: int
    batch_size: int
    tokens: int  # DiT tokens of one sample
    ratio: float  # the nominal aspect ratio (width / height) this bucket stands for; sizes round to 16
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # (t, h, w) compression of the VAE the latent comes from

    @property
    def aspect(self) -> float:
        """The exact width / height of the bucket (close to ``ratio``)."""
        return self.width / self.height

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(T', H', W') of this bucket's latent (before patching)."""
        st, sh, sw = self.vae_stride
        return 1 + (self.frames - 1) // st, self.height // sh, self.width // sw


def tokens_per_sample(frames: int, height: int, width: int, cfg: BucketConfig) -> int:
    """DiT tokens of one clip: latent frames x latent rows x latent columns over the patch."""
    st, sh, sw = cfg.vae_stride
    pt, ph, pw = cfg.patch
    latent_t = 1 + (frames - 1) // st
    return math.ceil(latent_t / pt) * (height // sh // ph) * (width // sw // pw)


def make_buckets(cfg: BucketConfig = BucketConfig()) -> list[Bucket]:
    """Every (area, aspect, frames) combination whose one sample fits the budget."""
    unit = cfg.vae_stride[1] * cfg.patch[1]  # 16 (8 x 2): sizes must be multiples of this
    for f in cfg.frames:
        if (f - 1) % cfg.vae_stride[0]:
            raise ValueError(f"frame count {f} is not 1 + {cfg.vae_stride[0]}k")
    buckets = []
    for area in cfg.areas:
        for ar in cfg.aspect_ratios:
            height = max(unit, round(math.sqrt(area / ar) / unit) * unit)
            width = max(unit, round(math.sqrt(area * ar) / unit) * unit)
            for f in cfg.frames:
                n = tokens_per_sample(f, height, width, cfg)
                if n > cfg.token_budget:
                    continue
                batch = min(cfg.max_batch, cfg.token_budget // n)
                buckets.append(Bucket(f, height, width, batch, n, ar, tuple(cfg.vae_stride)))
    return buckets


def assign_bucket(buckets: list[Bucket], frames: int, height: int, width: int) -> Bucket | None:
    """The bucket for a clip of (frames, height, width), or None if it is shorter than every bucket.

    1. aspect ratio: the nearest in log space (a crop of the least area);
    2. duration: the longest bucket the clip can fill (clips are trimmed, never stretched);
    3. resolution: the largest bucket area not above the clip's (no upsampling), else the smallest.
    A clip of one frame goes to the image buckets (frames = 1).
    """
    fitting = [b for b in buckets if b.frames <= frames]
    if not fitting:
        return None
    log_ar = math.log(width / height)
    best_ar = min({b.ratio for b in fitting}, key=lambda a: abs(math.log(a) - log_ar))
    fitting = [b for b in fitting if b.ratio == best_ar]
    longest = max(b.frames for b in fitting)
    fitting = [b for b in fitting if b.frames == longest]
    not_upsampled = [b for b in fitting if b.height * b.width <= height * width]
    if not_upsampled:
        return max(not_upsampled, key=lambda b: b.height * b.width)
    return min(fitting, key=lambda b: b.height * b.width)
