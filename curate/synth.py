"""Deterministic synthetic test videos with exact ground truth.

Each video is a sequence of *shots* (one flat-coloured shape moving over a textured background) joined by
*transitions* (hard cut, cross-dissolve, fade through black). Everything is drawn with numpy and encoded with
PyAV/libx264, so a seed gives the same frames, the same file bytes and the same ground truth on every machine.

Why: the real test videos have approximate, hand-made ground truth; scene detection, clip cutting and the
caption plumbing need videos whose every transition frame and every caption is known exactly.

Timeline rules (0-based decoded-frame indices):
  * shot ``i`` owns ``shots[i].num_frames`` *clean* frames; ``transitions[i]`` sits between shot ``i`` and
    shot ``i+1`` and adds ``frames`` frames of its own (0 for a cut);
  * a dissolve of F frames shows ``(1-a) A + a B`` with ``a = (k+1)/(F+1)``, k = 0..F-1;
  * a fade of F frames shows A for the first half and B for the second, scaled by a brightness that falls
    linearly to 0 in the middle and rises back (every fade frame is darker than both shots);
  * during a transition the outgoing shot keeps moving (its local time runs past ``num_frames``) and the
    incoming shot's motion starts early (negative local time), so motion is continuous across the blend.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------- vocab

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 225),
    "yellow": (240, 215, 30),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "cyan": (30, 200, 210),
    "pink": (245, 120, 180),
}
"""Named shape/background colours (sRGB), chosen far apart so a decoded pixel can be named back."""

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
MOTIONS = ("left", "right", "up", "down", "rotate", "grow")
BACKGROUNDS = ("noise", "gradient", "checker")
TRANSITIONS = ("cut", "dissolve", "fade")

EVAL_COLORS = tuple(COLORS)
"""Colours of the text-faithfulness eval: every colour the corpus draws. An eval that reads fewer colours than
training shows turns the unread ones into stand-ins (an orange shape read as yellow makes a training "orange
triangle" count as a held-out "yellow triangle")."""
EVAL_SHAPES = SHAPES
"""Shapes of the eval: every shape the corpus draws, for the same reason."""
EVAL_MOTIONS = ("left", "right", "up", "down")
"""Motion directions of the eval ("rotate" and "grow" are drawn in training but not read back)."""

_MOTION_PHRASE = {
    "left": "moves left",
    "right": "moves right",
    "up": "moves up",
    "down": "moves down",
    "rotate": "rotates",
    "grow": "grows",
}
_BACKGROUND_PHRASE = {"noise": "mottled", "gradient": "gradient", "checker": "checkered"}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


@dataclass(frozen=True)
class Shot:
    """One shot: a ``color`` ``shape`` doing ``motion`` over a ``background`` texture tinted ``bg_color``.

    ``num_frames`` counts the clean frames only (transition frames are extra).
    """

    shape: str
    color: str
    motion: str
    background: str
    bg_color: str
    num_frames: int

    def __post_init__(self) -> None:
        for value, allowed in (
            (self.shape, SHAPES),
            (self.color, COLORS),
            (self.motion, MOTIONS),
            (self.background, BACKGROUNDS),
            (self.bg_color, COLORS),
        ):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {sorted(allowed)}")
        if self.color == self.bg_color:
            raise ValueError("shape and background colour must differ")
        if self.num_frames < 1:
            raise ValueError("num_frames must be >= 1")

    @property
    def caption(self) -> str:
        """One sentence describing the shot, e.g. 'a red circle moves left over a blue checkered background'."""
        return (
            f"{_article(self.color)} {self.color} {self.shape} {_MOTION_PHRASE[self.motion]} over "
            f"{_article(self.bg_color)} {self.bg_color} {_BACKGROUND_PHRASE[self.background]} background"
        )


@dataclass(frozen=True)
class Transition:
    """How two consecutive shots are joined: ``cut`` (frames must be 0), ``dissolve`` or ``fade`` (frames >= 2)."""

    kind: str
    frames: int = 0

    def __post_init__(self) -> None:
        if self.kind not in TRANSITIONS:
            raise ValueError(f"transition kind {self.kind!r} is not one of {TRANSITIONS}")
        if self.kind == "cut" and self.frames != 0:
            raise ValueError("a cut has 0 transition frames")
        if self.kind != "cut" and self.frames < 2:
            raise ValueError(f"a {self.kind} needs at least 2 frames")


@dataclass(frozen=True)
class Program:
    """Everything needed to render one video."""

    shots: tuple[Shot, ...]
    transitions: tuple[Transition, ...]
    fps: int = 24
    size: tuple[int, int] = (320, 180)  # (W, H)
    seed: int = 0


@dataclass
class GroundTruth:
    """Exact truth of a rendered video (JSON-serialisable with :meth:`to_json`).

    ``shots[i]`` holds the shot attributes plus ``start``/``end`` (clean frames, end exclusive) and ``caption``.
    ``transitions[i]`` holds ``kind`` and ``start``/``end`` of the frames that mix two shots or are darkened
    (``start == end`` for a hard cut). ``shot_starts`` is the first clean frame of every shot after the first.
    """

    num_frames: int
    fps: int
    width: int
    height: int
    seed: int
    shots: list[dict] = field(default_factory=list)
    transitions: list[dict] = field(default_factory=list)

    @property
    def shot_starts(self) -> list[int]:
        return [s["start"] for s in self.shots[1:]]

    @property
    def transition_frames(self) -> set[int]:
        return {f for t in self.transitions for f in range(t["start"], t["end"])}

    def shot_of_frame(self, index: int) -> int | None:
        """Index of the shot whose clean frames contain ``index``; None for transition frames."""
        for i, s in enumerate(self.shots):
            if s["start"] <= index < s["end"]:
                return i
        return None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "shot_starts": self.shot_starts}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> GroundTruth:
        data = json.loads(text)
        data.pop("shot_starts", None)
        return cls(**data)


