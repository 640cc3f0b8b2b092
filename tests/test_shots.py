"""Shot boundaries on small spliced sequences: every hard negative gives no boundary, every transition kind gives
one with the right span (within 1 frame), and a build publishes only clips of one shot.

Frames are rendered in memory at 192x108 (``curate.synth`` shots: a shape moving over a still texture) and joined
with the benchmark's own transition and effect generators (``benchmarks.shots.build``)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest

from benchmarks.shots import build as bench
from benchmarks.shots import score
from curate.clips import ClipConfig, plan_clips
from curate.frames import iter_thumbs
from curate.scenes import SceneConfig, SceneSplitter, rgb_thumbnail
from curate.split_screen import motion_residual
from curate.synth import Shot, render_clip

SIZE = (192, 108)
FPS = 30.0


def _shot(seed: int, n: int, size=SIZE, like: Shot | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "cyan", "pink"]
    color = colors[seed % len(colors)]
    bg_color = like.bg_color if like else colors[(seed + 3) % len(colors)]
    background = like.background if like else ["noise", "gradient", "checker"][seed % 3]
    shot = Shot(["circle", "square", "star"][seed % 3], color, ["left", "right", "up"][int(rng.integers(3))],
                background, bg_color, n)
    return list(render_clip(shot, size, seed=seed))


def _scenes(frames: list[np.ndarray], cfg: SceneConfig = SceneConfig()):
    splitter = SceneSplitter(cfg, FPS)
    for k, f in enumerate(frames):
        splitter.push(f, k / FPS)
    return splitter.finish()


def _gaps(scenes) -> list[tuple[int, int]]:
    """Frames between consecutive scenes, [first, last]; a hard cut at c gives (c, c - 1)."""
    return [(a.end, b.start - 1) for a, b in zip(scenes, scenes[1:])]


# ------------------------------------------------------------------------------------------ negatives


def test_static_shot_with_a_moving_object_is_one_scene():
    frames = _shot(1, 90)
    assert [(s.start, s.end, s.suspect) for s in _scenes(frames)] == [(0, 90, ())]  # no suspect span either


def test_camera_flash_is_no_cut():
    for length in (1, 2, 3):
        frames = _shot(2, 90)
        bench.flash(frames, 40, length)
        assert [(s.start, s.end, s.suspect) for s in _scenes(frames)] == [(0, 90, ())], length


@pytest.mark.parametrize("pattern", ["pulldown", "doubled"])
def test_duplicated_frames_give_no_cut_and_the_real_cut_is_exact(pattern):
    a, b = _shot(3, 60), _shot(4, 60)
    idx = bench.time_pattern(pattern, 50)
    frames = [a[i] for i in idx] + [b[i] for i in idx]
    assert [(s.start, s.end, s.suspect) for s in _scenes(frames)] == [(0, 50, ()), (50, 100, ())]


def _big(seed: int, n: int) -> list[np.ndarray]:
    return _shot(seed, n, size=(SIZE[0] * 3, SIZE[1] * 3))


def test_whip_pan_is_no_cut():
    big = _big(5, 60)
    frames = []
    for k, f in enumerate(big):
        t = min(1.0, max(0.0, (k - 25) / 9))
        x = 0.2 + 0.6 * (0.5 - 0.5 * np.cos(np.pi * t))
        img = bench._cover(f, SIZE, 0.6, x, 0.5)
        if 25 <= k < 34:
            img = cv2.blur(img, (31, 1))
        frames.append(img)
    assert [(s.start, s.end, s.suspect) for s in _scenes(frames)] == [(0, 60, ())]


def test_fast_zoom_is_no_cut():
    """A 1.8x zoom in 10 frames over a smooth texture moves every pixel monotonically, like a blend; the frames in
    between are no blend of the ends (nor two pictures side by side)."""
    big = _big(6, 60)
    frames = [bench._cover(f, SIZE, 1.0 - 0.45 * min(1.0, max(0.0, (k - 25) / 10)), 0.5, 0.5)
              for k, f in enumerate(big)]
    assert [(s.start, s.end, s.suspect) for s in _scenes(frames)] == [(0, 60, ())]


def _pan(seed: int, n: int, speed: float) -> list[np.ndarray]:
    """A steady pan across a textured scene: every pixel moves every frame, one way."""
    return [bench._cover(f, SIZE, 0.5, 0.25 + speed * k, 0.5) for k, f in enumerate(_big(seed, n))]


@pytest.mark.parametrize("speed", [0.003, 0.008])
def test_steady_pan_is_one_scene_with_no_suspect_span(speed):
    assert [(s.start, s.end, s.suspect) for s in _scenes(_pan(31, 60, speed))] == [(0, 60, ())]


def test_low_bitrate_file_is_one_scene(tmp_path):
    path = tmp_path / "low.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.codec_context.options = {"crf": "45", "g": "10"}
        for f in _shot(7, 90):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))
    splitter = SceneSplitter(SceneConfig(), FPS)
    for _, pts, thumb in iter_thumbs(path):
        splitter.push_thumb(thumb, pts)
    assert [(s.start, s.end, s.suspect) for s in splitter.finish()] == [(0, 90, ())]


# ---------------------------------------------------------------------------------------- transitions


@pytest.mark.parametrize("kind,n", [("dissolve", 4), ("dissolve", 12), ("dissolve", 30), ("fade-black", 17),
                                    ("fade-white", 13), ("wipe", 12), ("slide", 10)])
def test_each_gradual_transition_is_one_boundary_with_its_span(kind, n):
    a, b = _shot(8, 50 + n), _shot(9, 50 + n)
    rng = np.random.default_rng(0)
    middle = bench.transition(kind, n, a[50:], b[:n], rng, hold=3)
    frames = a[:50] + middle + b[n:]
    scenes = _scenes(frames)
    assert len(scenes) == 2, [(s.start, s.end) for s in scenes]
    (first, last), = _gaps(scenes)
    assert abs(first - 50) <= 1 and abs(last - (50 + n - 1)) <= 1, (first, last)


@pytest.mark.parametrize("kind,n", [("dissolve", 20), ("wipe", 16)])
def test_span_is_exact_when_the_incoming_shot_repeats_frames_or_the_wipe_ends_on_a_flat_strip(kind, n):
    """A doubled-frame shot after a dissolve moves by 0 every other frame (its end must still be found); a wipe
    whose last fifth hardly changes must not end where the change slows down (it ended 6 frames early)."""
    a, b = _shot(13, 50 + n), _shot(14, 50 + 2 * n)
    if kind == "dissolve":
        b = [b[i] for i in bench.time_pattern("doubled", len(b))]
    else:
        b = [f.copy() for f in b]
        for f, g in zip(b, a[50:] + a[-1:] * len(b)):
            f[:, -SIZE[0] // 5:] = (g[:, -SIZE[0] // 5:].astype(np.int16) + 6).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    middle = bench.transition(kind, n, a[50:], b[:n], rng)
    frames = a[:50] + middle + b[n:]
    scenes = _scenes(frames)
    assert len(scenes) == 2, [(s.start, s.end) for s in scenes]
    (first, last), = _gaps(scenes)
    slack = 2 if kind == "wipe" else 1  # the wipe's flat strip: within the default clip margin (2), not +-1
    assert abs(first - 50) <= 1 and abs(last - (50 + n - 1)) <= slack, (first, last)


def test_dissolve_between_two_shots_of_one_backdrop_is_found():
    """Two shots that differ in 40 % of the picture (a signer in front of one backdrop): most pixels keep their
    brightness, so the ends look like one picture re-exposed by the median, yet every frame is a blend."""
    a, other = _shot(15, 90), _shot(16, 90)
    b = [f.copy() for f in a]
    for f, g in zip(b, other):
        f[:, : int(SIZE[0] * 0.4)] = g[:, : int(SIZE[0] * 0.4)]
    n = 20
    middle = bench.transition("dissolve", n, a[40:], b[40:], np.random.default_rng(0))
    scenes = _scenes(a[:40] + middle + b[40 + n:])
    assert len(scenes) == 2, [(s.start, s.end) for s in scenes]
    (first, last), = _gaps(scenes)
    assert abs(first - 40) <= 1 and abs(last - (40 + n - 1)) <= 1, (first, last)


def test_hard_cut_and_low_contrast_cut_are_exact():
    a, b = _shot(10, 50), _shot(11, 50)
    assert _gaps(_scenes(a + b)) == [(50, 49)]
    # two framings of one scene: the same render seen through another crop, time running on
    big = _big(12, 100)
    frames = [bench._cover(f, SIZE, 0.9, 0.45, 0.5) for f in big[:50]]
    frames += [bench._cover(f, SIZE, 0.6, 0.6, 0.5) for f in big[50:]]
    assert _gaps(_scenes(frames)) == [(50, 49)]


# ------------------------------------------------------------------------------------------ purity guard


def _dirty(frames_n: int, shots: list[tuple[int, int]], scenes) -> tuple[int, int]:
    """Dirty clips planned (default ClipConfig) from ``scenes`` without and with their suspect spans."""
    truth = {"frames": frames_n, "shots": [{"start": a, "end": b} for a, b in shots]}
    bare = plan_clips([replace(s, suspect=()) for s in scenes], ClipConfig(), FPS)
    return score.dirty_spans(truth, bare), score.dirty_spans(truth, plan_clips(scenes, ClipConfig(), FPS))


def _one_backdrop(seed_a: int, seed_b: int) -> tuple[list, list]:
    """Two 160-frame shots of one backdrop that differ in the left 35 % of the picture (shot ``seed_b`` there)."""
    a, other = _shot(seed_a, 160), _shot(seed_b, 160)
    b = [f.copy() for f in a]
    for f, g in zip(b, other):
        f[:, : int(SIZE[0] * 0.35)] = g[:, : int(SIZE[0] * 0.35)]
    return a, b


def test_purity_guard_keeps_clips_clear_of_a_wipe_over_a_third_of_the_picture():
    """Two shots of one backdrop that differ in the left 35 % (the detector's wipe test asks for half the
    picture): the wipe stays inside the one scene, and the guard's suspect span keeps the clips clear of it."""
    a, b = _one_backdrop(15, 40)
    n = 12
    frames = a[:70] + bench.transition("wipe", n, a[70:], b[70:], np.random.default_rng(0)) + b[70 + n:]
    scenes = _scenes(frames)
    assert [(s.start, s.end) for s in scenes] == [(0, 160)]  # the detector misses it
    ((lo, hi),) = scenes[0].suspect
    assert abs(lo - 70) <= 1 and abs(hi - (70 + n)) <= 1, (lo, hi)
    assert _dirty(len(frames), [(0, 70), (70 + n, 160)], scenes) == (1, 0)


