"""Plan training clips from scenes and cut them from the source as frame-exact H.264 MP4s.

Planning (``plan_clips``): each scene, less ``trim_frames`` at both edges and ``margin_frames`` more at an edge that
is a detected cut or transition (a boundary found a frame late, or a dissolve's faint first frames, stay out of
the clip; the file's own first and last frames need no margin), becomes one clip when it lasts at
least ``min_s``; a scene longer than ``max_s`` is split into the fewest equal windows that each last at most
``max_s`` (so no tiny leftover: every window lasts more than ``max_s / 2``, which is why ``max_s >= 2 * min_s``).
Durations come from PTS when the analysis pass's PTS array is given, never from frame counts alone.
A scene's ``suspect`` spans (the scene stage's clip purity guard: a wipe-like change inside the scene) split it
like a detected transition: the parts on either side, each less ``margin_frames`` at the suspect edge (``cut_in``
/ ``cut_out`` = ``suspect``), are planned as above. A scene that gave a clip without its suspect spans and gives
none with them is reported in ``rejected`` (the caller counts it): a doubtful clip is dropped, not published.

Cutting (``cut_clips``): frames are selected by PTS, matched against the PTS of every decoded frame recorded by
the analysis pass (``curate.frames.iter_frames``, same origin: the stream's start time), so a clip holds exactly
the decoded frames ``[start, end)`` of its span and never a frame of the neighbouring scene, on VFR files too.

* **stream copy** when the source is H.264, needs no rotation or resize, and both the span's first frame and
  the frame after its end are keyframes (or the span runs to the end): the packets are copied, then the copy is
  decoded back and its frame count and relative PTS compared with the span; a mismatch falls back to re-encode.
* **re-encode** otherwise, with libx264 (yuv420p): one decode pass over the source serves every span (no
  re-open and seek per clip). The display rotation is applied to the pixels. Size rule: yuv420p needs even
  dimensions; a downscale (``max_short_side``) rounds each side to the nearest even number, and a native-size
  odd side loses its last row/column (cropped, never resampled, so native pixels stay as decoded).
  Non-square pixels are kept as coded and the sample aspect ratio is written to the stream.

Audio is not carried: clips are training video. Output goes to ``io.BytesIO`` by default: re-encoding every clip
of three real videos took 10.7 s into memory vs 11.6 s through a temp file (best of 3 each; per video the two
were within noise), and memory skips the file-system round trip. ``benchmarks/bench_scenes.py --cut`` re-measures.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Sequence

import numpy as np

try:
    import av
except ImportError:  # the lent GPU image has no PyAV: clip planning still imports (cutting needs PyAV)
    av = None

from curate.probe import main_video_stream, open_path, rotation_of
from curate.scenes import Scene

if av is not None:
    av.logging.set_level(None)  # FFmpeg's log bridge can deadlock under threads


@dataclass(frozen=True)
class ClipConfig:
    """Every knob of clip planning and cutting."""

    min_s: float = 2.0  # scenes (after trimming) shorter than this give no clip
    max_s: float = 15.0  # longer scenes are split into equal windows of at most this length
    trim_frames: int = 0  # frames dropped at each scene edge (stay clear of soft, mis-detected boundaries)
    margin_frames: int = 2  # frames kept clear of every detected cut and transition span (not of the file's ends)
    crf: int = 18  # libx264 quality of re-encoded clips
    preset: str = "veryfast"  # libx264 speed/size trade-off
    max_short_side: int | None = None  # downscale so the short side is at most this; None keeps native size
    allow_copy: bool = True  # stream-copy spans that start (and end) on keyframes
    threads: int = 0  # libx264 threads; 0 lets x264 choose
    sink: str = "memory"  # "memory" (io.BytesIO) or "tempfile": where the MP4 muxer writes

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s / 2:
            raise ValueError("need 0 < min_s <= max_s / 2 so split windows never fall below min_s")
        if self.trim_frames < 0 or self.margin_frames < 0:
            raise ValueError("trim_frames and margin_frames must be >= 0")
        if self.sink not in ("memory", "tempfile"):
            raise ValueError("sink must be 'memory' or 'tempfile'")


@dataclass(frozen=True)
class ClipSpan:
    """Decoded frames ``[start, end)`` of the source; ``start_s`` / ``end_s`` are the PTS of ``start`` and of the
    first frame after the span (or the end of the stream)."""

    start: int
    end: int
    start_s: float
    end_s: float
    scene_index: int
    window_index: int
    cut_in: str = "start"  # how the clip begins: the scene's cut_in for window 0, else "window"
    cut_out: str = "end"  # how it ends: the scene's cut_out for the last window, else "window"

    @property
    def num_frames(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class CutResult:
    """One cut clip: MP4 bytes, how it was made, and what it holds (display orientation)."""

    mp4: bytes
    method: str  # "copy" | "reencode"
    num_frames: int
    width: int
    height: int
    fps: float  # frames / duration of the span


# ------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class RejectedClip:
    """Frames ``[start, end)`` of scene ``scene_index`` that would have given clips and gave none, and why."""

    start: int
    end: int
    scene_index: int
    reason: str  # "transition-suspect": the purity guard's spans leave no part long enough


def plan_clips(
    scenes: Sequence[Scene], cfg: ClipConfig, fps: float, pts: np.ndarray | None = None,
    rejected: list[RejectedClip] | None = None,
) -> list[ClipSpan]:
    """Clip spans for ``scenes`` (see module doc). ``pts`` (seconds of every decoded frame) makes window
    boundaries and durations exact on VFR input; without it, times inside a scene are interpolated at ``fps``.
    ``rejected``, when given, receives a :class:`RejectedClip` per scene the purity guard's spans emptied."""
    spans: list[ClipSpan] = []
    for k, scene in enumerate(scenes):
        if not scene.suspect:
            spans += _plan_scene(scene, k, 0, cfg, fps, pts)
            continue
        parts, edge, cut_in = [], scene.start, scene.cut_in
        for lo, hi in sorted(scene.suspect):
            parts.append((edge, lo, cut_in, "suspect"))
            edge, cut_in = max(edge, hi), "suspect"
        parts.append((edge, scene.end, cut_in, scene.cut_out))
        before = len(spans)
        for a, b, c_in, c_out in parts:
            if b > a:
                part = replace(scene, start=a, end=b, cut_in=c_in, cut_out=c_out, suspect=(),
                               start_s=_time(scene, a, fps, pts), end_s=_time(scene, b, fps, pts))
                spans += _plan_scene(part, k, len(spans) - before, cfg, fps, pts)
        if len(spans) == before and rejected is not None and _plan_scene(scene, k, 0, cfg, fps, pts):
            rejected.append(RejectedClip(scene.start, scene.end, k, "transition-suspect"))
    return spans


