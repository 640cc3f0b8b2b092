"""A 3-D causal convolutional video VAE with exact chunked processing.

Input video ``x``: ``(B, 3, T, H, W)`` in ``[-1, 1]`` with ``T = 1 + 4k`` (an image is ``T = 1``) and ``H, W``
multiples of the spatial factor (8 by default). Latent ``z``: ``(B, C_z, 1 + k, H / 8, W / 8)``, 16 channels by
default. The first frame is encoded on its own: every temporal convolution is causal (it pads only the past),
and each temporal downsampling maps ``1 + 2m`` frames to ``1 + m`` so that output 0 sees input frame 0 alone.

Why chunked == whole, exactly. Nothing in the network mixes time except causal convolutions:
- causal ``Conv3d`` with kernel ``k`` and stride ``s`` needs only the last ``k - s`` input frames of the past,
  which a ``CausalCache`` keeps between chunks (zeros stand in for "before frame 0", as in the whole clip);
- the norm is an RMS norm over channels at each (t, h, w): no statistics across time (a GroupNorm over
  ``(C, T, H, W)`` would give each chunk different statistics) and none across space, so spatial tiles see
  the same normalisation too;
- there is no attention.
So ``encode_chunked`` / ``decode_chunked`` agree with ``encode`` / ``decode`` up to float rounding (the tests
check <= 1e-5 in fp32), with memory bounded by the chunk. Encoder chunks must be ``1 + 4a`` frames first and
``4b`` frames after; decoder chunks may be any number of latent frames. Rounding: a GPU reduction picks its
summation order from the tensor's shape, so the norm accumulates fp32 inputs in fp64 (see ``ChannelRMSNorm``);
with that, base at 17x64x64 on an H100 in fp32 (TF32 off) gave chunked == whole to 0.0 max abs (cuDNN
autotuned or deterministic), against 1.5e-5 without it (``benchmarks/bench_vae.py`` checks this).

Inference path. Without autograd (``torch.no_grad`` / ``inference_mode``) the blocks save memory with the same
arithmetic: norm + SiLU are written straight into the causally padded conv input (no activation copy, no
concatenation), the residual add is in place, upsampling runs a few frames at a time into a preallocated
output, and ``decode_chunked`` writes chunks into one output. Training (autograd on) takes the plain path;
``tests/test_vae.py`` checks the two agree. For the least memory use ``encode_chunked(x, 4)`` and
``decode_chunked(z, 1)``.

Grouped encoder (``VAEConfig.grouped_encoder``, off by default). In a causal encoder latent frame j sees every
frame up to 4j, so the latents of frames in the middle of a clip depend on the frames before them. With the option
each latent frame sees only its own frames: frame 0 alone, then each group of 4 frames with zeros as its past at
every causal layer (``GroupStart``: what a later chunk would read from the cache is zeros instead). Latents of a
group then equal its latents inside any clip, exactly, which is what conditioning on given frames in the middle
of a clip needs (``model/conditioning.py``). The decoder is unchanged and the option adds no parameter.

Spatial tiling (``encode_tiled`` / ``decode_tiled``) is *not* exact: a tile sees zero padding at its border
where the whole frame would see real neighbours, and the receptive field is wider than any practical overlap.
Tiles overlap and are blended with linear ramps (a weighted average), so the error sits near the seams and
shrinks as the overlap grows. What is guaranteed: one tile covering the frame equals the whole-frame result
(<= 1e-5), and every tile is itself chunked exactly in time. What is checked: on the randomly perturbed tiny
model of the tests, mean |tiled - whole| < 0.25 x mean |whole| for latents and pixels. For a trained model,
measure it: ``tessera vae-eval --tile 256 --tile-overlap 64`` reports tiled PSNR and the max pixel difference.

Odd sizes: ``encode`` raises ``ValueError`` unless ``pad=True``. With ``pad=True`` the rule is: replicate the
last row / column to the next multiple of the spatial factor, and repeat the last frame up to the next
``1 + 4k`` frames; ``decode(z, size=(T, H, W))`` crops back to the original size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------
#   Helpers: causal cache, norm, causal conv
# ---------------------------------------------------------------------------------------------------------


class CausalCache:
    """The past each causal layer needs between temporal chunks: ``{module: last frames of its input}``.

    One cache per stream (per video, per spatial tile). ``None`` instead of a cache means "this call is the
    whole clip". A layer with no entry yet is on the first chunk.
    """

    def __init__(self) -> None:
        self.state: dict[int, torch.Tensor] = {}

    def seen(self, module: nn.Module) -> bool:
        return id(module) in self.state

    def get(self, module: nn.Module) -> torch.Tensor | None:
        return self.state.get(id(module))

    def put(self, module: nn.Module, value: torch.Tensor) -> None:
        self.state[id(module)] = value

    def past(self, module: "CausalConv3d", x: torch.Tensor) -> torch.Tensor | None:
        """The past ``module`` prepends to its input ``x`` (B, C, T, H, W); None on the first chunk."""
        return self.get(module)


class GroupStart(CausalCache):
    """The past of a latent group that must not see earlier frames (``VAEConfig.grouped_encoder``): every causal
    layer gets zeros where a later chunk would get its cached ``keep`` frames, and nothing is stored. Zeros for
    the frame before the group at every layer keep the strided convs aligned as in the whole clip (a group of 4
    frames -> 2 -> 1 latent frame)."""

    def seen(self, module: nn.Module) -> bool:
        return True

    def put(self, module: nn.Module, value: torch.Tensor) -> None:
        pass

    def past(self, module: "CausalConv3d", x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], x.shape[1], module.keep, *x.shape[3:])  # (B, C, keep, H, W)


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (t, h, w) position, with a learned gain.

    It mixes neither time nor space, which is what makes chunked and tiled processing match the whole clip.
    In fp32 the sum of squares is accumulated in fp64 (``FP64_ACCUMULATE``): a GPU reduction kernel picks its
    summation order from the tensor's shape, so a 4-frame chunk and the whole clip would otherwise round the
    same channel sum differently; in fp64 both round to the same fp32 value. bf16 / fp16 inputs (training
    under autocast, bf16 inference) keep the plain reduction, which already accumulates in fp32.
    """

    FP64_ACCUMULATE = True

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels, 1, 1, 1))
        self.eps = eps
        self.scale = channels**0.5

    def _denom(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.FP64_ACCUMULATE:
            n = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float64).to(x.dtype)
        else:
            n = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return n.clamp_min(self.eps)  # (B, 1, T, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self._denom(x) * (self.scale * self.gain)  # (B, C, T, H, W)

    def silu_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = silu(self(x))`` in place, for inference: the same ops in the same order as
        ``F.silu(self(x))`` (so the same numbers) but one output buffer instead of three temporaries."""
        torch.div(x, self._denom(x), out=out)
        out.mul_(self.scale * self.gain)
        return F.silu(out, inplace=True)  # (B, C, T, H, W)


class CausalConv3d(nn.Module):
    """``Conv3d`` that pads only the past in time (zeros before frame 0) and "same" in space.

    With a cache it prepends the cached last ``k_t - s_t`` input frames instead of zeros, and stores the
    new last frames, so a chunk sequence reproduces the whole-clip output.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (3, 3, 3), t_stride: int = 1) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.t_pad = kt - 1  # frames of past the first output needs
        self.keep = kt - t_stride  # frames of past the next chunk needs
        self.conv = nn.Conv3d(cin, cout, kernel, stride=(t_stride, 1, 1), padding=(0, kh // 2, kw // 2))

    def forward(
        self, x: torch.Tensor, cache: CausalCache | None = None, act: ChannelRMSNorm | None = None
    ) -> torch.Tensor:
        """``conv(x)``, or ``conv(silu(act(x)))`` when a norm is given (the pre-activation of a block)."""
        if act is not None and not torch.is_grad_enabled() and self.t_pad > 0:
            return self._forward_lean(x, cache, act)
        if act is not None:
            x = F.silu(act(x))
        if self.t_pad == 0:
            return self.conv(x)
        past = cache.past(self, x) if cache is not None else None
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], self.t_pad, *x.shape[3:])  # (B, C, k_t-1, H, W)
        x = torch.cat([past, x], dim=2)  # (B, C, n_past + T, H, W)
        if cache is not None:
            cache.put(self, x[:, :, x.shape[2] - self.keep :].detach().clone())
        return self.conv(x)

    def _forward_lean(self, x: torch.Tensor, cache: CausalCache | None, act: ChannelRMSNorm) -> torch.Tensor:
        """Inference only: write the past and ``silu(act(x))`` straight into the padded conv input, so the
        peak is input + padded input + output, with no separate activation or concatenation copy."""
        b, c, t, h, w = x.shape
        past = cache.past(self, x) if cache is not None else None
        n = self.t_pad if past is None else past.shape[2]  # frames of past: k_t-1 first, else what the cache holds
        buf = x.new_empty(b, c, n + t, h, w)  # (B, C, n + T, H, W)
        if past is None:
            buf[:, :, :n].zero_()
        else:
            buf[:, :, :n].copy_(past)
        act.silu_into(x, buf[:, :, n:])
        if cache is not None:
            cache.put(self, buf[:, :, buf.shape[2] - self.keep :].clone())
        return self.conv(buf)