def test_purity_guard_keeps_clips_clear_of_a_slide_the_detector_misses():
    """The same two shots of one backdrop joined by a slide: the picture moves as a whole, with a seam between the
    two shots that a pan does not show."""
    a, b = _one_backdrop(16, 41)
    n = 14
    frames = a[:70] + bench.transition("slide", n, a[70:], b[70:], np.random.default_rng(1)) + b[70 + n:]
    scenes = _scenes(frames)
    assert [(s.start, s.end) for s in scenes] == [(0, 160)]  # the detector misses it
    ((lo, hi),) = scenes[0].suspect
    assert abs(lo - 70) <= 1 and abs(hi - (70 + n)) <= 1, (lo, hi)
    assert _dirty(len(frames), [(0, 70), (70 + n, 160)], scenes) == (1, 0)


def _held(kind: str, seed: int, n: int, speed: float = 0.0) -> tuple[list, list]:
    """An edit that holds the outgoing shot's last frame, then brings in (a ``kind`` of ``n`` frames) a shot of the
    same backdrop (the left 35 % differs: two signers before one wall) that pans at ``speed``; and its two shots."""
    a, b = _pan(seed, 160, speed), _pan(seed, 160, speed)
    for f, g in zip(b, _pan(seed + 25, 160, speed)):
        f[:, : int(SIZE[0] * 0.35)] = g[:, : int(SIZE[0] * 0.35)]
    a = [a[69]] * 70 + a[70:]
    frames = a[:70] + bench.transition(kind, n, a[70:], b[70:], np.random.default_rng(1)) + b[70 + n:]
    return frames, [(0, 70), (70 + n, len(frames))]


