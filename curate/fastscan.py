"""Two-pass scene detection: decode a cheap subset of frames to find WHERE boundaries may be, then run the exact
detectors of ``curate.scenes`` on every frame around those places only.

Why: in the one-pass scene stage (``iter_frames`` + ``SceneSplitter``) decoding is ~3/4 of the cost, and most
frames of a video lie in the middle of a shot, where nothing is detected.

1. **Timeline** (demux only, no decoding): every packet's PTS, sorted, is the presentation time of every frame;
   the frame index of a decoded frame is the rank of its PTS. Times are made relative to the stream start the
   same way ``curate.frames.iter_frames`` does, so ``pts`` equals what the one-pass stage collects.
2. **Fast pass**: decode with FFmpeg's ``skip_frame`` (default ``NONREF``: non-reference frames, i.e. most
   B-frames, are never decoded) and keep a tiny YUV thumbnail of each decoded frame ("sample"). Candidate places
   (deliberately LOW thresholds: recall over precision):
   * a gap between consecutive samples whose thumbnails differ by >= ``cut_diff`` (a hard cut, or a fade's
     black run hidden in skipped frames);
   * a dark sample (mean level <= ``black_level + dark_margin``): a fade may be there;
   * a span of samples (<= ``dissolve_max_s``) whose ends differ by >= ``dissolve_frac * dissolve_min_diff`` and
     whose middle samples are close to a blend of the ends (relative residual <= ``dissolve_residual``).
3. **Refine**: each candidate is widened by the frames the detectors need around it (rolling window and minimum
   scene length; the whole fade ramp allowance for dark candidates), overlapping ranges are merged, and each
   range is decoded at full rate (seek to the keyframe before it, decode forward) and pushed through a fresh
   :class:`curate.scenes.SceneSplitter`. Its cuts and transition frames are kept only away from the range's
   edges (where its detectors lack context; the candidate itself always lies in the kept part). Frames outside
   every range are inside a shot. :func:`curate.scenes.assemble_scenes` builds the scenes.

Where it can differ from the one-pass stage: a boundary the fast pass misses (none on the test corpus; see
tests/test_fastscan.py and benchmarks/bench_scenes.py ``--fast``), and detector state carried over longer than
the context kept (AdaptiveDetector's minimum scene length counted from a cut further back than the context).
When the fast pass would save little (a stream without non-reference frames: all-P H.264, intra-only MPEG-4),
or the file is odd (frames without PTS, a PTS not on the timeline, an unexpected pixel format), the one-pass
stage runs instead, so the result is then identical by construction.
"""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import dataclass, replace

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from curate.frames import DecodeConfig, DecodeError, DecodeTimeout, analysis_size, iter_frames
from curate.probe import display_rotation, main_video_stream, open_path
from curate.scenes import Scene, SceneConfig, SceneSplitter, assemble_scenes

_YUV = {"yuv420p": 219.0, "yuv422p": 219.0, "yuv444p": 219.0, "yuvj420p": 255.0, "yuvj422p": 255.0,
        "yuvj444p": 255.0}  # 8-bit planar formats the fast pass reads directly -> luma range (limited/full)


@dataclass(frozen=True)
class FastScanConfig:
    """Knobs of the fast pass and of the refine step (the detectors' own knobs stay in ``SceneConfig``)."""

    skip: str = "NONREF"  # FFmpeg skip_frame for the fast pass: NONREF (non-reference frames) or BIDIR
    thumb_size: tuple[int, int] = (16, 9)  # (W, H) of the fast-pass luma thumbnails (chroma at half size)
    cut_diff: float = 6.0  # mean |thumb difference| (0-255) between consecutive samples that makes a candidate
    dark_margin: float = 24.0  # a sample whose level is <= black_level + this may be part of a fade
    ramp_frac: float = 0.5  # fade ramps are followed over samples darkening by >= this share of fade_step/frame
    dissolve_frac: float = 0.6  # span candidate: ends differ by >= this share of SceneConfig.dissolve_min_diff
    dissolve_residual: float = 0.45  # ... middle samples within this relative residual of a blend of the ends
    dissolve_change_frac: float = 0.5  # ... and the ends' luma is no mere re-exposure (share of dissolve_min_change)
    dissolve_settled: float = 0.4  # ... and the last two samples differ by at most this share of the ends' diff
    context_pad: int = 4  # extra frames of context on each side, beyond what the detectors need
    min_skip_share: float = 0.3  # the fast pass must skip at least this share of frames, else one-pass
    probe_packets: int = 48  # frames after which that share is checked


