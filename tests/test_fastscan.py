"""Two-pass scene detection (curate.fastscan) gives the one-pass result while decoding fewer frames."""

from __future__ import annotations

import av
import numpy as np
import pytest

from curate import fastscan, synth
from curate.fastscan import FastScanConfig, detect_scenes_fast
from curate.frames import DecodeConfig, iter_frames
from curate.probe import display_rotation
from curate.scenes import SceneConfig, SceneSplitter
from curate.synth import Shot, Transition

DECODE = DecodeConfig(short_side=144)


def _one_pass(path, cfg: SceneConfig, fps: float):
    splitter, pts = SceneSplitter(cfg, fps), []
    for frame in iter_frames(path, DECODE):
        splitter.push(frame.rgb, frame.pts_s)
        pts.append(frame.pts_s)
    return splitter.finish(), np.asarray(pts), splitter


@pytest.fixture(scope="module")
def long_shots(tmp_path_factory):
    """Every transition kind, with shots long enough (5-6 s) that the middle of each is never refined."""
    shots = (
        Shot("circle", "red", "right", "checker", "blue", 130),
        Shot("star", "yellow", "rotate", "gradient", "purple", 120),
        Shot("square", "green", "up", "noise", "white", 140),
        Shot("hexagon", "blue", "grow", "checker", "orange", 125),
        Shot("diamond", "pink", "left", "gradient", "cyan", 120),
    )
    transitions = (Transition("cut"), Transition("dissolve", 12), Transition("fade", 14), Transition("dissolve", 20))
    path = tmp_path_factory.mktemp("fastscan") / "long.mp4"
    gt = synth.render_video(path, shots, transitions, fps=24, size=(192, 108), seed=7)
    return path, gt


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_same_scenes_and_times_as_one_pass_with_fewer_frames_decoded(long_shots, detector):
    path, gt = long_shots
    cfg = SceneConfig(detector=detector)
    want, want_pts, splitter = _one_pass(path, cfg, gt.fps)
    scenes, pts, stats = detect_scenes_fast(path, DECODE, cfg, gt.fps)
    assert stats.fallback == ""  # the two-pass path ran
    assert scenes == want and np.array_equal(pts, want_pts)
    assert [(s.cut_in, s.cut_out) for s in scenes] == [
        ("start", "cut"), ("cut", "dissolve"), ("dissolve", "fade"), ("fade", "dissolve"), ("dissolve", "end")]
    # and it did less: the fast pass skipped frames, the refine step left the middles of the shots alone
    assert stats.sampled < 0.8 * stats.frames
    # ContentDetector's flash filter needs twice the minimum scene length of context on each side
    assert stats.refined < (0.75 if detector == "adaptive" else 0.9) * stats.frames
    assert 1 <= stats.ranges <= 4


def test_candidates_matter(long_shots):
    """With the candidate thresholds out of reach nothing is refined and every boundary is lost: the equality
    above is the refine step's work, not a property of the stitching."""
    path, gt = long_shots
    blind = FastScanConfig(cut_diff=1e9, dark_margin=-1e9, dissolve_frac=1e9)
    scenes, _, stats = detect_scenes_fast(path, DECODE, SceneConfig(), gt.fps, blind)
    assert stats.ranges == 0 and stats.refined == 0
    assert [(s.start, s.end) for s in scenes] == [(0, stats.frames)]


def test_random_renders_match_one_pass(tmp_path):
    for seed in (2, 5):
        program = synth.random_program(seed, n_shots=(4, 5), shot_s=(1.5, 3.0), size=(192, 108))
        synth.render_program(tmp_path / f"r{seed}.mp4", program)
        want, want_pts, _ = _one_pass(tmp_path / f"r{seed}.mp4", SceneConfig(), program.fps)
        scenes, pts, stats = detect_scenes_fast(tmp_path / f"r{seed}.mp4", DECODE, SceneConfig(), program.fps)
        assert stats.fallback == "", seed
        assert scenes == want and np.array_equal(pts, want_pts), seed


def test_min_gap_is_adaptive_detectors_minimum_scene_length():
    assert fastscan._min_gap({5, 10, 30, 35, 48, 60}, 18) == {30, 48}
    assert fastscan._min_gap({18}, 18) == {18}  # counted from the first frame, like the detector's first cut
    assert fastscan._min_gap(set(), 18) == set()


def test_ramp_walk_takes_in_the_gap_where_a_fade_ends():
    index = [0, 3, 6, 9, 12, 15]
    levels = np.array([100.0, 100.0, 80.0, 50.0, 5.0, 60.0])
    # darkening toward sample 4 by far more than fade_step per frame from sample 1 on; sample 0 -> 1 is flat
    assert fastscan._ramp(index, levels, 3, 4, 0.01) == (0, 5)
    assert fastscan._ramp(index, np.array([100.0, 100.0, 100.0, 100.0, 5.0, 100.0]), 3, 4, 0.01) == (2, 5)


def test_analysis_frames_bit_identical_to_iter_frames(shared_data):
    """Rotation flag (issue-134) and non-square pixels (issue-195): the refine step's frames are iter_frames'."""
    for name, count in (("pyscenedetect/issue-134-rotate.mp4", 12), ("pyscenedetect/issue-195-aspect-ratio.mp4", 12)):
        path = shared_data / name
        want = [f.rgb for _, f in zip(range(count), iter_frames(path, DECODE))]
        got = []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            scaler, to_rgb = av.video.reformatter.VideoReformatter(), av.video.reformatter.VideoReformatter()
            for frame in container.decode(stream):
                rot = display_rotation(frame, stream)
                got.append(fastscan._analysis_rgb(frame, stream, rot, DECODE.short_side, DECODE.interpolation,
                                                  scaler, to_rgb))
                if len(got) == count:
                    break
        assert [g.shape for g in got] == [w.shape for w in want], name
        assert all(np.array_equal(g, w) for g, w in zip(got, want)), name