# ------------------------------------------------------------------------------------------- drawing


def _star_polygon(n_points: int, inner: float) -> np.ndarray:
    """(2n, 2) vertices (angle, radius) of a star alternating radius 1 and ``inner``."""
    angles = np.arange(2 * n_points) * math.pi / n_points
    radii = np.where(np.arange(2 * n_points) % 2 == 0, 1.0, inner)
    return np.stack([angles, radii], axis=1)


def _regular_polygon(n: int) -> np.ndarray:
    angles = np.arange(n) * 2 * math.pi / n
    return np.stack([angles, np.ones(n)], axis=1)


_POLYGONS = {
    "square": _regular_polygon(4) + np.array([math.pi / 4, 0.0]),
    "triangle": _regular_polygon(3) + np.array([-math.pi / 2, 0.0]),
    "star": _star_polygon(5, 0.45) + np.array([-math.pi / 2, 0.0]),
    "diamond": _regular_polygon(4) * np.array([1.0, 1.0]),
    "hexagon": _regular_polygon(6),
}


def _radial_boundary(shape: str, theta: np.ndarray) -> np.ndarray:
    """Boundary radius (unit size) of a star-shaped ``shape`` along angles ``theta`` (any shape array).

    Every shape here is star-shaped around its centre, so a pixel is inside iff its distance from the centre
    is below the boundary radius along its direction: one vectorised test for all shapes and rotations.
    """
    if shape == "circle":
        return np.full_like(theta, 0.85)
    verts = _POLYGONS[shape]
    pts = np.stack([verts[:, 1] * np.cos(verts[:, 0]), verts[:, 1] * np.sin(verts[:, 0])], axis=1)  # (V, 2)
    order = np.argsort(np.mod(verts[:, 0], 2 * math.pi))
    pts, angs = pts[order], np.mod(verts[order, 0], 2 * math.pi)
    nxt = np.roll(pts, -1, axis=0)
    # Edge j runs from vertex j to j+1; its line is {x : n_j . x = c_j}.
    normal = np.stack([nxt[:, 1] - pts[:, 1], pts[:, 0] - nxt[:, 0]], axis=1)
    c = np.sum(normal * pts, axis=1)
    t = np.mod(theta, 2 * math.pi)
    edge = np.searchsorted(angs, t, side="right") - 1  # -1 wraps to the last edge
    edge = np.mod(edge, len(angs))
    denom = normal[edge, 0] * np.cos(t) + normal[edge, 1] * np.sin(t)
    return c[edge] / np.where(np.abs(denom) < 1e-9, 1e-9, denom)


