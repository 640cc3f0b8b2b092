"""VAE invariants at tiny size: shapes, causality, chunked == whole, tiling, odd sizes, metrics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from model.metrics import LPIPS, psnr, ssim
from model.vae import PRESETS, CausalCache, DiagonalGaussian, Downsample, Upsample, VideoVAE, build_vae

torch.set_num_threads(1)


def _random_vae(preset: str = "tiny", seed: int = 0) -> VideoVAE:
    """A tiny VAE whose residual branches are not zero (the init makes them identity, hiding bugs)."""
    torch.manual_seed(seed)
    m = build_vae(preset).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def vae() -> VideoVAE:
    return _random_vae()


@pytest.mark.parametrize("t", [1, 5, 17])
def test_shapes(vae: VideoVAE, t: int) -> None:
    x = torch.randn(2, 3, t, 32, 48)
    with torch.no_grad():
        post = vae.encode(x)
        y = vae.decode(post.sample())
    assert post.mean.shape == (2, 16, 1 + (t - 1) // 4, 4, 6)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_f16_c48_preset_shapes() -> None:
    m = build_vae("tiny-f16c48").eval()
    assert (m.cfg.time_factor, m.cfg.spatial_factor, m.cfg.z_channels) == (4, 16, 48)
    assert (PRESETS["base"].time_factor, PRESETS["base"].spatial_factor, PRESETS["base"].z_channels) == (4, 8, 16)
    with torch.no_grad():
        z = m.encode(torch.randn(1, 3, 5, 32, 64)).mean
        assert z.shape == (1, 48, 2, 2, 4)
        assert m.decode(z).shape == (1, 3, 5, 32, 64)


def test_levels_that_halve_time_only() -> None:
    """``space_down``: a 4x4x4 VAE whose time halvings sit at the two deeper levels (one of them time-only) has the
    strides it says, stays causal, and chunked encode/decode still equal the whole; a level that halves neither
    space nor time is refused."""
    m = _random_vae("tiny-f4c8-late")
    assert m.cfg.stride == (4, 4, 4) and m.cfg.z_channels == 8
    assert [type(b).__name__ for b in m.encoder.blocks].count("Downsample") == 3
    x = torch.randn(1, 3, 17, 16, 24)
    with torch.no_grad():
        z = m.encode(x).mean
        assert z.shape == (1, 8, 5, 4, 6) and m.decode(z).shape == x.shape
        assert m.encode(x[:, :, :1]).mean.shape == (1, 8, 1, 4, 6)
        torch.testing.assert_close(m.encode_chunked(x, chunk_frames=8).mean, z, rtol=0, atol=1e-5)
        torch.testing.assert_close(m.decode_chunked(z, chunk_latents=2), m.decode(z), rtol=0, atol=1e-5)
        x2 = x.clone()
        x2[:, :, 9] += 1.0  # frame 9 is first seen by latent frame 3 (frames 9..12)
        z2 = m.encode(x2).mean
        assert torch.equal(z[:, :, :3], z2[:, :, :3]) and (z[:, :, 3] - z2[:, :, 3]).abs().max() > 1e-4
    with torch.enable_grad():  # the training path of the time-only upsample gives the same pictures
        torch.testing.assert_close(m.decode(z.detach()).detach(), m.decode(z), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="halve space or time"):
        VideoVAE(dataclasses.replace(PRESETS["tiny-f4c8-late"], space_down=(True, True, False),
                                     time_down=(True, True, False)))
    with pytest.raises(ValueError, match="space_down needs 3"):
        VideoVAE(dataclasses.replace(PRESETS["tiny-f4c8-late"], space_down=(True, False)))


def test_image_is_first_frame_of_video(vae: VideoVAE) -> None:
    """The first latent frame of a video equals the latent of its first frame alone (an image)."""
    x = torch.randn(1, 3, 9, 32, 32)
    with torch.no_grad():
        z_video = vae.encode(x).mean
        z_image = vae.encode(x[:, :, :1]).mean
        torch.testing.assert_close(z_video[:, :, :1], z_image, rtol=0, atol=1e-5)
        assert vae.decode(z_image).shape == (1, 3, 1, 32, 32)


@pytest.mark.parametrize("t_change", [1, 4, 5, 9, 16])
def test_encoder_causality(vae: VideoVAE, t_change: int) -> None:
    """Changing frame t leaves every latent frame that covers only frames < t unchanged, and changes the one
    that covers t (latent j >= 1 covers frames 4j-3 .. 4j)."""
    x = torch.randn(1, 3, 17, 32, 32)
    x2 = x.clone()
    x2[:, :, t_change] += 1.0
    with torch.no_grad():
        z, z2 = vae.encode(x).mean, vae.encode(x2).mean
    j = (t_change + 3) // 4  # first latent frame that sees frame t_change
    assert torch.equal(z[:, :, :j], z2[:, :, :j])
    assert (z[:, :, j] - z2[:, :, j]).abs().max() > 1e-4


def test_decoder_causality(vae: VideoVAE) -> None:
    z = torch.randn(1, 16, 5, 4, 4)
    z2 = z.clone()
    z2[:, :, 2] += 1.0  # latent 2 decodes to frames 5..8
    with torch.no_grad():
        y, y2 = vae.decode(z), vae.decode(z2)
    assert torch.equal(y[:, :, :5], y2[:, :, :5])
    assert (y[:, :, 5] - y2[:, :, 5]).abs().max() > 1e-4


@pytest.mark.parametrize("chunk", [4, 8, 16])
def test_chunked_encode_equals_whole(vae: VideoVAE, chunk: int) -> None:
    x = torch.randn(1, 3, 25, 32, 32)
    with torch.no_grad():
        whole = vae.encode(x)
        parts = vae.encode_chunked(x, chunk_frames=chunk)
    assert (whole.mean - parts.mean).abs().max() <= 1e-5
    assert (whole.logvar - parts.logvar).abs().max() <= 1e-5


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_decode_equals_whole(vae: VideoVAE, chunk: int) -> None:
    z = torch.randn(1, 16, 7, 4, 4)
    with torch.no_grad():
        whole = vae.decode(z)
        parts = vae.decode_chunked(z, chunk_latents=chunk)
    assert whole.shape == parts.shape == (1, 3, 25, 32, 32)
    assert (whole - parts).abs().max() <= 1e-5


def test_inference_path_matches_autograd_path(vae: VideoVAE, monkeypatch) -> None:
    """Without autograd the blocks take a lean path (norm + SiLU written into the padded conv input, in-place
    residual add, upsampling a frame at a time, chunks written into one output). It must give the numbers of
    the autograd path that training uses, whole and chunked."""
    monkeypatch.setattr(Upsample, "UPSAMPLE_ELEMS", 1)  # force one frame per upsampling slice
    x = torch.randn(1, 3, 9, 32, 32)
    with torch.no_grad():
        z = vae.encode(x).mean
        y = vae.decode(z)
        zc = vae.encode_chunked(x, chunk_frames=4).mean
        yc = vae.decode_chunked(z, chunk_latents=2)
    z_grad = vae.encode(x).mean
    y_grad = vae.decode(z)
    assert z_grad.requires_grad and y_grad.requires_grad  # really the autograd path
    for lean in (z, zc):
        assert (lean - z_grad.detach()).abs().max() <= 1e-5
    for lean in (y, yc):
        assert lean.shape == y_grad.shape and (lean - y_grad.detach()).abs().max() <= 1e-5
    assert y.abs().mean() > 1e-2  # not a trivially zero output


def test_cache_holds_only_the_needed_past(vae: VideoVAE) -> None:
    """Memory is bounded by the chunk: every cache entry keeps at most 2 frames, whatever the clip length."""
    cache = CausalCache()
    with torch.no_grad():
        for start in (0, 9, 17, 25):
            vae.encoder(torch.randn(1, 3, 9 if start == 0 else 8, 32, 32), cache)
    assert cache.state and max(v.shape[2] for v in cache.state.values()) <= 2


def test_bad_chunk_sizes_raise(vae: VideoVAE) -> None:
    x = torch.randn(1, 3, 9, 32, 32)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode_chunked(x, chunk_frames=6)
    with pytest.raises(ValueError):
        vae.decode_chunked(torch.randn(1, 16, 3, 4, 4), chunk_latents=0)


def test_tiling_single_tile_is_exact_and_overlap_blends(vae: VideoVAE) -> None:
    x = torch.randn(1, 3, 5, 64, 96)
    with torch.no_grad():
        z = vae.encode(x).mean
        assert torch.allclose(vae.encode_tiled(x, tile=96, overlap=16, chunk_frames=4).mean, z, atol=1e-5)
        y = vae.decode(z)
        assert torch.allclose(vae.decode_tiled(z, tile=12, overlap=4), y, atol=1e-5)
        # several tiles: an approximation (tile borders see zero padding); same shape, finite, and close on
        # average. More overlap -> smaller error on this model.
        zt_small = vae.encode_tiled(x, tile=48, overlap=16, chunk_frames=4).mean
        zt_big = vae.encode_tiled(x, tile=64, overlap=32, chunk_frames=4).mean
        yt = vae.decode_tiled(z, tile=8, overlap=4)
    assert zt_small.shape == zt_big.shape == z.shape and yt.shape == y.shape
    assert torch.isfinite(zt_small).all() and torch.isfinite(yt).all()
    assert (zt_big - z).abs().max() < (zt_small - z).abs().max()
    assert (zt_big - z).abs().mean() < 0.25 * z.abs().mean()
    assert (yt - y).abs().mean() < 0.25 * y.abs().mean()


def test_odd_sizes_raise_clear_errors(vae: VideoVAE) -> None:
    with pytest.raises(ValueError, match="not a multiple of 8"):
        vae.encode(torch.randn(1, 3, 5, 30, 32))
    with pytest.raises(ValueError, match="not 1 \\+ 4k"):
        vae.encode(torch.randn(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of 8"):
        vae.encode_chunked(torch.randn(1, 3, 5, 32, 36))


def test_odd_sizes_padded_by_rule(vae: VideoVAE) -> None:
    x = torch.randn(1, 3, 6, 30, 35)
    xp = vae.pad_input(x)
    assert xp.shape == (1, 3, 9, 32, 40)
    assert torch.equal(xp[:, :, :6, :30, :35], x)
    assert torch.equal(xp[:, :, :6, 30:, :35], x[:, :, :, 29:30].expand(-1, -1, -1, 2, -1))  # last row
    assert torch.equal(xp[:, :, :6, :30, 35:], x[:, :, :, :, 34:35].expand(-1, -1, -1, -1, 5))  # last column
    assert torch.equal(xp[:, :, 6:], xp[:, :, 5:6].expand(-1, -1, 3, -1, -1))  # last frame repeated
    with torch.no_grad():
        post = vae.encode(x, pad=True)
        assert post.mean.shape == (1, 16, 3, 4, 5)
        torch.testing.assert_close(post.mean, vae.encode(xp).mean)
        torch.testing.assert_close(vae.encode_chunked(x, 4, pad=True).mean, post.mean, rtol=0, atol=1e-5)
        y = vae.decode(post.mean, size=x.shape[2:])
    assert y.shape == x.shape


def test_posterior() -> None:
    moments = torch.zeros(2, 8, 1, 2, 2)
    post = DiagonalGaussian(moments)
    assert torch.allclose(post.kl(), torch.zeros(2))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(post.sample(g1), post.sample(g2))
    moments[:, :4] = 1.0  # mean 1, logvar 0: KL = 0.5 per element
    assert torch.allclose(DiagonalGaussian(moments).kl(), torch.full((2,), 0.5 * 16))


def test_fresh_posterior_is_narrow() -> None:
    """A new VAE's latents are mostly signal: posterior std well under the mean's scale, in every preset shape."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    for preset in ("tiny", "tiny-f4c8"):
        post = build_vae(preset).encode(x)
        assert post.std.mean() < 0.1  # a zero logvar bias gave ~1
        assert post.mean.abs().mean() > 5 * post.std.mean()


