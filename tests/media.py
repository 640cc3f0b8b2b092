"""Render small test videos with PyAV, good ones and every kind of bad input the probe must survive.

All builders write into a folder the caller owns (pytest's ``tmp_path``) and return the path. Sizes are tiny so
the whole set renders in a few seconds on two cores.

Frames from ``pattern_frames`` carry two markers the tests read back:
- a white block in the TOP-LEFT corner (orientation: after a 90-degree clockwise display rotation it is in
  the top-right corner);
- a bottom band of 8 black/white cells spelling the frame index in binary (``read_index``), so a test can tell
  which frame it got.
"""

from __future__ import annotations

import fractions
import struct
from pathlib import Path
from typing import Sequence

import av
import numpy as np

INDEX_BITS = 8  # cells in the bottom band: frame index modulo 256, least significant bit on the left


def read_index(rgb: np.ndarray) -> int:
    """The frame index spelled by the bottom band of an (unrotated) ``pattern_frames`` frame, at any size."""
    h, w = rgb.shape[:2]
    band = rgb[h - max(h // 6, 1) + max(h // 24, 0) :, :].mean(axis=-1)  # skip the band's top edge
    value = 0
    for k in range(INDEX_BITS):
        cell = band[:, k * w // INDEX_BITS + w // 32 : (k + 1) * w // INDEX_BITS - w // 32]
        value |= int(np.median(cell) > 128) << k
    return value


def pattern_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    """``n`` RGB frames (height, width, 3) uint8: gradient, moving bar, top-left marker, index band."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([(xs * 255 // max(width - 1, 1)), (ys * 255 // max(height - 1, 1)), np.full_like(xs, 96)], -1)
    frames = []
    for i in range(n):
        img = base.astype(np.uint8).copy()
        bar = (i * max(width // 16, 1)) % width
        img[:, bar : bar + max(width // 20, 1)] = (255, 0, 0)
        img[: max(height // 4, 1), : max(width // 4, 1)] = 255  # top-left marker
        band = img[height - max(height // 6, 1) :]  # index band, binary, one cell per bit
        for k in range(INDEX_BITS):
            band[:, k * width // INDEX_BITS : (k + 1) * width // INDEX_BITS] = 255 if (i >> k) & 1 else 0
        frames.append(img)
    return frames


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: float,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts: Sequence[int] | None = None,
    time_base: fractions.Fraction | None = None,
    rotation: int = 0,
    codec_options: dict | None = None,
    container_options: dict | None = None,
    audio: bool = False,
    second_video: bool = False,
) -> Path:
    """Encode ``frames`` (RGB uint8) into ``path``; the container comes from the suffix.

    ``pts``/``time_base`` give explicit presentation timestamps (variable frame rate); ``rotation`` is the
    clockwise display rotation in degrees written as a display matrix; ``audio`` adds a short AAC track;
    ``second_video`` adds a second (smaller, mpeg4) video stream.
    """
    path = Path(path)
    h, w = frames[0].shape[:2]
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", options=container_options or {}) as out:
        vs = out.add_stream(codec, rate=rate, options=codec_options or {})
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if time_base is not None:
            vs.time_base = time_base
            vs.codec_context.time_base = time_base
        if rotation:
            vs.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        vs2 = None
        if second_video:
            vs2 = out.add_stream("mpeg4", rate=rate)
            vs2.width, vs2.height, vs2.pix_fmt = max(w // 2 // 2 * 2, 16), max(h // 2 // 2 * 2, 16), "yuv420p"
        aus = out.add_stream("aac", rate=16000) if audio else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[i]), time_base
            out.mux(vs.encode(frame))
            if vs2 is not None:
                small = frame.reformat(width=vs2.width, height=vs2.height)
                small.pts = None
                out.mux(vs2.encode(small))
        out.mux(vs.encode())
        if vs2 is not None:
            out.mux(vs2.encode())
        if aus is not None:
            _write_tone(out, aus, seconds=len(frames) / fps)
    return path


def _write_tone(out, stream, seconds: float) -> None:
    """Mux ``seconds`` of a 440 Hz mono tone into ``stream`` (AAC, 1024-sample frames)."""
    rate, hop = stream.rate, 1024
    t = np.arange(int(seconds * rate) + hop) / rate
    wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for k in range(0, len(wave) - hop, hop):
        af = av.AudioFrame.from_ndarray(wave[None, k : k + hop], format="fltp", layout="mono")
        af.sample_rate, af.pts = rate, k
        out.mux(stream.encode(af))
    out.mux(stream.encode())


# ---------------------------------------------------------------------------------------------------------
# good and odd inputs
# ---------------------------------------------------------------------------------------------------------


def make_good(folder: Path, name: str = "good.mp4", n: int = 30, size=(96, 64), fps: float = 15.0, **kw) -> Path:
    """A plain H.264 file: ``n`` frames of ``size`` (width, height)."""
    return write_video(Path(folder) / name, pattern_frames(n, *size), fps, **kw)


def make_tiny(folder: Path) -> Path:
    """16x16 frames (below the default min_side of 64)."""
    return write_video(Path(folder) / "tiny.mp4", pattern_frames(15, 16, 16), 15.0)


def make_one_frame(folder: Path) -> Path:
    """A single 96x64 frame (a still: too short for the default min_duration)."""
    return write_video(Path(folder) / "one_frame.mp4", pattern_frames(1, 96, 64), 15.0)


def make_vfr(folder: Path) -> tuple[Path, list[float]]:
    """Variable frame rate: a 30 fps timeline with every 3rd frame dropped plus PTS jitter.

    Returns the path and the expected presentation times (seconds) of each decoded frame.
    """
    tb = fractions.Fraction(1, 3000)
    ticks = [k * 100 + (7 if k % 5 == 1 else 0) for k in range(45) if k % 3 != 2]
    path = write_video(
        Path(folder) / "vfr.mp4", pattern_frames(len(ticks), 96, 64), 20.0, pts=ticks, time_base=tb,
        codec_options={"bf": "0"},
    )
    return path, [t * float(tb) for t in ticks]


def make_rotated(folder: Path, rotation: int = 90) -> Path:
    """96x64 coded frames with a display matrix asking for a clockwise ``rotation``."""
    return write_video(Path(folder) / f"rot{rotation}.mp4", pattern_frames(20, 96, 64), 15.0, rotation=rotation)


def make_odd_size(folder: Path) -> Path:
    """321x241 frames (odd both ways), H.264 4:4:4 so no chroma rounding is needed."""
    return write_video(Path(folder) / "odd.mp4", pattern_frames(20, 321, 241), 15.0, pix_fmt="yuv444p")


def make_two_video_streams(folder: Path) -> Path:
    """Two video streams (H.264 96x64 and MPEG-4 48x32) in one MKV."""
    return write_video(Path(folder) / "two_streams.mkv", pattern_frames(20, 96, 64), 15.0, second_video=True)


def make_with_audio(folder: Path) -> Path:
    """A good H.264 file with an AAC track."""
    return write_video(Path(folder) / "with_audio.mp4", pattern_frames(20, 96, 64), 15.0, audio=True)


def make_unsupported_codec(folder: Path) -> Path:
    """FFV1 in MKV: decodable, but not in ``ProbeLimits().allowed_codecs``."""
    return write_video(Path(folder) / "ffv1.mkv", pattern_frames(10, 96, 64), 15.0, codec="ffv1")


# ---------------------------------------------------------------------------------------------------------
# broken inputs
# ---------------------------------------------------------------------------------------------------------


def make_empty(folder: Path) -> Path:
    """A 0-byte ``.mp4``."""
    path = Path(folder) / "empty.mp4"
    path.write_bytes(b"")
    return path


def make_text_as_mp4(folder: Path) -> Path:
    """A text file named ``.mp4``."""
    path = Path(folder) / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    return path


def make_png_as_mp4(folder: Path) -> Path:
    """A PNG still image named ``.mp4`` (FFmpeg opens it as a one-frame image stream)."""
    path = Path(folder) / "picture.mp4"
    frame = av.VideoFrame.from_ndarray(pattern_frames(1, 96, 64)[0], format="rgb24")
    frame.to_image().save(path, format="PNG")
    return path


def make_audio_only(folder: Path, name: str = "audio_only.m4a") -> Path:
    """An AAC-only MP4/M4A (no video stream)."""
    path = Path(folder) / name
    with av.open(str(path), "w", format="mp4") as out:
        _write_tone(out, out.add_stream("aac", rate=16000), seconds=1.0)
    return path


def make_truncated(folder: Path, faststart: bool = False, fraction: float = 0.4) -> Path:
    """The first ``fraction`` of a valid MP4's bytes.

    Without ``faststart`` the index (moov) is at the end, so it is lost and the file cannot be opened. With
    ``faststart`` the index survives and still lists samples beyond the end of the file.
    """
    src = make_good(folder, name=f"src_trunc_{int(faststart)}.mp4", n=60,
                    container_options={"movflags": "faststart"} if faststart else None)
    data = src.read_bytes()
    src.unlink()  # leave only the output in the folder (tests may treat the folder as an input list)
    path = Path(folder) / f"truncated{'_faststart' if faststart else ''}.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def make_corrupt_middle(folder: Path) -> Path:
    """A valid H.264 MP4 whose bytes 35 %..70 % are overwritten with random garbage (header intact)."""
    src = make_good(folder, name="src_corrupt.mp4", n=60, size=(128, 96),
                    codec_options={"g": "10"}, container_options={"movflags": "faststart"})
    data = bytearray(src.read_bytes())
    src.unlink()
    lo, hi = int(len(data) * 0.35), int(len(data) * 0.70)
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    path = Path(folder) / "corrupt_middle.mp4"
    path.write_bytes(bytes(data))
    return path


def make_huge_dimensions(folder: Path, width: int = 16000, height: int = 12000, name: str = "huge.avi") -> Path:
    """An AVI whose headers claim ``width`` x ``height`` while it holds one tiny 64x64 MJPEG frame.

    16000x12000 (192 MP) is far over any sane limit yet under FFmpeg's own hard ceiling
    ((w + 128) * (h + 128) < 2^31 / 8); a 20000x20000 claim is past that ceiling, so FFmpeg itself
    reports the size as 0x0 (probe: ``unknown-size``).

    Built by encoding the tiny frame, then patching the three places that state the size: the AVI main
    header (avih dwWidth/dwHeight), the stream format (strf BITMAPINFOHEADER biWidth/biHeight) and the JPEG
    start-of-frame marker (SOF0 height/width, 16 bit). Nothing large is ever encoded or written.
    """
    src = write_video(Path(folder) / "src_huge.avi", pattern_frames(1, 64, 64), 15.0, codec="mjpeg",
                      pix_fmt="yuvj420p")
    data = bytearray(src.read_bytes())
    avih = data.index(b"avih") + 8  # MainAVIHeader: 8 dwords, then dwWidth, dwHeight
    struct.pack_into("<II", data, avih + 32, width, height)
    strf = data.index(b"strf") + 8  # BITMAPINFOHEADER: biSize, biWidth, biHeight
    struct.pack_into("<ii", data, strf + 4, width, height)
    sof = data.index(b"\xff\xc0")  # SOF0: marker, length(2), precision(1), height(2), width(2)
    struct.pack_into(">HH", data, sof + 5, height, width)
    path = Path(folder) / name
    path.write_bytes(bytes(data))
    src.unlink()
    return path


# Names a careless shell or path join would mishandle.
HOSTILE_NAMES = (
    "line\nbreak.mp4",
    "quote'double\"quote.mp4",
    "-starts-with-dash.mp4",
    "ünïcödé 视频 🎬.mp4",
    "..dots..mp4",
    "$(touch pwned) `x`; rm -rf.mp4",
    "http:example.com.mp4",  # FFmpeg would read "http:" as a protocol if handed a relative name
)


def make_hostile_names(folder: Path) -> list[Path]:
    """One small valid video under each of ``HOSTILE_NAMES``."""
    src = make_good(folder, name="hostile_src.mp4", n=15)
    data = src.read_bytes()
    src.unlink()
    paths = []
    for name in HOSTILE_NAMES:
        p = Path(folder) / name
        p.write_bytes(data)
        paths.append(p)
    return paths
