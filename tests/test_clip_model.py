"""ClipScorer: local-checkpoint loading, unit-norm deterministic embeddings, aesthetic head, no-model path.

A real open_clip architecture (ViT-S-32, the smallest ViT in open_clip's configs) with random weights is saved to
a temporary safetensors file and loaded back through the same local-path code the pipeline uses.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from curate.clip_model import ClipScorer, apply_head, load_aesthetic_head, pick_frames
from curate.framepack import pack_frames

ARCH = "ViT-S-32"
WIDTH = 384  # ViT-S-32 embedding width


def clip(seed: int, k: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (160, 284 + 8 * k, 3), dtype=np.uint8), (0, 0), 3.0)
    return np.stack([img[:, 8 * i : 8 * i + 284] for i in range(k)])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(original model, its preprocess, checkpoint path, aesthetic head path) with fixed random weights."""
    from curate.compat import ensure_torchvision

    ensure_torchvision()
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    model.eval()
    d = tmp_path_factory.mktemp("clip")
    ckpt = d / "vit-s-32-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    g = torch.Generator().manual_seed(1)
    head = {  # LAION improved-predictor layout (layers.0/2/...), tiny widths
        "layers.0.weight": torch.randn(16, WIDTH, generator=g), "layers.0.bias": torch.randn(16, generator=g),
        "layers.2.weight": torch.randn(1, 16, generator=g), "layers.2.bias": torch.randn(1, generator=g),
    }  # fmt: skip
    head_path = d / "aesthetic.safetensors"
    save_file(head, str(head_path))
    return model, preprocess, str(ckpt), str(head_path), head


@pytest.fixture(scope="module")
def scorer(saved):
    _, _, ckpt, head_path, _ = saved
    return ClipScorer(ckpt, model_name=ARCH, aesthetic_head=head_path, frames_per_clip=2)


def batch_of(*blobs) -> dict:
    return {"clip_id": np.array([f"c{i}" for i in range(len(blobs))]), "frames": np.array(list(blobs), dtype=object)}


def test_no_model_gives_nulls_and_status():
    s = ClipScorer(None)
    out = s(batch_of(pack_frames(clip(0)), None))
    assert list(out["clip_status"]) == ["no-model", "skipped"]
    for c in ("clip_embedding", "clip_aesthetic", "clip_model"):
        assert list(out[c]) == [None, None]
    assert s.text_similarity([np.ones(4)], ["a dog"]) == [None]


def test_missing_checkpoint_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        ClipScorer(str(tmp_path / "absent.safetensors"), model_name=ARCH)


def test_embeddings_unit_deterministic_and_content_dependent(scorer):
    a, b = clip(0), clip(1)
    out = scorer(batch_of(pack_frames(a), pack_frames(a), pack_frames(b), b"garbage", None))
    assert list(out["clip_status"]) == ["ok", "ok", "ok", "error:ValueError", "skipped"]
    assert list(out["clip_id"]) == ["c0", "c1", "c2", "c3", "c4"]
    e = [np.asarray(x, dtype=np.float32) for x in out["clip_embedding"][:3]]
    assert all(v.shape == (WIDTH,) for v in e)
    assert all(abs(np.linalg.norm(v) - 1.0) < 1e-5 for v in e)
    assert np.array_equal(e[0], e[1])
    assert float(e[0] @ e[2]) < 0.9999
    assert out["clip_embedding"][3] is None and out["clip_aesthetic"][3] is None
    assert out["clip_model"][0] == f"open_clip:{ARCH}:vit-s-32-random.safetensors+aesthetic:aesthetic.safetensors"


def test_checkpoint_weights_really_load(saved, scorer):
    """The loaded scorer reproduces the saved model's own embedding (a fresh random init would not)."""
    from PIL import Image

    model, preprocess, *_ = saved
    frames = clip(2)
    idx = pick_frames(len(frames), 2)
    x = torch.stack([preprocess(Image.fromarray(frames[i])) for i in idx])
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
    ref = torch.nn.functional.normalize(ref.mean(0), dim=0).numpy()
    got, _ = scorer.embed_clips([frames])[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_aesthetic_head_round_trip(saved, scorer):
    *_, head = saved
    frames = clip(3)
    out = scorer(batch_of(pack_frames(frames)))
    idx = pick_frames(len(frames), 2)
    e = scorer.embed_images([frames[i] for i in idx])  # (2, D) unit rows
    x = e @ head["layers.0.weight"].T + head["layers.0.bias"]
    x = x @ head["layers.2.weight"].T + head["layers.2.bias"]
    assert out["clip_aesthetic"][0] == pytest.approx(float(x.mean()), rel=1e-4, abs=1e-4)


def test_linear_head_and_bad_heads(tmp_path):
    from safetensors.torch import save_file

    w, b = torch.randn(1, 8), torch.randn(1)
    save_file({"weight": w, "bias": b}, str(tmp_path / "lin.safetensors"))
    layers = load_aesthetic_head(str(tmp_path / "lin.safetensors"), 8)
    x = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    torch.testing.assert_close(apply_head(layers, x), (x @ w.T + b)[:, 0])
    with pytest.raises(ValueError, match="width"):
        load_aesthetic_head(str(tmp_path / "lin.safetensors"), 16)
    save_file({"foo": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="unexpected"):
        load_aesthetic_head(str(tmp_path / "bad.safetensors"), 8)
    with pytest.raises(ValueError, match="safetensors"):
        load_aesthetic_head(str(tmp_path / "head.pt"), 8)


def test_text_similarity(scorer):
    frames = clip(4)
    emb, _ = scorer.embed_clips([frames])[0]
    sims = scorer.text_similarity([emb, None, emb], ["a red car", "a dog", ""])
    te = scorer.embed_texts(["a red car"])[0].numpy()
    assert sims[0] == pytest.approx(float(emb @ te), abs=1e-5)
    assert -1.0 <= sims[0] <= 1.0
    assert sims[1] is None and sims[2] is None