def test_vfr_timeline_from_packets_and_scenes(shared_data, ground_truth):
    path = shared_data / "pyscenedetect/goldeneye-vfr-drop3.mp4"
    ticks, keyframes, tb, origin = fastscan._timeline(path)
    decoded = np.array([f.pts_s for f in iter_frames(path, DECODE)])
    assert np.array_equal(np.array([(t - origin) * tb for t in ticks]), decoded)
    assert keyframes[0] == 0
    scenes, pts, stats = detect_scenes_fast(path, DECODE, SceneConfig(), 16.05)
    assert stats.fallback == "" and stats.sampled < stats.frames
    assert [round(s.start_s, 3) for s in scenes[1:]] == ground_truth["pyscenedetect/goldeneye-vfr-drop3.mp4"][
        "cut_times_s"]
    want, want_pts, _ = _one_pass(path, SceneConfig(), 16.05)
    assert scenes == want and np.array_equal(pts, want_pts)


def test_stream_without_non_reference_frames_falls_back(shared_data):
    """issue-134-rotate.mp4 is all I/P: skipping non-reference frames saves nothing, so one pass runs."""
    path = shared_data / "pyscenedetect/issue-134-rotate.mp4"
    scenes, _, stats = detect_scenes_fast(path, DECODE, SceneConfig(), 23.976)
    assert "skips too little" in stats.fallback and stats.refined == stats.frames == 240
    assert [s.start for s in scenes[1:]] == [90, 210]
    # forced through the two-pass path (seek, rotation flag) it still gives the same scenes
    forced, _, st = detect_scenes_fast(path, DECODE, SceneConfig(), 23.976, FastScanConfig(min_skip_share=0.0))
    assert st.fallback == "" and forced == scenes


def test_minimum_scene_length_counts_across_the_stitched_cuts(tmp_path):
    """An 8-frame shot (< min_scene_s = 0.6 s): the one-pass AdaptiveDetector drops the second cut; the per-range
    splitters run without a minimum, so the stitched cuts must be filtered the same way."""
    shots = (Shot("circle", "red", "right", "checker", "blue", 60), Shot("star", "yellow", "up", "noise", "white", 8),
             Shot("square", "green", "left", "gradient", "purple", 60))
    path = tmp_path / "short.mp4"
    gt = synth.render_video(path, shots, (Transition("cut"), Transition("cut")), fps=24, size=(192, 108), seed=3)
    want, _, splitter = _one_pass(path, SceneConfig(), gt.fps)
    assert splitter.hard_cuts == [60]
    scenes, _, stats = detect_scenes_fast(path, DECODE, SceneConfig(), gt.fps)
    assert stats.fallback == "" and scenes == want


def test_context_of_a_range_is_enough_to_find_a_cut(long_shots):
    """The refine step decodes a candidate plus _context frames each side; that alone must show the cut."""
    path, gt = long_shots
    cut = next(t["start"] for t in gt.transitions if t["kind"] == "cut")
    ticks, keyframes, tb, origin = fastscan._timeline(path)
    ctx = fastscan._context(SceneSplitter(SceneConfig(), gt.fps), FastScanConfig())
    kind, cuts, _ = fastscan._refine(path, [(cut - ctx, cut + ctx)], ticks, keyframes, tb, origin, DECODE,
                                     SceneConfig(), gt.fps, ctx)
    assert cuts == {cut} and not any(kind)


def test_testvideo_cuts_fades_and_dissolve_match_one_pass(shared_data):
    path = shared_data / "pyscenedetect/testvideo.mp4"
    want, want_pts, _ = _one_pass(path, SceneConfig(), 29.97)
    scenes, pts, stats = detect_scenes_fast(path, DECODE, SceneConfig(), 29.97)
    assert stats.fallback == "" and stats.sampled < 0.5 * stats.frames
    assert scenes == want and np.array_equal(pts, want_pts)
    assert len(scenes) == 4


def test_broken_file_fails_like_the_one_pass_stage(long_shots, tmp_path):
    """FFmpeg errors inside the two passes hand over to the one-pass stage, so callers see its exception."""
    path, gt = long_shots
    broken = tmp_path / "cut.mp4"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # moov atom at the end: index lost
    with pytest.raises(Exception) as one:
        _one_pass(broken, SceneConfig(), gt.fps)
    with pytest.raises(Exception) as two:
        detect_scenes_fast(broken, DECODE, SceneConfig(), gt.fps)
    assert type(two.value) is type(one.value)


def test_split_stage_gives_the_same_clips_with_fast_scenes(tmp_path):
    """The build's split stage (in-process, no sandbox) makes identical clip spans either way."""
    from curate.probe import probe
    from curate.split import SplitConfig, analyse_and_cut
    from curate.synth import Shot, Transition, render_video

    path = tmp_path / "v.mp4"
    render_video(path, [Shot("circle", "red", "right", "checker", "blue", 60),
                        Shot("square", "yellow", "up", "noise", "purple", 60)],
                 [Transition("dissolve", 10)], fps=24, size=(160, 96), seed=3)
    row = dict(probe(str(path)), key="k" * 32)
    spans = {}
    for fast in (False, True):
        rows = analyse_and_cut(str(path), row, SplitConfig(fast_scenes=fast))
        spans[fast] = [(r["clip_id"], r["start_frame"], r["end_frame"], r["cut_in"], r["cut_out"]) for r in rows]
    assert spans[True] == spans[False] and len(spans[False]) == 2
