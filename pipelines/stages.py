"""Thin adapters between Ray Data and the Ray-free stages in ``curate/``.

Each adapter is a class so Ray runs it as an actor pool (models and sandbox processes load once). They add
timing columns (``t_<stage>``, seconds of work per row) that the driver sums into the run summary, and they
turn any exception into data: a stage that raises fails the whole Ray dataset (every input, not one), so an
error becomes a status on the row instead.
"""

from __future__ import annotations

import errno
import hashlib
import json
import time
from contextlib import contextmanager
from functools import partial

import numpy as np
import pyarrow as pa

from curate.probe import ProbeLimits, probe
from curate.remote import is_uri, local_copy
from curate.sandbox import Sandbox, SandboxCrashed, SandboxError, SandboxTimeout
from curate.schema import CLIP_SCHEMA, FAILURE_SCHEMA, SCHEMA_VERSION, validate
from curate.split import SPLIT_KEYS, SplitConfig, SplitStage, status_row
from curate.store import DataRoot, claim_content

# Write errors that no retry can fix: the writer reports them as data (a ``stop`` cell) and the driver ends the
# build with one line, instead of Ray aborting the dataset with a traceback per actor.
STOP_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)

TIMING_COLUMNS = ("t_probe", "t_split", "t_score_basic", "t_score_ocr", "t_score_clip", "t_caption", "t_write")

# Columns a scorer must not touch: everything the split stage produced.
_SCORER_STATUS = {"basic": None, "ocr": "ocr_status", "clip": "clip_status"}


class ProbeStage:
    """``map``: an input item -> its probe record (never raises).

    Probe runs in a sandbox worker too: a header that sends FFmpeg into a loop costs this input, not the run.
    """

    def __init__(self, limits: ProbeLimits, timeout_s: float = 120.0, claims_dir: str | None = None):
        self.limits = limits
        self.timeout_s = timeout_s
        self.claims_dir = claims_dir  # where content ids are claimed (same bytes twice: the second is rejected)
        self.sandbox = Sandbox()

    def __call__(self, item: dict) -> dict:
        t0 = time.perf_counter()
        if item.get("reject_reason"):
            row = {"status": "rejected", "reason": item["reject_reason"], "message": item.get("reject_message"),
                   "error_class": None, "content_id": None}
        else:
            try:
                claim = partial(claim_content, self.claims_dir, item["key"], item["uri"]) if self.claims_dir else None
                with _local(item["path"], self.limits.max_file_bytes) as path:
                    row = self.sandbox.run(probe, path, self.limits, uri=item["uri"], claim=claim,
                                           timeout_s=self.timeout_s)
            except SandboxTimeout as exc:
                row = _probe_failure("probe-timeout", "SandboxTimeout", str(exc))
            except SandboxCrashed as exc:
                row = _probe_failure("probe-crashed", "SandboxCrashed", str(exc))
            except SandboxError as exc:  # probe promises not to raise; if it does, the input still gets a row
                row = _probe_failure("probe-error", exc.class_name, exc.message)
            except OSError as exc:  # an object that could not be fetched from its storage
                row = _probe_failure("unreadable", type(exc).__name__, str(exc)[:500])
        row = dict(row)
        row.update(key=item["key"], path=item["path"], source_uri=item["uri"])
        row["t_probe"] = time.perf_counter() - t0
        # One JSON cell: probe records differ in shape between good and bad files, and Ray must not have to
        # unify their schemas across blocks.
        return {"key": item["key"], "probe_json": json.dumps(row, default=_json_default)}


@contextmanager
def _local(path: str, max_bytes: int | None = None):
    """A local path for ``path``: itself, or a temp copy of an object-storage URI (an object above
    ``max_bytes`` is not fetched: probe sees its size and rejects it as too large)."""
    if is_uri(path):
        with local_copy(path, max_bytes) as tmp:
            yield tmp
    else:
        yield path


def _probe_failure(reason: str, error_class: str, message: str) -> dict:
    return {"status": "failed", "reason": reason, "error_class": error_class, "message": message,
            "content_id": None}


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


