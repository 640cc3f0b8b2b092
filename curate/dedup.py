"""Near-duplicate clips: per-clip signatures, and global grouping on CLIP embeddings, sequences or hashes.

Two clips are near-duplicates when

- both have a CLIP embedding and their cosine similarity is at least ``DedupThresholds.cosine``, or
- otherwise both have a sequence signature (:func:`sequence_signature`: 8 grey 32x32 thumbnails over the clip)
  and :func:`sequence_distance` finds them alike: one clip's whole frame is registered onto a window of the
  other (a crop of 70-100 % of the side, anywhere), the thumbnails are aligned in time (an offset of up to 3 of
  8 thumbnails: a window of the same shot that starts later), and at one offset both the aligned appearance
  (mean squared difference, at most ``sequence_appearance``) and the aligned frame-to-frame change agree. The
  change is compared in each cell of a 4 x 4 grid and the worst cell counts (at most ``sequence_motion``): one
  signer's different words (same person, same backdrop, hands moving elsewhere or otherwise) differ in a few
  cells, which a whole-frame measure averaged away. A static scene that only changes in the part outside the
  overlap (an empty car park, then a car arriving in the last third) still matches, as a later window of the
  empty shot would; or
- otherwise both have a pHash (of the temporal-mean luma) within ``DedupThresholds.hamming`` bits.

Grouping is greedy "leader" clustering in a fixed priority order (highest ``quality`` first when given, then
``clip_id`` ascending): the first unassigned clip becomes a representative and claims every unassigned clip
similar to it. Every duplicate is therefore directly similar to its representative (no chains A~B~C
merging A and C), and the result depends only on the inputs, not on their order.

Scale: clips with an identical embedding (signature, hash) collapse into one node first, so mass copies cost
nothing. Embeddings are compared by an exact chunked matrix multiply (O(n^2 d) flops in BLAS, O(chunk * n)
memory; ~1 s for 5,000 x 512 on 2 cores, GPU/ANN territory beyond ~10^5 clips). Sequence signatures are
blocked by one chunked matrix multiply of each clip's mean thumbnail against 28 coarse windows of every other
(pairs further apart than ``sequence_block`` are never compared), then each remaining pair costs ~10-20 ms in
numpy (registration and time alignment). Hashes are blocked by pigeonhole bands: split the 64 bits into
``hamming + 1`` bands; two hashes within distance ``hamming`` agree exactly on at least one band, so comparing
only clips that share a band value finds every pair (no misses).
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
# sequence signature: registered grey thumbnails over time
# -------------------------------------------------------------------------------------------------------------

SIG_MODEL = "grey32x8/registered-sequence"
SIG_FRAMES = 8  # thumbnails per clip, evenly spread over the sampled frames
SIG_SIDE = 32  # stored thumbnail side (the aspect ratio is not kept: copies keep it, so both sides squash alike)
_CMP_SIDE = 32  # side of the compared window (the stored side: a crop window is read at full detail)
_REG_SIDE = 16  # side at which windows are registered and blocked (cheap; the mean thumbnail is smooth)
_SHIFTS = np.arange(-3.0, 4.0)  # time offsets tried, in thumbnails (an overlapping window starts later)
_MIN_OVERLAP = 5  # thumbnails that must overlap at a time offset
_CELLS = 4  # motion is compared in a 4 x 4 grid of cells over the compared window (8 x 8 pixels each)
_POOL = 2  # frame changes are averaged over 2 x 2 pixels first: a registration error under a pixel cancels
_NOISE = 0.0025  # motion noise floor per pooled value: still clips differ in coding noise only


def sequence_signature(frames: np.ndarray) -> bytes:
    """``SIG_FRAMES`` grey ``SIG_SIDE`` x ``SIG_SIDE`` thumbnails of a clip's sampled frames ``(K, H, W, 3)`` uint8.

    The thumbnails are taken evenly over the K frames (the build's sampler spreads them over the clip, so a copy
    played faster or slower is sampled at the same moments of the action). Returns ``SIG_FRAMES * SIG_SIDE**2``
    bytes (uint8, row-major per thumbnail, thumbnails in time order).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (K>=1, H, W, 3), got {frames.shape}")
    pick = np.round(np.linspace(0, len(frames) - 1, SIG_FRAMES)).astype(int)
    thumbs = [cv2.resize(cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY), (SIG_SIDE, SIG_SIDE),
                         interpolation=cv2.INTER_AREA) for i in pick]
    return np.stack(thumbs).astype(np.uint8).tobytes()


