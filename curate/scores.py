"""CPU clip scores: sharpness, exposure, motion (and the perceptual hash), as plain functions plus one batch UDF.

Each ``score_*`` function works on a plain uint8 array ``(K, H, W, 3)`` of frames sampled from one clip and
returns a flat dict of primitives, so it can be tested on constructed frames. :class:`BasicScorer` reads the
transient ``frames`` / ``frames_pts`` / ``fps`` columns of a batch (Ray ``map_batches(batch_format="numpy")``)
and adds every CPU score column; it never drops, reorders or raises for a row.

All measures are taken at a canonical analysis size (short side :attr:`ScoreConfig.short_side`, 160 px): frames
that arrive at another size are resized first, so numbers from different sources compare, and the size is part
of every ``*_model`` id.

Sampling expected for motion (see :func:`score_motion`): the split stage samples ``P`` *pairs* of consecutive
decoded frames of the clip, ``(i_j, i_j + 1)`` with ``i_j = round(j * (N - 2) / (P - 1))`` for ``j = 0..P-1``
(``N`` frames in the clip, indices within the clip), in time order, so ``K = 2P`` (default ``P = 6``, ``K = 12``)
and ``frames_pts`` holds each sample's own PTS. Frames that are not consecutive still work (``sparse`` mode,
recorded in the model id). Besides the contract columns, :class:`BasicScorer` writes ``scores_status``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from curate.dedup import phash_frames, sequence_signature
import pyarrow as pa

from curate.framepack import batch_column, is_empty_blob, unpack_frames, with_columns

# -------------------------------------------------------------------------------------------------------------
# config
# -------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreConfig:
    """Every knob of the CPU scores, with the defaults the pipeline uses.

    Motion numbers are in pixels per source frame at ``short_side`` px: a flow measured between two samples is
    divided by their gap in source frames, ``(pts_b - pts_a) * fps``.
    """

    short_side: int = 160  # canonical analysis size (short side, px)
    black_luma: float = 16.0  # a frame is "black" when its mean luma (0-255, BT.601) is below this
    pair_gap_frames: float = 1.5  # two samples at most this many source frames apart form a flow pair
    sparse_gap_frames: float = 12.0  # without pairs, adjacent samples up to this gap are used (sparse mode)
    flow_border: float = 0.1  # share of width/height ignored on each side (Farneback is unreliable at edges)
    static_px: float = 0.25  # a pixel "moves" when its flow magnitude reaches this (px/frame) ...
    static_max_share: float = 0.02  # ... and a clip is static when fewer than this share of pixels move
    jitter_min_rms: float = 0.5  # shake needs camera-velocity changes of at least this RMS (px/frame)
    jitter_ratio: float = 1.0  # ... and larger than this multiple of the net camera velocity
    jitter_min_pairs: int = 3  # fewer flow pairs than this never flag jitter


# -------------------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------------------


def to_analysis_size(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Resize ``(K, H, W, 3)`` frames so the short side is ``short_side`` (no-op when it already is)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (K>=1, H, W, 3), got {frames.shape}")
    h, w = frames.shape[1:3]
    if min(h, w) == short_side:
        return frames
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (W, H)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of RGB uint8 frames: ``(K, H, W, 3)`` -> float32 ``(K, H, W)`` in 0-255."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.float32)


# -------------------------------------------------------------------------------------------------------------
# sharpness and exposure
# -------------------------------------------------------------------------------------------------------------


def score_sharpness(frames: np.ndarray, cfg: ScoreConfig = ScoreConfig()) -> dict:
    """Mean over frames of the variance of the 3x3 Laplacian of luma (higher = more fine detail)."""
    y = luma(to_analysis_size(frames, cfg.short_side))  # (K, H, W)
    per_frame = [float(cv2.Laplacian(f, cv2.CV_32F, ksize=1).var()) for f in y]
    return {"sharpness": float(np.mean(per_frame)), "sharpness_model": f"laplacian-var@{cfg.short_side}"}


def score_exposure(frames: np.ndarray, cfg: ScoreConfig = ScoreConfig()) -> dict:
    """Luma mean and standard deviation over all pixels of all frames, and the share of near-black frames."""
    y = luma(to_analysis_size(frames, cfg.short_side))  # (K, H, W)
    frame_means = y.mean(axis=(1, 2))  # (K,)
    return {
        "luma_mean": float(y.mean()),
        "luma_std": float(y.std()),
        "black_share": float(np.mean(frame_means < cfg.black_luma)),
        "exposure_model": f"luma-bt601@{cfg.short_side}/black<{cfg.black_luma:g}",
    }


# -------------------------------------------------------------------------------------------------------------
# motion
# -------------------------------------------------------------------------------------------------------------


def _flow_pairs(pts: np.ndarray, fps: float, cfg: ScoreConfig) -> tuple[list[tuple[int, int, float]], str]:
    """Pick the sample pairs to run optical flow on: ``[(a, b, gap_in_source_frames)]`` and the mode name."""
    gaps = np.diff(np.asarray(pts, dtype=np.float64)) * float(fps)  # (K-1,) source frames between samples
    adjacent = [(i, i + 1, float(g)) for i, g in enumerate(gaps) if np.isfinite(g) and g > 0]
    pairs = [p for p in adjacent if p[2] <= cfg.pair_gap_frames]
    if pairs:
        return pairs, "pairs"
    return [p for p in adjacent if p[2] <= cfg.sparse_gap_frames], "sparse"


def _farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense Farneback flow from luma ``a`` to ``b`` (uint8 ``(H, W)``) -> float32 ``(H, W, 2)`` in pixels."""
    return cv2.calcOpticalFlowFarneback(
        a, b, None, pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
    )


