"""Clip media I/O: which bytes or file a clip row holds, decoding, resizing / cropping, encoding, writing.

Every stage that reads a clip's video goes through here. A clip row (a dict, or a row of a Parquet shard) has
``clip_mp4`` (the MP4 bytes, null when the build wrote files) or ``clip_path`` (the file, relative to the
dataset folder); :func:`clip_media` chooses, refusing a ``clip_path`` that leaves the folder (a path in a shard
is data, not trusted). :func:`decode_frames` decodes bytes or a file with PyAV (OpenCV's FFmpeg backend where
PyAV is missing), :func:`resize_crop` turns uint8 frames into the models' float ``(3, T, H, W)`` in [-1, 1],
:func:`encode_mp4` writes H.264. :func:`read_media` / :func:`save_media` / :func:`contact_sheet` are the user's
files (an image or a video in, MP4 / PNG out). No Ray; torch is imported only by :func:`resize_crop`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

try:
    import av
except ImportError:  # a machine without PyAV (the lent GPU image): OpenCV's FFmpeg backend decodes and encodes
    av = None

MEDIA_COLUMNS = ("clip_mp4", "clip_path")  # where a clip row keeps its video
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_FRAMES = 1025  # the most frames read_media returns by default


class ClipPathOutside(PermissionError, ValueError):
    """A ``clip_path`` that resolves outside the dataset folder."""


# ----------------------------------------------------------------------------------------------------------
# Which media a clip row holds
# ----------------------------------------------------------------------------------------------------------


def present(value):
    """``value`` or None when it is null: Ray's numpy batches turn an all-null column into float NaNs."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value


def clip_media(row: dict, root: str | Path | None) -> bytes | Path:
    """The clip's MP4: its ``clip_mp4`` bytes when present, else the file ``root/clip_path``.

    Raises ``FileNotFoundError`` when the row has neither and :class:`ClipPathOutside` when the path leaves
    ``root``. The file itself is not opened here."""
    data = present(row.get("clip_mp4"))
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > 0:
        return bytes(data)
    rel = present(row.get("clip_path"))
    if not isinstance(rel, str) or not rel or root is None:
        raise FileNotFoundError("row has neither clip_mp4 bytes nor a clip_path")
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise ClipPathOutside(f"clip_path {rel!r} points outside the dataset {root}")
    return path


def read_clip_bytes(row: dict, root: str | Path | None) -> bytes:
    """The clip's MP4 bytes (:func:`clip_media`, reading the file when the row holds a path)."""
    media = clip_media(row, root)
    return media if isinstance(media, bytes) else media.read_bytes()


def media_columns(names) -> list[str]:
    """The media columns among a shard's column ``names`` (read these, not the whole row)."""
    return [c for c in MEDIA_COLUMNS if c in names]


def table_media(table, root: str | Path) -> list[bytes | Path]:
    """:func:`clip_media` of every row of a pyarrow table holding (some of) the media columns."""
    cols = {c: table.column(c).to_pylist() for c in media_columns(table.column_names)}
    return [clip_media({c: v[i] for c, v in cols.items()}, root) for i in range(table.num_rows)]


# ----------------------------------------------------------------------------------------------------------
# Decode, resize / crop, encode
# ----------------------------------------------------------------------------------------------------------


def decode_frames(data: bytes | str | Path, start: int, count: int, stride: int) -> np.ndarray:
    """Frames ``start, start + stride, ...`` (``count`` of them) as uint8 ``(count, H, W, 3)``.

    Decodes forward from the beginning (clips are short); a clip shorter than its metadata says repeats
    its last frame, so the output always has ``count`` frames.
    """
    wanted = set(range(start, start + stride * count, stride))
    last = start + stride * (count - 1)
    out: list[np.ndarray] = []
    if av is None:
        out = _decode_cv2(data, wanted, last)
    else:
        src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        with av.open(src) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    out.append(frame.to_ndarray(format="rgb24"))
                if i >= last:
                    break
    if not out:
        raise ValueError("clip decoded to no frames")
    while len(out) < count:
        out.append(out[-1])
    return np.stack(out)