@pytest.mark.parametrize("kind,seed,off", [
    ("slide", 20, {"guard_slide_max_error": 0.25}),  # its end frames' model misses by over a quarter, under a third
    ("slide", 16, {"guard_seams": 1}),  # an edge of the shared backdrop is a larger step than the seam
    # the edge is seen only where the two pictures differ; its soft band weighs much against their difference
    ("wipe", 18, {"guard_hidden_edge": False, "guard_wipe_band": 0.0}),
])
def test_purity_guard_keeps_clips_clear_of_a_transition_between_shots_of_one_backdrop(kind, seed, off):
    """Wipes and slides between two shots of one backdrop out of a held frame: clean with the default guard, one
    clip holds the transition with the checks that find it turned back."""
    frames, shots = _held(kind, seed, 10)
    assert _dirty(len(frames), shots, _scenes(frames))[1] == 0
    assert _dirty(len(frames), shots, _scenes(frames, replace(SceneConfig(), **off)))[1] == 1


def test_purity_guard_completes_a_wipe_between_panning_shots_that_the_detector_ends_early():
    """Both shots pan: the detector's span ends 3 frames early (past the clip margin); the guard's span does not."""
    n = 20
    a, b = _pan(31, 60 + n, 0.004), _pan(32, 80, -0.004)
    frames = a[:60] + bench.transition("wipe", n, a[60:], b[:n], np.random.default_rng(1)) + b[n:]
    scenes = _scenes(frames)
    assert len(scenes) == 2 and scenes[1].suspect, [(s.start, s.end, s.suspect) for s in scenes]
    assert _dirty(len(frames), [(0, 60), (60 + n, len(frames))], scenes) == (1, 0)


