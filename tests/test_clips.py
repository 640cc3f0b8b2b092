"""Clip planning and frame-exact cutting (re-encode and stream copy), on synthetic renders and real files."""

from __future__ import annotations

import io
from dataclasses import replace

import av
import numpy as np
import pytest

from curate import synth
from curate.clips import ClipConfig, ClipSpan, RejectedClip, _even_size, cut_clip, cut_clips, plan_clips
from curate.frames import DecodeConfig, iter_frames
from curate.scenes import Scene, SceneConfig, SceneSplitter
from curate.synth import Shot, Transition


def _decode(mp4: bytes) -> tuple[np.ndarray, np.ndarray]:
    with av.open(io.BytesIO(mp4)) as c:
        stream = c.streams.video[0]
        frames = [(f.to_ndarray(format="rgb24"), float(f.pts * stream.time_base)) for f in c.decode(stream)]
    return np.stack([f for f, _ in frames]), np.array([t for _, t in frames])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _scene(start, end, fps=24.0, cut_in="cut", cut_out="cut"):
    return Scene(start, end, start / fps, end / fps, cut_in, cut_out)


# ------------------------------------------------------------------------------------------ planning


def test_plan_windows_short_scenes_and_trim():
    cfg = ClipConfig(min_s=2.0, max_s=15.0, margin_frames=0)
    scenes = [_scene(0, 40), _scene(40, 40 + 24 * 40, cut_out="fade"), _scene(1000, 1100, cut_in="dissolve")]
    spans = plan_clips(scenes, cfg, 24.0)
    assert all(s.scene_index != 0 for s in spans)  # 40 frames = 1.67 s < min_s
    long = [s for s in spans if s.scene_index == 1]
    assert len(long) == 3  # 40 s -> 3 equal windows of 13.3 s, not 15 + 15 + 10
    assert long[0].start == 40 and long[-1].end == 1000
    assert all(a.end == b.start for a, b in zip(long, long[1:]))
    assert all(cfg.max_s / 2 < s.end_s - s.start_s <= cfg.max_s for s in long)
    assert [(s.cut_in, s.cut_out) for s in long] == [("cut", "window"), ("window", "window"), ("window", "fade")]
    assert [s.window_index for s in long] == [0, 1, 2]
    (last,) = [s for s in spans if s.scene_index == 2]
    assert (last.start, last.end, last.cut_in) == (1000, 1100, "dissolve")
    trimmed = plan_clips(scenes, ClipConfig(trim_frames=3, margin_frames=0), 24.0)
    assert trimmed[-1].start == 1003 and trimmed[-1].end == 1097


def test_margin_keeps_clips_clear_of_detected_boundaries_not_of_the_file_ends():
    scenes = [_scene(0, 100, cut_in="start"), _scene(100, 200, cut_in="cut", cut_out="dissolve"),
              _scene(210, 300, cut_in="dissolve", cut_out="end")]
    spans = plan_clips(scenes, ClipConfig(min_s=1.0, max_s=15.0), 24.0)  # default margin: 2 frames
    assert [(s.start, s.end) for s in spans] == [(0, 98), (102, 198), (212, 300)]
    spans = plan_clips(scenes, ClipConfig(min_s=1.0, max_s=15.0, margin_frames=5, trim_frames=1), 24.0)
    assert [(s.start, s.end) for s in spans] == [(1, 94), (106, 194), (216, 299)]
    with pytest.raises(ValueError):
        ClipConfig(margin_frames=-1)


def test_suspect_spans_split_a_scene_and_a_scene_they_empty_is_reported():
    """The purity guard's spans cut a scene like a detected transition (margin on both sides); a scene left with
    no part long enough is reported as rejected, and scenes without spans plan as before."""
    cfg = ClipConfig(min_s=1.0, max_s=15.0)  # default margin: 2 frames
    split = replace(_scene(0, 200, cut_in="start", cut_out="cut"), suspect=((90, 100),))
    rejected: list[RejectedClip] = []
    spans = plan_clips([split], cfg, 24.0, rejected=rejected)
    assert [(s.start, s.end, s.cut_in, s.cut_out) for s in spans] == [(0, 88, "start", "suspect"),
                                                                        (102, 198, "suspect", "cut")]
    assert [s.window_index for s in spans] == [0, 1] and all(s.scene_index == 0 for s in spans)
    assert spans[1].start_s == pytest.approx(102 / 24.0) and spans[0].end_s == pytest.approx(88 / 24.0)
    assert rejected == []
    # a 60-frame scene (2.5 s) split in its middle: neither side reaches min_s = 2 s, the scene is reported
    short = replace(_scene(300, 360), suspect=((325, 335),))
    plain = _scene(400, 460)
    spans = plan_clips([short, plain], ClipConfig(min_s=2.0, max_s=15.0, margin_frames=0), 24.0, rejected=rejected)
    assert [(s.start, s.end, s.scene_index) for s in spans] == [(400, 460, 1)]
    assert rejected == [RejectedClip(300, 360, 0, "transition-suspect")]
    # without the spans the same scene gives its clip
    assert len(plan_clips([replace(short, suspect=())], ClipConfig(min_s=2.0, max_s=15.0, margin_frames=0),
                          24.0)) == 1