def score_motion(frames: np.ndarray, pts: np.ndarray, fps: float, cfg: ScoreConfig = ScoreConfig()) -> dict:
    """Optical-flow motion of a clip from its sampled frames.

    Flow pairs: adjacent samples whose gap ``(pts[i+1] - pts[i]) * fps`` is at most ``cfg.pair_gap_frames``
    source frames (the expected sampling gives ``P`` such pairs). When there are none, adjacent samples up to
    ``cfg.sparse_gap_frames`` apart are used instead and the model id ends in ``/sparse``. Each pair's flow is
    divided by its gap, so every number is in pixels per source frame at ``cfg.short_side``; a border of
    ``cfg.flow_border`` is ignored.

    - ``motion_mean``: mean flow magnitude over pixels and pairs; ``motion_p90``: 90th percentile of the same.
    - ``motion_static``: fewer than ``cfg.static_max_share`` of the pixels (pooled over pairs) move by
      ``cfg.static_px`` or more, so a small moving subject (a few % of the frame) already makes a clip non-static.
    - ``motion_jitter`` (camera shake): the camera velocity of each pair is the per-pixel *median* flow (robust to
      objects moving over a still background). Shake is velocity that keeps changing without getting anywhere:
      the RMS deviation of the pair velocities from their mean is at least ``cfg.jitter_min_rms`` and exceeds
      ``cfg.jitter_ratio`` times the mean (net) velocity. A smooth or accelerating pan has a small deviation
      relative to its net velocity; a static shot has no deviation. Needs ``cfg.jitter_min_pairs`` pairs.

    Returns nulls (None) for every number when no pair can be formed (fewer than two usable samples).
    """
    x = to_analysis_size(frames, cfg.short_side)
    y = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in x])  # (K, H, W) uint8
    pts = np.asarray(pts, dtype=np.float64).reshape(-1)
    if pts.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} frames but {pts.shape[0]} sample times")
    pairs, mode = _flow_pairs(pts, fps, cfg)
    model = f"farneback@{cfg.short_side}/{mode}"
    if not pairs:
        return {"motion_mean": None, "motion_p90": None, "motion_static": None, "motion_jitter": None,
                "motion_model": model}
    h, w = y.shape[1:]
    bh, bw = int(h * cfg.flow_border), int(w * cfg.flow_border)
    mags, velocities = [], []
    for a, b, gap in pairs:
        flow = _farneback(y[a], y[b])[bh : h - bh, bw : w - bw] / gap  # (h', w', 2) px per source frame
        mags.append(np.linalg.norm(flow, axis=-1).ravel())
        velocities.append(np.median(flow.reshape(-1, 2), axis=0))  # (2,) camera velocity estimate
    mag = np.concatenate(mags)
    p90 = float(np.percentile(mag, 90))
    v = np.stack(velocities)  # (P, 2)
    net = v.mean(axis=0)
    rms_dev = float(np.sqrt(np.mean(np.sum((v - net) ** 2, axis=1))))
    jitter = (
        len(pairs) >= cfg.jitter_min_pairs
        and rms_dev >= cfg.jitter_min_rms
        and rms_dev > cfg.jitter_ratio * float(np.linalg.norm(net))
    )
    return {
        "motion_mean": float(mag.mean()),
        "motion_p90": p90,
        "motion_static": bool(np.mean(mag >= cfg.static_px) < cfg.static_max_share),
        "motion_jitter": bool(jitter),
        "motion_model": model,
    }


