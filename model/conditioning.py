"""One condition behind every generation task: a per-latent-frame mask, reference latents and a strength.

A ``Condition`` says which latent frames are given (``mask`` = 1) and what they are (``reference``); the
sampler generates the rest. Every task is only a different condition:

| task                         | mask (latent frames)            | reference                     | strength |
|------------------------------|---------------------------------|-------------------------------|----------|
| text-to-video / text-to-image| all 0 (T' = 1 for an image)     | zeros                         | 1        |
| image-to-video               | frame 0                         | the image's latent at 0       | 1        |
| extend forward               | the first k frames              | the video's latents there     | 1        |
| extend backward              | the last k frames               | the video's latents there     | 1        |
| keyframes / interpolation    | any set of positions            | the keyframes' latents there  | 1        |
| transition A -> B            | first k and last k              | tail of A, head of B          | 1        |
| video-to-video (SDEdit)      | all 0 (or some frames kept)     | the input video's latents     | s < 1    |

How the model uses it (both mechanisms, each for its own reason):
1. **Channels.** The network input is ``[x_t, reference * mask, mask]`` along channels
   (``DiTConfig.in_channels = 2C + 1``). The model sees the given frames clean, whatever the noise level,
   and the mask tells it which frames to keep and which to generate (Wan / SVD style).
2. **Noised replacement in the state.** At every sampler step the given frames of the state are reset to
   the reference noised to the current time with the sampler's own initial noise,
   ``(1 - t) * reference + t * noise``. That is exactly the distribution the network saw for those frames in
   training (plain rectified-flow noising of the clip), so training and sampling agree, and at t = 0 the given
   frames are the reference bit for bit (image-to-video keeps its first frame exactly).
The loss counts only generated frames (``Flow.loss``). ``strength`` (SDEdit) makes the sampler start at
t = strength from the reference noised to that level, instead of from pure noise (0: no step, the reference).

Latent frames, not pixel frames: with the causal VAE (T' = 1 + (T - 1) / 4) pixel frame 0 is latent frame 0
and pixel frame p > 0 falls in latent frame 1 + (p - 1) // 4 (``latent_index``); the decoder turns latent frame 0
into one frame and every later one into a group of 4.

Given frames are encoded where they stand (``given_condition``). Training pins the latents of a whole clip, so
the given frames are laid out at their output frame indices in one clip of the output's length (``context_clip``),
that clip is encoded once, and the latent frames holding a given frame are pinned to its latents. Frames the
request does not give are unknown (the sampler makes them); in the clip they hold a given frame: the nearest one
of the same latent group, else the last given frame before them, else the first after (a still). Each given frame
lands at its own output index, and a given clip fills exactly its frames (a 17-frame clip, 17 frames). Whether the
pinned latents are the given frames' latents inside the clip the sampler makes depends on the VAE's encoder:
- **grouped** (``VAEConfig.grouped_encoder``): latent frame j is made from its own group of 4 frames only (frame 0
  alone), so a group the request gives whole is pinned to exactly its latents inside any clip, wherever it stands
  and whatever is generated around it: image-to-video, extend forward and backward, transitions and keyframes
  that fill their groups (``tests/test_conditioning.py``: <= 1e-5 in fp32). A group given only in part (a single
  keyframe after frame 0, an interpolation's last frame) is pinned to its latents with its other frames holding
  the given one: a still of that frame within its 4 frames;
- **plain causal** (the default): latent frame j is made from every frame up to 4j, so only a latent whose frames
  0 .. 4j are all given (image-to-video, extend forward, a transition's first clip) is exact; a later one gets its
  latents in the clip of held frames, not in the clip that gets generated before it.
``held_positions`` names the latent frames of a request that are pinned to held-frame latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------------------
# The condition
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """mask (B, T') in {0, 1} (1 = given), reference (B, C, T', H, W), strength in [0, 1] (1 = from noise, 0 =
    the reference as it is: see ``edit``)."""

    mask: Tensor
    reference: Tensor
    strength: float = 1.0

    def __post_init__(self) -> None:
        b, _, t = self.reference.shape[:3]
        if self.reference.dim() != 5 or tuple(self.mask.shape) != (b, t):
            raise ValueError(f"mask {tuple(self.mask.shape)} must be (B, T') of reference {tuple(self.reference.shape)}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the latent to generate: (B, C, T', H, W)."""
        return tuple(self.reference.shape)

    def frame_mask(self) -> Tensor:
        """mask broadcast over a latent: (B, 1, T', 1, 1), dtype of the reference."""
        return self.mask[:, None, :, None, None].to(self.reference.dtype)

    def channels(self) -> Tensor:
        """Condition channels for the network: [reference * mask, mask] -> (B, C + 1, T', H, W)."""
        m = self.frame_mask()  # (B, 1, T', 1, 1)
        b, _, t, h, w = self.reference.shape
        return torch.cat([self.reference * m, m.expand(b, 1, t, h, w)], dim=1)

    def pin(self, x: Tensor, noise: Tensor, t: float | Tensor) -> Tensor:
        """Reset the given frames of a state x (B, C, T', H, W) to the reference noised to time t."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1, 1)
        m = self.frame_mask().to(x.dtype)
        given = (1 - t) * self.reference.to(x.dtype) + t * noise
        return torch.where(m > 0, given, x)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Condition":
        """The same condition on another device / dtype."""
        return Condition(self.mask.to(device), self.reference.to(device=device, dtype=dtype), self.strength)


def latent_index(pixel_frame: int, temporal_stride: int = 4) -> int:
    """Latent frame holding a pixel frame under the causal VAE (frame 0 alone, then groups of 4)."""
    return 0 if pixel_frame <= 0 else 1 + (pixel_frame - 1) // temporal_stride


# ----------------------------------------------------------------------------------------------------------
# Builders, one per task; each returns the same Condition
# ----------------------------------------------------------------------------------------------------------


def _empty(batch: int, channels: int, frames: int, height: int, width: int, like: Tensor | None = None) -> Condition:
    kw = dict(device=like.device, dtype=like.dtype) if like is not None else {}
    ref = torch.zeros(batch, channels, frames, height, width, **kw)
    return Condition(torch.zeros(batch, frames, device=ref.device), ref)


def text_to_video(batch: int, channels: int, frames: int, height: int, width: int) -> Condition:
    """Nothing given: every latent frame is generated."""
    return _empty(batch, channels, frames, height, width)


def text_to_image(batch: int, channels: int, height: int, width: int) -> Condition:
    """A video of one latent frame."""
    return _empty(batch, channels, 1, height, width)


def keyframes(frames_latents: Tensor, positions: list[int], frames: int) -> Condition:
    """Given latents (B, C, K, H, W) placed at latent positions (K of them, any order) of a T' = frames video."""
    b, c, k, h, w = frames_latents.shape
    if len(positions) != k or len(set(positions)) != k or not all(0 <= p < frames for p in positions):
        raise ValueError(f"need {k} distinct positions in [0, {frames}), got {positions}")
    cond = _empty(b, c, frames, h, w, like=frames_latents)
    idx = torch.tensor(positions, device=frames_latents.device)
    cond.reference[:, :, idx] = frames_latents
    cond.mask[:, idx] = 1.0
    return cond