def _stack(sig: bytes) -> np.ndarray:
    """A signature as float32 ``(SIG_FRAMES, SIG_SIDE, SIG_SIDE)``, lightly blurred for resampling."""
    t = np.frombuffer(sig, np.uint8).reshape(SIG_FRAMES, SIG_SIDE, SIG_SIDE).transpose(1, 2, 0).astype(np.float32)
    return cv2.GaussianBlur(t, (0, 0), 0.7).transpose(2, 0, 1).copy()


def _resample(start: np.ndarray, length: np.ndarray, side: int = _CMP_SIDE) -> np.ndarray:
    """Linear-interpolation matrices ``(m, side, SIG_SIDE)`` reading ``side`` pixel centres evenly over
    ``[start, start + length)`` of a ``SIG_SIDE`` axis, one per entry of ``start``/``length`` (unit coordinates;
    the edge pixels repeat outside)."""
    start, length = np.atleast_1d(start)[:, None], np.atleast_1d(length)[:, None]  # (m, 1)
    x = (start + (np.arange(side) + 0.5) * length / side) * SIG_SIDE - 0.5  # (m, side)
    x = np.clip(x, 0, SIG_SIDE - 1)
    return np.maximum(0, 1 - np.abs(x[:, :, None] - np.arange(SIG_SIDE))).astype(np.float32)  # triangle kernel


def _normalise(w: np.ndarray) -> np.ndarray:
    """Each row of ``(..., d)`` at zero mean and unit std (std floored at 1 grey level: flat stays flat)."""
    w = w - w.mean(axis=-1, keepdims=True)
    return w / np.maximum(w.std(axis=-1, keepdims=True), 1.0)


def _windows(image: np.ndarray, params: np.ndarray, side: int = _REG_SIDE) -> np.ndarray:
    """Square windows ``params`` ``(m, 3)`` = (side z as a share of the frame, centre y, centre x; unit
    coordinates) of one ``(SIG_SIDE, SIG_SIDE)`` image, resampled to ``side``: ``(m, side**2)``."""
    z, cy, cx = params[:, 0], params[:, 1], params[:, 2]
    # the rows read once per distinct (top, height): a local grid of 75 windows has at most 15
    spans, which = np.unique(np.stack([cy - z / 2, z], axis=1), axis=0, return_inverse=True)
    rows = np.einsum("mij,jk->mik", _resample(spans[:, 0], spans[:, 1], side), image)  # plain loops: tiny, no BLAS
    w = np.einsum("mik,mlk->mil", rows[which.reshape(-1)], _resample(cx - z / 2, z, side))
    return _normalise(w.reshape(len(params), -1))


def _window(stack: np.ndarray, z: float, cy: float, cx: float) -> np.ndarray:
    """One window (see :func:`_windows`) of every thumbnail of a ``(frames, SIG_SIDE, SIG_SIDE)`` stack:
    ``(frames, _CMP_SIDE**2)``."""
    ry, rx = _resample(np.float64(cy - z / 2), np.float64(z))[0], _resample(np.float64(cx - z / 2), np.float64(z))[0]
    return _normalise((ry @ stack @ rx.T).reshape(len(stack), -1))


def _clamp(p: np.ndarray) -> np.ndarray:
    """Windows ``(m, 3)`` moved inside the frame: side 60-100 %, centre at least half a side from each edge."""
    z = np.clip(p[:, 0], 0.6, 1.0)
    return np.stack([z, np.clip(p[:, 1], z / 2, 1 - z / 2), np.clip(p[:, 2], z / 2, 1 - z / 2)], axis=1)


