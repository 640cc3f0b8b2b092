"""Decode a video at analysis size, streaming, with presentation times taken from the stream.

``iter_frames(path, cfg)`` yields ``Frame(index, pts_s, rgb)`` one at a time and never holds the whole video:

- ``index`` is the decoded-frame index (0, 1, 2, ... in presentation order), not ``pts * fps``; on a
  variable-frame-rate file the two differ, and ``pts_s`` is the truth for time.
- ``pts_s`` is the frame's presentation timestamp in seconds, relative to the video stream's start time, so the
  first frame of a file whose stream starts late (an edit list, a muxing delay) is at t = 0.
- ``rgb`` is ``(H, W, 3) uint8`` in DISPLAY orientation: the file's rotation flag (display matrix) is applied,
  and non-square pixels are resampled to square ones. The short side is ``cfg.short_side`` (never upscaled).

Two backends give the same frames, times and orientation: PyAV (FFmpeg's frame-threaded decoder; swscale
resizes in the decoded pixel format, then converts the small frame to RGB; rotation applied with numpy) and
decord (which rotates by itself; we ask it for display-orientation sizes). ``backend="auto"`` uses PyAV: on the
real test videos it decoded 932 frames/s against decord's 713 (benchmarks/bench_decode.py, 2-core CPU), it
returns the same frames (mean difference ~1.5 grey levels, from the resamplers), and it does not share decord's
known hangs on headers that overstate the frame count. Decode in ``curate.sandbox`` when the input is untrusted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np

from curate.probe import display_rotation, main_video_stream, open_path

try:
    import av
    from av.video.reformatter import VideoReformatter
except ImportError:  # the lent GPU image has no PyAV: DecodeConfig and the planning code still import
    av = None
else:
    av.logging.set_level(None)  # FFmpeg's log bridge can deadlock under threads


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode for analysis."""

    short_side: int = 160  # analysis size: short side in pixels (display orientation); never upscaled
    backend: str = "auto"  # "auto" | "pyav" | "decord"; auto = pyav (measured; see module doc)
    threads: int = 0  # decoder threads; 0 lets FFmpeg / decord choose
    max_frames: int = 500_000  # stop after this many frames
    timeout_s: float = 900.0  # wall-clock budget per video (hangs inside native code need curate.sandbox)
    batch_size: int = 32  # frames per decord get_batch call
    interpolation: str = "AREA"  # swscale filter for the PyAV resize (area averaging: no aliasing)
    thumb_skip_loop_filter: bool = True  # iter_thumbs: skip H.264/HEVC deblocking (analysis only; see there)
    thumb_threads: int = 1  # iter_thumbs decoder threads: one costs the least CPU per frame (0.52 vs 0.65 CPU-s
    # for 1168 640x360 frames with FFmpeg's choice); a build runs one video per CPU anyway


@dataclass(frozen=True)
class Frame:
    """One decoded frame at analysis size, display orientation."""

    index: int  # decoded-frame index, presentation order
    pts_s: float  # presentation time (s) from the stream's PTS, relative to the stream start (first frame: 0)
    rgb: np.ndarray  # (H, W, 3) uint8


class DecodeError(RuntimeError):
    """The decoder failed part-way; the message names the file and the frame index reached."""


class DecodeTimeout(DecodeError):
    """Decoding took longer than ``DecodeConfig.timeout_s``."""


@dataclass(frozen=True)
class _Geometry:
    coded_w: int
    coded_h: int
    rotation: int  # clockwise degrees
    out_w: int  # analysis size, display orientation
    out_h: int


def analysis_size(width: int, height: int, sample_aspect: float, rotation: int, short_side: int) -> tuple[int, int]:
    """(width, height) of analysis frames in display orientation: square pixels, short side ``short_side``."""
    dw, dh = width * (sample_aspect or 1.0), float(height)
    if rotation in (90, 270):
        dw, dh = dh, dw
    scale = min(1.0, short_side / min(dw, dh))
    return max(1, int(round(dw * scale))), max(1, int(round(dh * scale)))


def _geometry(stream, rotation: int, cfg: DecodeConfig) -> _Geometry:
    cc = stream.codec_context
    sar = stream.sample_aspect_ratio or cc.sample_aspect_ratio
    out_w, out_h = analysis_size(cc.width, cc.height, float(sar) if sar else 1.0, rotation, cfg.short_side)
    return _Geometry(cc.width, cc.height, rotation, out_w, out_h)