def _stepped_dissolve(a: list, b: list, n: int, step_at: int, jump: float) -> list:
    """n frames blending ``a`` into ``b`` whose alpha rises 1 / (n + 1) a frame but jumps by ``jump`` at frame
    ``step_at`` (an edit whose dissolve was cut short): the jump reads as a hard cut."""
    out = []
    for k in range(n):
        alpha = (k + 1) / (n + 1) * (1 - jump) + (jump if k >= step_at else 0.0)
        out.append((a[k].astype(np.float32) * (1 - alpha) + b[k].astype(np.float32) * alpha).astype(np.uint8))
    return out


@pytest.mark.parametrize("moving", [False, True])
def test_cut_edge_guard_keeps_clips_clear_of_a_dissolve_read_as_a_hard_cut(moving):
    """A 10-frame dissolve whose alpha jumps by 0.5 in its middle (still shots with a moving object, or two pans):
    the detector reports a hard cut at the jump and scenes that hold the blended frames; the cut-edge guard marks
    exactly those frames on both sides, so no clip holds one. Without it, both clips next to the cut are dirty."""
    n = 10
    a, b = (_pan(31, 60 + n, 0.004), _pan(32, 80, -0.004)) if moving else (_shot(21, 70), _shot(15, 80))
    frames = a[:60] + _stepped_dissolve(a[60:], b[:n], n, 5, 0.5) + b[n:]
    shots = [(0, 60), (60 + n, len(frames))]
    scenes = _scenes(frames)
    assert _gaps(scenes) == [(65, 64)]  # a hard cut at the jump: no scene boundary moves
    assert [s.suspect for s in scenes] == [((60, 65),), ((65, 70),)]
    assert _dirty(len(frames), shots, scenes) == (2, 0)
    unguarded = _scenes(frames, SceneConfig(cut_edges=False))
    assert [(s.start, s.end, s.suspect) for s in unguarded] == [(0, 65, ()), (65, 140, ())]


@pytest.mark.parametrize("speed", [0.004, 0.008])
def test_cut_edge_guard_marks_nothing_at_a_hard_cut_between_pans(speed):
    """Two shots panning opposite ways, joined by a hard cut: every frame next to the cut moves, none towards the
    other shot, so no suspect span (the clips lose only the margin)."""
    a, b = _pan(31, 60, speed), _pan(32, 70, -speed)
    assert [(s.start, s.end, s.suspect) for s in _scenes(a + b)] == [(0, 60, ()), (60, 130, ())]