def _background(kind: str, color: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 texture in one palette: ``color`` modulated between 35% and 100% brightness."""
    w, h = size
    base = np.array(COLORS[color], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "checker":
        cell = int(rng.integers(max(8, h // 10), max(9, h // 4)))
        level = ((xx // cell + yy // cell) % 2) * 0.45 + 0.45
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        level = 0.35 + 0.65 * (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    else:  # low-frequency value noise: smooth, so it encodes cheaply and does not look like a cut
        grid = rng.uniform(0.35, 1.0, size=(6, 9)).astype(np.float32)
        gy = yy / max(h - 1, 1) * (grid.shape[0] - 1)
        gx = xx / max(w - 1, 1) * (grid.shape[1] - 1)
        y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
        y1, x1 = np.minimum(y0 + 1, grid.shape[0] - 1), np.minimum(x0 + 1, grid.shape[1] - 1)
        fy, fx = gy - y0, gx - x0
        level = (
            grid[y0, x0] * (1 - fy) * (1 - fx)
            + grid[y0, x1] * (1 - fy) * fx
            + grid[y1, x0] * fy * (1 - fx)
            + grid[y1, x1] * fy * fx
        )
    return np.clip(level[..., None] * base, 0, 255).astype(np.uint8)


class _ShotPainter:
    """Draws frame ``t`` (shot-local time, may be negative or past the end) of one shot."""

    def __init__(self, shot: Shot, size: tuple[int, int], rng: np.random.Generator):
        w, h = size
        self.shot, self.size = shot, size
        self.bg = _background(shot.background, shot.bg_color, size, rng)
        self.color = np.array(COLORS[shot.color], np.uint8)
        self.radius = float(rng.uniform(0.16, 0.24)) * h
        self.start_xy = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.65) * h])
        # Pixels per frame: crosses a good part of the frame over the shot, whatever its length.
        self.speed = float(rng.uniform(0.25, 0.45)) * w / max(shot.num_frames, 24)
        self.spin = float(rng.uniform(1.5, 4.0)) * math.pi / max(shot.num_frames, 24)
        # Drawn for every shot (so the random stream does not depend on the motion), used only when rotating:
        # a still square stays axis-aligned and a diamond stays a diamond, so shape names are visible.
        self.angle0 = float(rng.uniform(0, 2 * math.pi))

    def frame(self, t: float) -> np.ndarray:
        w, h = self.size
        motion = self.shot.motion
        center = self.start_xy.copy()
        radius, angle = self.radius, 0.0
        n = self.shot.num_frames
        tc = t - n / 2  # motions are centred on the middle of the shot so the shape stays in view
        step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.get(motion)
        if step is not None:
            center = center + np.array(step, float) * self.speed * tc
            center = np.clip(center, [self.radius, self.radius], [w - self.radius, h - self.radius])
        elif motion == "rotate":
            angle = self.angle0 + self.spin * t
        elif motion == "grow":
            radius = self.radius * min(max(0.7 + 0.6 * t / n, 0.3), 1.6)
        out = self.bg.copy()
        r_box = int(math.ceil(radius)) + 1
        x0, x1 = max(int(center[0]) - r_box, 0), min(int(center[0]) + r_box + 1, w)
        y0, y1 = max(int(center[1]) - r_box, 0), min(int(center[1]) + r_box + 1, h)
        if x0 >= x1 or y0 >= y1:
            return out
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx + 0.5 - center[0], yy + 0.5 - center[1]
        dist = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx) - angle
        inside = dist <= radius * _radial_boundary(self.shot.shape, theta)
        out[y0:y1, x0:x1][inside] = self.color
        return out


# ------------------------------------------------------------------------------------------ timeline


def _timeline(program: Program) -> tuple[list[tuple], GroundTruth]:
    """Frame plan and ground truth. Plan entries: ('shot', i, t) or (kind, i, t_a, t_b, k, F)."""
    shots, transitions = program.shots, program.transitions
    if len(transitions) != len(shots) - 1:
        raise ValueError("need exactly len(shots) - 1 transitions")
    plan: list[tuple] = []
    gt = GroundTruth(0, program.fps, program.size[0], program.size[1], program.seed)
    for i, shot in enumerate(shots):
        start = len(plan)
        plan.extend(("shot", i, t) for t in range(shot.num_frames))
        gt.shots.append({**asdict(shot), "start": start, "end": len(plan), "caption": shot.caption})
        if i < len(transitions):
            tr = transitions[i]
            t_start = len(plan)
            for k in range(tr.frames):
                plan.append((tr.kind, i, shot.num_frames + k, k - tr.frames, k, tr.frames))
            gt.transitions.append({"kind": tr.kind, "start": t_start, "end": len(plan), "frames": tr.frames})
    gt.num_frames = len(plan)
    return plan, gt


def _compose(entry: tuple, painters: list[_ShotPainter]) -> np.ndarray:
    kind = entry[0]
    if kind == "shot":
        return painters[entry[1]].frame(entry[2])
    _, i, t_a, t_b, k, n = entry
    if kind == "dissolve":
        a = (k + 1) / (n + 1)
        mix = (1 - a) * painters[i].frame(t_a).astype(np.float32) + a * painters[i + 1].frame(t_b)
        return np.rint(mix).astype(np.uint8)
    # fade through black: V-shaped brightness, A before the middle, B after it
    pos = (k + 1) / (n + 1)
    gain = abs(2 * pos - 1)
    src = painters[i].frame(t_a) if pos < 0.5 else painters[i + 1].frame(t_b)
    return np.rint(src.astype(np.float32) * gain).astype(np.uint8)


def render_frames(program: Program) -> tuple[np.ndarray, GroundTruth]:
    """All frames as one (N, H, W, 3) uint8 array plus ground truth (no encoding; tests and debugging)."""
    plan, gt = _timeline(program)
    rng = np.random.default_rng(program.seed)
    painters = [_ShotPainter(s, program.size, rng) for s in program.shots]
    return np.stack([_compose(e, painters) for e in plan]), gt


# BT.601 limited range, the matrix decoders assume for an untagged SD stream (and swscale's default both ways).
_RGB_TO_YCBCR = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H * 3 // 2, W) uint8 planar I420 (Y rows, then U, then V), BT.601 limited range.

    Done here in float64 elementwise arithmetic, not by swscale: every output byte is a pure function of the
    input pixels, so an encode's input is reproducible whatever SIMD path or buffer padding the host has.
    Chroma is the mean of each 2x2 block. H and W must be even.
    """
    h, w, _ = rgb.shape
    x = rgb.astype(np.float64)
    ycc = np.einsum("hwc,kc->khw", x, _RGB_TO_YCBCR, optimize=False)
    y = np.rint(ycc[0] + 16)
    uv = ycc[1:].reshape(2, h // 2, 2, w // 2, 2).mean(axis=(2, 4)) + 128
    planes = [y.reshape(-1), np.rint(uv[0]).reshape(-1), np.rint(uv[1]).reshape(-1)]
    return np.clip(np.concatenate(planes), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def render_video(
    path: str | Path,
    shots: list[Shot] | tuple[Shot, ...],
    transitions: list[Transition] | tuple[Transition, ...],
    fps: int = 24,
    size: tuple[int, int] = (320, 180),
    seed: int = 0,
    crf: int = 18,
    write_sidecar: bool = True,
) -> GroundTruth:
    """Render and encode an H.264 MP4 (yuv420p, libx264 ``veryfast``, one thread).

    ``size`` is (W, H) and must be even. Writes ``<path>.json`` (ground truth) when ``write_sidecar``.
    Returns the ground truth. The encoder's input planes are exactly reproducible from the seed
    (:func:`rgb_to_yuv420p`). The bytes were identical over 360 renders on our 2-core box, but one CI host once
    wrote other bytes for one program (swscale then made the planes); bit-exact output is libx264's promise, not
    ours, so tests hold the decoded pictures to the truth rather than the bytes to each other.
    """
    w, h = size
    if w % 2 or h % 2:
        raise ValueError("size must be even for yuv420p")
    program = Program(tuple(shots), tuple(transitions), fps, (w, h), seed)
    plan, gt = _timeline(program)
    rng = np.random.default_rng(seed)
    painters = [_ShotPainter(s, program.size, rng) for s in program.shots]
    import av  # here, not at the top: rendering frames alone needs no codec (the shot corpus encodes elsewhere)

    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        stream.codec_context.time_base = Fraction(1, fps)
        for n, entry in enumerate(plan):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(_compose(entry, painters)), format="yuv420p")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    if write_sidecar:
        path.with_suffix(".json").write_text(gt.to_json())
    return gt


# ---------------------------------------------------------------------------------------- programs


def random_program(
    seed: int,
    n_shots: tuple[int, int] = (3, 6),
    shot_s: tuple[float, float] = (1.5, 4.0),
    fps: int = 24,
    size: tuple[int, int] = (320, 180),
    transition_kinds: tuple[str, ...] = TRANSITIONS,
    transition_s: tuple[float, float] = (0.4, 1.0),
    exclude: tuple[tuple[str, str], ...] = (),
) -> Program:
    """A random but seed-determined program; neighbouring shots differ in shape colour, background colour and
    texture, so every boundary is visible and every clean frame can be attributed to its shot by colour.
    No shot shows a (colour, shape) pair of ``exclude`` (the eval's held-out pairs); an empty ``exclude``
    draws exactly the program it always did."""
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    count = int(rng.integers(n_shots[0], n_shots[1] + 1))
    shots: list[Shot] = []
    for _ in range(count):
        prev = shots[-1] if shots else None
        while True:
            color, bg_color = (str(c) for c in rng.choice(names, size=2, replace=False))
            background = str(rng.choice(BACKGROUNDS))
            if prev is None or (
                color not in (prev.color, prev.bg_color)
                and bg_color not in (prev.color, prev.bg_color)
                and background != prev.background
            ):
                break
        shape = str(rng.choice(SHAPES))
        if (color, shape) in exclude:
            shape = str(rng.choice([s for s in SHAPES if (color, s) not in exclude]))
        shots.append(
            Shot(
                shape=shape,
                color=color,
                motion=str(rng.choice(MOTIONS)),
                background=background,
                bg_color=bg_color,
                num_frames=int(round(rng.uniform(*shot_s) * fps)),
            )
        )
    transitions = []
    for _ in range(count - 1):
        kind = str(rng.choice(transition_kinds))
        frames = 0 if kind == "cut" else max(2, int(round(rng.uniform(*transition_s) * fps)))
        transitions.append(Transition(kind, frames))
    return Program(tuple(shots), tuple(transitions), fps, size, seed)


def render_program(path: str | Path, program: Program, write_sidecar: bool = True) -> GroundTruth:
    """:func:`render_video` for a :class:`Program`."""
    return render_video(
        path,
        program.shots,
        program.transitions,
        fps=program.fps,
        size=program.size,
        seed=program.seed,
        write_sidecar=write_sidecar,
    )


def render_samples(
    out_dir: str | Path, n_videos: int = 4, seed: int = 0, size: tuple[int, int] = (320, 180), fps: int = 24,
    exclude: tuple[tuple[str, str], ...] = (),
) -> list[Path]:
    """Write a small corpus: ``sample_NNN.mp4`` + ``.json`` (ground truth) + ``.txt`` (one caption per shot,
    one per line). Returns the video paths. Video ``i`` uses seed ``seed * 1000 + i``; no shot shows a
    (colour, shape) pair of ``exclude``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_videos):
        program = random_program(seed * 1000 + i, fps=fps, size=size, exclude=tuple(exclude))
        path = out_dir / f"sample_{i:03d}.mp4"
        gt = render_program(path, program)
        path.with_suffix(".txt").write_text("\n".join(s["caption"] for s in gt.shots) + "\n")
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ text-faithfulness corpus


DETECTOR_CONFUSIONS: dict[str, tuple[tuple[str, str], ...]] = {"color": (), "shape": (("square", "diamond"),)}
"""(drawn, read as) pairs the eval's detector (``curate.detect``) was measured to confuse on renders of the whole
training distribution (every colour, shape and motion, random backgrounds; ``detect.validate(motions=MOTIONS)``):
at 64 px, 400 clips through ``detect.degrade`` (17 frames) and 108 clean + 108 degraded (9 frames), none; at
128 px, 300 degraded clips, one square read as a diamond. Turning squares and diamonds read as None, which names
nothing. At 32 px the detector confuses circles and hexagons (and more), so the eval runs at 64 px and up.
``ComboSplit.default`` keeps every held-out pair out of one confusable step from a training pair;
``tests/test_synth.py`` measures the confusions again and holds the default split to them."""


@dataclass(frozen=True)
class ComboSplit:
    """Which (colour, shape) pairs training may show. ``heldout`` pairs never appear in a training clip, in any
    motion; the eval asks for them to measure composition rather than memory."""

    colors: tuple[str, ...] = EVAL_COLORS
    shapes: tuple[str, ...] = EVAL_SHAPES
    motions: tuple[str, ...] = EVAL_MOTIONS
    heldout: tuple[tuple[str, str], ...] = ()

    @classmethod
    def default(cls, seed: int = 0, colors: tuple[str, ...] = EVAL_COLORS, shapes: tuple[str, ...] = EVAL_SHAPES,
                motions: tuple[str, ...] = EVAL_MOTIONS, per_color: int = 2,
                confusions: dict[str, tuple[tuple[str, str], ...]] | None = None) -> ComboSplit:
        """``per_color`` held-out shapes for every colour, every shape held out with as many colours as the
        others (give or take one), so held-out pairs cover every colour and every shape at least twice (18 of
        the 54 pairs by default: each colour is still seen with 4 shapes, each shape with 6 colours); and no
        held-out pair is one confusable step (``confusions``, default ``DETECTOR_CONFUSIONS``) from a training
        pair (:meth:`reachable`). A seeded random search; raises ``ValueError`` when no such split exists."""
        total = per_color * len(colors)
        if not 1 <= per_color < len(shapes) or total < 2 * len(shapes):
            raise ValueError(f"{per_color} held-out shapes per colour cannot cover {len(shapes)} shapes twice "
                             f"with {len(colors)} colours (and leave each colour a seen shape)")
        confusions = DETECTOR_CONFUSIONS if confusions is None else confusions
        # a colour's held-out shapes must include every shape the detector reads as one of them
        closed = [c for c in itertools.combinations(shapes, per_color)
                  if all(drawn in c for drawn, read in confusions.get("shape", ()) if read in c)]
        cap = -(-total // len(shapes))  # most colours per shape
        rng = np.random.default_rng([seed, 17])
        for _ in range(2000):
            count = dict.fromkeys(shapes, 0)
            pairs: list[tuple[str, str]] = []
            for color in (colors[int(i)] for i in rng.permutation(len(colors))):
                options = [closed[int(i)] for i in rng.permutation(len(closed))
                           if all(count[s] < cap for s in closed[int(i)])]
                if not options:
                    break
                pick = min(options, key=lambda c: sum(count[s] for s in c))  # the least used, ties at random
                for shape in pick:
                    count[shape] += 1
                    pairs.append((color, shape))
            split = cls(colors, shapes, motions, tuple(sorted(pairs, key=lambda p: (colors.index(p[0]),
                                                                                  shapes.index(p[1])))))
            if min(count.values()) >= 2 and len(pairs) == total and not split.reachable(confusions):
                return split
        raise ValueError("no split avoids the detector's confusions; hold out fewer pairs per colour")

    def is_heldout(self, color: str, shape: str) -> bool:
        return (color, shape) in set(self.heldout)

    def reachable(self, confusions: dict[str, tuple[tuple[str, str], ...]] | None = None
                  ) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        """(training pair, held-out pair) where the detector, confusing one attribute of the training pair
        (``confusions``: {"color" | "shape": (drawn, read as) pairs}), would read a training clip as a held-out
        pair. Empty for a split the eval cannot be flattered by."""
        confusions = DETECTOR_CONFUSIONS if confusions is None else confusions
        out = []
        for drawn, read in confusions.get("color", ()):
            out += [((drawn, s), (read, s)) for s in self.shapes
                    if self.is_heldout(read, s) and not self.is_heldout(drawn, s)]
        for drawn, read in confusions.get("shape", ()):
            out += [((c, drawn), (c, read)) for c in self.colors
                    if self.is_heldout(c, read) and not self.is_heldout(c, drawn)]
        return out

    def triples(self, heldout: bool) -> list[tuple[str, str, str]]:
        """Every (colour, shape, motion) of the seen (``heldout=False``) or held-out pairs."""
        return [(c, s, m) for c in self.colors for s in self.shapes for m in self.motions
                if self.is_heldout(c, s) == heldout]

    def to_dict(self) -> dict:
        return {"colors": list(self.colors), "shapes": list(self.shapes), "motions": list(self.motions),
                "heldout": [list(p) for p in self.heldout]}

    @classmethod
    def from_dict(cls, d: dict) -> ComboSplit:
        return cls(tuple(d["colors"]), tuple(d["shapes"]), tuple(d["motions"]),
                   tuple(tuple(p) for p in d["heldout"]))


# Prompt phrasings of the eval. Training captions use only "train" (``Shot.caption``); the others say the same
# colour, shape, motion and background in words no training caption contains, in another order, or with a clause
# that names nothing the detector reads.
PHRASINGS = ("train", "reordered", "synonyms", "distractor")
_COLOR_SYNONYM = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden", "purple": "violet",
                  "orange": "tangerine", "white": "snow-white", "cyan": "turquoise", "pink": "rose"}
_SHAPE_SYNONYM = {"circle": "disc", "square": "square tile", "triangle": "three-sided figure",
                  "star": "five-pointed star", "diamond": "rhombus", "hexagon": "six-sided figure"}
_MOTION_SYNONYM = {"left": "drifting leftward", "right": "sliding rightward", "up": "drifting upward",
                   "down": "sinking downward", "rotate": "spinning in place", "grow": "swelling in size"}
_BACKGROUND_SYNONYM = {"noise": "blotchy", "gradient": "fading", "checker": "checkerboard"}


def phrase(shot: Shot, phrasing: str = "train") -> str:
    """The shot's caption in one of ``PHRASINGS``: "train" is ``shot.caption`` ("a red circle moves left over a
    blue checkered background"); "reordered" puts the background first ("over a blue checkered background, a red
    circle moves left"); "synonyms" ("a crimson disc drifting leftward across an azure checkerboard backdrop");
    "distractor" adds a clause naming no colour, shape or direction ("a red circle moves left over a blue
    checkered background, filmed in an empty studio on a quiet afternoon")."""
    if phrasing == "train":
        return shot.caption
    background = (f"{_article(shot.bg_color)} {shot.bg_color} {_BACKGROUND_PHRASE[shot.background]} background")
    subject = f"{_article(shot.color)} {shot.color} {shot.shape} {_MOTION_PHRASE[shot.motion]}"
    if phrasing == "reordered":
        return f"over {background}, {subject}"
    if phrasing == "synonyms":
        color, bg = _COLOR_SYNONYM[shot.color], _COLOR_SYNONYM[shot.bg_color]
        return (f"{_article(color)} {color} {_SHAPE_SYNONYM[shot.shape]} {_MOTION_SYNONYM[shot.motion]} across "
                f"{_article(bg)} {bg} {_BACKGROUND_SYNONYM[shot.background]} backdrop")
    if phrasing == "distractor":
        return f"{shot.caption}, filmed in an empty studio on a quiet afternoon"
    raise ValueError(f"phrasing {phrasing!r} is not one of {PHRASINGS}")


_CAPTION_PAIR = re.compile(r"^an? (\w+) (\w+) ")


def caption_pair(caption: str | None) -> tuple[str, str] | None:
    """The (colour, shape) a training caption (``Shot.caption``: "a red circle moves left over ...") names, or None
    for any other text (a user's own footage, an empty caption)."""
    m = _CAPTION_PAIR.match(caption or "")
    if not m or m.group(1) not in COLORS or m.group(2) not in SHAPES:
        return None
    return m.group(1), m.group(2)


def random_shot(rng: np.random.Generator, triple: tuple[str, str, str], num_frames: int) -> Shot:
    """A shot of a (colour, shape, motion) triple over a random texture whose colour differs from the shape's."""
    color, shape, motion = triple
    bg_color = str(rng.choice([c for c in COLORS if c != color]))
    return Shot(shape, color, motion, str(rng.choice(BACKGROUNDS)), bg_color, num_frames)


def render_clip(shot: Shot, size: tuple[int, int] = (128, 128), seed: int = 0) -> np.ndarray:
    """The ``shot.num_frames`` clean frames of one shot as uint8 (T, H, W, 3): a training clip without a cut."""
    painter = _ShotPainter(shot, size, np.random.default_rng(seed))
    return np.stack([painter.frame(t) for t in range(shot.num_frames)])


def eval_prompts(split: ComboSplit, per_triple: int = 1, seed: int = 0, heldout_repeat: int = 1, seeds: int = 4,
                 phrasings: tuple[str, ...] = PHRASINGS, seen_motions: int = 0,
                 seen_pairs: Collection[tuple[str, str]] | None = None) -> list[dict]:
    """Prompts of the eval. Every held-out triple and the seen triples (all of them, or with ``seen_motions`` > 0
    that many motions per seen pair, taken in turn so each motion is asked equally often) get ``per_triple``
    shots (random textures; held-out triples ``heldout_repeat`` times as many); every shot is asked in each of
    ``phrasings`` with ``seeds`` generation seeds. A row: the prompt text, its ``phrasing``, the attributes, a
    ``heldout`` flag, ``shot`` (an id shared by the shot's phrasings and seeds), ``seed_index`` (0 .. seeds - 1)
    and ``seed`` (the generation noise, and the render of the same shot that validates the detector).
    ``seen_pairs``: the colour-shape pairs the training clips actually showed; the seen group is then only those
    of the split's seen pairs (a small corpus shows few of them: a pair training may show but did not is no test
    of memory). The held-out rows do not depend on it. Deterministic from ``seed``; the seen rows do not depend
    on ``heldout_repeat``."""
    if seeds < 1 or not phrasings:
        raise ValueError("need at least one seed and one phrasing")
    for p in phrasings:
        if p not in PHRASINGS:
            raise ValueError(f"phrasing {p!r} is not one of {PHRASINGS}")
    rng = np.random.default_rng([seed, 29])
    shown = None if seen_pairs is None else {tuple(p) for p in seen_pairs}
    out, shot_id = [], 0
    for heldout in (False, True):
        triples = split.triples(heldout)
        if not heldout and seen_motions:
            pairs = sorted({(c, s) for c, s, _ in triples}, key=lambda p: (split.colors.index(p[0]),
                                                                          split.shapes.index(p[1])))
            triples = [(c, s, split.motions[(i + k) % len(split.motions)])
                       for i, (c, s) in enumerate(pairs) for k in range(min(seen_motions, len(split.motions)))]
        for triple in triples:
            for _ in range(per_triple * (heldout_repeat if heldout else 1)):
                shot = random_shot(rng, triple, 17)
                noise = [int(v) for v in rng.integers(1 << 30, size=seeds)]
                if not heldout and shown is not None and triple[:2] not in shown:
                    continue  # drawn all the same, so every other row stays what it is without seen_pairs
                for phrasing in phrasings:
                    for k, value in enumerate(noise):
                        out.append({"prompt": phrase(shot, phrasing), "phrasing": phrasing, "color": shot.color,
                                    "shape": shot.shape, "motion": shot.motion, "background": shot.background,
                                    "bg_color": shot.bg_color, "heldout": heldout, "shot": shot_id,
                                    "seed_index": k, "seed": value})
                shot_id += 1
    return out


def prompt_shot(p: dict, num_frames: int = 17) -> Shot:
    """The shot an ``eval_prompts`` entry describes (its ground-truth render is ``render_clip(shot, seed=p["seed"])``)."""
    return Shot(p["shape"], p["color"], p["motion"], p["background"], p["bg_color"], num_frames)
