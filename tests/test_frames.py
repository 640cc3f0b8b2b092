"""iter_frames(): counts, PTS-based times, display orientation, and the two backends agreeing."""

from __future__ import annotations

import numpy as np
import pytest

import media
from curate.frames import DecodeConfig, DecodeError, analysis_size, iter_frames, read_frames_at

BACKENDS = ("pyav", "decord")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames_media")
    vfr, vfr_times = media.make_vfr(d)
    return {
        "good": media.make_good(d, n=30, size=(96, 64), fps=15.0),
        "vfr": vfr,
        "vfr_times": vfr_times,
        "rot90": media.make_rotated(d, 90),
        "rot180": media.make_rotated(d, 180),
        "rot270": media.make_rotated(d, 270),
        "odd": media.make_odd_size(d),
        "two_streams": media.make_two_video_streams(d),
        "corrupt_middle": media.make_corrupt_middle(d),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_good_file_every_frame_in_order(videos, backend):
    frames = list(iter_frames(videos["good"], DecodeConfig(backend=backend)))
    assert [f.index for f in frames] == list(range(30))
    assert [f.pts_s for f in frames] == pytest.approx([i / 15.0 for i in range(30)], abs=1e-3)
    for f in frames:
        assert f.rgb.shape == (64, 96, 3) and f.rgb.dtype == np.uint8  # smaller than 160: never upscaled
        assert media.read_index(f.rgb) == f.index  # the pixels are that frame's


@pytest.mark.parametrize("backend", BACKENDS)
def test_vfr_times_come_from_pts(videos, backend):
    frames = list(iter_frames(videos["vfr"], DecodeConfig(backend=backend)))
    assert len(frames) == len(videos["vfr_times"])
    assert [f.pts_s for f in frames] == pytest.approx(videos["vfr_times"], abs=1e-3)
    assert all(b.pts_s > a.pts_s for a, b in zip(frames, frames[1:]))


# Where the top-left marker of the coded frame lands after a clockwise display rotation.
MARKER_CORNER = {90: "top-right", 180: "bottom-right", 270: "bottom-left"}


def _bright_corner(rgb: np.ndarray) -> str:
    h, w = rgb.shape[:2]
    corners = {
        "top-left": rgb[: h // 8, : w // 8], "top-right": rgb[: h // 8, -w // 8 :],
        "bottom-left": rgb[-h // 8 :, : w // 8], "bottom-right": rgb[-h // 8 :, -w // 8 :],
    }  # fmt: skip
    return max(corners, key=lambda k: (corners[k].min(axis=-1) > 240).mean())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_applied_display_orientation(videos, backend, rotation):
    frames = list(iter_frames(videos[f"rot{rotation}"], DecodeConfig(backend=backend)))
    assert len(frames) == 20
    expected_shape = (64, 96, 3) if rotation == 180 else (96, 64, 3)
    assert frames[0].rgb.shape == expected_shape
    assert _bright_corner(frames[0].rgb) == MARKER_CORNER[rotation]


def test_rotation_given_by_caller_matches_detected(videos):
    auto = next(iter_frames(videos["rot90"], DecodeConfig(backend="pyav")))
    given = next(iter_frames(videos["rot90"], DecodeConfig(backend="pyav"), rotation=90))
    assert np.array_equal(auto.rgb, given.rgb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_size_and_second_stream(videos, backend):
    odd = list(iter_frames(videos["odd"], DecodeConfig(backend=backend)))
    assert len(odd) == 20 and odd[0].rgb.shape == (160, 213, 3)  # 321x241 -> short side 160
    two = list(iter_frames(videos["two_streams"], DecodeConfig(backend=backend)))
    assert len(two) == 20 and two[0].rgb.shape == (64, 96, 3)  # the first (96x64) stream


def test_inputs_probe_rejects_still_decode(tmp_path):
    """Tiny and one-frame files are policy rejections at probe, but decoding them must still be correct."""
    tiny = list(iter_frames(media.make_tiny(tmp_path), DecodeConfig()))
    assert len(tiny) == 15 and tiny[0].rgb.shape == (16, 16, 3)
    one = list(iter_frames(media.make_one_frame(tmp_path), DecodeConfig()))
    assert len(one) == 1 and one[0].pts_s == 0.0 and media.read_index(one[0].rgb) == 0


def test_truncated_file_yields_fewer_frames_or_decode_error(tmp_path):
    path = media.make_truncated(tmp_path, faststart=True)  # 60 frames listed, 40 % of the bytes present
    frames = []
    try:
        for f in iter_frames(path, DecodeConfig()):
            frames.append(f)
    except DecodeError:
        pass
    assert len(frames) < 60
    assert [f.index for f in frames] == list(range(len(frames)))


def test_max_frames_and_small_analysis_size(videos):
    frames = list(iter_frames(videos["odd"], DecodeConfig(max_frames=5, short_side=32)))
    assert len(frames) == 5 and frames[0].rgb.shape == (32, 43, 3)


def test_analysis_size_rules():
    assert analysis_size(1280, 720, 1.0, 0, 160) == (284, 160)
    assert analysis_size(1280, 544, 1.0, 90, 160) == (160, 376)
    assert analysis_size(704, 576, 16 / 11, 0, 160) == (284, 160)  # non-square pixels made square
    assert analysis_size(100, 80, 1.0, 0, 160) == (100, 80)


def test_read_frames_at(videos):
    by_index = read_frames_at(videos["good"], [7, 2, 29])
    assert [f.index for f in by_index] == [7, 2, 29]
    assert [media.read_index(f.rgb) for f in by_index] == [7, 2, 29]
    # times: the frame on screen at t (last frame with pts <= t)
    by_time = read_frames_at(videos["good"], [0.0, 0.5, 0.52, 10.0])
    assert [f.index for f in by_time] == [0, 7, 7, 29]
    with pytest.raises(IndexError):
        read_frames_at(videos["good"], [30])


def test_corrupt_middle_raises_decode_error(videos):
    with pytest.raises(DecodeError, match="decoding failed at frame"):
        for _ in iter_frames(videos["corrupt_middle"], DecodeConfig(backend="pyav")):
            pass


def test_unknown_backend_is_a_programmer_error(videos):
    with pytest.raises(ValueError):
        iter_frames(videos["good"], DecodeConfig(backend="opencv"))


# ---------------------------------------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------------------------------------


def test_real_frame_counts_and_times(shared_data, ground_truth):
    """Every ground-truth file: decoded count, t0 = 0, strictly increasing PTS ending near the duration."""
    cfg = DecodeConfig(backend="pyav", short_side=32)  # tiny analysis size: this test is about the decode
    for rel, entry in ground_truth.items():
        if rel.startswith("_"):
            continue
        truth = entry["file"]
        pts = [f.pts_s for f in iter_frames(shared_data / rel, cfg)]
        assert len(pts) == truth["decoded_frames"], rel
        assert pts[0] == 0.0, rel
        assert all(b > a for a, b in zip(pts, pts[1:])), rel
        assert pts[-1] < truth["duration_s"] <= pts[-1] + 0.2, rel


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_vfr_index_60_at_3_754(shared_data, backend):
    frames = list(iter_frames(shared_data / "pyscenedetect/goldeneye-vfr-drop3.mp4",
                              DecodeConfig(backend=backend, short_side=48)))
    assert len(frames) == 160
    assert frames[60].pts_s == pytest.approx(3.754, abs=1e-3)
    # 8.759 s is frame 210 of the 23.976 fps timeline; with every 3rd frame dropped that is decoded index 140
    # (data/README.md says 141: that frame is at 8.800 s)
    assert frames[140].pts_s == pytest.approx(8.759, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_delayed_start_first_frame_at_zero(shared_data, backend):
    frames = list(iter_frames(shared_data / "pyscenedetect/delayed_start.mp4", DecodeConfig(backend=backend)))
    assert len(frames) == 24 and frames[0].pts_s == 0.0
    assert frames[1].pts_s == pytest.approx(0.04, abs=1e-3)


def test_real_rotated_portrait_same_for_both_backends(shared_data):
    path = shared_data / "pyscenedetect/issue-134-rotate.mp4"
    cfg = DecodeConfig(max_frames=40)
    a = list(iter_frames(path, DecodeConfig(backend="pyav", max_frames=40)))
    b = list(iter_frames(path, DecodeConfig(backend="decord", max_frames=40)))
    assert len(a) == len(b) == cfg.max_frames
    assert a[0].rgb.shape == b[0].rgb.shape == (376, 160, 3)  # 1280x544 flagged 90 degrees: portrait
    for fa, fb in zip(a[::8], b[::8]):
        assert fa.pts_s == pytest.approx(fb.pts_s, abs=1e-6)
        err = np.abs(fa.rgb.astype(np.int16) - fb.rgb.astype(np.int16)).mean()
        assert err < 4.0  # same pixels up to the two resamplers; a wrong rotation is ~40+
        wrong = np.abs(np.rot90(fa.rgb, 2).astype(np.int16) - fb.rgb.astype(np.int16)).mean()
        assert wrong > 4 * max(err, 1.0)


def test_real_non_square_pixels_made_square(shared_data):
    f = next(iter_frames(shared_data / "pyscenedetect/issue-195-aspect-ratio.mp4", DecodeConfig()))
    assert f.rgb.shape == (160, 284, 3)  # 704x576 with 16:11 pixels displays as 1024x576


def test_iter_thumbs_full_range_yuv_from_the_planes(tmp_path):
    """Thumbnails of a limited-range 4:2:0 video: the area mean of each plane, luma 16..235 and chroma 16..240
    stretched to 0..255 (black 0, white 255, grey chroma 128)."""
    import av

    from curate.frames import iter_thumbs

    path = str(tmp_path / "levels.mp4")
    with av.open(path, "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 128, 72, "yuv420p"
        s.options = {"qp": "0"}
        for level in (0, 255, 128):
            frame = av.VideoFrame.from_ndarray(np.full((72, 128, 3), level, np.uint8), format="rgb24")
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    thumbs = [t for _, _, t in iter_thumbs(path, size=(32, 18))]
    assert len(thumbs) == 3 and all(t.shape == (18, 32, 3) and t.dtype == np.float32 for t in thumbs)
    black, white, grey = (t.mean(axis=(0, 1)) for t in thumbs)
    np.testing.assert_allclose(black, [0.0, 128.0, 128.0], atol=2.5)
    np.testing.assert_allclose(white, [255.0, 128.0, 128.0], atol=2.5)
    np.testing.assert_allclose(grey, [128.0, 128.0, 128.0], atol=2.5)
    with av.open(path) as c:  # every value is (plane mean - offset) * gain in float32, per channel
        frame = next(iter(c.decode(video=0)))
        y = frame.to_ndarray()[:72]  # yuv420p as one (H * 3 / 2, W) array: the luma plane first
    want = (np.float32(_area(y)) - np.float32(16.0)) * np.float32(255.0 / 219.0)
    np.testing.assert_allclose(thumbs[0][..., 0], want, atol=1e-4)


def _area(plane):
    import cv2

    return cv2.resize(plane, (32, 18), interpolation=cv2.INTER_AREA).astype(np.float32)


@pytest.mark.parametrize("w,h", [(640, 360), (1280, 720), (1920, 1080), (642, 362), (853, 480), (320, 180)])
def test_plane_thumb_samples_every_step_th_pixel_at_any_size(w, h):
    """The thumbnail of a plane is the area mean of its every ``step``-th pixel, whether the sampling takes
    OpenCV's nearest-neighbour path (``step`` divides both sides) or the strided view (it does not)."""
    import av
    import cv2

    from curate.frames import _plane_thumb

    rng = np.random.default_rng(w * h)
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    plane = av.VideoFrame.from_ndarray(grey, format="gray").planes[0]
    step = max(1, min(w // 128, h // 72))
    want = cv2.resize(np.ascontiguousarray(grey[::step, ::step]), (32, 18), interpolation=cv2.INTER_AREA)
    assert np.array_equal(_plane_thumb(plane, w, h, (32, 18)), want)
