"""The latent dataset (``train/latents.py``): the byte layout, the shared encoding functions, the cache's encoder
stage on bad rows, captions (columns, then the sidecar), the batch plan, caption mix and prefetching. The Ray job is tested in tests/test_cache_latents.py, on-the-fly training (ClipSource)
in tests/test_train_dit.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curate.media import encode_mp4
from helpers import synthetic_frames
from model.buckets import BucketConfig
from model.checkpoint import save_checkpoint
from model.vae import build_vae
from train.latents import (
    BatchPlan, LatentEncoder, LatentRecord, bytes_to_tensor, encode_clips, pick_caption, tensor_to_bytes,
)

pytestmark = pytest.mark.timeout(120)


def test_tensor_bytes_round_trip_is_float16_little_endian():
    x = torch.randn(3, 2, 4, 5)
    blob, shape = tensor_to_bytes(x)
    assert shape == [3, 2, 4, 5] and len(blob) == x.numel() * 2
    assert np.array_equal(np.frombuffer(blob, "<f2"), x.numpy().astype("<f2").ravel())
    torch.testing.assert_close(bytes_to_tensor(blob, shape), x.half().float())


def test_chunked_encoding_equals_whole_and_batches_equal_singles():
    torch.manual_seed(0)
    vae = build_vae("tiny").eval()
    clips = [torch.rand(3, 9, 16, 16) * 2 - 1 for _ in range(2)]
    whole = encode_clips(vae, clips)
    assert whole.shape == (2, 16, 3, 2, 2) and whole.device.type == "cpu"
    torch.testing.assert_close(encode_clips(vae, clips, chunk_frames=4), whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(encode_clips(vae, clips[1:]), whole[1:], atol=1e-5, rtol=1e-4)


def test_latent_encoder_turns_bad_rows_into_statuses(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "vae", 1, {"vae": build_vae("tiny")}, extra={"config": {"preset": "tiny"}})
    enc = LatentEncoder(str(tmp_path / "vae"), BucketConfig(areas=(32 * 32,), frames=(5,), token_budget=4096),
                        str(tmp_path), chunk_frames=4)
    good = encode_mp4(synthetic_frames(0, 5, 32, 32))
    batch = {"clip_id": np.array(["ok", "corrupt", "none", "outside"], object),
             "num_frames": np.array([5, 5, 5, 5]), "height": np.array([32] * 4), "width": np.array([32] * 4),
             "clip_mp4": np.array([good, b"not an mp4", None, None], object),
             "clip_path": np.array([None, None, None, "../x.mp4"], object)}
    out = enc(batch)
    assert list(out["latent_status"]) == ["ok", "error:InvalidDataError", "error:FileNotFoundError",
                                          "error:ClipPathOutside"]
    assert "clip_mp4" not in out and "clip_path" not in out  # media leaves the batch here
    assert out["latent_shape"][0] == "16,2,4,4" and out["latent"][1] is None
    short = enc({"clip_id": np.array(["s"], object), "num_frames": np.array([3]), "height": np.array([8]),
                 "width": np.array([8]), "clip_mp4": np.array([good], object)})
    assert list(short["latent_status"]) == ["skipped:too-short"]


def test_captions_fall_back_to_the_sidecar_only_when_no_column_has_one(tmp_path):
    from train.latents import row_captions

    video = tmp_path / "sample_000.mp4"
    video.write_bytes(b"")
    video.with_suffix(".txt").write_text("first shot caption\nsecond shot caption\n")
    bare = {"clip_id": np.array(["a", "b"], object), "source_uri": np.array([str(video)] * 2, object),
            "scene_index": np.array([1, 5])}
    assert row_captions(bare, 0) == {"short": "second shot caption", "dense": None, "expanded": None}
    assert row_captions(bare, 1)["short"] is None  # no such shot line
    with_cols = dict(bare, caption_dense=np.array(["  a dense one ", None], object),
                     caption_short=np.array([None, "  "], object), scene_index=np.array([1, 0]))
    assert row_captions(with_cols, 0) == {"short": None, "dense": "a dense one", "expanded": None}
    assert row_captions(with_cols, 1)["short"] == "first shot caption"  # blank strings count as missing


def test_batch_plan_follows_shapes_and_token_budget():
    recs = [LatentRecord("f", i, f"c{i}", (16, 2, 4, 4) if i < 5 else (16, 1, 8, 8), ()) for i in range(8)]
    plan = BatchPlan(recs, token_budget=24, max_batch=8, patch=(1, 2, 2), seed=0)
    assert plan.sizes == {(16, 2, 4, 4): 3, (16, 1, 8, 8): 1}  # 8 tokens -> 24 // 8; 16 tokens -> 1
    for epoch in range(2):
        batches = [plan.batch(epoch * plan.per_epoch + j) for j in range(plan.per_epoch)]
        assert sorted(i for b in batches for i in b) == list(range(8))  # each clip once per epoch
        assert all(len({recs[i].latent_shape for i in b}) == 1 for b in batches)  # one shape per batch
    assert [plan.batch(j) for j in range(6)] != [plan.batch(plan.per_epoch + j) for j in range(6)]  # reshuffled
    again = BatchPlan(recs, 24, 8, (1, 2, 2), seed=0)
    assert [again.batch(j) for j in range(9)] == [plan.batch(j) for j in range(9)]


def test_caption_mix_uses_only_available_kinds_with_its_weights():
    rng = np.random.default_rng(0)
    mix = (("short", 0.2), ("dense", 0.8), ("expanded", 0.0))
    picks = [pick_caption(("short", "dense", "expanded"), mix, rng) for _ in range(2000)]
    assert set(picks) == {"short", "dense"} and 0.74 < picks.count("dense") / 2000 < 0.86
    assert {pick_caption(("short",), mix, rng) for _ in range(20)} == {"short"}  # falls back to what exists
    assert pick_caption(("expanded",), mix, rng) is None and pick_caption((), mix, rng) is None


def test_prefetched_keeps_order_depth_and_errors():
    import contextlib
    import threading

    from train.latents import prefetched

    started, lock = [], threading.Lock()

    def fn(i):
        with lock:
            started.append(i)
        if i == 7:
            raise ValueError("bad batch 7")
        return i * i

    for depth in (0, 1, 3):
        assert list(prefetched(fn, range(5), depth)) == [(i, i * i) for i in range(5)]
    started.clear()
    with contextlib.closing(prefetched(fn, range(100), 3)) as it:
        assert [next(it) for _ in range(4)] == [(i, i * i) for i in range(4)]
    assert len(started) <= 4 + 3  # at most ``depth`` ahead of what was taken; the rest cancelled
    got = []
    with pytest.raises(ValueError, match="bad batch 7"):
        for i, v in prefetched(fn, range(10), 2):
            got.append(i)
    assert got == list(range(7))  # every item before the failing one arrives first
