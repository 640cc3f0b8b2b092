"""Near-duplicate clips: a perceptual hash per clip, and global grouping on CLIP embeddings or hashes.

Two clips are near-duplicates when

- both have a CLIP embedding and their cosine similarity is at least ``DedupThresholds.cosine``, or
- otherwise (one or both lack an embedding) both have a pHash and the Hamming distance is at most
  ``DedupThresholds.hamming``.

Grouping is greedy "leader" clustering in a fixed priority order (highest ``quality`` first when given, then
``clip_id`` ascending): the first unassigned clip becomes a representative and claims every unassigned clip
similar to it. Every duplicate is therefore directly similar to its representative (no chains A~B~C
merging A and C), and the result depends only on the inputs, not on their order.

Scale: clips with an identical embedding (or hash) collapse into one node first, so mass copies cost nothing.
Embeddings are compared by an exact chunked matrix multiply (O(n^2 d) flops in BLAS, O(chunk * n)
memory; ~1 s for 5,000 x 512 on 2 cores, GPU/ANN territory beyond ~10^5 clips). Hashes are blocked by
pigeonhole bands: split the 64 bits into ``hamming + 1`` bands; two hashes within distance ``hamming`` agree
exactly on at least one band, so comparing only clips that share a band value finds every pair (no misses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

# -------------------------------------------------------------------------------------------------------------
# perceptual hash
# -------------------------------------------------------------------------------------------------------------

PHASH_MODEL = "dct-phash64/temporal-mean"


def phash_image(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash of one luma image ``(H, W)`` (any size, any real dtype).

    Resize to 32x32 (area), take the 8x8 lowest-frequency DCT coefficients, and set a bit where a coefficient
    exceeds the median of the 63 AC coefficients. The DC term (overall brightness) is left out of the median, so
    a global brightness or contrast change keeps the hash; bits are row-major, most significant first.
    """
    small = cv2.resize(np.asarray(gray, dtype=np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()  # (64,)
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def phash_frames(frames: np.ndarray) -> str:
    """pHash (16 hex digits) of the temporal mean luma of a clip's sampled frames ``(K, H, W, 3)`` uint8.

    The mean over the clip's samples, not a single frame, so two copies of a clip cut a few frames apart (or
    sampled at slightly different times) still hash alike; it also averages away per-frame coding noise.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (K>=1, H, W, 3), got {frames.shape}")
    gray = np.mean([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames], axis=0)
    return f"{phash_image(gray):016x}"


def hamming(a: str, b: str) -> int:
    """Hamming distance between two 16-hex-digit hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


# -------------------------------------------------------------------------------------------------------------
# similarity graph
# -------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupThresholds:
    """When two clips count as near-duplicates (see the module docstring)."""

    cosine: float = 0.95  # CLIP image-embedding cosine similarity, inclusive
    hamming: int = 8  # pHash bit differences out of 64, inclusive
    chunk_bytes: int = 1 << 28  # memory cap for one block of a similarity / distance matrix


def _embedding_edges(emb: np.ndarray, rows: np.ndarray, cosine: float, chunk_bytes: int) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j`` (indices into ``rows``' space), with cosine >= threshold: int64 ``(E, 2)``."""
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # (m, d) unit rows
    m = x.shape[0]
    step = max(1, min(m, chunk_bytes // max(1, 4 * m)))
    found = []
    for s in range(0, m, step):
        sim = x[s : s + step] @ x.T  # (c, m)
        i, j = np.nonzero(sim >= cosine)
        i = i + s
        keep = j > i
        found.append(np.stack([rows[i[keep]], rows[j[keep]]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), np.int64)


def _hash_edges(codes: np.ndarray, rows: np.ndarray, max_dist: int, chunk_bytes: int) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, whose 64-bit codes differ in at most ``max_dist`` bits: int64 ``(E, 2)``."""
    nb = min(64, max_dist + 1)  # pigeonhole: some band matches exactly
    bounds = np.linspace(0, 64, nb + 1).astype(int)
    found = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        band = (codes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)  # (n,)
        order = np.argsort(band, kind="stable")
        sb = band[order]
        starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
        ends = np.r_[starts[1:], len(sb)]
        for a, b in zip(starts, ends):
            if b - a < 2:
                continue
            idx = order[a:b]  # (g,) members sharing this band value
            step = max(1, chunk_bytes // (8 * len(idx)))  # rows per block of the (g, g) distance matrix
            for r in range(0, len(idx), step):
                dist = np.bitwise_count(codes[idx[r : r + step]][:, None] ^ codes[idx][None, :])  # (s, g)
                i, j = np.nonzero(dist <= max_dist)
                keep = j > i + r
                found.append(np.stack([rows[idx[i[keep] + r]], rows[idx[j[keep]]]], axis=1))
    if not found:
        return np.empty((0, 2), np.int64)
    e = np.concatenate(found)
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


def _parse_embeddings(embeddings, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(has (n,) bool, matrix (m, d) of the present ones) from an (n, d) array or a list of vectors/None."""
    if embeddings is None:
        return np.zeros(n, bool), np.empty((0, 0), np.float32)
    vecs = [None if e is None else np.asarray(e, dtype=np.float32).reshape(-1) for e in embeddings]
    if len(vecs) != n:
        raise ValueError(f"{len(vecs)} embeddings for {n} clips")
    has = np.array([v is not None and v.size > 0 and bool(np.all(np.isfinite(v))) and bool(np.any(v)) for v in vecs],
                   dtype=bool)  # NaN or all-zero vectors count as absent
    present = [vecs[i] for i in np.flatnonzero(has)]
    if present and len({v.size for v in present}) != 1:
        raise ValueError("embeddings have different lengths")
    return has, (np.stack(present) if present else np.empty((0, 0), np.float32))


def _parse_hashes(phashes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(has (n,) bool, codes (n,) uint64, 0 where absent) from a list of 16-hex strings or None."""
    if phashes is None:
        return np.zeros(n, bool), np.zeros(n, np.uint64)
    if len(phashes) != n:
        raise ValueError(f"{len(phashes)} hashes for {n} clips")
    has = np.array([isinstance(h, str) and len(h) == 16 for h in phashes])
    codes = np.array([int(h, 16) if ok else 0 for h, ok in zip(phashes, has)], dtype=np.uint64)
    return has, codes


def _signals(n: int, embeddings, phashes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(has_embedding (n,), embeddings (m, d) of those, has_hash (n,), codes (n,) uint64)."""
    has_e, emb = _parse_embeddings(embeddings, n)
    has_h, codes = _parse_hashes(phashes, n)
    return has_e, emb, has_h, codes


def similarity_edges(has_e: np.ndarray, emb: np.ndarray, has_h: np.ndarray, codes: np.ndarray,
                     threshold: DedupThresholds = DedupThresholds()) -> np.ndarray:
    """All near-duplicate pairs ``(i, j)``, ``i < j``, int64 ``(E, 2)``, under the rule of the module docstring.

    ``emb`` holds the rows of the items with ``has_e`` (in item order); ``codes`` one entry per item.
    """
    parts = []
    rows_e = np.flatnonzero(has_e)
    if rows_e.size >= 2:
        parts.append(_embedding_edges(emb, rows_e, threshold.cosine, threshold.chunk_bytes))
    rows_h = np.flatnonzero(has_h)
    if rows_h.size >= 2 and not has_e[rows_h].all():
        e = _hash_edges(codes[rows_h], rows_h, threshold.hamming, threshold.chunk_bytes)
        parts.append(e[~(has_e[e[:, 0]] & has_e[e[:, 1]])])  # the embedding rule decides those pairs
    return np.concatenate(parts) if parts else np.empty((0, 2), np.int64)


# -------------------------------------------------------------------------------------------------------------
# grouping
# -------------------------------------------------------------------------------------------------------------


def priority_order(clip_ids: Sequence[str], quality: Sequence[float | None] | None = None) -> list[int]:
    """Indices in representative-priority order: higher ``quality`` first (None/NaN last), then clip_id."""
    def key(i: int):
        q = None if quality is None else quality[i]
        q_ok = q is not None and np.isfinite(q)
        return (0 if q_ok else 1, -float(q) if q_ok else 0.0, clip_ids[i])

    return sorted(range(len(clip_ids)), key=key)


def _nodes(n: int, has_e: np.ndarray, emb_rows: list[bytes], has_h: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Node id per clip: clips with an identical embedding (or, without one, an identical hash) share a node.

    Identical items are mutually similar, so grouping runs on nodes: a thousand copies of one clip (or of a
    black frame) cost one node instead of half a million edges. Clips with neither signal stay alone.
    """
    keys: dict = {}
    node = np.empty(n, np.int64)
    e_iter = iter(emb_rows)
    for i in range(n):
        if has_e[i]:
            k = ("e", next(e_iter))
        elif has_h[i]:
            k = ("h", int(codes[i]))
        else:
            k = ("x", i)
        node[i] = keys.setdefault(k, len(keys))
    return node


def group_greedy(node: np.ndarray, edges: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Leader clustering over nodes: ``rep[i]`` is the representative clip of clip ``i`` (itself when kept).

    ``node[i]`` is clip i's node (identical clips share one), ``edges`` are similar node pairs. The first
    unassigned clip in ``order`` leads; it claims every clip of its own node and of each adjacent node not yet
    claimed. A node is always claimed whole, so this equals leader clustering on the clips themselves.
    """
    n, m = len(node), int(node.max()) + 1 if len(node) else 0
    both = np.concatenate([edges, edges[:, ::-1]]) if len(edges) else np.empty((0, 2), np.int64)
    both = both[np.argsort(both[:, 0], kind="stable")]
    ptr = np.searchsorted(both[:, 0], np.arange(m + 1))  # CSR row pointers over nodes
    nbrs = both[:, 1]
    by_node = np.argsort(node, kind="stable")
    mptr = np.searchsorted(node[by_node], np.arange(m + 1))  # members of node k: by_node[mptr[k]:mptr[k+1]]
    rep = np.full(n, -1, np.int64)
    claimed = np.zeros(m, bool)
    for i in order:
        if rep[i] >= 0:
            continue
        ks = np.r_[node[i], nbrs[ptr[node[i]] : ptr[node[i] + 1]]]
        ks = ks[~claimed[ks]]
        claimed[ks] = True
        for k in ks:
            rep[by_node[mptr[k] : mptr[k + 1]]] = i
    return rep


def find_duplicates(
    clip_ids: Sequence[str],
    embeddings=None,
    phashes: Sequence[str | None] | None = None,
    threshold: DedupThresholds = DedupThresholds(),
    quality: Sequence[float | None] | None = None,
) -> dict[str, str | None]:
    """Map every clip id to the id of the clip it duplicates (``None`` for the clips kept).

    Args:
        clip_ids: unique ids, one per clip.
        embeddings: ``(n, d)`` array or a list of vectors / None (clips without an embedding).
        phashes: 16-hex-digit hashes or None, one per clip.
        threshold: similarity thresholds (see :class:`DedupThresholds`).
        quality: optional score per clip; the highest-scoring clip of a group is kept (ties: smallest id).
    """
    ids = list(clip_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("clip_ids are not unique")
    n = len(ids)
    if n == 0:
        return {}
    has_e, emb, has_h, codes = _signals(n, embeddings, phashes)
    node = _nodes(n, has_e, [r.tobytes() for r in emb], has_h, codes)
    _, first = np.unique(node, return_index=True)  # (nodes,) first clip of each node stands for it
    sub_e = np.flatnonzero(has_e[first])
    emb_rank = np.cumsum(has_e) - 1  # row of clip i in emb
    edges = similarity_edges(has_e[first], emb[emb_rank[first[sub_e]]] if sub_e.size else emb, has_h[first],
                             codes[first], threshold)  # fmt: skip
    rep = group_greedy(node, edges, priority_order(ids, quality))
    return {cid: (None if rep[i] == i else ids[rep[i]]) for i, cid in enumerate(ids)}


def dedup_methods(embeddings, n: int) -> list[str]:
    """The ``dedup_method`` column: ``clip-embedding`` where a clip has an embedding, else ``phash``."""
    has, _ = _parse_embeddings(embeddings, n)
    return ["clip-embedding" if h else "phash" for h in has]