def _read_rotation(path) -> int:
    """The file's clockwise display rotation, from the display matrix of its first decoded frame."""
    with av.open(open_path(path)) as container:
        stream = main_video_stream(container)
        if stream is None:
            raise DecodeError(f"{os.fspath(path)!r}: no video stream")
        for frame in container.decode(stream):
            return display_rotation(frame, stream)
    return 0


def iter_frames(path, cfg: DecodeConfig = DecodeConfig(), rotation: int | None = None) -> Iterator[Frame]:
    """Yield every frame of ``path`` at analysis size in display orientation (see module doc).

    ``rotation`` is the file's clockwise display rotation as ``probe`` reported it (saves one frame decode);
    ``None`` reads it from the file. Raises ``DecodeError`` (or ``DecodeTimeout``) when decoding fails part-way;
    frames already yielded stay valid.
    """
    backend = "pyav" if cfg.backend == "auto" else cfg.backend
    if backend == "pyav":
        return _iter_pyav(path, cfg, rotation)
    if backend == "decord":
        return _iter_decord(path, cfg, rotation)
    raise ValueError(f"unknown backend {cfg.backend!r} (auto | pyav | decord)")


def _rotate(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a coded-orientation image clockwise by ``rotation`` degrees (contiguous result)."""
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90)))


def _timed(container, stream, cfg: DecodeConfig, name: str, progress: list[int]) -> Iterator[tuple[int, float, object]]:
    """``(index, pts_s, frame)`` for every decoded frame of ``stream``: seconds from the first frame by PTS (a
    frame without a timestamp continues from the previous one at the nominal rate), at most ``cfg.max_frames``
    frames, ``DecodeTimeout`` past ``cfg.timeout_s``. ``progress[0]`` is the index of the frame being worked on,
    for the caller's error message (a decode error may surface in the caller's own conversion)."""
    t0 = time.monotonic()
    tb = float(stream.time_base)
    origin, last_pts = stream.start_time, None
    for index, frame in enumerate(container.decode(stream)):
        progress[0] = index
        if index == 0 and (origin is None or (frame.pts is not None and frame.pts < origin)):
            origin = frame.pts or 0  # no start time, or a first frame before it: it is t = 0
        if frame.pts is not None:
            pts_s = (frame.pts - origin) * tb
        else:  # no timestamp (rare raw streams): continue from the previous one at the nominal rate
            rate = float(stream.average_rate or stream.base_rate or 25)
            pts_s = 0.0 if last_pts is None else last_pts + 1.0 / rate
        last_pts = pts_s
        yield index, float(pts_s), frame
        progress[0] = index + 1
        if index + 1 >= cfg.max_frames:
            return
        if time.monotonic() - t0 > cfg.timeout_s:
            raise DecodeTimeout(f"{name!r}: over {cfg.timeout_s} s after {index + 1} frames")


def _iter_pyav(path, cfg: DecodeConfig, rotation: int | None) -> Iterator[Frame]:
    name = os.fspath(path)
    with av.open(open_path(path)) as container:
        stream = main_video_stream(container)
        if stream is None:
            raise DecodeError(f"{name!r}: no video stream")
        stream.thread_type = "AUTO"  # frame + slice threads
        stream.codec_context.thread_count = cfg.threads
        geo = None
        scaler, to_rgb = VideoReformatter(), VideoReformatter()
        at = [0]
        try:
            for index, pts_s, frame in _timed(container, stream, cfg, name, at):
                if geo is None:
                    rot = display_rotation(frame, stream) if rotation is None else rotation
                    geo = _geometry(stream, rot, cfg)
                # swscale wants the coded orientation: swap the target for 90/270 before rotating
                w, h = (geo.out_h, geo.out_w) if geo.rotation in (90, 270) else (geo.out_w, geo.out_h)
                # Two passes: resize in the decoder's own pixel format, then convert the small frame to RGB.
                # Cheaper than one resize-and-convert pass: 0.19 vs 0.43 ms/frame from 640x360, 0.57 vs 0.81
                # from 1280x720 (AREA, this 2-core CPU); results differ by ~1 grey level on average.
                small = frame
                if (frame.width, frame.height) != (w, h):
                    small = scaler.reformat(frame, w, h, frame.format.name, interpolation=cfg.interpolation)
                rgb = _rotate(to_rgb.reformat(small, format="rgb24").to_ndarray(), geo.rotation)
                yield Frame(index=index, pts_s=pts_s, rgb=rgb)
        except av.FFmpegError as e:
            raise DecodeError(f"{name!r}: decoding failed at frame {at[0]}: {e}") from e


def _iter_decord(path, cfg: DecodeConfig, rotation: int | None) -> Iterator[Frame]:
    import decord  # imported here: optional backend, and importing it costs ~0.1 s

    t0 = time.monotonic()
    name = os.fspath(path)
    with av.open(open_path(path), options={"skip_frame": "all"}) as container:
        stream = main_video_stream(container)
        if stream is None:
            raise DecodeError(f"{name!r}: no video stream")
        rot = _read_rotation(path) if rotation is None else rotation
        geo = _geometry(stream, rot, cfg)
    # decord applies the file's rotation itself, so it is asked for the display-orientation size
    try:
        reader = decord.VideoReader(open_path(path), ctx=decord.cpu(0), width=geo.out_w, height=geo.out_h,
                                    num_threads=cfg.threads)
    except decord.DECORDError as e:
        raise DecodeError(f"{name!r}: decord cannot open: {e}") from e
    total = min(len(reader), cfg.max_frames)
    for start in range(0, total, cfg.batch_size):
        indices = list(range(start, min(total, start + cfg.batch_size)))
        try:
            batch = reader.get_batch(indices).asnumpy()  # (B, H, W, 3)
            times = reader.get_frame_timestamp(indices)[:, 0]  # (B,) start times, s, stream start = 0
        except decord.DECORDError as e:
            raise DecodeError(f"{name!r}: decoding failed at frame {start}: {e}") from e
        for k, i in enumerate(indices):
            yield Frame(index=i, pts_s=float(times[k]), rgb=batch[k])
        if time.monotonic() - t0 > cfg.timeout_s:
            raise DecodeTimeout(f"{name!r}: over {cfg.timeout_s} s after {indices[-1] + 1} frames")


def read_frames_at(path, wanted: Sequence[int] | Sequence[float], cfg: DecodeConfig = DecodeConfig(),
                   rotation: int | None = None) -> list[Frame]:
    """Frames at decoded-frame indices (ints) or at times in seconds (floats), in the order asked.

    A time picks the frame on screen at that moment: the last frame with ``pts_s <= t`` (the first frame for
    t before it). Frame-exact on VFR files because it decodes forward from the start (no seek) and stops after
    the last frame needed; costs a decode up to that point.
    """
    if len(wanted) == 0:
        return []
    by_time = isinstance(wanted[0], float)
    if by_time:
        order = sorted(range(len(wanted)), key=lambda k: wanted[k])
        out: list[Frame | None] = [None] * len(wanted)
        pos, prev = 0, None
        for frame in iter_frames(path, cfg, rotation):
            while pos < len(order) and wanted[order[pos]] < frame.pts_s - 1e-6:
                out[order[pos]] = prev if prev is not None else frame
                pos += 1
            if pos == len(order):
                break
            prev = frame
        for k in order[pos:]:
            out[k] = prev
        return [f for f in out if f is not None]
    need = set(int(i) for i in wanted)
    got: dict[int, Frame] = {}
    last = max(need)
    for frame in iter_frames(path, cfg, rotation):
        if frame.index in need:
            got[frame.index] = frame
        if frame.index >= last:
            break
    missing = sorted(need - got.keys())
    if missing:
        raise IndexError(f"{os.fspath(path)!r}: frames {missing[:5]} not in the video ({len(got)} found)")
    return [got[int(i)] for i in wanted]


# 8-bit planar YUV formats iter_thumbs reads directly -> (luma offset, luma range, chroma range): limited or full
_PLANAR = {"yuv420p": (16.0, 219.0, 224.0), "yuv422p": (16.0, 219.0, 224.0), "yuv444p": (16.0, 219.0, 224.0),
           "yuvj420p": (0.0, 255.0, 255.0), "yuvj422p": (0.0, 255.0, 255.0), "yuvj444p": (0.0, 255.0, 255.0)}


def _full_range(off: float, yr: float, cr: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel gain and offset to full range: Y' = (Y - off) * 255 / yr, C' = (C - 128) * 255 / cr + 128."""
    gain = np.array([255.0 / yr, 255.0 / cr, 255.0 / cr], np.float32)
    return gain, np.array([-off, -128.0, -128.0], np.float32) * gain + np.array([0.0, 128.0, 128.0], np.float32)


