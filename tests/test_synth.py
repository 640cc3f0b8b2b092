"""The synthetic renderer: deterministic, exact ground truth, and frames that really show what it says."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from curate import synth
from curate.synth import COLORS, GroundTruth, Program, Shot, Transition

SIZE = (160, 96)


def _program() -> Program:
    shots = (
        Shot("circle", "red", "left", "checker", "blue", 20),
        Shot("star", "yellow", "rotate", "gradient", "purple", 18),
        Shot("square", "green", "grow", "noise", "white", 16),
        Shot("triangle", "blue", "down", "checker", "orange", 15),
    )
    transitions = (Transition("cut"), Transition("dissolve", 8), Transition("fade", 10))
    return Program(shots, transitions, fps=24, size=SIZE, seed=7)


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_timeline_ground_truth_is_exact():
    frames, gt = synth.render_frames(_program())
    assert frames.shape == (20 + 18 + 8 + 16 + 10 + 15, SIZE[1], SIZE[0], 3)
    assert gt.num_frames == len(frames)
    assert [(s["start"], s["end"]) for s in gt.shots] == [(0, 20), (20, 38), (46, 62), (72, 87)]
    assert [(t["kind"], t["start"], t["end"]) for t in gt.transitions] == [
        ("cut", 20, 20), ("dissolve", 38, 46), ("fade", 62, 72)]
    assert gt.shot_starts == [20, 46, 72]
    assert gt.transition_frames == set(range(38, 46)) | set(range(62, 72))
    assert gt.shot_of_frame(45) is None and gt.shot_of_frame(46) == 2
    assert gt.shots[0]["caption"] == "a red circle moves left over a blue checkered background"
    assert gt.shots[1]["caption"] == "a yellow star rotates over a purple gradient background"
    assert GroundTruth.from_json(gt.to_json()) == gt


def test_frames_show_the_shots_and_transitions():
    program = _program()
    frames, gt = synth.render_frames(program)
    f = frames.astype(np.float32)
    # each clean frame contains its shape, filled with exactly its named colour
    for i, shot in enumerate(gt.shots):
        for k in range(shot["start"], shot["end"]):
            own = np.all(frames[k] == COLORS[shot["color"]], axis=-1).mean()
            assert own > 0.01, (i, k, own)
    # the dissolve's middle frame is the blend of the last clean frame of shot 1 and first of shot 2 (motion aside)
    mid = f[41]
    blend = (f[37] + f[46]) / 2
    assert np.abs(mid - blend).mean() < 0.3 * np.abs(f[37] - f[46]).mean()
    # fade frames are darker than the shot they show (A then B), the middle ones (nearly) black
    levels = f.mean(axis=(1, 2, 3))
    assert np.all(levels[62:67] < levels[61]) and np.all(levels[67:72] < levels[72])
    assert np.all(np.diff(levels[62:67]) < 0) and np.all(np.diff(levels[67:72]) > 0)
    assert levels[62:72].min() < 15
    # a hard cut changes a lot of pixels in one step
    assert np.abs(f[20] - f[19]).mean() > 5 * np.abs(f[19] - f[18]).mean()


def test_render_is_deterministic_and_decodes_to_truth(tmp_path):
    program = _program()
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    gt = synth.render_program(a, program)
    synth.render_program(b, program)
    synth.render_program(c, Program(program.shots, program.transitions, 24, SIZE, seed=8))
    frames, _ = synth.render_frames(program)
    assert np.array_equal(frames, synth.render_frames(program)[0])  # the pixels are deterministic
    planes = [synth.rgb_to_yuv420p(f) for f in frames]
    assert all(np.array_equal(p, synth.rgb_to_yuv420p(f.copy())) for p, f in zip(planes, frames))  # so is the input
    # The bitstream is libx264's to reproduce (a CI host once gave other bytes for one program, swscale then
    # made the planes), so the files are held to the pictures: both copies decode to the truth, and to each
    # other within a level.
    da, db, dc = _decode(a).astype(np.float32), _decode(b).astype(np.float32), _decode(c).astype(np.float32)
    assert da.shape == db.shape == frames.shape  # every frame comes back, none added or dropped
    assert np.abs(da - db).mean(axis=(1, 2, 3)).max() < 1.0
    assert np.abs(dc - da).mean() > 5.0  # another seed: another texture/placement
    assert GroundTruth.from_json(a.with_suffix(".json").read_text()) == gt
    err = np.abs(da - frames).mean(axis=(1, 2, 3))
    assert err.max() < 6.0  # lossy but close: frame k of the file is frame k of the truth


def test_rgb_to_yuv420p_is_bt601_limited_range():
    def one(rgb):
        return synth.rgb_to_yuv420p(np.broadcast_to(np.array(rgb, np.uint8), (4, 6, 3)).copy())

    for rgb, yuv in [((0, 0, 0), (16, 128, 128)), ((255, 255, 255), (235, 128, 128)),
                     ((255, 0, 0), (81, 90, 240)), ((0, 0, 255), (41, 240, 110))]:
        out = one(rgb)
        assert out.shape == (6, 6)
        assert np.all(out[:4] == yuv[0]) and np.all(out[4:5] == yuv[1]) and np.all(out[5:] == yuv[2]), (rgb, out)
    # chroma is the 2x2 block mean: a block of two red and two blue pixels gets the mean of their Cb
    img = np.zeros((2, 2, 3), np.uint8)
    img[0] = (255, 0, 0)
    img[1] = (0, 0, 255)
    out = synth.rgb_to_yuv420p(img)
    assert out[2, 0] == round((90 + 240) / 2) and list(out[:2].ravel()) == [81, 81, 41, 41]
    # and a decoder given our planes gets the picture back
    rgb = synth.render_frames(_program())[0][30]
    frame = av.VideoFrame.from_ndarray(synth.rgb_to_yuv420p(rgb), format="yuv420p")
    assert np.abs(frame.to_ndarray(format="rgb24").astype(int) - rgb).mean() < 4.0


def test_random_program_neighbours_differ_and_is_seeded():
    p1, p2 = synth.random_program(11), synth.random_program(11)
    assert p1 == p2
    assert synth.random_program(12) != p1
    for prog in (synth.random_program(s) for s in range(20)):
        assert len(prog.transitions) == len(prog.shots) - 1
        for x, y in zip(prog.shots, prog.shots[1:]):
            assert {x.color, x.bg_color}.isdisjoint({y.color, y.bg_color})
            assert x.background != y.background


def test_render_samples_writes_sidecars(tmp_path):
    paths = synth.render_samples(tmp_path, n_videos=2, seed=3, size=(128, 72))
    assert [p.name for p in paths] == ["sample_000.mp4", "sample_001.mp4"]
    for p in paths:
        gt = GroundTruth.from_json(p.with_suffix(".json").read_text())
        lines = p.with_suffix(".txt").read_text().splitlines()
        assert lines == [s["caption"] for s in gt.shots]
        assert len(_decode(p)) == gt.num_frames


def test_invalid_programs_are_rejected():
    with pytest.raises(ValueError):
        Shot("circle", "red", "left", "checker", "red", 10)  # invisible shape
    with pytest.raises(ValueError):
        Shot("blob", "red", "left", "checker", "blue", 10)
    with pytest.raises(ValueError):
        Transition("cut", 3)
    with pytest.raises(ValueError):
        Transition("dissolve", 1)
    with pytest.raises(ValueError):
        synth.render_frames(Program(_program().shots, (Transition("cut"),), 24, SIZE, 0))


# ------------------------------------------------------------------------------ text-faithfulness corpus


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_split_holds_out_every_colour_and_shape_at_least_twice(seed):
    split = synth.ComboSplit.default(seed)
    colors = [c for c, _ in split.heldout]
    shapes = [s for _, s in split.heldout]
    assert len(set(split.heldout)) == len(split.heldout) == 18
    assert set(colors) == set(COLORS) and min(colors.count(c) for c in COLORS) >= 2
    assert set(shapes) == set(synth.SHAPES) and min(shapes.count(s) for s in synth.SHAPES) >= 2
    for c in COLORS:  # every colour is still seen with most shapes, every shape with most colours
        assert sum(not split.is_heldout(c, s) for s in synth.SHAPES) == 4
    assert len(split.triples(True)) == 18 * 4 and len(split.triples(False)) == 36 * 4
    assert synth.ComboSplit.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    assert split.reachable() == []
    assert synth.ComboSplit.default(seed + 10).heldout != split.heldout  # the seed matters


def test_reachable_finds_a_training_pair_the_detector_would_read_as_held_out():
    split = synth.ComboSplit(heldout=(("red", "diamond"), ("orange", "star")))
    confusions = {"color": (("pink", "orange"),), "shape": (("square", "diamond"),)}
    assert sorted(split.reachable(confusions)) == [(("pink", "star"), ("orange", "star")),
                                                   (("red", "square"), ("red", "diamond"))]
    closed = synth.ComboSplit(heldout=(("red", "diamond"), ("red", "square")))
    assert closed.reachable(confusions) == []  # the neighbour is held out too: no training clip reaches it
    # the default split honours the confusions it is given (a square read as a diamond: hold both or neither)
    split = synth.ComboSplit.default(0, confusions=confusions)
    assert split.reachable(confusions) == []
    for c in COLORS:
        assert not split.is_heldout(c, "diamond") or split.is_heldout(c, "square")


def test_no_held_out_pair_is_one_measured_confusion_from_a_training_pair():
    """The detector's confusions measured now, on renders of the whole training distribution (every colour, shape
    and motion; 64 px, clean and through ``detect.degrade``), not a list typed by hand: the default splits keep
    every held-out pair out of their reach, and what was measured is among the confusions the split was built
    to avoid (``synth.DETECTOR_CONFUSIONS``)."""
    from curate import detect

    results = [detect.validate(n=108, size=(64, 64), frames=9, seed=5, degrade=degraded, motions=synth.MOTIONS)
               for degraded in (False, True)]
    measured = detect.confusions(*results)
    assert sum(r["n"] for r in results) == 216
    assert all(r["accuracy"]["color"] == 1.0 for r in results)
    for seed in range(3):
        assert synth.ComboSplit.default(seed).reachable(measured) == []
    for attr, pairs in measured.items():
        assert pairs <= set(synth.DETECTOR_CONFUSIONS[attr]), attr


def test_phrasings_say_the_same_shot_in_words_no_training_caption_uses():
    shot = Shot("circle", "red", "up", "checker", "blue", 17)
    assert synth.phrase(shot) == shot.caption == "a red circle moves up over a blue checkered background"
    assert synth.phrase(shot, "reordered") == "over a blue checkered background, a red circle moves up"
    assert synth.phrase(shot, "synonyms") == "a crimson disc drifting upward across an azure checkerboard backdrop"
    assert synth.phrase(shot, "distractor").startswith(shot.caption + ", ")
    with pytest.raises(ValueError, match="phrasing"):
        synth.phrase(shot, "shouted")
    captions = {Shot(s, c, m, b, bg, 5).caption for c in COLORS for s in synth.SHAPES for m in synth.MOTIONS
                for b in synth.BACKGROUNDS for bg in COLORS if bg != c}
    words = {w for caption in captions for w in caption.split()}
    for c in COLORS:
        for s in synth.SHAPES:
            for m in synth.MOTIONS:
                one = Shot(s, c, m, "noise", "white" if c != "white" else "red", 5)
                others = [synth.phrase(one, p) for p in synth.PHRASINGS if p != "train"]
                assert not set(others) & captions  # only "train" is a training caption
                synonym = synth.phrase(one, "synonyms")
                assert c not in synonym.split() and m not in synonym.split()  # other words for the attributes
                assert not {w for w in synonym.split() if w not in ("a", "an")} <= words
