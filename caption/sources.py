"""Captions and hints that come with the source video: sidecar files and a manifest column.

Looked up per row from ``source_uri`` (a local path or ``file://`` URI; nothing is ever fetched over a network).
A relative path is tried against, in order: the folder the build recorded in the dataset's ``config.json``
(``input_root`` or ``cwd``, when present), the dataset folder and the current working directory (``tessera
demo`` and older builds stored paths relative to where they ran). A source that none of them holds is reported
by ``SourceLookup.problem``, never silently taken for "no caption".

- sidecars next to the video: ``<stem>.txt`` (the whole text) or ``<stem>.json`` (first of the keys
  ``caption``, ``description``, ``title``; ``title`` and ``tags`` are joined in when both exist). A ``.json``
  with a ``shots`` list of ``{start, end, caption}`` (decoded-frame indices, end exclusive; what
  ``tessera samples`` writes) is a timed sidecar: a clip gets the caption of the shot it overlaps most, not the
  whole video's text;
- a column of the clip table itself (``column``), e.g. a caption carried over from an input manifest;
- a manifest file (``.parquet``, ``.csv`` or ``.jsonl``) mapping ``source_uri`` to a text column.

The text is untrusted: it is cleaned (control and bidi characters removed, whitespace collapsed), capped in
length, and is only ever used as the caption itself (``use="caption"``) or as quoted data inside the VLM
prompt (``use="hint"``). Sidecars larger than ``max_file_bytes`` are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from caption.templates import clean_text


@dataclass(frozen=True)
class SourceConfig:
    """Where source text comes from and what it is used for (``use``: ``caption``, ``hint`` or ``off``)."""

    use: str = "off"
    sidecar: bool = True
    column: str | None = None  # a column of the clip table holding source text
    manifest: str | None = None  # a file with columns ``source_uri`` and ``manifest_column``
    manifest_column: str = "caption"
    max_chars: int = 2000
    max_file_bytes: int = 65536


def local_path(source_uri: str | None) -> Path | None:
    """The local path a ``source_uri`` names, or None for remote or empty URIs."""
    if not source_uri:
        return None
    parsed = urlparse(str(source_uri))
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # http, s3, ... (a one-letter scheme is a Windows drive)
        return None
    return Path(str(source_uri))


def read_sidecar(video: Path, max_file_bytes: int = 65536) -> str | None:
    """Text from ``<stem>.txt`` or ``<stem>.json`` beside ``video``; None when there is none or it is unusable."""
    txt, js = video.with_suffix(".txt"), video.with_suffix(".json")
    try:
        if txt.is_file() and txt.stat().st_size <= max_file_bytes:
            return txt.read_text(encoding="utf-8", errors="replace")
        if js.is_file() and js.stat().st_size <= max_file_bytes:
            meta = json.loads(js.read_text(encoding="utf-8", errors="replace"))
            if not isinstance(meta, dict):
                return None
            text = next((meta[k] for k in ("caption", "description", "title")
                         if isinstance(meta.get(k), str) and meta[k].strip()), None)
            title = meta.get("title") if isinstance(meta.get("title"), str) else None
            tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
            if text and title and title != text:
                text = f"{title}. {text}"
            if text and tags:
                text = f"{text} (tags: {', '.join(str(t) for t in tags[:20])})"
            return text
    except (OSError, ValueError):
        return None
    return None


def _load_manifest(path: str, column: str) -> dict[str, str]:
    p = Path(path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p, columns=["source_uri", column]).to_pydict()
        pairs = zip(table["source_uri"], table[column])
    elif p.suffix == ".csv":
        import csv

        with p.open(newline="", encoding="utf-8") as fh:
            pairs = [(r.get("source_uri"), r.get(column)) for r in csv.DictReader(fh)]
    else:
        with p.open(encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        pairs = [(r.get("source_uri"), r.get(column)) for r in records]
    return {str(k): str(v) for k, v in pairs if k and v}


def read_timed_sidecar(video: Path, max_file_bytes: int = 65536) -> list[tuple[int, int, str]] | None:
    """``[(start, end, caption)]`` from a ``<stem>.json`` with a ``shots`` list; None when there is none."""
    js = video.with_suffix(".json")
    try:
        if not js.is_file() or js.stat().st_size > max_file_bytes:
            return None
        meta = json.loads(js.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    shots = meta.get("shots") if isinstance(meta, dict) else None
    if not isinstance(shots, list):
        return None
    out = []
    for s in shots:
        if isinstance(s, dict) and isinstance(s.get("caption"), str):
            try:
                out.append((int(s["start"]), int(s["end"]), s["caption"]))
            except (KeyError, TypeError, ValueError):
                continue
    return out or None


def best_shot_caption(shots: list[tuple[int, int, str]], start: int, end: int) -> str | None:
    """The caption of the shot overlapping frames ``[start, end)`` the most (None when none overlaps)."""
    best, best_overlap = None, 0
    for s, e, caption in shots:
        overlap = min(e, end) - max(s, start)
        if overlap > best_overlap:
            best, best_overlap = caption, overlap
    return best


class SourceLookup:
    """``lookup(row) -> cleaned text or None``, from the configured column, manifest or sidecar (in that order)."""

    def __init__(self, cfg: SourceConfig, dataset_dir: str | None = None):
        self.cfg = cfg
        self.dataset_dir = Path(dataset_dir) if dataset_dir else None
        self.roots = source_roots(self.dataset_dir)
        self._problems: dict[str, str] = {}
        self._manifest = _load_manifest(cfg.manifest, cfg.manifest_column) if cfg.manifest else {}
        self._sidecars: dict[str, str | None] = {}  # many clips share one source video
        self._timed: dict[str, list | None] = {}

    def lookup(self, row: dict) -> str | None:
        """The source text for one row (a dict with at least ``source_uri``)."""
        if self.cfg.use == "off":
            return None
        text = None
        if self.cfg.column and row.get(self.cfg.column):
            text = str(row[self.cfg.column])
        uri = row.get("source_uri")
        if text is None and uri and str(uri) in self._manifest:
            text = self._manifest[str(uri)]
        if text is None and self.cfg.sidecar and uri:
            if uri not in self._sidecars:
                path = self._locate(uri)
                self._sidecars[uri] = read_sidecar(path, self.cfg.max_file_bytes) if path else None
                self._timed[uri] = read_timed_sidecar(path, self.cfg.max_file_bytes) if path else None
            timed = self._timed.get(uri)
            if timed and row.get("start_frame") is not None and row.get("end_frame") is not None:
                text = best_shot_caption(timed, int(row["start_frame"]), int(row["end_frame"]))
            if text is None:
                text = self._sidecars[uri]
        text = clean_text(text, self.cfg.max_chars) if text else None
        return text or None

    def problem(self, row: dict) -> str | None:
        """Why ``lookup(row)`` found nothing when the reason is a missing or unreadable source (else None)."""
        return self._problems.get(str(row.get("source_uri")))

    def _locate(self, uri: str) -> Path | None:
        """The local file a ``source_uri`` names, trying the roots for a relative path; None (and a recorded
        problem) when it is not found."""
        path = local_path(uri)
        if path is None:
            return None
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        for candidate in candidates:
            if candidate.exists() or candidate.with_suffix(".txt").exists() or candidate.with_suffix(".json").exists():
                return candidate
        self._problems[str(uri)] = (f"source not found: {clean_text(str(uri), 300)} (tried "
                                    f"{', '.join(clean_text(str(c), 300) for c in candidates)})")
        return None


def source_roots(dataset_dir: Path | None) -> list[Path]:
    """Folders a relative ``source_uri`` may be relative to, most specific first (see the module docstring)."""
    roots: list[Path] = []
    if dataset_dir is not None:
        try:
            recorded = json.loads((dataset_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {}
        for key in ("input_root", "cwd"):
            value = recorded.get(key) if isinstance(recorded, dict) else None
            if isinstance(value, str) and value:
                roots.append(Path(value))
        roots.append(dataset_dir)
    roots.append(Path.cwd())
    return list(dict.fromkeys(roots))
