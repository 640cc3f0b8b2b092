"""Diffusion Transformer (DiT) over spacetime latent patches, conditioned on text and time.

Input  ``x``:         (B, C_in, T, H, W)  the noisy latent concatenated with the condition channels
                      (``C_in = 2 * latent_channels + 1``: noisy latent, masked reference latent, frame mask;
                      see ``model/conditioning.py``). T, H, W are latent sizes (T = 1 + (frames - 1) / 4,
                      H = height / 8, W = width / 8 for the Tessera VAE).
Input  ``t``:         (B,)  flow time in [0, 1] (1 = pure noise), see ``model/flow.py``.
Input  ``text``:      (B, L, text_dim) token embeddings of the caption, ``text_mask`` (B, L) bool (True = real).
Output:               (B, latent_channels, T, H, W)  the predicted velocity ``noise - data``.
Packed (``packed=layout``, ``model/packed.py``): ``x`` (S, L, C_in*pt*ph*pw) patch tokens of clips of different
grids packed into S rows of L tokens (``pack_tokens``), ``t`` (K,), ``text`` (K, L, text_dim) and ``text_mask``
(K, L) per clip; output (S, L, latent_channels*pt*ph*pw) tokens (``unpack_tokens`` gives each clip's latent).

Design choices and why:
- Patches of ``patch = (pt, ph, pw)`` latent voxels (1x2x2 by default) become tokens through one linear layer.
- Position is a 3-D rotary embedding (RoPE) over the (t, h, w) patch index, applied to queries and keys of the
  self-attention. It has no learned table, so any grid works at any resolution, aspect ratio and duration.
- One grid per batch. Variable sizes come from buckets (``model/buckets.py``): every element of a batch has the
  same (T, H, W), so self-attention needs no mask and runs on the flash kernel, and no compute goes to
  padding. A token budget gives each bucket its batch size, so the cost per step stays flat across buckets.
  Or packed: clips of any grids in fixed-length rows, each clip attending to itself and its own caption, with its
  own positions and time (``model/packed.py``); the unpacked path is unchanged by it.
- adaLN-Zero (DiT): the time embedding sets a shift, scale and gate for both the self-attention and the MLP of
  every block; gates start at zero so each block starts as the identity.
- Cross-attention to the text tokens in every block (PixArt / Wan style, un-gated, zero-initialised output).
  With ``pooled_text`` the masked mean of the caption's tokens is also added to the time embedding (SD3's pooled
  vector): an empty caption pools to zero, so classifier-free guidance still contrasts caption and no caption.
  A learned "null" text token is always prepended, so an empty caption (mask all False, used by caption
  dropout and classifier-free guidance) still has a valid key and never produces NaNs.
- QK-norm: RMSNorm per head on queries and keys (self and cross) keeps attention logits bounded in bf16.
- Attention is ``F.scaled_dot_product_attention`` (flash / cuDNN / memory-efficient kernels on GPU).
- Activation checkpointing is a per-block switch (``set_checkpointing``).
- All initialisation lives in ``initialize_weights()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.packed import PackedAttention, PackedLayout

# ----------------------------------------------------------------------------------------------------------
# Config and presets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    """Every knob of the network. ``in_channels`` is derived: noisy latent + masked reference + frame mask."""

    latent_channels: int = 16  # C of the VAE latent
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw) latent voxels per token
    hidden: int = 1152  # model width D
    depth: int = 28  # number of blocks
    heads: int = 16  # attention heads (head_dim = hidden / heads)
    mlp_ratio: float = 4.0  # MLP hidden = mlp_ratio * D
    text_dim: int = 384  # width of the text encoder's token embeddings (MiniLM: 384, UMT5-XXL: 4096)
    freq_dim: int = 256  # sinusoidal timestep features
    rope_theta: float = 10000.0
    eps: float = 1e-6
    # The caption's masked mean token, through a two-layer MLP, is added to the time embedding, so it reaches
    # every block's adaLN as a global condition (SD3 adds its pooled CLIP vector the same way). Cross-attention
    # stays; this is a second, global path for what holds for the whole clip (colour, object, motion)
    pooled_text: bool = False

    @property
    def in_channels(self) -> int:
        """Noisy latent (C) + reference latent times mask (C) + per-frame mask (1)."""
        return 2 * self.latent_channels + 1

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)


# Width, depth, heads. Parameters with text_dim=4096 and 16 latent channels (`python -m model.dit` prints them).
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden=64, depth=2, heads=4),  # 0.5 M: tests on CPU
    "S": dict(hidden=384, depth=12, heads=6),  # 41.4 M
    "B": dict(hidden=768, depth=12, heads=12),  # 161.8 M
    "L": dict(hidden=1024, depth=24, heads=16),  # 563.0 M
    "1B": dict(hidden=1536, depth=20, heads=12),  # 1055.2 M, head_dim 128 (the benchmark's model)
    "XL": dict(hidden=2048, depth=28, heads=16),  # 2611.0 M
}


def narrow_output(cfg: DiTConfig) -> str | None:
    """Why a DiT this narrow cannot learn its task, or None. Each token's velocity comes from one linear map of its
    ``hidden``-wide state, so with fewer hidden units than latent values per patch (``C * pt * ph * pw``) the
    output spans only a ``hidden``-dimensional subspace: the other directions of every patch keep their starting
    noise at every sampling step. Measured on the CPU demo (8 latent channels, 4x4 patches = 128 values, hidden
    64): training loss stuck at 0.71 and noise-filled samples, against 0.25 with 2x2 patches or hidden 128."""
    values = cfg.latent_channels * cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
    if cfg.hidden >= values:
        return None
    return (f"the DiT's width ({cfg.hidden}) is under the latent values per patch ({cfg.latent_channels} channels x "
            f"{'x'.join(map(str, cfg.patch))} = {values}): its velocity spans only {cfg.hidden} of {values} "
            "directions, and the rest of every patch keeps its noise; use smaller patches or a wider model")


def dit_config(preset: str, **overrides) -> DiTConfig:
    """The config of a preset (``PRESETS``), with any field overridden (``text_dim=4096``, ...)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; choose from {sorted(PRESETS)}")
    return replace(DiTConfig(), **{**PRESETS[preset], **overrides})


