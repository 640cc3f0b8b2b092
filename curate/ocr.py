"""Text-overlay share of a clip: PP-OCRv4 text *detection* (RapidOCR, ONNX weights inside the wheel, offline).

Only the detector runs (no angle classifier, no recogniser): we need where text is, not what it says. For each
of ``frames_per_clip`` frames spread over the clip's samples, the frame is resized so its short side is
``short_side`` px (the long side capped at ``max_side``), text polygons are detected, and the share of the
frame covered by their union is measured. ``text_coverage`` is the **maximum** over those frames: a clip that
shows a title card or a burned-in subtitle in any sampled frame is a text clip, even if the text is brief.

Detected polygons follow PP-OCR's DB post-processing, which dilates each text region (``unclip_ratio`` 1.6),
so coverage is a little larger than the tight glyph box. Text in any orientation is found (sideways text in a
rotated video included).
"""

from __future__ import annotations

import cv2
import numpy as np

import pyarrow as pa

from curate.framepack import batch_column, is_empty_blob, unpack_frames, with_columns

OCR_COLUMNS = ("text_coverage", "ocr_model", "ocr_status")
OCR_TYPES = {"text_coverage": pa.float32(), "ocr_model": pa.string(), "ocr_status": pa.string()}


def fit_size(h: int, w: int, short_side: int, max_side: int) -> tuple[int, int]:
    """(H, W) with short side ``short_side``, scaled down further when the long side would exceed ``max_side``."""
    scale = short_side / min(h, w)
    scale = min(scale, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def coverage_of_boxes(boxes, h: int, w: int) -> float:
    """Share of an ``h x w`` frame covered by the union of polygons ``[[(x, y), ...], ...]``."""
    if not boxes:
        return 0.0
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(b, dtype=np.float32)).astype(np.int32) for b in boxes], 1)
    return float(mask.mean())


class TextOverlayScorer:
    """Batch UDF adding ``text_coverage`` (float, 0-1, max over frames), ``ocr_model`` and ``ocr_status``.

    Args:
        short_side: frames are resized to this short side before detection (the analysis frames, ~160 px, are
            upscaled: at 224 the detector also finds small UI/caption text it misses at 160).
        max_side: cap on the long side after resizing (very wide or tall frames).
        frames_per_clip: frames examined per clip, spread evenly over the sampled frames.
        threads: ONNX Runtime intra-op threads (match the CPUs the pipeline gives this actor).
        box_thresh: detector box score threshold (PP-OCR default 0.5).
    """

    def __init__(
        self,
        short_side: int = 224,
        max_side: int = 640,
        frames_per_clip: int = 3,
        threads: int = 1,
        box_thresh: float = 0.5,
    ):
        from rapidocr_onnxruntime import RapidOCR

        self.short_side, self.max_side, self.frames_per_clip = short_side, max_side, frames_per_clip
        # limit_type "min" with our own short side: the detector then only rounds the size to a multiple of 32
        self.engine = RapidOCR(
            det_limit_side_len=short_side,
            det_limit_type="min",
            det_box_thresh=box_thresh,
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
        )
        self.model_id = f"ppocrv4-det@{short_side}/max{frames_per_clip}"

    def frame_coverage(self, rgb: np.ndarray) -> float:
        """Text coverage of one RGB uint8 frame ``(H, W, 3)`` at the configured detection size."""
        h, w = fit_size(rgb.shape[0], rgb.shape[1], self.short_side, self.max_side)
        interp = cv2.INTER_AREA if h < rgb.shape[0] else cv2.INTER_LINEAR
        bgr = cv2.cvtColor(cv2.resize(rgb, (w, h), interpolation=interp), cv2.COLOR_RGB2BGR)  # RapidOCR wants BGR
        boxes, _ = self.engine(bgr, use_det=True, use_cls=False, use_rec=False)
        return coverage_of_boxes(boxes, h, w)

    def clip_coverage(self, frames: np.ndarray) -> float:
        """Max text coverage over ``frames_per_clip`` frames spread over ``frames`` ``(K, H, W, 3)``."""
        k = frames.shape[0]
        idx = np.unique(np.linspace(0, k - 1, min(self.frames_per_clip, k)).round().astype(int))
        return max(self.frame_coverage(frames[i]) for i in idx)

    def __call__(self, batch):
        """Add ``OCR_COLUMNS`` to a dict-of-numpy batch or a ``pyarrow.Table`` (same rows, same order)."""
        rows = [self._score_row(blob) for blob in batch_column(batch, "frames")]
        return with_columns(batch, {c: [r.get(c) for r in rows] for c in OCR_COLUMNS}, OCR_TYPES)

    def _score_row(self, blob) -> dict:
        """One row's columns; never raises."""
        if is_empty_blob(blob):
            return {"ocr_status": "skipped"}
        try:
            cov = self.clip_coverage(unpack_frames(blob))
        except Exception as exc:  # one bad clip must not fail the dataset
            return {"ocr_status": f"error:{type(exc).__name__}"}
        return {"text_coverage": float(np.float32(cov)), "ocr_model": self.model_id, "ocr_status": "ok"}
