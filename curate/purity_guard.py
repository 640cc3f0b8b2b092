"""The clip purity guard's windows: the part of ``curate.scenes.SceneSplitter`` that looks for wipes, slides and
dissolves the detector missed or ended early, and marks them as suspect spans inside a scene (``Scene.suspect``),
which clips keep clear of. What it looks for and why is told in ``curate.scenes``' module docstring (``guard``);
the models and tests it runs on thumbnails are in ``curate.split_screen``.

``PurityGuard`` is a mixin of ``SceneSplitter``: it reads the splitter's ring of thumbnails and its per-frame
arrays (``_ring``, ``_cum``, ``_d``, ``_kind``, ``_cut_list``) and appends to ``_suspect``.
"""

from __future__ import annotations

import bisect

import cv2
import numpy as np

from curate.split_screen import (drift_slack as _drift_slack, edge_may_fit as _edge_may_fit,
                                 motion_residual as _motion_residual, relighting as _relighting,
                                 seam_fits as _seam_fits, seams as _seams, slide_fit as _slide_fit,
                                 still_edge_fit as _still_edge_fit, unlike_share as _unlike_share)


class PurityGuard:
    """The guard's window methods, mixed into ``curate.scenes.SceneSplitter``."""

    def _update_guard(self, b: int) -> None:
        """Try the guard's windows ending at ``b``; spans found join the last suspect span when they overlap or
        touch it (one wipe passes in several windows, each seeing part of it). Windows that end or start on a
        transition frame are skipped: frames a and b must belong to shots."""
        cfg, cap, ring, cum, d, kind = self.cfg, self._cap, self._ring, self._cum, self._d, self._kind
        suspect = self._suspect
        if kind[b]:
            return
        for n in self._guard_lengths:
            a = b - n
            if a < 0:
                break
            if kind[a]:
                continue
            path = cum[b] - cum[a]
            if path < cfg.wipe_min_diff:
                continue  # the end-to-end change is at most the path
            diff = cv2.norm(ring[a % cap], ring[b % cap], cv2.NORM_L1) * self._inv_size
            if diff < cfg.wipe_min_diff:
                continue
            k = bisect.bisect_right(self._cut_list, a)
            if k < len(self._cut_list) and self._cut_list[k] <= b:
                continue  # a hard cut inside: the window spans two scenes
            inner = self._kind[a + 1: b]
            if any(inner):  # a detected transition [lo, hi) inside: skip the window when the change stops at
                # both of its ends (the steps just outside it are under 0.3 of its mean step); else it may be short
                lo, hi = b - len(inner.lstrip(b"\0")), a + 1 + len(inner.rstrip(b"\0"))
                pace = 0.3 * (cum[hi] - cum[lo]) / (hi - lo)
                if d[lo - 1] < pace and d[hi + 1] < pace:
                    continue
            k = n - 1
            at = a + 1 + k // 3, a + 1 + 2 * k // 3
            probes = ring[at[0] % cap], ring[at[1] % cap]
            span, split = None, n <= self._guard_split_max
            # the shots' own steps just outside the window (the lesser of two) loosen the fits where they move, and
            # only where they are well under the window's mean step (else the window starts or ends inside the
            # motion: a zoom, a whip pan); wipes take them only with guard_wipe_drift, slides only where no
            # transition was detected
            pace = 0.3 * path / n
            drift = tuple(x if x <= pace else 0.0
                          for x in (min(d[max(0, a - 1)], d[a]), min(d[b + 1: b + 3], default=0.0)))
            moved = drift if cfg.guard_wipe_drift else (0.0, 0.0)
            if split and diff >= cfg.guard_min_efficiency * max(diff, path - n * (moved[0] + moved[1]) / 2):
                slack = (0.0, 0.0)
                if moved[0] or moved[1]:
                    slack = _drift_slack(n, at[0] - a, diff, moved), _drift_slack(n, at[1] - a, diff, moved)
                if _edge_may_fit(ring[a % cap], ring[b % cap], *probes, diff, cfg, slack):
                    span = _still_edge_fit(self._frames(a, b), diff, cfg, moved)
            if span is None and split and not any(inner):
                if self._slide_may_fit(a, b, at, diff, drift):
                    span = _slide_fit(self._frames(a, b), diff, cfg, drift)
            if (span is None and not any(inner) and cfg.guard_dissolve_min_path > 0 and n <= self._guard_blend_max
                    and diff >= cfg.guard_dissolve_min_diff and diff >= cfg.guard_dissolve_min_path * path):
                span = self._guard_dissolve(a, b, diff)
            if span is None:
                continue
            lo, hi = max(0, a + span[0] - 1), a + span[1] + 1  # a soft edge shows a frame before and after
            if suspect and lo <= suspect[-1][1]:
                lo, hi = min(lo, suspect[-1][0]), max(hi, suspect[-1][1])
                suspect.pop()
            suspect.append((lo, hi))

    def _guard_dissolve(self, a: int, b: int, diff: float) -> tuple[int, int] | None:
        """The guard's looser dissolve test: window offsets ``[lo, hi)`` of the frames at alpha 0.1-0.9 when frames
        ``a..b`` blend frame ``a`` into ``b`` (alpha rising with no step, every frame within
        ``guard_dissolve_max_residual`` of the blend at its alpha, ends that differ in content)."""
        cfg, cap = self.cfg, self._cap
        ends = self._ring[a % cap], self._ring[b % cap]
        x0, delta = ends[0].ravel(), (ends[1] - ends[0]).ravel()
        norm = float(delta @ delta)
        if norm <= 0:
            return None
        # three frames first (a quarter, half and three quarters in): most windows that fail the residual test
        # fail there, before the whole window is read
        k = b - a
        probes = self._ring[[(a + k // 4) % cap, (a + k // 2) % cap, (a + 3 * k // 4) % cap]].reshape(3, -1) - x0
        off = (probes - (probes @ delta / norm)[:, None] * delta)
        if float(np.abs(off).mean(axis=1).max()) / diff > cfg.guard_dissolve_max_residual:
            return None
        # the low-contrast blends the detector leaves (two people before one wall): a part of the picture changes
        # otherwise than by a gain, and no camera motion explains the change (a slow pan or a zoom changes every
        # cell at a steady pace too; tested last, the dearest)
        gain, spread = _relighting(*ends)
        low = diff < cfg.dissolve_min_diff or spread < cfg.dissolve_min_change
        if spread < cfg.dissolve_min_change and _unlike_share(*ends, gain) < cfg.guard_dissolve_min_share:
            return None
        window = self._frames(a, b).reshape(k + 1, -1)
        alpha = (window - x0) @ delta / norm
        steps = np.diff(alpha)
        if steps.max() > cfg.dissolve_max_step or steps.min() < -0.1:
            return None
        resid = float(np.abs(window[1:-1] - x0 - alpha[1:-1, None] * delta).mean(axis=1).max()) / diff
        if resid > cfg.guard_dissolve_max_residual:
            return None
        if low and _motion_residual(*ends, enough=cfg.guard_min_unexplained) <= cfg.guard_min_unexplained:
            return None
        inner = np.nonzero((alpha > 0.1) & (alpha < 0.9))[0]
        if len(inner) < 3:
            return None
        return int(inner[0]), int(inner[-1]) + 1

    def _frames(self, a: int, b: int) -> np.ndarray:
        """Thumbnails ``a..b`` (ends included) from the ring: a view where they do not wrap around it."""
        lo, hi = a % self._cap, b % self._cap
        return self._ring[lo: hi + 1] if lo <= hi else self._ring[np.arange(a, b + 1) % self._cap]

    def _slide_may_fit(self, a: int, b: int, probes: tuple[int, int], diff: float,
                       drift: tuple[float, float]) -> bool:
        """The probe that moves more (inside the run if either is) moves by at least 0.15 of the ends' difference
        (a slide moves the picture every frame) and passes :func:`_seam_fits` (with its drift allowance)."""
        cap, ring = self._cap, self._ring
        moves = max(probes, key=self._d.__getitem__)
        if self._d[moves] < 0.15 * diff:
            return False
        seams = self._seams_of.get(moves)
        if seams is None:  # once per frame: windows of several lengths and ends share probes
            if len(self._seams_of) > cap:
                self._seams_of = {i: v for i, v in self._seams_of.items() if i > moves - cap}
            seams = self._seams_of[moves] = _seams(ring[moves % cap], self.cfg)
        if not seams:
            return False
        slack = _drift_slack(b - a, moves - a, diff, drift)
        return _seam_fits(ring[moves % cap], seams, ring[a % cap], ring[b % cap], diff, self.cfg, slack)