# the coarse windows: the whole frame, and 90 / 80 / 70 % of the side at the centre, edges and corners
_COARSE = _clamp(np.array([(1.0, 0.5, 0.5)] + [(z, 0.5 + dy * (1 - z) / 2, 0.5 + dx * (1 - z) / 2)
                                               for z in (0.9, 0.8, 0.7) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]))
_LOCAL = np.array([(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2)], float)


class _Prepared:
    """One clip's signature made ready for all of its pairs: the stack, its mean thumbnail in every ``_COARSE``
    window (the first is the whole frame) and, when first asked for, the whole-frame window sequence."""

    def __init__(self, stack: np.ndarray):
        self.stack = stack
        self.mean = stack.mean(axis=0)
        self.coarse = _windows(self.mean, _COARSE)
        self._whole: np.ndarray | None = None

    @property
    def whole(self) -> np.ndarray:
        if self._whole is None:
            self._whole = _window(self.stack, 1.0, 0.5, 0.5)
        return self._whole


def _register(full: _Prepared, other: _Prepared) -> np.ndarray:
    """The window ``(z, cy, cx)`` of ``other`` that best shows ``full`` (its whole frame), matched on the clips'
    mean thumbnails: the best of ``_COARSE``, then two rounds of a local grid around it."""
    target = full.coarse[0]
    best = _COARSE
    for step in (None, 0.025, 0.01):
        cand = best if step is None else _clamp(best + _LOCAL * step)
        wins = other.coarse if step is None else _windows(other.mean, cand)
        cost = ((wins - target) ** 2).mean(axis=1)
        best = cand[int(np.argmin(cost))][None]
    return best[0]


def _time_warps(k: int) -> tuple[np.ndarray, np.ndarray]:
    """For every offset of ``_SHIFTS``: the matrix reading a ``k``-step sequence at times ``i + delta`` (linear in
    between) ``(offsets, k, k)``, and which of those times exist ``(offsets, k)``."""
    x = np.arange(k)[None, :] + _SHIFTS[:, None]  # (offsets, k)
    ok = (x >= -1e-6) & (x <= k - 1 + 1e-6)
    x = np.clip(x, 0, k - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, k - 1)
    f = x - lo
    m = np.zeros((len(_SHIFTS), k, k), np.float32)
    rows = np.arange(k)[None, :].repeat(len(_SHIFTS), 0)
    offs = np.arange(len(_SHIFTS))[:, None].repeat(k, 1)
    np.add.at(m, (offs, rows, lo), 1 - f)
    np.add.at(m, (offs, rows, hi), f)
    return m, ok


_WARPS = _time_warps(SIG_FRAMES)


def _cells(d: np.ndarray) -> np.ndarray:
    """Frame differences ``(..., _CMP_SIDE**2)`` averaged over ``_POOL`` x ``_POOL`` pixels and cut into a
    ``_CELLS`` x ``_CELLS`` grid: ``(..., _CELLS**2, values per cell)``."""
    p, c, sh = _CMP_SIDE // _POOL, _CMP_SIDE // _POOL // _CELLS, d.shape[:-1]
    x = d.reshape(*sh, p, _POOL, p, _POOL).mean(axis=(-3, -1))
    return np.moveaxis(x.reshape(*sh, _CELLS, c, _CELLS, c), -3, -2).reshape(*sh, _CELLS**2, c * c)


