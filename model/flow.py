"""Rectified flow: the training objective and the sampler, kept apart from the network.

Convention: x_t = (1 - t) * x_0 + t * noise, t in [0, 1] (t = 1 is pure noise); the network predicts the
velocity v = noise - x_0 = dx_t/dt, and sampling integrates dx/dt = v from t = 1 down to t = 0.

- ``time_shift``: one small function for the resolution- and length-aware shift. A video of n tokens keeps
  the same "how much is still unknown" at time t as a reference of n_0 tokens shifted by sqrt(n / n_0) (the
  SNR argument of SD3, sec. 5.3.2): t' = s t / (1 + (s - 1) t). More tokens -> more time spent at high noise.
- ``Flow(model).loss``: logit-normal t (SD3), shifted by the clip's token count; caption dropout for
  classifier-free guidance; the loss is averaged over generated latent frames only (the condition's given
  frames carry no loss).
- ``denoise``: Euler or Heun over a shifted grid with classifier-free guidance, or a stochastic (ancestral,
  DDIM-eta) step that re-noises part of the state at every step; the condition's given frames are pinned at
  every step (``Condition.pin``). The same seed gives the same latents on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.conditioning import Condition, TaskMix, masked_condition, sample_task_masks

# ----------------------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------------------


def shift_factor(num_tokens: int, base_tokens: int = 1024, max_shift: float = 8.0, scale: float = 1.0) -> float:
    """s = min(clamp(sqrt(num_tokens / base_tokens), 1, ...) * scale, max_shift).

    base_tokens = 1024 is a 512x512 image (64x64 latent, 2x2 patches) and gets no shift; a 512x512, 61-frame
    video (16 latent frames, 16384 tokens) gets s = 4, about what Wan and HunyuanVideo sample with.
    ``scale`` multiplies the token-count shift for latents the count does not describe: a VAE with 4x4 spatial
    stride has 4x the latent positions per pixel of an 8x8 one, neighbouring positions are strongly correlated,
    and the same t leaves more of the clip readable, so the layout (where the shape is, where it goes) is
    decided at noise levels an unscaled schedule rarely trains on.
    """
    if scale <= 0:
        raise ValueError(f"shift scale must be > 0, got {scale}")
    return min(max(math.sqrt(num_tokens / base_tokens), 1.0) * scale, max_shift)


def time_shift(t: Tensor, num_tokens: int, scale: float = 1.0) -> Tensor:
    """Shift t towards noise for a latent of num_tokens tokens: t' = s t / (1 + (s - 1) t)."""
    s = shift_factor(num_tokens, scale=scale)
    return s * t / (1 + (s - 1) * t)


def sampling_times(steps: int, num_tokens: int, t_start: float = 1.0, scale: float = 1.0,
                   shifted: bool = True) -> Tensor:
    """steps + 1 decreasing times from t_start to 0, evenly spaced before the shift (float64, CPU).

    ``shifted=False`` (a model trained with ``FlowConfig.shift`` off): evenly spaced, no shift."""
    if not shifted:
        return torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64)
    s = shift_factor(num_tokens, scale=scale)
    u_start = t_start / (s - (s - 1) * t_start)  # inverse of the shift, so the grid starts at t_start exactly
    return time_shift(torch.linspace(u_start, 0.0, steps + 1, dtype=torch.float64), num_tokens, scale)


