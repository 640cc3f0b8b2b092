"""Clip media I/O (``curate/media.py``): which media a clip row holds, decode / resize / encode, the user's files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curate import media, synth
from curate.media import (
    ClipPathOutside, clip_media, contact_sheet, decode_frames, encode_mp4, read_clip_bytes, read_media, resize_crop,
    save_media, table_media,
)


def frames(n: int = 9) -> np.ndarray:
    return synth.render_clip(synth.Shot("star", "yellow", "up", "noise", "blue", n), (48, 32), seed=2)


def test_clip_media_prefers_bytes_then_a_path_inside_the_dataset(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.mp4").write_bytes(b"file bytes")
    assert clip_media({"clip_mp4": b"inline", "clip_path": "media/a.mp4"}, tmp_path) == b"inline"
    # null bytes (None, or NaN where Ray turned an all-null column into floats, or empty) fall back to the path
    for empty in (None, float("nan"), b""):
        assert clip_media({"clip_mp4": empty, "clip_path": "media/a.mp4"}, tmp_path) == tmp_path / "media" / "a.mp4"
    assert read_clip_bytes({"clip_path": "media/a.mp4"}, tmp_path) == b"file bytes"
    with pytest.raises(FileNotFoundError, match="neither"):
        clip_media({"clip_mp4": None, "clip_path": None}, tmp_path)
    with pytest.raises(ClipPathOutside, match="outside the dataset"):
        clip_media({"clip_path": "../secret.mp4"}, tmp_path)
    assert issubclass(ClipPathOutside, ValueError) and issubclass(ClipPathOutside, PermissionError)


def test_table_media_reads_each_row(tmp_path):
    t = pa.table({"clip_id": ["a", "b"], "clip_mp4": [b"x", None], "clip_path": [None, "b.mp4"]})
    assert table_media(t, tmp_path) == [b"x", tmp_path.resolve() / "b.mp4"]
    assert table_media(t.select(["clip_mp4"]).slice(0, 1), tmp_path) == [b"x"]


def test_decode_picks_the_asked_frames_and_pads_a_short_clip():
    clip = frames(9)
    blob = encode_mp4(clip, fps=8)
    got = decode_frames(blob, 2, 3, 2)
    assert got.shape == (3, 32, 48, 3) and np.abs(got.astype(int) - clip[2:8:2]).mean() < 8
    padded = decode_frames(blob, 6, 5, 1)  # frames 6..10 of a 9-frame clip: the last one repeats
    assert padded.shape[0] == 5 and np.array_equal(padded[3], padded[2]) and np.array_equal(padded[4], padded[2])


def test_resize_crop_covers_then_crops_to_minus_one_one():
    x = np.zeros((2, 20, 40, 3), np.uint8)
    x[:, :, 20:] = 255  # right half white
    out = resize_crop(x, (10, 10), 1.0, 0.5, 0.5)  # cover: 10x20, then the centre 10x10
    assert out.shape == (3, 2, 10, 10) and float(out.min()) == -1.0 and float(out.max()) == 1.0
    assert float(out[:, :, :, 0].mean()) == -1.0 and float(out[:, :, :, -1].mean()) == 1.0


def test_opencv_fallback_round_trips_when_pyav_is_missing(monkeypatch):
    clip = frames(9)
    monkeypatch.setattr(media, "av", None)
    blob = media.encode_mp4(clip)
    assert blob[4:8] == b"ftyp"  # an MP4 container
    back = media.decode_frames(blob, 0, 9, 1)
    assert back.shape == clip.shape
    assert np.abs(back.astype(int) - clip).mean() < 8  # lossy, but the same pictures
    assert np.abs(media.decode_frames(blob, 2, 3, 2).astype(int) - clip[2:8:2]).mean() < 8


def test_users_files_round_trip_and_a_non_video_is_one_error(tmp_path):
    clip = frames(5)
    assert save_media(clip, tmp_path / "v", fps=8).name == "v.mp4"
    assert read_media(tmp_path / "v.mp4").shape == (5, 32, 48, 3)
    assert read_media(tmp_path / "v.mp4", max_frames=2).shape[0] == 2
    assert save_media(clip[:1], tmp_path / "i", fps=8).name == "i.png"
    assert np.array_equal(read_media(tmp_path / "i.png")[0], clip[0])  # PNG is lossless
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="not a readable video"):
        read_media(tmp_path / "notes.mp4")
    with pytest.raises(ValueError, match="no such file"):
        read_media(tmp_path / "missing.mp4")
    sheet = contact_sheet(clip, columns=2, rows=2)
    assert sheet.shape == (2 * 32, 2 * 48, 3)