def _time(scene: Scene, i: int, fps: float, pts: np.ndarray | None) -> float:
    if pts is not None and i < len(pts):
        return float(pts[i])
    if i == scene.end:
        return scene.end_s
    return scene.start_s + (i - scene.start) / fps


def _plan_scene(
    scene: Scene, k: int, first_window: int, cfg: ClipConfig, fps: float, pts: np.ndarray | None
) -> list[ClipSpan]:
    """The clips of one scene (no suspect spans), windows numbered from ``first_window``."""
    spans: list[ClipSpan] = []
    start = scene.start + cfg.trim_frames + (cfg.margin_frames if scene.cut_in != "start" else 0)
    end = scene.end - cfg.trim_frames - (cfg.margin_frames if scene.cut_out != "end" else 0)
    if end - start < 1:
        return spans

    def time_of(i: int) -> float:
        return _time(scene, i, fps, pts)

    duration = time_of(end) - time_of(start)
    if duration < cfg.min_s - 1e-6:
        return spans
    n = max(1, math.ceil(duration / cfg.max_s - 1e-9))
    while True:
        edges = np.rint(np.linspace(start, end, n + 1)).astype(int)
        if all(time_of(b) - time_of(a) <= cfg.max_s + 1e-6 for a, b in zip(edges[:-1], edges[1:])):
            break
        n += 1  # VFR: equal frame counts can exceed max_s; one more window
    for w, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        spans.append(
            ClipSpan(
                start=int(a),
                end=int(b),
                start_s=time_of(int(a)),
                end_s=time_of(int(b)),
                scene_index=k,
                window_index=first_window + w,
                cut_in=scene.cut_in if w == 0 else "window",
                cut_out=scene.cut_out if w == n - 1 else "window",
            )
        )
    return spans


# ------------------------------------------------------------------------------------------- cutting