def test_psnr_ssim_known_values() -> None:
    x = torch.rand(2, 3, 2, 24, 24) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    y = x + 0.2  # error 0.1 on the [0, 1] scale -> 20 dB
    assert torch.allclose(psnr(x, y), torch.full((2,), 20.0), atol=1e-3)
    noisy = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1)
    assert (ssim(x, noisy) < 0.9).all() and (ssim(x, noisy) > -1).all()


def test_lpips_loads_from_local_safetensors(tmp_path) -> None:
    """Random weights in the documented key layout: identical inputs score 0, different ones > 0."""
    torch.manual_seed(0)
    state, cin, i = {}, 3, 0
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3) * (2 / (9 * cin)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(v)
        cin, i = v, i + 2
    for k, c in enumerate((64, 128, 256, 512, 512)):
        state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1)
    path = tmp_path / "lpips.safetensors"
    save_file(state, str(path))
    lp = LPIPS(path)
    x = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    assert lp(x, x).abs().max() < 1e-6
    assert (lp(x, x.flip(-1)) > 0).all()
    del state["lin0.model.1.weight"]
    save_file(state, str(path))
    with pytest.raises(KeyError):
        LPIPS(path)


@pytest.mark.parametrize("preset", ["tiny", "tiny-f4c8", "tiny-f4c8-dc"])
def test_grouped_encoder_sees_only_its_own_group(preset: str) -> None:
    """``grouped_encoder``: latent frame j >= 1 depends only on frames 4j-3 .. 4j. Changing every frame before a
    group leaves its latent unchanged (bit for bit), changing one of its frames changes it; the group encoded
    after any frame 0 gives the same latent; chunked == whole; the autograd path == the inference path; the
    same weights load into either setting (the option adds no parameter)."""
    plain = _random_vae(preset, seed=3)
    vae = VideoVAE(dataclasses.replace(plain.cfg, grouped_encoder=True)).eval()
    vae.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 17, 32, 32, generator=torch.Generator().manual_seed(0))
    past = x.clone()
    past[:, :, :9] = torch.randn(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(1))  # groups 0-2
    own = x.clone()
    own[:, :, 10] += 1.0  # group 3 (frames 9-12)
    with torch.no_grad():
        z = vae.encode(x).mean  # (1, C, 5, h, w)
        z_past, z_own = vae.encode(past).mean, vae.encode(own).mean
        alone = vae.encode(torch.cat([past[:, :, :1], x[:, :, 9:13]], dim=2)).mean  # group 3 right after frame 0
        chunked = vae.encode_chunked(x, chunk_frames=4).mean
        z_plain = plain.encode(x).mean
    assert torch.equal(z[:, :, 3:], z_past[:, :, 3:]) and (z[:, :, 2] - z_past[:, :, 2]).abs().max() > 1e-3
    assert torch.equal(z[:, :, [0, 1, 2, 4]], z_own[:, :, [0, 1, 2, 4]])
    assert (z[:, :, 3] - z_own[:, :, 3]).abs().max() > 1e-4
    torch.testing.assert_close(alone[:, :, 1], z[:, :, 3], rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, z, rtol=0, atol=1e-5)
    torch.testing.assert_close(vae.encode(x).mean, z, rtol=0, atol=1e-5)  # autograd on: the plain path
    torch.testing.assert_close(z[:, :, 0], z_plain[:, :, 0], rtol=0, atol=1e-5)  # frame 0 is encoded as before
    assert (z[:, :, 1:] - z_plain[:, :, 1:]).abs().max() > 1e-3  # later groups lose their past
    assert PRESETS["tiny-grouped"] == dataclasses.replace(PRESETS["tiny"], grouped_encoder=True)
    with pytest.raises(ValueError, match="grouped_encoder"):
        VideoVAE(dataclasses.replace(PRESETS["tiny"], time_down=(False, False, False), grouped_encoder=True))