def test_plan_uses_pts_on_vfr():
    # 60 frames whose gaps double half-way: 30 * 0.04 + 30 * 0.2 = 7.2 s; interpolating at 25 fps says 2.4 s
    pts = np.concatenate([np.arange(30) * 0.04, 1.2 + np.arange(30) * 0.2])
    scenes = [Scene(0, 60, 0.0, 7.2, "start", "end")]
    spans = plan_clips(scenes, ClipConfig(min_s=1.0, max_s=3.0), 25.0, pts)
    assert all(s.end_s - s.start_s <= 3.0 for s in spans)
    assert spans[0].start_s == 0.0 and spans[-1].end_s == 7.2
    assert all(s.start_s == pts[s.start] for s in spans)


def test_config_and_size_rules():
    with pytest.raises(ValueError):
        ClipConfig(min_s=8.0, max_s=15.0)  # a 15.1 s scene would split into two 7.55 s windows < min_s
    assert _even_size(1281, 721, None) == (1280, 720, False)  # native odd: crop the last column/row
    assert _even_size(1920, 1080, 360) == (640, 360, True)
    assert _even_size(704, 577, 100) == (122, 100, True)  # scaled sides round to the nearest even number
    assert _even_size(320, 180, 360) == (320, 180, False)  # never upscaled


# ------------------------------------------------------------------------------------------- cutting


def test_counter_clips_are_frame_exact(shared_data):
    path = shared_data / "pyscenedetect/counter.mp4"
    source = [f.rgb for f in iter_frames(path, DecodeConfig(short_side=2000))]  # native size
    pts = np.array([f.pts_s for f in iter_frames(path, DecodeConfig(short_side=90))])
    spans = [ClipSpan(3, 9, pts[3], pts[9], 0, 0), ClipSpan(12, 25, pts[12], pts[25], 1, 0),
             ClipSpan(25, 30, pts[25], 3.0, 2, 0)]
    results = cut_clips(path, spans, pts, ClipConfig(allow_copy=False))
    for span, res in zip(spans, results):
        assert not isinstance(res, Exception), res
        assert res.method == "reencode" and res.num_frames == span.num_frames
        assert (res.width, res.height) == (1920, 1080) and res.fps == pytest.approx(10.0)
        frames, times = _decode(res.mp4)
        assert len(frames) == span.num_frames
        np.testing.assert_allclose(times - times[0], pts[span.start:span.end] - pts[span.start], atol=1e-3)
        for k, frame in enumerate(frames):
            scores = [_psnr(frame[::4, ::4], s[::4, ::4]) for s in source]
            assert int(np.argmax(scores)) == span.start + k  # shows the number of the right source frame
            assert scores[span.start + k] > 35


def test_copy_when_keyframe_aligned_else_reencode(tmp_path):
    shots = (Shot("circle", "red", "left", "checker", "blue", 40), Shot("star", "yellow", "up", "noise", "purple", 40))
    path = tmp_path / "two.mp4"
    synth.render_video(path, shots, (Transition("cut"),), size=(160, 96), seed=2)
    with av.open(str(path)) as c:
        keys = sorted(int(round(float(p.pts * p.time_base) * 24)) for p in c.demux(video=0) if p.is_keyframe)
    assert 40 in keys  # x264 puts an IDR frame on the hard cut
    pts = np.arange(80) / 24.0
    span_copy = ClipSpan(40, 80, pts[40], 80 / 24, 1, 0)
    span_mid = ClipSpan(45, 80, pts[45], 80 / 24, 1, 0)
    copied, reenc = cut_clips(path, [span_copy, span_mid], pts, ClipConfig())
    assert copied.method == "copy" and reenc.method == "reencode"
    a, _ = _decode(copied.mp4)
    b, _ = _decode(reenc.mp4)
    assert len(a) == 40 and len(b) == 35
    assert _psnr(a[5:].astype(np.float64), b.astype(np.float64)) > 35  # same frames either way
    forced = cut_clip(path, span_copy, pts, ClipConfig(allow_copy=False))
    assert forced.method == "reencode" and forced.num_frames == 40