def image_to_video(image_latent: Tensor, frames: int) -> Condition:
    """The image's latent (B, C, 1, H, W) is latent frame 0; the other frames - 1 are generated."""
    return keyframes(image_latent, [0], frames)


def extend(video_latents: Tensor, new_frames: int, direction: str = "forward") -> Condition:
    """Continue a video (B, C, K, H, W) by new_frames latent frames after it ("forward") or before it."""
    k = video_latents.shape[2]
    total = k + new_frames
    if direction == "forward":
        return keyframes(video_latents, list(range(k)), total)
    if direction == "backward":
        return keyframes(video_latents, list(range(new_frames, total)), total)
    raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")


def transition(video_a: Tensor, video_b: Tensor, context: int, new_frames: int) -> Condition:
    """Bridge two videos: the last ``context`` latent frames of A, ``new_frames`` generated, the first of B."""
    tail, head = video_a[:, :, -context:], video_b[:, :, :context]
    total = 2 * context + new_frames
    positions = list(range(context)) + list(range(context + new_frames, total))
    return keyframes(torch.cat([tail, head], dim=2), positions, total)


def edit(video_latents: Tensor, strength: float) -> Condition:
    """SDEdit video-to-video: the sampler starts at t = ``strength`` from the input noised to that level.

    ``strength`` 0 keeps the input: no step runs and the result is the input's latents (decoded: its VAE
    reconstruction). A small strength keeps the layout and redraws the detail; 1 starts from pure noise and
    ignores the input (the condition gives no frame, so the network never sees it)."""
    b, c, t, h, w = video_latents.shape
    return Condition(torch.zeros(b, t, device=video_latents.device), video_latents.clone(), strength)


