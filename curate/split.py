"""The 1:N stage: one probed video in, one row per training clip out (or one status row saying why none).

Inside a sandboxed child process (a decoder that hangs or segfaults costs this one video):

1. decode the video once and stream its frames (as 32x18 thumbnails) through the scene splitter;
2. plan clips from the scenes (min/max length, long scenes split into windows);
3. cut every clip from the source in one pass (stream copy when it starts on a keyframe, else re-encode);
4. sample the frames the scorers read from each clip as stored (what training will see).

Every row this stage emits has the same keys (:data:`SPLIT_KEYS`), so clip rows and status rows stream through
the later stages together; ``expected_rows`` on each row tells the writer how many rows its input produced.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field

import numpy as np

try:
    import av
except ImportError:  # the lent GPU image has no PyAV: the planning helpers still import (decoding needs PyAV)
    av = None

from curate import gpu
from curate.clips import ClipConfig, cut_clips, plan_clips
from curate.frames import DecodeConfig, iter_frames, iter_thumbs
from curate.framepack import pack_frames
from curate.sandbox import SandboxCrashed, SandboxError, SandboxTimeout, Sandbox
from curate.scenes import SceneConfig, SceneSplitter
from curate.schema import clip_id as make_clip_id


@dataclass(frozen=True)
class SampleConfig:
    """Frames handed to the scorers: ``pairs`` positions spread over the clip, each with its next frame (so
    optical flow sees true frame-to-frame motion), at ``short_side`` pixels."""

    pairs: int = 8
    short_side: int = 160


@dataclass(frozen=True)
class SplitConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    scenes: SceneConfig = field(default_factory=SceneConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    timeout_s: float = 600.0  # per video: decode + detect + cut; a hang beyond it fails this video only
    device: str = "cpu"  # "cuda": NVDEC decodes, the GPU makes thumbnails and samples (curate/gpu.py); cut on CPU


# Keys of every row leaving this stage. Probe fields the clip table keeps are renamed to source_*.
SPLIT_KEYS = (
    "key", "source_uri", "content_id", "row_kind", "outcome", "stage", "reason", "error_class", "message",
    "expected_rows", "source_duration_s", "source_frames",
    "clip_id", "scene_index", "window_index", "start_frame", "end_frame", "start_s", "end_s", "cut_in", "cut_out",
    "fps", "num_frames", "duration_s", "width", "height", "aspect",
    "source_codec", "source_width", "source_height", "source_rotation", "source_fps", "source_is_vfr",
    "clip_codec", "cut_method", "clip_mp4", "clip_bytes", "frames", "frames_pts", "t_split",
)


def status_row(probe_row: dict, outcome: str, stage: str, reason: str, error_class: str | None = None,
               message: str | None = None, clip: str | None = None, expected_rows: int = 1) -> dict:
    """A row that stands for an input (or one clip) that produced no clip: rejected or failed, with why."""
    row = dict.fromkeys(SPLIT_KEYS)
    row.update(key=probe_row["key"], source_uri=probe_row["source_uri"], content_id=probe_row.get("content_id"),
               row_kind="status", outcome=outcome, stage=stage, reason=reason, error_class=error_class,
               message=(message or "")[:2000] or None, clip_id=clip, expected_rows=expected_rows,
               source_duration_s=probe_row.get("duration_s"), source_frames=probe_row.get("num_frames"),
               t_split=0.0)
    return row


def sample_clip_frames(mp4: bytes, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """Decode a stored clip and keep ``cfg.pairs`` (frame, next frame) pairs at analysis size.

    Returns uint8 ``(2 * pairs, H, W, 3)`` (fewer for very short clips) and their times in seconds.
    """
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        n = stream.frames or 0
        starts = _pair_starts(n, cfg.pairs) if n else None
        keep, frames, times = set(), [], []
        if starts is not None:
            keep = {i for s in starts for i in (s, s + 1)}
        decoded = []
        for i, frame in enumerate(container.decode(stream)):
            if starts is None or i in keep:
                decoded.append((i, frame))
        if starts is None:  # frame count unknown in the header: choose after decoding
            starts = _pair_starts(len(decoded), cfg.pairs)
            keep = {i for s in starts for i in (s, s + 1)}
            decoded = [(i, f) for i, f in decoded if i in keep]
        for i, frame in decoded:
            w, h = frame.width, frame.height
            scale = cfg.short_side / min(w, h)
            size = (max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2))
            frames.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24"))
            times.append(float(frame.time) if frame.time is not None else i / float(stream.average_rate or 1))
    if not frames:
        raise ValueError("clip decoded to zero frames")
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def _pair_starts(n: int, pairs: int) -> list[int]:
    if n < 2:
        return [0] if n == 1 else []
    k = min(pairs, n // 2)
    return sorted(set(np.linspace(0, n - 2, k).round().astype(int).tolist()))


def analyse_and_cut(path: str, probe_row: dict, cfg: SplitConfig) -> list[dict]:
    """The work of one video (runs in the sandbox child). Returns the clip rows and per-clip status rows."""
    t0 = time.perf_counter()
    fps = float(probe_row.get("fps_avg") or probe_row.get("fps_real") or 25.0)
    splitter = SceneSplitter(cfg.scenes, fps)
    pts = []
    rotation = int(probe_row.get("rotation") or 0)
    if cfg.scenes.detector == "shots":  # our detector reads thumbnails straight from the decoder's planes
        thumbs = iter_thumbs(path, cfg.decode, rotation) if cfg.device == "cpu" else \
            gpu.iter_thumbs(path, cfg.decode, rotation, cfg.device)
        for _, pts_s, thumb in thumbs:
            splitter.push_thumb(thumb, pts_s)
            pts.append(pts_s)
    else:  # PySceneDetect's detectors want RGB frames
        for frame in iter_frames(path, cfg.decode, rotation):
            splitter.push(frame.rgb, frame.pts_s)
            pts.append(frame.pts_s)
    scenes = splitter.finish()
    pts = np.asarray(pts, dtype=np.float64)
    rejected = []  # scenes whose clips the scene stage's purity guard dropped: one status row each
    spans = plan_clips(scenes, cfg.clips, fps, pts, rejected=rejected)
    why = f"a wipe-like change inside leaves no clean part >= {cfg.clips.min_s} s"
    if not spans:
        reason = "no-frames" if len(pts) == 0 else "transition-suspect" if rejected else "no-usable-scenes"
        message = f"{len(rejected)} scenes: {why}" if rejected else f"{len(scenes)} scenes, none >= {cfg.clips.min_s} s"
        return [status_row(probe_row, "rejected", "split", reason, message=message)]
    results = cut_clips(path, spans, pts, cfg.clips, rotation=int(probe_row.get("rotation") or 0))
    rows = [status_row(probe_row, "rejected", "split", r.reason, message=f"scene frames {r.start}-{r.end}: {why}",
                       clip=make_clip_id(probe_row["content_id"], r.start, r.end)) for r in rejected]
    for span, res in zip(spans, results):
        cid = make_clip_id(probe_row["content_id"], span.start, span.end)
        if isinstance(res, Exception):
            rows.append(status_row(probe_row, "failed", "cut", "cut-failed", type(res).__name__, str(res), cid))
            continue
        try:
            frames, times = sample_clip_frames(res.mp4, cfg.sample) if cfg.device == "cpu" else \
                gpu.sample_clip_frames(res.mp4, cfg.sample.short_side, cfg.sample.pairs, cfg.device)
        except Exception as exc:  # a clip we wrote and cannot read back is a failed clip, not a crash
            rows.append(status_row(probe_row, "failed", "cut", "clip-unreadable", type(exc).__name__, str(exc), cid))
            continue
        sar = float(probe_row.get("sample_aspect") or 1.0)
        row = dict.fromkeys(SPLIT_KEYS)
        row.update(
            key=probe_row["key"], source_uri=probe_row["source_uri"], content_id=probe_row["content_id"],
            row_kind="clip", outcome="accepted", stage="split", clip_id=cid,
            source_duration_s=probe_row.get("duration_s"), source_frames=probe_row.get("num_frames"),
            scene_index=span.scene_index, window_index=span.window_index,
            start_frame=span.start, end_frame=span.end, start_s=span.start_s, end_s=span.end_s,
            cut_in=getattr(span, "cut_in", None), cut_out=getattr(span, "cut_out", None),
            fps=float(res.fps), num_frames=int(res.num_frames), duration_s=float(span.end_s - span.start_s),
            width=int(res.width), height=int(res.height), aspect=float(res.width * sar / res.height),
            source_codec=probe_row.get("codec"), source_width=probe_row.get("width"),
            source_height=probe_row.get("height"), source_rotation=probe_row.get("rotation"),
            source_fps=fps, source_is_vfr=probe_row.get("is_vfr"),
            clip_codec="h264", cut_method=res.method, clip_mp4=res.mp4, clip_bytes=len(res.mp4),
            frames=pack_frames(frames), frames_pts=times.tolist(),
        )
        rows.append(row)
    for row in rows:
        row["expected_rows"] = len(rows)
        row["t_split"] = 0.0
    rows[0]["t_split"] = time.perf_counter() - t0
    return rows


class SplitStage:
    """Callable for ``flat_map``: owns one sandbox worker process, reused across videos."""

    def __init__(self, cfg: SplitConfig):
        self.cfg = cfg
        self.sandbox = Sandbox()

    def __call__(self, probe_row: dict) -> list[dict]:
        if probe_row.get("status") != "ok":
            return [status_row(probe_row, probe_row.get("status") or "failed", "probe",
                               probe_row.get("reason") or "probe-failed", probe_row.get("error_class"),
                               probe_row.get("message"))]
        t0 = time.perf_counter()
        try:
            rows = self.sandbox.run(analyse_and_cut, probe_row["path"], probe_row, self.cfg,
                                    timeout_s=self.cfg.timeout_s)
        except SandboxTimeout as exc:
            rows = [status_row(probe_row, "failed", "split", "decode-timeout", "SandboxTimeout", str(exc))]
        except SandboxCrashed as exc:
            rows = [status_row(probe_row, "failed", "split", "decoder-crashed", "SandboxCrashed", str(exc))]
        except SandboxError as exc:
            rows = [status_row(probe_row, "failed", "split", "split-error",
                               exc.class_name, exc.message)]
        rows[0]["t_split"] = time.perf_counter() - t0
        return rows


def config_dict(cfg: SplitConfig) -> dict:
    return asdict(cfg)
