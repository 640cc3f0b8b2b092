"""Text-overlay coverage: rendered text, textless texture, the real GoldenEye clip, and the batch contract."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from curate.framepack import pack_frames
from curate.ocr import TextOverlayScorer, coverage_of_boxes, fit_size

H, W = 160, 284


@pytest.fixture(scope="module")
def scorer() -> TextOverlayScorer:
    return TextOverlayScorer()


def texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (0, 0), 3.0)


def with_text(img: np.ndarray, text: str = "HELLO 42", org=(30, 90), scale: float = 1.2) -> tuple[np.ndarray, float]:
    """``img`` with white ``text`` drawn on it, and the share of the frame its glyph box covers."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
    out = img.copy()
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 3)
    return out, tw * (th + base) / (img.shape[0] * img.shape[1])


def test_helpers():
    assert fit_size(160, 284, 224, 640) == (224, 398)
    assert fit_size(160, 1600, 224, 640) == (64, 640)
    assert coverage_of_boxes([[(0, 0), (9, 0), (9, 9), (0, 9)]], 20, 20) == pytest.approx(0.25)
    assert coverage_of_boxes([], 20, 20) == 0.0


@pytest.mark.parametrize("background", ["plain", "texture"])
def test_rendered_text_coverage_matches_its_box(scorer, background):
    img = np.full((H, W, 3), 60, np.uint8) if background == "plain" else texture()
    framed, box_share = with_text(img)
    cov = scorer.frame_coverage(framed)
    assert 0.5 * box_share < cov < 2.0 * box_share
    assert scorer.frame_coverage(img) < 0.005


def test_coverage_is_the_max_over_frames(scorer):
    plain = texture(1)
    framed, _ = with_text(plain)
    one = scorer.frame_coverage(framed)
    assert scorer.clip_coverage(np.stack([plain, plain, framed])) == pytest.approx(one)


def test_batch_contract(scorer):
    framed, _ = with_text(texture(2))
    batch = {
        "clip_id": np.array(["a", "b", "c", "d"]),
        "frames": np.array([pack_frames(framed[None]), None, b"junk", pack_frames(texture(3)[None])], dtype=object),
    }
    out = scorer(batch)
    assert list(out["clip_id"]) == ["a", "b", "c", "d"]
    assert list(out["ocr_status"]) == ["ok", "skipped", "error:ValueError", "ok"]
    assert out["text_coverage"][0] > 0.05 and out["text_coverage"][3] < 0.005
    assert out["text_coverage"][1] is None and out["text_coverage"][2] is None
    assert out["ocr_model"][0] == "ppocrv4-det@224/max3" and out["ocr_model"][1] is None


def test_real_video_text_frames_score_higher(scorer, shared_data):
    """issue-134-rotate.mp4: typed on-screen text in frames ~130-209, faces (no text) from frame 210."""
    wanted = {150, 170, 190, 215, 225, 235}
    frames = {}
    with av.open(str(shared_data / "pyscenedetect" / "issue-134-rotate.mp4")) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i in wanted:
                rgb = np.ascontiguousarray(np.rot90(fr.to_ndarray(format="rgb24"), k=(fr.rotation // 90) % 4))
                h, w = rgb.shape[:2]  # display orientation at analysis size (short side 160), as the split stage
                frames[i] = cv2.resize(rgb, (round(w * 160 / min(h, w)), round(h * 160 / min(h, w))),
                                       interpolation=cv2.INTER_AREA)
    text_clip = np.stack([frames[i] for i in (150, 170, 190)])
    face_clip = np.stack([frames[i] for i in (215, 225, 235)])
    with_text_cov, without_cov = scorer.clip_coverage(text_clip), scorer.clip_coverage(face_clip)
    assert with_text_cov > 0.01
    assert with_text_cov > 5 * without_cov