class SplitFlatMap:
    """``flat_map``: a probe record -> clip rows (or one status row).

    ``score`` (a :class:`ScoreStage`'s arguments): the input's rows also go through the scorers and the staging
    writer in this actor, and the writer's small rows come out. The build does so on CPUs when no caption stage,
    GPU scorer or CLIP model comes after the split: on a machine whose cores the split stage keeps busy, a
    scorer actor of its own costs its process, its set-up and one hop of every clip's sampled frames and MP4
    bytes through the object store, and its work competes for the same cores anyway. Scores, staged files and
    rows are those of the separate stages (tested).
    """

    def __init__(self, cfg: SplitConfig, score: dict | None = None):
        self.stage = SplitStage(cfg)
        self.score = ScoreStage(**score) if score is not None else None

    def __call__(self, item: dict) -> list[dict]:
        probe_row = json.loads(item["probe_json"])
        try:
            if probe_row.get("status") == "ok" and is_uri(probe_row["path"]):
                with _local(probe_row["path"]) as path:  # the decoder reads a local copy, for this call only
                    rows = self.stage(dict(probe_row, path=path))
            else:
                rows = self.stage(probe_row)
        except Exception as exc:
            rows = [status_row(probe_row, "failed", "split", "split-error", type(exc).__name__, str(exc))]
        for r in rows:
            r["t_probe"] = 0.0
        rows[0]["t_probe"] = probe_row.get("t_probe", 0.0)
        if self.score is None:
            return rows
        # outside the try above: a scorer never raises for a row, and a write error must stop the build as the
        # writer's own stage would, not become this input's split failure
        return self.score(pa.Table.from_pylist(rows)).to_pylist()


def _make_scorer(name: str, kwargs: dict):
    if name == "basic":
        if kwargs.get("device", "cpu") != "cpu":  # --device cuda: the same columns from torch (curate/gpu.py)
            from curate.gpu import TorchScorer

            return TorchScorer(device=kwargs["device"])
        from curate.scores import BasicScorer

        return BasicScorer()
    if name == "ocr":
        from curate.ocr import TextOverlayScorer

        return TextOverlayScorer(**kwargs)
    if name == "clip":
        if kwargs.get("checkpoint") is None:  # no weights: the same columns, without importing torch (~1 CPU-s)
            return NoModelClip()
        from curate.clip_model import ClipScorer

        return ClipScorer(**kwargs)
    raise ValueError(f"unknown scorer {name!r}")


class NoModelClip:
    """What ``curate.clip_model.ClipScorer(checkpoint=None)`` writes, without torch: ``clip_status`` ``skipped``
    for a row without sampled frames, ``no-model`` for every other row, the other CLIP columns null."""

    columns = ("clip_embedding", "clip_aesthetic", "clip_model", "clip_status")

    def __call__(self, table: pa.Table) -> dict:
        import pyarrow.compute as pc

        empty = pc.equal(pc.fill_null(pc.binary_length(table.column("frames")), 0), 0)  # null or b""
        out = {c: pa.nulls(table.num_rows, CLIP_SCHEMA.field(c).type) for c in self.columns[:-1]}
        out["clip_status"] = pc.if_else(empty, "skipped", "no-model")
        return out


class ScoreStage:
    """``map_batches``: run scorers in turn over a batch, each appending only the columns it added.

    The split columns are passed through untouched (as Arrow), so a scorer can never corrupt lineage. If a
    scorer raises for the whole batch, its status column says ``error:<Class>`` on every row and the build
    goes on. Several scorers share one actor when they need the same resources: one process, one set-up and one
    hop through the object store instead of one per scorer (each actor of its own cost 3-4 CPU-s on the
    2-core benchmark machine). ``drop`` names columns removed once every scorer ran (the sampled frames, which no
    later stage reads). ``write`` (a :class:`StageWriter`'s arguments) writes the scored rows in the same actor
    and returns the writer's small rows: the build does so when nothing runs between the scorers and the writer,
    saving the writer's own actor and a hop of every clip's MP4 bytes through the object store.
    """

    def __init__(self, scorers: list[tuple[str, dict]], drop: tuple[str, ...] = (), write: dict | None = None):
        self.scorers = [(name, _make_scorer(name, kwargs)) for name, kwargs in scorers]
        self.drop = drop
        self.writer = StageWriter(**write) if write is not None else None

    def __call__(self, table: pa.Table) -> pa.Table:
        for name, scorer in self.scorers:
            table = _score(name, scorer, table)
        table = table.drop_columns([c for c in self.drop if c in table.column_names])
        return self.writer(table) if self.writer is not None else table


def _score(name: str, scorer, table: pa.Table) -> pa.Table:
    """``table`` with the columns ``scorer`` added, and ``t_score_<name>`` (its seconds per row)."""
    t0 = time.perf_counter()
    before = set(table.column_names)
    try:
        out = scorer(table)  # scorers take an Arrow table (real nulls) or a dict of numpy arrays
        if isinstance(out, pa.Table):
            added = {k: out.column(k) for k in out.column_names if k not in before}
        else:
            added = {k: v for k, v in out.items() if k not in before}
    except Exception as exc:
        status = _SCORER_STATUS.get(name)
        added = {status: np.array([f"error:{type(exc).__name__}"] * table.num_rows, dtype=object)} if status else {}
    for col, values in added.items():
        field = CLIP_SCHEMA.field(col) if col in CLIP_SCHEMA.names else None
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            arr = values.cast(field.type) if field is not None and values.type != field.type else values
        else:
            arr = pa.array(list(values), type=field.type if field else None, from_pandas=True)
        table = table.append_column(col, arr)
    dt = (time.perf_counter() - t0) / max(1, table.num_rows)
    return table.append_column(f"t_score_{name}", pa.array([dt] * table.num_rows, pa.float64()))