def space_to_channel(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, 4C, T, H/2, W/2): each 2x2 pixel block into channels (``pixel_unshuffle``)."""
    b, c, t, h, w = x.shape
    y = F.pixel_unshuffle(x.transpose(1, 2).reshape(b * t, c, h, w), 2)  # (B*T, 4C, H/2, W/2)
    return y.reshape(b, t, 4 * c, h // 2, w // 2).transpose(1, 2)


def channel_to_space(x: torch.Tensor) -> torch.Tensor:
    """(B, 4C, T, H, W) -> (B, C, T, 2H, 2W): the inverse of ``space_to_channel`` (``pixel_shuffle``)."""
    b, c, t, h, w = x.shape
    y = F.pixel_shuffle(x.transpose(1, 2).reshape(b * t, c, h, w), 2)  # (B*T, C/4, 2H, 2W)
    return y.reshape(b, t, c // 4, 2 * h, 2 * w).transpose(1, 2)


def match_channels(x: torch.Tensor, cout: int) -> torch.Tensor:
    """``x`` (B, C, ...) with ``cout`` channels and no parameter: means of groups of C/cout consecutive channels,
    or each channel repeated cout/C times (the shortcuts of ``VAEConfig.shortcuts``)."""
    c = x.shape[1]
    if c == cout:
        return x
    if c % cout == 0:
        return x.unflatten(1, (cout, c // cout)).mean(2)
    if cout % c == 0:
        return x.repeat_interleave(cout // c, dim=1)
    raise ValueError(f"a shortcut cannot map {c} channels to {cout}: one must divide the other")


def halve_time(x: torch.Tensor, first: bool) -> torch.Tensor:
    """(B, C, T, H, W) -> the causal temporal halving of a shortcut: frame 0 alone when this chunk holds it,
    then the mean of each pair (2j-1, 2j), as the strided causal conv groups them."""
    head = x[:, :, :1] if first else x[:, :, :0]
    rest = x[:, :, 1:] if first else x
    b, c, t, h, w = rest.shape
    return torch.cat([head, rest.reshape(b, c, t // 2, 2, h, w).mean(3)], dim=2)  # (B, C, T', H, W)


# ---------------------------------------------------------------------------------------------------------
#   Blocks
# ---------------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv -> norm -> SiLU -> causal conv, plus a (1x1x1 when needed) skip."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(cin)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = ChannelRMSNorm(cout)
        self.conv2 = CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        h = self.conv1(x, cache, act=self.norm1)  # (B, Cout, T, H, W)
        h = self.conv2(h, cache, act=self.norm2)  # (B, Cout, T, H, W)
        if torch.is_grad_enabled():
            return self.skip(x) + h
        return h.add_(self.skip(x))  # inference: no extra full-size tensor


class Downsample(nn.Module):
    """2x spatial (strided 3x3, pad right/bottom) and/or 2x causal temporal (1 + 2m -> 1 + m)."""

    def __init__(self, channels: int, time: bool, space: bool = True, shortcut: bool = False) -> None:
        super().__init__()
        if not (time or space):
            raise ValueError("a Downsample halves space, time or both")
        self.spatial = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2)) if space else None
        self.temporal = CausalConv3d(channels, channels, (3, 1, 1), t_stride=2) if time else None
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        first = self.temporal is not None and (cache is None or not cache.seen(self.temporal))
        y = x
        if self.spatial is not None:
            y = self.spatial(F.pad(y, (0, 1, 0, 1)))  # (B, C, T, H/2, W/2)
        if self.temporal is not None:
            # output j sees frames 2j-2, 2j-1, 2j; output 0 sees frame 0 alone (zeros before it)
            y = self.temporal(y, cache)  # (B, C, 1 + (T-1)/2, H/2, W/2)
        if not self.shortcut:
            return y
        if self.spatial is not None:
            x = match_channels(space_to_channel(x), x.shape[1])  # (B, C, T, H/2, W/2): 2x2 means
        if self.temporal is not None:
            x = halve_time(x, first)  # (B, C, 1 + (T-1)/2, H/2, W/2)
        return y + x


class Upsample(nn.Module):
    """Optionally 2x causal temporal (1 + m -> 1 + 2m), then a 3x3 conv to ``cout``, 2x nearest-upsampled first
    unless ``space`` is off (a level that halved time only).

    Temporal: a causal conv makes two sub-frames per frame (depth to time); frame 0 keeps only its second
    sub-frame, so an image stays one frame. Whether a call holds frame 0 is read off the cache. The spatial
    conv already maps to the next level's (smaller) width, which halves the cost of the first
    full-resolution convolution compared with keeping the width.
    """

    UPSAMPLE_ELEMS = 2**25  # inference: most elements of one upsampled slice (64 MiB in bf16)

    def __init__(self, channels: int, cout: int, time: bool, space: bool = True, shortcut: bool = False) -> None:
        super().__init__()
        self.temporal = CausalConv3d(channels, 2 * channels, (3, 1, 1)) if time else None
        self.spatial = nn.Conv3d(channels, cout, (1, 3, 3), padding=(0, 1, 1))
        self.space = space
        self.shortcut = shortcut

    def _bypass(self, x: torch.Tensor) -> torch.Tensor:
        """The shortcut's spatial half for (time-doubled) input frames: channels to space, or to ``cout``."""
        cout = self.spatial.out_channels
        if not self.space:
            return match_channels(x, cout)  # (B, Cout, T', H, W)
        return channel_to_space(match_channels(x, 4 * cout))  # (B, Cout, T', 2H, 2W)

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        skip = x
        if self.temporal is not None:
            first = cache is None or not cache.seen(self.temporal)
            b, c, t, h, w = x.shape
            y = self.temporal(x, cache).reshape(b, 2, c, t, h, w)  # (B, 2, C, T, H, W)
            x = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # (B, C, 2T, H, W): sub-frames interleaved
            if first:
                x = x[:, :, 1:]  # (B, C, 2T-1, H, W)
            if self.shortcut:
                skip = skip.repeat_interleave(2, dim=2)[:, :, 1 if first else 0 :]  # (B, C, T', H, W)
        b, c, t, h, w = x.shape
        if not self.space:
            out = self.spatial(x)  # (B, Cout, T', H, W)
            return out + self._bypass(skip) if self.shortcut else out
        if torch.is_grad_enabled():
            x = F.interpolate(x.reshape(b, c * t, h, w), scale_factor=2.0, mode="nearest")  # (B, C*T, 2H, 2W)
            out = self.spatial(x.reshape(b, c, t, 2 * h, 2 * w))  # (B, Cout, T', 2H, 2W)
            return out + self._bypass(skip) if self.shortcut else out
        # inference: the spatial conv sees one frame at a time, so upsample a few frames at a time into a
        # preallocated output; the 4x-sized nearest-upsampled copy then never exists for the whole chunk
        out = x.new_empty(b, self.spatial.out_channels, t, 2 * h, 2 * w)  # (B, Cout, T', 2H, 2W)
        step = max(1, self.UPSAMPLE_ELEMS // (b * c * 4 * h * w))
        for s in range(0, t, step):
            up = F.interpolate(x[:, :, s : s + step], scale_factor=(1.0, 2.0, 2.0), mode="nearest")
            out[:, :, s : s + step] = self.spatial(up)  # (B, Cout, step, 2H, 2W)
            if self.shortcut:
                out[:, :, s : s + step] += self._bypass(skip[:, :, s : s + step])
        return out


class DiagonalGaussian:
    """The posterior ``N(mean, exp(logvar))`` per latent element."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.float().chunk(2, dim=1)  # (B, C_z, T', h, w) each, fp32 under autocast
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over latent elements, shape ``(B,)``."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------------------
#   Encoder / decoder
# ---------------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, cfg: "VAEConfig") -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = CausalConv3d(3, ch[0])
        self.blocks = nn.ModuleList()
        cin = ch[0]
        for i, cout in enumerate(ch):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(cin, cout))
                cin = cout
            if i < len(ch) - 1:
                self.blocks.append(Downsample(cout, time=cfg.time_down[i], space=cfg.space_levels[i],
                                              shortcut=cfg.shortcuts))
        self.mid = nn.ModuleList([ResBlock(cin, cin), ResBlock(cin, cin)])
        self.norm_out = ChannelRMSNorm(cin)
        self.conv_out = CausalConv3d(cin, 2 * cfg.z_channels)
        self.group = cfg.time_factor if cfg.grouped_encoder else 0
        self.z_channels = cfg.z_channels if cfg.shortcuts else 0

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        if not self.group:
            return self._encode(x, cache)
        # grouped: frame 0 alone, then every group of f frames alone (folded into the batch); no cache is needed,
        # so chunks (1 + f*a frames first, f*b after) and the whole clip give the same latents
        f, outs = self.group, []
        if x.shape[2] % f == 1:  # a whole clip or a first chunk: it holds frame 0
            outs.append(self._encode(x[:, :, :1], None))  # (B, 2*C_z, 1, h, w)
            x = x[:, :, 1:]
        if x.shape[2]:
            b, c, t, hh, ww = x.shape
            g = x.reshape(b, c, t // f, f, hh, ww).transpose(1, 2).reshape(b * (t // f), c, f, hh, ww)
            z = self._encode(g, GroupStart())  # (B*k, 2*C_z, 1, h, w)
            outs.append(z.reshape(b, t // f, *z.shape[1:]).transpose(1, 2).flatten(2, 3))  # (B, 2*C_z, k, h, w)
        return torch.cat(outs, dim=2)  # (B, 2*C_z, T', h, w)

    def _encode(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        x = self.conv_in(x, cache)  # (B, C0, T, H, W)
        for block in self.blocks:
            x = block(x, cache)  # down to (B, C_last, T', H/f, W/f)
        for block in self.mid:
            x = block(x, cache)
        moments = self.conv_out(x, cache, act=self.norm_out)  # (B, 2*C_z, T', h, w)
        if not self.z_channels:
            return moments
        mean, logvar = moments.chunk(2, dim=1)  # the shortcut feeds the mean: channel means of the last features
        return torch.cat([mean + match_channels(x, self.z_channels), logvar], dim=1)


class Decoder(nn.Module):
    def __init__(self, cfg: "VAEConfig") -> None:
        super().__init__()
        ch = cfg.channels[::-1]
        up_time, up_space = cfg.time_down[::-1], cfg.space_levels[::-1]
        self.conv_in = CausalConv3d(cfg.z_channels, ch[0])
        self.mid = nn.ModuleList([ResBlock(ch[0], ch[0]), ResBlock(ch[0], ch[0])])
        self.blocks = nn.ModuleList()
        cin = ch[0]
        for i, cout in enumerate(ch):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(cin, cout))
                cin = cout
            if i < len(ch) - 1:
                self.blocks.append(Upsample(cout, ch[i + 1], time=up_time[i], space=up_space[i],
                                            shortcut=cfg.shortcuts))
                cin = ch[i + 1]
        self.norm_out = ChannelRMSNorm(cin)
        self.conv_out = CausalConv3d(cin, 3)
        self.shortcut = cfg.shortcuts

    def forward(self, z: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        z = z.to(self.conv_in.conv.weight.dtype)  # fp32 z, bf16 weights ok
        x = self.conv_in(z, cache)  # (B, C_last, T', h, w)
        if self.shortcut:
            x = x + match_channels(z, x.shape[1])  # each latent channel repeated
        for block in self.mid:
            x = block(x, cache)
        for block in self.blocks:
            x = block(x, cache)  # up to (B, C0, T, H, W)
        return self.conv_out(x, cache, act=self.norm_out)  # (B, 3, T, H, W)


# ---------------------------------------------------------------------------------------------------------
#   Model
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of one VAE. ``len(channels) - 1`` downsampling levels, each halving space (unless ``space_down``
    says otherwise), time where ``time_down`` says so, or both (never neither)."""

    channels: tuple[int, ...] = (96, 192, 384, 384)
    num_res_blocks: int = 2
    z_channels: int = 16
    time_down: tuple[bool, ...] = (False, True, True)  # per downsampling level, highest resolution first
    space_down: tuple[bool, ...] = ()  # per downsampling level; () = every level halves space
    # each latent frame encoded from its own frames only (frame 0 alone, then each group of time_factor frames,
    # the causal past reset to zeros at every group start), so a group's latent does not depend on earlier
    # frames: given frames at a group anywhere in a clip encode alone to exactly their in-clip latents
    # (model/conditioning.py). The decoder stays causal over the whole clip.
    grouped_encoder: bool = False
    # parameter-free residual paths around every resampling and the latent (as in DC-AE, Chen et al. 2024): a
    # downsampling adds the 2x2 (and causal frame-pair) means of its input, regrouped to its channels; an
    # upsampling adds its input's channels spread back to space (and frames repeated); the latent mean adds the
    # last features' channel means, and the decoder's first features add the latent's channels repeated. The
    # network learns a linear, blurred route through the latent first, so a short training keeps colour early
    # (the CPU demo's VAE: colour read back 0.99 against 0.11 after 300 steps, benchmarks/RESULTS.md). Needs channel
    # counts that divide each other.
    shortcuts: bool = False

    @property
    def space_levels(self) -> tuple[bool, ...]:
        return self.space_down or (True,) * (len(self.channels) - 1)

    @property
    def spatial_factor(self) -> int:
        return 2 ** sum(self.space_levels)

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.time_down)

    @property
    def stride(self) -> tuple[int, int, int]:
        """(t, h, w) compression: what ``model.buckets.BucketConfig.vae_stride`` must be for this VAE."""
        return self.time_factor, self.spatial_factor, self.spatial_factor


