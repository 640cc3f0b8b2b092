"""Two pictures side by side: the split-screen models of wipes and slides, and the clip purity guard's tests.

A wipe shows frame ``A`` on one side of a straight edge and frame ``B`` on the other, the edge moving across the
picture; a slide (push) shows ``B`` pushing ``A`` out, both moving. ``split_model`` builds every such picture at
every edge offset of a thumbnail; ``wipe_errors`` gives the same errors for the four wipes from running sums. The
scene detector (``curate.scenes``) uses both to recognise wipes and slides; the purity guard (``SceneConfig.guard``)
uses the looser tests below (``edge_may_fit`` / ``still_edge_fit`` for wipes, ``seams`` / ``seam_fits`` /
``slide_fit`` for slides) to mark suspect spans inside a scene, which clips then keep clear of. All work on the
detector's YUV thumbnails, float32 ``(H, W, 3)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from curate.scenes import SceneConfig

SPLIT_MODELS = (  # (name, is a slide, edge moves along the columns)
    ("wipe right", False, True), ("wipe left", False, True), ("wipe down", False, False), ("wipe up", False, False),
    ("push left", True, True), ("push right", True, True), ("push up", True, False), ("push down", True, False))


def median(x: np.ndarray) -> np.floating:
    """``np.median`` of a finite float array (all of it) without its generic machinery (~4x cheaper on the short
    arrays here): the middle value, or the float mean of the two middle values, as ``np.median`` computes them."""
    flat = x.ravel()
    k = flat.size // 2
    if flat.size % 2:
        return np.partition(flat, k)[k]
    return np.partition(flat, (k - 1, k))[k - 1: k + 1].mean()


def split_model(A: np.ndarray, B: np.ndarray, m: int) -> np.ndarray:
    """(offsets, H, W, 3) pictures of ``A`` and ``B`` side by side for model ``m`` of ``SPLIT_MODELS``: wipes (both
    still) and slides (both moving) in the four directions, the edge at every thumbnail column (row) offset."""
    h, w = A.shape[:2]
    if m == 0:
        return np.stack([np.concatenate([B[:, :o], A[:, o:]], axis=1) for o in range(w + 1)])
    if m == 1:
        return np.stack([np.concatenate([A[:, : w - o], B[:, w - o:]], axis=1) for o in range(w + 1)])
    if m == 2:
        return np.stack([np.concatenate([B[:o], A[o:]], axis=0) for o in range(h + 1)])
    if m == 3:
        return np.stack([np.concatenate([A[: h - o], B[h - o:]], axis=0) for o in range(h + 1)])
    # slides: windows sliding over the two pictures side by side, [A B] (push left: A[:, o:] then B[:, :o]), [B A]
    # (push right: B[:, w - o:] then A[:, :w - o]), and the same along the rows (push up, push down)
    axis = 1 if m in (4, 5) else 0
    n = A.shape[axis]
    both = np.concatenate([A, B] if m in (4, 6) else [B, A], axis=axis)
    offsets = np.arange(n + 1) if m in (4, 6) else n - np.arange(n + 1)
    out = np.take(both, offsets[:, None] + np.arange(n)[None, :], axis=axis)
    return out.transpose(1, 0, 2, 3) if axis == 1 else out


def band_means(x: np.ndarray, along_columns: bool) -> np.ndarray:
    """Means of ``(..., H, W, 3)`` float32 pictures over bands of a third of the rows (``along_columns``) or a quarter
    of the columns (an area resize of the pictures stacked). For a model whose edge moves along the columns (rows),
    the mean |band mean of a frame - band mean of the model| is a lower bound of the mean |frame - model| (``|sum|
    <= sum of ||``), and ``split_model`` of the band means of ``A`` and ``B`` gives the band means of its pictures: a
    bound at a 6th (8th) of the cost."""
    h, w = x.shape[-3:-1]
    flat = np.ascontiguousarray(x).reshape(-1, w, 3)
    n = len(flat) // h
    if along_columns:
        return cv2.resize(flat, (w, 3 * n), interpolation=cv2.INTER_AREA).reshape(x.shape[:-3] + (3, w, 3))
    return cv2.resize(flat, (4, len(flat)), interpolation=cv2.INTER_AREA).reshape(x.shape[:-3] + (h, 4, 3))


def push_may_fit(banded: tuple[np.ndarray, np.ndarray, np.ndarray], m: int, limit: float) -> bool:
    """False when some frame's error against slide model ``m`` is over ``limit`` at every edge offset, from the
    lower bound of ``band_means``: ``banded`` is the band means of ``A``, ``B`` and the frames in between. The bound
    rounds apart from the pictures' error by far less than a 10^4th, so it rules out only what is over that margin:
    a model it keeps is decided on the pictures."""
    pa, pb, pm = banded
    over = limit * (1 + 1e-4)
    model = np.ascontiguousarray(split_model(pa, pb, m))
    # three frames first (a quarter, half and three quarters in): 9 in 10 windows that fail, fail there
    k = len(pm)
    probes = pm[[k // 2, k // 4, 3 * k // 4]]
    if float(np.abs(probes[:, None] - model[None]).mean(axis=(2, 3, 4)).min(axis=1).max()) > over:
        return False
    bound = np.abs(pm[:, None] - model[None]).mean(axis=(2, 3, 4))
    return float(bound.min(axis=1).max()) <= over


def wipe_errors(mids: np.ndarray, A: np.ndarray, B: np.ndarray, band: float = 0.0) -> list[np.ndarray]:
    """Per wipe model (0-3 of ``SPLIT_MODELS``), (k, offsets) mean |frame - model| for every frame of ``mids`` and
    edge offset, from per-column (row) errors against ``A`` and ``B`` and their running sums: the same numbers as
    comparing with ``split_model(A, B, m)``, at a 30th of the cost. With ``band`` (a share of the picture), the
    columns (rows) within that share of the edge on each side may show any blend of ``A`` and ``B`` (their error is
    the distance to the nearest blend): a soft edge, or an edge between two thumbnail columns."""
    k, h, w = mids.shape[:3]
    to_a, to_b = np.abs(mids - A).reshape(k, h, w * 3), np.abs(mids - B).reshape(k, h, w * 3)
    apart = np.abs(A - B).reshape(h, w * 3) if band else None
    # per column (rows summed first, then channels: a 5th of the cost of one reduction over both, which numpy runs
    # strided) and per row
    sums = ((to_a.sum(axis=1).reshape(k, w, 3).sum(axis=2), to_b.sum(axis=1).reshape(k, w, 3).sum(axis=2),
             None if apart is None else apart.sum(axis=0).reshape(w, 3).sum(axis=1)),
            (to_a.sum(axis=2), to_b.sum(axis=2), None if apart is None else apart.sum(axis=1)))
    out = []
    for ca, cb, cab in sums:  # (k, W): an edge along the columns; then (k, H): along the rows
        zero = np.zeros((len(mids), 1), np.float32)
        cum_a, cum_b = np.hstack([zero, np.cumsum(ca, axis=1)]), np.hstack([zero, np.cumsum(cb, axis=1)])
        length = ca.shape[1]
        wide = int(round(band * length))
        if not wide:
            out.append((cum_b + (cum_a[:, -1:] - cum_a)) / A.size)  # B before the edge at offset o, A after it
            out.append((cum_a + (cum_b[:, -1:] - cum_b))[:, ::-1] / A.size)  # A before the edge at length - o, B after
            continue
        # a value's distance to the nearest blend of a and b: (|x - a| + |x - b| - |a - b|) / 2
        cum_i = np.hstack([zero, np.cumsum(np.maximum(0.0, ca + cb - cab) / 2, axis=1)])
        o = np.arange(length + 1)
        lo, hi = np.maximum(0, o - wide), np.minimum(length, o + wide)
        out.append((cum_b[:, lo] + cum_i[:, hi] - cum_i[:, lo] + cum_a[:, -1:] - cum_a[:, hi]) / A.size)
        out.append((cum_a[:, lo] + cum_i[:, hi] - cum_i[:, lo] + cum_b[:, -1:] - cum_b[:, hi])[:, ::-1] / A.size)
    return [out[0], out[1], out[2], out[3]]


def edge_may_fit(A: np.ndarray, B: np.ndarray, p1: np.ndarray, p2: np.ndarray, diff: float,
                  cfg: SceneConfig, slack: tuple[float, float] = (0.0, 0.0)) -> bool:
    """Necessary conditions of :func:`still_edge_fit`, at a 10th of its cost, on the ends and two probes: the
    frames a third and two thirds in (of ``k`` frames between the ends: offsets ``1 + k // 3``, ``1 + 2 * k // 3``).
    The edge is inside the picture over a run of at least half the frames, which holds one of the probes."""
    limit, changed, apart = cfg.guard_max_error * diff, None, None
    for probe, loose in zip((p1, p2), slack):  # lower bounds of a frame's model error: each value at the end it is
        # nearer (a hard edge); where that fails, each value's distance to the nearest blend of the ends (a soft
        # edge, only where the ends differ in little of the picture), (|p - a| + |p - b| - |a - b|) / 2 summed
        bound = (limit + loose) * A.size
        if sum(cv2.sumElems(cv2.min(cv2.absdiff(probe, A), cv2.absdiff(probe, B)))) <= bound:
            continue
        if changed is None:
            changed = changed_share(A, B)
            apart = cv2.norm(A, B, cv2.NORM_L1)
        if not _band(changed, cfg) or (cv2.norm(probe, A, cv2.NORM_L1) + cv2.norm(probe, B, cv2.NORM_L1)
                                       - apart) > 2 * bound:
            return False
    if changed is None:
        changed = changed_share(A, B)
    if changed < min(cfg.guard_min_changed, cfg.guard_low_changed):
        return False  # most of the picture stays: an object moved, no other shot came in
    band = _band(changed, cfg)
    for err in wipe_errors(np.stack([p1, p2]), A, B, band):  # both probes fit one model, its edge moving one way and
        edge, full = err.argmin(axis=1), err.shape[1] - 1  # inside the picture in one of them
        if (float((err.min(axis=1) - np.asarray(slack)).max()) <= limit and edge[0] <= edge[1]
                and (0 < edge[0] < full or 0 < edge[1] < full)):
            return True
    return False


def changed_share(A: np.ndarray, B: np.ndarray) -> float:
    """Share of thumbnail cells whose mean |B - A| over the three channels is over 12 levels: how much of the
    picture the two ends of a window differ in (the guard's ``guard_min_changed`` and kin)."""
    return float((np.abs(B - A).mean(axis=2) > 12.0).mean())


def _band(changed: float, cfg: SceneConfig) -> float:
    """The soft-edge band of a wipe whose ends differ in ``changed`` of the picture: ``guard_wipe_band`` where that
    is under ``guard_min_changed`` (two shots of one backdrop: the ends differ little, so a soft edge's blended
    columns weigh much against their difference), else none."""
    return cfg.guard_wipe_band if changed < cfg.guard_min_changed else 0.0


def still_edge_fit(frames: np.ndarray, diff: float, cfg: SceneConfig,
                   drift: tuple[float, float] = (0.0, 0.0)) -> tuple[int, int] | None:
    """The purity guard's wipe test on ``frames`` (the window ``a..b``, ends included; ``diff`` = mean |b - a|):
    offsets ``[lo, hi)`` of the frames where frames ``a`` and ``b`` side by side with a straight still edge explain
    every frame within ``guard_max_error`` (the edge moving one way across at least 60 % of the picture, never a
    third of it in one frame, inside it for at least 3 frames and half the window), or None. ``drift`` (the shots'
    own mean steps, outgoing and incoming) loosens each frame's limit by its :func:`drift_allowance`; where the ends
    differ in under ``guard_min_changed`` of the picture, the edge may be soft (``guard_wipe_band``) and a fit
    counts only if no pan or zoom explains the change (:func:`motion_residual`). Where the edge is still inside
    next to an end of the window, the span reaches on past it at the edge's pace (``_beyond``: offsets below 1 or
    past ``len(frames) - 1``). Where no model fits so, and ``guard_hidden_edge``, :func:`_steady_edge` tries an
    edge at one pace (hidden where the two shots agree). :func:`edge_may_fit` runs first (its quick necessary
    conditions include the share of the picture that changes)."""
    A, B = frames[0], frames[-1]
    mids = frames[1:-1]
    changed = changed_share(A, B)
    band = _band(changed, cfg)
    allow = drift_allowance(len(frames) - 1, diff, drift) if any(drift) else 0.0
    best_score, out = cfg.guard_max_error, None
    errs = wipe_errors(mids, A, B, band)
    for err in errs:
        edge = err.argmin(axis=1)
        full = err.shape[1] - 1
        if np.any(np.diff(edge) < 0) or edge[-1] - edge[0] < 0.6 * full or np.diff(edge).max() > full / 3:
            continue  # the edge must move one way, across most of the picture, never a third of it in one frame
        moving = np.nonzero((edge > 0) & (edge < full))[0]
        if len(moving) < max(3, len(edge) // 2):
            continue
        score = float((err[np.arange(len(edge)), edge] - allow).max()) / diff
        if score <= best_score:
            best_score, out = score, (1 + int(moving[0]) - _beyond(edge, moving, 0, full),
                                      2 + int(moving[-1]) + _beyond(edge, moving, len(edge) - 1, full))
    if out is None and cfg.guard_hidden_edge:
        for err in errs:
            found = _steady_edge(err, diff, cfg, allow)
            if found is not None and found[0] <= best_score:
                best_score, out = found
    if out is not None and changed < cfg.guard_min_changed and motion_residual(
            A, B, enough=cfg.guard_min_unexplained) <= cfg.guard_min_unexplained:
        return None  # two shots of one backdrop differ in a part of the picture only; a slow pan changes little as
        # well, and camera motion explains it
    return out


def _steady_edge(err: np.ndarray, diff: float, cfg: SceneConfig,
                 allow: np.ndarray | float = 0.0) -> tuple[float, tuple[int, int]] | None:
    """A wipe whose edge is hidden where the two pictures agree (two shots of one backdrop: any edge position
    over the shared part fits a frame equally well). Per frame, the offsets whose error is within 2 % of the ends'
    difference of its best form an interval; where that interval is narrow (at most a quarter of the picture) the
    edge is seen. A line fitted through the seen edges (the edge moving at one pace, rising) must fit every frame
    within ``guard_max_error`` with its edge where the line puts it, and cross at least 60 % of the picture in the
    window; the frames where that line lies inside the picture are the span. (score, window offsets)."""
    full = err.shape[1] - 1
    ok = err <= err.min(axis=1, keepdims=True) + 0.02 * diff
    offsets = np.arange(full + 1)
    lo = np.where(ok, offsets, full + 1).min(axis=1)
    hi = np.where(ok, offsets, -1).max(axis=1)
    seen = np.nonzero((hi - lo <= full / 4) & (lo > 0) & (hi < full))[0]
    if len(seen) < 3:
        return None
    t, y = seen.astype(np.float64), (lo[seen] + hi[seen]) / 2.0
    pace, start = np.polyfit(t, y, 1)
    if pace <= 0:
        return None
    line = pace * np.arange(len(err)) + start
    at = np.clip(np.rint(line), 0, full).astype(int)
    if at[-1] - at[0] < 0.6 * full:
        return None
    score = float((err[np.arange(len(err)), at] - allow).max()) / diff
    inside = np.nonzero((line >= 0.5) & (line <= full - 0.5))[0]  # at least half a column (row) in
    if score > cfg.guard_max_error or len(inside) < 3:
        return None
    return score, (1 + int(inside[0]), 2 + int(inside[-1]))


def _beyond(edge: np.ndarray, moving: np.ndarray, side: int, full: int) -> int:
    """Frames past the window's end ``side`` (0: first frame between the ends, else the last) whose edge is still
    inside the picture, at the edge's mean pace over ``moving``: 0 unless the edge is inside next to that end, where
    the end frame itself is still a transition frame (the shot on the far side moves, so the model fits the window
    only up to a frame that is not yet clean) and the wipe goes on past it. At most ``len(moving)`` frames."""
    if len(moving) < 2 or int(moving[0 if side == 0 else -1]) != side:
        return 0
    pace = float(edge[moving[-1]] - edge[moving[0]]) / float(moving[-1] - moving[0])
    if pace <= 0:
        return 0
    left = float(edge[moving[0]]) if side == 0 else float(full - edge[moving[-1]])
    return min(len(moving), max(0, int(np.ceil(left / pace)) - 1))  # frames t >= 1 with t * pace < left


def neighbour_steps(frame: np.ndarray, along_columns: bool) -> np.ndarray:
    """Mean |luma difference| between neighbouring thumbnail columns (rows) of ``frame``."""
    y = frame[..., 0]
    return np.abs(np.diff(y, axis=1 if along_columns else 0)).mean(axis=0 if along_columns else 1)


def seams(frame: np.ndarray, cfg: SceneConfig) -> list[tuple[bool, int]]:
    """(along the columns?, position) of the ``guard_seams`` largest steps between neighbouring columns and between
    neighbouring rows of ``frame`` that stand out: ``guard_min_seam`` times the median step (two pictures side by
    side show one; a panned or blurred picture none). Columns (rows) before the position come from one picture.
    Not only the largest: where the two pictures share a backdrop (two signers before one wall), an edge of the
    picture itself can be a larger step than the seam between them."""
    out = []
    for along_columns in (True, False):
        steps = neighbour_steps(frame, along_columns)
        floor = cfg.guard_min_seam * (median(steps) + 1e-3)
        out += [(along_columns, int(k) + 1) for k in np.argsort(-steps)[: cfg.guard_seams] if steps[k] >= floor]
    return out


def drift_allowance(n: int, diff: float, drift: tuple[float, float]) -> np.ndarray:
    """How far frames ``1..n-1`` of a window ``a..b`` (``n = b - a``) may differ from a split-screen model of its end
    frames because the two shots move by themselves: ``drift`` = the mean steps of the outgoing shot before ``a``
    and of the incoming shot after ``b``. Frame ``j`` shows the outgoing shot ``j`` frames after ``a`` over about
    ``1 - j / n`` of the picture and the incoming one ``n - j`` frames before ``b`` over the rest; each part drifts
    by its steps summed, at most the ends' difference ``diff``. Zeros when both shots hold still."""
    j = np.arange(1, n, dtype=np.float64)
    share = j / n
    return (1 - share) * np.minimum(j * drift[0], diff) + share * np.minimum((n - j) * drift[1], diff)


def drift_slack(n: int, j: int, diff: float, drift: tuple[float, float]) -> float:
    """``drift_allowance(n, diff, drift)[j - 1]`` (frame ``j`` of the window), the same float64 arithmetic without
    the array: the guard asks it for one or two probe frames of thousands of windows."""
    share = j / n
    return (1 - share) * min(j * drift[0], diff) + share * min((n - j) * drift[1], diff)


def seam_fits(probe: np.ndarray, seams: list[tuple[bool, int]], A: np.ndarray, B: np.ndarray, diff: float,
               cfg: SceneConfig, slack: float = 0.0) -> bool:
    """A necessary condition of :func:`slide_fit` for a frame of the run: it shows a seam (``seams(probe)``) and
    is ``A`` pushed out by ``B`` with the seam there, within ``guard_slide_max_error`` of ``diff`` plus ``slack``
    (the probe's :func:`drift_allowance`)."""
    h, w = A.shape[:2]
    for along_columns, at in seams:
        if along_columns:
            pushes = (np.concatenate([A[:, w - at:], B[:, : w - at]], axis=1),
                      np.concatenate([B[:, w - at:], A[:, : w - at]], axis=1))
        else:
            pushes = (np.concatenate([A[h - at:], B[: h - at]]), np.concatenate([B[h - at:], A[: h - at]]))
        if min(float(np.abs(probe - x).mean()) for x in pushes) <= cfg.guard_slide_max_error * diff + slack:
            return True
    return False


def slide_fit(frames: np.ndarray, diff: float, cfg: SceneConfig,
              drift: tuple[float, float] = (0.0, 0.0)) -> tuple[int, int] | None:
    """The purity guard's slide test on ``frames`` (the window ``a..b``, ends included): offsets ``[lo, hi)`` of the
    frames where frame ``b`` pushes frame ``a`` out with a straight seam that moves one way across at least 60 % of
    the picture, never a third of it in one frame (a slide moves steadily; a pan of one textured picture can fit
    the model with an edge that jumps from one side to the other), each frame within ``guard_slide_max_error`` of
    the ends' difference plus its :func:`drift_allowance` (``drift``: the shots' own mean steps, outgoing and
    incoming), and the seam stands out in those frames (median over them of the step at the seam >=
    ``guard_min_seam`` times the median step: a pan, which fits the same model, has no seam)."""
    A, B = frames[0], frames[-1]
    if changed_share(A, B) < cfg.guard_slide_min_changed:
        return None
    mids = frames[1:-1]
    limit, banded = cfg.guard_slide_max_error * diff + drift_allowance(len(frames) - 1, diff, drift), {}
    for m in range(4, 8):
        along_columns = m in (4, 5)
        if along_columns not in banded:
            banded[along_columns] = tuple(band_means(x, along_columns) for x in (A, B, mids))
        if not push_may_fit(banded[along_columns], m, float(limit.max())):
            continue  # a frame fits no offset: the test below would drop this model too
        err = np.abs(mids[:, None] - split_model(A, B, m)[None]).mean(axis=(2, 3, 4))  # (k, offsets)
        edge, full = err.argmin(axis=1), err.shape[1] - 1
        if np.any(np.diff(edge) < 0) or edge[-1] - edge[0] < 0.6 * full or np.diff(edge).max() > full / 3:
            continue  # one way across most of the picture, never a third of it in one frame (a slide is steady)
        moving = np.nonzero((edge > 0) & (edge < full))[0]
        if len(moving) < max(3, len(edge) // 2):
            continue
        if np.any(err[np.arange(len(edge)), edge] > limit):
            continue
        ratios = []
        for j in moving:  # push left / up: the seam at (length - offset); push right / down: at the offset
            at = full - int(edge[j]) if m in (4, 6) else int(edge[j])
            steps = neighbour_steps(mids[j], along_columns)
            ratios.append(steps[at - 1] / (median(steps) + 1e-3))
        if float(np.median(ratios)) >= cfg.guard_min_seam:
            return 1 + int(moving[0]), 2 + int(moving[-1])
    return None



def log_luma_ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-cell log luma ratio ``y / x`` of two thumbnails, each luma offset by 8 levels (dark cells do not blow it
    up). Full-range luma from a limited-range source goes below 0 (its codes under 16): it is clipped at 0, so the
    logarithm always has a positive argument."""
    return np.log((np.maximum(y[..., 0], 0.0) + 8.0) / (np.maximum(x[..., 0], 0.0) + 8.0))


def relighting(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Median and median absolute deviation of the per-pixel log luma ratio ``y / x``: a spread near 0 when ``y``
    is ``x`` with other exposure (a fade, an exposure drift; the median is then the log gain), large when ``y``
    shows other content over most of the picture."""
    ratio = log_luma_ratio(x, y)
    middle = float(median(ratio))
    return middle, float(median(np.abs(ratio - middle)))


def unlike_share(x: np.ndarray, y: np.ndarray, gain: float) -> float:
    """Share of thumbnail cells whose log luma ratio ``y / x`` is over 0.15 from ``gain`` (the median log ratio):
    the part of the picture that changes otherwise than by one exposure gain."""
    return float((np.abs(log_luma_ratio(x, y) - gain) > 0.15).mean())


_ZOOMS = (1.06, 1.12, 1.2, 1.3, 1.42, 1.56, 1.72, 1.9)


def motion_residual(x: np.ndarray, y: np.ndarray, reach: tuple[int, int] = (8, 4), enough: float = 0.0) -> float:
    """How much of the change from thumbnail ``x`` to ``y`` camera motion leaves unexplained: the least, over
    translations of ``x`` by up to ``reach`` (columns, rows) cells and zooms in or out by up to 1.9x, of the mean
    |luma difference| over the cells both views show, as a share of that difference without the motion (1: no
    motion helps; near 0: ``y`` is ``x`` moved). Translations go by whole cells, then half a cell around the best;
    zooms are about the centre, then a cell off it around the best. Slow pans and fast zooms change every thumbnail
    cell at a steady pace, as a dissolve does; this tells them apart."""
    lx, ly = np.ascontiguousarray(x[..., 0]), np.ascontiguousarray(y[..., 0])
    h, w = lx.shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0

    def unexplained(scale: float, dx: float, dy: float) -> float:
        """Share left when ``y`` shows ``x`` zoomed by ``scale`` about the centre and moved by (dx, dy), over the
        cells whose source lies inside ``x``, rounded inwards."""
        moved = cv2.warpAffine(lx, np.float32([[scale, 0, (1 - scale) * cx + dx], [0, scale, (1 - scale) * cy + dy]]),
                               (w, h), flags=cv2.INTER_LINEAR)
        mx = int(np.ceil(max(0.0, cx * (1 - scale)) + abs(dx)))
        my = int(np.ceil(max(0.0, cy * (1 - scale)) + abs(dy)))
        if 2 * mx >= w - 2 or 2 * my >= h - 2:
            return 1.0
        inner = (slice(my, h - my), slice(mx, w - mx))
        raw = cv2.norm(ly[inner], lx[inner], cv2.NORM_L1)
        return cv2.norm(ly[inner], moved[inner], cv2.NORM_L1) / raw if raw > 0 else 1.0

    best, at, raw = 1.0, (0, 0), {}
    for dy in range(-reach[1], reach[1] + 1):
        for dx in range(-reach[0], reach[0] + 1):
            if not (dx or dy):
                continue
            mx, my = abs(dx), abs(dy)
            seen = ly[my: h - my, mx: w - mx]
            if (mx, my) not in raw:
                raw[mx, my] = cv2.norm(seen, lx[my: h - my, mx: w - mx], cv2.NORM_L1)
            if raw[mx, my] > 0:  # x moved by (dx, dy): y's cell p shows x's cell p - (dx, dy)
                got = cv2.norm(seen, lx[my - dy: h - my - dy, mx - dx: w - mx - dx], cv2.NORM_L1) / raw[mx, my]
                if got < best:
                    best, at = got, (dx, dy)
                    if best <= enough:
                        return float(best)
    for dy in (-0.5, 0.0, 0.5):
        for dx in (-0.5, 0.0, 0.5):
            if (dx or dy) and (at[0] + dx or at[1] + dy):
                best = min(best, unexplained(1.0, at[0] + dx, at[1] + dy))
    if best <= enough:
        return float(best)
    zoomed = {s: unexplained(s, 0.0, 0.0) for z in _ZOOMS for s in (z, 1.0 / z)}
    scale = min(zoomed, key=zoomed.__getitem__)
    best = min(best, zoomed[scale], *(unexplained(scale, dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                                      if dx or dy))
    return float(best)
