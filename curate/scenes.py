"""Shot-boundary detection on tiny YUV thumbnails: hard cuts, fades through black or white, dissolves, wipes, slides.

Every frame becomes a 32x18 YUV thumbnail (float32, full range): from the decoder's own planes without an RGB
conversion (``curate.frames.iter_thumbs``, the split stage's path) or from an RGB frame (``push``). A ring of the
last ~3.2 s of thumbnails and a few scalars per frame are all the state: memory does not grow with the video
beyond O(frames) scalars. Decisions come a few frames late (``_LAG``), when the frames after a candidate are in.

* **hard cuts** (``detector="shots"``, the default): ``d[i]`` = mean |thumb i - thumb i-1|. Frame ``i`` starts a
  new shot when ``d[i]`` is at least ``cut_min_diff`` and ``cut_ratio`` times the largest ``d`` of the 3 frames on
  each side (a relative jump against the local activity: a low-contrast cut in a still shot passes, a frame of
  a whip pan or a zoom, whose neighbours move as much, does not; duplicated frames from frame-rate conversion,
  whose ``d`` alternates ~0 and x, leave x as the background); and the picture does not come back: no frame of
  the next 4 is within ``flash_return`` of that jump from frame ``i - 1`` (a camera flash returns).
  PySceneDetect's ``AdaptiveDetector`` / ``ContentDetector`` stay selectable (``detector="adaptive"|"content"``,
  fed with the RGB frames, so only ``push`` works with them).
* **fades**: a frame is *solid* when its luma spread is small and its level is at most ``black_level`` (black) or
  at least ``white_level`` (white). The ramps into and out of a solid run (each frame closer to the solid level
  than its neighbour away from it by at least ``fade_step``) are fade frames. A solid run of at most
  ``flash_max_s`` whose two sides show the same picture is a flash, not a fade.
* **wipes and slides**: when a burst of change ends (frames ``a+1..b`` all move, the frames around them hold
  still), each frame of the burst is compared with frames ``a`` and ``b`` side by side with a straight edge at every
  thumbnail column (row), still (a wipe) or both sliding (a slide pushing the last shot out), in the 4
  directions. The transition frames are those whose best edge lies inside the picture; the edge must move one way,
  every frame must fit within ``wipe_max_error`` of the ends' difference, and at least half of the picture must
  change (an object crossing a still shot is no wipe). A whip pan fits the slide model, so slides are held to a
  stricter fit. A window end waits while the change dies out a frame or two later (a soft edge leaving the
  picture), and where the shots hold still, frames next to the moving edge that still differ from an end are
  transition frames too.
* **dissolves**: for windows ``[a, b]`` whose ends differ like a cut (``dissolve_min_diff``), every frame in between
  is projected onto the line between the ends (``alpha``). A dissolve moves each pixel once from its start value
  to its end value, so the summed per-pixel path over the window is close to the end-to-end difference (``path
  efficiency`` >= ``dissolve_min_path``); camera motion and whip pans move pixel values back and forth (low
  efficiency). ``alpha`` must rise with no step like a cut, the frames just before ``a`` must sit at alpha ~0 and
  those after ``b`` at ~1, and the frames just outside the window must change less than ``dissolve_settle`` of
  the window's mean step (else the window cuts through the transition: this makes spans exact, where the
  previous detector ended 2-3 frames early). The two ends must show other content (not one picture re-exposed;
  ends of like brightness over most of the picture pass when every frame between is a blend of them: two shots
  of one backdrop). Frames that are no blend of the ends (``dissolve_max_blend``: a zoom, a wipe) pass only as a
  wipe or slide. The transition frames are those where a line fitted to the rise of ``alpha`` lies strictly
  between 0 and 1, widened to the frames clearly off both ends (a rise that is no straight line).

Transition frames belong to no scene; a scene is a maximal run of non-transition frames between hard cuts.

* **clip purity guard** (``guard``; its windows in ``curate.purity_guard``): a second, looser wipe, slide and
  dissolve test that changes no scene and no boundary, only the clips planned from a scene (``Scene.suspect``, read
  by ``curate.clips.plan_clips``, which keeps clips clear of these spans). For every other frame ``b`` and windows
  ``[a, b]`` from 0.2 s to ``guard_max_s`` (wipes, slides) or ``guard_dissolve_max_s`` (dissolves) ending a
  dissolve window's length before the detector's decisions (so every transition it finds around them is marked),
  with no hard cut inside, frames ``a`` and ``b`` of shots, and no still frames needed around the window (the
  detector above needs them: a wipe into or out of a shot that moves by itself is missed there). For wipes
  and slides the ends must differ (``wipe_min_diff``) over at least ``guard_min_changed`` of the picture (a slide:
  ``guard_slide_min_changed``, as its frames move as a whole; a wipe: ``guard_low_changed`` where no pan or zoom
  explains the change, ``guard_min_unexplained``, as between two people before one wall).
  *Wipes*: most of the summed per-pixel path is the end-to-end change (``guard_min_efficiency``: camera motion
  moves pixels back and forth), and the frames in between are frames ``a`` and ``b`` side by side with a straight
  still edge that moves one way across at least 60 % of the picture, never a third of it in one frame, each within
  ``guard_max_error`` of the ends' difference (where the ends differ in under ``guard_min_changed`` of the picture,
  the cells within ``guard_wipe_band`` of the edge may show any blend of the two: a soft edge weighs much against
  so small a difference; with ``guard_wipe_drift``, each frame may also differ by what the two shots' own motion
  changes in it, and their steps are taken out of the summed path, as for slides below); where the edge is still
  inside next to an end of the window (the shot beyond it moves, so the model holds only up to a frame that is not
  yet clean), the span goes on past that end at the edge's pace. *Slides* (where no transition was detected):
  frame ``b`` pushes frame ``a`` out, each frame within ``guard_slide_max_error`` plus what the two shots' own
  motion can change in it (their steps just outside the window, where well under the window's pace, summed over
  the frames from each end), and the seam between them stands out (``guard_min_seam`` times the median step
  between neighbouring columns or rows: a pan fits the same model without a seam). In both, the edge is inside the
  picture for at least 3 frames and half the window; those frames, one more on each side, are suspect. A window
  may hold frames the detector marked when the change goes on past them (a span found too short is completed
  here). A whip pan, a zoom or a flash moves or blends the whole picture at once and fits neither model.
  *Dissolves* (where no transition was detected and no wipe or slide fits): the ends differ like a dissolve's
  (``dissolve_min_diff``, the detector's brightness-ratio test), or, for the low-contrast blends the detector leaves
  (two people before one wall: ``guard_dissolve_min_diff`` at least, most cells keep their brightness), at least
  ``guard_dissolve_min_share`` of the cells change otherwise than by one gain and no pan or zoom of one end
  explains more than ``1 - guard_min_unexplained`` of the change to the other (slow pans and fast zooms
  change every cell at a steady pace, as such a blend does; ``split_screen.motion_residual``), the end-to-end
  difference is at least ``guard_dissolve_min_path`` of the summed steps (looser than the detector's: shots that
  move during the dissolve lengthen the path, and no still frames are asked for around the window), ``alpha``
  rises with no step like a cut and every frame lies within ``guard_dissolve_max_residual`` of the blend of the
  ends at its alpha (a pan or a zoom is no blend of its ends over a window this long); the frames at alpha 0.1-0.9
  are the span. Cost of the guard with the edge guard below: ~0.03 ms a frame on the benchmark's dev part (the rest
  of the detector ~0.02).
* **edge guard** (``cut_edges``, ``transition_edges``): also suspect spans only. A gradual transition the tests
  above reject (shots moving during a dissolve, an alpha that rises with a step) can be reported as a hard cut at
  its largest step, with blended frames left on both sides; a transition found too short leaves blended frames
  next to its span. For every hard cut at ``c`` (frame ``c - 1`` and ``c`` are the two sides) and every edge of a
  detected transition (the other side is the transition frame, or the first clean frame after it, that differs
  most from the clean frame at the edge: the next shot, or a fade's solid frame), frames are walked away from the
  edge, up to ``cut_edge_max_s``: a frame still holds the other side while the step into it from the frame beyond
  moves it towards the other side's picture by at least ``cut_edge_min_progress`` of the step's mean absolute
  length and ``cut_edge_min_step`` of the edge's jump (0.5 levels at least). A blend fading out moves every pixel
  one way, towards the other picture; a shot's own motion (a pan, a zoom) moves pixels towards and away from an
  unrelated picture alike, so a hard cut between moving shots marks nothing. A frame that repeats the one beyond
  it (a duplicated frame) takes the verdict of the next step out. The walk stops at another cut or a transition
  frame. The frames that hold the other side are suspect; scene bounds and cuts do not change.
* **weak-cut guard** (``weak_cut_min_diff``): also suspect spans only. A jump below ``cut_min_diff`` but at least
  ``weak_cut_min_diff`` that passes the hard-cut tests above (``cut_ratio`` against its neighbours, no return of
  the picture) is a low-contrast cut (a new shot of the same backdrop) when the change is sharp: of the thumbnail
  values that change by more than 4 levels, at least ``weak_cut_min_sharp`` change by more than 8 (an object
  replaced). A keyframe of a low-bitrate stream requantises the whole picture a little at once: an isolated jump
  too, but spread thin. Its two frames are suspect.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from curate.purity_guard import PurityGuard
from curate.scene_list import _DISSOLVE, _FADE, _NONE, Scene, assemble_scenes  # noqa: F401 (re-exported)
from curate.split_screen import (SPLIT_MODELS as _SPLIT_MODELS, band_means as _band_means,
                                 push_may_fit as _push_may_fit, relighting as _relighting,
                                 split_model as _split_model, wipe_errors as _wipe_errors)

_LAG = 5  # frames a decision waits for (cut: 3 neighbours and the 4-frame flash return; windows: 1 settled frame)
THUMB = (32, 18)  # (W, H) of the analysis thumbnail


@dataclass(frozen=True)
class SceneConfig:
    """Every knob of scene detection, with the defaults the benchmark was run with.

    Levels are on the 0-255 scale; durations in seconds are turned into frames with the nominal fps.
    """

    detector: str = "shots"  # hard cuts: "shots" (ours), or PySceneDetect's "adaptive" / "content"
    cut_min_diff: float = 4.0  # mean |thumbnail difference| a hard cut needs at least
    cut_ratio: float = 2.2  # ... and this many times the largest difference of the 3 frames on each side
    flash_return: float = 0.45  # a frame within this share of the jump from the pre-jump frame: it came back
    content_threshold: float = 27.0  # ContentDetector threshold
    adaptive_threshold: float = 3.0  # AdaptiveDetector ratio to the rolling mean of neighbours
    adaptive_min_content: float = 15.0  # AdaptiveDetector minimum content score for a cut
    adaptive_window: int = 2  # AdaptiveDetector frames on each side of the rolling mean
    min_scene_s: float = 0.6  # scenes shorter than this are dropped (their frames belong to no scene)
    fades: bool = True
    black_level: float = 16.0  # a solid frame whose mean luma is <= this is black
    white_level: float = 235.0  # ... >= this is white
    solid_spread: float = 12.0  # mean |luma - mean luma| of a solid frame is at most this
    fade_step: float = 0.015  # relative change per frame towards the solid level that keeps a frame on a ramp
    fade_max_s: float = 1.5  # longest fade ramp on each side of a solid run
    flash_max_s: float = 0.25  # a solid run at most this long between two views of one picture is a flash
    dissolves: bool = True
    dissolve_max_s: float = 2.0  # longest dissolve or wipe looked for
    dissolve_min_diff: float = 14.0  # mean |end - start| a dissolve must bridge
    dissolve_min_path: float = 0.6  # end-to-end difference / summed per-pixel path over the window
    dissolve_min_change: float = 0.12  # min spread of the log brightness ratio of the two ends (not re-exposure)
    dissolve_max_step: float = 0.45  # max alpha increase between consecutive frames (rules out hard cuts)
    dissolve_max_residual: float = 0.2  # ... frames between ends of like brightness: max off-blend error / diff
    dissolve_max_blend: float = 0.35  # above this off-blend error / diff, only a wipe or slide model can explain it
    dissolve_settle: float = 0.6  # the frames just outside a window (both sides summed) change at most this share
    # of its mean step
    wipe_min_diff: float = 7.0  # mean |end - start| a wipe or slide must bridge
    wipe_min_changed: float = 0.5  # share of thumbnail cells a wipe or slide must change by > 12 levels
    wipe_max_error: float = 0.35  # max mean error of a split-screen model of a wipe/slide frame, share of that
    guard: bool = True  # clip purity guard: mark wipe-like spans inside scenes as suspect (clips keep clear)
    guard_max_s: float = 0.8  # longest window the guard's wipe and slide tests try
    guard_wipe_drift: bool = True  # the guard's wipe test allows the shots' own motion, as its slide test does
    guard_wipe_band: float = 0.1  # the guard's wipe edge may be soft: any blend within this share of the picture
    guard_max_error: float = 0.15  # max mean error of the guard's still-edge model, share of the ends' difference
    guard_min_changed: float = 0.3  # share of thumbnail cells the two ends must differ in by > 12 levels
    guard_low_changed: float = 0.2  # ... or this share, for a wipe no pan or zoom explains (guard_min_unexplained)
    guard_slide_min_changed: float = 0.2  # ... for a slide (its frames move as a whole, however alike its ends)
    guard_min_efficiency: float = 0.5  # end-to-end difference / summed mean steps over the window (wipes)
    guard_slide_max_error: float = 0.32  # max mean error of the guard's slide model, share of the ends' difference
    guard_min_seam: float = 2.4  # a slide's seam: its step / the median step between neighbouring columns (rows)
    guard_seams: int = 3  # seam candidates per direction a slide's frame is tried at (its largest steps)
    guard_hidden_edge: bool = True  # wipes whose edge hides where both shots agree: fit its pace (split_screen)
    guard_dissolve_max_s: float = 1.1  # longest window the guard's dissolve test tries
    guard_dissolve_min_path: float = 0.4  # guard's dissolve test: end-to-end difference / summed steps (0: off)
    guard_dissolve_max_residual: float = 0.25  # ... every frame within this share of the ends' difference of a blend
    guard_dissolve_min_diff: float = 8.0  # ... the ends differ by this much at least (under dissolve_min_diff or
    # dissolve_min_change: the low-contrast route, two people before one wall)
    guard_dissolve_min_share: float = 0.3  # ... that route: this share of cells changes otherwise than by one gain
    guard_min_unexplained: float = 0.8  # low-contrast wipes and dissolves: no pan or zoom explains more than 1 - this
    # of the change between the ends (split_screen.motion_residual)
    cut_edges: bool = True  # cut-edge guard: frames next to a hard cut that still hold the other shot are suspect
    transition_edges: bool = True  # ... and frames next to a detected transition that still hold its other side
    cut_edge_max_s: float = 0.5  # longest run of such frames looked for on each side of a cut or transition
    cut_edge_min_progress: float = 0.5  # a frame holds the other shot when the step into it (from the frame beyond)
    # moves it towards the other side's frame next to the cut by at least this share of the step's length ...
    cut_edge_min_step: float = 0.03  # ... and by at least this share of the cut's jump (and 0.5 levels)
    weak_cut_min_diff: float = 1.0  # weak-cut guard: an isolated jump below cut_min_diff but at least this (0: off)
    weak_cut_min_sharp: float = 0.8  # ... whose changed cells (> 4 levels) mostly change by > 8 levels

    def __post_init__(self) -> None:
        if self.detector not in ("shots", "adaptive", "content"):
            raise ValueError(f"detector must be 'shots', 'adaptive' or 'content', not {self.detector!r}")


def rgb_thumbnail(rgb: np.ndarray) -> np.ndarray:
    """(18, 32, 3) float32 full-range YUV thumbnail of an RGB uint8 frame (area mean)."""
    small = cv2.resize(np.ascontiguousarray(rgb), THUMB, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2YUV).astype(np.float32)


def _window_lengths(max_len: int) -> list[int]:
    """Window lengths tried for dissolves (ends included): dense when short, ~12% apart when long."""
    out, length = [], 2
    while length <= max_len:
        out.append(length)
        length = max(length + 1, int(length * 1.12))
    return out


def _guard_lengths(shortest: int, longest: int) -> list[int]:
    """Window lengths ``b - a`` the purity guard tries, ``shortest`` to ``longest``, ~40 % apart."""
    out, length = [], shortest
    while length < longest:
        out.append(length)
        length = max(length + 1, int(length * 1.4))
    return out + [max(shortest, longest)]


class SceneSplitter(PurityGuard):
    """Streaming scene detector: ``push`` (RGB) or ``push_thumb`` (YUV thumbnail) every decoded frame in order,
    then ``finish`` once. ``fps`` is the nominal frame rate (turns seconds into frame counts)."""

    def __init__(self, cfg: SceneConfig, fps: float):
        self.cfg = cfg
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.min_scene_frames = max(1, int(round(cfg.min_scene_s * self.fps)))
        self._psd = None
        if cfg.detector != "shots":
            from scenedetect import FrameTimecode  # noqa: F401  (imported here: optional peer detector)
            from scenedetect.detectors import AdaptiveDetector, ContentDetector

            if cfg.detector == "adaptive":
                self._psd = AdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold,
                                             min_scene_len=self.min_scene_frames, window_width=cfg.adaptive_window,
                                             min_content_val=cfg.adaptive_min_content)
            else:
                self._psd = ContentDetector(threshold=cfg.content_threshold, min_scene_len=self.min_scene_frames)
        self._pts: list[float] = []
        self._d: list[float] = []  # mean |thumb i - thumb i-1|
        self._level: list[float] = []  # mean luma
        self._solid = bytearray()  # 1 black, 2 white
        self._kind = bytearray()
        self._cuts: set[int] = set()
        self._cut_list: list[int] = []  # our cuts, ascending
        self._lengths = _window_lengths(int(round(cfg.dissolve_max_s * self.fps)) + 2)
        shortest, cap_len = max(4, int(round(0.2 * self.fps))), self._lengths[-1]
        self._guard_split_max = min(cap_len, int(round(cfg.guard_max_s * self.fps)))  # wipe and slide windows
        self._guard_blend_max = min(cap_len, int(round(cfg.guard_dissolve_max_s * self.fps)))  # dissolve windows
        self._guard_lengths = _guard_lengths(shortest, self._guard_split_max)
        if cfg.guard_dissolve_min_path > 0 and self._guard_blend_max > self._guard_lengths[-1]:
            self._guard_lengths += _guard_lengths(self._guard_lengths[-1], self._guard_blend_max)[1:]
        # the guard looks at windows ending this many frames before the dissolve decisions: every transition the
        # detector finds around them is marked by then
        self._guard_delay = self._lengths[-1] + 2
        self._guard_next = 1  # the next window end the guard looks at
        self._edge_max = max(1, int(round(cfg.cut_edge_max_s * self.fps)))
        self._edge_pending: list[int] = []  # hard cuts whose edges wait for the frames after them
        self._edge_spans: list[tuple[int, int]] = []  # the cut-edge guard's spans [lo, hi)
        # transition edges are looked at once no later decision can mark frames next to them
        self._edge_delay = self._guard_delay + _LAG + 2
        self._cap = max(self._lengths[-1] + _LAG + 4, self._guard_delay + self._guard_lengths[-1] + _LAG + 2,
                        self._edge_delay + self._edge_max + 4, 16)
        self._ring = np.zeros((self._cap,) + THUMB[::-1] + (3,), np.float32)
        self._cum: list[float] = []  # prefix sums of _d
        self._inv_size = 1.0 / (THUMB[0] * THUMB[1] * 3)
        self._free_from = 0  # dissolve windows start at or after this frame
        self._suspect: list[tuple[int, int]] = []  # the guard's spans [lo, hi), ascending
        self._seams_of: dict[int, list] = {}  # frame -> its _seams, for frames still in the ring
        self.fade_max = max(1, int(round(cfg.fade_max_s * self.fps)))
        self.flash_max = max(1, int(round(cfg.flash_max_s * self.fps)))
        self._finished = False

    # ------------------------------------------------------------------------------------------ stream

    def push(self, rgb: np.ndarray, pts_s: float) -> None:
        """Feed the next decoded frame: (H, W, 3) uint8 RGB, and its PTS in seconds."""
        if self._psd is not None:
            from scenedetect import FrameTimecode

            bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
            for cut in self._psd.process_frame(FrameTimecode(len(self._pts), self.fps), bgr):
                self._cuts.add(int(cut.frame_num))
        self._push(rgb_thumbnail(rgb), pts_s)

    def push_thumb(self, thumb: np.ndarray, pts_s: float) -> None:
        """Feed the next frame as a (18, 32, 3) float32 full-range YUV thumbnail (``curate.frames.iter_thumbs``)."""
        if self._psd is not None:
            raise ValueError(f"detector {self.cfg.detector!r} needs RGB frames: use push()")
        self._push(thumb, pts_s)

    def _push(self, thumb: np.ndarray, pts_s: float) -> None:
        if self._finished:
            raise RuntimeError("push() after finish()")
        i = len(self._pts)
        cap = self._cap
        thumb = np.ascontiguousarray(thumb, dtype=np.float32)
        self._pts.append(float(pts_s))
        self._kind.append(_NONE)
        if i:  # cv2.norm: the L1 distance in one call (this runs for every frame of every video)
            d = cv2.norm(thumb, self._ring[(i - 1) % cap], cv2.NORM_L1) * self._inv_size
            self._d.append(d)
            self._cum.append(self._cum[-1] + d)
        else:
            self._d.append(0.0)
            self._cum.append(0.0)
        self._ring[i % cap] = thumb
        level = cv2.sumElems(thumb)[0] * 3.0 * self._inv_size  # mean luma
        self._level.append(level)
        solid = 1 if level <= self.cfg.black_level else 2 if level >= self.cfg.white_level else 0
        if solid and float(np.abs(thumb[..., 0] - level).mean()) > self.cfg.solid_spread:
            solid = 0
        self._solid.append(solid)
        if self.cfg.fades:
            self._update_fades(i)
        self._decide(i - _LAG, i)
        while self._edge_pending and self._edge_pending[0] + self._edge_max + 1 <= i:
            self._check_cut_edges(self._edge_pending.pop(0), i)
        if self.cfg.transition_edges and i - self._edge_delay >= 1:
            self._check_transition_edge(i - self._edge_delay, i)

    def _decide(self, i: int, last: int) -> None:
        """Decisions that waited for frames up to ``last``: a cut at ``i``, a window ending at ``i``."""
        if i < 1:
            return
        if self._psd is None:
            self._check_cut(i, last)
        if self.cfg.dissolves and i + 1 <= last:
            self._update_dissolves(i, last)
        while self.cfg.guard and self._guard_next <= i - self._guard_delay:
            self._update_guard(self._guard_next)
            self._guard_next += 2  # every other window end: a wipe passes in windows of several ends and lengths

    def finish(self) -> list[Scene]:
        """Flush the pending decisions and return the scenes (transition frames excluded, short scenes dropped)."""
        if not self._finished:
            n = len(self._pts)
            for i in range(max(1, n - _LAG), n):
                self._decide(i, n - 1)
            while self.cfg.guard and self._guard_next < n:
                self._update_guard(self._guard_next)
                self._guard_next += 2
            while self._edge_pending:
                self._check_cut_edges(self._edge_pending.pop(0), n - 1)
            if self.cfg.transition_edges:
                for e in range(max(1, n - self._edge_delay), n):
                    self._check_transition_edge(e, n - 1)
            self._finished = True
            if self._psd is not None and n:
                from scenedetect import FrameTimecode

                for cut in self._psd.post_process(FrameTimecode(n - 1, self.fps)):
                    self._cuts.add(int(cut.frame_num))
        return assemble_scenes(self._pts, self._kind, self._cuts, self.min_scene_frames, self.fps,
                               sorted(self._suspect + self._edge_spans))

    # ---------------------------------------------------------------------------------------- hard cuts

    def _check_cut(self, i: int, last: int) -> None:
        cfg, d = self.cfg, self._d
        jump = d[i]
        weak = jump < cfg.cut_min_diff
        if weak and (cfg.weak_cut_min_diff <= 0 or jump < cfg.weak_cut_min_diff):
            return
        around = d[max(1, i - 3): i] + d[i + 1: min(last, i + 3) + 1]
        if around and jump < cfg.cut_ratio * max(around):
            return
        before = self._ring[(i - 1) % self._cap]
        for k in range(i + 1, min(last, i + 4) + 1):
            if float(np.abs(self._ring[k % self._cap] - before).mean()) < cfg.flash_return * jump:
                return  # the picture came back: a flash or a one-frame glitch
        if weak:  # a low-contrast cut, or a keyframe's requantisation (small changes spread over the picture)
            step = np.abs(self._ring[i % self._cap] - before)
            changed = int(np.count_nonzero(step > 4.0))
            if changed and np.count_nonzero(step > 8.0) >= cfg.weak_cut_min_sharp * changed:
                self._edge_spans.append((i - 1, i + 1))  # suspect only: no cut, no scene bound moves
            return
        self._cuts.add(i)
        self._cut_list.append(i)  # in order: decisions come frame by frame
        if self.cfg.cut_edges:
            self._edge_pending.append(i)

    def _check_transition_edge(self, e: int, last: int) -> None:
        """Frame ``e`` starts (ends) a detected transition: the blend test of :meth:`_check_cut_edges` on the side
        before (after) it, towards the transition frame (or the first clean frame after it) that differs most from
        the clean frame next to ``e`` (the other shot, or the solid frame of a fade)."""
        kind, cap, ring, inv = self._kind, self._cap, self._ring, self._inv_size
        if kind[e] and not kind[e - 1] and e - 1 not in self._cuts:
            near, other = e - 1, range(e, last + 1)
        elif kind[e - 1] and not kind[e] and e not in self._cuts:
            near, other = e, range(e - 1, max(0, last - cap + 1) - 1, -1)
        else:
            return
        best, ref = -1.0, None
        for k in other:
            dist = cv2.norm(ring[k % cap], ring[near % cap], cv2.NORM_L1) * inv
            if dist > best:
                best, ref = dist, ring[k % cap]
            if not kind[k]:
                break  # the first clean frame past the transition
        if near == e - 1:
            self._check_cut_edges(e, last, after=False, ref=ref, jump=best)
        else:
            self._check_cut_edges(e, last, before=False, ref=ref, jump=best)

    def _check_cut_edges(self, c: int, last: int, before: bool = True, after: bool = True,
                         ref: np.ndarray | None = None, jump: float | None = None) -> None:
        """Mark as suspect the frames next to hard cut ``c`` that still hold the other shot: walking away from the
        cut, a frame is a blend while the step into it from the frame beyond moves it towards the other side's
        frame next to the cut (``cut_edge_min_progress`` of the step's length, at least ``cut_edge_min_step`` of
        the cut's jump). A blend fading out moves every pixel one way; a shot's own motion moves pixels towards
        and away from an unrelated picture alike. Frames that repeat the one beyond (a duplicated frame) take the
        verdict of the next step out. ``ref`` / ``jump``: the other side's picture and its distance (a transition's
        edge), else frames ``c`` / ``c - 1`` and ``d[c]``."""
        cfg, cap, ring, d, kind, cuts = self.cfg, self._cap, self._ring, self._d, self._kind, self._cuts
        floor = max(0.5, cfg.cut_edge_min_step * (d[c] if jump is None else jump))
        inv = self._inv_size

        def walk(first: int, way: int, ref: np.ndarray) -> int:
            """The last frame (from ``first``, stepping ``way``) that is a blend, or ``first - way``."""
            mark, f, near = first - way, first, None
            while abs(f - first) < self._edge_max and 0 <= f + way <= last and not kind[f] and not kind[f + way]:
                beyond = f + way
                if (f in cuts and f != c) or (beyond in cuts):
                    break  # another cut: the frames beyond belong to another shot
                step = d[f] if way < 0 else d[beyond]  # |frame f - frame beyond|
                if step >= 0.3 * floor:
                    if near is None:
                        near = cv2.norm(ring[f % cap], ref, cv2.NORM_L1) * inv
                    far = cv2.norm(ring[beyond % cap], ref, cv2.NORM_L1) * inv
                    progress = far - near
                    if progress < cfg.cut_edge_min_progress * step or progress < floor:
                        break
                    mark, near = f, far
                f = beyond
            return mark

        lo = walk(c - 1, -1, ring[c % cap] if ref is None else ref) if c >= 2 and before else c
        hi = walk(c, 1, ring[(c - 1) % cap] if ref is None else ref) + 1 if after else c
        if lo < c:
            self._edge_spans.append((lo, c))
        if hi > c:
            self._edge_spans.append((c, hi))

    # -------------------------------------------------------------------------------------------- fades

    def _update_fades(self, i: int) -> None:
        """Mark solid frames and the ramps around solid runs; unmark a short solid run that is a flash."""
        solid, lv, step = self._solid, self._level, self.cfg.fade_step
        if not solid[i]:
            if i and solid[i - 1]:
                self._end_solid_run(i)
            elif self._ramp_in is not None:
                self._extend_ramp_in(i)
            return
        self._kind[i] = _FADE
        if i and not solid[i - 1]:
            self._ramp_in = None
            target = 0.0 if solid[i] == 1 else 255.0
            j = i - 1  # walk back over the ramp into the run: each frame closer to the solid level than before
            while j > 0 and i - j <= self.fade_max and abs(lv[j] - target) < abs(lv[j - 1] - target) * (1 - step):
                self._kind[j] = _FADE
                j -= 1
            self._run_out = j  # last clean frame before the run

    _split_tried = -1  # the last window end b for which a non-blend window was tried as a split screen
    _ramp_in: tuple[int, float] | None = None  # (first frame of the ramp out of a solid run, solid level)
    _run_out = -1
    _run_start = -1

    def _end_solid_run(self, i: int) -> None:
        j = i - 1
        while j > 0 and self._solid[j - 1]:
            j -= 1
        self._run_start = j
        self._ramp_in = (i, 0.0 if self._solid[i - 1] == 1 else 255.0)
        self._extend_ramp_in(i)

    def _extend_ramp_in(self, i: int) -> None:
        """Frame ``i - 1`` stays on the ramp out of the solid run while frame ``i`` is clearly further from it."""
        first, target = self._ramp_in
        lv, step = self._level, self.cfg.fade_step
        prev = i - 1
        if prev >= first and not (abs(lv[prev] - target) < abs(lv[i] - target) * (1 - step)
                                  and i - first < self.fade_max):
            self._ramp_in = None
            self._check_flash(prev)
            return
        if prev >= first:
            self._kind[prev] = _FADE

    def _check_flash(self, clean: int) -> None:
        """A short fade episode whose two sides show one picture is a flash: unmark it."""
        out = self._run_out
        if out < 0 or clean - out - 1 > 2 * self.flash_max or clean - out >= self._cap:
            return
        a, b = self._ring[out % self._cap], self._ring[clean % self._cap]
        if float(np.abs(a - b).mean()) < self.cfg.dissolve_min_diff:
            for j in range(out + 1, clean):
                self._kind[j] = _NONE

    # ---------------------------------------------------------------------------------- dissolves, wipes

    def _update_dissolves(self, b: int, last: int) -> None:
        cfg, cap, ring, d = self.cfg, self._cap, self._ring, self._d
        if self._kind[b] != _NONE or self._kind[b + 1] != _NONE:
            return
        # settled / calm: the larger / lesser step of the 2 frames after b (a duplicated frame moves by 0)
        settled = calm = d[b + 1]
        if b + 2 <= last:
            settled, calm = max(calm, d[b + 2]), min(calm, d[b + 2])
        if settled > 0.25 * cfg.dissolve_min_diff:  # the incoming shot is settled after b
            return
        if b + 3 <= last and calm > 0.5 and min(d[b + 3: min(last, b + 4) + 1]) < 0.25 * calm:
            return  # the change dies out 2 frames on (a wipe's edge crossing a last, flat strip): end later
        if b + 2 <= last and d[b + 1] > 0.3 and d[b + 2] < 0.25 * d[b + 1]:
            return  # ... or 1 frame on: frame b + 1 still changes and is the better end
        still, longest = max(0.5, 1.5 * settled), self._lengths[-1]
        if self._cum[b] - self._cum[max(self._free_from, b - longest)] < min(cfg.wipe_min_diff, cfg.dissolve_min_diff):
            return  # no window ending at b changed enough: every pixel's end-to-end change is <= its path
        # Wipes and slides: the burst of change that ends at b, from the last still frame before it.
        a = b - 1 if d[b] <= still < d[b - 1] else b  # a burst may end with one small step (a soft edge leaving)
        while a > self._free_from and b - a <= longest and d[a] > still:
            a -= 1
        if 3 <= b - a <= longest and d[a] <= still and self._clear(a, b):
            diff = float(np.abs(ring[b % cap] - ring[a % cap]).mean())
            span = self._split_screen(a, b, diff) if diff >= cfg.wipe_min_diff else None
            if span is not None:
                self._mark(span)
                return
        # Dissolves: windows of every length ending at b. The summed per-pixel path over a..b is the sum of the
        # mean steps d (a prefix sum), and every pixel's end-to-end change is at most its path: the tests that
        # need no picture come first, and the end-to-end differences are computed only for windows that pass them.
        cum, min_diff, settle = self._cum, cfg.dissolve_min_diff, cfg.dissolve_settle
        keep, free, moving, end = [], self._free_from, 0.25 * min_diff, cum[b]
        top, top_from = 0.0, b + 1  # the largest step of the window: max(d[top_from:b + 1])
        for n in self._lengths:
            a = b - n
            if a < free:
                break
            path = end - cum[a]
            if path < min_diff or d[a] > moving:
                continue  # too little change, or the outgoing shot does not hold still before the window
            before = d[a] if a < 2 else min(d[a - 1], d[a])
            if (calm + before) * n > settle * path:
                continue  # the change goes on past the ends at the window's pace: the window cuts a transition
            top, top_from = max(top, *d[a + 1: top_from]), a + 1
            if top > 0.6 * path:
                continue  # one step makes most of the change (the end-to-end change is at most the path)
            keep.append((n, path))
        if not keep:
            return
        flat = ring.reshape(cap, -1)
        starts = [(b - n) % cap for n, _ in keep]
        diffs = np.abs(flat[starts] - flat[b % cap]).sum(axis=1) * self._inv_size
        for (n, path), diff in zip(keep, diffs.tolist()):
            a = b - n
            if diff < min_diff or diff < cfg.dissolve_min_path * path:
                continue
            if max(d[a + 1: b + 1]) > 0.6 * diff:
                continue  # one step makes most of the change: a cut, not a blend
            if not self._clear(a, b):
                continue
            span = self._fit(a, b, last, diff)
            if span is not None:
                self._mark(span)
                return

    def _clear(self, a: int, b: int) -> bool:
        """No frame of ``a..b`` is marked yet, and (our detector) no hard cut lies in ``a+1..b``: our cuts are one
        step, and a window holding one is no gradual transition."""
        if any(self._kind[a: b + 1]):
            return False
        if self._psd is None:
            k = bisect.bisect_right(self._cut_list, a)
            return k == len(self._cut_list) or self._cut_list[k] > b
        return True

    def _mark(self, span: tuple[int, int]) -> None:
        lo, hi = span
        self._kind[lo:hi] = bytes([_DISSOLVE]) * (hi - lo)
        self._free_from = hi

    def _fit(self, a: int, b: int, last: int, diff: float) -> tuple[int, int] | None:
        """Transition frames ``[lo, hi)`` if frames ``a..b`` move from ``a`` to ``b`` like a dissolve or wipe."""
        cfg, cap = self.cfg, self._cap
        pre, post = min(2, a), min(3, last - b)
        window = self._ring[np.arange(a - pre, b + post + 1) % cap].reshape(b - a + pre + post + 1, -1)
        x0 = window[pre]
        delta = window[pre + b - a] - x0
        norm = float(delta @ delta)
        if norm <= 0:
            return None
        alpha_all = (window - x0) @ delta / norm
        alpha = alpha_all[pre: pre + b - a + 1]
        steps = np.diff(alpha)
        if steps.max() > cfg.dissolve_max_step or steps.min() < -0.1:
            return None
        ramp = np.nonzero((alpha > 0.1) & (alpha < 0.9))[0]
        if len(ramp) < 2:
            return None
        x, y = ramp.astype(np.float64), alpha[ramp].astype(np.float64)  # least-squares line through the rise
        xm, ym = x.mean(), y.mean()
        slope = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
        icpt = ym - slope * xm
        if slope <= 0:
            return None
        # the frames around the window hold still: before a at alpha ~0, after b at ~1 (else the window cuts
        # through the transition and a longer one, or a later end, is the right one)
        tol = max(0.03, 0.5 * slope)
        if np.any(alpha_all[:pre] < -tol) or np.any(alpha_all[pre + b - a + 1:] > 1 + tol):
            return None
        m0, m1 = -icpt / slope, (1.0 - icpt) / slope  # where the fitted rise is 0 and 1 (window offsets)
        if m0 < -0.5 or m1 > (b - a) + 0.5:
            return None
        # how far each frame in between is from the blend of the ends at its alpha, share of the ends' difference
        blend = float(np.abs(window[pre + 1: pre + b - a] - x0 - alpha[1:-1, None] * delta).mean(axis=1).max()) / diff
        if blend > cfg.dissolve_max_blend and self._split_tried == b:
            return None  # no blend, and the split-screen models were tried for b: None whatever the relighting
        gain, spread = _relighting(window[pre].reshape(THUMB[1], THUMB[0], 3),
                                   window[pre + b - a].reshape(THUMB[1], THUMB[0], 3))
        if spread < cfg.dissolve_min_change:
            # Most of the picture keeps its brightness ratio: the same picture with another exposure, unless the
            # gain is ~1 (most of it does not change: two shots of one backdrop) and every frame in between is a
            # blend of the ends (a subject moving in one shot is not: it stands between its two places).
            if abs(gain) > 0.05 or blend > cfg.dissolve_max_residual:
                return None
        if blend > cfg.dissolve_max_blend:
            # no blend: a wipe or slide (frames a and b side by side) or a zoom (neither); the split-screen
            # models are tried for the shortest such window ending at b only (they cost ~100 dissolve tests)
            if self._split_tried == b:
                return None
            self._split_tried = b
            return self._split_screen(a, b, diff)
        lo = a + max(1, int(np.floor(m0)) + 1)  # first frame after the last clean frame of the outgoing shot
        hi = a + min(b - a, int(np.ceil(m1)))  # first clean frame of the incoming shot
        # A rise that is no straight line (a soft-edged wipe: the edge crosses parts of the picture that change
        # by different amounts) starts before and ends after the fitted line: frames clearly off 0 (1) by more
        # than the jitter of the still frames around the window are transition frames too.
        jitter = max(np.abs(alpha_all[:pre]).max(initial=0.0), np.abs(alpha_all[pre + b - a + 1:] - 1).max(initial=0.0))
        tau = max(0.05, 3.0 * float(jitter))
        inner = np.nonzero((alpha[1:-1] > tau) & (alpha[1:-1] < 1 - tau))[0]
        if len(inner):
            lo, hi = min(lo, a + 1 + int(inner[0])), max(hi, a + 2 + int(inner[-1]))
        return (lo, hi) if hi > lo else None

    def _split_screen(self, a: int, b: int, diff: float) -> tuple[int, int] | None:
        """The frames strictly between ``a`` and ``b`` where each is frame ``a`` and frame ``b`` side by side with a
        straight edge that moves one way across the picture: a wipe (both still) or a slide (the next shot pushes
        the last one out)."""
        cap = self._cap
        A, B = self._ring[a % cap], self._ring[b % cap]
        if float((np.abs(B - A).mean(axis=2) > 12.0).mean()) < self.cfg.wipe_min_changed:
            return None  # most of the picture stays: an object moved in or out, no other shot came in
        mids = self._ring[np.arange(a + 1, b) % cap]  # (k, H, W, 3)
        wipes = _wipe_errors(mids, A, B)
        banded = {}  # band means of A, B and mids: slides are checked on the pictures only where their bound fits
        for m, (_, push, along_columns) in enumerate(_SPLIT_MODELS):
            limit = self.cfg.wipe_max_error * (0.85 if push else 1.0) * diff  # a pan is a push without a seam
            if push:
                if along_columns not in banded:
                    banded[along_columns] = tuple(_band_means(x, along_columns) for x in (A, B, mids))
                if not _push_may_fit(banded[along_columns], m, limit):
                    continue
                err = np.abs(mids[:, None] - _split_model(A, B, m)[None]).mean(axis=(2, 3, 4))  # (k, offsets)
            else:
                err = wipes[m]
            best = err.argmin(axis=1)
            full = err.shape[1] - 1
            if err[np.arange(len(best)), best].max() > limit or np.any(np.diff(best) < 0):
                continue
            moving = np.nonzero((best > 0) & (best < full))[0]  # frames with the edge inside the picture
            if len(moving) < max(1, len(best) // 2):
                continue
            # A soft edge still shows a strip of the other shot less than a thumbnail column wide: next to the
            # moving frames, a frame that differs from frame b (a) by more than 3 % of the ends' difference is a
            # transition frame too, where that shot holds still.
            lo, hi, d = int(moving[0]), int(moving[-1]), self._d
            while d[b + 1] < 0.3 and hi + 1 < len(best) and err[hi + 1, full] > 0.03 * diff:
                hi += 1
            while d[a] < 0.3 and lo > 0 and err[lo - 1, 0] > 0.03 * diff:
                lo -= 1
            return a + 1 + lo, a + 2 + hi
        return None

    # ------------------------------------------------------------------------------------------ scenes

    def marks(self) -> tuple[bytes, set[int]]:
        """Per-frame transition kinds (0 none, 1 fade, 2 dissolve) and hard-cut indices found so far."""
        return bytes(self._kind), set(self._cuts)

    @property
    def transition_frames(self) -> list[int]:
        """Indices of frames classified as fade or dissolve (for tests and the benchmark)."""
        return [i for i, k in enumerate(self._kind) if k != _NONE]

    @property
    def hard_cuts(self) -> list[int]:
        """Hard-cut positions (first frame of the new shot)."""
        return sorted(self._cuts)


def detect_scenes(frames: Iterable, cfg: SceneConfig, fps: float) -> list[Scene]:
    """Run a :class:`SceneSplitter` over ``frames``: objects with ``.rgb`` and ``.pts_s`` (``curate.frames.Frame``)
    or ``(pts_s, rgb)`` tuples."""
    splitter = SceneSplitter(cfg, fps)
    for item in frames:
        pts_s, rgb = (item.pts_s, item.rgb) if hasattr(item, "rgb") else item
        splitter.push(rgb, pts_s)
    return splitter.finish()
