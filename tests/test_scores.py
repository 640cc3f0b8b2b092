"""CPU scores on constructed frames: sharpness, exposure, motion (translation, static, shake) and the batch UDF."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curate.framepack import pack_frames, unpack_frames
from curate.scores import (
    SCORE_COLUMNS,
    BasicScorer,
    ScoreConfig,
    score_exposure,
    score_motion,
    score_sharpness,
    to_analysis_size,
)

FPS = 30.0
STARTS = (0, 20, 40, 60, 80, 100)  # first frame of each sampled pair


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """A large smooth random RGB texture to cut moving windows from."""
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 2.0)


def window(tex: np.ndarray, x: float, y: float, h: int = 160, w: int = 284) -> np.ndarray:
    """The (h, w) view of ``tex`` whose top-left corner sits at (100 + x, 100 + y), sub-pixel accurate."""
    m = np.float32([[1, 0, -(100 + x)], [0, 1, -(100 + y)]])
    return cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR)


def camera(tex: np.ndarray, path, frames_idx) -> tuple[np.ndarray, np.ndarray]:
    """Frames and PTS (s) of a camera whose offset at source frame t is ``path(t) -> (x, y)``."""
    frames = np.stack([window(tex, *path(t)) for t in frames_idx])
    return frames, np.asarray(frames_idx, dtype=np.float64) / FPS


def pairs(starts=STARTS, gap: int = 1) -> list[int]:
    return [t for s in starts for t in (s, s + gap)]


# ---------------------------------------------------------------------------------------------- sharpness/exposure


def test_blur_lowers_sharpness(texture):
    sharp = np.stack([window(texture, 0, 0), window(texture, 30, 10)])
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in sharp])
    s, b = score_sharpness(sharp), score_sharpness(blurred)
    assert s["sharpness"] > 2 * b["sharpness"] > 0
    assert s["sharpness_model"] == "laplacian-var@160"


def test_flat_frame_has_zero_sharpness():
    assert score_sharpness(np.full((2, 160, 200, 3), 90, np.uint8))["sharpness"] == pytest.approx(0.0)


def test_black_frames_and_exposure_values():
    black = np.zeros((4, 160, 200, 3), np.uint8)
    e = score_exposure(black)
    assert e["black_share"] == 1.0 and e["luma_mean"] == 0.0 and e["luma_std"] == 0.0
    mixed = np.concatenate([black[:1], np.full((3, 160, 200, 3), 200, np.uint8)])
    e = score_exposure(mixed)
    assert e["black_share"] == pytest.approx(0.25)
    assert e["luma_mean"] == pytest.approx(150.0, abs=0.5)
    assert e["luma_std"] == pytest.approx(np.std([0, 200, 200, 200]), abs=0.5)


def test_resizes_to_analysis_size():
    frames = np.zeros((2, 320, 480, 3), np.uint8)
    assert to_analysis_size(frames, 160).shape == (2, 160, 240, 3)
    # the same content at twice the size scores about the same once resized (scores compare across sources)
    small = np.zeros((1, 160, 240, 3), np.uint8)
    small[0, :, 120:] = 255
    big = cv2.resize(small[0], (480, 320), interpolation=cv2.INTER_NEAREST)[None]
    assert score_exposure(big)["luma_mean"] == pytest.approx(score_exposure(small)["luma_mean"], abs=1.0)


# ---------------------------------------------------------------------------------------------- motion


@pytest.mark.parametrize("speed", [1.0, 3.0])
def test_translation_speed_is_measured(texture, speed):
    frames, pts = camera(texture, lambda t: (speed * t, 0.0), pairs())
    m = score_motion(frames, pts, FPS)
    assert m["motion_model"] == "farneback@160/pairs"
    assert m["motion_mean"] == pytest.approx(speed, rel=0.1)
    assert m["motion_p90"] == pytest.approx(speed, rel=0.1)
    assert not m["motion_static"] and not m["motion_jitter"]


def test_flow_is_normalised_by_the_sample_gap(texture):
    """Pairs two source frames apart (sparse mode): 6 px between samples is 3 px per frame."""
    frames, pts = camera(texture, lambda t: (3.0 * t, 0.0), pairs(gap=2))
    m = score_motion(frames, pts, FPS)
    assert m["motion_model"].endswith("/sparse")
    assert m["motion_mean"] == pytest.approx(3.0, rel=0.1)


def test_static_scene(texture):
    frames, pts = camera(texture, lambda t: (0.0, 0.0), pairs())
    m = score_motion(frames, pts, FPS)
    assert m["motion_static"] and not m["motion_jitter"]
    assert m["motion_mean"] < 0.05


def test_small_moving_object_is_not_static(texture):
    frames, pts = camera(texture, lambda t: (0.0, 0.0), pairs())
    frames = frames.copy()
    for k, t in enumerate(pairs()):  # a 40x40 patch sliding 1 px/frame across a still background
        x = 40 + t
        frames[k, 60:100, x : x + 40] = window(texture, 200, 200, 40, 40)
    m = score_motion(frames, pts, FPS)
    assert not m["motion_static"] and not m["motion_jitter"]


def test_shake_flags_jitter_but_smooth_pans_do_not(texture):
    rng = np.random.default_rng(1)
    shake = {t: rng.normal(0.0, 3.0, 2) for t in range(200)}  # hand-held: random offset per frame
    shaky, pts = camera(texture, lambda t: tuple(shake[t]), pairs())
    assert score_motion(shaky, pts, FPS)["motion_jitter"]
    pan_shake, _ = camera(texture, lambda t: (0.5 * t + shake[t][0], shake[t][1]), pairs())
    assert score_motion(pan_shake, pts, FPS)["motion_jitter"]
    for path in (lambda t: (2.0 * t, 0.5 * t), lambda t: (0.01 * t * t, 0.0)):  # steady and accelerating pans
        smooth, _ = camera(texture, path, pairs())
        assert not score_motion(smooth, pts, FPS)["motion_jitter"]


def test_waving_subject_on_a_still_camera_is_not_shake(texture):
    """A region (~25 % of the frame) jumping randomly, background still: the median flow sees no camera shake."""
    rng = np.random.default_rng(3)
    frames, pts = camera(texture, lambda t: (0.0, 0.0), pairs())
    frames = frames.copy()
    for k in range(len(frames)):
        dx, dy = rng.normal(0.0, 3.0, 2)
        frames[k, 20:100, 40:180] = window(texture, 250 + dx, 150 + dy, 80, 140)
    m = score_motion(frames, pts, FPS)
    assert not m["motion_static"] and not m["motion_jitter"]


def test_jitter_needs_enough_pairs(texture):
    rng = np.random.default_rng(2)
    shake = {t: rng.normal(0.0, 3.0, 2) for t in range(200)}
    frames, pts = camera(texture, lambda t: tuple(shake[t]), pairs(STARTS[:2]))
    assert not score_motion(frames, pts, FPS, ScoreConfig(jitter_min_pairs=3))["motion_jitter"]


def test_single_frame_gives_null_motion(texture):
    frames, pts = camera(texture, lambda t: (0.0, 0.0), [0])
    m = score_motion(frames, pts, FPS)
    assert m["motion_mean"] is None and m["motion_static"] is None


# ---------------------------------------------------------------------------------------------- batch UDF


def test_basic_scorer_batch_contract(texture):
    good, pts = camera(texture, lambda t: (1.0 * t, 0.0), pairs())
    bad = np.frombuffer(b"not an npy file", dtype=np.uint8)
    batch = {
        "clip_id": np.array(["a", "b", "c", "d"]),
        "frames": np.array([pack_frames(good), None, bad.tobytes(), pack_frames(np.zeros((2, 160, 200, 3), np.uint8))],
                           dtype=object),
        "frames_pts": np.array([pts, None, pts, np.array([0.0, 1 / FPS])], dtype=object),
        "fps": np.array([FPS, np.nan, FPS, FPS]),
    }
    out = BasicScorer()(batch)
    assert list(out["clip_id"]) == ["a", "b", "c", "d"]
    for c in SCORE_COLUMNS:
        assert len(out[c]) == 4
    assert list(out["scores_status"]) == ["ok", "skipped", "error:ValueError", "ok"]
    assert out["motion_mean"][0] == pytest.approx(1.0, rel=0.1)
    assert isinstance(out["sharpness"][0], float) and isinstance(out["motion_jitter"][0], bool)
    assert len(out["phash"][0]) == 16
    for c in ("sharpness", "luma_mean", "motion_mean", "phash", "sharpness_model"):
        assert out[c][1] is None and out[c][2] is None
    assert out["black_share"][3] == 1.0 and out["motion_static"][3]


def test_framepack_round_trip():
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    assert np.array_equal(unpack_frames(pack_frames(x)), x)
    assert np.array_equal(unpack_frames(memoryview(pack_frames(x))), x)
    with pytest.raises(ValueError):
        pack_frames(x.astype(np.float32))
    with pytest.raises(ValueError):
        unpack_frames(b"")


def test_basic_scorer_on_an_arrow_batch_keeps_types_and_nulls(texture):
    """batch_format="pyarrow": typed columns (float32, bool) and real nulls, existing columns untouched."""
    import pyarrow as pa

    good, pts = camera(texture, lambda t: (2.0 * t, 0.0), pairs())
    batch = pa.table({
        "clip_id": ["a", "b"],
        "frames": pa.array([pack_frames(good), None], pa.binary()),
        "frames_pts": pa.array([pts.tolist(), None], pa.list_(pa.float64())),
        "fps": [FPS, None],
    })  # fmt: skip
    out = BasicScorer()(batch)
    assert out.column_names[:4] == ["clip_id", "frames", "frames_pts", "fps"]
    assert out["clip_id"].to_pylist() == ["a", "b"]
    assert out.schema.field("sharpness").type == pa.float32()
    assert out.schema.field("motion_jitter").type == pa.bool_()
    assert out["scores_status"].to_pylist() == ["ok", "skipped"]
    assert out["sharpness"].null_count == 1 and out["sharpness_model"].to_pylist()[1] is None
    assert out["motion_mean"].to_pylist()[0] == pytest.approx(2.0, rel=0.1)


def test_real_shots_are_not_shaky_but_shaken_real_footage_is(shared_data):
    """issue-195 (real broadcast, tripod and smooth camera work): no jitter; the same picture shaken: jitter."""
    import av

    small = []
    with av.open(str(shared_data / "pyscenedetect" / "issue-195-aspect-ratio.mp4")) as c:
        fps = float(c.streams.video[0].average_rate)
        for fr in c.decode(video=0):
            small.append((cv2.resize(fr.to_ndarray(format="rgb24"), (196, 160), interpolation=cv2.INTER_AREA),
                          float(fr.time)))
    for a, b in [(0, 69), (171, 300), (302, 420), (485, 627)]:  # shots between the known cuts
        idx = [j for s in np.linspace(a, b - 2, 6).round().astype(int) for j in (s, s + 1)]
        m = score_motion(np.stack([small[j][0] for j in idx]), np.array([small[j][1] for j in idx]), fps)
        assert m["motion_model"].endswith("/pairs") and not m["motion_jitter"], (a, b, m)
    still = cv2.resize(small[200][0], (392, 320), interpolation=cv2.INTER_LINEAR)  # room to move the window
    rng = np.random.default_rng(5)
    offsets = {t: rng.normal(0.0, 3.0, 2) for t in range(200)}
    shift = {t: np.float32([[1, 0, -(100 + dx)], [0, 1, -(80 + dy)]]) for t, (dx, dy) in offsets.items()}
    frames = np.stack([cv2.warpAffine(still, shift[t], (196, 160)) for t in pairs()])
    assert score_motion(frames, np.array(pairs()) / fps, fps)["motion_jitter"]
