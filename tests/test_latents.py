"""The latent dataset (``train/latents.py``): the byte layout, the shared encoding functions, and the cache's
encoder stage on bad rows. The Ray job is tested in tests/test_cache_latents.py, on-the-fly training (ClipSource)
in tests/test_train_dit.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curate.media import encode_mp4
from model.buckets import BucketConfig
from model.checkpoint import save_checkpoint
from model.vae import build_vae
from train.data import synthetic_frames
from train.latents import LatentEncoder, bytes_to_tensor, encode_clips, tensor_to_bytes

pytestmark = pytest.mark.timeout(120)


def test_tensor_bytes_round_trip_is_float16_little_endian():
    x = torch.randn(2, 3, 4)
    blob, shape = tensor_to_bytes(x)
    assert shape == [2, 3, 4] and len(blob) == 2 * x.numel()
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