@dataclass(frozen=True)
class FastScanStats:
    """What the two passes did (for the benchmark and tests)."""

    frames: int  # frames on the timeline
    sampled: int  # frames decoded by the fast pass
    refined: int  # frames decoded by the refine step (incl. decoded-and-dropped frames after a seek)
    ranges: int  # ranges refined
    fallback: str  # "" or why the one-pass stage ran instead


class _Fallback(Exception):
    """The fast pass cannot be trusted or would not pay off on this file; run the one-pass stage."""


# ------------------------------------------------------------------------------------------ timeline


def _timeline(path) -> tuple[list[int], list[int], float, int]:
    """(sorted packet PTS, keyframe indices, time base, origin PTS); origin is the stream start unless a frame
    comes before it (as in ``curate.frames.iter_frames``)."""
    with av.open(open_path(path)) as container:
        stream = main_video_stream(container)
        if stream is None:
            raise DecodeError(f"{os.fspath(path)!r}: no video stream")
        ticks, key_ticks = [], []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # flush packet
            if packet.pts is None:
                raise _Fallback("packet without pts")
            ticks.append(int(packet.pts))
            if packet.is_keyframe:
                key_ticks.append(int(packet.pts))
        tb, start = float(stream.time_base), stream.start_time
    ticks.sort()
    if len(set(ticks)) != len(ticks):
        raise _Fallback("duplicate pts")
    origin = ticks[0] if ticks and (start is None or ticks[0] < start) else (start or 0)
    keyframes = sorted(bisect.bisect_left(ticks, t) for t in key_ticks)
    if not keyframes or keyframes[0] != 0:
        raise _Fallback("the first frame is no keyframe")
    return ticks, keyframes, tb, origin