def _terms(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(appearance, motion, overlap) of two window sequences ``(frames, d)`` at every time offset of ``_SHIFTS``,
    each ``(offsets,)``: ``b`` is read at times ``i + delta`` against ``a`` at ``i``.

    appearance: mean squared difference of the aligned thumbnails (each at zero mean, unit std; 0 = equal,
    2 = unrelated). motion: in each cell of a ``_CELLS`` x ``_CELLS`` grid, the squared difference of the aligned
    frame-to-frame changes (pooled over ``_POOL`` x ``_POOL`` pixels) over their energy plus a noise floor, and the
    worst cell (0 = the same movement everywhere or still, 1 = unrelated movement somewhere, up to 2 = opposite).
    Per cell, so a hand that moves differently in one part of the frame is not averaged away by a still rest.
    overlap: how many aligned thumbnails exist.
    """
    warp, ok = _WARPS
    y = np.einsum("oij,jd->oid", warp, b)  # (offsets, frames, d): b read at i + delta
    y = (y - y.mean(axis=2, keepdims=True)) / np.maximum(y.std(axis=2, keepdims=True), 1e-3)
    okf = ok.astype(np.float32)
    n_ok = okf.sum(axis=1)
    app = (((a[None] - y) ** 2).mean(axis=2) * okf).sum(axis=1) / np.maximum(n_ok, 1)
    pair_ok = (okf[:, 1:] * okf[:, :-1])[:, :, None]  # (offsets, frames - 1, 1): both ends of a change exist
    cx, cy = _cells(np.diff(a, axis=0))[None], _cells(np.diff(y, axis=1))  # (offsets, frames - 1, cells, v)
    num = (((cx - cy) ** 2).sum(axis=3) * pair_ok).sum(axis=1)  # (offsets, cells)
    den = (((cx**2).sum(axis=3) + (cy**2).sum(axis=3)) * pair_ok).sum(axis=1)
    floor = _NOISE * cx.shape[-1] * np.maximum(pair_ok.sum(axis=(1, 2)), 1)[:, None]
    return app, (num / (den + floor)).max(axis=1), n_ok


def _compare(a: np.ndarray, b: np.ndarray, weights: tuple[float, float]) -> tuple[float, float, float]:
    """(score, appearance, motion) of two window sequences ``(frames, d)`` at their best time offset (see
    :func:`_terms`); score = the larger of appearance and motion over their ``weights`` (a duplicate at <= 1)."""
    app, mot, n_ok = _terms(a, b)
    score = np.maximum(app / weights[0], mot / weights[1])
    score[n_ok < min(_MIN_OVERLAP, len(b))] = np.inf
    i = int(np.argmin(score))
    return float(score[i]), float(app[i]), float(mot[i])


def sequence_distance(sig_a: bytes, sig_b: bytes, weights: tuple[float, float] | None = None
                      ) -> tuple[float, float, float]:
    """(score, appearance, motion) of two clips' :func:`sequence_signature` s; a duplicate at score <= 1.

    ``weights``: the appearance and motion limits, default ``DedupThresholds()``'s.

    Each clip's whole frame is registered onto a window of the other (a crop of 70-100 % of the side, anywhere
    in the frame), both directions are tried and the better kept; the time offset is searched in whole thumbnails.
    """
    if weights is None:
        weights = (DedupThresholds.sequence_appearance, DedupThresholds.sequence_motion)
    return _pair(_Prepared(_stack(sig_a)), _Prepared(_stack(sig_b)), weights)


def _directions(a: _Prepared, b: _Prepared, weights: tuple[float, float]):
    """(score, appearance, motion) with ``a``'s whole frame registered onto ``b``, then the other way round."""
    for full, other in ((a, b), (b, a)):
        yield _compare(full.whole, _window(other.stack, *_register(full, other)), weights)


def _pair(a: _Prepared, b: _Prepared, weights: tuple[float, float]) -> tuple[float, float, float]:
    return min(_directions(a, b, weights))


def _alike(a: _Prepared, b: _Prepared, weights: tuple[float, float]) -> bool:
    """``_pair(a, b)[0] <= 1``, without the second direction when the first already says so."""
    return any(score <= 1.0 for score, _, _ in _directions(a, b, weights))


