"""One Condition per task: mask positions and reference content; training task sampling; the sampler's
pinning of given frames (exact at t = 0) with an untrained network."""

from __future__ import annotations

import pytest
import torch

from model.conditioning import (
    Condition,
    TaskMix,
    edit,
    extend,
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
    with pytest.raises(ValueError, match="strength"):
        edit(video, 0.0)


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