def _thumb(plane, w: int, h: int, size: tuple[int, int]) -> np.ndarray:
    """Block-mean thumbnail of one 8-bit plane (float32, flattened)."""
    arr = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]
    step = max(1, min(w // (size[0] * 4), h // (size[1] * 4)))  # pre-subsample big planes: cheap and plenty
    return cv2.resize(arr[::step, ::step], size, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()


# --------------------------------------------------------------------------------------- fast pass


def _sample(path, ticks: list[int], cfg: FastScanConfig) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Decode with ``cfg.skip``: frame indices of the decoded samples, their thumbnails and their levels."""
    index, thumbs, levels = [], [], []
    tw, th = cfg.thumb_size
    with av.open(open_path(path)) as container:
        stream = main_video_stream(container)
        stream.thread_type = "AUTO"
        stream.codec_context.skip_frame = cfg.skip
        packets = 0
        for packet in container.demux(stream):
            packets += packet.size > 0
            for frame in stream.codec_context.decode(packet if packet.size else None):
                scale = _YUV.get(frame.format.name)
                if scale is None or frame.pts is None:
                    raise _Fallback(f"fast pass: pixel format {frame.format.name} / pts {frame.pts}")
                k = bisect.bisect_left(ticks, frame.pts)
                if k == len(ticks) or ticks[k] != frame.pts:
                    raise _Fallback("decoded pts not on the packet timeline")
                w, h = frame.width, frame.height
                y = _thumb(frame.planes[0], w, h, (tw, th))
                cw, ch = frame.planes[1].width, frame.planes[1].height
                u = _thumb(frame.planes[1], cw, ch, (max(1, tw // 2), max(1, th // 2)))
                v = _thumb(frame.planes[2], cw, ch, (max(1, tw // 2), max(1, th // 2)))
                black = 16.0 if scale < 255 else 0.0
                index.append(k)
                thumbs.append(np.concatenate([y, u, v]))
                levels.append((float(y.mean()) - black) * 255.0 / scale)
            if packets == cfg.probe_packets and len(index) > (1 - cfg.min_skip_share) * packets:
                raise _Fallback(f"fast pass skips too little ({len(index)} of {packets} frames decoded)")
    order = np.argsort(index, kind="stable")
    return [index[k] for k in order], np.stack(thumbs)[order] if thumbs else np.zeros((0, 1)), np.array(levels)[order]


def _candidates(index: list[int], thumbs: np.ndarray, levels: np.ndarray, n: int, fps: float,
                scfg: SceneConfig, cfg: FastScanConfig) -> list[tuple[int, int, str]]:
    """Frame ranges ``(a, b, why)`` (inclusive) that may hold a boundary; ``why`` is ``cut``, ``dark`` (a fade
    may be there) or ``dissolve``."""
    out: list[tuple[int, int, str]] = []
    m = len(index)
    if m == 0:
        return [(0, n - 1, "dark")]
    if index[0] > 0:
        out.append((0, index[0], "cut"))  # frames before the first sample were never seen
    if index[-1] < n - 1:
        out.append((index[-1], n - 1, "cut"))
    diffs = np.abs(np.diff(thumbs, axis=0)).mean(axis=1) if m > 1 else np.zeros(0)
    for k in np.nonzero(diffs >= cfg.cut_diff)[0]:
        lo, hi = _ramp(index, levels, k, k + 1, scfg.fade_step * cfg.ramp_frac) if scfg.fades else (k, k + 1)
        out.append((index[lo], index[hi], "cut"))
    dark = levels <= scfg.black_level + cfg.dark_margin
    for k in np.nonzero(dark)[0]:
        lo, hi = _ramp(index, levels, max(0, k - 1), min(m - 1, k + 1), scfg.fade_step * cfg.ramp_frac)
        out.append((index[lo], index[hi], "dark"))
    if scfg.dissolves:
        out += _dissolve_candidates(index, thumbs, fps, scfg, cfg)
    return out


def _ramp(index: list[int], levels: np.ndarray, lo: int, hi: int, step: float) -> tuple[int, int]:
    """Widen the sample range ``[lo, hi]`` over a possible fade ramp on each side.

    ``SceneSplitter`` puts a frame on a ramp when it is darker than its neighbour away from the black by at
    least ``fade_step``; a gap of ``g`` frames that is ramp all through therefore darkens by ``(1 - step)^g`` or
    more. The walk goes on while a gap could be all ramp and takes in the first gap that cannot (the ramp ends
    in it), so the ramp and its end lie inside the returned range.
    """
    while lo > 0 and levels[lo] <= levels[lo - 1] * (1 - step) ** (index[lo] - index[lo - 1]):
        lo -= 1
    lo = max(0, lo - 1)
    last = len(index) - 1
    while hi < last and levels[hi] <= levels[hi + 1] * (1 - step) ** (index[hi + 1] - index[hi]):
        hi += 1
    return lo, min(last, hi + 1)


def _luma_spread(x: np.ndarray, y: np.ndarray, luma: int) -> float:
    """``curate.scenes._relighting_spread`` on the luma thumbnails (the first ``luma`` values): small when ``y`` is
    ``x`` re-exposed (a fade, an exposure drift), large when it shows other content."""
    ratio = np.log((y[:luma] + 8.0) / (x[:luma] + 8.0))
    return float(np.median(np.abs(ratio - np.median(ratio))))


def _dissolve_candidates(index, thumbs, fps, scfg: SceneConfig, cfg: FastScanConfig) -> list[tuple[int, int, str]]:
    """Sample spans that pass a relaxed form of the dissolve test of ``SceneSplitter``: ends that differ like a
    cut, the last two samples close (the incoming shot is on screen), middle samples near a blend of the ends
    with a blend weight that rises (no step back, no jump like a hard cut)."""
    max_len = int(round(scfg.dissolve_max_s * fps)) + 4
    min_diff = cfg.dissolve_frac * scfg.dissolve_min_diff
    out = []
    luma = cfg.thumb_size[0] * cfg.thumb_size[1]
    min_change = cfg.dissolve_change_frac * scfg.dissolve_min_change
    covered = -1  # frame index up to which an earlier candidate already holds the transition
    for b in range(2, len(index)):
        a = b - 2
        settled = float(np.abs(thumbs[b] - thumbs[b - 1]).mean())
        while a >= 0 and index[b] - index[a] <= max_len:
            delta = thumbs[b] - thumbs[a]
            diff = float(np.abs(delta).mean())
            if diff >= min_diff and settled <= cfg.dissolve_settled * diff:
                rel = thumbs[a + 1 : b] - thumbs[a]  # (k, P) middle samples
                alpha = rel @ delta / float(delta @ delta)  # (k,)
                residual = np.abs(rel - alpha[:, None] * delta[None, :]).mean(axis=1) / diff
                steps = np.diff(np.concatenate([[0.0], alpha, [1.0]]))  # (k + 1,)
                if (residual.max() <= cfg.dissolve_residual and steps.min() >= -0.15 and steps.max() <= 0.85
                        and _luma_spread(thumbs[a], thumbs[b], luma) >= min_change):
                    # where the blend weight moves most; a span whose change lies inside an earlier candidate is
                    # that candidate again, seen from a later end (the next shot holding still)
                    if index[a + 1 + int(np.argmax(steps))] > covered:
                        out.append((index[a], index[b], "dissolve"))
                        covered = index[b]
                    break  # longer spans ending here add nothing the refine step would not see
            a -= 1
    return out


def _ranges(cands, n: int, fps: float, scfg: SceneConfig, cfg: FastScanConfig) -> tuple[list[tuple[int, int]], int]:
    """Candidate ranges widened by the detectors' context, merged (inclusive frame ranges), and that context."""
    splitter = SceneSplitter(scfg, fps)
    ctx = _context(splitter, cfg)
    longest = int(round(scfg.dissolve_max_s * fps)) + 4  # longest dissolve window SceneSplitter tries
    spans = []
    for a, b, why in cands:
        before = max(0, longest - (b - a)) if why == "dissolve" else 0  # a window may end late and be long
        after = b - a if why == "dissolve" else 0  # the detector fires once the next shot has settled
        spans.append((max(0, a - ctx - before), min(n - 1, b + ctx + after)))
    spans.sort()
    out: list[list[int]] = []
    for a, b in spans:
        if out and a <= out[-1][1] + 1 + 2 * ctx:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out], ctx


# ------------------------------------------------------------------------------------------- refine


def _context(splitter: SceneSplitter, cfg: FastScanConfig) -> int:
    """Frames a range needs on each side of what it must decide.

    AdaptiveDetector scores a frame from ``adaptive_window`` frames on each side (+1 for the first difference);
    its minimum scene length is applied afterwards on the stitched cuts (:func:`_min_gap`), so it needs no
    context. ContentDetector's flash filter (MERGE mode) carries state over ``min_scene_frames`` frames.
    """
    scfg = splitter.cfg
    if scfg.detector == "adaptive":
        return 2 * scfg.adaptive_window + 1 + cfg.context_pad
    return 2 * splitter.min_scene_frames + 1 + cfg.context_pad


def _local_config(scfg: SceneConfig) -> SceneConfig:
    """Config of the per-range splitters: AdaptiveDetector without its minimum scene length (see _min_gap)."""
    return replace(scfg, min_scene_s=0.0) if scfg.detector == "adaptive" else scfg


def _min_gap(cuts: set[int], min_scene: int) -> set[int]:
    """AdaptiveDetector's minimum scene length, applied to all threshold-passing frames in order: a cut is kept
    when it lies ``min_scene`` frames or more after the last kept cut (the first frame counts as one)."""
    kept, last = set(), 0
    for c in sorted(cuts):
        if c - last >= min_scene:
            kept.add(c)
            last = c
    return kept


def _analysis_rgb(frame, stream, rotation: int, short_side: int, interpolation: str, scaler, to_rgb) -> np.ndarray:
    """The analysis frame of ``curate.frames.iter_frames`` (resize in the decoder's format, then RGB, then rotate);
    tests/test_fastscan.py checks it is bit-identical."""
    cc = stream.codec_context
    sar = stream.sample_aspect_ratio or cc.sample_aspect_ratio
    out_w, out_h = analysis_size(cc.width, cc.height, float(sar) if sar else 1.0, rotation, short_side)
    cc_w, cc_h = frame.width, frame.height
    w, h = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)
    small = frame if (cc_w, cc_h) == (w, h) else scaler.reformat(frame, w, h, frame.format.name,
                                                                  interpolation=interpolation)
    rgb = to_rgb.reformat(small, format="rgb24").to_ndarray()
    return rgb if rotation == 0 else np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90)))