def _still(frame: np.ndarray, n: int, rng) -> list[np.ndarray]:
    """``n`` copies of ``frame`` with +-1 level of noise each (a still shot through a camera)."""
    return [np.clip(frame.astype(np.int16) + rng.integers(-1, 2, frame.shape), 0, 255).astype(np.uint8)
            for _ in range(n)]


def test_weak_cut_guard_keeps_clips_clear_of_a_low_contrast_cut_between_still_shots():
    """Two still shots of one backdrop, one object replaced: the jump (~3 levels) is below ``cut_min_diff``, so the
    detector sees one scene; the weak-cut guard marks the two frames at the jump, so no clip holds both shots.
    Without it the one clip is dirty. The same jump spread thin over the picture (a brightness step of 5 levels,
    as a low-bitrate keyframe requantises a still picture) is marked nowhere."""
    rng = np.random.default_rng(0)
    a = _shot(21, 1)[0]
    b = a.copy()
    b[40:70, 80:116] = (200, 60, 200)
    frames = _still(a, 80, rng) + _still(b, 80, rng)
    scenes = _scenes(frames)
    assert [(s.start, s.end, s.suspect) for s in scenes] == [(0, 160, ((79, 81),))]  # no scene bound moves
    assert _dirty(160, [(0, 80), (80, 160)], scenes) == (1, 0)
    without = _scenes(frames, SceneConfig(weak_cut_min_diff=0))
    assert _dirty(160, [(0, 80), (80, 160)], without) == (1, 1)
    brighter = np.clip(a.astype(np.int16) + 5, 0, 255).astype(np.uint8)
    assert [(s.start, s.end, s.suspect) for s in _scenes(_still(a, 80, rng) + _still(brighter, 80, rng))] == [
        (0, 160, ())]


def test_purity_guard_keeps_clips_clear_of_a_dissolve_between_pans_the_detector_misses():
    """A 20-frame dissolve between two shots panning the same way: the pans' own steps make the summed path too long
    for the detector's dissolve test (no still frames around it either), so the dissolve stays inside one scene;
    the guard's looser dissolve test (alpha rising with no step, every frame near the blend) marks it."""
    n = 20
    a, b = _pan(31, 60 + n, 0.008), _pan(32, 80 + n, 0.008)
    frames = a[:60] + bench.transition("dissolve", n, a[60:], b[:n], np.random.default_rng(0)) + b[n: 80 + n]
    shots = [(0, 60), (60 + n, len(frames))]
    scenes = _scenes(frames)
    assert [(s.start, s.end) for s in scenes] == [(0, 160)]  # the detector misses it
    assert scenes[0].suspect == ((60, 60 + n),)  # and nothing in the pan after it (no slide moves in jumps)
    assert _dirty(len(frames), shots, scenes) == (1, 0)
    without = _scenes(frames, SceneConfig(guard_dissolve_min_path=0))
    assert _dirty(len(frames), shots, without) == (1, 1)


def test_purity_guard_keeps_clips_clear_of_a_low_contrast_dissolve_between_shots_of_one_backdrop():
    """A 24-frame dissolve between two shots that differ in the left 40 % of the picture only (two people before
    one wall): the ends differ by ~13 levels on average, under the detector's dissolve floor, and most cells keep
    their brightness (the brightness-ratio spread is ~0, as for a re-exposure). The guard's low-contrast route
    marks it: 30 % of the cells change otherwise than by one gain, and no pan or zoom explains the change."""
    a, other = _shot(20, 160), _shot(45, 160)
    b = [f.copy() for f in a]
    for f, g in zip(b, other):
        f[:, : int(SIZE[0] * 0.4)] = g[:, : int(SIZE[0] * 0.4)]
    n = 24
    frames = a[:70] + bench.transition("dissolve", n, a[70:], b[70:], np.random.default_rng(0)) + b[70 + n:]
    shots = [(0, 70), (70 + n, 160)]
    scenes = _scenes(frames)
    assert [(s.start, s.end) for s in scenes] == [(0, 160)]  # the detector misses it
    ((lo, hi),) = scenes[0].suspect
    assert abs(lo - 70) <= 1 and abs(hi - (70 + n)) <= 1, (lo, hi)
    assert _dirty(len(frames), shots, scenes) == (1, 0)
    for off in ({"guard_dissolve_min_diff": 14.0}, {"guard_dissolve_min_share": 1.0}):
        assert _dirty(len(frames), shots, _scenes(frames, replace(SceneConfig(), **off))) == (1, 1), off