# ----------------------------------------------------------------------------------------------------------
# Helpers: patchify, 3-D rotary embedding, modulation
# ----------------------------------------------------------------------------------------------------------


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(B, C, T, H, W) -> (B, N, C*pt*ph*pw) with N = (T/pt)(H/ph)(W/pw) in (t, h, w) raster order."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent grid {(t, h, w)} is not divisible by the patch {patch}")
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, T', H', W', C, pt, ph, pw)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(x: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int) -> Tensor:
    """Inverse of ``patchify``: (B, N, C*pt*ph*pw) -> (B, C, T, H, W) for a token grid (T', H', W')."""
    b = x.shape[0]
    gt, gh, gw = grid
    pt, ph, pw = patch
    x = x.reshape(b, gt, gh, gw, channels, pt, ph, pw)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, T', pt, H', ph, W', pw)
    return x.reshape(b, channels, gt * pt, gh * ph, gw * pw)


def pack_tokens(clips: list[Tensor], layout: PackedLayout, patch: tuple[int, int, int]) -> Tensor:
    """Clips (C, T, H, W) each, in layout order -> (S, L, C*pt*ph*pw) patch tokens, zeros in the padding."""
    if len(clips) != layout.num_clips:
        raise ValueError(f"{len(clips)} clips for a layout of {layout.num_clips}")
    c = clips[0].shape[0]
    out = clips[0].new_zeros(layout.num_rows, layout.length, c * patch[0] * patch[1] * patch[2])
    for z, r, a, n in zip(clips, layout.rows, layout.starts, layout.tokens):
        out[r, a:a + n] = patchify(z[None], patch)[0]  # (n, C*pt*ph*pw)
    return out


