"""Packed sequences for the DiT: clips of different (T, H, W) side by side in rows of a fixed token count.

A packed batch is S rows of L tokens. Each row holds whole clips (never split), one after another, then
padding. ``DiT.forward(..., packed=layout)`` treats every clip as if it ran alone:

- attention stays inside a clip (a document mask over the row: clip k's tokens see clip k's tokens only);
- 3-D RoPE positions restart at (0, 0, 0) for every clip (``PackedLayout.pos``);
- each clip has its own time (and pooled caption): the adaLN modulation of a token is its clip's
  (``clip_modulate`` / ``clip_gate``, which keep per-clip tables, not per-token copies, for backward);
- cross-attention goes from a clip's tokens to that clip's null token and caption tokens only.
Padding tokens see only padding (self-attention) and anything (cross-attention), and take clip 0's modulation;
their outputs are never read, so their gradients are exactly zero.

``pack_layout`` builds the layout on the CPU from the clips' token grids per row and the captions' mask, so the
step needs no host-device sync. How attention is computed is the layout's ``backend``; every backend is the
same math as one clip at a time:

| backend  | how                                                                   | for                          |
|----------|-----------------------------------------------------------------------|------------------------------|
| "sdpa"   | boolean masks (S, 1, L, L) and (S, 1, L, Lk) into SDPA                 | the CPU; O(L^2) mask memory  |
| "flex"   | FlexAttention, block masks from segment ids (cross-clip blocks skipped) | GPU, compiled               |
| "varlen" | a flash varlen kernel on the flattened tokens with ``cu_seqlens``      | GPU (see ``varlen_kernel``)  |
| "split"  | varlen's ``cu_seqlens``, one SDPA call per clip                        | the CPU check of varlen's    |
|          |                                                                       | bookkeeping; a GPU fallback  |

Varlen sequences are the clips in row order plus one sequence per row's padding; a padding sequence gets one
text key (any valid one) so no kernel sees an empty key set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("sdpa", "flex", "varlen", "split")


# ----------------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedLayout:
    """Where every clip of a packed batch sits. Clip k (0..K-1) is numbered in row-major order."""

    grids: tuple[tuple[int, int, int], ...]  # (T', H', W') token grid of each clip
    rows: tuple[int, ...]  # row of each clip
    starts: tuple[int, ...]  # first token of each clip in its row
    length: int  # L, tokens per row
    text_len: int  # Lt, caption tokens per clip in the text tensor the layout was built for
    backend: str
    seg: Tensor  # (S, L) int64: clip of each token, -1 for padding
    pos: Tensor  # (S, L, 3) int64: (t, h, w) patch index of each token in its clip (0 for padding)
    key_index: Tensor  # (S, Lk) int64: each row's text keys as indices into the clips' (K * (1 + Lt)) keys
    key_seg: Tensor  # (S, Lk) int64: clip of each key, -1 for padding
    cu_q: Tensor  # (Q + 1,) int32: varlen sequence starts in the flattened S * L tokens (clips and paddings)
    cu_k: Tensor  # (Q + 1,) int32: each sequence's keys in ``kv_index``
    kv_index: Tensor  # (Nk,) int64: keys of each varlen sequence, indices into the clips' (K * (1 + Lt)) keys
    max_q: int  # bound on the longest varlen sequence (the next power of two)
    max_k: int  # bound on the most keys of one varlen sequence (the next power of two)
    cu_q_list: tuple[int, ...]  # cu_q and cu_k as Python ints (the "split" backend slices with them)
    cu_k_list: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return self.seg.shape[0]

    @property
    def num_clips(self) -> int:
        return len(self.grids)

    @property
    def tokens(self) -> tuple[int, ...]:
        """Tokens of each clip."""
        return tuple(t * h * w for t, h, w in self.grids)

    @property
    def fill(self) -> float:
        """Share of the S * L token slots that hold clip tokens."""
        return sum(self.tokens) / (self.num_rows * self.length)

    def _map(self, fn) -> PackedLayout:
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedLayout:
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedLayout:
        return self._map(lambda x: x.pin_memory())


def pack_layout(rows: list[list[tuple[int, int, int]]], length: int, text_mask: Tensor | None = None,
                text_len: int = 0, backend: str = "sdpa") -> PackedLayout:
    """The layout of clips with token grids ``rows[r]`` (in order) packed into rows of ``length`` tokens.

    ``text_mask`` (K, Lt) bool is the captions' mask as the DiT will see it (after caption dropout): a clip's keys
    are its null token and its True tokens. None: ``text_len`` tokens per clip, all real. Built on the CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"packed attention backend must be one of {BACKENDS}, got {backend!r}")
    grids = [tuple(int(n) for n in g) for row in rows for g in row]
    k_total = len(grids)
    if text_mask is None:
        text_mask = torch.ones(k_total, text_len, dtype=torch.bool)
    text_mask = text_mask.bool().cpu()
    if text_mask.shape[0] != k_total:
        raise ValueError(f"text mask has {text_mask.shape[0]} captions for {k_total} packed clips")
    lt = text_mask.shape[1]
    keep = torch.cat([torch.ones(k_total, 1, dtype=torch.bool), text_mask], dim=1)  # (K, 1 + Lt): null first
    clip_keys = [torch.nonzero(keep[k]).flatten() + k * (1 + lt) for k in range(k_total)]  # each clip's kept keys

    s = len(rows)
    seg = torch.full((s, length), -1, dtype=torch.int64)
    pos = torch.zeros(s, length, 3, dtype=torch.int64)
    row_of, starts, row_keys, row_key_seg = [], [], [], []
    cu_q, cu_k, kv = [0], [0], []
    k = 0
    for r, row in enumerate(rows):
        offset, keys, key_seg = 0, [], []
        for grid in row:
            n = grid[0] * grid[1] * grid[2]
            if offset + n > length:
                raise ValueError(f"row {r} holds {offset + n} tokens, more than its length {length}")
            axes = torch.meshgrid(*[torch.arange(m) for m in grid], indexing="ij")
            seg[r, offset:offset + n] = k
            pos[r, offset:offset + n] = torch.stack([a.reshape(-1) for a in axes], dim=-1)  # (n, 3), from 0
            row_of.append(r)
            starts.append(offset)
            keys.append(clip_keys[k])
            key_seg.append(torch.full((len(clip_keys[k]),), k, dtype=torch.int64))
            cu_q.append(r * length + offset + n)
            kv.append(clip_keys[k])
            cu_k.append(cu_k[-1] + len(clip_keys[k]))
            offset += n
            k += 1
        if offset < length:  # the row's padding: one varlen sequence with one key
            cu_q.append((r + 1) * length)
            kv.append(torch.zeros(1, dtype=torch.int64))
            cu_k.append(cu_k[-1] + 1)
        row_keys.append(torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int64))
        row_key_seg.append(torch.cat(key_seg) if key_seg else torch.zeros(0, dtype=torch.int64))
    lk = max(1, max(len(x) for x in row_keys))
    if backend == "flex":  # a compiled kernel per key count: round up so captions of any length share a few
        lk = -(-lk // 64) * 64
    key_index = torch.zeros(s, lk, dtype=torch.int64)  # padding keys point at key 0 (a null token): valid values
    key_seg_t = torch.full((s, lk), -1, dtype=torch.int64)
    for r in range(s):
        key_index[r, :len(row_keys[r])] = row_keys[r]
        key_seg_t[r, :len(row_key_seg[r])] = row_key_seg[r]
    q_lens = [b - a for a, b in zip(cu_q[:-1], cu_q[1:])]
    k_lens = [b - a for a, b in zip(cu_k[:-1], cu_k[1:])]
    # the kernels need only upper bounds; powers of two keep a compiled block to a few variants across steps
    max_q, max_k = 1 << (max(q_lens) - 1).bit_length(), 1 << (max(k_lens) - 1).bit_length()
    return PackedLayout(
        grids=tuple(grids), rows=tuple(row_of), starts=tuple(starts), length=length, text_len=lt, backend=backend,
        seg=seg, pos=pos, key_index=key_index, key_seg=key_seg_t,
        cu_q=torch.tensor(cu_q, dtype=torch.int32), cu_k=torch.tensor(cu_k, dtype=torch.int32),
        kv_index=torch.cat(kv), max_q=max_q, max_k=max_k,
        cu_q_list=tuple(cu_q), cu_k_list=tuple(cu_k))


# ----------------------------------------------------------------------------------------------------------
# Per-clip adaLN modulation
# ----------------------------------------------------------------------------------------------------------


class _ClipAffine(torch.autograd.Function):
    """y = x * (one + scale[clip]) + shift[clip] for per-clip tables (K, D) and a token -> clip index (S, L).

    Indexing the tables and multiplying would keep the gathered (S, L, D) copies alive until backward, six per
    block (about 0.6 GB per block for the 1B preset at 32k tokens in bf16); this keeps only the tables and the
    index and gathers again in backward, where the tables' gradients are sums over each clip's tokens."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, shift: Tensor | None, clip: Tensor, one: float) -> Tensor:
        ctx.save_for_backward(x, scale, clip)
        ctx.one, ctx.has_shift = one, shift is not None
        y = x * (one + scale[clip])
        return y + shift[clip] if shift is not None else y

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, scale, clip = ctx.saved_tensors
        gx = gy * (ctx.one + scale[clip]) if ctx.needs_input_grad[0] else None
        flat, d = clip.reshape(-1), scale.shape[-1]

        acc = torch.promote_types(scale.dtype, torch.float32)  # bf16 tables sum in fp32

        def per_clip(v: Tensor) -> Tensor:  # (S, L, D) -> (K, D): sums over each clip's tokens
            total = torch.zeros(scale.shape, dtype=acc, device=v.device)
            return total.index_add_(0, flat, v.reshape(-1, d).to(acc)).to(scale.dtype)

        gscale = per_clip(gy * x) if ctx.needs_input_grad[1] else None
        gshift = per_clip(gy) if ctx.has_shift and ctx.needs_input_grad[2] else None
        return gx, gscale, gshift, None, None


def clip_modulate(x: Tensor, shift: Tensor, scale: Tensor, clip: Tensor) -> Tensor:
    """adaLN modulation with each token's clip's shift and scale: x (S, L, D), shift/scale (K, D), clip (S, L)."""
    return _ClipAffine.apply(x, scale, shift, clip, 1.0)


def clip_gate(gate: Tensor, y: Tensor, clip: Tensor) -> Tensor:
    """adaLN-Zero gate with each token's clip's gate: gate (K, D), y (S, L, D), clip (S, L)."""
    return _ClipAffine.apply(y, gate, None, clip, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Attention over a layout
# ----------------------------------------------------------------------------------------------------------


_compiled_flex = None


def _flex_attention():
    """FlexAttention: compiled on CUDA (its fused kernel), eager elsewhere (a reference that materialises scores)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex if torch.cuda.is_available() else flex_attention


def varlen_kernel():
    """The flash varlen kernel: PyTorch's own (``torch.nn.attention.varlen``), else flash-attn's, else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func
    except ImportError:
        return None


class PackedAttention:
    """Self- and cross-attention of one packed forward pass: masks or sequence bounds built once from the layout
    (on its device) and shared by every block."""

    def __init__(self, layout: PackedLayout):
        self.layout = layout
        self.backend = layout.backend
        seg, key_seg = layout.seg, layout.key_seg
        self.token_clip = seg.clamp_min(0)  # (S, L): padding borrows clip 0's modulation (its output is unused)
        if self.backend == "sdpa":
            self.self_mask = (seg[:, :, None] == seg[:, None, :])[:, None]  # (S, 1, L, L)
            self.cross_mask = ((seg[:, :, None] == key_seg[:, None, :]) | (seg[:, :, None] < 0))[:, None]
        elif self.backend == "flex":
            from torch.nn.attention.flex_attention import create_block_mask

            def same_clip(b, h, q, k):
                return seg[b, q] == seg[b, k]

            def own_caption(b, h, q, k):
                return (seg[b, q] == key_seg[b, k]) | (seg[b, q] < 0)

            s, length, lk = seg.shape[0], seg.shape[1], key_seg.shape[1]
            on_gpu = seg.device.type == "cuda"  # compiled mask building: no (L, L) tensor is ever made
            self.self_mask = create_block_mask(same_clip, s, None, length, length, device=seg.device, _compile=on_gpu)
            self.cross_mask = create_block_mask(own_caption, s, None, length, lk, device=seg.device, _compile=on_gpu)
        elif self.backend == "varlen":
            self.kernel = varlen_kernel()
            if self.kernel is None or seg.device.type != "cuda":
                raise ValueError("packed attention 'varlen' needs a CUDA device and torch.nn.attention.varlen or "
                                 "flash-attn; use 'split' or 'sdpa' on the CPU")

    def modulate(self, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        """x (S, L, D) modulated by per-clip shift and scale (K, D) (``clip_modulate``)."""
        return clip_modulate(x, shift, scale, self.token_clip)

    def gate(self, gate: Tensor, y: Tensor) -> Tensor:
        """y (S, L, D) times per-clip gates (K, D) (``clip_gate``)."""
        return clip_gate(gate, y, self.token_clip)

    def self_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v (S, L, h, dh) -> (S, L, h, dh), attention within each clip."""
        if self.backend == "sdpa":
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=self.self_mask)  # (S, h, L, dh)
            return o.transpose(1, 2)
        if self.backend == "flex":
            o = _flex_attention()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=self.self_mask)
            return o.transpose(1, 2)
        s, n, h, dh = q.shape
        q, k, v = (x.reshape(s * n, h, dh) for x in (q, k, v))  # (S L, h, dh)
        lay = self.layout
        if self.backend == "split":
            return _split_attention(q, k, v, lay, cross=False).view(s, n, h, dh)
        return self.kernel(q, k, v, lay.cu_q, lay.cu_q, lay.max_q, lay.max_q).view(s, n, h, dh)

    def cross_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (S, L, h, dh), k and v (K, 1 + Lt, h, dh) per clip -> (S, L, h, dh), each clip to its own caption."""
        lay = self.layout
        k, v = k.flatten(0, 1), v.flatten(0, 1)  # (K (1 + Lt), h, dh)
        if self.backend in ("sdpa", "flex"):
            kr, vr = k[lay.key_index], v[lay.key_index]  # (S, Lk, h, dh): each row's clips' keys
            if self.backend == "sdpa":
                o = F.scaled_dot_product_attention(q.transpose(1, 2), kr.transpose(1, 2), vr.transpose(1, 2),
                                                   attn_mask=self.cross_mask)
            else:
                o = _flex_attention()(q.transpose(1, 2), kr.transpose(1, 2), vr.transpose(1, 2),
                                      block_mask=self.cross_mask)
            return o.transpose(1, 2)  # (S, L, h, dh)
        s, n, h, dh = q.shape
        q = q.reshape(s * n, h, dh)  # (S L, h, dh)
        k, v = k[lay.kv_index], v[lay.kv_index]  # (Nk, h, dh): each sequence's keys, in sequence order
        if self.backend == "split":
            return _split_attention(q, k, v, lay, cross=True).view(s, n, h, dh)
        return self.kernel(q, k, v, lay.cu_q, lay.cu_k, lay.max_q, lay.max_k).view(s, n, h, dh)


@torch.compiler.disable  # a Python loop over one layout's bounds: compiled, it would recompile every step
def _split_attention(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, cross: bool) -> Tensor:
    """Varlen attention as one SDPA call per sequence i: q[cu_q[i]:cu_q[i+1]] to k, v[cu_k[i]:cu_k[i+1]] (cross)
    or to k, v[cu_q[i]:cu_q[i+1]] (self); (Nq, h, dh)."""
    cu_q = layout.cu_q_list
    cu_k = layout.cu_k_list if cross else cu_q
    parts = []
    for a, b, c, d in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]):
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1)[None], k[c:d].transpose(0, 1)[None],
                                           v[c:d].transpose(0, 1)[None])  # (1, h, n, dh)
        parts.append(o[0].transpose(0, 1))
    return torch.cat(parts)  # (Nq, h, dh)
