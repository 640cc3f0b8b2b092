"""Generation: from_pretrained round trip, every task through the one sampler with its given frames kept,
seeds, prompt expansion, errors before any compute, and the CLI's MP4 / PNG / contact sheet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from curate.media import contact_sheet, encode_mp4, read_media
from helpers import export_tiny_pipeline, synthetic_frames
from model.pipeline import TextToVideo, export_pipeline
from pipelines.generate import cli

pytestmark = pytest.mark.timeout(300)
W, H = 32, 48
STEPS = 2


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):  # off the zero init (nudged), so the velocity depends on everything
    return export_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipeline", latent_scale=0.7, latent_shift=0.1,
                                extra={"note": "test"})


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    return TextToVideo.from_pretrained(pipe_dir)


def clip(seed: int, frames: int) -> np.ndarray:
    return synthetic_frames(seed, frames, 40, 40)  # not the output size: given media are resized and cropped


def test_from_pretrained_round_trip(pipe_dir, pipe):
    meta = json.loads((pipe_dir / "pipeline.json").read_text())
    assert meta["dit"]["hidden"] == 64 and meta["vae"]["z_channels"] == 16 and meta["text"]["max_length"] == 32
    assert pipe.latent_scale == 0.7 and pipe.latent_shift == 0.1 and pipe.text_cfg.max_length == 32
    for name, module in (("dit", pipe.dit), ("vae", pipe.vae)):
        saved = load_file(str(pipe_dir / f"{name}.safetensors"))
        assert saved.keys() == module.state_dict().keys()
        assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items())
    with pytest.raises(FileNotFoundError, match="pipeline.json"):
        TextToVideo.from_pretrained(pipe_dir.parent)


def test_the_sampler_keeps_the_schedule_shift_the_dit_trained_with(pipe_dir, pipe, tmp_path):
    assert json.loads((pipe_dir / "pipeline.json").read_text())["time_shift"] == 1.0
    assert pipe.flow.cfg.shift_scale == 1.0
    shifted = export_pipeline(tmp_path / "shifted", pipe.dit, pipe.vae, pipe.text_cfg, time_shift=3.0)
    assert TextToVideo.from_pretrained(shifted).flow.cfg.shift_scale == 3.0
    meta = json.loads((shifted / "pipeline.json").read_text())  # a folder from before the option
    del meta["time_shift"]
    (shifted / "pipeline.json").write_text(json.dumps(meta))
    assert TextToVideo.from_pretrained(shifted).flow.cfg.shift_scale == 1.0
    a = pipe("a red circle", frames=5, size=(W, H), steps=STEPS, seed=0)
    b = TextToVideo(pipe.dit, pipe.vae, pipe.text_cfg, pipe.latent_scale, pipe.latent_shift, time_shift=3.0)(
        "a red circle", frames=5, size=(W, H), steps=STEPS, seed=0)
    assert not np.array_equal(a, b)  # the scale reaches the sampler
    # 0 is a DiT trained with no shift at all: the folder says so and the sampler walks an even grid
    flat = TextToVideo.from_pretrained(export_pipeline(tmp_path / "flat", pipe.dit, pipe.vae, pipe.text_cfg,
                                                       time_shift=0.0))
    assert flat.flow.cfg.shift is False and pipe.flow.cfg.shift is True
    with pytest.raises(ValueError, match="time_shift"):
        TextToVideo(pipe.dit, pipe.vae, pipe.text_cfg, time_shift=-1.0)
    # an override (eval-text's sample_shift) moves only the grid: same weights, b's output again
    other = TextToVideo.from_pretrained(pipe_dir)
    other.set_time_shift(3.0)
    assert other.time_shift == 3.0 and other.flow.model is other.dit
    np.testing.assert_array_equal(other("a red circle", frames=5, size=(W, H), steps=STEPS, seed=0), b)
    other.set_time_shift(0.0)
    assert other.flow.cfg.shift is False
    with pytest.raises(ValueError, match="time_shift"):
        other.set_time_shift(-0.5)


TASKS = {
    "t2v": dict(frames=9),
    "t2i": dict(frames=1),
    "i2v": dict(frames=9, image=clip(1, 1)[0]),
    "extend_forward": dict(frames=13, video=clip(2, 7)),  # 7 frames -> its last 5 (2 latents) lead the output
    "extend_backward": dict(frames=13, video_b=clip(3, 5)),
    "keyframes": dict(frames=13, keyframes={0: clip(4, 1)[0], 12: clip(5, 1)[0]}),
    "transition": dict(frames=13, video=clip(6, 9), video_b=clip(7, 9)),
}
# what each task gives: (latent positions, the clip whose latents they are: the given frames at their output
# indices, the other frames holding given ones; model/conditioning.py's context_clip)
GIVEN = {
    "t2v": [], "t2i": [],
    "i2v": [([0], lambda a: a["image"][None])],
    "extend_forward": [([0, 1], lambda a: a["video"][-5:])],
    "extend_backward": [([3], lambda a: np.concatenate([a["video_b"][[0] * 9], a["video_b"][:4]]))],
    "keyframes": [([0, 3], lambda a: np.stack([a["keyframes"][0]] * 9 + [a["keyframes"][12]] * 4))],
    "transition": [([0, 3], lambda a: np.concatenate([a["video"][[-1] * 9], a["video_b"][:4]]))],
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_runs_and_keeps_its_given_frames(pipe, task):
    args = TASKS[task]
    latents, cond = pipe.sample_latents("a red square", size=(W, H), steps=STEPS, cfg=3.0, seed=1, **args)
    t_lat = 1 + (args["frames"] - 1) // 4
    assert latents.shape == (1, 16, t_lat, H // 8, W // 8)
    given = [p for positions, _ in GIVEN[task] for p in positions]
    assert cond.mask[0].nonzero().flatten().tolist() == given
    for positions, pick in GIVEN[task]:
        want = pipe.encode(pick(args), (W, H))[:, :, positions]  # (1, C, len(positions), H/8, W/8)
        assert torch.equal(latents[:, :, positions], cond.reference[:, :, positions])  # pinned exactly
        torch.testing.assert_close(latents[:, :, positions], want, atol=1e-5, rtol=0)  # a causal prefix: rounding
    free = [i for i in range(t_lat) if i not in given]
    assert not torch.allclose(latents[:, :, free], cond.reference[:, :, free])  # the rest was generated
    frames = pipe.decode(latents)
    assert frames.dtype == np.uint8 and frames.shape == (args["frames"], H, W, 3)


def test_edit_stays_near_its_input_at_low_strength(pipe):
    video = clip(8, 9)
    ref = pipe.encode(video, (W, H))
    near, cond = pipe.sample_latents("a red square", video=video, strength=0.2, frames=9, size=(W, H), steps=STEPS)
    far, _ = pipe.sample_latents("a red square", video=video, strength=1.0, frames=9, size=(W, H), steps=STEPS)
    assert cond.strength == 0.2 and torch.equal(cond.reference, ref) and cond.mask.sum() == 0
    assert (near - ref).abs().mean() < 0.5 * (far - ref).abs().mean()


def test_same_seed_same_frames_other_seed_differs(pipe):
    kw = dict(frames=5, size=(W, H), steps=STEPS, cfg=2.0)
    a, b = pipe("waves at dusk", seed=3, **kw), pipe("waves at dusk", seed=3, **kw)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, pipe("waves at dusk", seed=4, **kw))


def test_a_batch_gives_what_one_prompt_at_a_time_gives(pipe):
    """Each sample keeps the noise of its own seed; captions of different lengths are padded and masked, so the
    batch differs from the single calls by float rounding only (and a swapped seed shows it is not the same)."""
    prompts, seeds = ["a red star", "a small blue square moves slowly to the left", "waves"], [3, 8, 5]
    kw = dict(frames=5, size=(W, H), steps=STEPS, cfg=2.0)
    batch = pipe.sample_batch(prompts, seeds, **kw)
    one = torch.cat([pipe.sample_latents(p, seed=s, **kw)[0] for p, s in zip(prompts, seeds)])
    assert batch.shape == one.shape and batch.shape[0] == 3
    torch.testing.assert_close(batch, one, atol=1e-4, rtol=1e-4)
    swapped = pipe.sample_batch(prompts, [8, 3, 5], **kw)
    assert (swapped[0] - one[0]).abs().mean() > 100 * (batch[0] - one[0]).abs().mean()
    frames = pipe.generate_batch(prompts, seeds, **kw)
    assert frames.shape == (3, 5, H, W, 3) and frames.dtype == np.uint8
    assert np.abs(frames[1].astype(int) - pipe(prompts[1], seed=8, **kw)).max() <= 1
    # the batched VAE entry points agree with the single ones
    clips = [clip(1, 5), clip(2, 5)]
    z = pipe.encode_batch(clips, (W, H))
    torch.testing.assert_close(z[1:], pipe.encode(clips[1], (W, H)), atol=1e-4, rtol=1e-4)
    assert np.abs(pipe.decode_batch(z)[0].astype(int) - pipe.decode(z[:1])).max() <= 1
    with pytest.raises(ValueError, match="one seed per prompt"):
        pipe.sample_batch(prompts, seeds[:2], **kw)


def test_expand_rewrites_the_prompt_before_encoding(pipe):
    seen = []

    def fake(prompt: str) -> str:
        seen.append(prompt)
        return "a long detailed description of a red square sliding left"

    pipe.expander = fake
    kw = dict(frames=5, size=(W, H), steps=STEPS, seed=0)
    expanded = pipe("red square", expand=True, **kw)
    assert seen == ["red square"]
    assert np.array_equal(expanded, pipe("a long detailed description of a red square sliding left", **kw))
    assert not np.array_equal(expanded, pipe("red square", **kw))


BAD = [
    (dict(frames=8), "1 \\+ 4k"),
    (dict(frames=0), "1 \\+ 4k"),
    (dict(size=(30, 48)), "multiples of 16"),
    (dict(size=(32, 8)), "multiples of 16"),
    (dict(steps=0), "steps"),
    (dict(strength=0.5), "needs an input"),
    (dict(strength=1.5, video=clip(0, 9)), "strength must be in"),
    (dict(strength=0.5, video=clip(0, 5), frames=9), "at least"),
    (dict(image=clip(0, 1)[0], video=clip(0, 5)), "choose one task"),
    (dict(image=clip(0, 1)[0], frames=1), "frames > 1"),
    (dict(keyframes={0: clip(0, 1)[0], 20: clip(0, 1)[0]}), "keyframe indices"),
    (dict(keyframes={1: clip(0, 1)[0], 3: clip(0, 1)[0]}), "share a latent frame"),
    (dict(video=clip(0, 5), video_b=clip(0, 5), frames=5), "transition needs"),
    (dict(video=clip(0, 5), frames=1), "extending a video"),
    (dict(image=np.zeros((4, 4))), "must be uint8"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_invalid_requests_fail_before_any_compute(pipe, monkeypatch, kwargs, message):
    def boom(*a, **k):
        raise AssertionError("computed before validating")

    monkeypatch.setattr(pipe.dit, "forward", boom)
    monkeypatch.setattr(pipe.vae, "encode", boom)
    monkeypatch.setattr(pipe.vae, "decode", boom)
    monkeypatch.setattr(pipe, "_text", boom)
    monkeypatch.setattr(pipe, "expander", boom)
    args = dict(frames=9, size=(W, H), steps=STEPS, expand=True)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe("a prompt", **args)


def test_cli_writes_mp4_png_and_contact_sheets(pipe_dir, tmp_path, capsys):
    from PIL import Image

    first = tmp_path / "first.png"
    Image.fromarray(clip(9, 1)[0]).save(first)
    out = tmp_path / "out" / "fox"
    code = cli(["a fox", "--model", str(pipe_dir), "--image", str(first), "--frames", "9", "--size", f"{W}x{H}",
                "--steps", "2", "--cfg", "2", "--seed", "5", "--fps", "12", "--out", str(out)])
    assert code == 0
    video = read_media(out.with_suffix(".mp4"))
    assert video.shape == (9, H, W, 3)
    assert Image.open(tmp_path / "out" / "fox_sheet.png").size == (4 * W, 2 * H)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["frames"] == 9 and report["size"] == [W, H]

    still = tmp_path / "out" / "still"
    assert cli(["a fox", "--model", str(pipe_dir), "--frames", "1", "--size", f"{W}x{H}", "--steps", "2",
                "--out", str(still)]) == 0
    assert np.asarray(Image.open(still.with_suffix(".png"))).shape == (H, W, 3)
    assert not still.with_suffix(".mp4").exists()

    bad = tmp_path / "out" / "bad"
    assert cli(["a fox", "--model", str(pipe_dir), "--size", "30x32", "--out", str(bad)]) == 2
    assert "multiples of 16" in capsys.readouterr().err and not list((tmp_path / "out").glob("bad*"))


def test_cli_checks_the_request_once(pipe_dir, tmp_path, monkeypatch):
    """The CLI leaves the request check to the pipeline: one ``check_request`` per generation, and a bad request
    still fails with exit 2 through that one check."""
    import model.pipeline

    calls = []
    check = model.pipeline.check_request
    monkeypatch.setattr(model.pipeline, "check_request", lambda *a, **k: calls.append(a) or check(*a, **k))
    out = tmp_path / "once"
    assert cli(["a fox", "--model", str(pipe_dir), "--frames", "1", "--size", f"{W}x{H}", "--steps", "1",
                "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0][:3] == (1, (W, H), 1)
    assert cli(["a fox", "--model", str(pipe_dir), "--frames", "4", "--size", f"{W}x{H}", "--out", str(out)]) == 2
    assert len(calls) == 2


def test_cli_extends_a_video_file(pipe_dir, tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(encode_mp4(clip(10, 9)))
    out = tmp_path / "ext"
    assert cli(["more", "--model", str(pipe_dir), "--video", str(src), "--frames", "13", "--size", f"{W}x{H}",
                "--steps", "1", "--out", str(out)]) == 0
    assert read_media(out.with_suffix(".mp4")).shape == (13, H, W, 3)


def test_contact_sheet_picks_evenly_spaced_frames():
    frames = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(9)])
    sheet = contact_sheet(frames, columns=3, rows=1)
    assert sheet.shape == (2, 9, 3) and [sheet[0, 3 * c, 0] for c in range(3)] == [0, 4, 8]


def test_cli_answers_user_mistakes_in_one_line(pipe_dir, tmp_path, capsys, monkeypatch):
    """A missing GPU, an image given as --video and a truncated weights file each give exit 2 and one line on
    stderr that names the fix, no traceback, and write nothing."""
    from PIL import Image

    out = tmp_path / "out" / "x"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli(["a fox", "--model", str(pipe_dir), "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--device cpu" in err and "Traceback" not in err
    image = tmp_path / "frame.png"
    Image.fromarray(clip(3, 1)[0]).save(image)
    for flag in ("--video", "--video-b"):
        assert cli(["a fox", "--model", str(pipe_dir), flag, str(image), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{flag} takes a video" in err and "--image" in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    import shutil

    for name in ("dit", "vae"):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(pipe_dir, broken)
        weights = broken / f"{name}.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated mid-tensor
        assert cli(["a fox", "--model", str(broken), "--size", f"{W}x{H}", "--frames", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{name}.safetensors" in err and "corrupt or truncated" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_defaults_to_the_trained_size_and_frames_with_a_note(pipe, tmp_path, capsys):
    trained = export_pipeline(tmp_path / "trained", pipe.dit, pipe.vae, pipe.text_cfg,
                              extra={"train_size": 32, "train_frames": 5})
    out = tmp_path / "out" / "d"
    assert cli(["a fox", "--model", str(trained), "--steps", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["size"] == [32, 32]
    assert read_media(out.with_suffix(".mp4")).shape == (5, 32, 32, 3)
    assert "--frames 5 --size 32x32 (the size the pipeline was trained at)" in captured.err
    # what the user gives wins, and no note is printed for it
    assert cli(["a fox", "--model", str(trained), "--steps", "1", "--size", "32x48", "--frames", "1",
                "--out", str(out)]) == 0
    assert "tessera generate: using" not in capsys.readouterr().err
    assert read_media(out.with_suffix(".png")).shape == (1, 48, 32, 3)
