"""``tessera report DATASET``: one HTML page a person would rather look at than read.

Reads a published dataset (``_manifest.json`` shards, ``selection.parquet``, ``failures.parquet``,
``summary.json``) and writes ``DATASET/report/``: ``index.html`` plus the PNG figures it references by relative
path, so the folder opens anywhere with no network and no JavaScript:

- histograms of duration, resolution (width x height and aspect), fps and every score column (a column that is
  null for every clip gets a visible note saying why instead of an empty plot);
- keep rate per filter (pass rate and the share of clips each filter rejected first), failures by reason with a
  table of failed inputs, caption lengths when caption columns exist, time per stage;
- a contact sheet per sampled clip: a strip of frames decoded with PyAV beneath which sit its caption, source
  and scores. Clips are sampled by a seeded hash of their id, so the same dataset gives the same sheets, and
  only sampled clips are read and decoded.

Every string from the data (file names, captions, error messages) is HTML-escaped: file names are hostile.
Figures (matplotlib's Agg canvas, no pyplot) are drawn by ``pipelines/report_figures.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.media import clip_media
from curate.remote import is_uri
from curate.store import atomic_write_bytes, open_dataset, parquet_file, read_table
from pipelines.report_figures import (  # noqa: F401 - PRIMARY and _hist are part of this module's surface
    ACCENT, MUTED, PRIMARY, _bool_bars, _caption_lengths, _count_bars, _fps, _hist, _keep_figure, _resolution, _values,
)


# Score columns with their units (label on the x axis); boolean flags are drawn as two bars.
FLOAT_SCORES = {
    "sharpness": "Laplacian variance at analysis size",
    "luma_mean": "mean luma, 0-255",
    "luma_std": "luma std, 0-255",
    "black_share": "share of sampled frames near-black",
    "motion_mean": "mean motion, px/frame at analysis size",
    "motion_p90": "90th pct motion, px/frame",
    "clip_aesthetic": "aesthetic score (LAION scale)",
    "text_coverage": "share of frame under on-screen text",
    "caption_clip_sim": "caption-frames similarity (CLIP cosine)",  # from `tessera caption --clip-model`
}
BOOL_SCORES = {"motion_static": "static camera and scene", "motion_jitter": "jittery motion"}
# Which status column explains a null model-backed score.
STATUS_OF = {"clip_aesthetic": "clip_status", "text_coverage": "ocr_status", "caption_clip_sim": "caption_clip_status"}
CAPTION_COLUMNS = ("caption_short", "caption_dense", "caption_expanded")
HEAVY_TYPES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_list, pa.types.is_large_list)


@dataclass(frozen=True)
class ReportConfig:
    """Everything ``tessera report`` needs; only ``dataset`` has no default."""

    dataset: str
    output: str | None = None  # default DATASET/report
    sample_clips: int = 12  # contact sheets
    frames_per_clip: int = 6  # frames in each contact-sheet strip
    thumb_height: int = 112  # px of each frame in a strip
    seed: int = 0  # which clips are sampled
    max_failure_rows: int = 200  # rows of the failed-inputs table (the bar chart counts all)
    duplicate_pairs: int = 8  # near-duplicate pairs shown side by side
    dpi: int = 100


@dataclass
class Dataset:
    """What the report reads: the light clip columns (no media) and the side tables, any of which may be absent."""

    root: Path
    manifest: dict
    clips: pa.Table  # light columns + ``_shard`` (index into shard_paths)
    shard_paths: list[Path]
    selection: pa.Table | None
    failures: pa.Table | None
    summary: dict
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------


def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing paths that leave ``root`` (a manifest or clip_path is data, not trusted)."""
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise ValueError(f"path {rel!r} points outside the dataset {root}")
    return p


def load_dataset(root: Path) -> Dataset:
    """Read the manifest's shards without their media columns, plus selection, failures and summary."""
    opened = open_dataset(root)  # only the manifest's shards, each checked against it
    manifest, shard_paths = opened.manifest, opened.shards
    tables = []
    for i, path in enumerate(shard_paths):
        schema = parquet_file(path).schema_arrow  # path: a local file or a URI
        light = [f.name for f in schema if not any(t(f.type) for t in HEAVY_TYPES)]
        t = read_table(path, columns=light)
        tables.append(t.append_column("_shard", pa.array(np.full(t.num_rows, i, np.int32))))
    clips = (pa.concat_tables(tables, promote_options="permissive") if tables
             else pa.table({"clip_id": pa.array([], pa.string())}))
    notes = []
    summary = opened.data.read_json("summary.json") if opened.data.is_file("summary.json") else {}
    if not summary and manifest.get("source"):  # a captioned copy: its build summary is upstream
        upstream = Path(manifest["source"]) / "summary.json"
        if upstream.is_file():
            summary = json.loads(upstream.read_text())
            notes.append(f"build numbers are from the source dataset {upstream.parent}")
    if not summary:
        notes.append("no summary.json: input counts and time per stage are unavailable")
    selection = opened.read_side_table("selection")
    failures = opened.read_side_table("failures")
    return Dataset(root, manifest, clips, shard_paths, selection, failures, summary, notes)