INIT_LOGVAR = -6.0
"""Initial bias of the posterior's log-variance channels: std e^-3 ~ 0.05 at the start of training."""


class VideoVAE(nn.Module):
    """Encoder + diagonal Gaussian posterior + decoder, with whole, chunked and tiled entry points."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        if len(cfg.time_down) != len(cfg.channels) - 1:
            raise ValueError(f"time_down needs {len(cfg.channels) - 1} entries, got {len(cfg.time_down)}")
        if len(cfg.space_levels) != len(cfg.channels) - 1:
            raise ValueError(f"space_down needs {len(cfg.channels) - 1} entries, got {len(cfg.space_down)}")
        if cfg.grouped_encoder and cfg.time_factor < 2:
            raise ValueError("grouped_encoder needs a VAE that compresses time (time_factor >= 2)")
        if not all(s or t for s, t in zip(cfg.space_levels, cfg.time_down)):
            raise ValueError(f"every level must halve space or time: space_down {cfg.space_levels}, time_down "
                             f"{cfg.time_down}")
        if cfg.shortcuts:
            ch, z = cfg.channels, cfg.z_channels
            maps = [(ch[-1], z), (z, ch[-1])] + [(ch[i + 1], (4 if cfg.space_levels[i] else 1) * ch[i])
                                                 for i in range(len(ch) - 1)]  # latent, then each upsampling
            for cin, cout in maps:
                if cin % cout and cout % cin:
                    raise ValueError(f"shortcuts: a shortcut cannot map {cin} channels to {cout}: one must divide "
                                     f"the other (channels {ch}, z_channels {z})")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All init in one place: Xavier-uniform convs, zero biases, unit norm gains, a zero last conv of every
        residual branch so each ResBlock starts as the identity (stable from step 0), and a narrow posterior
        (``INIT_LOGVAR``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.conv.weight)
        # The posterior starts narrow: with a zero logvar bias its std is ~1 against a mean of order 1, so the
        # decoder first trains on latents that are half noise, and at kl_weight 1e-6 nothing pulls the std down
        # but the reconstruction (the tiny preset still sampled with std 0.4 after 200 steps at lr 1e-3).
        nn.init.constant_(self.encoder.conv_out.conv.bias[self.cfg.z_channels:], INIT_LOGVAR)

    # -- sizes ------------------------------------------------------------------------------------------
    def latent_frames(self, t: int) -> int:
        return 1 + (t - 1) // self.cfg.time_factor

    def check_size(self, t: int, h: int, w: int) -> None:
        """Raise ``ValueError`` naming the rule when ``(t, h, w)`` cannot be encoded as is."""
        f, s = self.cfg.time_factor, self.cfg.spatial_factor
        if (t - 1) % f != 0:
            raise ValueError(f"frame count {t} is not 1 + {f}k; pass pad=True to repeat the last frame")
        if h % s or w % s:
            raise ValueError(f"frame size {h}x{w} is not a multiple of {s}; pass pad=True to replicate-pad")

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """The documented padding rule: replicate the last row/column to a multiple of the spatial factor,
        repeat the last frame up to ``1 + f*k`` frames."""
        f, s = self.cfg.time_factor, self.cfg.spatial_factor
        t, h, w = x.shape[2:]
        pt, ph, pw = (-(t - 1)) % f, (-h) % s, (-w) % s
        if ph or pw:
            b, c = x.shape[:2]
            x = F.pad(x.reshape(b, c * t, h, w), (0, pw, 0, ph), mode="replicate").view(b, c, t, h + ph, w + pw)
        if pt:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pt, -1, -1)], dim=2)
        return x

    # -- whole clip -------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, pad: bool = False) -> DiagonalGaussian:
        """(B, 3, T, H, W) -> posterior over (B, C_z, 1 + (T-1)/4, H/8, W/8)."""
        if pad:
            x = self.pad_input(x)
        self.check_size(*x.shape[2:])
        return DiagonalGaussian(self.encoder(x, None))

    def decode(self, z: torch.Tensor, size: tuple[int, int, int] | None = None) -> torch.Tensor:
        """(B, C_z, T', h, w) -> (B, 3, 1 + 4(T'-1), 8h, 8w); ``size=(T, H, W)`` crops a padded input back."""
        x = self.decoder(z, None)
        return x if size is None else x[:, :, : size[0], : size[1], : size[2]]

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()  # (B, C_z, T', h, w)
        return self.decode(z), posterior  # (B, 3, T, H, W)

    # -- temporal chunks with a causal cache (exact) -----------------------------------------------------
    def encode_chunked(self, x: torch.Tensor, chunk_frames: int = 16, pad: bool = False) -> DiagonalGaussian:
        """Encode ``1 + chunk_frames`` frames first, then ``chunk_frames`` at a time; equals ``encode``.

        ``chunk_frames`` must be a multiple of the time factor; memory is that of one chunk plus the cache.
        """
        if pad:
            x = self.pad_input(x)
        self.check_size(*x.shape[2:])
        return DiagonalGaussian(self._encode_moments(x, chunk_frames))

    def _encode_moments(self, x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        f = self.cfg.time_factor
        if chunk_frames <= 0 or chunk_frames % f:
            raise ValueError(f"chunk_frames must be a positive multiple of {f}, got {chunk_frames}")
        cache, outs, start = CausalCache(), [], 0
        while start < x.shape[2]:
            end = start + chunk_frames + (1 if start == 0 else 0)
            outs.append(self.encoder(x[:, :, start:end], cache))  # (B, 2*C_z, t', h, w)
            start = end
        return torch.cat(outs, dim=2)  # (B, 2*C_z, T', h, w)

    def decode_chunked(
        self, z: torch.Tensor, chunk_latents: int = 4, size: tuple[int, int, int] | None = None
    ) -> torch.Tensor:
        """Decode ``chunk_latents`` latent frames at a time with a causal cache; equals ``decode``."""
        if chunk_latents <= 0:
            raise ValueError(f"chunk_latents must be positive, got {chunk_latents}")
        cache = CausalCache()
        starts = range(0, z.shape[2], chunk_latents)
        if torch.is_grad_enabled():
            x = torch.cat([self.decoder(z[:, :, i : i + chunk_latents], cache) for i in starts], dim=2)
        else:  # inference: write each chunk into the output instead of holding the chunks and a concatenation
            x, t0 = None, 0
            for i in starts:
                part = self.decoder(z[:, :, i : i + chunk_latents], cache)  # (B, 3, t, H, W)
                if x is None:
                    x = part.new_empty(*part.shape[:2], 1 + self.cfg.time_factor * (z.shape[2] - 1), *part.shape[3:])
                x[:, :, t0 : t0 + part.shape[2]] = part
                t0 += part.shape[2]
                del part
        return x if size is None else x[:, :, : size[0], : size[1], : size[2]]  # (B, 3, T, H, W)

    # -- spatial tiles with overlap blending (approximate) ---------------------------------------------
    def encode_tiled(
        self, x: torch.Tensor, tile: int = 256, overlap: int = 64, chunk_frames: int = 16
    ) -> DiagonalGaussian:
        """Encode overlapping ``tile`` x ``tile`` pixel tiles (each chunked in time) and blend their moments."""
        self.check_size(*x.shape[2:])
        s = self.cfg.spatial_factor
        if tile % s or overlap % s or overlap >= tile:
            raise ValueError(f"tile and overlap must be multiples of {s} with overlap < tile")

        moments = _tile_blend(x, lambda p: self._encode_moments(p, chunk_frames), tile, overlap, scale_out=s)
        return DiagonalGaussian(moments)  # (B, 2*C_z, T', h, w) blended

    def decode_tiled(self, z: torch.Tensor, tile: int = 32, overlap: int = 8, chunk_latents: int = 4) -> torch.Tensor:
        """Decode overlapping ``tile`` x ``tile`` latent tiles (each chunked in time) and blend the pixels."""
        s = self.cfg.spatial_factor
        if overlap >= tile:
            raise ValueError("overlap must be smaller than tile")
        return _tile_blend(z, lambda p: self.decode_chunked(p, chunk_latents), tile, overlap, scale_out=1 / s)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def _ramp(n: int, start: int, size: int, tile_len: int, overlap: int, device: torch.device) -> torch.Tensor:
    """Blend weights along one axis: linear ramps over the overlap on inner edges, 1 elsewhere."""
    w = torch.ones(n, device=device)
    if overlap <= 0:
        return w
    r = torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)
    if start > 0:
        w[:overlap] = torch.minimum(w[:overlap], r)
    if start + tile_len < size:
        w[n - overlap :] = torch.minimum(w[n - overlap :], r.flip(0))
    return w


def _tile_blend(x: torch.Tensor, fn, tile: int, overlap: int, scale_out: float) -> torch.Tensor:
    """Run ``fn`` on overlapping spatial tiles of ``x`` and blend outputs with a weighted average.

    Tile coordinates are in ``x``'s grid; the output grid is ``x``'s times ``1 / scale_out``.
    """
    h, w = x.shape[-2:]
    out = weight = None
    for y0 in _tile_starts(h, tile, overlap):
        for x0 in _tile_starts(w, tile, overlap):
            th, tw = min(tile, h), min(tile, w)
            y = fn(x[..., y0 : y0 + th, x0 : x0 + tw])  # (B, C, T, th/so, tw/so)
            oh, ow = y.shape[-2:]
            sy, sx = round(y0 / scale_out), round(x0 / scale_out)
            ov_y, ov_x = round(overlap / scale_out), round(overlap / scale_out)
            if out is None:
                H, W = round(h / scale_out), round(w / scale_out)
                out = y.new_zeros(*y.shape[:-2], H, W)
                weight = y.new_zeros(H, W)
            wy = _ramp(oh, y0, h, th, min(ov_y, oh), y.device)
            wx = _ramp(ow, x0, w, tw, min(ov_x, ow), y.device)
            wgt = (wy[:, None] * wx[None, :]).to(y.dtype)  # (oh, ow)
            out[..., sy : sy + oh, sx : sx + ow] += y * wgt
            weight[sy : sy + oh, sx : sx + ow] += wgt
    return out / weight


# ---------------------------------------------------------------------------------------------------------
#   Presets
# ---------------------------------------------------------------------------------------------------------

PRESETS: dict[str, VAEConfig] = {
    # 4x8x8, 16 channels unless named otherwise
    "tiny": VAEConfig(channels=(8, 16, 16, 16), num_res_blocks=1, z_channels=16),
    "small": VAEConfig(channels=(64, 128, 256, 256), num_res_blocks=1, z_channels=16),
    "base": VAEConfig(channels=(96, 192, 384, 384), num_res_blocks=2, z_channels=16),
    # 4x16x16 with 48 channels: one more spatial halving
    "base-f16c48": VAEConfig(
        channels=(64, 128, 256, 384, 384), num_res_blocks=2, z_channels=48, time_down=(False, False, True, True)
    ),
    "tiny-f16c48": VAEConfig(
        channels=(8, 16, 16, 16, 16), num_res_blocks=1, z_channels=48, time_down=(False, False, True, True)
    ),
    # 4x4x4 with 8 channels: one fewer spatial halving, for short training budgets that must still give sharp
    # silhouettes (the GPU text loop). Pair it with a (1, 4, 4) DiT patch so a token still covers 16 x 16 px.
    "small-f4c8": VAEConfig(channels=(64, 128, 256), num_res_blocks=1, z_channels=8, time_down=(True, True)),
    "small-f4c4": VAEConfig(channels=(64, 128, 256), num_res_blocks=1, z_channels=4, time_down=(True, True)),
    "small-f4c4-dc": VAEConfig(channels=(64, 128, 256), num_res_blocks=1, z_channels=4, time_down=(True, True),
                               shortcuts=True),
    "tiny-f4c8": VAEConfig(channels=(8, 16, 16), num_res_blocks=1, z_channels=8, time_down=(True, True)),
    # the same with DC-AE shortcuts (``VAEConfig.shortcuts``), and twice as wide
    "tiny-f4c8-dc": VAEConfig(channels=(8, 16, 16), num_res_blocks=1, z_channels=8, time_down=(True, True),
                              shortcuts=True),
    "tiny-f4c8-w": VAEConfig(channels=(16, 32, 32), num_res_blocks=1, z_channels=8, time_down=(True, True)),
    "tiny-f4c8-w-dc": VAEConfig(channels=(16, 32, 32), num_res_blocks=1, z_channels=8, time_down=(True, True),
                                shortcuts=True),
    # 4x4x4 again, but time is halved at the two deeper levels (as in "small") instead of at full resolution: the
    # encoder first sees each frame's detail at full width, and the deepest level works at 1/4 of the side
    "small-f4c8-late": VAEConfig(channels=(64, 128, 256, 256), num_res_blocks=1, z_channels=8,
                                 time_down=(False, True, True), space_down=(True, True, False)),
    "small-f4c4-late": VAEConfig(channels=(64, 128, 256, 256), num_res_blocks=1, z_channels=4,
                                 time_down=(False, True, True), space_down=(True, True, False)),
    "tiny-f4c8-late": VAEConfig(channels=(8, 16, 16, 16), num_res_blocks=1, z_channels=8,
                                time_down=(False, True, True), space_down=(True, True, False)),
}
# the same sizes with ``grouped_encoder``: given frames anywhere in a clip encode to exactly their in-clip latents
PRESETS.update({f"{name}-grouped": replace(PRESETS[name], grouped_encoder=True)
                for name in ("tiny", "small-f4c4", "small-f4c8", "tiny-f4c8", "tiny-f4c8-dc", "small-f4c4-dc")})


def build_vae(preset: str = "base") -> VideoVAE:
    """A VAE from a preset name; for other sizes build ``VideoVAE(replace(PRESETS[name], ...))``."""
    if preset not in PRESETS:
        raise KeyError(f"unknown VAE preset {preset!r}; choose from {sorted(PRESETS)}")
    return VideoVAE(PRESETS[preset])


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["CausalCache", "DiagonalGaussian", "GroupStart", "PRESETS", "VAEConfig", "VideoVAE", "build_vae",
           "num_params"]