def context_clip(given: dict[int, Tensor], num_frames: int, time_factor: int = 4) -> tuple[Tensor, list[int]]:
    """The clip the given frames are encoded in, and the latent frames that hold a given frame.

    ``given`` maps output pixel frame indices to frames (B, 3, H, W); the clip (B, 3, num_frames, H, W) has each
    at its index, and every other frame holds a given one: the nearest given frame of its own latent group (ties:
    the earlier), else the last given frame before it, else the first after it."""
    if not given:
        raise ValueError("no given frames")
    if any(not 0 <= p < num_frames for p in given):
        raise ValueError(f"given frame indices must be in [0, {num_frames}), got {sorted(given)}")
    keys = sorted(given)
    groups: dict[int, list[int]] = {}
    for p in keys:
        groups.setdefault(latent_index(p, time_factor), []).append(p)
    frames = []
    for f in range(num_frames):
        mine = groups.get(latent_index(f, time_factor))
        if f in given:
            src = f
        elif mine:
            src = min(mine, key=lambda p: (abs(p - f), p))
        else:
            before = [p for p in keys if p < f]
            src = before[-1] if before else keys[0]
        frames.append(given[src])
    return torch.stack(frames, dim=2), sorted(groups)  # (B, 3, T, H, W)


def given_frames(frames: int, time_factor: int = 4, image=None, video=None, video_b=None,
                 keyframes=None) -> dict:
    """{output pixel frame index: frame (h, w, 3)} of a generation request (empty for text-to-video), from media
    arrays ((h, w, 3) images, (T, h, w, 3) clips). A clip at the start (extend forward, a transition's first
    video) gives its last 1 + 4(k - 1) frames, filling latent frames 0 .. k - 1; a clip at the end (extend
    backward, a transition's second video) gives its first 4k frames, filling the last k latent frames (a clip
    of fewer than 4 frames: all of them, their group held from its first).
    At least one latent frame stays generated (a transition: one between its two clips)."""
    latent_t = 1 + (frames - 1) // time_factor

    def one(f) -> np.ndarray:
        f = np.asarray(f)
        return f[0] if f.ndim == 4 else f

    if keyframes or image is not None:
        keys = {int(p): one(f) for p, f in (keyframes or {}).items()}
        if image is not None:
            keys[0] = one(image)
        return keys
    k = latent_t - 1 if video is None or video_b is None else (latent_t - 1) // 2  # most latent frames per clip
    out = {}
    if video is not None:
        k_a = min(1 + (len(video) - 1) // time_factor, k)
        out.update(enumerate(video[len(video) - (1 + time_factor * (k_a - 1)):]))
    if video_b is not None:
        n = time_factor * min(len(video_b) // time_factor, k) or len(video_b)  # whole groups when it has 4
        out.update({frames - n + i: f for i, f in enumerate(video_b[:n])})
    return out


def held_positions(given: Iterable[int], num_frames: int, time_factor: int = 4, grouped: bool = False) -> list[int]:
    """The latent frames holding a given frame (output pixel indices ``given``) whose pinned latents depend on a
    frame the request does not give, so ``given_condition`` pins them to their latents in ``context_clip``'s held
    frames, not to those of the clip the sampler makes: with a ``grouped`` encoder, the groups given only in part;
    with a plain causal one, every latent frame j that some frame 0 .. 4j is missing from."""
    given = set(given)
    out = []
    for j in sorted({latent_index(p, time_factor) for p in given}):
        first = 0 if j == 0 else 1 + (j - 1) * time_factor  # first pixel frame of latent j's group
        last = min(0 if j == 0 else j * time_factor, num_frames - 1)
        needed = range(first if grouped else 0, last + 1)  # the frames latent j is made from
        if any(f not in given for f in needed):
            out.append(j)
    return out


def given_condition(given: dict[int, Tensor], num_frames: int, encode: Callable[[Tensor], Tensor],
                    time_factor: int = 4) -> Condition:
    """The condition that pins the latent frames holding the ``given`` frames ({output pixel index: (B, 3, H, W)})
    of a ``num_frames`` clip to their latents in ``context_clip`` (``encode``: pixels (B, 3, T, H, W) -> latents
    (B, C, T', h, w)). Image-to-video, keyframes, extend forward and backward and transitions all come here. With
    a grouped encoder every latent frame not in ``held_positions`` is exactly its latents inside the output clip."""
    clip, positions = context_clip(given, num_frames, time_factor)
    latents = encode(clip)  # (B, C, T', h, w)
    if len(positions) >= latents.shape[2]:
        raise ValueError(f"the given frames fill all {latents.shape[2]} latent frames; nothing is left to generate")
    mask = torch.zeros(latents.shape[0], latents.shape[2], device=latents.device)
    mask[:, positions] = 1.0
    return Condition(mask, latents * mask[:, None, :, None, None].to(latents.dtype))


# ----------------------------------------------------------------------------------------------------------
# Training: random tasks so one model learns them all
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskMix:
    """Probability of each training task (normalised). Images (T' = 1) always train as text-to-image."""

    text_to_video: float = 0.5
    image_to_video: float = 0.15
    extend_forward: float = 0.1
    extend_backward: float = 0.05
    keyframes: float = 0.1
    transition: float = 0.1

    def weights(self) -> Tensor:
        w = torch.tensor([self.text_to_video, self.image_to_video, self.extend_forward, self.extend_backward,
                          self.keyframes, self.transition], dtype=torch.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"task probabilities must be >= 0 and not all 0: {self}")
        return w / w.sum()


TASKS = ("text_to_video", "image_to_video", "extend_forward", "extend_backward", "keyframes", "transition")


def _training_mask(frames: int, task: str, rng: torch.Generator) -> Tensor:
    """The (T',) given-frame mask of one training sample for one task; at least one frame stays generated."""
    mask = torch.zeros(frames)
    if frames < 2 or task == "text_to_video":
        return mask

    def rand(lo: int, hi: int) -> int:  # uniform integer in [lo, hi]
        return int(torch.randint(lo, hi + 1, (1,), generator=rng))

    if task == "image_to_video":
        mask[0] = 1
    elif task == "extend_forward":
        mask[: rand(1, frames - 1)] = 1
    elif task == "extend_backward":
        mask[frames - rand(1, frames - 1):] = 1
    elif task == "keyframes":
        k = rand(1, frames - 1)
        mask[torch.randperm(frames, generator=rng)[:k]] = 1
    elif task == "transition":
        if frames < 3:
            mask[0] = 1
        else:
            ctx = rand(1, (frames - 1) // 2)
            mask[:ctx] = 1
            mask[frames - ctx:] = 1
    return mask


def sample_task_masks(batch: int, frames: int, rng: torch.Generator, probs: TaskMix = TaskMix()) -> Tensor:
    """A random task per sample, as its (B, T') given-frame mask (CPU). ``rng`` is a CPU generator."""
    tasks = torch.multinomial(probs.weights(), batch, replacement=True, generator=rng)  # (B,)
    return torch.stack([_training_mask(frames, TASKS[int(i)], rng) for i in tasks])  # (B, T')


def sample_training_condition(latents: Tensor, rng: torch.Generator, probs: TaskMix = TaskMix()) -> Condition:
    """A random task per sample of a batch of clean latents (B, C, T', H, W); reference = latents x mask.

    ``rng`` is a CPU generator: the same seed gives the same tasks on any device.
    """
    b, _, t, _, _ = latents.shape
    return masked_condition(latents, sample_task_masks(b, t, rng, probs))


def masked_condition(latents: Tensor, mask: Tensor) -> Condition:
    """The condition that gives the frames ``mask`` (B, T') marks: reference = latents x mask (on their device)."""
    mask = mask.to(latents.device, non_blocking=True)
    return Condition(mask, latents * mask[:, None, :, None, None].to(latents.dtype))
