"""Scene detection: exact on synthetic renders (hard cuts, dissolves, fades), right on the real test videos."""

from __future__ import annotations

import numpy as np
import pytest

from curate import synth
from curate.frames import DecodeConfig, iter_frames
from curate.scenes import Scene, SceneConfig, SceneSplitter, detect_scenes
from curate.synth import Shot, Transition

DECODE = DecodeConfig(short_side=144)


def _run(path, cfg: SceneConfig, fps: float) -> tuple[list[Scene], SceneSplitter, np.ndarray]:
    splitter = SceneSplitter(cfg, fps)
    pts = []
    for frame in iter_frames(path, DECODE):
        splitter.push(frame.rgb, frame.pts_s)
        pts.append(frame.pts_s)
    return splitter.finish(), splitter, np.asarray(pts)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One render with every transition kind, at the default 24 fps."""
    shots = (
        Shot("circle", "red", "right", "checker", "blue", 40),
        Shot("star", "yellow", "rotate", "gradient", "purple", 36),
        Shot("square", "green", "up", "noise", "white", 40),
        Shot("hexagon", "blue", "grow", "checker", "orange", 34),
        Shot("diamond", "pink", "left", "gradient", "cyan", 30),
    )
    transitions = (Transition("cut"), Transition("dissolve", 12), Transition("fade", 14), Transition("dissolve", 20))
    path = tmp_path_factory.mktemp("scenes") / "mixed.mp4"
    gt = synth.render_video(path, shots, transitions, fps=24, size=(256, 144), seed=5)
    return path, gt


@pytest.mark.parametrize("detector", ["shots", "adaptive", "content"])
def test_synthetic_scenes_are_exactly_the_clean_shots(mixed, detector):
    path, gt = mixed
    scenes, splitter, pts = _run(path, SceneConfig(detector=detector), gt.fps)
    assert [(s.start, s.end) for s in scenes] == [(s["start"], s["end"]) for s in gt.shots]
    assert [(s.cut_in, s.cut_out) for s in scenes] == [
        ("start", "cut"), ("cut", "dissolve"), ("dissolve", "fade"), ("fade", "dissolve"), ("dissolve", "end")]
    assert set(splitter.transition_frames) == gt.transition_frames
    # times come from PTS: start_s is the PTS of the first frame, end_s the PTS of the frame after the scene
    for s in scenes:
        assert s.start_s == pts[s.start]
        assert s.end_s == pytest.approx(pts[s.end] if s.end < len(pts) else pts[-1] + 1 / gt.fps)


def test_random_renders_hard_cuts_exact_and_no_transition_frame_in_a_scene(tmp_path):
    for seed in (1, 3, 8):
        program = synth.random_program(seed, n_shots=(4, 5), shot_s=(1.5, 2.5), size=(192, 108))
        gt = synth.render_program(tmp_path / f"r{seed}.mp4", program)
        scenes, _, _ = _run(tmp_path / f"r{seed}.mp4", SceneConfig(), program.fps)
        in_scenes = {i for s in scenes for i in range(s.start, s.end)}
        assert not in_scenes & gt.transition_frames, seed
        starts = {s.start for s in scenes}
        for t in gt.transitions:
            if t["kind"] == "cut":
                assert t["start"] in starts, (seed, t)
        # every scene holds frames of one shot only
        for s in scenes:
            owners = {gt.shot_of_frame(i) for i in range(s.start, s.end)}
            assert len(owners) == 1 and None not in owners, (seed, s)


def test_detect_scenes_takes_frames_or_tuples_and_streams(mixed):
    path, gt = mixed
    frames = list(iter_frames(path, DECODE))
    a = detect_scenes(frames, SceneConfig(), gt.fps)
    b = detect_scenes(((f.pts_s, f.rgb) for f in frames), SceneConfig(), gt.fps)
    assert a == b and len(a) == 5
    # the splitter holds no decoded frame: its arrays stay the size of the dissolve ring, however long the input
    splitter = SceneSplitter(SceneConfig(), gt.fps)
    for f in frames:
        splitter.push(f.rgb, f.pts_s)
    held = sum(v.nbytes for v in vars(splitter).values() if isinstance(v, np.ndarray))
    # the thumbnail ring only, whatever the input length (the dissolve windows, and the purity guard's windows
    # that end a dissolve window's length before them: ~3.2 s of thumbnails)
    assert held == splitter._ring.nbytes < 128 * 32 * 18 * 3 * 4
    assert not any(isinstance(v, list) and v and isinstance(v[0], np.ndarray) for v in vars(splitter).values())


def test_disabled_gradual_detectors_leave_transitions_inside_scenes(mixed):
    path, gt = mixed
    scenes, splitter, _ = _run(path, SceneConfig(fades=False, dissolves=False), gt.fps)
    assert splitter.transition_frames == []
    covered = {i for s in scenes for i in range(s.start, s.end)}
    assert covered & gt.transition_frames  # what the gradual detectors are for


def test_testvideo_cuts_fades_and_dissolve(shared_data, ground_truth):
    truth = ground_truth["pyscenedetect/testvideo.mp4"]["annotation_by_eye"]
    scenes, splitter, _ = _run(shared_data / "pyscenedetect/testvideo.mp4", SceneConfig(), 29.97)
    starts = [s.start for s in scenes]
    assert 30 in starts  # hard cut from black to the leaf
    assert any(s.end == 180 for s in scenes)  # hard cut from the leaf to black
    in_scenes = {i for s in scenes for i in range(s.start, s.end)}
    (d0, d1), = truth["dissolve"]
    assert not in_scenes & set(range(d0 + 5, d1 - 5)), "dissolve frames must belong to no scene"
    for a, b in truth["fade_in"] + truth["fade_out"]:
        assert not in_scenes & set(range(a + 5, b - 5)), (a, b)
    assert not in_scenes & set(range(185, 205))  # black between the hard cut and the first fade-in
    assert len(scenes) == 4


def test_vfr_cuts_by_time(shared_data, ground_truth):
    path = shared_data / "pyscenedetect/goldeneye-vfr-drop3.mp4"
    scenes, _, pts = _run(path, SceneConfig(), 16.05)
    cut_times = ground_truth["pyscenedetect/goldeneye-vfr-drop3.mp4"]["cut_times_s"]
    assert [round(s.start_s, 3) for s in scenes[1:]] == cut_times
    assert [s.start for s in scenes[1:]] == [int(np.argmin(np.abs(pts - t))) for t in cut_times]


def test_real_videos_match_ground_truth(shared_data, ground_truth):
    """Boundaries on the real videos with cuts and on static ones without (no false cut)."""
    cases = {
        "pyscenedetect/issue-195-aspect-ratio.mp4": ground_truth["pyscenedetect/issue-195-aspect-ratio.mp4"][
            "annotation_by_eye"]["hard_cuts"],
        "pyscenedetect/issue-134-rotate.mp4": ground_truth["pyscenedetect/issue-134-rotate.mp4"][
            "cuts_frames_at_23.976fps"],
        "pyscenedetect/issue-236-split-copy.mkv": ground_truth["pyscenedetect/issue-236-split-copy.mkv"][
            "annotation_by_eye"]["hard_cuts"],
        "intel-sample-videos/car-detection.mp4": [],
        "intel-sample-videos/asl_gestures/book.mkv": [],
        "intel-sample-videos/asl_gestures/walk.mkv": [],
    }
    hits = misses = false = 0
    for name, cuts in cases.items():
        fps = ground_truth[name]["file"]["avg_fps"]
        scenes, _, _ = _run(shared_data / name, SceneConfig(), fps)
        found = [s.start for s in scenes[1:]]
        assert scenes[0].start == 0 and scenes[-1].end == ground_truth[name]["file"]["decoded_frames"], name
        hits += len(set(found) & set(cuts))
        misses += len(set(cuts) - set(found))
        false += len(set(found) - set(cuts))
    assert hits == 8 and misses == 0 and false == 0, (hits, misses, false)


def test_wipe_errors_equal_the_split_screen_pictures():
    """Slide models are the two pictures side by side at every offset; the running-sum wipe errors are the mean
    |frame - model| of the wipe pictures ``_split_model`` builds."""
    from curate.scenes import _split_model, _wipe_errors

    rng = np.random.default_rng(0)
    A, B = (rng.random((18, 32, 3)) * 255).astype(np.float32), (rng.random((18, 32, 3)) * 255).astype(np.float32)
    mids = (rng.random((5, 18, 32, 3)) * 255).astype(np.float32)
    h, w = A.shape[:2]
    slides = {4: lambda o: np.concatenate([A[:, o:], B[:, :o]], axis=1),  # push left
              5: lambda o: np.concatenate([B[:, w - o:], A[:, : w - o]], axis=1),  # push right
              6: lambda o: np.concatenate([A[o:], B[:o]], axis=0),  # push up
              7: lambda o: np.concatenate([B[h - o:], A[: h - o]], axis=0)}  # push down
    for m, picture in slides.items():
        models = _split_model(A, B, m)
        assert len(models) == (w if m < 6 else h) + 1
        for o in (0, 1, 7, len(models) - 1):
            np.testing.assert_array_equal(models[o], picture(o))
    for m, got in enumerate(_wipe_errors(mids, A, B)):
        want = np.abs(mids[:, None] - _split_model(A, B, m)[None]).mean(axis=(2, 3, 4))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_banded_bound_never_exceeds_the_slide_error_and_rules_out_only_misfits():
    """The slide pre-test (band means of the pictures) is a lower bound of every frame's error at every offset, so
    ``push_may_fit`` drops a model only when some frame fits it at no offset within the limit."""
    from curate.split_screen import band_means, push_may_fit, split_model

    rng = np.random.default_rng(1)
    A, B = (rng.random((18, 32, 3)) * 255).astype(np.float32), (rng.random((18, 32, 3)) * 255).astype(np.float32)
    slid = split_model(A, B, 4)[[3, 9, 15, 21, 27]]  # a push left, 5 frames of it, with noise
    mids = (slid + rng.normal(0, 4, slid.shape)).astype(np.float32)
    for m in (4, 5, 6, 7):
        along_columns = m in (4, 5)
        banded = tuple(band_means(x, along_columns) for x in (A, B, mids))
        assert banded[2].shape == ((5, 3, 32, 3) if along_columns else (5, 18, 4, 3))
        bound = np.abs(banded[2][:, None] - split_model(banded[0], banded[1], m)[None]).mean(axis=(2, 3, 4))
        err = np.abs(mids[:, None] - split_model(A, B, m)[None]).mean(axis=(2, 3, 4))
        assert np.all(bound <= err + 1e-3)
        worst = float(err.min(axis=1).max())  # the error the split-screen tests hold against their limit
        for limit in (0.5 * worst, 0.999 * worst, worst, 1.5 * worst):
            if not push_may_fit(banded, m, limit):
                assert worst > limit
    # the true slide passes at a limit its noise fits; the reversed direction does not
    assert push_may_fit(tuple(band_means(x, True) for x in (A, B, mids)), 4, 5.0)
    assert not push_may_fit(tuple(band_means(x, True) for x in (A, B, mids)), 5, 5.0)


def test_median_is_numpys():
    from curate.split_screen import median

    rng = np.random.default_rng(2)
    for n in (1, 2, 17, 31, 576, 577):
        x = (rng.random(n) * 100).astype(np.float32)
        assert median(x) == np.median(x)
    assert median(np.array([[3.0, 1.0], [2.0, 9.0]], np.float32)) == 2.5


def test_guard_wipe_span_reaches_past_a_window_that_ends_mid_wipe():
    """A wipe down, one row a frame, over still shots: on the whole wipe the guard's still-edge fit gives exactly the
    frames with the edge inside; on a window ending at frame 14 (edge still 4 rows from the border), the span goes
    on at the edge's pace to frame 17, the last frame before the edge leaves; a window holding the whole wipe is not
    extended."""
    from curate.split_screen import still_edge_fit

    rng = np.random.default_rng(3)
    A, B = (rng.random((18, 32, 3)) * 255).astype(np.float32), (rng.random((18, 32, 3)) * 255).astype(np.float32)
    frames = np.stack([np.concatenate([B[:k], A[k:]], axis=0) for k in range(19)] + [B, B])  # edge at row k
    diff = float(np.abs(B - A).mean())
    cfg = SceneConfig()
    assert still_edge_fit(frames, diff, cfg) == (1, 18)  # rows 1..17 of B shown: frames 1..17
    window = frames[:15]  # ends at frame 14, still a transition frame
    assert still_edge_fit(window, float(np.abs(window[-1] - A).mean()), cfg) == (1, 18)
    late = frames[6:]  # starts at frame 6 (edge at row 6): the span reaches back to frame 1 (offset -5)
    assert still_edge_fit(late, float(np.abs(late[-1] - late[0]).mean()), cfg) == (-5, 12)


def _smooth(rng, h: int, w: int, level: float, amp: float) -> np.ndarray:
    import cv2

    x = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    return (level + amp * x / x.std()).astype(np.float32)


def test_guard_slide_between_moving_shots_fits_within_their_drift_and_a_pan_does_not():
    """A push left over 20 frames while both shots change by themselves (~3 levels a frame): the end frames' model
    misses the middle frames by more than ``guard_slide_max_error``, so the plain test finds nothing; with the
    shots' steps as drift it gives the slide's frames. A pan over one picture changing the same way, with no seam,
    fits neither. The allowance is 0 for still shots and never more than the ends' difference."""
    from curate.split_screen import drift_allowance, slide_fit, split_model

    rng = np.random.default_rng(4)
    h, w, n = 18, 32, 20
    A0, B0 = _smooth(rng, h, w, 90, 30), _smooth(rng, h, w, 150, 30)
    fa, fb = _smooth(rng, h, w, 0, 1), _smooth(rng, h, w, 0, 1)
    A = [A0 + 4.0 * t * fa for t in range(n + 1)]
    B = [B0 + 4.0 * (t - n) * fb for t in range(n + 1)]
    frames = np.stack([A[0]] + [split_model(A[t], B[t], 4)[round(t * w / n)] for t in range(1, n)] + [B[n]])
    diff = float(np.abs(frames[-1] - frames[0]).mean())
    step = float(np.abs(A[1] - A[0]).mean())
    cfg = SceneConfig()
    assert slide_fit(frames, diff, cfg) is None
    assert slide_fit(frames, diff, cfg, (step, step)) == (1, 20)
    P = _smooth(rng, h, 2 * w, 120, 40)
    pan = np.stack([P[:, round(t * w / n): round(t * w / n) + w] + 4.0 * t * fa for t in range(n + 1)])
    pan_diff = float(np.abs(pan[-1] - pan[0]).mean())
    assert slide_fit(pan, pan_diff, cfg, (step, step)) is None
    assert not drift_allowance(n, diff, (0.0, 0.0)).any()
    big = drift_allowance(n, diff, (50.0, 50.0))
    assert big.shape == (n - 1,) and big.max() <= diff + 1e-6 and big.min() > 0


def test_suspect_spans_that_overlap_or_touch_are_merged_once_per_scene():
    """Two guards may flag overlapping spans (a slide's, a transition edge's): a scene carries each stretch once,
    cut to the scene's own frames, and spans apart stay apart."""
    from curate.scene_list import assemble_scenes

    pts = [i / 30 for i in range(100)]
    scenes = assemble_scenes(pts, bytes(100), {50}, 5, 30.0, [(69, 76), (10, 20), (69, 85), (85, 88), (45, 55)])
    assert [(s.start, s.end, s.suspect) for s in scenes] == [(0, 50, ((10, 20), (45, 50))), (50, 100, ((50, 55), (69, 88)))]