def _null_note(table: pa.Table, name: str) -> str:
    """Why a column has no values: the model status when it has one, else plainly 'all null'."""
    status_col = STATUS_OF.get(name)
    if status_col and status_col in table.column_names:
        counts = Counter(table[status_col].to_pylist())
        if counts.get("no-model"):
            return f"{name}: no model configured ({counts['no-model']} of {table.num_rows} clips say no-model)"
        if name == "clip_aesthetic" and counts.get("ok"):
            return f"{name}: the CLIP model ran without an aesthetic head"
        return f"{name}: no values (status: {', '.join(f'{k} {v}' for k, v in counts.most_common())})"
    return f"{name}: null for all {table.num_rows} clips"


def _thresholds(selection: pa.Table | None) -> dict[str, list[tuple[str, float]]]:
    """Filter thresholds per column from the spec in the selection's metadata (``{"sharpness": [(">=", 25.0)]}``)."""
    if selection is None:
        return {}
    raw = (selection.schema.metadata or {}).get(b"tessera.filter_spec")
    if not raw:
        return {}
    from curate.filter import FilterSpec, spec_conditions

    try:
        spec = json.loads(raw)
        spec["expressions"] = tuple(spec.get("expressions", ()))
        conds = spec_conditions(FilterSpec(**spec))
    except (TypeError, ValueError):
        return {}
    out: dict[str, list[tuple[str, float]]] = {}
    for c in conds:
        if not isinstance(c.value, bool):
            out.setdefault(c.column, []).append((c.op, float(c.value)))
    return out


def _keep_rates(data: Dataset) -> dict:
    """Keep rates from the selection (the current filters), falling back to summary.json."""
    if data.selection is not None:
        from curate.filter import keep_rates

        return keep_rates(data.selection)
    return data.summary.get("filters", {}) or {}