def _refine(path, ranges, ticks, keyframes, tb: float, origin: int, dcfg: DecodeConfig, scfg: SceneConfig,
            fps: float, ctx: int) -> tuple[bytearray, set[int], int]:
    """Run a fresh SceneSplitter over every range at full rate; keep its marks away from the range edges.

    One decoder walks the ranges in order. It seeks only when a keyframe lies between where it is and the next
    range (else it decodes on), and it skips non-reference frames until the first packet of the range: those
    frames are never shown to a splitter, and no other frame depends on them.
    """
    n = len(ticks)
    kind, cuts, decoded = bytearray(n), set(), 0
    local_cfg = _local_config(scfg)
    with av.open(open_path(path)) as container:
        stream = main_video_stream(container)
        stream.thread_type = "AUTO"
        cc = stream.codec_context
        cc.thread_count = dcfg.threads
        scaler, to_rgb = VideoReformatter(), VideoReformatter()
        rotation, packets, pos = None, None, -1
        for r0, r1 in ranges:
            key = keyframes[bisect.bisect_right(keyframes, r0) - 1]
            if packets is None or key > pos + 1:
                container.seek(ticks[key], backward=True, any_frame=False, stream=stream)
                packets = container.demux(stream)
            cc.skip_frame = "NONREF"
            splitter, want, full = SceneSplitter(local_cfg, fps), r0, False
            for packet in packets:
                if not full and packet.pts is not None and packet.pts >= ticks[r0]:
                    cc.skip_frame, full = "DEFAULT", True
                for frame in cc.decode(packet if packet.size else None):
                    decoded += 1
                    if frame.pts is None:
                        raise _Fallback("refine: frame without pts")
                    k = bisect.bisect_left(ticks, frame.pts)
                    pos = max(pos, k)
                    if k < want or k > r1:
                        continue  # before the range (decoded from the keyframe), or decoded along with its end
                    if k != want or ticks[k] != frame.pts:
                        raise _Fallback(f"refine: expected frame {want}, got pts {frame.pts}")
                    if rotation is None:
                        rotation = display_rotation(frame, stream)
                    rgb = _analysis_rgb(frame, stream, rotation, dcfg.short_side, dcfg.interpolation, scaler, to_rgb)
                    splitter.push(rgb, (frame.pts - origin) * tb)
                    want += 1
                if want > r1:
                    break
            if want <= r1:
                raise _Fallback(f"refine: range {r0}-{r1} ended at {want}")
            if r1 == n - 1:
                splitter.finish()
            local_kind, local_cuts = splitter.marks()
            lo = r0 if r0 == 0 else r0 + ctx  # the head of a range starting at frame 0 is the real start
            hi = r1 if r1 == n - 1 else r1 - ctx
            for i in range(lo, hi + 1):
                kind[i] = local_kind[i - r0]
            cuts.update(c + r0 for c in local_cuts if lo <= c + r0 <= hi)
    if scfg.detector == "adaptive":
        cuts = _min_gap(cuts, SceneSplitter(scfg, fps).min_scene_frames)
    return kind, cuts, decoded


