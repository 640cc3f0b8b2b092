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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors run fastest on one thread; restore the setting for other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
def vae():
    from model.vae import build_vae

    torch.manual_seed(0)
    model = build_vae("tiny")
    with torch.no_grad():  # off the zero init, so every latent depends on its past
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _clip(frames: int, seed: int) -> torch.Tensor:
    """(1, 3, frames, 32, 32) in [-1, 1]: a moving shape, so every frame differs."""
    from curate import synth

    shot = synth.Shot("square", "red", "right", "gradient", "blue", frames)
    x = torch.from_numpy(synth.render_clip(shot, (32, 32), seed=seed)).float() / 127.5 - 1
    return x.permute(3, 0, 1, 2)[None]


# task -> (output frames, the given frames {output index: frame index in the source clip A / B}, full clip):
# the full clip is the output-length clip the given frames sit in, its other frames holding given ones, built here
# by hand; the pinned latents must be its latents, and for a clip at the start also the source clip's own.
TASKS_IN_PLACE = {
    "image_to_video": (17, {0: ("a", 0)}, lambda a, b: a[:, :, [0] * 17]),
    "extend_forward": (17, {i: ("a", 4 + i) for i in range(9)}, lambda a, b: torch.cat(
        [a[:, :, 4:13], a[:, :, [12] * 8]], 2)),
    "extend_backward": (17, {9 + i: ("b", i) for i in range(8)}, lambda a, b: torch.cat(
        [b[:, :, [0] * 9], b[:, :, :8]], 2)),
    "keyframes": (17, {0: ("a", 0), 8: ("b", 3), 13: ("b", 7)}, lambda a, b: torch.cat(
        [a[:, :, [0] * 5], b[:, :, [3] * 8], b[:, :, [7] * 4]], 2)),  # 9-12 hold frame 8, the last before
    "transition": (21, {**{i: ("a", 8 + i) for i in range(5)}, **{13 + i: ("b", i) for i in range(8)}},
                   lambda a, b: torch.cat([a[:, :, 8:13], a[:, :, [12] * 8], b[:, :, :8]], 2)),
}


@pytest.mark.parametrize("task", sorted(TASKS_IN_PLACE))
def test_given_frames_come_back_at_their_output_indices(vae, task):
    """Per task: the pinned latents equal the latents of the same frames encoded inside a full clip (<= 1e-5 in
    fp32; the encoder is the same, only the clip it sees must match), the output has the requested length, and
    decoding what an oracle velocity generates returns, at each given frame's output index, what decoding that
    full clip returns there (<= 1e-4). Encoding the given clip on its own, as before, is checked to fail."""
    frames, spec, full_of = TASKS_IN_PLACE[task]
    a, b = _clip(17, 1), _clip(17, 2)
    src = {"a": a, "b": b}
    given = {p: src[s][:, :, i] for p, (s, i) in spec.items()}

    def encode(x):
        return vae.encode(x).mode()

    with torch.no_grad():
        cond = given_condition(given, frames, encode)
        full = full_of(a, b)
        assert full.shape[2] == frames
        target = encode(full)  # (1, C, T', h, w)
        positions = sorted({latent_index(p) for p in spec})
        assert _given(cond) == positions
        torch.testing.assert_close(cond.reference[:, :, positions], target[:, :, positions], atol=1e-5, rtol=0)
        if task in ("image_to_video", "extend_forward"):  # at the start: the source clip's own latents, exactly
            own = encode(a[:, :, 4:13] if task == "extend_forward" else a[:, :, :1])
            torch.testing.assert_close(cond.reference[:, :, positions], own[:, :, positions], atol=1e-5, rtol=0)
        else:  # the old way (the given clip encoded alone, its image latent placed after 0) pins other latents
            first = min(p for p in spec if p > 0)
            alone = encode(torch.stack([given[p] for p in sorted(spec) if p >= first][:1], 2))[:, :, 0]
            assert (alone - target[:, :, latent_index(first)]).abs().max() > 1e-2
        out = denoise(Flow(_Oracle(target)), None, cond, torch.zeros(1, 1, 8), torch.ones(1, 1, dtype=torch.bool),
                      steps=4, cfg_scale=1.0)
        torch.testing.assert_close(out, target, atol=1e-4, rtol=0)
        pixels, truth = vae.decode(out), vae.decode(target)
    assert pixels.shape[2] == frames  # the requested length, not a group more per given clip
    idx = sorted(spec)
    torch.testing.assert_close(pixels[:, :, idx], truth[:, :, idx], atol=1e-4, rtol=0)


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