def _signers(data, outgoing: str, incoming: str, kind: str, direction_seed: int, n: int) -> tuple[list, list]:
    """Two real ASL signer clips before one wall (benchmark development sources), each played forward then back
    (longer shots, still moving), joined by a ``kind`` of ``n`` frames; and the two shots."""
    def shot(name):
        frames = [bench._cover(f, SIZE) for f in bench._decode_span(
            data, f"intel-sample-videos/asl_gestures/{name}.mkv", 0, 200)]
        return frames + frames[::-1]

    a, b = shot(outgoing), shot(incoming)
    cut = len(a) - n
    frames = a[:cut] + bench.transition(kind, n, a[cut:], b[:n], np.random.default_rng(direction_seed)) + b[n:]
    return frames, [(0, cut), (cut + n, len(frames))]


@pytest.mark.parametrize("kind,direction_seed,off", [
    ("slide", 4, {"guard_slide_min_changed": 0.3}),  # the ends differ in under 30 % of the picture; all moves
    ("wipe", 4, {"guard_low_changed": 1.0}),  # ... and no pan explains the change
    ("wipe", 4, {"guard_wipe_band": 0.0, "guard_wipe_drift": False}),  # a soft edge, both signers moving
    ("wipe", 0, {"guard_wipe_drift": False}),  # both signers move: their own steps count against the model
])
def test_purity_guard_keeps_clips_clear_of_a_transition_between_two_signers_before_one_wall(
        shared_data, kind, direction_seed, off):
    """Real footage, both signers moving: a push up, a wipe down or up (direction seeds 4, 0) of 10 frames. The
    two pictures differ in about a quarter of the cells only; the default guard marks the transition, and turning
    back the checks that admit it leaves a clip holding it."""
    frames, shots = _signers(shared_data, "thanks", "no", kind, direction_seed, 10)
    assert _dirty(len(frames), shots, _scenes(frames))[1] == 0
    assert _dirty(len(frames), shots, _scenes(frames, replace(SceneConfig(), **off)))[1] == 1


def test_low_contrast_dissolve_route_marks_no_pan_or_zoom():
    """Slow pans and a fast zoom change every cell at a steady pace, as a low-contrast dissolve does: the motion
    test (``curate.split_screen.motion_residual``) keeps them unmarked; without it each gets a suspect span."""
    zoom = [bench._cover(f, SIZE, 1.0 - 0.45 * min(1.0, max(0.0, (k - 25) / 10)), 0.5, 0.5)
            for k, f in enumerate(_big(6, 60))]
    moving = [_pan(33, 90, 0.005), _pan(36, 90, 0.008), _pan(36, 90, 0.012), zoom]
    no_motion_test = SceneConfig(guard_min_unexplained=0.0)
    for frames in moving:
        assert [s.suspect for s in _scenes(frames)] == [()]
        assert [s.suspect for s in _scenes(frames, no_motion_test)] != [()]


