"""Frame preparation for captioning: N frames sampled uniformly from a clip's MP4, resized, JPEG-encoded.

This is its own CPU stage so that GPU captioner actors never decode video. A row's clip comes from its
``clip_mp4`` bytes or, when those are null, from ``clip_path`` relative to the dataset directory. The stage adds:

- ``caption_frames``: the JPEGs packed into one binary value (``pack_jpegs``/``unpack_jpegs``), or null;
- ``caption_frames_error``: null, or ``<ErrorClass>: message`` when the clip could not be read or decoded.

Sampling: with ``F`` decoded frames, frame ``floor((i + 0.5) * F / N)`` for ``i < N`` (centres of N equal spans),
``F`` from the stream header when it has one. When the header overstates ``F`` (the stream ends early), the
missing picks repeat the last decoded frame; when the clip has fewer than N frames, all of them are used.
Frames are in coded orientation with the stream's rotation flag applied (display orientation), scaled down so
that width x height <= ``max_pixels`` (never up), both sides even. Decoding is bounded by ``max_decode_frames``.
A bad clip becomes an error value in its row; the stage never raises for one and never drops or reorders rows.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np

from curate.media import present, read_clip_bytes  # noqa: F401 - present: caption.vlm imports it from here

_MAGIC = b"TJPG"


@dataclass(frozen=True)
class FrameConfig:
    """How frames are sampled and encoded for the captioner."""

    n_frames: int = 8
    max_pixels: int = 448 * 448
    jpeg_quality: int = 90
    max_decode_frames: int = 20_000  # a bound on the decode loop, whatever a header claims


# ----------------------------------------------------------------------------------------------------------------
# Packing several JPEGs into one binary cell
# ----------------------------------------------------------------------------------------------------------------


def pack_jpegs(jpegs: list[bytes]) -> bytes:
    """``TJPG`` + count + (length, bytes) per frame: one binary column value for a list of JPEGs."""
    parts = [_MAGIC, struct.pack("<I", len(jpegs))]
    for data in jpegs:
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def unpack_jpegs(blob: bytes) -> list[bytes]:
    """Inverse of ``pack_jpegs``; raises ``ValueError`` on a malformed blob."""
    if blob[:4] != _MAGIC:
        raise ValueError("not a packed JPEG list")
    (count,), pos, out = struct.unpack_from("<I", blob, 4), 8, []
    for _ in range(count):
        (size,) = struct.unpack_from("<I", blob, pos)
        out.append(bytes(blob[pos + 4:pos + 4 + size]))
        pos += 4 + size
    if pos != len(blob):
        raise ValueError("trailing or missing bytes in packed JPEG list")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Decoding and sampling
# ----------------------------------------------------------------------------------------------------------------


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(w, h) with the same aspect, w*h <= max_pixels, never larger than the input, both even and >= 2."""
    scale = min(1.0, math.sqrt(max_pixels / max(1, width * height)))
    w = max(2, int(width * scale) // 2 * 2)
    h = max(2, int(height * scale) // 2 * 2)
    return w, h


def sample_indices(total: int, n: int) -> list[int]:
    """Centres of ``n`` equal spans of ``total`` frames (all frames when ``total <= n``)."""
    if total <= n:
        return list(range(total))
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


def _rotate(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation in degrees (counter-clockwise positive, as FFmpeg's display matrix says)."""
    turns = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def sample_frames(data: bytes, n_frames: int, max_pixels: int, max_decode_frames: int = 20_000) -> list[np.ndarray]:
    """Decode ``data`` (a video file's bytes) and return up to ``n_frames`` RGB uint8 arrays ``(H, W, 3)``."""
    import av  # local import: only this stage decodes

    try:
        av.logging.set_level(None)  # FFmpeg's log bridge can deadlock under threads
    except Exception:  # noqa: BLE001 - older PyAV spells it differently; logging is not essential
        pass
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        header_total = int(stream.frames or 0)
        if header_total > 0:
            wanted = sample_indices(min(header_total, max_decode_frames), n_frames)
            picks, last, index = {}, None, -1
            for index, frame in enumerate(container.decode(stream)):
                if index > wanted[-1] or index >= max_decode_frames:
                    break
                if index in wanted:
                    picks[index] = _to_rgb(frame, max_pixels)
                last = frame
            if not picks and last is None:
                raise ValueError("no decodable video frames")
            if len(picks) < len(wanted):  # header overstated the count: repeat the last decoded frame
                tail = _to_rgb(last, max_pixels)
                return [picks.get(i, tail) for i in wanted]
            return [picks[i] for i in wanted]
        # No count in the header: keep every frame small, then pick.
        frames = []
        for frame in container.decode(stream):
            frames.append(_to_rgb(frame, max_pixels))
            if len(frames) >= max_decode_frames:
                break
        if not frames:
            raise ValueError("no decodable video frames")
        return [frames[i] for i in sample_indices(len(frames), n_frames)]


def _to_rgb(frame, max_pixels: int) -> np.ndarray:
    w, h = fit_size(frame.width, frame.height, max_pixels)
    rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()  # (h, w, 3) uint8
    return _rotate(rgb, int(getattr(frame, "rotation", 0) or 0))


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes):
    """A PIL RGB image from JPEG bytes."""
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def prepare_clip(data: bytes, cfg: FrameConfig) -> bytes:
    """Clip bytes -> packed JPEGs of ``cfg.n_frames`` uniformly sampled, resized frames."""
    frames = sample_frames(data, cfg.n_frames, cfg.max_pixels, cfg.max_decode_frames)
    return pack_jpegs([encode_jpeg(f, cfg.jpeg_quality) for f in frames])


# ----------------------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------------------


def make_frame_prep_fn(cfg: FrameConfig, dataset_dir: str | None,
                       needs_frames: Callable[[dict], np.ndarray] | None = None) -> Callable[[dict], dict]:
    """A ``batch -> batch`` function (numpy batch format) that adds ``caption_frames``/``caption_frames_error``.

    ``needs_frames(batch) -> bool array`` lets the pipeline skip rows whose captions are already cached, so an
    unchanged clip is never decoded twice.
    """

    def prep(batch: dict) -> dict:
        n = len(next(iter(batch.values())))
        todo = np.ones(n, bool) if needs_frames is None else np.asarray(needs_frames(batch), bool)
        frames = np.empty(n, dtype=object)
        errors = np.empty(n, dtype=object)
        for i in range(n):
            if not todo[i]:
                continue
            row = {k: batch[k][i] for k in ("clip_mp4", "clip_path") if k in batch}
            try:
                frames[i] = prepare_clip(read_clip_bytes(row, dataset_dir), cfg)
            except Exception as exc:  # noqa: BLE001 - a bad clip is a row error, never a stage failure
                errors[i] = f"{type(exc).__name__}: {str(exc)[:200]}"
        batch["caption_frames"] = frames
        batch["caption_frames_error"] = errors
        return batch

    return prep
