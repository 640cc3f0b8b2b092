"""DiT: shapes over several grids, patchify round trip, 3-D RoPE, adaLN-Zero, text mask, checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import randomize, tiny_dit_config
from model.dit import (
    DiT,
    DiTConfig,
    apply_rope,
    count_parameters,
    dit_config,
    forward_flops,
    patchify,
    rope_tables,
    unpatchify,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors run fastest on one thread


def _inputs(cfg: DiTConfig, b: int, t: int, h: int, w: int, seed: int = 0, text_len: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=g)
    times = torch.rand(b, generator=g)
    text = torch.randn(b, text_len, cfg.text_dim, generator=g)
    mask = torch.ones(b, text_len, dtype=torch.bool)
    return x, times, text, mask


@pytest.mark.parametrize("grid", [(1, 4, 4), (3, 8, 6), (5, 4, 10), (2, 6, 2)])
def test_forward_shapes_over_buckets(grid):
    cfg = tiny_dit_config()
    model = randomize(DiT(cfg))
    x, t, text, mask = _inputs(cfg, 2, *grid)
    out = model(x, t, text, mask)
    assert out.shape == (2, cfg.latent_channels, *grid)
    assert torch.isfinite(out).all()


def test_in_channels_are_latent_condition_and_mask():
    cfg = tiny_dit_config()
    assert cfg.in_channels == 2 * 4 + 1
    with pytest.raises(ValueError, match="input channels"):
        DiT(cfg)(torch.zeros(1, 4, 1, 4, 4), torch.zeros(1), torch.zeros(1, 2, 24))


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2), (1, 1, 1), (1, 4, 2)])
def test_patchify_round_trip(patch):
    x = torch.randn(2, 5, 4, 8, 8)
    tokens = patchify(x, patch)
    grid = (4 // patch[0], 8 // patch[1], 8 // patch[2])
    assert tokens.shape == (2, grid[0] * grid[1] * grid[2], 5 * patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(tokens, grid, patch, 5), x)
    # token 1 is the second patch along w: its first value is x[..., 0, 0, pw]
    assert tokens[0, 1, 0] == x[0, 0, 0, 0, patch[2]]


def test_patchify_rejects_indivisible_grid():
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 2, 3, 5, 4), (1, 2, 2))


def test_patch_sizes_run_end_to_end():
    cfg = tiny_dit_config(patch=(2, 2, 2))
    out = randomize(DiT(cfg))(*_inputs(cfg, 1, 4, 4, 4))
    assert out.shape == (1, 4, 4, 4, 4)


@pytest.mark.parametrize("grid", [(1, 3, 5), (4, 4, 4), (7, 2, 9)])
def test_rope_is_a_rotation(grid):
    cos, sin = rope_tables(grid, 24, 10000.0, torch.device("cpu"))
    n = grid[0] * grid[1] * grid[2]
    assert cos.shape == (n, 12)
    q = torch.randn(2, n, 3, 24)
    rq = apply_rope(q, cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))  # norms preserved
    assert not torch.allclose(rq[:, 1:], q[:, 1:])  # and it does move vectors away from the origin patch
    torch.testing.assert_close(rq[:, 0], q[:, 0])  # position (0, 0, 0) is the identity


def test_rope_depends_only_on_relative_position():
    head_dim, grid = 24, (6, 6, 6)
    cos, sin = rope_tables(grid, head_dim, 10000.0, torch.device("cpu"))
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def idx(t, h, w):
        return (t * grid[1] + h) * grid[2] + w

    def score(pq, pk):
        a = apply_rope(q, cos[idx(*pq)][None], sin[idx(*pq)][None])
        b = apply_rope(k, cos[idx(*pk)][None], sin[idx(*pk)][None])
        return (a * b).sum()

    base = score((1, 2, 0), (0, 1, 3))
    shifted = score((4, 5, 2), (3, 4, 5))  # same offset (+3, +3, +2) on both positions
    torch.testing.assert_close(base, shifted, atol=1e-5, rtol=1e-5)
    other = score((1, 2, 0), (0, 1, 4))  # a different relative offset (along w)
    assert (base - other).abs() > 1e-3
    # each axis is encoded: a shift along t only also changes the score
    assert (base - score((1, 2, 0), (1, 1, 3))).abs() > 1e-3


def test_model_output_depends_on_token_order_through_rope():
    """Permuting patches changes the output beyond the permutation: positions matter."""
    cfg = tiny_dit_config()
    model = randomize(DiT(cfg))
    x, t, text, mask = _inputs(cfg, 1, 1, 4, 4)
    out = model(x, t, text, mask)
    flipped = model(x.flip(-1), t, text, mask).flip(-1)
    assert (out - flipped).abs().max() > 1e-3


def test_adaln_zero_init_predicts_zero_and_blocks_are_identity():
    cfg = tiny_dit_config()
    model = DiT(cfg)
    x, t, text, mask = _inputs(cfg, 2, 2, 4, 4)
    assert torch.count_nonzero(model(x, t, text, mask)) == 0
    h = torch.randn(2, 8, cfg.hidden)
    c = torch.randn(2, cfg.hidden)
    y = torch.randn(2, 6, cfg.hidden)
    cos, sin = rope_tables((2, 2, 2), cfg.head_dim, cfg.rope_theta, torch.device("cpu"))
    torch.testing.assert_close(model.blocks[0](h, c, y, None, cos, sin), h)
    # and it trains: one gradient step moves the zero output
    loss = (model(x, t, text, mask) - 1).pow(2).mean()
    loss.backward()
    assert model.final.linear.weight.grad.abs().sum() > 0


def test_text_mask_hides_padding_and_text_matters():
    cfg = tiny_dit_config()
    model = randomize(DiT(cfg))
    x, t, text, _ = _inputs(cfg, 2, 1, 4, 4, text_len=6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = model(x, t, text, mask)
    garbage = text.clone()
    garbage[0, 3:] = 100.0  # padding positions of sample 0 only
    torch.testing.assert_close(model(x, t, garbage, mask), out)
    other = text.clone()
    other[0, :3] = torch.randn(3, cfg.text_dim)
    assert (model(x, t, other, mask)[0] - out[0]).abs().max() > 1e-3
    empty = model(x, t, text, torch.zeros_like(mask))  # the empty caption: finite thanks to the null token
    assert torch.isfinite(empty).all()


def test_pooled_text_is_a_second_path_that_ignores_padding_and_leaves_old_models_alone():
    plain = DiT(tiny_dit_config())
    assert not any(k.startswith("p_embed") for k in plain.state_dict())  # old checkpoints still load strictly
    cfg = tiny_dit_config(pooled_text=True)
    fresh = DiT(cfg)
    x, t, text, _ = _inputs(cfg, 2, 1, 4, 4, text_len=6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    c = fresh.t_embed(t)
    torch.testing.assert_close(fresh.p_embed(text, mask), torch.zeros_like(c))  # adds nothing at init
    model = randomize(DiT(cfg))
    for block in model.blocks:  # cut cross-attention: any text effect left comes through the pooled path
        block.cross.out.weight.data.zero_()
        block.cross.out.bias.data.zero_()
    out = model(x, t, text, mask)
    garbage = text.clone()
    garbage[0, 3:] = 100.0  # padding of sample 0 stays out of the mean
    torch.testing.assert_close(model(x, t, garbage, mask), out)
    other = text.clone()
    other[0, :3] = torch.randn(3, cfg.text_dim)
    assert (model(x, t, other, mask)[0] - out[0]).abs().max() > 1e-3
    empty = torch.zeros_like(mask)  # dropped captions pool to zero whatever their tokens hold
    torch.testing.assert_close(model(x, t, text, empty), model(x, t, torch.randn_like(text), empty))
    one = torch.randn(1, 1, cfg.text_dim)
    rep, m = one.expand(1, 4, -1).clone(), torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(model.p_embed(rep, m), model.p_embed.mlp(one[:, 0]))  # the mean of one real token


def test_time_matters():
    cfg = tiny_dit_config()
    model = randomize(DiT(cfg))
    x, t, text, mask = _inputs(cfg, 1, 1, 4, 4)
    assert (model(x, t, text, mask) - model(x, t * 0.5, text, mask)).abs().max() > 1e-4


def test_checkpointing_gives_the_same_outputs_and_gradients():
    cfg = tiny_dit_config()
    ref, ckpt = randomize(DiT(cfg)), randomize(DiT(cfg))
    ckpt.set_checkpointing([1])
    assert [b.checkpoint for b in ckpt.blocks] == [False, True]
    ckpt.set_checkpointing(True)
    assert all(b.checkpoint for b in ckpt.blocks)
    x, t, text, mask = _inputs(cfg, 2, 2, 4, 4)
    a, b = ref(x, t, text, mask), ckpt(x, t, text, mask)
    torch.testing.assert_close(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_batch_elements_are_independent():
    cfg = tiny_dit_config()
    model = randomize(DiT(cfg))
    x, t, text, mask = _inputs(cfg, 3, 2, 4, 4)
    full = model(x, t, text, mask)
    single = model(x[1:2], t[1:2], text[1:2], mask[1:2])
    torch.testing.assert_close(full[1:2], single, atol=1e-5, rtol=1e-5)


def test_presets_sizes_and_flops():
    sizes = {name: count_parameters(dit_config(name, text_dim=4096)) for name in ("tiny", "B", "1B")}
    assert sizes["tiny"] < 2e6
    assert 0.9e9 < sizes["1B"] < 1.2e9
    cfg = dit_config("1B", text_dim=4096)
    f1 = forward_flops(cfg, (16, 32, 32), 512)
    f2 = forward_flops(cfg, (16, 32, 64), 512)
    assert f2 > 2 * f1  # attention is quadratic in tokens
    # linear part: about 2 FLOPs per parameter per token
    n = 16 * 32 * 32
    assert f1 > 2 * 0.9 * sizes["1B"] * n * 0.7
    with pytest.raises(ValueError, match="unknown"):
        dit_config("huge")


def test_flop_formula_matches_pytorch_flop_counter():
    """The analytic count used for MFU: its matrix part equals torch's FlopCounter (CPU SDPA is not counted
    there, so attention's 4 N^2 D + 4 N (L+1) D per block is added in the test by hand)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = tiny_dit_config()
    model = DiT(cfg)
    x, t, text, mask = _inputs(cfg, 1, 4, 16, 16, text_len=5)
    with FlopCounterMode(display=False) as counter:
        model(x, t, text, mask)
    n, d = 4 * 8 * 8, cfg.hidden
    attention = cfg.depth * (4 * n * n * d + 4 * n * 6 * d)
    analytic_matmul = forward_flops(cfg, (4, 8, 8), 5) - attention
    counted = counter.get_total_flops()
    # the formula leaves out the per-sample adaLN / time MLPs (< 0.5 % here)
    assert analytic_matmul <= counted < analytic_matmul * 1.005