_PLANAR_GAIN = {name: _full_range(*levels) for name, levels in _PLANAR.items()}
# ... as (256, 1, 3) float32 look-up tables: cv2.LUT of the uint8 thumbnail gives the same float32 values as
# converting it and applying gain and offset (the same two float32 operations per entry), in one call
_PLANAR_LUT = {name: np.arange(256, dtype=np.float32).reshape(256, 1, 1) * gain + offset
               for name, (gain, offset) in _PLANAR_GAIN.items()}


def _plane_thumb(plane, w: int, h: int, size: tuple[int, int]) -> np.ndarray:
    """Area-mean thumbnail of one 8-bit plane; a big plane is first sampled every ``step`` pixels (each thumbnail
    cell still averages >= 16 samples), which makes the resize ~``step**2`` times cheaper. The sampling is
    ``arr[::step, ::step]``; where ``step`` divides both sides, OpenCV's nearest-neighbour resize by ``1 / step``
    reads the same pixels (``k * step``) without numpy's copy of the strided view (~2 % of the scene stage)."""
    arr = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]
    step = max(1, min(w // (size[0] * 4), h // (size[1] * 4)))
    if step > 1 and w % step == 0 and h % step == 0:
        arr = cv2.resize(arr, (w // step, h // step), interpolation=cv2.INTER_NEAREST)
    elif step > 1:
        arr = arr[::step, ::step]
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)


def iter_thumbs(path, cfg: DecodeConfig = DecodeConfig(), rotation: int | None = None,
                size: tuple[int, int] = (32, 18)) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, pts_s, thumb)`` for every frame: ``thumb`` is an ``(H, W, 3)`` float32 full-range YUV
    thumbnail of ``size`` (W, H) in display orientation, the input of ``curate.scenes.SceneSplitter.push_thumb``.

    Index and ``pts_s`` are those of :func:`iter_frames`. 8-bit planar YUV is area-averaged straight from the
    decoder's planes (no full-size conversion; the thumbnail is a fixed grid, whatever the aspect ratio); other
    pixel formats go through swscale to a small RGB frame. With ``cfg.thumb_skip_loop_filter`` the decoder skips
    the deblocking filter: ~1/3 less decode CPU on H.264; the error it leaves is blocking of a few levels that the
    area mean over >= 20x20-pixel cells averages out.
    """
    name = os.fspath(path)
    with av.open(open_path(path)) as container:
        stream = main_video_stream(container)
        if stream is None:
            raise DecodeError(f"{name!r}: no video stream")
        if cfg.thumb_threads != 1:
            stream.thread_type = "AUTO"
        stream.codec_context.thread_count = cfg.thumb_threads
        if cfg.thumb_skip_loop_filter:
            stream.codec_context.options = {**stream.codec_context.options, "skip_loop_filter": "all"}
        rot, at = rotation, [0]
        try:
            for index, pts_s, frame in _timed(container, stream, cfg, name, at):
                if rot is None:
                    rot = display_rotation(frame, stream)
                coded = (size[1], size[0]) if rot in (90, 270) else size
                lut = _PLANAR_LUT.get(frame.format.name)
                if lut is not None:
                    y, u, v = frame.planes
                    w, h, cw, ch = frame.width, frame.height, u.width, u.height
                    thumb = cv2.LUT(cv2.merge((_plane_thumb(y, w, h, coded), _plane_thumb(u, cw, ch, coded),
                                               _plane_thumb(v, cw, ch, coded))), lut)  # to full range, float32
                else:
                    rgb = frame.to_ndarray(width=coded[0] * 2, height=coded[1] * 2, format="rgb24")
                    small = cv2.resize(rgb, coded, interpolation=cv2.INTER_AREA)
                    thumb = cv2.cvtColor(small, cv2.COLOR_RGB2YUV).astype(np.float32)
                if rot:
                    thumb = np.ascontiguousarray(np.rot90(thumb, k=-(rot // 90)))
                yield index, pts_s, thumb
        except av.FFmpegError as e:
            raise DecodeError(f"{name!r}: decoding failed at frame {at[0]}: {e}") from e