def test_wipe_errors_band_forgives_a_soft_edge_only():
    """A frame of a soft wipe (a 3-column ramp from B to A at column 10): with no band the ramp's columns count
    against the nearest hard edge; with a band of 0.1 (3 columns each side) the model fits it exactly. Without the
    band the numbers equal the full comparison with ``split_model``; a frame of other content gains nothing."""
    from curate.split_screen import split_model, wipe_errors

    rng = np.random.default_rng(0)
    A, B = (rng.uniform(0, 255, (18, 32, 3)).astype(np.float32) for _ in range(2))
    ramp = np.clip((np.arange(32) - 9.0) / 3.0, 0, 1)[None, :, None]  # B up to column 9, A from column 12
    soft = (B * (1 - ramp) + A * ramp).astype(np.float32)
    other = rng.uniform(0, 255, (1, 18, 32, 3)).astype(np.float32)
    hard = wipe_errors(soft[None], A, B)[0]
    full = np.abs(soft[None, None] - split_model(A, B, 0)[None]).mean(axis=(2, 3, 4))
    assert np.allclose(hard, full, rtol=1e-4, atol=1e-3)
    assert hard.min() > 1.0  # two blended columns of 32
    assert wipe_errors(soft[None], A, B, band=0.1)[0].min() < 1e-3
    assert wipe_errors(other, A, B, band=0.1)[0].min() > 0.5 * wipe_errors(other, A, B)[0].min()


def test_drift_slack_is_the_allowance_of_one_frame():
    from curate.split_screen import drift_allowance, drift_slack

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, diff = int(rng.integers(2, 40)), float(rng.uniform(1, 50))
        drift = float(rng.uniform(0, 3)), float(rng.uniform(0, 3))
        assert [drift_slack(n, j, diff, drift) for j in range(1, n)] == drift_allowance(n, diff, drift).tolist()


def test_motion_residual_tells_camera_motion_from_other_content():
    texture = _big(7, 1)[0]
    base = rgb_thumbnail(bench._cover(texture, SIZE, 0.5, 0.4, 0.5))
    panned = rgb_thumbnail(bench._cover(texture, SIZE, 0.5, 0.45, 0.52))
    zoomed = rgb_thumbnail(bench._cover(texture, SIZE, 0.38, 0.4, 0.5))
    other = rgb_thumbnail(bench._cover(_big(8, 1)[0], SIZE, 0.5, 0.4, 0.5))
    assert motion_residual(base, panned) < 0.2
    assert motion_residual(base, zoomed) < 0.2
    assert motion_residual(base, other) > 0.6
    assert motion_residual(base, base) == 1.0  # no change: nothing to explain

def test_split_stage_reports_a_scene_the_purity_guard_empties(tmp_path):
    """A cut, then a 3-s scene holding a wipe over a third of the picture: the first scene gives its clip, the second
    no clean part of 2 s, so it becomes a rejected status row of its own (counted, not lost)."""
    from curate.split import SplitConfig, analyse_and_cut

    a, c, other = _shot(21, 80), _shot(15, 100), _shot(40, 100)
    d = [f.copy() for f in c]
    for f, g in zip(d, other):
        f[:, : int(SIZE[0] * 0.35)] = g[:, : int(SIZE[0] * 0.35)]
    n = 12
    frames = a + c[:40] + bench.transition("wipe", n, c[40:], d[40:], np.random.default_rng(0)) + d[40 + n: 92]
    path = tmp_path / "wipe.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))
    probe = {"key": "k", "source_uri": str(path), "content_id": "c" * 64, "fps_avg": 30.0, "rotation": 0}
    rows = analyse_and_cut(str(path), probe, SplitConfig())
    assert [(r["row_kind"], r["outcome"], r["reason"]) for r in rows] == [("status", "rejected", "transition-suspect"),
                                                                          ("clip", "accepted", None)]
    assert rows[0]["clip_id"] and all(r["expected_rows"] == 2 for r in rows)
    assert (rows[1]["start_frame"], rows[1]["end_frame"]) == (0, 78)
    unguarded = analyse_and_cut(str(path), probe, SplitConfig(scenes=SceneConfig(guard=False)))
    assert [r["row_kind"] for r in unguarded] == ["clip", "clip"]


def test_purity_guard_settings_are_in_the_build_fingerprint():
    from pipelines.build import BuildConfig
    from curate.store import fingerprint

    def fp(**kw):
        return fingerprint(BuildConfig(input="in", output="out", scenes=SceneConfig(**kw)).fingerprinted())

    assert len({fp(), fp(guard=False), fp(guard_max_error=0.2), fp(cut_edges=False),
                fp(guard_dissolve_min_path=0), fp(guard_dissolve_max_s=0.8), fp(weak_cut_min_diff=0),
                fp(weak_cut_min_sharp=0.5), fp(guard_dissolve_min_diff=14.0), fp(guard_dissolve_min_share=1.0),
                fp(guard_min_unexplained=0.0), fp(guard_low_changed=1.0), fp(guard_slide_min_changed=0.3),
                fp(guard_wipe_band=0.0), fp(guard_wipe_drift=False)}) == 15


