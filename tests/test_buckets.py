"""Buckets: valid shapes, batch sizes from the token budget, assignment by aspect ratio and duration."""

from __future__ import annotations

import pytest

from model.buckets import Bucket, BucketConfig, assign_bucket, make_buckets, tokens_per_sample


@pytest.fixture(scope="module")
def buckets() -> list[Bucket]:
    return make_buckets(BucketConfig())


def test_shapes_fit_the_vae_and_patch(buckets):
    assert buckets
    for b in buckets:
        assert b.height % 16 == 0 and b.width % 16 == 0
        assert (b.frames - 1) % 4 == 0
        t, h, w = b.latent_shape
        assert b.tokens == t * (h // 2) * (w // 2)


def test_tokens_per_sample_counts_latent_patches():
    cfg = BucketConfig()
    assert tokens_per_sample(1, 256, 256, cfg) == 1 * 16 * 16
    assert tokens_per_sample(61, 512, 512, cfg) == 16 * 32 * 32  # the benchmark's 16384-token shape
    assert tokens_per_sample(81, 480, 832, cfg) == 21 * 30 * 52  # Wan's 480p, 81 frames


def test_batch_sizes_come_from_the_token_budget(buckets):
    cfg = BucketConfig()
    for b in buckets:
        assert b.batch_size * b.tokens <= cfg.token_budget
        assert b.batch_size == min(cfg.max_batch, cfg.token_budget // b.tokens)
        assert (b.batch_size + 1) * b.tokens > cfg.token_budget or b.batch_size == cfg.max_batch
    by = {(b.frames, b.height, b.width): b.batch_size for b in buckets}
    assert by[(1, 256, 256)] == 256  # images: many per batch (capped)
    assert by[(17, 256, 256)] > by[(65, 256, 256)] >= 1  # longer clips: fewer per batch


def test_buckets_over_the_budget_are_left_out():
    cfg = BucketConfig(areas=(512 * 512,), frames=(1, 65), token_budget=8192)
    frames = {b.frames for b in make_buckets(cfg)}
    assert frames == {1}  # 65 frames at 512^2 is 17 * 1024 = 17408 tokens > 8192


def test_invalid_frame_count_is_rejected():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        make_buckets(BucketConfig(frames=(16,)))


def test_assign_by_aspect_ratio(buckets):
    wide = assign_bucket(buckets, 100, 1080, 1920)
    tall = assign_bucket(buckets, 100, 1920, 1080)
    square = assign_bucket(buckets, 100, 700, 720)
    assert wide.aspect == pytest.approx(16 / 9, rel=0.05)
    assert tall.aspect == pytest.approx(9 / 16, rel=0.05)
    assert square.aspect == 1.0 and square.ratio == 1.0
    assert assign_bucket(buckets, 100, 600, 800).aspect == pytest.approx(4 / 3, rel=0.05)


def test_assign_by_duration_never_stretches(buckets):
    assert assign_bucket(buckets, 70, 720, 1280).frames == 65
    assert assign_bucket(buckets, 40, 720, 1280).frames == 33
    assert assign_bucket(buckets, 17, 720, 1280).frames == 17
    assert assign_bucket(buckets, 16, 720, 1280).frames == 1  # too short for a video bucket: an image
    assert assign_bucket(buckets, 1, 720, 1280).frames == 1
    assert assign_bucket(buckets, 0, 720, 1280) is None


def test_assign_resolution_avoids_upsampling(buckets):
    hd = assign_bucket(buckets, 70, 720, 1280)
    assert (hd.height, hd.width) == (384, 688)  # the larger resolution class (512^2 area) at 16:9
    small = assign_bucket(buckets, 70, 240, 426)
    assert small.height * small.width <= 240 * 426
    tiny = assign_bucket(buckets, 70, 64, 112)  # smaller than every bucket: the smallest one
    assert tiny.height * tiny.width == min(b.height * b.width for b in buckets if b.ratio == tiny.ratio)
    # the same nominal ratio in both resolution classes, although rounding to 16 makes the exact ones differ
    assert small.ratio == hd.ratio == pytest.approx(16 / 9) and small.aspect != hd.aspect


def test_buckets_follow_a_4x_spatial_vae_with_4x4_patches():
    """A 4x4x4 VAE with (1, 4, 4) patches: sizes still round to 16 px, latents are H/4 x W/4, and a token still
    covers 16 x 16 px, so the batch sizes equal the default 8x VAE + 2x2 patches'."""
    f4 = BucketConfig(areas=(128 * 128,), frames=(17,), vae_stride=(4, 4, 4), patch=(1, 4, 4), token_budget=40960)
    f8 = BucketConfig(areas=(128 * 128,), frames=(17,), token_budget=40960)
    square = {b.ratio: b for b in make_buckets(f4)}[1.0]
    assert (square.height, square.width, square.latent_shape) == (128, 128, (5, 32, 32))
    assert square.tokens == 5 * 8 * 8 == {b.ratio: b for b in make_buckets(f8)}[1.0].tokens
    assert [b.batch_size for b in make_buckets(f4)] == [b.batch_size for b in make_buckets(f8)]
    assert {b.ratio: b for b in make_buckets(f8)}[1.0].latent_shape == (5, 16, 16)