def _even_size(width: int, height: int, max_short_side: int | None) -> tuple[int, int, bool]:
    """Output (W, H) in display orientation and whether it is a resize (see the size rule in the module doc)."""
    short = min(width, height)
    if max_short_side is not None and short > max_short_side:
        scale = max_short_side / short
        return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2), True
    return width - width % 2, height - height % 2, False


class _Index:
    """Maps a decoded frame's PTS (seconds from stream start) to its decoded-frame index in ``pts``."""

    def __init__(self, pts: np.ndarray):
        self.pts = np.asarray(pts, np.float64)
        gaps = np.diff(self.pts)
        self.tol = float(min(gaps[gaps > 0].min() / 2, 1e-3)) if np.any(gaps > 0) else 1e-3

    def index_of(self, t: float) -> int | None:
        k = int(np.searchsorted(self.pts, t))
        for j in (k - 1, k):
            if 0 <= j < len(self.pts) and abs(self.pts[j] - t) <= self.tol:
                return j
        return None

    def end_time(self, span: ClipSpan) -> float:
        return float(self.pts[span.end]) if span.end < len(self.pts) else math.inf


class _Sink:
    """Where one MP4 is written: memory or a temp file (``ClipConfig.sink``)."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "memory":
            self.target = io.BytesIO()
        else:
            fd, self.target = tempfile.mkstemp(suffix=".mp4")
            os.close(fd)

    def open(self):
        return av.open(self.target, "w", format="mp4")

    def read(self) -> bytes:
        if self.kind == "memory":
            return self.target.getvalue()
        try:
            with open(self.target, "rb") as f:
                return f.read()
        finally:
            os.unlink(self.target)


class _Encoder:
    """libx264 encoder for one span, fed decoded source frames in order."""

    def __init__(self, span: ClipSpan, src_stream, rotation: int, cfg: ClipConfig, t0_pts: int):
        cc = src_stream.codec_context
        disp_w, disp_h = (cc.height, cc.width) if rotation in (90, 270) else (cc.width, cc.height)
        self.width, self.height, resized = _even_size(disp_w, disp_h, cfg.max_short_side)
        self.rotation = rotation
        # swscale target in coded orientation; crop (odd native sizes) and rotation are done on RGB
        self.scale_wh = (self.height, self.width) if rotation in (90, 270) else (self.width, self.height)
        if not resized:
            self.scale_wh = (cc.width, cc.height)
        self.fast = rotation == 0 and self.scale_wh == (self.width, self.height)
        self.t0 = t0_pts
        self.count = 0
        self.sink = _Sink(cfg.sink)
        self.out = self.sink.open()
        rate = src_stream.average_rate or src_stream.guessed_rate or Fraction(25)
        self.stream = self.out.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.codec_context.time_base = src_stream.time_base
        sar = src_stream.sample_aspect_ratio or cc.sample_aspect_ratio
        if sar and sar != 1:
            self.stream.codec_context.sample_aspect_ratio = 1 / sar if rotation in (90, 270) else sar
        opts = {"crf": str(cfg.crf), "preset": cfg.preset}
        if cfg.threads:
            opts["threads"] = str(cfg.threads)
        self.stream.codec_context.options = opts

    def add(self, frame: av.VideoFrame) -> None:
        if self.fast:
            out = frame.reformat(format="yuv420p")
        else:
            rgb = frame.to_ndarray(width=self.scale_wh[0], height=self.scale_wh[1], format="rgb24")
            if self.rotation:
                rgb = np.rot90(rgb, k=-(self.rotation // 90))
            rgb = np.ascontiguousarray(rgb[: self.height, : self.width])
            out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        out.pts = frame.pts - self.t0
        out.time_base = frame.time_base
        # a decoded frame carries the source's picture type, which libx264 obeys: an intra-only source (MJPEG,
        # ProRes, DNxHD) would give a clip of nothing but keyframes. x264 picks the types (the first is an IDR)
        out.pict_type = av.video.frame.PictureType.NONE
        self.out.mux(self.stream.encode(out))
        self.count += 1

    def close(self, span: ClipSpan) -> CutResult:
        self.out.mux(self.stream.encode(None))
        self.out.close()
        if self.count != span.num_frames:
            raise RuntimeError(f"span {span.start}-{span.end}: decoded {self.count} of {span.num_frames} frames")
        return CutResult(self.sink.read(), "reencode", self.count, self.width, self.height, _fps(span))


def _fps(span: ClipSpan) -> float:
    duration = span.end_s - span.start_s
    return float(span.num_frames / duration) if duration > 0 else 0.0


def cut_clips(
    src_path: str | os.PathLike,
    spans: Sequence[ClipSpan],
    pts: np.ndarray,
    cfg: ClipConfig,
    rotation: int | None = None,
) -> list[CutResult | Exception]:
    """Cut every span of one source; result ``k`` is span ``k``'s :class:`CutResult`, or the exception that
    span failed with (one bad clip does not lose the others).

    ``pts``: PTS in seconds of every decoded frame (from the analysis pass). ``rotation``: clockwise display
    rotation in degrees as ``curate.probe`` reports it; None reads it from the first decoded frame.
    """
    results: list[CutResult | Exception | None] = [None] * len(spans)
    if not spans:
        return []
    index = _Index(pts)
    todo = list(range(len(spans)))
    if cfg.allow_copy:
        try:
            copied = _copy_pass(src_path, spans, index, cfg, rotation)
        except (av.FFmpegError, OSError, ValueError):
            copied = {}  # copying is an optimisation: any trouble and every span is re-encoded
        for k, res in copied.items():
            results[k] = res
        todo = [k for k in todo if results[k] is None]
    if todo:
        for k, res in zip(todo, _reencode_pass(src_path, [spans[k] for k in todo], index, cfg, rotation)):
            results[k] = res
    return results  # type: ignore[return-value]


def cut_clip(
    src_path: str | os.PathLike, span: ClipSpan, pts: np.ndarray, cfg: ClipConfig, rotation: int | None = None
) -> CutResult:
    """Cut one span (see :func:`cut_clips`, which is faster for several spans of one source)."""
    (res,) = cut_clips(src_path, [span], pts, cfg, rotation)
    if isinstance(res, Exception):
        raise res
    return res


def _stream_origin(stream, first_pts: int | None) -> int:
    return stream.start_time if stream.start_time is not None else (first_pts or 0)


class _SeekOvershot(Exception):
    """The seek landed after the first wanted frame (bad index); decode from the start instead."""


def _reencode_pass(
    src_path, spans: list[ClipSpan], index: _Index, cfg: ClipConfig, rotation: int | None
) -> list[CutResult | Exception]:
    """One decode pass (seeking to the keyframe before the first span) feeding one encoder per open span."""
    try:
        return _decode_and_encode(src_path, spans, index, cfg, rotation, seek=True)
    except _SeekOvershot:
        return _decode_and_encode(src_path, spans, index, cfg, rotation, seek=False)


def _decode_and_encode(
    src_path, spans: list[ClipSpan], index: _Index, cfg: ClipConfig, rotation: int | None, seek: bool
) -> list[CutResult | Exception]:
    results: list[CutResult | Exception | None] = [None] * len(spans)
    order = sorted(range(len(spans)), key=lambda k: spans[k].start)
    first = spans[order[0]].start
    last_end = max(s.end for s in spans)
    open_encoders: dict[int, _Encoder] = {}
    with av.open(open_path(src_path)) as container:
        stream = main_video_stream(container)
        if stream is None:
            raise ValueError(f"{os.fspath(src_path)!r}: no video stream")
        stream.thread_type = "AUTO"
        tb = stream.time_base
        origin = _stream_origin(stream, None)
        first_t = float(index.pts[first])
        if seek and first_t > 1.0:
            container.seek(origin + int(first_t / tb), stream=stream, backward=True, any_frame=False)
        rot, seen_first = rotation, False
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                if rot is None:
                    rot = rotation_of(frame)
                i = index.index_of(float((frame.pts - origin) * tb))
                if i is None:
                    continue
                if not seen_first:
                    seen_first = True
                    if i > first:
                        raise _SeekOvershot()
                for k in order:
                    span = spans[k]
                    if results[k] is not None or not (span.start <= i < span.end):
                        continue
                    enc = open_encoders.get(k)
                    if enc is None:
                        if i != span.start:
                            results[k] = RuntimeError(f"span {span.start}-{span.end}: first frame {i} missing")
                            continue
                        enc = open_encoders[k] = _Encoder(span, stream, rot, cfg, frame.pts)
                    enc.add(frame)
                    if i == span.end - 1:
                        results[k] = _finish(open_encoders.pop(k), span)
                if i >= last_end - 1:
                    break
        except _SeekOvershot:
            raise
        except Exception as exc:  # a decoder error part-way fails the spans not finished yet
            for k in range(len(spans)):
                if results[k] is None:
                    results[k] = exc
        for k, enc in open_encoders.items():
            if results[k] is None:
                results[k] = _finish(enc, spans[k])
    return [r if r is not None else RuntimeError("span not reached in the source") for r in results]


def _finish(enc: _Encoder, span: ClipSpan) -> CutResult | Exception:
    try:
        return enc.close(span)
    except Exception as exc:
        return exc


# --------------------------------------------------------------------------------------- stream copy


def _copy_pass(
    src_path, spans: Sequence[ClipSpan], index: _Index, cfg: ClipConfig, rotation: int | None
) -> dict[int, CutResult]:
    """Stream-copy the spans that allow it (demux only, no decode), each verified by decoding the result.

    Streaming: a span's packets are kept only from the keyframe packet that starts it until the packet at its
    end time shows whether the next frame is a keyframe; so memory holds the spans in progress, not the file.
    """
    with av.open(open_path(src_path)) as container:
        stream = main_video_stream(container)
        if stream is None or stream.codec_context.name != "h264":
            return {}
        cc = stream.codec_context
        if rotation is None:
            rotation = next((rotation_of(f) for f in container.decode(stream)), 0)
            container.seek(0)
        if rotation != 0 or _even_size(cc.width, cc.height, cfg.max_short_side) != (cc.width, cc.height, False):
            return {}
        tb, origin, tol = stream.time_base, _stream_origin(stream, None), index.tol
        bounds = [(float(index.pts[s.start]), index.end_time(s)) for s in spans]
        collecting: dict[int, list] = {}  # span -> packets, once its first frame arrived as a keyframe
        ready: dict[int, list] = {}  # span -> packets, once the frame after it arrived as a keyframe
        last_end = max(end for _, end in bounds)
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            t = float((packet.pts - origin) * tb)
            for k, (start_t, end_t) in enumerate(bounds):
                if abs(t - start_t) <= tol and packet.is_keyframe and k not in ready:
                    collecting[k] = []
                if k not in collecting:
                    continue
                if abs(t - end_t) <= tol:  # the first frame after the span decides
                    packets = collecting.pop(k)
                    if packet.is_keyframe:
                        ready[k] = packets
                elif start_t - tol <= t < end_t - tol:
                    collecting[k].append(packet)
            if t > last_end + 5.0 and not collecting:
                break
        ready.update(collecting)  # spans still open at the end of the stream run to the end: no next frame
        out: dict[int, CutResult] = {}
        for k, packets in ready.items():
            span = spans[k]
            if math.isfinite(bounds[k][1]) and k in collecting:
                continue  # the frame after it never arrived: a truncated stream, re-encode instead
            try:
                mp4 = _mux_copy(packets, stream, cfg)
                if _verify_copy(mp4, index.pts[span.start : span.end] - bounds[k][0], tol):
                    out[k] = CutResult(mp4, "copy", span.num_frames, cc.width, cc.height, _fps(span))
            except (av.FFmpegError, ValueError):
                continue  # falls back to re-encode
    return out


def _mux_copy(packets: list, src_stream, cfg: ClipConfig) -> bytes:
    if not packets:
        raise ValueError("no packets")
    sink = _Sink(cfg.sink)
    shift = min(p.dts if p.dts is not None else p.pts for p in packets)
    with sink.open() as out:
        ostream = out.add_stream_from_template(src_stream)
        for p in packets:
            q = av.Packet(bytes(p))
            q.pts, q.dts = p.pts - shift, (p.dts - shift) if p.dts is not None else None
            q.time_base, q.is_keyframe = p.time_base, p.is_keyframe
            q.stream = ostream
            out.mux(q)
    return sink.read()


def _verify_copy(mp4: bytes, rel_pts: np.ndarray, tol: float) -> bool:
    """The copied clip decodes to exactly the span's frames: same count, same PTS relative to the first."""
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * stream.time_base) for f in container.decode(stream) if f.pts is not None]
    if len(times) != len(rel_pts):
        return False
    rel = np.asarray(times) - times[0]
    return bool(np.all(np.abs(rel - rel_pts) <= max(tol, 1e-3)))