# --------------------------------------------------------------------------------------------- driver


def detect_scenes_fast(path, decode_cfg: DecodeConfig, scene_cfg: SceneConfig, fps: float,
                       cfg: FastScanConfig = FastScanConfig()) -> tuple[list[Scene], np.ndarray, FastScanStats]:
    """Scenes and per-frame PTS (s) of ``path``, as the one-pass stage would give them (see module doc).

    ``fps`` is the nominal frame rate handed to ``SceneSplitter``. Falls back to the one-pass stage (and says
    why in the stats) when the fast pass cannot be trusted or would not pay off, or when FFmpeg fails in it (the
    one-pass stage then raises ``DecodeError`` as usual). ``decode_cfg.timeout_s`` is checked once both passes
    are done (``DecodeTimeout``); a hang inside native code needs ``curate.sandbox`` as before.
    """
    t0 = time.monotonic()
    fps = float(fps) if fps and fps > 0 else 25.0
    backend = "pyav" if decode_cfg.backend == "auto" else decode_cfg.backend
    try:
        if backend != "pyav":
            raise _Fallback(f"backend {backend}")
        ticks, keyframes, tb, origin = _timeline(path)
        n = len(ticks)
        if n == 0 or n > decode_cfg.max_frames:
            raise _Fallback("empty or over max_frames")
        index, thumbs, levels = _sample(path, ticks, cfg)
        cands = _candidates(index, thumbs, levels, n, fps, scene_cfg, cfg)
        ranges, ctx = _ranges(cands, n, fps, scene_cfg, cfg)
        kind, cuts, refined = _refine(path, ranges, ticks, keyframes, tb, origin, decode_cfg, scene_cfg, fps, ctx)
    except _Fallback as why:
        return _one_pass(path, decode_cfg, scene_cfg, fps, str(why))
    except av.FFmpegError as e:  # the one-pass stage reports the failure the usual way (DecodeError)
        return _one_pass(path, decode_cfg, scene_cfg, fps, f"{type(e).__name__}: {e}")
    if time.monotonic() - t0 > decode_cfg.timeout_s:
        raise DecodeTimeout(f"{os.fspath(path)!r}: two-pass scene scan over {decode_cfg.timeout_s} s")
    pts = np.array([(t - origin) * tb for t in ticks], dtype=np.float64)
    min_scene = SceneSplitter(scene_cfg, fps).min_scene_frames
    scenes = assemble_scenes(pts.tolist(), kind, cuts, min_scene, fps)
    return scenes, pts, FastScanStats(n, len(index), refined, len(ranges), "")


def _one_pass(path, decode_cfg: DecodeConfig, scene_cfg: SceneConfig, fps: float, why: str):
    splitter, pts = SceneSplitter(scene_cfg, fps), []
    for frame in iter_frames(path, decode_cfg):
        splitter.push(frame.rgb, frame.pts_s)
        pts.append(frame.pts_s)
    scenes = splitter.finish()
    return scenes, np.asarray(pts, dtype=np.float64), FastScanStats(len(pts), 0, len(pts), 0, why)