def test_score_matches_each_transition_once():
    truth = {"transitions": [{"kind": "cut", "start": 10, "end": 10}, {"kind": "dissolve", "start": 30, "end": 40}],
             "negatives": [{"kind": "flash", "start": 60, "end": 62}], "shots": [], "frames": 100}
    counts = score.match(truth, [(11, 11), (29, 33), (35, 39), (61, 61)])
    assert {k: v for k, v in counts.items() if v} == {"tp_cut": 1, "tp_gradual": 1, "fp_gradual": 1, "fp_cut": 1,
                                                      "fp_on_flash": 1}
    assert score.f1(counts, "cut") == pytest.approx(2 / 3)


def test_dirty_details_name_the_transition_and_the_shots_of_each_dirty_clip():
    truth = {"transitions": [{"kind": "cut", "start": 40, "end": 40}, {"kind": "wipe", "start": 60, "end": 70}],
             "shots": [{"start": 0, "end": 40, "source": "a.mp4"}, {"start": 40, "end": 60, "source": "b.mp4"},
                       {"start": 70, "end": 100, "source": "c.mp4"}], "frames": 100}
    spans = [SimpleNamespace(start=2, end=38), SimpleNamespace(start=30, end=50), SimpleNamespace(start=45, end=65),
             SimpleNamespace(start=72, end=100)]
    details = score.dirty_details(truth, spans)
    assert len(details) == score.dirty_spans(truth, spans) == 2
    assert details[0] == {"span": (30, 50), "transitions": [("cut", 40, 40)], "shots": ["a.mp4", "b.mp4"]}
    assert details[1] == {"span": (45, 65), "transitions": [("wipe", 60, 70)], "shots": ["b.mp4"]}


# ------------------------------------------------------------------------------------------------ build


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=400_000_000,
             log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_build_publishes_only_clips_of_one_shot(ray_local, tmp_path):
    """A spliced video with a cut, a low-contrast cut, a dissolve, a fade, a wipe and a flash: every published
    clip holds frames of one shot only and no transition frame."""
    import pyarrow.parquet as pq

    from pipelines.build import BuildConfig, build

    rng = np.random.default_rng(1)
    shots = [_shot(20 + k, 80) for k in range(6)]
    bench.flash(shots[5], 30, 2)
    frames, truth = list(shots[0][:66]), {"transitions": [], "shots": [], "negatives": []}
    truth["shots"].append({"start": 0, "end": 66})
    for k, (kind, n) in enumerate([("cut", 0), ("dissolve", 12), ("fade-black", 14), ("wipe", 10), ("cut", 0)]):
        a, b = shots[k], shots[k + 1]
        start = len(frames)
        frames += bench.transition(kind, n, a[66:66 + n], b[:n], rng, hold=2)
        truth["transitions"].append({"kind": kind, "start": start, "end": len(frames)})
        truth["shots"].append({"start": len(frames), "end": len(frames) + 66})
        frames += b[n:n + 66]
    truth["frames"] = len(frames)
    videos = tmp_path / "videos"
    videos.mkdir()
    with av.open(str(videos / "spliced.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))
    out_dir = tmp_path / "dataset"
    build(BuildConfig(input=str(videos), output=str(out_dir), progress=False, ocr=False))
    manifest = json.loads((out_dir / "_manifest.json").read_text())
    rows = [r for s in manifest["shards"] for r in pq.read_table(out_dir / s["path"]).to_pylist()]
    spans = [SimpleNamespace(start=r["start_frame"], end=r["end_frame"]) for r in rows]
    assert len(spans) == 6, sorted((s.start, s.end) for s in spans)  # one clip per shot
    assert score.dirty_spans(truth, spans) == 0, sorted((s.start, s.end) for s in spans)