def num_tokens(latent_shape: tuple[int, ...], patch: tuple[int, int, int]) -> int:
    """Tokens of a latent (B, C, T', H, W) under a patch size."""
    return (latent_shape[2] // patch[0]) * (latent_shape[3] // patch[1]) * (latent_shape[4] // patch[2])


# ----------------------------------------------------------------------------------------------------------
# Text for guidance
# ----------------------------------------------------------------------------------------------------------


def null_text(text: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The empty caption: zero tokens with an all-False mask (the DiT's learned null token stays valid)."""
    return torch.zeros_like(text), torch.zeros_like(mask, dtype=torch.bool)


def drop_captions(text: Tensor, mask: Tensor, p: float, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """Replace each caption of a batch by the empty caption with probability p (CPU generator)."""
    return apply_caption_drop(text, mask, torch.rand(text.shape[0], generator=rng) < p)


def apply_caption_drop(text: Tensor, mask: Tensor, drop: Tensor) -> tuple[Tensor, Tensor]:
    """The empty caption where ``drop`` (B,) is True."""
    drop = drop.to(text.device, non_blocking=True)
    empty_text, empty_mask = null_text(text, mask)
    text = torch.where(drop[:, None, None], empty_text, text)
    mask = torch.where(drop[:, None], empty_mask, mask.bool())
    return text, mask


# ----------------------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowConfig:
    """Training-time choices of the objective."""

    logit_mean: float = 0.0  # logit-normal timestep density (SD3): t = sigmoid(N(mean, std))
    logit_std: float = 1.0
    shift: bool = True  # resolution- and length-aware shift of the sampled t
    shift_scale: float = 1.0  # multiplies that shift (``shift_factor``); sampling uses the same value
    # share of samples whose t is uniform on [0, 1] instead (a strong shift leaves few samples at low noise,
    # where edges and corners are drawn: at scale 3 only ~1.4 % have t < 0.25, against ~14 % unshifted)
    uniform_share: float = 0.0
    caption_dropout: float = 0.1  # probability of training on the empty caption (for CFG)
    tasks: TaskMix = TaskMix()  # random generation task per sample (model/conditioning.py)


@dataclass
class Draws:
    """The random choices of one training step, drawn on the CPU (``Flow.draw``) in the order ``Flow.loss`` has
    always drawn them, so they can be made before the step (and pinned for an asynchronous copy) without changing
    a single number."""

    mask: Tensor | None  # (B, T') given-frame mask of each sample's task; None when the caller gives the condition
    drop: Tensor  # (B,) bool: train this sample on the empty caption
    t: Tensor  # (B,) times, shifted
    noise: Tensor  # (B, C, T', H, W) float32

    def pin_memory(self) -> Draws:
        return Draws(*(None if x is None else x.pin_memory() for x in (self.mask, self.drop, self.t, self.noise)))


class Flow(nn.Module):
    """Wraps a velocity network ``model(x_in, t, text, text_mask)`` whose input is [x_t, condition channels]."""

    def __init__(self, model: nn.Module, cfg: FlowConfig = FlowConfig()):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.patch = getattr(model, "module", model).cfg.patch  # read through a DDP wrapper too

    def velocity(self, x: Tensor, t: Tensor, cond: Condition, text: Tensor, text_mask: Tensor | None) -> Tensor:
        """v(x_t, t | condition, text) for a state x (B, C, T', H, W) and times t (B,)."""
        x_in = torch.cat([x, cond.channels().to(x.dtype)], dim=1)  # (B, 2C + 1, T', H, W)
        return self.model(x_in, t, text, text_mask)

    def sample_t(self, batch: int, tokens: int, rng: torch.Generator) -> Tensor:
        """Logit-normal times (B,), shifted for the token count when cfg.shift, a ``uniform_share`` of them
        uniform instead (CPU generator)."""
        t = torch.sigmoid(self.cfg.logit_mean + self.cfg.logit_std * torch.randn(batch, generator=rng))
        t = time_shift(t, tokens, self.cfg.shift_scale) if self.cfg.shift else t
        if self.cfg.uniform_share > 0:  # drawn only when asked, so other configs keep every random number
            pick = torch.rand(batch, generator=rng) < self.cfg.uniform_share
            t = torch.where(pick, torch.rand(batch, generator=rng), t)
        return t

    def draw(self, shape: tuple[int, ...], rng: torch.Generator, tasks: bool = True) -> Draws:
        """Every random choice of a loss on latents of ``shape`` (B, C, T', H, W), from the CPU generator ``rng``:
        tasks (unless ``tasks=False``: the caller gives the condition), caption dropout, times, noise."""
        b = shape[0]
        mask = sample_task_masks(b, shape[2], rng, self.cfg.tasks) if tasks else None
        drop = torch.rand(b, generator=rng) < self.cfg.caption_dropout
        t = self.sample_t(b, num_tokens(tuple(shape), self.patch), rng)
        return Draws(mask, drop, t, torch.randn(tuple(shape), generator=rng))

    def loss(
        self,
        x0: Tensor,
        text: Tensor,
        text_mask: Tensor,
        rng: torch.Generator | None = None,
        cond: Condition | None = None,
        draws: Draws | None = None,
        per_frame: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Rectified-flow loss on clean latents x0 (B, C, T', H, W) with a random task (or the given cond);
        with ``per_frame``, also the loss of each latent frame (T',) over the clips that generate it (detached;
        0 where none does), for logging.

        All randomness (times, noise, tasks, caption dropout) comes from the CPU generator ``rng``, so a
        training step is reproducible from its seed on any device; or from ``draws`` made beforehand by
        ``draw`` with such a generator (the same numbers; pinned, they reach the device without a sync).
        """
        if draws is None:
            if rng is None:
                raise ValueError("give rng or draws")
            draws = self.draw(tuple(x0.shape), rng, tasks=cond is None)
        dev, dtype = x0.device, x0.dtype
        if cond is None:
            if draws.mask is None:
                raise ValueError("draws were made without tasks (tasks=False): give cond")
            cond = masked_condition(x0, draws.mask)
        text, text_mask = apply_caption_drop(text, text_mask, draws.drop)
        t = draws.t.to(dev, non_blocking=True).to(dtype)  # (B,)
        noise = draws.noise.to(dev, non_blocking=True).to(dtype)  # (B, C, T', H, W)
        tb = t[:, None, None, None, None]
        x_t = (1 - tb) * x0 + tb * noise  # given frames are noised alike: see Condition.pin
        v = self.velocity(x_t, t, cond, text, text_mask)  # (B, C, T', H, W)
        err = (v.float() - (noise - x0).float()).pow(2).mean(dim=(1, 3, 4))  # (B, T')
        weight = 1.0 - cond.mask.float()  # (B, T'): generated frames only
        loss = (err * weight).sum() / weight.sum().clamp_min(1.0)
        if not per_frame:
            return loss
        return loss, (err.detach() * weight).sum(0) / weight.sum(0).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------------------


def parse_solver(solver: str) -> tuple[str, float]:
    """``"euler"`` | ``"heun"`` | ``"sde"`` | ``"sde:ETA"`` -> (name, eta); eta is 1 for a bare "sde", 0 otherwise."""
    name, sep, value = str(solver).partition(":")
    if name not in ("euler", "heun", "sde") or (sep and name != "sde"):
        raise ValueError(f"solver must be 'euler', 'heun', 'sde' or 'sde:ETA', got {solver!r}")
    if name != "sde":
        return name, 0.0
    try:
        eta = float(value) if sep else 1.0
    except ValueError:
        raise ValueError(f"solver {solver!r}: ETA must be a number in (0, 1]") from None
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"solver {solver!r}: ETA must be in (0, 1], got {eta}")
    return name, eta


def ancestral_step(x: Tensor, v: Tensor, t: float, t_next: float, eta: float, z: Tensor) -> Tensor:
    """One stochastic step of x_t = (1 - t) x_0 + t noise from t to t_next < t (DDIM with eta).

    The network's velocity gives x_0 = x - t v and noise = x + (1 - t) v. The step lands on
    (1 - t_next) x_0 + sqrt(t_next^2 - s^2) noise + s z with fresh noise z, where s = eta times the std of the
    forward process's posterior q(x_next | x_t, x_0): s^2 = eta^2 (t^2 - a^2 t_next^2) t_next^2 / t^2 with
    a = (1 - t) / (1 - t_next). eta 0 is the deterministic DDIM step (Euler's, for this linear path); eta 1 is
    ancestral (DDPM-like) sampling, which re-draws a share of the noise at every step. Because the posterior
    mean of x_0 stands in for x_0, it is under-dispersed by O(1 / steps) even with an exact network
    (``tests/test_flow.py``: std 0.27 for 0.30 at 40 steps): it wants more steps than Euler."""
    x0 = x - t * v
    eps = x + (1 - t) * v
    if t_next <= 0:
        return x0
    a = (1 - t) / (1 - t_next)
    s2 = eta ** 2 * max(t ** 2 - (a * t_next) ** 2, 0.0) * t_next ** 2 / t ** 2
    return (1 - t_next) * x0 + math.sqrt(max(t_next ** 2 - s2, 0.0)) * eps + math.sqrt(s2) * z


@torch.no_grad()
def denoise(
    flow: Flow,
    noise: Tensor | None,
    cond: Condition,
    text: Tensor,
    text_mask: Tensor,
    steps: int = 30,
    cfg_scale: float = 5.0,
    solver: str = "euler",
    seed: int = 0,
    seeds: list[int] | None = None,
) -> Tensor:
    """Generate latents (B, C, T', H, W) for a condition and a caption.

    ``noise`` defaults to a CPU normal draw from ``seed`` of the condition's shape (device-independent).
    A condition of strength 0 returns its reference and calls no network.
    ``cfg_scale`` > 1 runs the conditional and the empty caption in one batch and extrapolates.
    ``solver``: "euler" (one network call per step), "heun" (two; second order, none at the last step) or
    "sde" / "sde:ETA" (one; :func:`ancestral_step`, eta 1 unless given). The sde's fresh noise is drawn on the
    CPU per sample, sample i from ``seeds[i]`` (default: ``seed`` for every sample), so a batch gives what
    one-at-a-time calls with the same seeds give.
    """
    solver, eta = parse_solver(solver)
    device, dtype = cond.reference.device, cond.reference.dtype
    if cond.strength == 0:  # an edit that keeps its input: nothing to integrate
        return cond.reference.clone()
    if noise is None:
        noise = torch.randn(cond.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    noise = noise.to(device, dtype)
    ts = sampling_times(steps, num_tokens(cond.shape, flow.patch), cond.strength, flow.cfg.shift_scale,
                        flow.cfg.shift).tolist()
    guided = cfg_scale != 1.0
    if guided:  # one batch of [conditional, unconditional]
        empty_text, empty_mask = null_text(text, text_mask)
        text, text_mask = torch.cat([text, empty_text]), torch.cat([text_mask.bool(), empty_mask])
        cond2 = Condition(cond.mask.repeat(2, 1), cond.reference.repeat(2, 1, 1, 1, 1), cond.strength)

    # On CUDA the network runs under bf16 autocast, as it trained (train_dit); the state x and the solver's
    # arithmetic stay float32. Elsewhere float32 throughout.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def v(x: Tensor, t: float) -> Tensor:
        tt = torch.full((x.shape[0],), t, device=device, dtype=dtype)
        with autocast:
            if not guided:
                return flow.velocity(x, tt, cond, text, text_mask).float()
            vc, vu = flow.velocity(torch.cat([x, x]), tt.repeat(2), cond2, text, text_mask).float().chunk(2)
        return vu + cfg_scale * (vc - vu)

    x = (1 - ts[0]) * cond.reference + ts[0] * noise  # pure noise when strength = 1
    x = cond.pin(x, noise, ts[0])
    if solver == "sde":
        if seeds is not None and len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per sample: {len(seeds)} seeds for a batch of {x.shape[0]}")
        # a stream of its own per sample, apart from the initial noise's
        gens = [torch.Generator().manual_seed(2 * int(s) + 1) for s in (seeds or [seed] * x.shape[0])]
    for t, t_next in zip(ts[:-1], ts[1:]):
        d = v(x, t)
        if solver == "sde":
            z = torch.cat([torch.randn((1, *x.shape[1:]), generator=g, dtype=torch.float32) for g in gens])
            x = cond.pin(ancestral_step(x, d, t, t_next, eta, z.to(device, dtype)), noise, t_next)
            continue
        if solver == "heun" and t_next > 0:
            x_euler = cond.pin(x + (t_next - t) * d, noise, t_next)
            d = 0.5 * (d + v(x_euler, t_next))
        x = cond.pin(x + (t_next - t) * d, noise, t_next)
    return x
