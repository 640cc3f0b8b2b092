"""One Condition per task: mask positions and reference content; training task sampling; the sampler's
pinning of given frames (exact at t = 0) with an untrained network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.conditioning import (
    Condition,
    TaskMix,
    context_clip,
    edit,
    extend,
    given_condition,
    given_frames,
    held_positions,
    image_to_video,
    keyframes,
    latent_index,
    sample_training_condition,
    text_to_image,
    text_to_video,
    transition,
)
from model.dit import DiT, dit_config
from model.flow import Flow, denoise

C, H, W = 4, 4, 6


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors run fastest on one thread (tests/conftest.py)


def _video(t: int, seed: int = 0, b: int = 2) -> torch.Tensor:
    return torch.randn(b, C, t, H, W, generator=torch.Generator().manual_seed(seed))


def _given(cond: Condition) -> list[int]:
    """Given latent frame indices of sample 0."""
    return torch.nonzero(cond.mask[0]).flatten().tolist()


def test_text_to_video_and_image_give_nothing():
    cond = text_to_video(2, C, 5, H, W)
    assert cond.shape == (2, C, 5, H, W) and _given(cond) == [] and cond.strength == 1.0
    assert torch.count_nonzero(cond.reference) == 0
    img = text_to_image(3, C, H, W)
    assert img.shape == (3, C, 1, H, W) and not img.mask.any()


def test_image_to_video_gives_frame_zero():
    image = _video(1)
    cond = image_to_video(image, 5)
    assert cond.shape == (2, C, 5, H, W)
    assert cond.mask.tolist() == [[1, 0, 0, 0, 0]] * 2
    assert torch.equal(cond.reference[:, :, 0], image[:, :, 0])
    assert torch.count_nonzero(cond.reference[:, :, 1:]) == 0


def test_extend_forward_and_backward():
    video = _video(3)
    fwd = extend(video, 2, "forward")
    assert fwd.shape[2] == 5 and _given(fwd) == [0, 1, 2]
    assert torch.equal(fwd.reference[:, :, :3], video)
    bwd = extend(video, 2, "backward")
    assert _given(bwd) == [2, 3, 4]
    assert torch.equal(bwd.reference[:, :, 2:], video)
    assert torch.count_nonzero(bwd.reference[:, :, :2]) == 0
    with pytest.raises(ValueError, match="direction"):
        extend(video, 2, "sideways")


def test_keyframes_at_any_positions():
    frames = _video(3)
    cond = keyframes(frames, [6, 0, 3], 7)
    assert _given(cond) == [0, 3, 6]
    assert torch.equal(cond.reference[:, :, 6], frames[:, :, 0])
    assert torch.equal(cond.reference[:, :, 0], frames[:, :, 1])
    assert torch.equal(cond.reference[:, :, 3], frames[:, :, 2])
    with pytest.raises(ValueError, match="distinct positions"):
        keyframes(frames, [0, 0, 1], 7)
    with pytest.raises(ValueError, match="distinct positions"):
        keyframes(frames, [0, 1, 7], 7)


def test_transition_puts_tail_of_a_and_head_of_b():
    a, b = _video(5, seed=1), _video(4, seed=2)
    cond = transition(a, b, context=2, new_frames=3)
    assert cond.shape[2] == 7 and _given(cond) == [0, 1, 5, 6]
    assert torch.equal(cond.reference[:, :, :2], a[:, :, -2:])
    assert torch.equal(cond.reference[:, :, 5:], b[:, :, :2])
    assert torch.count_nonzero(cond.reference[:, :, 2:5]) == 0


def test_edit_keeps_the_whole_input_at_a_strength():
    video = _video(3)
    cond = edit(video, 0.4)
    assert _given(cond) == [] and cond.strength == 0.4
    assert torch.equal(cond.reference, video)
    assert edit(video, 0.0).strength == 0.0  # keeps the input (test_edit_strength_zero_keeps...)


def test_condition_validates_shapes():
    with pytest.raises(ValueError, match="mask"):
        Condition(torch.zeros(2, 4), torch.zeros(2, C, 3, H, W))


def test_channels_hold_masked_reference_and_mask():
    video = _video(4)
    cond = keyframes(video[:, :, :1], [2], 4)
    ch = cond.channels()
    assert ch.shape == (2, C + 1, 4, H, W)
    assert torch.equal(ch[:, :C, 2], video[:, :, 0])
    assert torch.count_nonzero(ch[:, :C, [0, 1, 3]]) == 0
    assert torch.equal(ch[:, C, :, 0, 0], cond.mask)
    assert (ch[:, C] == cond.mask[:, :, None, None]).all()


def test_pin_replaces_given_frames_with_the_noised_reference():
    video = _video(3)
    cond = image_to_video(video[:, :, :1], 3)
    x, noise = torch.randn(2, C, 3, H, W), torch.randn(2, C, 3, H, W)
    pinned = cond.pin(x, noise, 0.3)
    torch.testing.assert_close(pinned[:, :, 0], 0.7 * video[:, :, 0] + 0.3 * noise[:, :, 0])
    assert torch.equal(pinned[:, :, 1:], x[:, :, 1:])
    assert torch.equal(cond.pin(x, noise, 0.0)[:, :, 0], video[:, :, 0])


def test_latent_index_follows_the_causal_vae():
    assert [latent_index(p) for p in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_training_conditions_cover_every_task_and_are_seeded():
    latents = _video(6, b=400)
    cond = sample_training_condition(latents, torch.Generator().manual_seed(0))
    again = sample_training_condition(latents, torch.Generator().manual_seed(0))
    assert torch.equal(cond.mask, again.mask)
    assert torch.equal(cond.reference, latents * cond.mask[:, None, :, None, None])
    given = cond.mask.bool()
    assert (~given).any(dim=1).all()  # every sample has something to generate (so a loss)
    patterns = {tuple(row) for row in given.int().tolist()}
    assert (0,) * 6 in patterns  # text-to-video
    assert (1, 0, 0, 0, 0, 0) in patterns  # image-to-video (or a 1-frame extend)
    assert any(r[-1] == 1 and r[0] == 0 for r in patterns)  # extend backward
    assert any(r[0] == 1 and r[-1] == 1 and 0 in r for r in patterns)  # transition
    assert any(r[0] == 0 and r[-1] == 0 and 1 in r for r in patterns)  # keyframes in the middle
    t2v_share = (~given.any(dim=1)).float().mean()
    assert 0.4 < t2v_share < 0.6  # TaskMix default: text-to-video half the time


def test_training_task_mix_can_select_one_task():
    latents = _video(5, b=50)
    only_i2v = TaskMix(0, 1, 0, 0, 0, 0)
    cond = sample_training_condition(latents, torch.Generator().manual_seed(1), only_i2v)
    assert (cond.mask == torch.tensor([1.0, 0, 0, 0, 0])).all()
    images = _video(1, b=8)  # one latent frame: always text-to-image
    assert not sample_training_condition(images, torch.Generator().manual_seed(1), only_i2v).mask.any()
    with pytest.raises(ValueError, match="probabilities"):
        TaskMix(0, 0, 0, 0, 0, 0).weights()


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampler_keeps_given_frames_exactly_with_any_network(solver):
    torch.manual_seed(0)
    model = DiT(dit_config("tiny", latent_channels=C, text_dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    a, b = _video(4, seed=3, b=1), _video(4, seed=4, b=1)
    text, mask = torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    cond = transition(a, b, context=1, new_frames=2)
    out = denoise(Flow(model), None, cond, text, mask, steps=3, cfg_scale=2.0, solver=solver, seed=0)
    assert torch.equal(out[:, :, 0], a[:, :, -1]) and torch.equal(out[:, :, 3], b[:, :, 0])
    assert torch.isfinite(out).all() and (out[:, :, 1:3] - a[:, :, -1:]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Given frames encoded where they stand
# ----------------------------------------------------------------------------------------------------------


def test_context_clip_puts_each_given_frame_at_its_index_and_holds_the_rest():
    frame = {p: torch.full((1, 3, 2, 2), float(p)) for p in (0, 6, 12)}
    clip, positions = context_clip(frame, 17)
    assert clip.shape == (1, 3, 17, 2, 2) and positions == [0, 2, 3]
    # 1-4: group 1 has no given frame, hold 0; 5-8: group 2 holds 6 all through; 9-12: group 3 holds 12; then 12
    assert clip[0, 0, :, 0, 0].tolist() == [0, 0, 0, 0, 0, 6, 6, 6, 6, 12, 12, 12, 12, 12, 12, 12, 12]
    before = context_clip({8: frame[6]}, 9)[0]
    assert before[0, 0, :, 0, 0].tolist() == [6] * 9  # nothing before: the first given frame, held
    with pytest.raises(ValueError, match="given frame indices"):
        context_clip({17: frame[0]}, 17)


class _Oracle(torch.nn.Module):
    """A velocity network that knows the answer: v = (x_t - target) / t, so an Euler sampler lands on target."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target, self.cfg = target, type("Cfg", (), {"patch": (1, 1, 1)})()

    def forward(self, x_in, t, text, mask):
        x = x_in[:, : self.target.shape[1]]
        return (x - self.target) / t.clamp_min(1e-6)[:, None, None, None, None]


