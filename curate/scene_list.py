"""The scene stage's output: :class:`Scene` (one shot's frames, how it begins and ends, the spans the clip purity
guard flagged inside it) and :func:`assemble_scenes`, which turns per-frame transition marks and hard cuts into the
list of scenes. ``curate.scenes`` makes the marks.
"""

from __future__ import annotations

from dataclasses import dataclass

# Per-frame transition kinds (codes in curate.scenes.SceneSplitter._kind).
_NONE, _FADE, _DISSOLVE = 0, 1, 2
_KIND_NAME = {_FADE: "fade", _DISSOLVE: "dissolve"}


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
    suspect: tuple[tuple[int, int], ...] = ()  # frames [lo, hi) inside the scene the purity guard flagged

    @property
    def num_frames(self) -> int:
        return self.end - self.start

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s



def assemble_scenes(pts, kind, cuts, min_scene_frames: int, fps: float, suspect=()) -> list[Scene]:
    """Scenes from per-frame marks: maximal runs of frames whose ``kind`` is 0 (no transition), split at every
    index in ``cuts``; runs shorter than ``min_scene_frames`` are dropped. ``pts`` gives the times (s). ``suspect``:
    the guard's spans ``[lo, hi)`` (several guards may flag overlapping spans: those that overlap or touch are
    merged first); each scene carries the parts of those inside it."""
    n = len(pts)
    if n == 0:
        return []
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(suspect):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    suspect = merged
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
                inside = tuple((max(lo, start), min(hi, i)) for lo, hi in suspect if lo < i and hi > start)
                scenes.append(Scene(start, i, float(pts[start]), float(end_s), cut_in, cut_out, inside))
            start = None
        if start is None and i < n and not is_transition:
            start = i
    return scenes
