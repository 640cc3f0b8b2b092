"""Probe one input file: what it is, whether policy admits it, whether it opens and decodes at all.

``probe(path)`` reads the container header with PyAV, checks the limits in ``ProbeLimits`` BEFORE any decoding
that scales with the file, then runs a cheap integrity check. It returns one flat dict (the probe row) and
never raises for bad input: a bad file becomes ``status`` ``rejected`` (we understood it; policy says no) or
``failed`` (we could not read it), with a short kebab-case ``reason``.

What probe catches (cost: one header read, one short packet scan, at most two single-frame decodes):
- ``not-found``, ``not-a-file``, ``empty-file``, ``too-large`` (file bytes, before hashing);
- ``duplicate-content`` (the same bytes as another input of the build, when the caller passes ``claim``);
- ``not-a-video`` (no container format recognised), ``still-image`` (an image demuxer opened it),
  ``no-video-stream`` (audio only; cover art does not count), ``no-decoder``, ``unknown-size``;
- policy limits: ``codec-not-allowed``, ``too-large`` (width / height / pixels), ``too-small``, ``too-long``,
  ``too-short``, ``too-many-frames``. The header is read with decoding disabled (``skip_frame=all``), so a
  header claiming 16000x12000 is rejected without allocating a frame of that size;
- ``unreadable``: a known container that FFmpeg cannot open (e.g. an MP4 cut before its index);
- ``truncated``: the index lists samples past the end of the file, or nothing decodes after seeking to the
  middle;
- ``corrupt-start`` / ``corrupt-middle``: the first frame, or the keyframe at/before the middle, fails to
  decode; ``no-frames``: nothing decodes at all.

What is left to the full decode (``curate.frames``, in the sandbox): damage that lies elsewhere than the
first GOP and the middle keyframe, truncation of formats without an index (MPEG-TS, raw streams), headers
that overstate the frame count, and decoder hangs or crashes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

try:
    import av
except ImportError:  # the lent GPU image has no PyAV: modules that import this one still load (probing needs it)
    av = None

from curate.store import sha256_file

if av is not None:
    av.logging.set_level(None)  # FFmpeg's log bridge can deadlock under threads; we report errors ourselves

DEFAULT_CODECS = (
    "h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video",
    "prores", "mjpeg", "dnxhd", "theora",
)  # fmt: skip

# Leading bytes of container formats we know; a file that starts with one but will not open is "unreadable"
# (damaged), anything else that will not open is "not-a-video".
_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x00\x00\x01\xb3"),  # MPEG-1/2 elementary
    (0, b"\x47"),  # MPEG-TS sync byte
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)

PROBE_KEYS = (
    "source_uri", "content_id", "size_bytes", "container", "codec", "width", "height", "rotation",
    "display_width", "display_height", "sample_aspect", "fps_avg", "fps_real", "time_base", "start_time_s",
    "duration_s", "num_frames", "num_frames_source", "pix_fmt", "has_audio", "num_video_streams", "is_vfr",
    "status", "reason", "error_class", "message",
)  # fmt: skip


@dataclass(frozen=True)
class ProbeLimits:
    """What the pipeline admits. Sizes are in display orientation (after rotation)."""

    max_width: int = 8192
    max_height: int = 8192
    max_pixels: int = 7680 * 4320  # 8K UHD
    min_side: int = 64
    min_duration_s: float = 0.5
    max_duration_s: float = 4 * 3600.0
    max_frames: int = 4 * 3600 * 120  # 4 h at 120 fps
    allowed_codecs: tuple[str, ...] = DEFAULT_CODECS
    max_file_bytes: int = 64 * 2**30
    check_middle: bool = True  # integrity: also decode the keyframe at/before the middle
    vfr_scan_packets: int = 120  # packets whose timestamps are scanned for a variable frame rate


class _Verdict(Exception):
    """Internal: stop probing with a status and reason (never escapes ``probe``)."""

    def __init__(self, status: str, reason: str, message: str = "", error_class: str | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.error_class = status, reason, message, error_class


def main_video_stream(container):
    """The first video stream that is not attached cover art, or None. Shared with ``curate.frames``."""
    streams = video_streams(container)
    return streams[0] if streams else None


def video_streams(container) -> list:
    """Video streams of ``container`` that are real video (cover art / attached pictures excluded)."""
    return [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]


def open_path(path: str | os.PathLike) -> str:
    """The string to hand FFmpeg: an absolute path, so a name like ``http:x`` or ``-x`` stays a local file."""
    return os.path.abspath(os.fspath(path))


def rotation_of(frame) -> int:
    """Clockwise display rotation (0/90/180/270) of a decoded frame, from its display matrix."""
    ccw = frame.rotation or 0  # FFmpeg reports counter-clockwise degrees
    return int(round(-ccw / 90.0)) * 90 % 360


def display_rotation(frame, stream) -> int:
    """Clockwise rotation (0/90/180/270) to show ``frame`` upright: its display matrix, else the legacy
    ``rotate`` tag of ``stream`` (for demuxers that do not turn the tag into a display matrix)."""
    from_matrix = rotation_of(frame)
    if from_matrix:
        return from_matrix
    try:
        return int(round(float(stream.metadata.get("rotate", 0)) / 90.0)) * 90 % 360
    except (TypeError, ValueError):
        return 0


def probe(path: str | os.PathLike, limits: ProbeLimits = ProbeLimits(), uri: str | None = None,
          claim=None) -> dict:
    """Describe ``path`` and judge it against ``limits``; never raises for bad input (see module doc).

    ``claim(content_id) -> str | None``, when given, is asked right after hashing whether another input with the
    same bytes was accepted or is in progress (it returns that input's uri): such an input is rejected as
    ``duplicate-content`` before anything is decoded.
    """
    row = dict.fromkeys(PROBE_KEYS)
    row.update(source_uri=uri if uri is not None else os.fspath(path), status="ok")
    try:
        _probe_into(row, path, limits, claim)
    except _Verdict as v:
        row.update(status=v.status, reason=v.reason, message=v.message[:500], error_class=v.error_class)
    except (av.FFmpegError, OSError, MemoryError, ValueError, RuntimeError, EOFError, IndexError) as e:
        row.update(status="failed", reason="unreadable", error_class=type(e).__name__, message=str(e)[:500])
    return row


def _probe_into(row: dict, path, limits: ProbeLimits, claim=None) -> None:
    """Fill ``row`` step by step; raise ``_Verdict`` at the first failed check."""
    # 1. the file itself: exists, regular, non-empty, not above the byte limit (checked before hashing)
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise _Verdict("failed", "not-found", str(e), type(e).__name__) from None
    except OSError as e:
        raise _Verdict("failed", "unreadable", str(e), type(e).__name__) from None
    if not os.path.isfile(path):
        raise _Verdict("failed", "not-a-file", "not a regular file")
    row["size_bytes"] = st.st_size
    if st.st_size == 0:
        raise _Verdict("failed", "empty-file", "0 bytes")
    if st.st_size > limits.max_file_bytes:
        raise _Verdict("rejected", "too-large", f"{st.st_size} bytes > max_file_bytes {limits.max_file_bytes}")
    row["content_id"] = sha256_file(path)
    holder = claim(row["content_id"]) if claim is not None else None
    if holder is not None:
        raise _Verdict("rejected", "duplicate-content", f"same bytes as {holder!r}")

    # 2. the header, with decoding disabled inside FFmpeg's stream analysis
    try:
        container = av.open(open_path(path), options={"skip_frame": "all"})
    except av.FFmpegError as e:
        reason = "unreadable" if _known_magic(path) else "not-a-video"
        raise _Verdict("failed", reason, str(e), type(e).__name__) from None
    with container:
        _read_header(row, container)
        _check_limits(row, limits)
        _check_integrity(row, container, limits)


def _known_magic(path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    return any(head[off : off + len(m)] == m for off, m in _MAGIC)


def _read_header(row: dict, container) -> None:
    """Geometry, rates, duration and frame count of the main video stream (no decoding)."""
    fmt = container.format.name
    row["container"] = fmt
    row["has_audio"] = len(container.streams.audio) > 0
    streams = video_streams(container)
    row["num_video_streams"] = len(streams)
    if fmt.endswith("_pipe") or fmt in ("image2", "png", "webp"):
        raise _Verdict("rejected", "still-image", f"image format {fmt}")
    if not streams:
        raise _Verdict("rejected", "no-video-stream", f"streams: {[s.type for s in container.streams]}")
    s = streams[0]
    cc = s.codec_context
    if cc is None:
        raise _Verdict("failed", "no-decoder", "FFmpeg has no decoder for this stream")
    row["codec"] = cc.codec.canonical_name
    row["width"], row["height"] = int(cc.width or 0), int(cc.height or 0)
    sar = s.sample_aspect_ratio or cc.sample_aspect_ratio
    row["sample_aspect"] = float(sar) if sar else 1.0
    row["fps_avg"] = _as_float(s.average_rate)
    row["fps_real"] = _as_float(s.base_rate) or _as_float(s.guessed_rate)
    tb = s.time_base or Fraction(1, 1)
    row["time_base"] = f"{tb.numerator}/{tb.denominator}"
    row["start_time_s"] = float(s.start_time * tb) if s.start_time is not None else 0.0
    if s.duration:
        row["duration_s"] = float(s.duration * tb)
    elif container.duration:
        row["duration_s"] = container.duration / av.time_base
    fps = row["fps_avg"] or row["fps_real"]
    if s.frames:
        row["num_frames"], row["num_frames_source"] = int(s.frames), "header"
    elif row["duration_s"] and fps:
        row["num_frames"], row["num_frames_source"] = int(round(row["duration_s"] * fps)), "estimate"
    else:
        row["num_frames_source"] = "unknown"
    row["rotation"] = 0  # refined from the display matrix of the first decoded frame
    _set_display_size(row)
    if row["width"] <= 0 or row["height"] <= 0:
        raise _Verdict("failed", "unknown-size", "the header gives no usable frame size")


def _set_display_size(row: dict) -> None:
    w = row["width"] * row["sample_aspect"]
    w, h = int(round(w)), row["height"]
    row["display_width"], row["display_height"] = (h, w) if row["rotation"] in (90, 270) else (w, h)


def _check_size(row: dict, lim: ProbeLimits, rotation_known: bool) -> None:
    """Display size against the limits. Before the rotation is known (it comes with the first decoded frame),
    only what holds for any orientation is checked: long side, short side, pixel count."""
    w, h = row["display_width"], row["display_height"]
    if rotation_known:
        over = w > lim.max_width or h > lim.max_height
    else:
        over = max(w, h) > max(lim.max_width, lim.max_height) or min(w, h) > min(lim.max_width, lim.max_height)
    if over or w * h > lim.max_pixels:
        raise _Verdict("rejected", "too-large", f"{w}x{h} over {lim.max_width}x{lim.max_height}/{lim.max_pixels}px")


def _check_limits(row: dict, lim: ProbeLimits) -> None:
    """Policy checks on header values only; the first failing one decides the reason."""
    if row["codec"] not in lim.allowed_codecs:
        raise _Verdict("rejected", "codec-not-allowed", f"codec {row['codec']}")
    _check_size(row, lim, rotation_known=False)
    w, h = row["display_width"], row["display_height"]
    if min(w, h) < lim.min_side:
        raise _Verdict("rejected", "too-small", f"{w}x{h}: short side < {lim.min_side}")
    dur = row["duration_s"]
    if dur is not None and dur > lim.max_duration_s:
        raise _Verdict("rejected", "too-long", f"{dur:.3f} s > {lim.max_duration_s} s")
    if row["num_frames"] is not None and row["num_frames"] > lim.max_frames:
        raise _Verdict("rejected", "too-many-frames", f"{row['num_frames']} frames > {lim.max_frames}")
    # A one-frame file lasts one frame duration; judge it by its frame count when the header says 1.
    if (dur is not None and dur < lim.min_duration_s) or row["num_frames"] == 1:
        raise _Verdict("rejected", "too-short", f"{dur} s / {row['num_frames']} frames < {lim.min_duration_s} s")


def _check_integrity(row: dict, container, lim: ProbeLimits) -> None:
    """Index vs file size, first frame, packet-timestamp scan, middle keyframe (all cheap)."""
    s = main_video_stream(container)
    # 1. an index that points past the end of the file means the file was cut short
    entries = s.index_entries
    if len(entries):
        last = entries[len(entries) - 1]
        if last.pos + max(last.size, 0) > row["size_bytes"]:
            raise _Verdict("failed", "truncated", f"index reaches byte {last.pos + last.size} of {row['size_bytes']}")

    # 2. decode the first frame; keep demuxing (no decode) to scan packet timestamps for a variable rate
    s.codec_context.thread_count = 1
    first, pts = None, []
    try:
        for packet in container.demux(s):
            if packet.pts is not None:
                pts.append(packet.pts)
            if first is None:
                for frame in s.codec_context.decode(packet):
                    first = frame
                    break
            if first is not None and len(pts) >= lim.vfr_scan_packets:
                break
        if first is None:
            for frame in s.codec_context.decode(None):  # flush: short files deliver frames at the end
                first = frame
                break
    except av.FFmpegError as e:
        raise _Verdict("failed", "corrupt-start", str(e), type(e).__name__) from None
    if first is None:
        raise _Verdict("failed", "no-frames", "no frame decodes")
    row["pix_fmt"] = first.format.name
    row["rotation"] = display_rotation(first, s)
    _set_display_size(row)
    _check_size(row, lim, rotation_known=True)
    row["is_vfr"] = _guess_vfr(row, pts)

    # 3. the keyframe at/before the middle must decode too
    if lim.check_middle and row["duration_s"] and row["num_frames"] and row["num_frames"] > 2:
        _check_middle(row, container, s)


def _check_middle(row: dict, container, s) -> None:
    tb = s.time_base
    target = int(((row["start_time_s"] + row["duration_s"] / 2) / tb)) if tb else 0
    try:
        container.seek(target, stream=s, backward=True, any_frame=False)
        s.codec_context.flush_buffers()
        got = None
        for packet in container.demux(s):
            for frame in s.codec_context.decode(packet):
                got = frame
                break
            if got is not None:
                break
        if got is None:
            for frame in s.codec_context.decode(None):
                got = frame
                break
    except av.FFmpegError as e:
        raise _Verdict("failed", "corrupt-middle", str(e), type(e).__name__) from None
    if got is None:
        raise _Verdict("failed", "truncated", "nothing decodes after seeking to the middle")


def _guess_vfr(row: dict, pts: list[int]) -> bool:
    """Variable frame rate: average and real rates disagree, or packet durations vary by more than 10 %."""
    avg, real = row["fps_avg"], row["fps_real"]
    if avg and real and abs(avg - real) / real > 0.005:
        return True
    # Packets arrive in decode order: the last few read may be reordered frames whose neighbours in
    # presentation order were not read yet, so drop the tail (B-frame reorder depth is at most 16).
    ordered = sorted(pts)
    if len(ordered) > 32:
        ordered = ordered[:-16]
    steps = [b - a for a, b in zip(ordered, ordered[1:]) if b > a]
    if len(steps) >= 3:
        steps.sort()
        median = steps[len(steps) // 2]
        return (steps[-1] - steps[0]) / median > 0.10
    return False


def _as_float(rate) -> float | None:
    if rate is None:
        return None
    value = float(rate)
    return value if value > 0 and math.isfinite(value) else None