@pytest.fixture(scope="module")
def vaes():
    """The same randomly perturbed tiny VAE twice: its causal encoder as it is (``plain``) and with
    ``grouped_encoder`` (each latent frame from its own 4 frames); the decoder is the same."""
    from model.vae import VAEConfig, VideoVAE, build_vae

    torch.manual_seed(0)
    plain = build_vae("tiny")
    with torch.no_grad():  # off the zero init, so every latent depends on its frames and, plain, on its past
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grouped = VideoVAE(VAEConfig(**{**plain.cfg.__dict__, "grouped_encoder": True}))
    grouped.load_state_dict(plain.state_dict())
    return {"plain": plain.eval(), "grouped": grouped.eval()}


def _clip(frames: int, seed: int, shape: str = "square") -> torch.Tensor:
    """(1, 3, frames, 32, 32) in [-1, 1]: a moving shape, so every frame differs."""
    from curate import synth

    shot = synth.Shot(shape, "red", "right", "gradient", "blue", frames)
    x = torch.from_numpy(synth.render_clip(shot, (32, 32), seed=seed)).float() / 127.5 - 1
    return x.permute(3, 0, 1, 2)[None]


# task -> (output frames, the output indices given (the frames of a real clip R there), the frames of a latent
# group the request gives only partly: {frame: the given frame it holds}). The full clip F of a task is R with
# those holds; a group the request gives whole is R's own frames.
TASKS_IN_PLACE = {
    "image_to_video": (17, [0], {}),
    "extend_forward": (17, list(range(9)), {}),  # latent groups 0-2
    "extend_backward": (17, list(range(9, 17)), {}),  # groups 3-4
    "keyframes": (17, [0, *range(5, 9), *range(13, 17)], {}),  # groups 0, 2 and 4 whole
    "transition": (21, [*range(5), *range(13, 21)], {}),  # groups 0-1 of A, 4-5 of B
    "interpolation": (17, [0, 16], {13: 16, 14: 16, 15: 16}),  # frame 16 alone in group 4
    "keyframes_mid_group": (17, [0, 6, 12], {5: 6, 7: 6, 8: 6, 9: 12, 10: 12, 11: 12}),
}