def unpack_tokens(tokens: Tensor, layout: PackedLayout, patch: tuple[int, int, int], channels: int) -> list[Tensor]:
    """Inverse of ``pack_tokens``: (S, L, C*pt*ph*pw) -> one (C, T, H, W) per clip, the padding dropped."""
    return [unpatchify(tokens[r, a:a + n][None], grid, patch, channels)[0]
            for grid, r, a, n in zip(layout.grids, layout.rows, layout.starts, layout.tokens)]


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split of the head dimension among the (t, h, w) axes; each part even, h and w equal (as in Wan)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@lru_cache(maxsize=64)
def _rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float, device: torch.device):
    """cos, sin tables (N, head_dim/2) for every patch of ``grid``; cached per grid and device."""
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij")
    cos, sin = rope_from_positions(torch.stack([a.reshape(-1) for a in axes], dim=-1), head_dim, theta)  # (N, dh/2)
    return cos.to(device), sin.to(device)


def rope_from_positions(pos: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin (..., head_dim/2) float32 for (t, h, w) patch positions (..., 3): the tables of ``rope_tables``
    for any set of positions (a packed row's, where every clip starts again at (0, 0, 0))."""
    angles = []
    for i, dim in enumerate(rope_axis_dims(head_dim)):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim)  # (dim/2,)
        angles.append(pos[..., i:i + 1].double() * freqs)  # (..., dim/2)
    angle = torch.cat(angles, dim=-1)  # (..., head_dim/2)
    return angle.cos().float(), angle.sin().float()


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float, device: torch.device):
    """Public accessor for the rotary tables of a token grid."""
    return _rope_tables(tuple(int(n) for n in grid), head_dim, float(theta), torch.device(device))


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) of x (B, N, heads, d) by the angles of (N, d/2) tables, or of (B, N, d/2)
    tables of per-token positions (packed rows). Norm-preserving."""
    cos = cos.unsqueeze(-2).to(x.dtype)  # (N, 1, d/2) or (B, N, 1, d/2)
    sin = sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)  # (B, N, heads, d/2) each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, N, heads, d)


def modulate(x: Tensor, shift: Tensor, scale: Tensor, packed: PackedAttention | None = None) -> Tensor:
    """adaLN modulation: x (B, N, D), shift/scale (B, D); packed: x (S, L, D), shift/scale (K, D) per clip."""
    if packed is not None:
        return packed.modulate(x, shift, scale)
    return x * (1 + scale[:, None]) + shift[:, None]


def gate(g: Tensor, y: Tensor, packed: PackedAttention | None = None) -> Tensor:
    """adaLN-Zero gate: g (B, D) times y (B, N, D); packed: g (K, D) per clip, y (S, L, D)."""
    return g[:, None] * y if packed is None else packed.gate(g, y)


# ----------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> (B, D): sinusoidal features of 1000 t, then a two-layer MLP."""

    def __init__(self, hidden: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, freq_dim/2)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B, D)


class PooledTextEmbedder(nn.Module):
    """Caption tokens (B, L, text_dim) and mask (B, L) -> (B, D): masked mean, then a two-layer MLP.

    Padding and dropped captions (mask all False) add nothing to the mean; an empty caption pools to zero."""

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, text: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            pooled = text.mean(dim=1)  # (B, text_dim)
        else:
            w = mask.to(text.dtype)[..., None]  # (B, L, 1)
            pooled = (text * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)  # (B, text_dim)
        return self.mlp(pooled.to(self.mlp[0].weight.dtype))  # (B, D)