# -------------------------------------------------------------------------------------------------------------
# batch UDF
# -------------------------------------------------------------------------------------------------------------

SCORE_COLUMNS = (
    "sharpness", "sharpness_model", "luma_mean", "luma_std", "black_share", "exposure_model",
    "motion_mean", "motion_p90", "motion_static", "motion_jitter", "motion_model", "phash", "dedup_sig",
    "scores_status",
)  # fmt: skip
_FLOAT32 = ("sharpness", "luma_mean", "luma_std", "black_share", "motion_mean", "motion_p90")
SCORE_TYPES = {c: pa.float32() if c in _FLOAT32 else pa.string() for c in SCORE_COLUMNS}
SCORE_TYPES.update(motion_static=pa.bool_(), motion_jitter=pa.bool_(), dedup_sig=pa.binary())


def score_clip(frames: np.ndarray, pts: np.ndarray, fps: float, cfg: ScoreConfig = ScoreConfig()) -> dict:
    """Every CPU score of one clip's frames (the row :class:`BasicScorer` adds, without the status)."""
    out = {}
    out.update(score_sharpness(frames, cfg))
    out.update(score_exposure(frames, cfg))
    out.update(score_motion(frames, pts, fps, cfg))
    out["phash"] = phash_frames(frames)
    out["dedup_sig"] = sequence_signature(frames)
    for k in _FLOAT32:  # store what float32 holds, so a re-read gives the same number
        if out[k] is not None:
            out[k] = float(np.float32(out[k]))
    return out


class BasicScorer:
    """Batch UDF adding the CPU score columns (``SCORE_COLUMNS``) to a batch.

    Reads ``frames`` (packed ``.npy`` blobs), ``frames_pts`` (per-row sequence of seconds) and ``fps``. Rows with
    no frames get nulls and ``scores_status="skipped"``; a row whose scoring raises gets nulls and
    ``scores_status="error:<ExceptionClass>"``; others get ``"ok"``. Works on a dict of numpy arrays or a
    ``pyarrow.Table`` batch (see :func:`curate.framepack.with_columns` for why the latter is safer).
    """

    def __init__(self, cfg: ScoreConfig = ScoreConfig()):
        self.cfg = cfg

    def __call__(self, batch):
        """Add ``SCORE_COLUMNS`` to a dict-of-numpy batch or a ``pyarrow.Table`` (same rows, same order)."""
        frames, pts, fps = (batch_column(batch, c) for c in ("frames", "frames_pts", "fps"))
        rows = [self._score_row(f, p, r) for f, p, r in zip(frames, pts, fps)]
        return with_columns(batch, {c: [r.get(c) for r in rows] for c in SCORE_COLUMNS}, SCORE_TYPES)

    def _score_row(self, blob, pts, fps) -> dict:
        """One row's scores with its status; never raises."""
        if is_empty_blob(blob):
            return {"scores_status": "skipped"}
        try:
            row = score_clip(unpack_frames(blob), np.asarray(pts, dtype=np.float64), float(fps), self.cfg)
        except Exception as exc:  # one bad clip must not fail the dataset
            return {"scores_status": f"error:{type(exc).__name__}"}
        row["scores_status"] = "ok"
        return row