def _full_clip(real: torch.Tensor, holds: dict[int, int]) -> torch.Tensor:
    full = real.clone()
    for f, src in holds.items():
        full[:, :, f] = real[:, :, src]
    return full


@pytest.mark.parametrize("task", sorted(TASKS_IN_PLACE))
def test_given_frames_are_their_in_clip_latents_and_come_back_at_their_indices(vaes, task):
    """Per task, with the grouped encoder: the pinned latents equal the latents of the given frames inside the
    full clip F (<= 1e-5 in fp32; the same encoder sees the same group), and still do when every frame outside
    the given groups is another clip's (the frames the sampler generates there do not move them); decoding what
    an oracle velocity generates returns, at each given frame's output index, what decoding F returns there
    (<= 1e-4), and the output has the requested length."""
    vae = vaes["grouped"]
    frames, idx, holds = TASKS_IN_PLACE[task]
    real, other = _clip(frames, 1), _clip(frames, 2, shape="circle")
    full = _full_clip(real, holds)
    given_groups = {latent_index(p) for p in idx}
    elsewhere = [f for f in range(frames) if latent_index(f) not in given_groups]
    other_past = full.clone()
    other_past[:, :, elsewhere] = other[:, :, elsewhere]

    def encode(x):
        return vae.encode(x).mode()

    with torch.no_grad():
        cond = given_condition({p: real[:, :, p] for p in idx}, frames, encode)
        target = encode(full)  # (1, C, T', h, w)
        positions = sorted(given_groups)
        assert _given(cond) == positions and cond.shape[2] == target.shape[2]
        torch.testing.assert_close(cond.reference[:, :, positions], target[:, :, positions], atol=1e-5, rtol=0)
        whole = [p for p in positions if p not in held_positions(idx, frames, grouped=True)]  # groups given whole
        torch.testing.assert_close(cond.reference[:, :, whole], encode(real)[:, :, whole], atol=1e-5, rtol=0)
        moved = encode(other_past)
        others = sorted({latent_index(f) for f in elsewhere})
        assert not others or (moved[:, :, others] - target[:, :, others]).abs().max() > 1e-2  # the rest did move
        torch.testing.assert_close(cond.reference[:, :, positions], moved[:, :, positions], atol=1e-5, rtol=0)
        out = denoise(Flow(_Oracle(target)), None, cond, torch.zeros(1, 1, 8), torch.ones(1, 1, dtype=torch.bool),
                      steps=4, cfg_scale=1.0)
        torch.testing.assert_close(out, target, atol=1e-4, rtol=0)
        pixels, truth = vae.decode(out), vae.decode(target)
    assert pixels.shape[2] == frames  # the requested length, not a group more per given clip
    torch.testing.assert_close(pixels[:, :, idx], truth[:, :, idx], atol=1e-4, rtol=0)