def _sequence_candidates(win: np.ndarray, max_cost: float, chunk_bytes: int) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, whose mean thumbnails match in some coarse window (one clip's whole frame
    against a window of the other) within ``max_cost`` (mean squared difference): int64 ``(E, 2)``.

    Chunked matrix multiplies: every clip's whole frame against every clip's windows, both ways.
    """
    n, w, d = win.shape
    full = win[:, 0]  # (n, d)
    keys = win.reshape(n * w, d)
    step = max(1, min(n, chunk_bytes // max(1, 8 * n * w)))
    found = []
    for s in range(0, n, step):
        fwd = (full[s : s + step] @ keys.T).reshape(-1, n, w).max(axis=2)  # (c, n): these frames in others' windows
        rev = (win[s : s + step].reshape(-1, d) @ full.T).reshape(-1, w, n).max(axis=1)  # others' frames in these
        i, j = np.nonzero(2 - 2 * np.maximum(fwd, rev) / d <= max_cost)
        i = i + s
        keep = j > i
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.empty((0, 2), np.int64)


def _sequence_edges(sigs: list[bytes], rows: np.ndarray, threshold: "DedupThresholds",
                    memo: "SequenceMemo | None" = None) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j`` (indices into ``rows``' space), that :func:`sequence_distance` calls
    duplicates under ``threshold``: int64 ``(E, 2)``. ``memo``: pair decisions made earlier (see
    :class:`SequenceMemo`); the candidates are still blocked here, so a memo can only save work."""
    weights = (threshold.sequence_appearance, threshold.sequence_motion)
    if memo is not None and memo.weights != weights:
        memo = None  # made under other thresholds: of no use
    clips = [memo.prepared(sg) if memo is not None else _Prepared(_stack(sg)) for sg in sigs]
    cand = _sequence_candidates(np.stack([c.coarse for c in clips]), threshold.sequence_block, threshold.chunk_bytes)
    if memo is not None:
        keep = [k for k, (i, j) in enumerate(cand) if memo.alike(sigs[i], sigs[j])]
    else:
        keep = [k for k, (i, j) in enumerate(cand) if _alike(clips[i], clips[j], weights)]
    e = cand[keep]
    return np.stack([rows[e[:, 0]], rows[e[:, 1]]], axis=1) if len(e) else np.empty((0, 2), np.int64)