class StageWriter:
    """``map_batches``: write each input's rows of the batch to its staging folder; emit one small row per
    input row so the driver can count what landed and mark inputs done."""

    def __init__(self, root: str, fingerprint: str, store_media: str):
        self.root = DataRoot(root)  # a local path or a URI: the staged files go through its filesystem
        self.fingerprint = fingerprint
        self.store_media = store_media

    def __call__(self, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = table.to_pylist()
        by_key: dict[str, list[dict]] = {}
        for r in rows:
            by_key.setdefault(r["key"], []).append(r)
        file_of: dict[int, str | None] = {}
        stop = None
        try:
            self._write(by_key, file_of)
        except OSError as exc:  # full, read-only: every later write fails too; the driver stops the build
            if exc.errno not in STOP_ERRNOS and self.root.local:
                raise
            # object storage: pyarrow has already retried (its S3 client retries throttling and 5xx)
            stop = json.dumps({"errno": exc.errno, "strerror": exc.strerror or str(exc).splitlines()[0][:300],
                               "filename": str(exc.filename) if exc.filename else self.root.uri})
        dt = (time.perf_counter() - t0) / max(1, len(rows))
        out = {
            "key": [r["key"] for r in rows],
            "row_kind": [r["row_kind"] for r in rows],
            "outcome": [r["outcome"] for r in rows],
            "expected_rows": [r["expected_rows"] for r in rows],
            "file": [file_of.get(id(r)) for r in rows],
            "source_uri": [r["source_uri"] for r in rows],
            "content_id": [r["content_id"] for r in rows],
            "source_duration_s": [r["source_duration_s"] for r in rows],
            "source_frames": [r["source_frames"] for r in rows],
            "stop": [stop] * len(rows),
            "caption_failed": [any(str(r.get(c) or "").startswith("error:")
                                   for c in ("caption_status", "expand_status")) for r in rows],
        }
        for c in TIMING_COLUMNS:
            out[c] = [float(r.get(c) or 0.0) + (dt if c == "t_write" else 0.0) for r in rows]
        return pa.table(out)

    def _write(self, by_key: dict[str, list[dict]], file_of: dict[int, str | None]) -> None:
        for key, group in by_key.items():
            clips = [r for r in group if r["row_kind"] == "clip"]
            fails = [r for r in group if r["row_kind"] != "clip"]
            staging = f"_state/staging/{key[:2]}/{key}"
            if clips:
                path = f"{staging}/clips-{_group_name([r['clip_id'] for r in clips])}.parquet"
                self.root.write_table(path, self._clip_table(clips))
                for r in clips:
                    file_of[id(r)] = path
            if fails:
                name = _group_name([f"{r['clip_id']}:{r['reason']}" for r in fails])
                path = f"{staging}/failures-{name}.parquet"
                self.root.write_table(path, _failure_table(fails))
                for r in fails:
                    file_of[id(r)] = path

    def _clip_table(self, clips: list[dict]) -> pa.Table:
        records = []
        for r in clips:
            rec = {k: r.get(k) for k in CLIP_SCHEMA.names if k in r}
            mp4 = r["clip_mp4"]
            rec["clip_sha256"] = hashlib.sha256(mp4).hexdigest()
            if self.store_media == "path":
                rel = f"media/{r['clip_id'][:2]}/{r['clip_id']}.mp4"
                self.root.write_bytes(rel, mp4)
                rec["clip_path"], rec["clip_mp4"] = rel, None
            rec["build_fingerprint"] = self.fingerprint
            rec["schema_version"] = SCHEMA_VERSION
            records.append(rec)
        types = {f.name: f.type for f in CLIP_SCHEMA}
        cols = {n: pa.array([rec.get(n) for rec in records], type=types[n]) for n in CLIP_SCHEMA.names}
        return validate(pa.table(cols), CLIP_SCHEMA)


def _failure_table(rows: list[dict]) -> pa.Table:
    types = {f.name: f.type for f in FAILURE_SCHEMA}
    cols = {
        "source_uri": [r["source_uri"] for r in rows],
        "content_id": [r["content_id"] for r in rows],
        "outcome": [r["outcome"] or "failed" for r in rows],
        "stage": [r["stage"] or "split" for r in rows],
        "reason": [r["reason"] or "unknown" for r in rows],
        "error_class": [r["error_class"] for r in rows],
        "message": [r["message"] for r in rows],
        "clip_id": [r["clip_id"] for r in rows],
    }
    return validate(pa.table({n: pa.array(v, type=types[n]) for n, v in cols.items()}), FAILURE_SCHEMA)


def _group_name(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()[:16]


__all__ = ["ProbeStage", "SplitFlatMap", "ScoreStage", "StageWriter", "TIMING_COLUMNS",
           "SPLIT_KEYS"]