@pytest.mark.parametrize("task, exact", [("image_to_video", [0]), ("extend_forward", [0, 1, 2]),
                                         ("extend_backward", []), ("transition", [0, 1])])
def test_the_plain_causal_encoder_is_exact_only_at_the_start(vaes, task, exact):
    """Without the grouped encoder, frames at the start (image-to-video, extend forward, a transition's first
    clip) still get exactly their in-clip latents (<= 1e-5); frames after the start get the latents of a clip
    whose unknown frames hold given ones (``context_clip``), which differ from their latents in the real clip
    (> 1e-2): a plain causal latent depends on the frames before it, and those are generated."""
    vae = vaes["plain"]
    frames, idx, holds = TASKS_IN_PLACE[task]
    real = _clip(frames, 1)

    def encode(x):
        return vae.encode(x).mode()

    with torch.no_grad():
        given = {p: real[:, :, p] for p in idx}
        cond = given_condition(given, frames, encode)
        target = encode(_full_clip(real, holds))
        held = encode(context_clip(given, frames)[0])
    positions = _given(cond)
    late = [p for p in positions if p not in exact]
    assert held_positions(idx, frames, grouped=False) == late
    torch.testing.assert_close(cond.reference[:, :, positions], held[:, :, positions], atol=1e-5, rtol=0)
    torch.testing.assert_close(cond.reference[:, :, exact], target[:, :, exact], atol=1e-5, rtol=0)
    assert (cond.reference[:, :, late] - target[:, :, late]).abs().max() > 1e-2 if late else True


def test_held_positions_name_the_latents_pinned_in_held_frames():
    held = {task: (held_positions(idx, frames, grouped=True), held_positions(idx, frames))
            for task, (frames, idx, _) in TASKS_IN_PLACE.items()}
    assert held == {"image_to_video": ([], []), "extend_forward": ([], []), "extend_backward": ([], [3, 4]),
                    "keyframes": ([], [2, 4]), "transition": ([], [4, 5]), "interpolation": ([4], [4]),
                    "keyframes_mid_group": ([2, 3], [2, 3])}
    assert held_positions([], 17) == [] and held_positions(range(17), 17) == []


