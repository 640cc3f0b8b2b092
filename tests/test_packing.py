"""Packed batches: packed rows give what their clips give one by one (outputs, gradients, the flow loss), no token
attends across clips, positions restart per clip, the packer never splits or overflows and fills rows on a
realistic shape mix, and ``train-dit --pack`` trains."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import randomize, tiny_dit_config
from model.dit import DiT, DiTConfig, dit_config, pack_tokens, rope_from_positions, rope_tables, unpack_tokens
from model.flow import Draws, Flow, FlowConfig
from model.packed import PackedAttention, pack_layout
from train.packing import PackPlan, build_step, draw_clips, pack_bins, packed_loss, resolve_backend, shape_mix

# Clips of different grids (one-frame images, portrait, landscape, longer clips) in two rows of 48 tokens,
# with captions of 3, 6, 0 (empty) and 2 tokens.
ROWS = [[(2, 4, 4), (1, 2, 6)], [(3, 2, 2), (1, 4, 4), (1, 2, 2)]]
LENGTH = 48
TEXT_LENS = [3, 6, 0, 2, 5]
TOL = dict(rtol=1e-10, atol=1e-11)  # float64: packed and one-by-one agree to rounding

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors run fastest on one thread


def _model(cfg: DiTConfig, seed: int = 0) -> DiT:
    """A float64 DiT with every parameter random (zero-initialised paths carry signal too)."""
    torch.manual_seed(seed)
    return randomize(DiT(cfg).double(), seed + 1)


def _clips(cfg: DiTConfig, rows=ROWS, text_lens=TEXT_LENS, seed: int = 0):
    """Inputs (C_in, T, H, W) per clip, times (K,), captions (K, Lt, D) and mask (K, Lt), float64."""
    g = torch.Generator().manual_seed(seed)
    pt, ph, pw = cfg.patch
    clips = [torch.randn(cfg.in_channels, t * pt, h * ph, w * pw, generator=g, dtype=torch.float64)
             for row in rows for t, h, w in row]
    k, lt = len(clips), max(text_lens)
    text = torch.randn(k, lt, cfg.text_dim, generator=g, dtype=torch.float64)
    mask = torch.zeros(k, lt, dtype=torch.bool)
    for i, n in enumerate(text_lens):
        mask[i, :n] = True
    return clips, torch.rand(k, generator=g, dtype=torch.float64), text, mask


def _one_by_one(model: DiT, clips, t, text, mask) -> list[torch.Tensor]:
    """Each clip alone, with its caption cut to its own length (the empty caption: one masked token)."""
    out = []
    for k, z in enumerate(clips):
        n = max(1, int(mask[k].sum()))
        out.append(model(z[None], t[k:k + 1], text[k:k + 1, :n], mask[k:k + 1, :n])[0])
    return out


def _packed(model: DiT, clips, t, text, mask, backend: str, rows=ROWS, length: int = LENGTH):
    layout = pack_layout(rows, length, mask, backend=backend)
    out = model(pack_tokens(clips, layout, model.cfg.patch), t, text, mask, packed=layout)
    return unpack_tokens(out, layout, model.cfg.patch, model.cfg.latent_channels), out, layout


# ----------------------------------------------------------------------------------------------------------
# The network on packed rows
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sdpa", "split", "flex"])
@pytest.mark.parametrize("kw", [{}, {"pooled_text": True}, {"patch": (1, 1, 2)}])
def test_packed_forward_equals_clips_one_by_one(backend, kw):
    cfg = tiny_dit_config(**kw)
    model = _model(cfg)
    clips, t, text, mask = _clips(cfg)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlexAttention on the CPU: "called without torch.compile"
        got, packed, layout = _packed(model, clips, t, text, mask, backend)
        want = _one_by_one(model, clips, t, text, mask)
    assert packed.shape == (2, LENGTH, cfg.latent_channels * cfg.patch[0] * cfg.patch[1] * cfg.patch[2])
    assert 0.5 < layout.fill < 1.0  # both rows carry padding
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL, msg=f"clip {k}")
    assert (want[0] - want[3]).abs().max() > 1e-2  # the clips really differ (same grid (1, 4, 4) vs (2, 4, 4))


@pytest.mark.parametrize("backend", ["sdpa", "split"])
def test_packed_gradients_equal_one_by_one(backend):
    """Gradients of every parameter from one packed pass equal the sum over clips run alone (float64, 1e-10)."""
    cfg = tiny_dit_config(pooled_text=True)
    clips, t, text, mask = _clips(cfg)
    g = torch.Generator().manual_seed(5)
    targets = [torch.randn(z.shape[0] // 2, *z.shape[1:], generator=g, dtype=torch.float64) for z in clips]

    def loss(outs):
        return sum(((o - y) ** 2).sum() for o, y in zip(outs, targets))

    a, b = _model(cfg), _model(cfg)
    loss(_packed(a, clips, t, text, mask, backend)[0]).backward()
    loss(_one_by_one(b, clips, t, text, mask)).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)
    assert a.blocks[0].ada[-1].weight.grad.abs().sum() > 0  # the gradients are not trivially zero


def test_no_token_attends_across_clips():
    """Change clip 1's input, time and caption, and the padding: every other clip's output stays bit for bit."""
    cfg = tiny_dit_config(pooled_text=True)
    model = _model(cfg)
    clips, t, text, mask = _clips(cfg)
    with torch.no_grad():
        for backend in ("sdpa", "split"):
            base, packed, layout = _packed(model, clips, t, text, mask, backend)
            clips2, t2, text2 = [z.clone() for z in clips], t.clone(), text.clone()
            clips2[1] += 3.0 * torch.randn_like(clips2[1])
            t2[1] = 0.9 - t2[1]
            text2[1] = torch.randn_like(text2[1])
            moved, _, _ = _packed(model, clips2, t2, text2, mask, backend)
            assert (moved[1] - base[1]).abs().max() > 1e-2
            for k in (0, 2, 3, 4):
                assert torch.equal(moved[k], base[k]), (backend, k)
            x = pack_tokens(clips, layout, cfg.patch)
            x[layout.seg < 0] = 1e3  # garbage in the padding
            again = model(x, t, text, mask, packed=layout)
            assert torch.equal(again[layout.seg >= 0], packed[layout.seg >= 0]), backend


def test_positions_restart_per_clip_and_the_place_in_a_row_does_not_matter():
    cfg = tiny_dit_config()
    layout = pack_layout(ROWS, LENGTH, text_len=2)
    cos, sin = rope_from_positions(layout.pos, cfg.head_dim, cfg.rope_theta)  # (S, L, dh/2)
    for grid, r, a, n in zip(layout.grids, layout.rows, layout.starts, layout.tokens):
        assert layout.pos[r, a].tolist() == [0, 0, 0]  # every clip starts at the origin
        assert layout.pos[r, a + n - 1].tolist() == [g - 1 for g in grid]
        assert (layout.seg[r, a:a + n] == layout.seg[r, a]).all()
        ref_cos, ref_sin = rope_tables(grid, cfg.head_dim, cfg.rope_theta, torch.device("cpu"))
        assert torch.equal(cos[r, a:a + n], ref_cos) and torch.equal(sin[r, a:a + n], ref_sin)
    # the same clips in another order and other rows give the same outputs
    model = _model(cfg)
    clips, t, text, mask = _clips(cfg)
    with torch.no_grad():
        base, _, _ = _packed(model, clips, t, text, mask, "sdpa")
        order = [4, 2, 0, 3, 1]
        rows = [[ROWS[1][2], ROWS[1][0], ROWS[0][0]], [ROWS[1][1], ROWS[0][1]]]
        moved, _, _ = _packed(model, [clips[i] for i in order], t[order], text[order], mask[order], "sdpa", rows, 48)
    for j, i in enumerate(order):
        torch.testing.assert_close(moved[j], base[i], **TOL)


def test_layout_keys_masks_and_varlen_bounds():
    mask = torch.zeros(5, 6, dtype=torch.bool)
    for i, n in enumerate(TEXT_LENS):
        mask[i, :n] = True
    layout = pack_layout(ROWS, LENGTH, mask)
    keys = 1 + mask.shape[1]
    # each clip's keys: its null token and its real caption tokens, in the row's key list and in varlen's
    for k, n in enumerate(TEXT_LENS):
        r = layout.rows[k]
        own = layout.key_index[r][layout.key_seg[r] == k].tolist()
        assert own == [k * keys + j for j in range(1 + n)]
    # varlen: clips in row order, then each row's padding as one sequence with one key
    q_lens = np.diff(layout.cu_q.numpy()).tolist()
    assert q_lens == [32, 12, 4, 12, 16, 4, 16]
    assert np.diff(layout.cu_k.numpy()).tolist() == [4, 7, 1, 1, 3, 6, 1]
    assert layout.max_q == 32 and layout.max_k == 8  # bounds: the next powers of two
    attn = PackedAttention(layout)
    same = layout.seg[:, :, None] == layout.seg[:, None, :]
    assert torch.equal(attn.self_mask[:, 0], same)
    cross = attn.cross_mask[:, 0]
    real = layout.seg >= 0
    assert torch.equal(cross[real], (layout.seg[:, :, None] == layout.key_seg[:, None, :])[real])
    with pytest.raises(ValueError, match="more than its length"):
        pack_layout([[(2, 4, 4), (2, 4, 4)]], LENGTH)
    with pytest.raises(ValueError, match="backend"):
        pack_layout(ROWS, LENGTH, backend="fast")


def test_varlen_needs_cuda_and_auto_picks_sdpa_on_the_cpu():
    layout = pack_layout(ROWS, LENGTH, text_len=2, backend="varlen")
    with pytest.raises(ValueError, match="CUDA"):
        PackedAttention(layout)
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(ValueError, match="pack_attention"):
        resolve_backend("fastest", torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------
# The flow loss on packed rows
# ----------------------------------------------------------------------------------------------------------


def _latents(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def _flow(model) -> Flow:
    return Flow(model, FlowConfig(caption_dropout=0.3))  # every task, some captions dropped


def _per_clip_reference(flow: Flow, latents, text, mask, draws: list[Draws]):
    """The training objective run one clip at a time: Flow.loss per clip, combined per generated element."""
    total, count = 0.0, 0.0
    for k, z in enumerate(latents):
        n = max(1, int(mask[k].sum()))
        loss = flow.loss(z[None], text[k:k + 1, :n], mask[k:k + 1, :n], draws=draws[k])
        generated = float((1 - draws[k].mask).sum()) * z.shape[0] * z.shape[2] * z.shape[3]
        total, count = total + loss * generated, count + generated
    return total / count


def test_packed_loss_and_gradients_equal_the_clips_one_by_one():
    """Per-token weighting: the packed loss is each clip's Flow.loss weighted by its generated elements. Both
    compute the squared error in float32 (as Flow.loss does), hence the 1e-5 tolerance on a float64 model."""
    cfg = tiny_dit_config()
    shapes = [(4, 3, 4, 4), (4, 1, 6, 2), (4, 5, 2, 2), (4, 2, 4, 6), (4, 1, 2, 2)]
    latents = _latents(shapes)
    _, _, text, mask = _clips(cfg, text_lens=[3, 6, 0, 2, 5])
    rows = [[0, 1], [2, 3, 4]]
    a, b = _flow(_model(cfg)), _flow(_model(cfg))
    draws = draw_clips(a, latents, torch.Generator().manual_seed(3))
    assert any(d.mask.sum() > 0 for d in draws) and any(d.drop.item() for d in draws)  # tasks and dropout happen
    step = build_step(latents, text, mask, rows, draws, 48, cfg.patch)
    assert step.tokens == sum(s[1] * (s[2] // 2) * (s[3] // 2) for s in shapes) == 33
    packed = packed_loss(a.model, step, cfg.patch)
    reference = _per_clip_reference(b, latents, text, mask, draws)
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=0)
    # the weighting is per element: the plain mean of the clips' losses is a different number
    plain = torch.stack([b.loss(z[None], text[k:k + 1], mask[k:k + 1], draws=draws[k]) for k, z in enumerate(latents)])
    assert abs(float(plain.mean().detach()) - float(reference.detach())) > 1e-3
    packed.backward()
    reference.backward()
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8, msg=name)


def test_packed_loss_on_one_shape_is_flow_loss_on_the_batch():
    """Clips of one shape: the packed loss and its per-frame log equal Flow.loss on the stacked batch."""
    cfg = tiny_dit_config()
    latents = _latents([(4, 3, 4, 4)] * 3, seed=1)
    _, _, text, mask = _clips(cfg, rows=[[(1, 1, 1)] * 3], text_lens=[4, 2, 3])
    flow = _flow(_model(cfg))
    draws = draw_clips(flow, latents, torch.Generator().manual_seed(4))
    step = build_step(latents, text, mask, [[0, 2], [1]], draws, 24, cfg.patch)
    loss, per_frame = packed_loss(flow.model, step, cfg.patch, per_frame=True)
    batch = Draws(*(torch.cat([getattr(d, f) for d in draws]) for f in ("mask", "drop", "t", "noise")))
    want, want_frames = flow.loss(torch.stack(latents), text, mask, draws=batch, per_frame=True)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(per_frame.double(), want_frames.double(), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# The packer
# ----------------------------------------------------------------------------------------------------------


def test_pack_bins_never_splits_or_overflows():
    rng = np.random.default_rng(0)
    for capacity in (64, 1000, 4096):
        sizes = [int(s) for s in rng.integers(1, capacity + 1, size=300)]
        bins = pack_bins(sizes, capacity)
        assert sorted(i for b in bins for i in b) == list(range(len(sizes)))  # every clip once, whole
        assert all(sum(sizes[i] for i in b) <= capacity for b in bins)
        # best fit: no two bins could be merged, or first-fit would have joined them
        loads = sorted(sum(sizes[i] for i in b) for b in bins)
        assert loads[0] + loads[1] > capacity
    with pytest.raises(ValueError, match="does not fit"):
        pack_bins([10, 70], 64)


def test_plan_covers_each_clip_once_per_epoch_and_resumes():
    tokens = [t * (h // 2) * (w // 2) for _, t, h, w in shape_mix(500, seed=1, max_tokens=8192)]
    plan = PackPlan(tokens, 8192, rows=3, seed=0, window=128)
    first = PackPlan(tokens, 8192, rows=3, seed=0, window=128)
    epoch0 = plan.epoch_rows(0)
    assert sorted(i for row in epoch0 for i in row) == list(range(len(tokens)))
    assert all(sum(tokens[i] for i in row) <= 8192 for row in epoch0)
    n0 = -(-len(epoch0) // 3)
    batches = [plan.batch(g) for g in range(n0 + 2)]  # into epoch 1
    assert all(1 <= len(b) <= 3 for b in batches)
    assert sorted(i for b in batches[:n0] for row in b for i in row) == list(range(len(tokens)))
    assert batches[n0] != batches[0]  # epoch 1 is reshuffled
    assert first.batch(n0 + 1) == batches[n0 + 1]  # a fresh plan (a resumed run) gives the same batch
    from concurrent.futures import ThreadPoolExecutor

    threaded = PackPlan(tokens, 8192, rows=3, seed=0, window=128)  # the trainer prepares batches on threads
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(threaded.batch, range(n0 + 2))) == batches
    with pytest.raises(ValueError, match="--pack_tokens"):
        PackPlan([100, 9000], 8192, 1, 0)


@pytest.mark.parametrize("bucketed,length", [(False, 16384), (False, 32768), (True, 65536)])
def test_fill_on_a_realistic_shape_mix(bucketed, length):
    """>= 95 % of the token slots hold clip tokens. Native shapes (sides at 16 px, 1-129 frames, 20 % images);
    bucketed shapes (today's latent cache: 5 aspect ratios, 2 areas, 1-65 frames) fill rows of 64k tokens, not
    rows of 32k, where most rows hold one 17.5k-token clip (65 frames at 512^2) and too few small clips."""
    shapes = shape_mix(2000, seed=2, max_tokens=length, bucketed=bucketed)
    assert len(set(shapes)) >= (20 if bucketed else 200)  # a real mix of shapes
    assert 0.15 < sum(s[1] == 1 for s in shapes) / len(shapes) < 0.25  # images as one-frame clips
    tokens = [t * (h // 2) * (w // 2) for _, t, h, w in shapes]
    plan = PackPlan(tokens, length, rows=1, seed=0)
    for epoch in (0, 1):
        assert plan.fill(epoch) >= 0.95, plan.fill(epoch)


# ----------------------------------------------------------------------------------------------------------
# train-dit --pack
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory):
    """Eight clips of four latent shapes (two frames, one frame, portrait, landscape) with and without captions."""
    from test_train_dit import smooth_latent, write_latent_cache

    shapes = [(16, 2, 4, 4), (16, 1, 4, 4), (16, 2, 6, 2), (16, 1, 2, 8)]
    clips = [(f"c{i}", smooth_latent(i, shapes[i % 4]), {"short": 3 + i, "dense": 5} if i % 3 else {})
             for i in range(8)]
    return write_latent_cache(tmp_path_factory.mktemp("mixed"), clips)


def _pack_cfg(cache, run_dir, **kw):
    from test_train_dit import tiny_cfg

    # rows of 16 tokens, two a step (token_budget 32): the clips have 8, 4, 6 and 4 tokens
    return tiny_cfg(cache, run_dir, **{"pack": True, "pack_tokens": 16, "token_budget": 32, "caption_dropout": 0.2,
                                       **kw})


def test_train_dit_pack_step0_matches_the_clips_one_by_one_and_resumes(mixed_cache, tmp_path):
    """Step 0's packed loss equals the same clips, captions and draws through Flow.loss one clip at a time (per-token
    weights), and a packed run stopped and resumed gives the same losses step for step."""
    from model.conditioning import TaskMix
    from model.text import pad_embeddings
    from train.latents import LatentReader, latent_norm, pick_caption, scan_latents
    from train.train_dit import main

    cfg = _pack_cfg(mixed_cache, tmp_path / "full", steps=4)
    full = main(cfg)["losses"]
    assert len(full) == 4 and all(np.isfinite(full))
    # step 0 by hand: the plan's rows, the loop's caption and draw generators, Flow.loss per clip
    records = scan_latents(mixed_cache)
    tokens = [r.latent_shape[1] * (r.latent_shape[2] // 2) * (r.latent_shape[3] // 2) for r in records]
    rows = PackPlan(tokens, 16, 2, cfg.seed).batch(0)
    assert len({records[i].latent_shape for row in rows for i in row}) > 1  # shapes a bucketed batch cannot mix
    manifest = json.loads((mixed_cache / "_manifest.json").read_text())
    scale, shift = latent_norm(cfg.latent_scale, cfg.latent_shift, manifest)
    reader, rng = LatentReader(), np.random.default_rng([cfg.seed, 0, 5])
    latents, texts = [], []
    for i in (i for row in rows for i in row):
        z, text = reader.load(records[i])
        kind = pick_caption(records[i].captions, cfg.caption_mix, rng)
        latents.append((z - shift) * scale)
        texts.append(text[kind] if kind else torch.zeros(0, 384))
    emb = pad_embeddings(texts)
    torch.manual_seed(cfg.seed)
    flow = Flow(DiT(dit_config("tiny", latent_channels=16, text_dim=384)),
                FlowConfig(caption_dropout=cfg.caption_dropout, tasks=TaskMix(*cfg.task_mix)))
    draws = draw_clips(flow, latents, torch.Generator().manual_seed(cfg.seed * 1_000_003))
    want = _per_clip_reference(flow, latents, emb.tokens, emb.mask, draws)
    assert full[0] == pytest.approx(float(want.detach()), rel=1e-5)  # the model predicts 0 at init (adaLN-Zero)
    # exact resume
    main(_pack_cfg(mixed_cache, tmp_path / "split", steps=2))
    resumed = main(_pack_cfg(mixed_cache, tmp_path / "split", steps=4))["losses"]
    assert resumed == full[2:]


def test_train_dit_pack_loss_falls(mixed_cache, tmp_path):
    cfg = _pack_cfg(mixed_cache, tmp_path / "run", steps=40, lr=1e-2, caption_dropout=0.0, ckpt_every=1000,
                    log_every=1000)
    from train.train_dit import main

    losses = main(cfg)["losses"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), (np.mean(losses[:10]), np.mean(losses[-10:]))


def test_bench_pack_parses_and_tabulates(capsys):
    """bench_pack's own logic on the CPU (no timing is asserted): the smoke config, the medians over rounds and
    the ratios against the single-shape batch and Wan."""
    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("bench_pack", bench_dir / "bench_pack.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_pack"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    assert mod.parse(["--fill"]) is None  # the fill table only
    smoke = mod.parse(["--smoke"])
    assert smoke.device == "cpu" and smoke.preset == "tiny" and "varlen" not in smoke.backends
    cfg = mod.parse(["--single", "8,32,32", "--backends", "flex,split", "--no-wan"])
    assert cfg.single == (8, 32, 32) and cfg.backends == ("flex", "split") and not cfg.wan
    with pytest.raises(SystemExit):
        mod.parse(["--single", "8,32"])
    def rows(steps, tokens):
        return [mod.Row("x", step_s=s, tokens_per_s=tokens / s, mfu=0.1 / s, peak_mem_gb=1.0) for s in steps]

    summary = mod.summarise({"single shape, compiled": rows([0.2, 0.1, 0.3], 1000),
                             "packed varlen, compiled": rows([0.21, 0.25, 0.2], 950),
                             "wan, compiled": rows([0.12, 0.12, 0.12], 1000),
                             "packed flex, compiled": [mod.Row("packed flex, compiled", note="failed: RuntimeError")]})
    single = summary[0]
    assert single["step_s"] == 0.2 and (single["step_min"], single["step_max"]) == (0.1, 0.3)
    assert single["tokens_per_s"] == pytest.approx(5000) and single["rounds"] == 3
    assert summary[3]["rounds"] == 0 and "failed" in summary[3]["note"]
    info = dict(gpu="cpu", torch="x", date="d", preset="tiny", hidden=64, depth=2, heads=4, single=(2, 8, 8), batch=2,
                single_tokens=1000, rows=1, length=1024, packed_clips=3, packed_tokens=950, packed_fill=0.93,
                text_len=8)
    mod.report(info, summary)
    out = capsys.readouterr().out
    assert "packed varlen, compiled / single shape: 0.905x tokens/s" in out  # 950 / 0.21 against 1000 / 0.2
    assert "single shape / Wan (compiled): 0.600x tokens/s" in out
    assert "| packed flex, compiled | 0 | failed: RuntimeError |" in out


def test_per_clip_modulation_matches_indexing_and_passes_gradcheck():
    """clip_modulate / clip_gate (which keep no gathered per-token copies for backward) equal plain indexing, and
    their gradients pass torch's numerical check, padding tokens included (they borrow clip 0)."""
    from model.packed import clip_gate, clip_modulate

    g = torch.Generator().manual_seed(0)
    clip = torch.tensor([[0, 0, 1, 1, 1, 0], [2, 2, 2, 3, 0, 0]])  # (S, L), trailing 0s as padding would map
    x = torch.randn(2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    shift, scale, gate = (torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.equal(clip_modulate(x, shift, scale, clip), x * (1 + scale[clip]) + shift[clip])
    assert torch.equal(clip_gate(gate, x, clip), gate[clip] * x)
    assert torch.autograd.gradcheck(lambda a, b, c: clip_modulate(a, b, c, clip), (x, shift, scale))
    assert torch.autograd.gradcheck(lambda a, b: clip_gate(b, a, clip), (x, gate))