def test_qk_norm_matches_rmsnorm_and_keeps_bf16_queries_in_bf16():
    from model.dit import QKNorm

    torch.manual_seed(0)
    ours, ref = QKNorm(16, eps=1e-6), torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_(1, 0.2)
    ref.load_state_dict(ours.state_dict())  # same parameter name: old checkpoints load unchanged
    x = torch.randn(2, 5, 4, 16)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    xb = x.bfloat16()
    out = ours(xb)
    # torch names its unfused fallback in a warning it gives once per process: ask a fresh one, ours first
    import subprocess
    import sys

    probe = ("import warnings, torch; from model.dit import QKNorm\n"
             "x = torch.randn(2, 3, 16).bfloat16()\n"
             "for name, norm in (('ours', QKNorm(16)), ('plain', torch.nn.RMSNorm(16))):\n"
             "    with warnings.catch_warnings(record=True) as w:\n"
             "        warnings.simplefilter('always'); norm(x)\n"
             "    print(name, any('Mismatch dtype' in str(m.message) for m in w))\n")
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert got == ["ours", "False", "plain", "True"], got
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref(x), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert ours.weight.grad is not None and ours.weight.grad.dtype == torch.float32


def test_rope_from_positions_gives_the_grid_tables_bit_for_bit():
    from model.dit import rope_from_positions

    grid = (3, 4, 5)
    axes = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")
    pos = torch.stack([a.reshape(-1) for a in axes], dim=-1)  # (N, 3) integer positions
    cos, sin = rope_from_positions(pos, 24, 10000.0)
    ref_cos, ref_sin = rope_tables(grid, 24, 10000.0, torch.device("cpu"))
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    # per-token tables (B, N, d/2) rotate like the shared (N, d/2) table
    q = torch.randn(2, pos.shape[0], 3, 24)
    torch.testing.assert_close(apply_rope(q, cos.expand(2, -1, -1), sin.expand(2, -1, -1)), apply_rope(q, cos, sin),
                               rtol=0, atol=0)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_packed_clip_without_padding_is_the_unpacked_forward(checkpointing):
    """A row holding one clip and nothing else is the plain forward (outputs and gradients), under checkpointing
    too; the packed path refuses inputs that do not match its layout."""
    from model.dit import pack_tokens
    from model.packed import pack_layout

    cfg = tiny_dit_config(pooled_text=True)
    a, b = randomize(DiT(cfg)), randomize(DiT(cfg))
    a.set_checkpointing(checkpointing)
    x, t, text, mask = _inputs(cfg, 1, 2, 4, 6, text_len=5)
    mask[0, 3:] = False
    layout = pack_layout([[(2, 2, 3)]], 12, mask)
    packed = a(pack_tokens([x[0]], layout, cfg.patch), t, text, mask, packed=layout)  # (1, 12, C*4)
    plain = b(x, t, text, mask)
    torch.testing.assert_close(unpatchify(packed, (2, 2, 3), cfg.patch, cfg.latent_channels), plain,
                               rtol=1e-5, atol=1e-6)
    packed.square().sum().backward()
    plain.square().sum().backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="packed input"):
        a(x, t, text, mask, packed=layout)
    with pytest.raises(ValueError, match="packed clips"):
        a(pack_tokens([x[0]], layout, cfg.patch), t.repeat(2), text, mask, packed=layout)


def test_a_dit_narrower_than_its_patch_is_named():
    """``narrow_output``: a DiT whose width is under the latent values per patch (8 channels x 4x4 = 128 > 64) is
    named with both numbers, since its velocity spans only ``hidden`` directions of each patch; 2x2 patches (32)
    or a width of 128 pass."""
    from model.dit import dit_config, narrow_output

    note = narrow_output(dit_config("tiny", latent_channels=8, patch=(1, 4, 4)))
    assert note is not None and "(64)" in note and "= 128" in note
    assert narrow_output(dit_config("tiny", latent_channels=8, patch=(1, 2, 2))) is None
    assert narrow_output(dit_config("tiny", latent_channels=8, patch=(1, 4, 4), hidden=128)) is None