def test_the_pipeline_pins_in_clip_latents_with_a_grouped_vae(vaes, tmp_path):
    """Through ``TextToVideo`` (export, load, ``build_condition``): a grouped VAE's flag survives the pipeline
    folder, and extend backward pins the first 8 frames of ``video_b`` to their latents (scaled) inside a clip
    where they close the output, whatever comes before them."""
    from model.dit import DiT, dit_config
    from model.pipeline import TextToVideo, export_pipeline
    from model.text import TextConfig

    torch.manual_seed(0)
    dit = DiT(dit_config("tiny", latent_channels=16, text_dim=384))
    folder = export_pipeline(tmp_path / "pipeline", dit, vaes["grouped"], TextConfig(max_length=32),
                             latent_scale=0.7, latent_shift=0.1)
    pipe = TextToVideo.from_pretrained(folder)
    assert pipe.vae.cfg.grouped_encoder
    video_b = ((_clip(9, 3)[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()  # (9, 32, 32, 3)
    cond = pipe.build_condition(13, (32, 32), video_b=video_b)
    assert _given(cond) == [2, 3]  # output frames 5-12: video_b's first 8 (2 groups); latent frames 0-1 generated
    for before in (video_b[[0] * 5], 255 - video_b[4::-1]):  # a still of its first frame, or anything else
        want = pipe.encode(np.concatenate([before, video_b[:8]]), (32, 32))  # (1, C, 4, 4, 4), scaled
        torch.testing.assert_close(cond.reference[:, :, 2:], want[:, :, 2:], atol=1e-5, rtol=0)


def test_given_frames_of_a_request_fill_exactly_their_frames():
    """The frame accounting of every task: a 17-frame video_b in a 25-frame output fills its last 16 frames (4
    latent groups, one latent frame left to generate), not 20."""
    clip = np.arange(17)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    img = np.zeros((2, 2, 3), np.uint8)
    assert sorted(given_frames(25, video_b=clip)) == list(range(9, 25))
    assert [int(f[0, 0, 0]) for _, f in sorted(given_frames(25, video_b=clip).items())] == list(range(16))
    assert sorted(given_frames(25, video=clip)) == list(range(17))  # 17 frames, latents 0-4, 5 left... 1 + 4k
    assert [int(f[0, 0, 0]) for _, f in sorted(given_frames(13, video=clip).items())] == list(range(8, 17))
    both = given_frames(21, video=clip, video_b=clip)  # 6 latent frames: 2 + 2 given, 2 generated
    assert sorted(both) == list(range(5)) + list(range(13, 21))
    assert sorted(given_frames(17, image=img, keyframes={12: img})) == [0, 12]
    assert sorted(given_frames(5, video_b=clip[:2])) == [3, 4]  # a short clip: its own frames, at the end


def test_edit_strength_zero_keeps_small_stays_near_one_ignores_the_input():
    """strength 0: the input's latents, no network call; a small strength: near the input; 1: the input is not
    seen at all (two inputs give the same output)."""
    torch.manual_seed(0)
    model = DiT(dit_config("tiny", latent_channels=C, text_dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    text, mask = torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    video, other = _video(3, seed=5, b=1), _video(3, seed=6, b=1)
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    kept = denoise(Flow(model), None, edit(video, 0.0), text, mask, steps=4, cfg_scale=2.0)
    assert torch.equal(kept, video) and calls == []
    hook.remove()
    near = denoise(Flow(model), None, edit(video, 0.1), text, mask, steps=4, cfg_scale=2.0)
    far = denoise(Flow(model), None, edit(video, 1.0), text, mask, steps=4, cfg_scale=2.0)
    assert 0 < (near - video).abs().mean() < 0.5 * (far - video).abs().mean()
    ignored = denoise(Flow(model), None, edit(other, 1.0), text, mask, steps=4, cfg_scale=2.0)
    assert torch.equal(far, ignored)
    with pytest.raises(ValueError, match="strength"):
        edit(video, 1.5)
    with pytest.raises(ValueError, match="strength"):
        edit(video, -0.1)


def test_generate_notes_the_latent_frames_pinned_in_held_frames(capsys):
    """``tessera generate`` says which latent frames are pinned in held frames: with a plain causal VAE, every
    latent of an extend-backward clip (frame 0 is generated); with a grouped one, none (no note), but a lone
    keyframe's group; an edit gives no frame and gets no note."""
    from model.vae import PRESETS
    from pipelines.generate import _note_held

    clip = np.zeros((17, 4, 4, 3), np.uint8)
    _note_held(PRESETS["tiny"], 17, None, None, clip, None, None)
    assert "latent frames [1, 2, 3, 4]" in capsys.readouterr().err
    _note_held(PRESETS["tiny-grouped"], 17, None, None, clip, None, None)
    assert capsys.readouterr().err == ""
    _note_held(PRESETS["tiny-grouped"], 17, clip[0], None, None, {6: clip[0]}, None)
    assert "latent frames [2]" in capsys.readouterr().err
    _note_held(PRESETS["tiny"], 17, None, clip, None, None, 0.5)
    assert capsys.readouterr().err == ""
