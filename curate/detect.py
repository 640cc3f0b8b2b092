"""Name the colour, shape and motion of the one shape in a short synthetic-style clip.

Used by the text-faithfulness eval: a text-to-video model renders a clip for a prompt such as
"a red star moves left over a blue checkered background" and :func:`detect` says, deterministically and with
numpy + OpenCV only, which colour, shape and motion direction the clip shows.

How it works (one clip, uint8 ``(T, H, W, 3)``):

1. **Background direction.** Every background pixel of :mod:`curate.synth` is one palette colour scaled by a
   brightness (35%-100%), so it lies on a line through black in RGB space. Border pixels (a thin frame ring, all
   frames) are labelled with the nearest of the 9 palette colours by cosine similarity; the most common label is
   the background colour, and the mean unit vector of the border pixels with that label is the *measured*
   background direction (so a model's colour drift does not matter).
2. **Foreground.** A pixel's distance from that line (the RGB component perpendicular to the direction) is a few
   units for background, even at 35% brightness, and >= 78 for any palette colour other than the background's
   (closest pair: red or yellow on orange). Pixels farther than a threshold are foreground; the threshold adapts
   to how noisy the border is (``fg_noise_mult`` x its 90th percentile, clipped to ``fg_min_dist`` ..
   ``fg_max_dist``). A clip whose border is not explained by one line (noise, a scene) has no shape.
3. **Shape mask.** Per frame: a morphological opening removes speckle, the largest connected component is the
   shape and its holes are filled. Frames whose component is too small or too large (``min_area`` /
   ``max_area``) are dropped; fewer than ``min_valid_frames`` usable frames means no shape.
4. **Colour.** Median RGB of each mask's purest pixels (the 30% farthest from the background line, so free of
   edge blends), median over frames, named by cosine similarity among ``cfg.colors`` (default: all 9 palette
   colours; grey and white are both "white"). ``details["palette_color"]`` is the nearest of all 9 regardless.
5. **Shape.** Silhouette features of the outer contour, medians over frames (frames touching the border are
   skipped when others exist): solidity = area / convex-hull area (star ~0.55 clean, everything else ~1),
   roundness = area / smallest-enclosing-circle area (circle 1, hexagon 0.83, square and diamond 0.64, triangle
   0.41; rotation-invariant), upright fill = area / axis-aligned bounding-box area (square 1, diamond 0.5) and
   the turn of the minimum-area rectangle over the frames; extent (over that rectangle) and circularity are
   reported, not used. Star if solidity < ``star_solidity``, else circle / hexagon / square-or-diamond /
   triangle by roundness cut-offs; a square-or-diamond that turns over the clip is None (the renderer starts a
   rotating shape at a random angle, so a turning square and a turning diamond are the same clips), a still
   one is a square if upright, else a diamond. Every shape and colour the corpus draws is an answer, so no
   drawn shape is scored as a neighbour (a hexagon as a circle). Silhouettes are
   re-traced at sub-pixel precision: the 0.5 iso-line of a "fraction of shape colour" map (a matched filter:
   the pixel's RGB component perpendicular to the background line, projected on the shape colour's),
   smoothed according to the measured noise, upsampled to ~``trace_height`` px.
6. **Motion.** Theil-Sen slope (median of pairwise slopes, robust to bad frames and to the border clipping of
   the renderer) of the centroid track, times ``T - 1``, as fractions of W and H. The answer is the candidate
   direction with the largest projection, if that projection is at least ``min_displacement``; otherwise None.

Limits: one shape per clip (the largest foreground blob wins); the background must be one hue at varying
brightness (a multi-coloured background fails step 1 and gives no shape); shapes are told apart
by silhouette only; ``rotate`` and ``grow`` are not detected (a :class:`DetectConfig` listing them is refused);
a turning square or diamond has no shape answer; a shape whose colour is on the background's colour line (e.g.
a grey shape on white) is invisible to step 2. Below 64 px circles and hexagons are not told apart.

Measured (:func:`validate` with every colour, shape and motion of the corpus, ``motions=synth.MOTIONS``): at 64
px, 400 :func:`degrade`-d clips (17 frames) and 108 clean + 108 degraded ones (9 frames, ``tests/test_synth.py``),
colour and motion 1.0 and no shape read as another (shape 0.96: turning squares and diamonds, None); at 128
px, 300 degraded clips, one square read as a diamond (``synth.DETECTOR_CONFUSIONS``). At 32 px (clean, 9
frames) circles read as hexagons (45 of ~50).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from curate import synth

_DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                               "down": (0.0, 1.0)}
_ROUNDNESS_PROTOTYPES: dict[str, float] = {"circle": 1.0, "hexagon": 3 * math.sqrt(3) / (2 * math.pi),
                                             "square": 2 / math.pi, "diamond": 2 / math.pi,
                                             "triangle": 3 * math.sqrt(3) / (4 * math.pi)}
"""Area over the area of the smallest enclosing circle of the solid shapes (exact, continuous): 1, 0.827, 0.637,
0.637, 0.413. A square and a diamond are the same silhouette turned by 45 degrees; they differ only by orientation."""


@dataclass(frozen=True)
class DetectConfig:
    """Candidate answers and thresholds of :func:`detect` (defaults measured on synth renders, clean and blurred)."""

    colors: tuple[str, ...] = tuple(synth.COLORS)
    """Candidate shape colours (names of ``synth.COLORS``; default all of them); the answer is the nearest."""
    shapes: tuple[str, ...] = synth.SHAPES
    """Candidate shapes, a subset of ``synth.SHAPES`` (default all of them)."""
    motions: tuple[str, ...] = synth.EVAL_MOTIONS
    """Candidate motions, a subset of left / right / up / down."""
    border_frac: float = 0.04
    """Width of the border ring that defines the background, as a fraction of min(H, W) (at least 2 px)."""
    min_bright: float = 20.0
    """RGB norm under which a border pixel is too dark for its direction to be trusted."""
    fg_min_dist: float = 28.0
    """Smallest foreground threshold: RGB distance from the background colour line."""
    fg_max_dist: float = 55.0
    """Largest foreground threshold (palette colours sit >= 78 from any other colour's line)."""
    fg_noise_mult: float = 2.5
    """Foreground threshold = this x the 90th percentile of border distances (clipped as above)."""
    min_border_fit: float = 0.8
    """Share of border pixels the background line must explain; fewer means no shape (not a clean background)."""
    min_area: float = 0.006
    """Smallest shape component, as a share of the frame (the renderer's smallest shape is ~0.03)."""
    max_area: float = 0.4
    """Largest shape component, as a share of the frame (the renderer's largest is ~0.13)."""
    min_valid_frames: float = 0.5
    """Share of frames that must hold a plausible shape component."""
    min_color_cos: float = 0.9
    """Cosine similarity the shape colour needs to its nearest candidate; lower gives color None."""
    trace_height: int = 256
    """Silhouettes are re-traced on the shape-fraction map upsampled to about this many pixels (``_fine_mask``)."""
    star_solidity: float = 0.9
    """Solidity below which the silhouette is a star (measured: stars <= 0.88 even blurred at 32 px, everything
    else >= 0.92)."""
    circle_roundness: float = 0.895
    """Roundness (area / smallest enclosing circle's area) at or above which a solid silhouette is a circle.
    Measured per frame on renders, clean and :func:`degrade`-d, turning or not: circles >= 0.91 at 64-128 px
    (>= 0.87 at 32 px), hexagons <= 0.873 at 64-128 px (<= 0.898 at 32 px)."""
    hexagon_roundness: float = 0.76
    """Roundness at or above which a solid, non-circle silhouette is a hexagon (hexagons >= 0.79, squares and
    diamonds <= 0.73 at 64-128 px, <= 0.83 at 32 px)."""
    triangle_roundness: float = 0.57
    """Roundness below which a solid silhouette is a triangle (triangles <= 0.51 at 64-128 px, <= 0.63 at 32 px;
    squares and diamonds >= 0.63)."""
    upright_fill: float = 0.75
    """A still square-or-diamond is upright (a square) when it fills at least this share of its axis-aligned
    bounding box, median over frames (still squares >= 0.89, still diamonds <= 0.63; exact: 1 and 0.5)."""
    max_turn_spread: float = 0.1
    """A square-or-diamond whose orientation varies over the clip (1 - the mean resultant length of 4 x the
    minimum-area rectangle's angle, over frames) by more than this is turning and answers None: a turning square
    is a turning diamond (the renderer starts both at a random angle). Measured: <= 0.01 still, >= 0.5 turning."""
    min_displacement: float = 0.04
    """Smallest centroid displacement along a candidate direction (fraction of W or H) that counts as motion."""

    def __post_init__(self) -> None:
        for c in self.colors:
            if c not in synth.COLORS:
                raise ValueError(f"unknown colour {c!r}")
        for s in self.shapes:
            if s not in synth.SHAPES:
                raise ValueError(f"shape {s!r} is not detectable ({', '.join(synth.SHAPES)})")
        for m in self.motions:
            if m not in _DIRECTIONS:
                raise ValueError(f"motion {m!r} is not detectable (left, right, up, down)")


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` saw. ``color``/``shape``/``motion`` are None when not determined."""

    color: str | None
    shape: str | None
    motion: str | None
    area_frac: float
    """Median share of the frame covered by the detected shape (0 when none)."""
    displacement: tuple[float, float]
    """(dx, dy) of the centroid over the clip, as fractions of W and H (Theil-Sen fit)."""
    details: dict = field(default_factory=dict)
    """Features used (background, threshold, per-frame medians of solidity / extent / circularity, ...)."""


# ------------------------------------------------------------------------------------------ colours

_PALETTE_NAMES: tuple[str, ...] = tuple(synth.COLORS)


def _unit_vectors(names: tuple[str, ...]) -> np.ndarray:
    vecs = np.array([synth.COLORS[n] for n in names], np.float64)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


_PALETTE_UNITS = _unit_vectors(_PALETTE_NAMES)


def _nearest_color(rgb: np.ndarray, names: tuple[str, ...]) -> tuple[str, float]:
    """Name in ``names`` whose direction is closest (cosine) to ``rgb``, and that cosine."""
    norm = float(np.linalg.norm(rgb))
    if norm < 1e-6:
        return names[0], 0.0
    cos = _unit_vectors(names) @ (np.asarray(rgb, np.float64) / norm)
    best = int(np.argmax(cos))
    return names[best], float(cos[best])


def _border_pixels(frames: np.ndarray, width: int) -> np.ndarray:
    """(N, 3) float pixels of the border ring of every frame."""
    ring = np.zeros(frames.shape[1:3], bool)
    ring[:width, :] = ring[-width:, :] = True
    ring[:, :width] = ring[:, -width:] = True
    return frames[:, ring].reshape(-1, 3).astype(np.float64)


def _background_direction(border: np.ndarray, min_bright: float) -> tuple[str, np.ndarray] | None:
    """Most common palette label of the bright-enough border pixels and their mean unit vector."""
    norms = np.linalg.norm(border, axis=1)
    bright = border[norms >= min_bright] / norms[norms >= min_bright, None]
    if len(bright) == 0:
        return None
    labels = np.argmax(bright @ _PALETTE_UNITS.T, axis=1)
    label = int(np.bincount(labels, minlength=len(_PALETTE_NAMES)).argmax())
    mean = bright[labels == label].mean(axis=0)
    return _PALETTE_NAMES[label], mean / np.linalg.norm(mean)


def _line_distance(pixels: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """RGB distance of every pixel from the line through black along ``unit`` (last axis = RGB)."""
    p = pixels.astype(np.float32)
    proj = p @ unit.astype(np.float32)
    return np.sqrt(np.maximum(np.sum(p * p, axis=-1) - proj * proj, 0.0))


# ------------------------------------------------------------------------------------------- masks


def _largest_component(fg: np.ndarray, kernel: np.ndarray) -> np.ndarray | None:
    """Largest 8-connected component of the opened mask ``fg`` (uint8 0/1), holes filled; None if empty."""
    opened = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (labels == best).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(comp)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def _fine_mask(frac: np.ndarray, mask: np.ndarray, factor: int, sigma: float) -> np.ndarray:
    """The component ``mask`` re-traced at ``factor`` x resolution on ``frac``, the per-pixel fraction of
    shape colour (0 background, 1 shape): its padded bounding box is smoothed (``sigma`` px), bilinearly
    upsampled and cut at 0.5; largest component, holes filled.

    At 64 px a triangle is 15 px tall and a pixel staircase moves its features a lot; the 0.5 iso-line of the
    interpolated fraction places the edge to a fraction of a pixel instead, where a blurred edge is half-way."""
    ys, xs = np.nonzero(mask)
    pad = 3
    y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, mask.shape[0])
    x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, mask.shape[1])
    box = mask[y0:y1, x0:x1]
    near = cv2.dilate(box, np.ones((5, 5), np.uint8))
    crop = frac[y0:y1, x0:x1].astype(np.float32)
    # Re-level to the local background (0) and shape interior (1): offsets and brightness drift move both.
    core = cv2.erode(box, np.ones((3, 3), np.uint8))
    lo = float(np.median(crop[near == 0])) if (near == 0).any() else 0.0
    hi = float(np.median(crop[(core if core.any() else box) > 0]))
    if hi - lo > 0.2:
        crop = (crop - lo) / (hi - lo)
    crop = np.where(near > 0, crop, 0.0).astype(np.float32)
    crop = cv2.GaussianBlur(crop, (0, 0), sigma)
    size = ((x1 - x0) * factor, (y1 - y0) * factor)
    fine = (cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fine, connectivity=8)
    if count < 2:
        return mask[y0:y1, x0:x1]
    fine = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    contours, _ = cv2.findContours(fine, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(fine)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out


def _shape_fraction_weights(shape_rgb: np.ndarray, bg_unit: np.ndarray) -> np.ndarray | None:
    """w such that ``pixel @ w`` is the fraction of shape colour in a blend of shape and (any brightness of)
    background: the perpendicular-to-background part of a blend is linear in the blend, so projecting on the
    shape colour's perpendicular part and dividing by its length is a matched filter (noise stays zero-mean)."""
    perp = shape_rgb - (shape_rgb @ bg_unit) * bg_unit
    norm = float(np.linalg.norm(perp))
    return None if norm < 1e-6 else perp / (norm * norm)


def _silhouette_features(mask: np.ndarray) -> dict[str, float] | None:
    """Solidity, extent (over the minimum-area rectangle), roundness (over the smallest enclosing circle),
    upright fill (over the axis-aligned bounding box) and circularity of the mask's outer contour."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(contour))
    if area <= 0:
        return None
    hull_area = float(cv2.contourArea(cv2.convexHull(contour)))
    (_, _), (rw, rh), angle = cv2.minAreaRect(contour)
    perimeter = float(cv2.arcLength(contour, True))
    (_, _), radius = cv2.minEnclosingCircle(contour)
    _, _, bw, bh = cv2.boundingRect(contour)
    return {
        "solidity": min(area / max(hull_area, 1e-9), 1.0),
        "extent": min(area / max(rw * rh, 1e-9), 1.0),
        "roundness": min(area / max(math.pi * radius * radius, 1e-9), 1.0),
        "upright": min(area / max(bw * bh, 1e-9), 1.0),
        "angle": math.radians(angle),
        "circularity": 4 * math.pi * area / max(perimeter * perimeter, 1e-9),
    }


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


# ----------------------------------------------------------------------------------- classification


def _turn_spread(angles: list[float]) -> float:
    """1 - mean resultant length of 4 x the angles: 0 when a square's orientation (mod 90 degrees) never changes,
    near 1 when it turns through a quarter turn or more."""
    if len(angles) < 2:
        return 0.0
    z = np.exp(4j * np.asarray(angles))
    return float(1.0 - abs(z.mean()))


def _classify_shape(feats: dict[str, float], cfg: DetectConfig) -> str | None:
    """Star by solidity; then circle / hexagon / square-or-diamond / triangle by roundness; a square-or-diamond
    by its orientation (``upright``: axis-aligned fill), None when it turns (``turn_spread``, see
    :class:`DetectConfig`). The nearest allowed one by roundness if the rule's answer is not a candidate."""
    if feats["solidity"] < cfg.star_solidity:
        rule = "star"
    elif feats["roundness"] >= cfg.circle_roundness:
        rule = "circle"
    elif feats["roundness"] >= cfg.hexagon_roundness:
        rule = "hexagon"
    elif feats["roundness"] < cfg.triangle_roundness:
        rule = "triangle"
    elif feats["turn_spread"] > cfg.max_turn_spread:
        return None
    else:
        rule = "square" if feats["upright"] >= cfg.upright_fill else "diamond"
    if rule in cfg.shapes:
        return rule
    solid = [s for s in cfg.shapes if s in _ROUNDNESS_PROTOTYPES]
    if rule == "star" or not solid:
        return None
    return min(solid, key=lambda s: abs(feats["roundness"] - _ROUNDNESS_PROTOTYPES[s]))


def _theil_sen(t: np.ndarray, v: np.ndarray) -> float:
    """Median of the pairwise slopes of v over t."""
    i, j = np.triu_indices(len(t), k=1)
    return float(np.median((v[j] - v[i]) / (t[j] - t[i])))


def _classify_motion(disp: tuple[float, float], cfg: DetectConfig) -> str | None:
    if not cfg.motions:
        return None
    proj = {m: disp[0] * _DIRECTIONS[m][0] + disp[1] * _DIRECTIONS[m][1] for m in cfg.motions}
    best = max(cfg.motions, key=lambda m: proj[m])  # ties: first in cfg.motions
    return best if proj[best] >= cfg.min_displacement else None


def _none(details: dict) -> Detection:
    return Detection(None, None, None, 0.0, (0.0, 0.0), details)


# -------------------------------------------------------------------------------------------- detect


def detect(frames: np.ndarray, cfg: DetectConfig = DetectConfig()) -> Detection:
    """uint8 (T, H, W, 3) -> Detection. Deterministic, numpy + OpenCV only (see the module docstring)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {frames.shape}")
    frames = frames.astype(np.uint8, copy=False)
    t_len, h, w, _ = frames.shape
    details: dict = {"frames": t_len}

    # 1. background colour line from the border ring
    border = _border_pixels(frames, max(2, int(round(cfg.border_frac * min(h, w)))))
    bg = _background_direction(border, cfg.min_bright)
    if bg is None:
        details["reason"] = "dark border"
        return _none(details)
    bg_name, bg_unit = bg
    border_dist = _line_distance(border, bg_unit)
    thr = float(np.clip(cfg.fg_noise_mult * np.percentile(border_dist, 90), cfg.fg_min_dist, cfg.fg_max_dist))
    fit = float(np.mean(border_dist < thr))
    details.update(bg_color=bg_name, fg_threshold=thr, border_fit=fit)
    if fit < cfg.min_border_fit:
        details["reason"] = "border is not one background colour"
        return _none(details)

    # 2-3. foreground masks
    dist = _line_distance(frames, bg_unit)
    fg = (dist > thr).astype(np.uint8)
    # A square kernel: opening with it keeps a square's corners (a 3x3 "ellipse" is a cross and chips them).
    kernel = np.ones((3, 3), np.uint8)
    masks: list[tuple[int, np.ndarray]] = []
    for i in range(t_len):
        mask = _largest_component(fg[i], kernel)
        if mask is not None and cfg.min_area <= mask.mean() <= cfg.max_area:
            masks.append((i, mask))
    details["valid_frames"] = len(masks)
    if len(masks) < max(1, math.ceil(cfg.min_valid_frames * t_len)):
        details["reason"] = "no plausible shape component"
        return _none(details)
    area = float(np.median([m.mean() for _, m in masks]))

    # 4. colour from interior pixels
    shape_rgb = _shape_rgb(frames, dist, masks)
    color, palette_color, cos = _name_color(shape_rgb, cfg)
    details.update(shape_rgb=tuple(round(float(c), 1) for c in shape_rgb), palette_color=palette_color,
                   color_cos=cos)

    # 5. shape from silhouettes (frames clear of the border first), traced on the shape-fraction map
    weights = _shape_fraction_weights(shape_rgb, bg_unit)
    if weights is None:
        details["reason"] = "shape colour on the background line"
        return _none(details)
    border_frac = border @ weights
    noise = 1.4826 * float(np.median(np.abs(border_frac - np.median(border_frac))))
    # Gaussian smoothing divides white noise by ~2 sqrt(pi) sigma: aim at a residual of 0.05.
    sigma = float(np.clip(noise / (2 * math.sqrt(math.pi) * 0.05), 0.5, 1.5))
    factor = max(1, int(math.ceil(cfg.trace_height / min(h, w))))
    inner = [(i, m) for i, m in masks if not _touches_border(m)] or masks
    feats = []
    for i, m in inner:
        frac = frames[i].astype(np.float32) @ weights.astype(np.float32)
        f = _silhouette_features(_fine_mask(frac, m, factor, sigma))
        if f is not None:
            feats.append(f)
    if not feats:
        details["reason"] = "no silhouette"
        return _none(details)
    med = {key: float(np.median([f[key] for f in feats]))
           for key in ("solidity", "extent", "roundness", "upright", "circularity")}
    med["turn_spread"] = _turn_spread([f["angle"] for f in feats])
    details.update(med, trace_sigma=sigma)
    shape = _classify_shape(med, cfg)

    # 6. motion from the centroid track
    disp = _displacement(masks, (w, h), t_len)
    motion = _classify_motion(disp, cfg)
    return Detection(color, shape, motion, area, disp, details)


def _shape_rgb(frames: np.ndarray, dist: np.ndarray, masks: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Median over frames of the median RGB of each mask's purest pixels: the 30% farthest from the background
    line (a blurred small shape has few pixels free of background blend, and these are they)."""
    per_frame = []
    for i, mask in masks:
        inside = mask.astype(bool)
        d = dist[i][inside]
        pure = frames[i][inside][d >= np.percentile(d, 70)]
        per_frame.append(np.median(pure.astype(np.float64), axis=0))
    return np.median(np.array(per_frame), axis=0)


def _name_color(rgb: np.ndarray, cfg: DetectConfig) -> tuple[str | None, str, float]:
    """(answer among cfg.colors or None, nearest of all 9 palette colours, cosine of the answer)."""
    palette_color, _ = _nearest_color(rgb, _PALETTE_NAMES)
    if not cfg.colors:
        return None, palette_color, 0.0
    color, cos = _nearest_color(rgb, cfg.colors)
    return (color if cos >= cfg.min_color_cos else None), palette_color, cos


def _displacement(masks: list[tuple[int, np.ndarray]], size: tuple[int, int], t_len: int) -> tuple[float, float]:
    """Theil-Sen centroid slope times ``t_len - 1``: displacement over the clip as fractions of (W, H)."""
    if len(masks) < 2:
        return 0.0, 0.0
    w, h = size
    t = np.array([i for i, _ in masks], np.float64)
    cents = []
    for _, mask in masks:
        m = cv2.moments(mask, binaryImage=True)
        cents.append((m["m10"] / m["m00"], m["m01"] / m["m00"]))
    c = np.array(cents)
    span = float(t_len - 1)
    return _theil_sen(t, c[:, 0]) * span / w, _theil_sen(t, c[:, 1]) * span / h


# --------------------------------------------------------------------------------------- evaluation


def score(det: Detection, truth: dict) -> dict[str, bool]:
    """{"color", "shape", "motion"} -> whether ``det`` matches ``truth`` (a dict with those keys)."""
    return {key: getattr(det, key) is not None and getattr(det, key) == truth[key]
            for key in ("color", "shape", "motion")}


def degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stand-in for a VAE decode: Gaussian blur (sigma 1.5 px at 128 px height, scaled with it, >= 0.7),
    per-pixel Gaussian noise (sigma 6), and a per-clip colour shift (channel gains 0.92-1.08, offsets +-10)."""
    t_len, h, w, _ = frames.shape
    sigma = max(0.7, 1.5 * h / 128)
    gain = rng.uniform(0.92, 1.08, size=3)
    offset = rng.uniform(-10, 10, size=3)
    out = np.empty(frames.shape, np.float32)
    for i in range(t_len):
        out[i] = cv2.GaussianBlur(frames[i].astype(np.float32), (0, 0), sigma)
    out = out * gain + offset + rng.normal(0.0, 6.0, size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def validate(n: int = 96, size: tuple[int, int] = (128, 128), frames: int = 17, seed: int = 0,
             degrade: bool = False, cfg: DetectConfig = DetectConfig(),
             motions: tuple[str, ...] | None = None) -> dict:
    """Detector accuracy on ``n`` renders of random (colour, shape, motion) triples of ``cfg``'s vocabulary over
    random backgrounds (``synth.random_shot`` + ``synth.render_clip``), optionally degraded (:func:`degrade`).
    ``motions`` are the motions drawn (default ``cfg.motions``; ``synth.MOTIONS`` is the training corpus's whole
    distribution): a motion the detector does not read ("rotate", "grow") is drawn but not scored, and such a
    clip's "all" is colour and shape.

    Returns {"n", "accuracy": {"color", "shape", "motion", "all"}, "confusion": {attr: {truth: {answer: count}}},
    "errors": [first 20 misses with truth and answer]}; "motion" is over the clips whose motion is scored.
    Deterministic from ``seed``."""
    rng = np.random.default_rng([seed, 41])
    motions = tuple(motions or cfg.motions)
    hits: Counter = Counter()
    confusion: dict[str, dict[str, Counter]] = {k: {} for k in ("color", "shape", "motion")}
    errors, scored_motion = [], 0
    for _ in range(n):
        triple = (str(rng.choice(cfg.colors)), str(rng.choice(cfg.shapes)), str(rng.choice(motions)))
        shot = synth.random_shot(rng, triple, frames)
        clip = synth.render_clip(shot, size=size, seed=int(rng.integers(1 << 30)))
        if degrade:
            clip = _degrade_frames(clip, rng)
        det = detect(clip, cfg)
        truth = {"color": shot.color, "shape": shot.shape, "motion": shot.motion}
        ok = score(det, truth)
        if shot.motion not in cfg.motions:
            ok.pop("motion")
        else:
            scored_motion += 1
        hits.update(k for k, v in ok.items() if v)
        hits["all"] += all(ok.values())
        for key in ("color", "shape", "motion"):
            confusion[key].setdefault(truth[key], Counter())[str(getattr(det, key))] += 1
        if not all(ok.values()) and len(errors) < 20:
            errors.append({"truth": {**truth, "background": shot.background, "bg_color": shot.bg_color},
                           "answer": {k: getattr(det, k) for k in truth}, "details": det.details})
    return {
        "n": n,
        "accuracy": {"color": hits["color"] / max(n, 1), "shape": hits["shape"] / max(n, 1),
                     "motion": hits["motion"] / max(scored_motion, 1), "all": hits["all"] / max(n, 1)},
        "confusion": {k: {t: dict(c) for t, c in v.items()} for k, v in confusion.items()},
        "errors": errors,
    }


def confusions(*results: dict) -> dict[str, set[tuple[str, str]]]:
    """``{"color", "shape": {(truth, answer), ...}}``: every wrong, non-None answer any of the :func:`validate`
    results recorded, as (what was drawn, what it was read as). None is not a confusion: it names nothing."""
    out: dict[str, set[tuple[str, str]]] = {"color": set(), "shape": set()}
    for result in results:
        for attr in out:
            for truth, answers in result["confusion"][attr].items():
                out[attr] |= {(truth, a) for a, c in answers.items() if c and a not in (truth, "None")}
    return out


_degrade_frames = degrade  # ``validate`` has a parameter of the same name