class TextEmbedder(nn.Module):
    """Text encoder tokens (B, L, text_dim) -> (B, 1 + L, D), with a learned always-valid null token first."""

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden))
        self.null = nn.Parameter(torch.zeros(1, 1, hidden))

    def forward(self, text: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        b = text.shape[0]
        y = self.proj(text)  # (B, L, D)
        y = torch.cat([self.null.to(y.dtype).expand(b, -1, -1), y], dim=1)  # (B, 1+L, D)
        if mask is None:
            return y, None
        keep = torch.cat([mask.new_ones(b, 1), mask.bool()], dim=1)  # (B, 1+L)
        return y, keep[:, None, None, :]  # (B, 1, 1, 1+L) for SDPA's broadcast


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------


class QKNorm(nn.RMSNorm):
    """RMSNorm per head whose weight follows the input's dtype.

    Under bf16 autocast the queries and keys arrive in bf16 while the weight stays fp32; ``torch.rms_norm`` then
    falls back from its fused kernel to the composite (several kernels; torch warns
    "Mismatch dtype"). Casting the weight keeps the fused kernel; the parameter and its name are unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, None if self.weight is None else self.weight.to(x.dtype), self.eps)


class SelfAttention(nn.Module):
    """Multi-head self-attention with per-head RMS QK-norm and 3-D RoPE."""

    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = QKNorm(hidden // heads, eps=eps)
        self.k_norm = QKNorm(hidden // heads, eps=eps)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, packed: PackedAttention | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).unbind(2)  # (B, N, h, dh) each
        q = apply_rope(self.q_norm(q), cos, sin)  # (B, N, h, dh)
        k = apply_rope(self.k_norm(k), cos, sin)  # (B, N, h, dh)
        if packed is not None:  # rows of clips: each token attends within its clip
            return self.out(packed.self_attention(q, k, v).reshape(b, n, d))  # (S, L, D)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, h, N, dh)
        return self.out(o.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class CrossAttention(nn.Module):
    """Queries from video tokens, keys/values from text tokens (with a key mask), per-head RMS QK-norm."""

    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.q_norm = QKNorm(hidden // heads, eps=eps)
        self.k_norm = QKNorm(hidden // heads, eps=eps)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor | None, packed: PackedAttention | None = None) -> Tensor:
        b, n, d = x.shape
        dh = d // self.heads
        q = self.q_norm(self.q(x).view(b, n, self.heads, dh))  # (B, N, h, dh)
        k, v = self.kv(y).view(y.shape[0], y.shape[1], 2, self.heads, dh).unbind(2)  # (B, L, h, dh) each
        k = self.k_norm(k)  # (B, L, h, dh); packed: (K, 1+L, h, dh), one caption per clip
        if packed is not None:  # each clip's tokens attend to its own caption
            return self.out(packed.cross_attention(q, k, v).reshape(b, n, d))  # (S, L, D)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )  # (B, h, N, dh)
        return self.out(o.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, cross-attention to text, adaLN-Zero MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=cfg.eps)
        self.attn = SelfAttention(d, cfg.heads, cfg.eps)
        self.norm_cross = nn.LayerNorm(d, eps=cfg.eps)
        self.cross = CrossAttention(d, cfg.heads, cfg.eps)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=cfg.eps)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_hidden, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.checkpoint = False  # recompute this block's activations in backward (set_checkpointing)

    def _forward(self, x: Tensor, c: Tensor, y: Tensor, y_mask: Tensor | None, cos: Tensor, sin: Tensor,
                 packed: PackedAttention | None = None) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)  # (B, D) each; packed: (K, D) per clip
        x = x + gate(g1, self.attn(modulate(self.norm1(x), sh1, sc1, packed), cos, sin, packed), packed)  # (B, N, D)
        x = x + self.cross(self.norm_cross(x), y, y_mask, packed)  # (B, N, D)
        x = x + gate(g2, self.mlp(modulate(self.norm2(x), sh2, sc2, packed)), packed)  # (B, N, D)
        return x  # (B, N, D)

    def forward(self, x: Tensor, c: Tensor, y: Tensor, y_mask: Tensor | None, cos: Tensor, sin: Tensor,
                packed: PackedAttention | None = None) -> Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, c, y, y_mask, cos, sin, packed, use_reentrant=False)
        return self._forward(x, c, y, y_mask, cos, sin, packed)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map from D to a patch of output channels."""

    def __init__(self, hidden: int, out_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=eps)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, c: Tensor, packed: PackedAttention | None = None) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)  # (B, D) each; packed: (K, D) per clip
        return self.linear(modulate(self.norm(x), shift, scale, packed))  # (B, N, C*pt*ph*pw)


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Text-conditioned diffusion transformer over latent spacetime patches (see the module docstring)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if cfg.hidden % cfg.heads or cfg.head_dim % 2:
            raise ValueError(f"hidden {cfg.hidden} must split into {cfg.heads} heads of even size")
        self.cfg = cfg
        patch_vol = cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
        self.x_embed = nn.Linear(cfg.in_channels * patch_vol, cfg.hidden)
        self.t_embed = TimestepEmbedder(cfg.hidden, cfg.freq_dim)
        self.y_embed = TextEmbedder(cfg.text_dim, cfg.hidden)
        self.p_embed = PooledTextEmbedder(cfg.text_dim, cfg.hidden) if cfg.pooled_text else None
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final = FinalLayer(cfg.hidden, cfg.latent_channels * patch_vol, cfg.eps)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All initialisation, in one place (DiT's recipe).

        Linear layers: Xavier-uniform, zero bias. Patch embedding: Xavier on its flattened view (as a conv).
        Time MLP: normal(0.02). Text projection: normal(0.02); null token: normal(0.02). Pooled-text MLP: normal(0.02)
        in, zero out (it adds nothing at init).
        adaLN-Zero: every block's modulation and the final modulation and projection are zero, so at init
        each block is the identity and the model predicts 0. Cross-attention outputs are zero for the same
        reason. Norm weights are one (their defaults).
        """

        def _basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic)
        nn.init.xavier_uniform_(self.x_embed.weight.view(self.x_embed.weight.shape[0], -1))
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        nn.init.normal_(self.y_embed.proj[0].weight, std=0.02)
        nn.init.normal_(self.y_embed.proj[2].weight, std=0.02)
        nn.init.normal_(self.y_embed.null, std=0.02)
        if self.p_embed is not None:
            nn.init.normal_(self.p_embed.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.p_embed.mlp[2].weight)
            nn.init.zeros_(self.p_embed.mlp[2].bias)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
            nn.init.zeros_(block.cross.out.weight)
            nn.init.zeros_(block.cross.out.bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def set_checkpointing(self, blocks: bool | int | list[int] = True) -> None:
        """Activation checkpointing: True/False for all blocks, an int for the first n, or a list of indices."""
        if isinstance(blocks, bool):
            chosen = set(range(len(self.blocks))) if blocks else set()
        elif isinstance(blocks, int):
            chosen = set(range(min(blocks, len(self.blocks))))
        else:
            chosen = set(blocks)
        for i, block in enumerate(self.blocks):
            block.checkpoint = i in chosen

    def grid(self, x: Tensor) -> tuple[int, int, int]:
        """Token grid (T', H', W') of an input (B, C, T, H, W)."""
        pt, ph, pw = self.cfg.patch
        return x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw

    def forward(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None = None,
                packed: PackedLayout | None = None) -> Tensor:
        """Velocity for x (B, C_in, T, H, W) at times t (B,) given text (B, L, text_dim) and its mask (B, L).

        With ``packed``: x (S, L, C_in*pt*ph*pw) packed tokens, t (K,), text (K, L, text_dim) and text_mask (K, L)
        per clip (the mask the layout was built with); returns (S, L, C*pt*ph*pw) tokens."""
        if packed is not None:
            return self._forward_packed(x, t, text, text_mask, packed)
        if x.shape[1] != self.cfg.in_channels:  # x: (B, 2C + 1, T, H, W)
            raise ValueError(f"expected {self.cfg.in_channels} input channels (latent + condition + mask), got {x.shape[1]}")
        grid = self.grid(x)  # (T', H', W') = (T/pt, H/ph, W/pw)
        cos, sin = rope_tables(grid, self.cfg.head_dim, self.cfg.rope_theta, x.device)  # (N, dh/2) each
        h = self.x_embed(patchify(x, self.cfg.patch))  # (B, N, D), N = T' H' W'
        c = self.t_embed(t)  # (B, D)
        if self.p_embed is not None:
            c = c + self.p_embed(text, text_mask)  # (B, D): the caption as a whole, into every adaLN
        y, y_mask = self.y_embed(text.to(h.dtype), text_mask)  # (B, 1+L, D), (B, 1, 1, 1+L) or None
        for block in self.blocks:
            h = block(h, c, y, y_mask, cos, sin)  # (B, N, D)
        h = self.final(h, c)  # (B, N, C*pt*ph*pw)
        return unpatchify(h, grid, self.cfg.patch, self.cfg.latent_channels)  # (B, C, T, H, W)

    def _forward_packed(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None,
                        layout: PackedLayout) -> Tensor:
        """``forward`` on packed rows: the same network, each clip with its own positions, time and caption."""
        patch_vol = self.cfg.patch[0] * self.cfg.patch[1] * self.cfg.patch[2]
        if x.dim() != 3 or x.shape[-1] != self.cfg.in_channels * patch_vol:
            raise ValueError(f"packed input must be (S, L, {self.cfg.in_channels * patch_vol}) tokens, "
                             f"got {tuple(x.shape)}")
        if t.shape[0] != layout.num_clips or text.shape[0] != layout.num_clips:
            raise ValueError(f"{layout.num_clips} packed clips need as many times and captions, got "
                             f"{t.shape[0]} and {text.shape[0]}")
        if text.shape[1] != layout.text_len:
            raise ValueError(f"captions of {text.shape[1]} tokens for a layout built for {layout.text_len}")
        attn = PackedAttention(layout)  # masks or sequence bounds, once for every block
        cos, sin = rope_from_positions(layout.pos, self.cfg.head_dim, self.cfg.rope_theta)  # (S, L, dh/2) each
        h = self.x_embed(x)  # (S, L, D)
        c = self.t_embed(t)  # (K, D)
        if self.p_embed is not None:
            c = c + self.p_embed(text, text_mask)  # (K, D)
        y, _ = self.y_embed(text.to(h.dtype), None)  # (K, 1+L, D); the layout picks the null and real tokens
        for block in self.blocks:
            h = block(h, c, y, None, cos, sin, attn)  # (S, L, D)
        return self.final(h, c, attn)  # (S, L, C*pt*ph*pw)


# ----------------------------------------------------------------------------------------------------------
# Accounting: parameters and FLOPs (used by the benchmark's MFU)
# ----------------------------------------------------------------------------------------------------------


def count_parameters(cfg: DiTConfig) -> int:
    """Parameters of a config, counted on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        model = DiT(cfg)
    return sum(p.numel() for p in model.parameters())


def forward_flops(cfg: DiTConfig, grid: tuple[int, int, int], text_len: int) -> int:
    """Matrix FLOPs of one forward pass for one sample (2 per multiply-add), attention included.

    Counted analytically: every Linear is 2 * rows * in * out; self-attention scores and weighted sum are
    2 * N * N * D each; cross-attention 2 * N * (L + 1) * D each. Norms, RoPE, activations and the
    per-sample adaLN/time MLPs are left out (elementwise or O(D^2) per sample, < 0.1 % here).
    A training step (forward + backward) is 3x this; recomputation under checkpointing is not counted.
    """
    n = grid[0] * grid[1] * grid[2]
    d, m, lk = cfg.hidden, cfg.mlp_hidden, text_len + 1
    patch_vol = cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
    per_block = (
        2 * n * d * 3 * d + 2 * n * d * d  # self-attention projections (qkv, out)
        + 4 * n * n * d  # self-attention QK^T and AV
        + 2 * n * d * d + 2 * lk * d * 2 * d + 2 * n * d * d  # cross projections (q, kv on text, out)
        + 4 * n * lk * d  # cross-attention QK^T and AV
        + 2 * 2 * n * d * m  # MLP
    )
    embed = 2 * n * cfg.in_channels * patch_vol * d + 2 * n * d * cfg.latent_channels * patch_vol
    text = 2 * text_len * (cfg.text_dim * d + d * d)
    return cfg.depth * per_block + embed + text


if __name__ == "__main__":  # print the presets' sizes
    for name in PRESETS:
        c = dit_config(name, text_dim=4096)
        print(f"{name:>5}: hidden={c.hidden:5d} depth={c.depth:3d} heads={c.heads:3d}  params={count_parameters(c) / 1e6:8.1f} M")