def _decode_cv2(data: bytes | str | Path, wanted: set[int], last: int) -> list[np.ndarray]:
    """``decode_frames`` without PyAV: OpenCV reads a file, so bytes go through a temporary one."""
    import os
    import tempfile

    import cv2

    tmp = None
    if isinstance(data, bytes):
        fd, tmp = tempfile.mkstemp(suffix=".mp4")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    try:
        cap, out = cv2.VideoCapture(tmp or str(data)), []
        for i in range(last + 1):
            ok, frame = cap.read()
            if not ok:
                break
            if i in wanted:
                out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        cap.release()
        return out
    finally:
        if tmp:
            os.unlink(tmp)


def _encode_cv2(frames: np.ndarray, fps: int) -> bytes:
    """``encode_mp4`` without PyAV: MPEG-4 part 2 at OpenCV's highest quality (its builds carry no H.264 encoder)."""
    import os
    import tempfile

    import cv2

    fd, tmp = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        h, w = frames.shape[1:3]
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def resize_crop(frames: np.ndarray, size: tuple[int, int], scale: float, fy: float, fx: float,
                device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (T, h, w, 3) -> float (3, T, H, W) in [-1, 1]: cover-resize times ``scale``, then crop; on ``device``
    (the frames travel as uint8, a quarter of the float bytes)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float()  # (T, 3, h, w)
    h, w = x.shape[-2:]
    H, W = size
    s = max(H / h, W / w) * scale
    nh, nw = max(H, math.ceil(h * s)), max(W, math.ceil(w * s))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    y0, x0 = int(fy * (nh - H + 1)), int(fx * (nw - W + 1))
    x = x[:, :, y0 : y0 + H, x0 : x0 + W]  # (T, 3, H, W)
    return (x / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()  # (3, T, H, W)


def encode_mp4(frames: np.ndarray, fps: int = 24) -> bytes:
    """H.264 MP4 bytes of uint8 (T, H, W, 3) frames (H, W even); MPEG-4 part 2 where PyAV is missing."""
    if av is None:
        return _encode_cv2(frames, fps)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()



# ----------------------------------------------------------------------------------------------------------
# The user's files
# ----------------------------------------------------------------------------------------------------------


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_media(path: str | Path, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """uint8 (T, H, W, 3) of an image or a video file (at most ``max_frames`` frames)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    if is_image_file(path):
        from PIL import Image

        return np.array(Image.open(path).convert("RGB"))[None]  # a writable copy
    out = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) >= max_frames:
                    break
    except (av.FFmpegError, IndexError) as exc:  # not a video, or one without a video stream
        raise ValueError(f"{path} is not a readable video ({type(exc).__name__}: {exc})") from None
    if not out:
        raise ValueError(f"{path} has no decodable video frames")
    return np.stack(out)


def save_media(frames: np.ndarray, stem: str | Path, fps: int) -> Path:
    """``stem.png`` for one frame, else ``stem.mp4`` (H.264); returns the path written."""
    from PIL import Image

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if frames.shape[0] == 1:
        path = stem.with_suffix(".png")
        Image.fromarray(frames[0]).save(path)
        return path
    path = stem.with_suffix(".mp4")
    path.write_bytes(encode_mp4(frames, fps=int(fps)))
    return path


def contact_sheet(frames: np.ndarray, columns: int = 4, rows: int = 1) -> np.ndarray:
    """uint8 grid (rows*H, columns*W, 3) of up to rows*columns evenly spaced frames of (T, H, W, 3)."""
    t = frames.shape[0]
    n = min(t, rows * columns)
    idx = np.linspace(0, t - 1, n).round().astype(int)
    h, w = frames.shape[1:3]
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    for k, i in enumerate(idx):
        r, c = divmod(k, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frames[i]
    return sheet[: (-(-n // columns)) * h]
