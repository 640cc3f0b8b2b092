"""The dataset report's figures: matplotlib's Agg canvas directly (no pyplot, no global state), one function per
figure, each taking columns of the clip table and returning a ``Figure``. ``pipelines/report.py`` lays them out."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

# Colours of the page; the Chromium test looks for PRIMARY in the screenshot.
PRIMARY = "#2f6db5"  # histograms, pass rates
ACCENT = "#d1495b"  # thresholds, rejections, failures
MUTED = "#8a94a6"


def _values(table: pa.Table, name: str) -> np.ndarray:
    """Finite float values of a numeric column (nulls and NaNs dropped)."""
    if name not in table.column_names:
        return np.array([], np.float64)
    arr = table[name].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    return arr[np.isfinite(arr)]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    if ylabel == "clips":  # counts are whole numbers
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _hist(values: np.ndarray, title: str, xlabel: str, lines: list[tuple[str, float]] = ()):
    fig = _figure(4.6, 2.9)
    ax = fig.add_subplot()
    lo, hi = float(values.min()), float(values.max())
    if hi > lo:
        ax.hist(values, bins=min(40, max(5, int(np.sqrt(values.size)) * 2)), color=PRIMARY, edgecolor="white")
    else:  # one value: one bar around it, on an axis that does not invent negative values for a share or a count
        span = abs(lo) * 0.2 or 1.0
        left = max(0.0, lo - span) if lo >= 0 else lo - span
        ax.bar([lo], [values.size], width=(lo + span - left) / 20, color=PRIMARY)
        ax.set_xlim(left, lo + span)
    for op, v in lines:
        ax.axvline(v, color=ACCENT, ls="--", lw=1.5, label=f"filter {op} {v:g}")
    if lines:
        ax.legend(fontsize=8, frameon=False)
    stat = f"median {np.median(values):.3g}" if hi > lo else f"all = {lo:.3g}"
    _style(ax, f"{title}  (n={values.size}, {stat})", xlabel, "clips")
    return fig


def _bool_bars(values: list, title: str, what: str):
    fig = _figure(4.6, 2.9)
    ax = fig.add_subplot()
    counts = Counter(values)
    keys = [("no", False), ("yes", True), ("null", None)]
    keys = [(k, v) for k, v in keys if counts.get(v) or v is not None]
    bars = ax.bar([k for k, _ in keys], [counts.get(v, 0) for _, v in keys], width=0.6,
                  color=[PRIMARY if v is False else ACCENT if v else MUTED for _, v in keys])
    ax.bar_label(bars, fontsize=8)
    _style(ax, f"{title}  (n={len(values)})", what, "clips")
    return fig


def _resolution(clips: pa.Table):
    fig = _figure(9.4, 3.1)
    ax1, ax2 = fig.subplots(1, 2)
    sizes = Counter(zip(clips["width"].to_pylist(), clips["height"].to_pylist()))
    ws, hs, ns = [w for w, _ in sizes], [h for _, h in sizes], list(sizes.values())
    ax1.scatter(ws, hs, s=[30 + 400 * n / max(ns) for n in ns], color=PRIMARY, alpha=0.75, edgecolor="white")
    for (w, h), n in sizes.most_common(6):
        ax1.annotate(f"{w}x{h} ({n})", (w, h), fontsize=7, xytext=(4, 4), textcoords="offset points")
    _style(ax1, f"resolution  (n={clips.num_rows}, {len(sizes)} sizes)", "width (px)", "height (px)")
    ax1.margins(0.25)
    aspect = _values(clips, "aspect")
    lo, hi = (aspect.min(), aspect.max()) if aspect.size else (0, 0)
    if hi > lo:
        ax2.hist(aspect, bins=min(30, max(5, int(np.sqrt(aspect.size)) * 2)), color=PRIMARY, edgecolor="white")
    elif aspect.size:  # one aspect: one narrow bar at it, not a bar as wide as the axis
        ax2.bar([lo], [aspect.size], width=0.01, color=PRIMARY)
        ax2.set_xlim(lo - 0.1, lo + 0.1)
    for ref, name in ((16 / 9, "16:9"), (4 / 3, "4:3"), (1.0, "1:1"), (9 / 16, "9:16")):
        if lo - 0.1 <= ref <= hi + 0.1:
            ax2.axvline(ref, color=MUTED, ls=":", lw=1)
            ax2.annotate(name, (ref, 0.97), xycoords=("data", "axes fraction"), fontsize=7, color=MUTED)
    _style(ax2, "display aspect", "width / height", "clips")
    return fig


def _fps(clips: pa.Table):
    values = _values(clips, "fps")
    counts = Counter(np.round(values, 2).tolist())
    if len(counts) > 15:
        return _hist(values, "frame rate", "frames per second")
    fig = _figure(4.6, 2.9)
    ax = fig.add_subplot()
    keys = sorted(counts)
    bars = ax.bar([f"{k:g}" for k in keys], [counts[k] for k in keys], color=PRIMARY, width=0.6)
    ax.bar_label(bars, fontsize=8)
    ax.set_xlim(-0.8, max(len(keys), 2) - 0.2)
    if len(keys) > 5:  # labels like 23.98 and 24 side by side would overlap
        ax.tick_params(axis="x", labelrotation=45)
    _style(ax, f"frame rate  (n={values.size})", "frames per second", "clips")
    return fig


def _keep_figure(rates: dict):
    names = list(rates.get("pass_rate", {}))
    n = rates.get("clips") or 0
    fig = _figure(9.4, 0.9 + 0.38 * max(len(names), 1))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    passed = [100 * rates["pass_rate"][k] for k in names]
    first = [100 * rates.get("rejected_first_by", {}).get(k, 0.0) for k in names]
    b1 = ax.barh(y - 0.2, passed, height=0.38, color=PRIMARY, label="passes this filter")
    b2 = ax.barh(y + 0.2, first, height=0.38, color=ACCENT, label="rejected first by this filter")
    ax.bar_label(b1, labels=[f"{p:.0f} % ({round(p * n / 100)})" for p in passed], fontsize=7, padding=2)
    ax.bar_label(b2, labels=[f"{p:.0f} % ({round(p * n / 100)})" if p else "" for p in first], fontsize=7, padding=2)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 118)
    fig.legend(fontsize=8, frameon=False, loc="outside upper right", ncol=2)
    keep = rates.get("keep_rate")
    kept = f"{100 * keep:.1f} % kept ({round(keep * n)} of {n} clips)" if keep is not None else "no clips"
    _style(ax, f"filters: {kept}", "% of clips", "")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _count_bars(counts: dict, title: str, xlabel: str, color: str, fmt: str = "{:g}"):
    keys = list(counts)
    fig = _figure(9.4, 0.9 + 0.36 * max(len(keys), 1))
    ax = fig.add_subplot()
    bars = ax.barh(np.arange(len(keys)), [counts[k] for k in keys], color=color)
    ax.bar_label(bars, labels=[fmt.format(counts[k]) for k in keys], fontsize=8, padding=2)
    ax.set_yticks(np.arange(len(keys)), [str(k)[:48] for k in keys], fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.15)
    _style(ax, title, xlabel, "")
    ax.grid(axis="x", alpha=0.3)
    if all(isinstance(counts[k], int) for k in keys):  # counts are whole numbers
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _caption_lengths(clips: pa.Table, cols: list[str]):
    fig = _figure(9.4, 3.0)
    ax = fig.add_subplot()
    colors = [PRIMARY, ACCENT, "#3a9d5d"]
    lengths = {c: np.array([len(t.split()) for t in clips[c].to_pylist() if t]) for c in cols}
    lo = min(int(v.min()) for v in lengths.values() if v.size)
    hi = max(int(v.max()) for v in lengths.values() if v.size)
    bins = np.arange(lo, hi + 2) - 0.5 if hi - lo < 60 else np.linspace(lo, hi + 1, 40)  # whole words
    for c, color, lw in zip(cols, colors, (3.5, 2.2, 1.2)):  # thinner on top: identical columns stay visible
        v = lengths[c]
        ax.hist(v, bins=bins, histtype="stepfilled" if len(cols) == 1 else "step", lw=lw, color=color,
                label=f"{c} (n={v.size}, median {np.median(v):.0f} words)")
    ax.legend(fontsize=8, frameon=False)
    _style(ax, "caption lengths", "words", "clips")
    return fig