def test_shortcut_blocks_are_means_and_spreads() -> None:
    """``VAEConfig.shortcuts``: with its convolutions zeroed, a Downsample is the 2x2 means of each frame and the
    causal pair means in time (frame 0 alone, then frames (1, 2), (3, 4), ...; a later chunk pairs its own frames
    from the first); an Upsample is each channel spread back over its 2x2 block (channels repeated to fit) with
    every frame but frame 0 doubled."""
    x = torch.randn(1, 4, 5, 8, 8)
    down = Downsample(4, time=True, shortcut=True)
    up = Upsample(4, 2, time=True, shortcut=True)
    with torch.no_grad():
        for m in (*down.modules(), *up.modules()):
            if isinstance(m, torch.nn.Conv3d):
                m.weight.zero_()
                m.bias.zero_()
        pooled = torch.nn.functional.avg_pool3d(x, (1, 2, 2))  # (1, 4, 5, 4, 4)
        want = torch.cat([pooled[:, :, :1], (pooled[:, :, 1::2] + pooled[:, :, 2::2]) / 2], dim=2)
        torch.testing.assert_close(down(x, None), want, rtol=0, atol=1e-6)
        cache = CausalCache()
        first, later = down(x, cache), down(x[:, :, 1:], cache)  # a second chunk of 4 frames
        torch.testing.assert_close(first, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(later, want[:, :, 1:], rtol=0, atol=1e-6)
        z = torch.randn(1, 4, 3, 2, 2)
        y = up(z, None)  # (1, 2, 5, 4, 4): 4 channels -> 8 = 2 x 2x2, so each channel fills one pixel of a block
        assert y.shape == (1, 2, 5, 4, 4)
        spread = torch.nn.functional.pixel_shuffle(z.repeat_interleave(2, dim=1).transpose(1, 2)[0], 2)  # (3, 2, 4, 4)
        frames = spread.transpose(0, 1)[:, [0, 1, 1, 2, 2]]  # frame 0 once, every later frame twice
        torch.testing.assert_close(y[0], frames, rtol=0, atol=1e-6)


def test_shortcut_vae_keeps_every_invariant() -> None:
    """The DC-AE shortcuts keep the VAE causal and exact in chunks: image == first frame, encoder and decoder
    causality, chunked == whole both ways, the autograd path == the inference path; a preset with them differs
    from the one without (the shortcut is not a no-op) and has the same parameters."""
    m = _random_vae("tiny-f4c8-dc", seed=2)
    plain = VideoVAE(dataclasses.replace(m.cfg, shortcuts=False)).eval()
    plain.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 17, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = m.encode(x).mean  # (1, 8, 5, 4, 6)
        assert z.shape == (1, 8, 5, 4, 6) and (z - plain.encode(x).mean).abs().max() > 1e-2
        torch.testing.assert_close(m.encode(x[:, :, :1]).mean, z[:, :, :1], rtol=0, atol=1e-5)
        torch.testing.assert_close(m.encode_chunked(x, chunk_frames=4).mean, z, rtol=0, atol=1e-5)
        torch.testing.assert_close(m.decode_chunked(z, chunk_latents=1), m.decode(z), rtol=0, atol=1e-5)
        x2 = x.clone()
        x2[:, :, 9] += 1.0  # first seen by latent frame 3
        z2 = m.encode(x2).mean
        assert torch.equal(z[:, :, :3], z2[:, :, :3]) and (z[:, :, 3] - z2[:, :, 3]).abs().max() > 1e-4
        zz = z.clone()
        zz[:, :, 2] += 1.0  # latent 2 decodes to frames 5..8
        y, y2 = m.decode(z), m.decode(zz)
        assert torch.equal(y[:, :, :5], y2[:, :, :5]) and (y[:, :, 5] - y2[:, :, 5]).abs().max() > 1e-4
    torch.testing.assert_close(m.encode(x).mean.detach(), z, rtol=0, atol=1e-5)
    torch.testing.assert_close(m.decode(z).detach(), y, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot map"):
        VideoVAE(dataclasses.replace(PRESETS["tiny-f4c8-dc"], channels=(8, 12, 16)))  # 12 -> 4 x 8: refused