class SequenceMemo:
    """The sequence rule's pair decisions, made as clips arrive and reused by :func:`find_duplicates`.

    A build's driver adds each finished input's signatures while the other inputs are still being cut, so the
    pair comparisons (~10-20 ms each) overlap the stream instead of running after it, when the cluster has
    nothing left to do. Whether two clips are alike depends only on their two signatures and the weights, so a
    memo cannot change a result: :func:`find_duplicates` still blocks its own candidates over all clips and asks
    the memo only for those pairs; a pair the memo lacks (a clip of an earlier, resumed run) is compared there.
    Memory: one prepared signature per clip (~100 kB), as :func:`find_duplicates` holds anyway, and its coarse
    windows once more (~30 kB) in one growing array, so adding an input costs O(clips so far), not a re-stack.
    """

    def __init__(self, threshold: "DedupThresholds | None" = None):
        threshold = threshold or DedupThresholds()
        self.weights = (threshold.sequence_appearance, threshold.sequence_motion)
        self.block, self.chunk_bytes = threshold.sequence_block, threshold.chunk_bytes
        self._prepared: dict[bytes, _Prepared] = {}
        self._decided: dict[tuple[bytes, bytes], bool] = {}
        self._order: list[bytes] = []  # signatures in the order they were added, rows of _win
        self._seen: set[bytes] = set()
        self._win = np.empty((0, len(_COARSE), _REG_SIDE**2), np.float32)
        self.compared = 0  # pairs compared here (not answered from the memo)

    def prepared(self, sig: bytes) -> _Prepared:
        p = self._prepared.get(sig)
        if p is None:
            p = self._prepared[sig] = _Prepared(_stack(sig))
        return p

    def alike(self, a: bytes, b: bytes) -> bool:
        """``_alike`` of two signatures (symmetric: both registration directions are tried), from the memo when
        it was decided before."""
        key = (a, b) if a <= b else (b, a)
        got = self._decided.get(key)
        if got is None:
            got = self._decided[key] = _alike(self.prepared(key[0]), self.prepared(key[1]), self.weights)
            self.compared += 1
        return got

    def add(self, signatures: Sequence[bytes | None]) -> int:
        """Decide every pair of a new signature with one added before (or another new one) that the blocking of
        :func:`find_duplicates` would compare. Returns how many pairs were compared."""
        size = SIG_FRAMES * SIG_SIDE * SIG_SIDE
        new = list(dict.fromkeys(bytes(g) for g in signatures if isinstance(g, (bytes, bytearray)) and len(g) == size))
        new = [g for g in new if g not in self._seen]
        if not new:
            return 0
        n_old = len(self._order)
        n = n_old + len(new)
        if n > len(self._win):  # grow by doubling: amortised O(1) per clip
            grown = np.empty((max(n, 2 * len(self._win)), *self._win.shape[1:]), np.float32)
            grown[:n_old] = self._win[:n_old]
            self._win = grown
        for k, g in enumerate(new):
            self._win[n_old + k] = self.prepared(g).coarse
        self._order += new
        self._seen.update(new)
        win, d = self._win[:n], self._win.shape[-1]
        mine, mine_full = win[n_old:], win[n_old:, 0]
        before = self.compared
        step = max(1, self.chunk_bytes // max(1, 8 * len(new) * win.shape[1]))
        for s in range(0, n, step):  # the same test as _sequence_candidates, new clips against a chunk of all
            other = win[s : s + step]
            fwd = (mine_full @ other.reshape(-1, d).T).reshape(len(new), len(other), -1).max(axis=2)
            rev = (mine.reshape(-1, d) @ other[:, 0].T).reshape(len(new), -1, len(other)).max(axis=1)
            for i, j in zip(*np.nonzero(2 - 2 * np.maximum(fwd, rev) / d <= self.block)):
                if s + j < n_old + i:  # each pair once, never a clip with itself
                    self.alike(new[i], self._order[s + j])
        return self.compared - before


# -------------------------------------------------------------------------------------------------------------
# similarity graph
# -------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupThresholds:
    """When two clips count as near-duplicates (see the module docstring)."""

    cosine: float = 0.95  # CLIP image-embedding cosine similarity, inclusive
    sequence_appearance: float = 0.169  # sequence signatures: aligned-thumbnail mean squared difference, inclusive
    sequence_motion: float = 0.685  # sequence signatures: worst cell's frame-to-frame change mismatch, inclusive
    sequence_block: float = 0.7  # sequence signatures: pairs whose mean thumbnails differ more are not compared
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


def _parse_signatures(signatures, n: int) -> tuple[np.ndarray, list]:
    """(has (n,) bool, the signatures with None where absent) from a list of :func:`sequence_signature` bytes."""
    if signatures is None:
        return np.zeros(n, bool), [None] * n
    sigs = list(signatures)
    if len(sigs) != n:
        raise ValueError(f"{len(sigs)} signatures for {n} clips")
    size = SIG_FRAMES * SIG_SIDE * SIG_SIDE
    has = np.array([isinstance(g, (bytes, bytearray)) and len(g) == size for g in sigs], dtype=bool)
    return has, [bytes(g) if ok else None for g, ok in zip(sigs, has)]


def similarity_edges(has_e: np.ndarray, emb: np.ndarray, has_h: np.ndarray, codes: np.ndarray,
                     threshold: DedupThresholds = DedupThresholds(), has_s: np.ndarray | None = None,
                     sigs: list | None = None, memo: SequenceMemo | None = None) -> np.ndarray:
    """All near-duplicate pairs ``(i, j)``, ``i < j``, int64 ``(E, 2)``, under the rule of the module docstring.

    ``emb`` holds the rows of the items with ``has_e`` (in item order); ``codes`` and ``sigs`` one entry per item;
    ``memo``: sequence-pair decisions made earlier (:class:`SequenceMemo`).
    """
    has_s = np.zeros(len(has_e), bool) if has_s is None else has_s
    parts = []
    rows_e = np.flatnonzero(has_e)
    if rows_e.size >= 2:
        parts.append(_embedding_edges(emb, rows_e, threshold.cosine, threshold.chunk_bytes))
    rows_s = np.flatnonzero(has_s)
    if rows_s.size >= 2 and not has_e[rows_s].all():
        e = _sequence_edges([sigs[i] for i in rows_s], rows_s, threshold, memo)
        parts.append(e[~(has_e[e[:, 0]] & has_e[e[:, 1]])])  # the embedding rule decides those pairs
    rows_h = np.flatnonzero(has_h)
    if rows_h.size >= 2 and not (has_e | has_s)[rows_h].all():
        e = _hash_edges(codes[rows_h], rows_h, threshold.hamming, threshold.chunk_bytes)
        decided = (has_e[e[:, 0]] & has_e[e[:, 1]]) | (has_s[e[:, 0]] & has_s[e[:, 1]])
        parts.append(e[~decided])  # the embedding or the sequence rule decides those pairs
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


def _nodes(n: int, has_e: np.ndarray, emb_rows: list[bytes], has_h: np.ndarray, codes: np.ndarray,
           has_s: np.ndarray, sigs: list) -> np.ndarray:
    """Node id per clip: clips with an identical embedding (or, without one, an identical sequence signature, or
    without both, an identical hash) share a node.

    Identical items are mutually similar, so grouping runs on nodes: a thousand copies of one clip (or of a
    black frame) cost one node instead of half a million edges. Clips with neither signal stay alone.
    """
    keys: dict = {}
    node = np.empty(n, np.int64)
    e_iter = iter(emb_rows)
    for i in range(n):
        if has_e[i]:
            k = ("e", next(e_iter))
        elif has_s[i]:
            k = ("s", sigs[i])
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
    signatures: Sequence[bytes | None] | None = None,
    memo: SequenceMemo | None = None,
) -> dict[str, str | None]:
    """Map every clip id to the id of the clip it duplicates (``None`` for the clips kept).

    Args:
        clip_ids: unique ids, one per clip.
        embeddings: ``(n, d)`` array or a list of vectors / None (clips without an embedding).
        phashes: 16-hex-digit hashes or None, one per clip.
        signatures: :func:`sequence_signature` bytes or None, one per clip.
        threshold: similarity thresholds (see :class:`DedupThresholds`).
        quality: optional score per clip; the highest-scoring clip of a group is kept (ties: smallest id).
        memo: sequence-pair decisions made while the clips arrived (:class:`SequenceMemo`); same result, less
            work here.
    """
    ids = list(clip_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("clip_ids are not unique")
    n = len(ids)
    if n == 0:
        return {}
    has_e, emb = _parse_embeddings(embeddings, n)
    has_h, codes = _parse_hashes(phashes, n)
    has_s, sigs = _parse_signatures(signatures, n)
    node = _nodes(n, has_e, [r.tobytes() for r in emb], has_h, codes, has_s, sigs)
    _, first = np.unique(node, return_index=True)  # (nodes,) first clip of each node stands for it
    sub_e = np.flatnonzero(has_e[first])
    emb_rank = np.cumsum(has_e) - 1  # row of clip i in emb
    edges = similarity_edges(has_e[first], emb[emb_rank[first[sub_e]]] if sub_e.size else emb, has_h[first],
                             codes[first], threshold, has_s[first], [sigs[i] for i in first], memo)  # fmt: skip
    rep = group_greedy(node, edges, priority_order(ids, quality))
    return {cid: (None if rep[i] == i else ids[rep[i]]) for i, cid in enumerate(ids)}


def dedup_methods(embeddings, n: int, signatures=None) -> list[str]:
    """The ``dedup_method`` column: ``clip-embedding`` where a clip has an embedding, else ``sequence`` where it
    has a sequence signature, else ``phash``."""
    has_e, _ = _parse_embeddings(embeddings, n)
    has_s, _ = _parse_signatures(signatures, n)
    return ["clip-embedding" if e else "sequence" if q else "phash" for e, q in zip(has_e, has_s)]