def test_an_intra_only_source_gives_a_clip_with_one_keyframe(tmp_path):
    """Every frame of an MJPEG (ProRes, DNxHD) source is an intra picture, and a decoded frame carries its type;
    libx264 obeys a frame's type, so passed on it would make every frame of the clip a keyframe (~3.5x the bytes
    here). The encoder picks the types: one IDR, then predicted frames, the same pictures."""
    import media

    path = tmp_path / "intra.avi"
    media.write_video(path, media.pattern_frames(90, 320, 240), 30.0, codec="mjpeg", pix_fmt="yuvj420p")
    with av.open(str(path)) as c:
        assert all(p.is_keyframe for p in c.demux(video=0) if p.size)  # the source: intra only
    pts = np.arange(90) / 30.0
    res = cut_clip(path, ClipSpan(0, 80, 0.0, pts[80], 0, 0), pts, ClipConfig())
    assert res.method == "reencode" and res.num_frames == 80
    with av.open(io.BytesIO(res.mp4)) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert len(keys) == 80 and keys[0] and sum(keys) == 1
    frames, _ = _decode(res.mp4)
    source = [f.rgb for f in iter_frames(path, DecodeConfig(short_side=240))]
    assert min(_psnr(a.astype(np.float64), b.astype(np.float64)) for a, b in zip(frames, source)) > 30


def test_pipeline_clips_never_hold_another_shot(tmp_path):
    """detect -> plan -> cut on a render with every transition kind; each clip frame is matched back to the
    rendered truth (nearest frame) and to its shot's colours."""
    program = synth.random_program(5, n_shots=(4, 4), shot_s=(2.4, 3.0), size=(192, 108))
    assert {t.kind for t in program.transitions} == {"cut", "dissolve", "fade"}
    path = tmp_path / "prog.mp4"
    gt = synth.render_program(path, program)
    truth, _ = synth.render_frames(program)
    splitter, pts = SceneSplitter(SceneConfig(), program.fps), []
    for f in iter_frames(path, DecodeConfig(short_side=108)):
        splitter.push(f.rgb, f.pts_s)
        pts.append(f.pts_s)
    pts = np.array(pts)
    spans = plan_clips(splitter.finish(), ClipConfig(min_s=1.0, max_s=2.0), program.fps, pts)
    results = cut_clips(path, spans, pts, ClipConfig(min_s=1.0, max_s=2.0))
    assert len(spans) >= 4
    small_truth = truth[:, ::4, ::4].astype(np.float32)
    for span, res in zip(spans, results):
        assert not isinstance(res, Exception), res
        frames, _ = _decode(res.mp4)
        assert len(frames) == span.num_frames
        shot = gt.shot_of_frame(span.start)
        assert shot is not None and gt.shot_of_frame(span.end - 1) == shot
        color = synth.COLORS[gt.shots[shot]["color"]]
        for k, frame in enumerate(frames):
            err = np.abs(small_truth - frame[::4, ::4].astype(np.float32)).mean(axis=(1, 2, 3))
            assert gt.shot_of_frame(int(np.argmin(err))) == shot  # looks like its own shot, nothing else
            assert err[span.start + k] <= err.min() + 0.5  # and like the frame it should be (static shots tie)
            near = np.all(np.abs(frame.astype(int) - color) < 40, axis=-1).mean()
            assert near > 0.01  # the shot's shape, in its colour, is on screen


def test_rotated_source_is_cut_upright(shared_data):
    path = shared_data / "pyscenedetect/issue-134-rotate.mp4"
    analysis = list(iter_frames(path, DecodeConfig(short_side=144)))
    pts = np.array([f.pts_s for f in analysis])
    span = ClipSpan(100, 106, pts[100], pts[106], 1, 0)
    res = cut_clip(path, span, pts, ClipConfig(max_short_side=144), rotation=90)
    assert (res.width, res.height) == (144, 338) and res.method == "reencode"  # 544x1280 displayed, scaled
    frames, _ = _decode(res.mp4)
    assert frames.shape[0] == 6
    for k, frame in enumerate(frames):
        ref = analysis[100 + k].rgb
        assert _psnr(frame[: ref.shape[0], : ref.shape[1]], ref[: frame.shape[0], : frame.shape[1]]) > 20


def test_vfr_cut_selects_by_pts(shared_data):
    path = shared_data / "pyscenedetect/goldeneye-vfr-drop3.mp4"
    pts = np.array([f.pts_s for f in iter_frames(path, DecodeConfig(short_side=64))])
    spans = [ClipSpan(62, 80, pts[62], pts[80], 0, 0), ClipSpan(120, 141, pts[120], pts[141], 1, 0)]
    for span, res in zip(spans, cut_clips(path, spans, pts, ClipConfig(max_short_side=96))):
        _, times = _decode(res.mp4)
        np.testing.assert_allclose(times - times[0], pts[span.start:span.end] - pts[span.start], atol=1e-3)


def test_a_bad_span_fails_alone(tmp_path):
    path = tmp_path / "one.mp4"
    synth.render_video(path, (Shot("circle", "red", "left", "checker", "blue", 30),), (), size=(96, 64))
    pts = np.arange(30) / 24.0
    good = ClipSpan(2, 20, pts[2], pts[20], 0, 0)
    bad = ClipSpan(25, 40, pts[25], 40 / 24, 0, 1)  # runs past the end of the source
    out = cut_clips(path, [good, bad], pts, ClipConfig(allow_copy=False))
    assert out[0].num_frames == 18
    assert isinstance(out[1], Exception)
