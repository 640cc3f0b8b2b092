"""Scene detection on frames we decode ourselves: hard cuts, fades through black and cross-dissolves.

Three detectors run side by side on the stream of analysis-size RGB frames (never on the file: PySceneDetect's
OpenCV backend drops frames and counts VFR frames differently, see FIELD-NOTES):

* **hard cuts**: PySceneDetect's ``AdaptiveDetector`` or ``ContentDetector`` (HSV mean-difference between
  consecutive frames), fed frame by frame with the analysis frame halved once (``detector_halvings``: same cuts
  on every test video, ~25% less detection time). A cut at index ``i`` means frame ``i`` starts a new shot.
* **fades**: per-frame mean level (like ``ThresholdDetector``, but per frame instead of per event). Frames at or
  below ``black_level`` are black; frames on the brightness ramp leading into and out of a black run (each
  darker than its neighbour away from the black by at least ``fade_step``) are fading. Both are transition
  frames.
* **dissolves**: on a ring buffer of tiny thumbnails (default 32x18 RGB). For a window ``[t-L, t]`` whose ends
  differ like a cut, every frame in between is projected onto the line between the two ends:
  ``x_m ~ x_a + alpha_m (x_b - x_a)``. A dissolve gives a residual near zero, ``alpha`` rising monotonically
  with no big step (a hard cut is one step of 1), and stable ends (two clean frames of each shot). The
  transition frames are those where a line fitted to the ramp of ``alpha`` lies strictly between 0 and 1.

Transition frames belong to no scene; a scene is a maximal run of non-transition frames between hard cuts.
Memory is O(frames) scalars plus the thumbnail ring (``dissolve_max_s * fps`` thumbnails), never whole frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector

# Per-frame transition kinds (codes in SceneSplitter._kind).
_NONE, _FADE, _DISSOLVE = 0, 1, 2
_KIND_NAME = {_FADE: "fade", _DISSOLVE: "dissolve"}


@dataclass(frozen=True)
class SceneConfig:
    """Every knob of scene detection, with the defaults the benchmark was run with.

    Levels are on the 0-255 scale of 8-bit RGB; durations in seconds are turned into frames with the nominal fps.
    """

    detector: str = "adaptive"  # "adaptive" (AdaptiveDetector) or "content" (ContentDetector)
    content_threshold: float = 27.0  # ContentDetector threshold
    adaptive_threshold: float = 3.0  # AdaptiveDetector ratio to the rolling mean of neighbours
    adaptive_min_content: float = 15.0  # AdaptiveDetector minimum content score for a cut
    adaptive_window: int = 2  # AdaptiveDetector frames on each side of the rolling mean
    luma_only: bool = False  # detectors compare luma only
    detector_halvings: int = 1  # the hard-cut detector sees the analysis frame halved this many times (2x2 area
    # mean each): its HSV conversion and three mean differences are most of the detection cost
    min_scene_s: float = 0.6  # no two hard cuts closer than this; shorter leftover scenes are dropped
    fades: bool = True
    black_level: float = 12.0  # a frame whose mean level is <= this is black (ThresholdDetector's default)
    fade_step: float = 0.015  # relative brightness change per frame that keeps a frame on a fade ramp
    fade_max_s: float = 1.5  # longest fade ramp on each side of a black run
    dissolves: bool = True
    dissolve_max_s: float = 2.0  # longest dissolve looked for
    dissolve_min_diff: float = 20.0  # mean |end - start| (0-255) a dissolve must bridge, like a cut
    dissolve_max_residual: float = 0.3  # max mean blend residual, relative to the end-to-end difference
    dissolve_min_change: float = 0.12  # min spread of the log brightness ratio of the two ends: below it the
    # window is one shot re-exposed (fade in progress, exposure drift), not a dissolve into another shot
    dissolve_max_step: float = 0.5  # max alpha increase between consecutive frames (rules out hard cuts)
    thumb_size: tuple[int, int] = (32, 18)  # (W, H) of the dissolve thumbnails

    def __post_init__(self) -> None:
        if self.detector not in ("adaptive", "content"):
            raise ValueError(f"detector must be 'adaptive' or 'content', not {self.detector!r}")


@dataclass(frozen=True)
class Scene:
    """Frames ``[start, end)`` (decoded-frame indices) of one shot.

    ``start_s`` is the PTS of frame ``start``; ``end_s`` the PTS of frame ``end`` (the first frame after the
    scene, even when that is a transition frame) or the end of the stream. ``cut_in`` / ``cut_out`` say how the
    scene begins and ends: ``start``, ``end``, ``cut``, ``fade`` or ``dissolve``.
    """

    start: int
    end: int
    start_s: float
    end_s: float
    cut_in: str
    cut_out: str

    @property
    def num_frames(self) -> int:
        return self.end - self.start

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _thumbnail(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Flat float32 block-mean thumbnail of ``size`` (W, H). The frame is centre-cropped to a whole number of
    blocks first: OpenCV's area resize is ~5x faster with an integer ratio, and the lost margin is < 1 block."""
    tw, th = size
    h, w = rgb.shape[:2]
    bw, bh = max(1, w // tw), max(1, h // th)
    y0, x0 = (h - bh * th) // 2, (w - bw * tw) // 2
    crop = rgb[y0 : y0 + bh * th, x0 : x0 + bw * tw]
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()


def _relighting_spread(x: np.ndarray, y: np.ndarray) -> float:
    """Median absolute deviation of the per-pixel log brightness ratio ``y / x``.

    Near 0 when ``y`` is ``x`` with other exposure (a fade, an auto-exposure drift: one gain for most pixels,
    the median ignores a moving object); large when ``y`` shows other content (a dissolve into another shot).
    Measured: exposure drift on car-detection.mp4 0.05, fades ~0, real and synthetic dissolves >= 0.23.
    """
    ratio = np.log((y + 8.0) / (x + 8.0))
    return float(np.median(np.abs(ratio - np.median(ratio))))


def _dissolve_lengths(max_len: int) -> list[int]:
    """Window lengths tried for dissolves (ends included): dense when short, ~12% apart when long."""
    out, length = [], 4
    while length <= max_len:
        out.append(length)
        length = max(length + 1, int(length * 1.12))
    return out


class SceneSplitter:
    """Streaming scene detector: ``push`` every decoded frame in order, then ``finish`` once.

    ``fps`` is the nominal frame rate (turns second-valued settings into frame counts; VFR input is fine because
    all reported times come from the pushed PTS).
    """

    def __init__(self, cfg: SceneConfig, fps: float):
        self.cfg = cfg
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.min_scene_frames = max(1, int(round(cfg.min_scene_s * self.fps)))
        if cfg.detector == "adaptive":
            self._detector = AdaptiveDetector(
                adaptive_threshold=cfg.adaptive_threshold,
                min_scene_len=self.min_scene_frames,
                window_width=cfg.adaptive_window,
                min_content_val=cfg.adaptive_min_content,
                luma_only=cfg.luma_only,
            )
        else:
            self._detector = ContentDetector(
                threshold=cfg.content_threshold, min_scene_len=self.min_scene_frames, luma_only=cfg.luma_only
            )
        self._pts: list[float] = []
        self._level: list[float] = []  # mean RGB level per frame
        self._kind = bytearray()  # per-frame transition kind
        self._cuts: set[int] = set()
        self._fade_in_open = False  # a black run ended and the ramp out of it may continue
        self._last_fade = -1  # latest frame marked as fade
        self._fade_in_len = 0
        self.fade_max = max(1, int(round(cfg.fade_max_s * self.fps)))
        # Dissolve ring buffer: thumbnails of the last `cap` frames.
        self._lengths = _dissolve_lengths(int(round(cfg.dissolve_max_s * self.fps)) + 4)
        self._cap = (self._lengths[-1] + 1) if self._lengths else 1
        tw, th = cfg.thumb_size
        self._ring = np.zeros((self._cap, th * tw * 3), np.float32)
        self._dissolve_free_from = 0  # windows must start at or after this frame (after the last dissolve)
        self._finished = False

    # ------------------------------------------------------------------------------------------ stream

    def push(self, rgb: np.ndarray, pts_s: float) -> None:
        """Feed the next decoded frame: (H, W, 3) uint8 RGB at analysis size, and its PTS in seconds."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        i = len(self._pts)
        self._pts.append(float(pts_s))
        self._kind.append(_NONE)
        frame = np.ascontiguousarray(rgb)
        timecode = FrameTimecode(i, self.fps)
        small = frame
        for _ in range(self.cfg.detector_halvings):
            h, w = small.shape[:2]
            small = cv2.resize(small[: h - h % 2, : w - w % 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        for cut in self._detector.process_frame(timecode, cv2.cvtColor(small, cv2.COLOR_RGB2BGR)):
            self._cuts.add(int(cut.frame_num))
        thumb = _thumbnail(frame, self.cfg.thumb_size)
        self._ring[i % self._cap] = thumb
        self._level.append(float(thumb.mean()))
        if self.cfg.fades:
            self._update_fades(i)
        if self.cfg.dissolves and self._lengths:
            self._update_dissolves(i)

    def finish(self) -> list[Scene]:
        """Flush the detectors and return the scenes (transition frames excluded, short scenes dropped)."""
        if not self._finished:
            self._finished = True
            if self._pts:
                for cut in self._detector.post_process(FrameTimecode(len(self._pts) - 1, self.fps)):
                    self._cuts.add(int(cut.frame_num))
        return self._scenes()

    # ------------------------------------------------------------------------------------------- fades

    def _is_black(self, i: int) -> bool:
        return self._level[i] <= self.cfg.black_level

    def _update_fades(self, i: int) -> None:
        step, lv = self.cfg.fade_step, self._level
        if self._is_black(i):
            self._kind[i] = _FADE
            self._last_fade = i
            self._fade_in_open, self._fade_in_len = True, 0
            if i > 0 and not self._is_black(i - 1):
                # A black run starts: walk back over the ramp into it (each frame darker than the one before).
                j = i - 1
                while j > 0 and i - j <= self.fade_max and lv[j] < lv[j - 1] * (1 - step):
                    self._kind[j] = _FADE
                    j -= 1
            return
        if self._fade_in_open:
            # Frame i-1 is on the ramp out of black while frame i is clearly brighter than it.
            prev = i - 1
            if not self._is_black(prev):
                if lv[prev] < lv[i] * (1 - step) and self._fade_in_len < self.fade_max:
                    self._kind[prev] = _FADE
                    self._last_fade = prev
                    self._fade_in_len += 1
                else:
                    self._fade_in_open = False

    # --------------------------------------------------------------------------------------- dissolves

    def _update_dissolves(self, t: int) -> None:
        cfg = self.cfg
        if self._kind[t] != _NONE or self._fade_in_open:
            return  # fades are the fade detector's; a frame on a ramp out of black is no dissolve end
        cap, ring = self._cap, self._ring
        current = ring[t % cap]
        lengths = [n for n in self._lengths if t - n >= self._dissolve_free_from]
        if not lengths:
            return
        starts = np.array([(t - n) % cap for n in lengths])
        diffs = np.abs(ring[starts] - current).mean(axis=1)
        if diffs.max() < cfg.dissolve_min_diff:
            return
        # the incoming shot must already be on screen unmixed: the previous frame is close to this one
        step = float(np.abs(ring[(t - 1) % cap] - current).mean())
        for n, d in zip(lengths, diffs):
            if d < cfg.dissolve_min_diff or step > 0.2 * d:
                continue
            a = t - n
            if a <= self._last_fade:
                break  # longer windows reach even further back into the fade
            span = self._fit_dissolve(a, t, float(d))
            if span is not None:
                lo, hi = span
                for m in range(lo, hi):
                    self._kind[m] = _DISSOLVE
                self._dissolve_free_from = hi
                return

    def _fit_dissolve(self, a: int, b: int, diff: float) -> tuple[int, int] | None:
        """Transition frames ``[lo, hi)`` if frames ``a..b`` look like a dissolve from ``a`` to ``b``, else None."""
        cfg, cap = self.cfg, self._cap
        window = self._ring[np.arange(a, b + 1) % cap]  # (L+1, P)
        x0 = window[0]
        delta = window[-1] - x0
        norm = float(delta @ delta)
        if norm <= 0:
            return None
        rel = window - x0
        alpha = rel @ delta / norm  # (L+1,)
        if alpha[1] > 0.1 or alpha[-2] < 0.9:  # ends must be stable: two clean frames of each shot
            return None
        steps = np.diff(alpha)
        if steps.max() > cfg.dissolve_max_step or steps.min() < -0.1:
            return None
        ramp = np.nonzero((alpha > 0.1) & (alpha < 0.9))[0]
        if len(ramp) < 2:
            return None
        residual = np.abs(rel[1:-1] - alpha[1:-1, None] * delta[None, :]).mean(axis=1) / diff
        if residual.max() > cfg.dissolve_max_residual:
            return None
        slope, icpt = np.polyfit(ramp.astype(np.float64), alpha[ramp].astype(np.float64), 1)
        if slope <= 0:
            return None
        m0, m1 = -icpt / slope, (1.0 - icpt) / slope  # where the fitted ramp is 0 and 1 (window offsets)
        if m0 < 0.75 or m1 > (b - a) - 0.75:
            return None  # the ramp has not settled at both ends yet: the window cuts through the transition
        if _relighting_spread(x0, window[-1]) < cfg.dissolve_min_change:
            # Most of the picture is the start with another brightness/contrast (a fade in progress, an
            # exposure change): the same shot, not a dissolve into another one.
            return None
        lo = a + max(1, int(round(m0)) + 1)  # first frame after the last clean frame of the outgoing shot
        hi = a + min(b - a, int(round(m1)))  # first clean frame of the incoming shot
        return (lo, hi) if hi > lo else None

    # ------------------------------------------------------------------------------------------ scenes

    def _scenes(self) -> list[Scene]:
        return assemble_scenes(self._pts, self._kind, self._cuts, self.min_scene_frames, self.fps)

    def marks(self) -> tuple[bytes, set[int]]:
        """Per-frame transition kinds (0 none, 1 fade, 2 dissolve) and hard-cut indices found so far: what
        :func:`assemble_scenes` turns into scenes (``curate.fastscan`` stitches these from several splitters)."""
        return bytes(self._kind), set(self._cuts)

    @property
    def transition_frames(self) -> list[int]:
        """Indices of frames classified as fade or dissolve (for tests and the benchmark)."""
        return [i for i, k in enumerate(self._kind) if k != _NONE]

    @property
    def hard_cuts(self) -> list[int]:
        """Hard-cut positions reported by the PySceneDetect detector (first frame of the new shot)."""
        return sorted(self._cuts)


def assemble_scenes(pts, kind, cuts, min_scene_frames: int, fps: float) -> list[Scene]:
    """Scenes from per-frame marks: maximal runs of frames whose ``kind`` is 0 (no transition), split at every
    index in ``cuts``; runs shorter than ``min_scene_frames`` are dropped. ``pts`` gives the times (s)."""
    n = len(pts)
    if n == 0:
        return []
    end_of_stream = pts[-1] + (pts[-1] - pts[-2] if n > 1 else 1.0 / fps)
    scenes: list[Scene] = []
    start = None
    for i in range(n + 1):
        is_transition = i < n and kind[i] != _NONE
        if start is not None and (i == n or is_transition or i in cuts):
            cut_out = "end" if i == n else (_KIND_NAME[kind[i]] if is_transition else "cut")
            if i - start >= min_scene_frames:
                end_s = end_of_stream if i == n else pts[i]
                cut_in = "start" if start == 0 else (_KIND_NAME[kind[start - 1]] if kind[start - 1] else "cut")
                scenes.append(Scene(start, i, float(pts[start]), float(end_s), cut_in, cut_out))
            start = None
        if start is None and i < n and not is_transition:
            start = i
    return scenes


def detect_scenes(frames: Iterable, cfg: SceneConfig, fps: float) -> list[Scene]:
    """Run a :class:`SceneSplitter` over ``frames``: objects with ``.rgb`` and ``.pts_s`` (``curate.frames.Frame``)
    or ``(pts_s, rgb)`` tuples."""
    splitter = SceneSplitter(cfg, fps)
    for item in frames:
        if hasattr(item, "rgb"):
            splitter.push(item.rgb, item.pts_s)
        else:
            pts_s, rgb = item
            splitter.push(rgb, pts_s)
    return splitter.finish()