def sample_ids(clip_ids: list[str], n: int, seed: int) -> list[str]:
    """``n`` clip ids chosen by a seeded hash: deterministic, and stable when other clips are added."""
    ranked = sorted(set(clip_ids), key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    return ranked[: max(n, 0)]


# ---------------------------------------------------------------------------------------------------------
# contact sheets (PyAV decode of the sampled clips only)
# ---------------------------------------------------------------------------------------------------------


def decode_strip(source: bytes | Path, n_frames: int, height: int):
    """A PIL image of ``n_frames`` frames spread evenly over a clip, each ``height`` px tall, 3 px apart.

    Decodes forward once and stops after the last wanted frame; only wanted frames are converted, scaled by
    FFmpeg (swscale) rather than in Python.
    """
    import av
    from PIL import Image

    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames or 0
        if total <= 0:  # no frame count in the header: count once (clips are short)
            total = sum(1 for _ in container.decode(stream))
            container.seek(0)
        sar = float(stream.sample_aspect_ratio or 1)  # non-square pixels (PAL 704x576) shown at display aspect
        want = sorted({min(total - 1, int((k + 0.5) * total / n_frames)) for k in range(n_frames)})
        thumbs = []
        for i, frame in enumerate(container.decode(stream)):
            if i in want:
                w = max(2, round(height * frame.width / frame.height * sar))
                thumbs.append(frame.to_image(width=w, height=height))
            if i >= want[-1]:
                break
    if not thumbs:
        raise ValueError("no frames decoded")
    gap = 3
    strip = Image.new("RGB", (sum(t.width for t in thumbs) + gap * (len(thumbs) - 1), height), "white")
    x = 0
    for t in thumbs:
        strip.paste(t, (x, 0))
        x += t.width + gap
    return strip


def _media(data: Dataset, ids: list[str]) -> dict[str, bytes | Path | Exception]:
    """The MP4 of each sampled clip: bytes read from its shard only, or a file under the dataset."""
    out: dict[str, bytes | Path | Exception] = {}
    shard_of = dict(zip(data.clips["clip_id"].to_pylist(), data.clips["_shard"].to_pylist()))
    by_shard: dict[int, list[str]] = {}
    for cid in ids:
        by_shard.setdefault(shard_of[cid], []).append(cid)
    for s, cids in by_shard.items():
        pf = parquet_file(data.shard_paths[s])
        names = [n for n in ("clip_mp4", "clip_path") if n in pf.schema_arrow.names]
        wanted = set(cids)
        for g in range(pf.num_row_groups):  # only row groups holding a sampled clip have their media read
            group_ids = pf.read_row_group(g, columns=["clip_id"])["clip_id"].to_pylist()
            rows = [i for i, c in enumerate(group_ids) if c in wanted]
            if not rows:
                continue
            t = pf.read_row_group(g, columns=names).take(rows)
            for i, row in zip(rows, t.to_pylist()):
                cid = group_ids[i]
                try:
                    out[cid] = clip_media(row, data.root)
                except ValueError as exc:  # a clip_path leaving the dataset: that sheet says so
                    out[cid] = exc
                except FileNotFoundError:  # no media at all: no sheet
                    pass
    return out


# ---------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1d2330;background:#f4f6f9;margin:0}
main{max-width:1240px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:6px 0 2px}
h2{font-size:18px;margin:30px 0 10px;border-bottom:2px solid #dde3ec;padding-bottom:4px}
.sub{color:#5b6578;font-size:13px;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#fff;border-radius:8px;padding:10px 14px;box-shadow:0 1px 2px #0002;min-width:120px}
.card b{display:block;font-size:22px;color:#2f6db5} .card span{font-size:12px;color:#5b6578}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:12px}
figure{margin:0;background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 2px #0002}
figure img{width:100%;display:block} .wide img{max-width:940px}
.note{background:#fff7e6;border-left:4px solid #e0a100;padding:6px 10px;margin:6px 0;font-size:13px}
table{border-collapse:collapse;background:#fff;font-size:12px;width:100%}
th,td{border-bottom:1px solid #e4e8ef;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6} td.msg{max-width:520px;word-break:break-word;color:#5b6578}
.sheets{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.sheet{background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 2px #0002}
.sheet img{max-width:100%;display:block;border-radius:4px}
.cap{margin:6px 0 2px;font-size:14px} .meta{font-size:12px;color:#5b6578;word-break:break-all}
.keep{color:#2f8a4f;font-weight:600} .drop{color:#d1495b;font-weight:600}
.warn{background:#fdecee;border:1px solid #d1495b;border-radius:8px;padding:8px 14px;margin:14px 0}
.warn ul{margin:4px 0;padding-left:20px} .allgood{background:#eaf6ee;border:1px solid #2f8a4f;border-radius:8px;
padding:8px 14px;margin:14px 0}
video{max-width:100%;display:block;border-radius:4px;margin-top:4px;background:#000}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _card(value, label: str) -> str:
    return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _fig_html(name: str, alt: str, wide: bool = False) -> str:
    return f'<figure{" class=wide" if wide else ""}><img src="{_e(name)}" alt="{_e(alt)}"></figure>'


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------


class _Figures:
    """Saves figures into the report folder and remembers their relative names, in page order."""

    def __init__(self, out: Path, dpi: int):
        self.out, self.dpi, self.names = out, dpi, []

    def img(self, fig, name: str, alt: str, wide: bool = False) -> str:
        fig.savefig(self.out / name, dpi=self.dpi, facecolor="white")
        self.names.append(name)
        return _fig_html(name, alt, wide)


def _notes(lines) -> str:
    return "".join(f'<p class="note">{_e(s)}</p>' for s in lines)


def _header(data: Dataset, rates: dict) -> str:
    """The numbers a reader wants first, as cards, and the dataset-wide notes."""
    s, n = data.summary, data.clips.num_rows
    inputs, counts = s.get("inputs", {}), s.get("clips", {})
    cards = [_card(n, "clips published")]
    if rates.get("clips"):
        kept = round(rates["keep_rate"] * rates["clips"])
        cards.append(_card(f"{kept} ({100 * rates['keep_rate']:.0f} %)", "kept by filters"))
    if inputs:
        cards += [_card(inputs.get("total", "-"), "inputs"), _card(inputs.get("accepted", "-"), "inputs accepted"),
                  _card(inputs.get("rejected", 0) + inputs.get("failed", 0), "inputs rejected or failed")]
    if counts.get("duplicates") is not None:
        cards.append(_card(counts["duplicates"], "near-duplicate clips"))
    cards.append(_card(f"{_values(data.clips, 'duration_s').sum() / 60:.1f} min", "of video in clips"))
    if s.get("wall_s") is not None:
        cards.append(_card(f"{s['wall_s']:.0f} s", "build wall time"))
    notes = data.notes + [m["note"] for m in s.get("models", {}).values() if isinstance(m, dict) and m.get("note")]
    return f'<div class="cards">{"".join(cards)}</div>' + _notes(notes) + _stage_table(s.get("stages", {}))


def _stage_table(stages: dict) -> str:
    """summary.json's rows in and out of every stage: where the inputs and clips went."""
    def cell(v) -> str:
        return ", ".join(f"{k} {x}" for k, x in v.items()) if isinstance(v, dict) else str(v)

    order = {k: i for i, k in enumerate(("probe", "split", "score", "dedup", "publish", "filter"))}  # data flow
    rows = ""
    for stage in sorted(stages, key=lambda k: (order.get(k, len(order)), k)):
        counts = stages[stage]
        if isinstance(counts, dict):
            items = sorted(counts.items(), key=lambda kv: kv[0] != "in")  # "in" first, then as written
            rows += (f"<tr><th>{_e(stage)}</th><td>" + " &middot; ".join(
                f"{_e(k.replace('_', ' '))} <b>{_e(cell(v))}</b>" for k, v in items) + "</td></tr>")
    return f'<h2>Stages: rows in and out</h2><table>{rows}</table>' if rows else ""


def _section_clips(figs: _Figures, clips: pa.Table, lines: dict) -> str:
    dur = _values(clips, "duration_s")
    if not dur.size:
        return '<h2>Clips</h2><p class="note">The dataset has no clips.</p>'
    geo = (figs.img(_hist(dur, "clip duration", "seconds", lines.get("duration_s", [])), "duration.png",
                    "histogram of clip durations")
           + figs.img(_fps(clips), "fps.png", "frame rates"))
    res = figs.img(_resolution(clips), "resolution.png", "resolution scatter and aspect histogram", wide=True)
    return (f'<h2>Clips: duration, frame rate, resolution</h2><div class="grid">{geo}</div>'
            f'<div style="margin-top:12px">{res}</div>')


def _section_scores(figs: _Figures, clips: pa.Table, lines: dict) -> tuple[str, list[str]]:
    """A histogram per score column; an all-null column gets a note saying why instead."""
    n, imgs, notes = clips.num_rows, [], []
    if not n:
        return "", []
    for name, unit in FLOAT_SCORES.items():
        if name in clips.column_names:
            v = _values(clips, name)
            if v.size:
                imgs.append(figs.img(_hist(v, name, unit, lines.get(name, [])), f"score_{name}.png", name))
            else:
                notes.append(_null_note(clips, name))
    for name, what in BOOL_SCORES.items():
        if name in clips.column_names:
            values = clips[name].to_pylist()
            if any(x is not None for x in values):
                imgs.append(figs.img(_bool_bars(values, name, what), f"score_{name}.png", name))
            else:
                notes.append(f"{name}: null for all {n} clips")
    return f'<h2>Scores</h2>{_notes(notes)}<div class="grid">{"".join(imgs)}</div>', notes


def _section_filters(figs: _Figures, rates: dict) -> str:
    if not rates.get("pass_rate"):
        return '<h2>Filters</h2><p class="note">No filter results (selection.parquet is absent or empty).</p>'
    return ("<h2>Filters</h2>" + figs.img(_keep_figure(rates), "keep_rate.png", "keep rate per filter", wide=True)
            + _notes(rates.get("notes", [])))


def _section_failures(figs: _Figures, fails: pa.Table | None, max_rows: int) -> str:
    """Bar chart of reasons and a table of failed inputs (every cell escaped: file names are hostile)."""
    if fails is None or not fails.num_rows:
        return '<h2>Failures</h2><p class="sub">No failed or rejected inputs.</p>'
    reasons = dict(Counter(fails["reason"].to_pylist()).most_common())
    outcomes = ", ".join(f"{k} {v}" for k, v in Counter(fails["outcome"].to_pylist()).most_common())
    chart = figs.img(_count_bars(reasons, f"failures by reason  ({fails.num_rows} rows: {outcomes})", "count",
                                 ACCENT), "failures.png", "failures by reason", wide=True)
    rows = sorted(fails.to_pylist(), key=lambda r: (str(r.get("reason")), str(r.get("source_uri"))))
    cols = ("source_uri", "outcome", "stage", "reason", "error_class", "message")
    trs = "".join("<tr>" + "".join(f'<td{" class=msg" if c == "message" else ""}>{_e(str(r.get(c) or "")[:400])}</td>'
                                   for c in cols) + "</tr>" for r in rows[:max_rows])
    more = f'<p class="sub">first {max_rows} of {len(rows)} rows</p>' if len(rows) > max_rows else ""
    head = "".join(f"<th>{c}</th>" for c in cols)
    return f'<h2>Failures</h2>{chart}<table style="margin-top:12px"><tr>{head}</tr>{trs}</table>{more}'


def _section_captions(figs: _Figures, clips: pa.Table) -> str:
    """Always present: the caption statuses and lengths, or why there are none."""
    present = [c for c in CAPTION_COLUMNS if c in clips.column_names]
    cols = [c for c in present if any(clips[c].to_pylist())]
    status = [f"{c}: " + ", ".join(f"{k} {v}" for k, v in Counter(clips[c].to_pylist()).most_common())
              for c in ("caption_status", "expand_status") if c in clips.column_names]
    head = "<h2>Captions</h2>" + "".join(f'<p class="sub">{_e(x)}</p>' for x in status)
    if not present:
        return head + _notes(["Not captioned: no caption columns (run `tessera caption` or `tessera build "
                              "--caption source`)."])
    counts = [f"{c}: {sum(bool(t) for t in clips[c].to_pylist())} of {clips.num_rows} clips" for c in present]
    head += f'<p class="sub">non-empty {_e("; ".join(counts))}</p>'
    if not cols:
        return head + _notes([f"Every caption column is empty for all {clips.num_rows} clips: see the statuses above."])
    return head + figs.img(_caption_lengths(clips, cols), "caption_lengths.png", "caption lengths", wide=True)


def _section_times(figs: _Figures, summary: dict) -> str:
    times = {k: v for k, v in summary.get("time_per_stage_s", {}).items() if isinstance(v, (int, float))}
    if not times:
        return ""
    wall = f"  (build wall {summary['wall_s']:.1f} s)" if summary.get("wall_s") is not None else ""
    chart = _count_bars(times, f"time per stage, summed over inputs{wall}", "seconds (CPU-side, all workers)",
                        PRIMARY, "{:.1f} s")
    return "<h2>Time per stage</h2>" + figs.img(chart, "time_per_stage.png", "time per stage", wide=True)


# ---------------------------------------------------------------------------------------------------------
# what a user checks a call with: warnings, sources, rejected clips, what-if thresholds, duplicate pairs
# ---------------------------------------------------------------------------------------------------------


def _conditions(selection: pa.Table | None) -> list:
    """The filter spec's conditions (``curate.filter.Condition``) from the selection's metadata; [] without."""
    raw = (selection.schema.metadata or {}).get(b"tessera.filter_spec") if selection is not None else None
    if not raw:
        return []
    from curate.filter import FilterSpec, spec_conditions

    try:
        spec = json.loads(raw)
        spec["expressions"] = tuple(spec.get("expressions", ()))
        return spec_conditions(FilterSpec(**spec))
    except (TypeError, ValueError):
        return []


def _warnings(data: Dataset, rates: dict) -> list[str]:
    """What a reader must know before trusting the page: missing captions, scores without a model, nothing kept."""
    clips, n, out = data.clips, data.clips.num_rows, []
    if not n:
        return ["The dataset has no clips."]
    present = [c for c in CAPTION_COLUMNS if c in clips.column_names]
    captioned = sum(any(clips[c][i].as_py() for c in present) for i in range(n)) if present else 0
    if present and captioned < n:
        status = Counter(clips["caption_status"].to_pylist()) if "caption_status" in clips.column_names else {}
        why = ", ".join(f"{k} {v}" for k, v in status.most_common() if k != "ok")
        out.append(f"{n - captioned} of {n} clips have no caption" + (f" (caption_status: {why})" if why else "")
                   + ": a text-to-video model learns nothing from them.")
    elif not present:
        out.append("No captions: this dataset was not captioned (tessera caption), so it cannot train text-to-video.")
    for name, status_col in STATUS_OF.items():
        if status_col in clips.column_names:
            missing = Counter(clips[status_col].to_pylist()).get("no-model", 0)
            if missing:
                out.append(f"{name}: no model for {missing} of {n} clips (status no-model); the score is empty, "
                           "not zero, and its filter keeps them.")
    if rates.get("clips") and rates.get("keep_rate") == 0:
        out.append("The filters keep no clip: see Filters and What if below.")
    dups = sum(x is not None for x in clips["duplicate_of"].to_pylist()) if "duplicate_of" in clips.column_names else 0
    if dups and dups >= n / 4:
        out.append(f"{dups} of {n} clips are marked near-duplicates: check the pairs below before trusting the call.")
    fails = data.failures.num_rows if data.failures is not None else 0
    if fails:
        out.append(f"{fails} inputs or clips failed or were rejected before publishing (see Failures).")
    return out


def _warning_box(warnings: list[str]) -> str:
    if not warnings:
        return '<div class="allgood">No warnings: every clip has a caption and every score had its model.</div>'
    return ('<div class="warn"><b>Check these first</b><ul>' + "".join(f"<li>{_e(w)}</li>" for w in warnings)
            + "</ul></div>")


def _selection_rows(data: Dataset) -> dict[str, dict]:
    if data.selection is None or not data.selection.num_rows:
        return {}
    return {r["clip_id"]: r for r in data.selection.to_pylist()}


def _first_fail(row: dict | None) -> str | None:
    if not row:
        return None
    return next((k[5:] for k, v in row.items() if k.startswith("pass_") and v is False), None)


def _section_sources(data: Dataset) -> str:
    """One row per source video: its clips, how many were kept, and why the others were not."""
    clips = data.clips
    if not clips.num_rows or "source_uri" not in clips.column_names:
        return ""
    sel = _selection_rows(data)
    dup = clips["duplicate_of"].to_pylist() if "duplicate_of" in clips.column_names else [None] * clips.num_rows
    per: dict[str, dict] = {}
    for cid, src, d in zip(clips["clip_id"].to_pylist(), clips["source_uri"].to_pylist(), dup):
        row = per.setdefault(src or "-", {"clips": 0, "kept": 0, "why": Counter()})
        row["clips"] += 1
        r = sel.get(cid)
        if r is None or r.get("keep"):
            row["kept"] += r is not None
        else:
            row["why"]["duplicate of another clip" if d else (_first_fail(r) or "?")] += 1
    failed = Counter(data.failures["source_uri"].to_pylist()) if data.failures is not None and \
        "source_uri" in data.failures.column_names else Counter()
    for src in failed:
        per.setdefault(src or "-", {"clips": 0, "kept": 0, "why": Counter()})
    trs = "".join(
        f'<tr><td title="{_e(src)}">{_e(os.path.basename(src) or src)}</td><td>{v["clips"]}</td><td>{v["kept"]}</td>'
        f'<td>{_e(", ".join(f"{k} {c}" for k, c in v["why"].most_common()) or "-")}</td>'
        f'<td>{failed.get(src, 0) or "-"}</td></tr>' for src, v in sorted(per.items()))
    return ("<h2>Sources</h2><table><tr><th>source</th><th>clips</th><th>kept</th><th>not kept: why (first failing "
            "filter)</th><th>failed rows</th></tr>" + trs + "</table>")


def _section_rejected(data: Dataset, conds: list, limit: int = 12) -> str:
    """The clips each filter rejected, with the value it judged."""
    sel = _selection_rows(data)
    if not sel:
        return ""
    values = {c.name: dict(zip(data.clips["clip_id"].to_pylist(), data.clips[c.column].to_pylist()))
              for c in conds if c.column in data.clips.column_names}
    rule = {c.name: f"{c.column} {c.op} {c.value}" for c in conds}
    names = [k[5:] for k in data.selection.column_names if k.startswith("pass_")]
    rows = ""
    for name in names:
        bad = [cid for cid, r in sel.items() if r.get(f"pass_{name}") is False]
        if not bad:
            continue
        shown = ", ".join(f"{cid} ({_fmt(values[name].get(cid))})" if name in values else cid for cid in bad[:limit])
        more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
        rows += (f"<tr><th>{_e(name)}</th><td>{_e(rule.get(name, name))}</td><td>{len(bad)}</td>"
                 f"<td class=msg>{_e(shown + more)}</td></tr>")
    if not rows:
        return '<h2>Rejected clips</h2><p class="sub">No filter rejected a clip.</p>'
    return ("<h2>Rejected clips</h2><table><tr><th>filter</th><th>rule</th><th>rejected</th><th>clips (value)</th>"
            "</tr>" + rows + "</table>")


WHAT_IF = (0.5, 0.75, 1.0, 1.5, 2.0)  # multiples of each numeric threshold in the what-if table


def _section_what_if(data: Dataset, conds: list) -> str:
    """Keep rate of the whole selection if one threshold were moved (the other filters as they are)."""
    sel = _selection_rows(data)
    numeric = [c for c in conds if not isinstance(c.value, bool) and c.column in data.clips.column_names]
    if not sel or not numeric:
        return ""
    ids = data.clips["clip_id"].to_pylist()
    passes = {k: np.array([bool(sel.get(i, {}).get(k, True)) for i in ids])
              for k in data.selection.column_names if k.startswith("pass_")}
    ops = {">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less}
    rows = ""
    for c in numeric:
        others = np.ones(len(ids), bool)
        for k, v in passes.items():
            if k != f"pass_{c.name}":
                others &= v
        col = data.clips[c.column].to_numpy(zero_copy_only=False).astype(np.float64)
        cells = []
        for m in WHAT_IF:
            t = c.value * m
            ok = np.isnan(col) | ops.get(c.op, np.greater_equal)(np.nan_to_num(col), t)  # unjudged clips pass
            cells.append(f"<td{' class=keep' if m == 1.0 else ''}>{100 * float(np.mean(ok & others)):.0f} % "
                         f"<span class=sub>({_fmt(t)})</span></td>")
        rows += f"<tr><th>{_e(c.name)}</th><td>{_e(c.column)} {_e(c.op)}</td>" + "".join(cells) + "</tr>"
    head = "".join(f"<th>x{m:g}</th>" for m in WHAT_IF)
    return ("<h2>What if: keep rate at other thresholds</h2><p class=sub>Share of all clips kept if one threshold "
            "were multiplied by the factor (threshold in brackets) and every other filter stayed as it is.</p>"
            f"<table><tr><th>filter</th><th>rule</th>{head}</tr>{rows}</table>")


def _write_video(src, path: Path) -> None:
    """The stored MP4 of a clip into the report folder (bytes from the shard, or a copy of its file)."""
    if isinstance(src, bytes):
        path.write_bytes(src)
    else:
        import shutil

        shutil.copyfile(src, path)


def _section_duplicates(data: Dataset, cfg: ReportConfig, out: Path) -> str:
    """Each near-duplicate beside the clip it duplicates, playable, with the distance of the rule that paired them
    (the sequence rule's score, or the pHash's Hamming distance)."""
    clips = data.clips
    if "duplicate_of" not in clips.column_names:
        return ""
    rows = {r["clip_id"]: r for r in clips.select([c for c in ("clip_id", "duplicate_of", "phash", "dedup_sig",
                                                               "dedup_method", "source_uri")
                                                   if c in clips.column_names]).to_pylist()}
    pairs = sorted((cid, r["duplicate_of"]) for cid, r in rows.items() if r.get("duplicate_of"))
    if not pairs:
        return '<h2>Near-duplicates</h2><p class="sub">No clip was marked a near-duplicate.</p>'
    shown = pairs[: cfg.duplicate_pairs]
    media = _media(data, sorted({c for p in shown for c in p if c in rows}))
    from curate.dedup import hamming, sequence_distance

    cards = []
    for k, (cid, partner) in enumerate(shown):
        a, b = rows[cid], rows.get(partner, {})
        if a.get("dedup_method") == "sequence" and a.get("dedup_sig") and b.get("dedup_sig"):
            score, look, motion = sequence_distance(a["dedup_sig"], b["dedup_sig"])
            what = (f"sequence distance {score:.2f} (a duplicate at <= 1; appearance {look:.3f}, "
                    f"motion {motion:.3f})")
        elif a.get("phash") and b.get("phash"):
            what = f"phash Hamming distance {hamming(a['phash'], b['phash'])} of 64"
        else:
            what = "distance not recorded"
        cells = []
        for side, (x, label) in enumerate(((cid, "duplicate"), (partner, "kept"))):
            src = media.get(x)
            body = '<p class="note">no stored media</p>'
            if src is not None and not isinstance(src, Exception):
                name = f"media/dup-{k:02d}-{side}.mp4"
                _write_video(src, out / name)
                body = f'<video controls muted preload="metadata" src="{_e(name)}"></video>'
            cells.append(f'<div>{body}<div class="meta"><b>{label}</b> {_e(x)} &middot; '
                         f'{_e(os.path.basename((rows.get(x) or {}).get("source_uri") or ""))}</div></div>')
        cards.append(f'<div class="sheet"><div class="pair">{"".join(cells)}</div><div class="meta">'
                     f'{_e(what)} &middot; method {_e(a.get("dedup_method") or "-")}</div></div>')
    more = f" (first {len(shown)} of {len(pairs)})" if len(pairs) > len(shown) else ""
    return f'<h2>Near-duplicates: {len(pairs)} pairs{more}</h2><div class="sheets">{"".join(cards)}</div>'



def main(cfg: ReportConfig) -> dict:
    """Write ``index.html`` and its PNGs for ``cfg.dataset``; returns what was written (paths, counts, notes)."""
    t0 = time.time()
    if is_uri(cfg.dataset) and not cfg.output:
        raise ValueError(f"{cfg.dataset} is on object storage: pass --out DIR for the report's local folder")
    root = cfg.dataset if is_uri(cfg.dataset) else Path(cfg.dataset)
    data = load_dataset(root)
    out = Path(cfg.output) if cfg.output else root / "report"
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    (out / "media").mkdir(exist_ok=True)
    for old in [*out.glob("*.png"), *(out / "sheets").glob("*.png"), *(out / "media").glob("*.mp4")]:  # earlier
        old.unlink()
    figs = _Figures(out, cfg.dpi)
    rates = _keep_rates(data)
    lines = _thresholds(data.selection)

    scores, score_notes = _section_scores(figs, data.clips, lines)
    sheets = _contact_sheets(data, cfg, out)
    conds = _conditions(data.selection)
    warnings = _warnings(data, rates)
    sections = [
        _warning_box(warnings),
        _header(data, rates),
        _section_sources(data),
        _section_captions(figs, data.clips),
        _section_clips(figs, data.clips, lines),
        scores,
        _section_filters(figs, rates),
        _section_rejected(data, conds),
        _section_what_if(data, conds),
        _section_duplicates(data, cfg, out),
        _section_failures(figs, data.failures, cfg.max_failure_rows),
        _section_times(figs, data.summary),
        sheets["html"],
    ]
    shown = cfg.dataset.rstrip("/") if is_uri(cfg.dataset) else str(Path(cfg.dataset).resolve())
    title = f"Tessera dataset report: {shown.rsplit('/', 1)[-1]}"
    s = data.summary
    sub = (f'{_e(shown)} &middot; built {_e(s.get("created_at", "-"))} &middot; fingerprint '
           f'{_e(s.get("fingerprint") or data.manifest.get("fingerprint", "-"))} &middot; report '
           f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}')
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<style>{CSS}</style></head><body><main><h1>{_e(title)}</h1><div class="sub">{sub}</div>'
            + "".join(sections) + "</main></body></html>")
    atomic_write_bytes(out / "index.html", page.encode("utf-8"))  # the page appears whole or not at all
    return {"index": str(out / "index.html"), "figures": figs.names + sheets["files"], "clips": data.clips.num_rows,
            "sheets": len(sheets["files"]), "notes": data.notes + score_notes, "warnings": warnings,
            "videos": sorted(p.name for p in (out / "media").glob("*.mp4")), "seconds": round(time.time() - t0, 2)}


def _contact_sheets(data: Dataset, cfg: ReportConfig, out: Path) -> dict:
    """One strip of frames per sampled clip, its caption, source and scores beneath."""
    clips = data.clips
    ids = sample_ids(clips["clip_id"].to_pylist(), cfg.sample_clips, cfg.seed)
    head = f"<h2>Contact sheets: {len(ids)} of {clips.num_rows} clips (sampled with seed {cfg.seed})</h2>"
    if not ids:
        return {"html": head, "files": []}
    media = _media(data, ids)
    keep, first_fail = {}, {}
    if data.selection is not None and data.selection.num_rows:
        passes = [c for c in data.selection.column_names if c.startswith("pass_")]
        for row in data.selection.select(["clip_id", "keep", *passes]).to_pylist():
            keep[row["clip_id"]] = row["keep"]
            first_fail[row["clip_id"]] = next((p[5:] for p in passes if not row[p]), None)
    rows = {r["clip_id"]: r for r in clips.filter(pc.field("clip_id").isin(ids)).to_pylist()}
    files, cards = [], []
    for k, cid in enumerate(ids):
        r = rows[cid]
        name = f"sheets/clip-{k:02d}.png"
        try:
            src = media.get(cid, ValueError("the clip has no stored media"))
            if isinstance(src, Exception):
                raise src
            decode_strip(src, cfg.frames_per_clip, cfg.thumb_height).save(out / name, optimize=False)
            files.append(name)
            video = f"media/clip-{k:02d}.mp4"
            _write_video(src, out / video)
            img = (f'<img src="{_e(name)}" alt="frames of clip {_e(cid)}">'
                   f'<video controls muted preload="metadata" src="{_e(video)}"></video>')
        except Exception as exc:  # a broken clip gets a note on its sheet, never a failed report
            img = f'<p class="note">could not decode this clip: {_e(type(exc).__name__)}: {_e(str(exc)[:200])}</p>'
        caps = [(c, r.get(c)) for c in CAPTION_COLUMNS if r.get(c)]
        cap = "".join(f'<div class="cap"><b>{_e(c.replace("caption_", ""))}:</b> {_e(t)}</div>' for c, t in caps) \
            or '<div class="cap sub">(no caption)</div>'
        status = ""
        if cid in keep:
            status = ('<span class="keep">kept</span>' if keep[cid]
                      else f'<span class="drop">rejected by {_e(first_fail[cid])}</span>') + " &middot; "
        scores = " &middot; ".join(f"{_e(s)} {_e(_fmt(r.get(s)))}" for s in
                                   ("sharpness", "luma_mean", "motion_mean", "text_coverage", "clip_aesthetic")
                                   if r.get(s) is not None and np.isfinite(r[s]))
        src = r.get("source_uri") or ""
        cards.append(
            f'<div class="sheet">{img}{cap}<div class="meta">{status}<b>{_e(os.path.basename(src))}</b> '
            f'frames {_e(r.get("start_frame"))}-{_e(r.get("end_frame"))} ({_fmt(r.get("start_s"), 4)}-'
            f'{_fmt(r.get("end_s"), 4)} s, {_fmt(r.get("duration_s"))} s, {_e(r.get("width"))}x{_e(r.get("height"))}'
            f' @ {_fmt(r.get("fps"))} fps)</div><div class="meta">{scores}</div>'
            f'<div class="meta">source: {_e(src)} &middot; clip {_e(cid)}</div></div>')
    return {"html": head + f'<div class="sheets">{"".join(cards)}</div>', "files": files}


def cli(argv: list[str] | None = None) -> int:
    """``tessera report DATASET [--out DIR] [--clips N] [--frames K] [--seed S]``."""
    ap = argparse.ArgumentParser(
        prog="tessera report", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write DATASET/report/index.html: histograms of duration, resolution, fps and every score, "
                    "keep rate per filter, failures by reason, caption lengths, time per stage and contact "
                    "sheets of sampled clips. Self-contained: open it in any browser, no network needed.")
    ap.add_argument("dataset", help="a dataset folder written by `tessera build` or `tessera caption`")
    ap.add_argument("--out", default=None, help="report folder (default DATASET/report)")
    ap.add_argument("--clips", type=int, default=ReportConfig.sample_clips, help="contact sheets to draw")
    ap.add_argument("--frames", type=int, default=ReportConfig.frames_per_clip, help="frames per contact sheet")
    ap.add_argument("--seed", type=int, default=ReportConfig.seed, help="which clips are sampled")
    a = ap.parse_args(argv)
    if is_uri(a.dataset) and not a.out:
        ap.error(f"{a.dataset} is on object storage: pass --out DIR for the report's local folder")
    res = main(ReportConfig(dataset=a.dataset, output=a.out, sample_clips=a.clips, frames_per_clip=a.frames,
                            seed=a.seed))
    print(f"[report] {res['clips']} clips, {len(res['figures'])} figures, {res['sheets']} contact sheets "
          f"in {res['seconds']:.1f} s -> {res['index']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
