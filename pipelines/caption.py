"""Captioning in a Ray graph, built once: ``tessera caption`` and ``tessera build --caption`` both call
``add_caption_stages``.

Recipe (``tessera caption``), per group of input shards ``DATASET/clips/part-NNNNN.parquet``:

    check_config(vlm, expand)                                                  # 0. fail before work (one line)
    ds = from_arrow(shards + _shard/_row tags).repartition(rows / batch)       # clips (1:1 below)
    ds = ds.map_batches(CaptionStage, compute=Pool(n), num_gpus=g)             # 1. frames + captions (+ QA)
    ds = ds.map_batches(ExpandStage, compute=Pool(m))                          # 2. expanded captions
    (Pool(n): ray.data.ActorPoolStrategy(size=n), n actors that load their model once)
    -> split by _shard, sort by _row -> OUTPUT/clips/<same name>.parquet (temp file, then rename)

Both stages take and return Arrow tables: only the columns captioning reads are handed to ``caption/`` as
numpy, and only the caption columns come back (typed by ``curate.schema.CLIP_SCHEMA``), so no lineage or score
column can change type. Rows whose ``row_kind`` is not ``clip`` (a build's status rows) pass through untouched.

Nothing is lost: a row whose caption (or expansion) fails keeps the caption (or expansion) it came in with,
with its provenance columns, and its status column carries the failure. Failures go to ``failures.parquet``
(stage ``caption`` / ``expand``, next to the input's own failures) and to ``caption_summary.json``
(``caption.failed`` / ``expand.failed`` with ``failed_by_reason``). ``_manifest.json`` is written last and only
when every row succeeded (or ``allow_partial``); ``tessera caption`` exits 3 otherwise. Re-runs:
successful captions and expansions are cached (``OUTPUT/_state/caption_cache.sqlite``) by hash(clip bytes or
text, template, model, settings) and failures are not, so the same command again asks exactly for the rows that
failed. While the stages run, the driver prints what the chat clients wait on (requests in flight, retries,
Retry-After waits) from ``OUTPUT/_state/progress/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from caption.chat import ChatSetupError, OpenAIEndpoint, check_endpoint, public_dict
from caption.expand import ExpandConfig, Expander, expand_prompt
from caption.frames import FrameConfig, make_frame_prep_fn
from caption.sources import SourceConfig
from caption.vlm import CaptionClipCheck, Captioner, VLMConfig, make_needs_frames
from curate.schema import CLIP_SCHEMA, FAILURE_SCHEMA
from curate.remote import is_uri
from curate.store import open_dataset, read_optional_table, read_table, sha256_file

log = logging.getLogger(__name__)
EXIT_PARTIAL = 3  # `tessera caption`: some rows failed (their previous captions kept); re-run to retry them


@dataclass(frozen=True)
class CaptionPipelineConfig:
    """Everything ``tessera caption`` needs; ``vlm.cache_path``/``expand.cache_path`` default into OUTPUT/_state."""

    input: str
    output: str
    vlm: VLMConfig = VLMConfig()
    expand: ExpandConfig = ExpandConfig()
    captioner_concurrency: int = 1
    expander_concurrency: int = 1
    batch_size: int = 8
    shards_per_run: int = 16  # shards captioned by one Ray dataset; the driver holds one group's output
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a private Ray; "auto" joins a running cluster
    num_cpus: int | None = None  # for ray.init when no Ray session is running
    object_store_bytes: int | None = None
    clip_model: str | None = None  # open_clip checkpoint: adds caption_clip_sim + caption_mismatch
    clip_arch: str = "ViT-B-32"
    clip_threshold: float = 0.2
    allow_partial: bool = False  # publish the manifest even when some rows failed
    probe: bool = True  # check_config sends one probe request per remote endpoint
    progress: bool = True  # print what the chat clients wait on


# ----------------------------------------------------------------------------------------------------------------
# Fail before work
# ----------------------------------------------------------------------------------------------------------------


def check_config(vlm: VLMConfig | None, expand: ExpandConfig | None, probe: bool = True,
                 flags: tuple[str, str] = ("--", "--expand-")) -> None:
    """``ChatSetupError`` (one line naming the flag to fix) when a caption or expand backend cannot work.

    Runs on the driver before any clip is read: model missing, key variable unset, server unreachable, key
    rejected, model unknown (a 404 on one probe request), local model directory missing.
    """
    remote = []
    for cfg, prefix in ((vlm, flags[0]), (expand, flags[1])):  # every static check before any request
        if cfg is None or cfg.backend in ("off", "source"):
            continue
        if cfg.backend == "openai":
            endpoint = replace(cfg.endpoint, model=cfg.model or cfg.endpoint.model)
            check_endpoint(endpoint, prefix, probe=False)
            remote.append((endpoint, prefix))
        elif cfg.backend == "transformers" and not (cfg.model and Path(cfg.model).is_dir()):
            raise ChatSetupError(f"{prefix}model must name a local model directory for the transformers backend "
                                 f"(got {cfg.model!r})")
    for endpoint, prefix in remote if probe else ():
        check_endpoint(endpoint, prefix, probe=True)


# ----------------------------------------------------------------------------------------------------------------
# Stages (Arrow in, Arrow out)
# ----------------------------------------------------------------------------------------------------------------

_CAPTION_INPUTS = ("clip_id", "clip_mp4", "clip_path", "source_uri", "start_frame", "end_frame", "clip_embedding")
_CAPTION_PROVENANCE = ("caption_backend", "caption_model", "caption_prompt_id", "caption_clip_sim",
                       "caption_mismatch")
_EXPAND_PROVENANCE = ("expand_model", "expand_template")
_TYPES = {f.name: f.type for f in CLIP_SCHEMA}


def _clip_rows(table: pa.Table) -> list[int]:
    """Indices of the rows to caption: all rows, or those with ``row_kind == "clip"`` in a build's stream."""
    if "row_kind" not in table.column_names:
        return list(range(table.num_rows))
    return [i for i, k in enumerate(table.column("row_kind").to_pylist()) if k == "clip"]


def _plain(value):
    """A numpy cell as a Python value (NaN -> None)."""
    if hasattr(value, "item") and np.ndim(value) == 0:
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def _column(table: pa.Table, name: str, rows: list[int]) -> list:
    if name not in table.column_names:
        return [None] * len(rows)
    values = table.column(name).to_pylist()
    return [values[i] for i in rows]


def _put_columns(table: pa.Table, rows: list[int], columns: dict[str, list]) -> pa.Table:
    """Set ``columns`` (values for ``rows``) on ``table``; other rows keep their value (or null)."""
    for name, values in columns.items():
        full = table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
        for j, i in enumerate(rows):
            full[i] = values[j]
        arr = pa.array(full, type=_TYPES.get(name, pa.string() if name.startswith("caption_") else None))
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


def _add_time(table: pa.Table, seconds: float) -> pa.Table:
    per_row = seconds / max(1, table.num_rows)
    if "t_caption" in table.column_names:
        values = [float(v or 0.0) + per_row for v in table.column("t_caption").to_pylist()]
        return table.set_column(table.column_names.index("t_caption"), "t_caption", pa.array(values, pa.float64()))
    return table.append_column("t_caption", pa.array([per_row] * table.num_rows, pa.float64()))


class CaptionStage:
    """``map_batches`` (pyarrow): frames, the VLM captioner and the optional caption/clip QA on the clip rows.

    A row whose caption fails keeps every caption kind it came in with (and that caption's backend, model and
    prompt id); ``caption_status``/``caption_error`` say what failed. ``timing`` adds the build's ``t_caption``
    column; ``mark_decoded`` adds ``_decoded`` (was the clip decoded here?) for ``tessera caption``'s summary.
    """

    def __init__(self, vlm: VLMConfig, dataset_dir: str | None, clip_check: dict | None = None,
                 timing: bool = False, mark_decoded: bool = False):
        self.vlm, self.timing, self.mark_decoded = vlm, timing, mark_decoded
        self.prep = make_frame_prep_fn(vlm.frames, dataset_dir, make_needs_frames(vlm, dataset_dir))
        self.captioner = Captioner(vlm, dataset_dir)
        self.check = CaptionClipCheck(**clip_check) if clip_check else None

    def __call__(self, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = _clip_rows(table)
        kinds = tuple(f"caption_{k}" for k in self.vlm.kinds)
        columns: dict[str, list] = {}
        if rows:
            sub = table.take(pa.array(rows, pa.int64()))
            wanted = (*_CAPTION_INPUTS, *(c for c in [self.vlm.source.column] if c))
            batch = {n: sub.column(n).to_numpy(zero_copy_only=False) for n in wanted if n in sub.column_names}
            batch = self.captioner(self.prep(batch))
            if self.check is not None:
                batch = self.check(batch)
            frames = batch.get("caption_frames")
            produced = [c for c in (*kinds, "caption_status", "caption_error", "caption_tokens",
                                    *_CAPTION_PROVENANCE) if c in batch]
            columns = {c: [_plain(v) for v in batch[c]] for c in produced}
            before = {c: _column(table, c, rows) for c in (*kinds, *_CAPTION_PROVENANCE)}
            for j in range(len(rows)):
                if columns["caption_status"][j] == "ok":
                    continue
                kept = [c for c in kinds if columns[c][j] is None and before[c][j] is not None]
                for c in kept + (list(_CAPTION_PROVENANCE) if kept else []):
                    columns.setdefault(c, [None] * len(rows))[j] = before[c][j]
            if self.mark_decoded:
                columns["_decoded"] = [isinstance(f, (bytes, bytearray, memoryview)) for f in
                                       (frames if frames is not None else [None] * len(rows))]
        table = _put_columns(table, rows, columns)
        if self.mark_decoded and "_decoded" not in table.column_names:
            table = table.append_column("_decoded", pa.array([False] * table.num_rows))
        return _add_time(table, time.perf_counter() - t0) if self.timing else table


class ExpandStage:
    """``map_batches`` (pyarrow): the expander on the clip rows. A row whose expansion fails keeps the expansion
    it came in with (and its model and template); ``expand_status``/``expand_error`` say what failed."""

    def __init__(self, expand: ExpandConfig, timing: bool = False):
        self.cfg, self.timing = expand, timing
        self.expander = Expander(expand)

    def __call__(self, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = _clip_rows(table)
        columns: dict[str, list] = {}
        if rows:
            sub = table.take(pa.array(rows, pa.int64()))
            wanted = (*self.cfg.input_columns, *self.cfg.context_columns)
            batch = {n: np.array(sub.column(n).to_pylist(), dtype=object) for n in wanted if n in sub.column_names}
            if not batch:
                batch = {"_none": np.array([None] * len(rows), dtype=object)}
            batch = self.expander(batch)
            columns = {c: [_plain(v) for v in batch[c]] for c in ("caption_expanded", "expand_status",
                                                                  "expand_error", *_EXPAND_PROVENANCE)}
            before = {c: _column(table, c, rows) for c in ("caption_expanded", *_EXPAND_PROVENANCE)}
            for j in range(len(rows)):
                if columns["expand_status"][j] not in ("ok", "skipped:off") and before["caption_expanded"][j]:
                    for c in ("caption_expanded", *_EXPAND_PROVENANCE):
                        columns[c][j] = before[c][j]
        table = _put_columns(table, rows, columns)
        return _add_time(table, time.perf_counter() - t0) if self.timing else table


def add_caption_stages(ds, vlm: VLMConfig, expand: ExpandConfig, dataset_dir: str | None, *, use_gpu: bool,
                       batch_size: int, captioners: int = 1, expanders: int = 1, clip_check: dict | None = None,
                       for_build: bool = False):
    """The caption stages on a Ray dataset of clip rows (pyarrow batches); ``tessera caption`` and ``tessera
    build --caption`` both build their graph with this. ``for_build``: add to the build's ``t_caption``."""
    from ray.data import ActorPoolStrategy

    gpu = {"num_gpus": 1} if use_gpu and vlm.backend == "transformers" else {}
    ds = ds.map_batches(CaptionStage, fn_constructor_kwargs={                               # 1. captions (1:1)
        "vlm": vlm, "dataset_dir": dataset_dir, "clip_check": clip_check, "timing": for_build,
        "mark_decoded": not for_build}, batch_format="pyarrow", batch_size=batch_size,
        compute=ActorPoolStrategy(size=captioners), num_cpus=_actor_cpus(vlm.backend), **gpu)
    ds = ds.map_batches(ExpandStage, fn_constructor_kwargs={"expand": expand, "timing": for_build},
                        batch_format="pyarrow", batch_size=batch_size,                     # 2. expansions (1:1)
                        compute=ActorPoolStrategy(size=expanders), num_cpus=_actor_cpus(expand.backend))
    return ds


def _actor_cpus(backend: str) -> float:
    """A local model needs a whole core; a client of a remote server mostly waits on the network."""
    return 1.0 if backend == "transformers" else 0.25


# ----------------------------------------------------------------------------------------------------------------
# Accounting (shared with the build's summary)
# ----------------------------------------------------------------------------------------------------------------


def status_counts(rows: list[dict]) -> dict:
    """``{"caption": {...}, "expand": {...}}``: ok, failed, failed_by_reason, kept_previous and other statuses."""
    out = {}
    for stage, status_col, text_col in (("caption", "caption_status", None), ("expand", "expand_status",
                                                                              "caption_expanded")):
        part = {"ok": 0, "failed": 0, "failed_by_reason": {}, "kept_previous": 0, "other": {}}
        for r in rows:
            status = r.get(status_col)
            if status is None:
                continue
            if status == "ok":
                part["ok"] += 1
            elif status.startswith("error:"):
                part["failed"] += 1
                reason = status[len("error:"):]
                part["failed_by_reason"][reason] = part["failed_by_reason"].get(reason, 0) + 1
                texts = [r.get(text_col)] if text_col else [v for k, v in r.items()
                                                             if k in ("caption_short", "caption_dense")]
                part["kept_previous"] += any(t is not None for t in texts)
            else:
                part["other"][status] = part["other"].get(status, 0) + 1
        out[stage] = part
    return out


def failure_rows(rows: list[dict]) -> list[dict]:
    """Rows of ``failures.parquet`` (``curate.schema.FAILURE_SCHEMA``) for every failed caption or expansion."""
    out = []
    for r in rows:
        for stage, col, err in (("caption", "caption_status", "caption_error"),
                                ("expand", "expand_status", "expand_error")):
            status = r.get(col)
            if status and status.startswith("error:"):
                out.append({"source_uri": r.get("source_uri") or "", "content_id": r.get("content_id"),
                            "outcome": "failed", "stage": stage, "reason": status[len("error:"):],
                            "error_class": None, "message": r.get(err), "clip_id": r.get("clip_id")})
    return out


def failure_line(summary: dict) -> str | None:
    """One line saying what failed, or None."""
    parts = []
    for stage in ("caption", "expand"):
        part = summary.get(stage, {})
        if part.get("failed"):
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(part["failed_by_reason"].items()))
            parts.append(f"{part['failed']} {stage} failures ({reasons}; {part['kept_previous']} kept their "
                         f"previous text)")
    return "; ".join(parts) or None


# ----------------------------------------------------------------------------------------------------------------
# Progress: what the chat clients are waiting on
# ----------------------------------------------------------------------------------------------------------------


class ProgressPrinter:
    """A driver thread that reads the actors' progress files (``caption.chat.ChatProgress``) and prints one line
    when something waits (a retry, a Retry-After) or every ``every_s`` while requests are in flight."""

    def __init__(self, folder: Path, every_s: float = 10.0, out=sys.stderr):
        self.folder, self.every_s, self.out = folder, every_s, out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tessera-progress", daemon=True)
        self.lines: list[str] = []

    def __enter__(self) -> "ProgressPrinter":
        self.folder.mkdir(parents=True, exist_ok=True)
        for f in self.folder.glob("*.json"):
            f.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def line(self) -> str | None:
        """The current state of every stage, or None when nothing is in flight or waiting."""
        totals: dict[str, dict] = {}
        for f in sorted(self.folder.glob("*.json")):
            try:
                snap = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            t = totals.setdefault(snap["label"], {"in_flight": 0, "waiting": 0, "retries": 0, "done": 0,
                                                  "failed": 0, "longest_wait_s": 0.0, "wait_reason": None})
            for k in ("in_flight", "waiting", "retries", "done", "failed"):
                t[k] += snap.get(k, 0)
            if snap.get("longest_wait_s", 0) > t["longest_wait_s"]:
                t["longest_wait_s"], t["wait_reason"] = snap["longest_wait_s"], snap.get("wait_reason")
        if not any(t["in_flight"] or t["waiting"] for t in totals.values()):
            return None
        parts = []
        for label, t in totals.items():
            part = (f"{label}: {t['in_flight']} in flight, {t['done']} done ({t['failed']} failed), "
                    f"{t['retries']} retries")
            if t["waiting"]:
                part += f", {t['waiting']} waiting up to {t['longest_wait_s']:.0f} s ({t['wait_reason']})"
            parts.append(part)
        return "[caption] " + " | ".join(parts)

    def _run(self) -> None:
        last, last_t = None, 0.0
        while not self._stop.wait(1.0):
            line = self.line()
            if line is None:
                continue
            waiting = "waiting" in line
            if (line != last and waiting) or time.time() - last_t >= self.every_s:
                print(line, file=self.out, flush=True)
                self.lines.append(line)
                last, last_t = line, time.time()


# ----------------------------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------------------------


def resolve(cfg: CaptionPipelineConfig) -> CaptionPipelineConfig:
    """Fill cache paths and progress folders into ``OUTPUT/_state`` where unset."""
    state = Path(cfg.output) / "_state"
    cache, progress = str(state / "caption_cache.sqlite"), str(state / "progress")
    vlm = replace(cfg.vlm, cache_path=cfg.vlm.cache_path or cache, progress_dir=progress)
    exp = replace(cfg.expand, cache_path=cfg.expand.cache_path or cache, progress_dir=progress)
    return replace(cfg, vlm=vlm, expand=exp)


def main(cfg: CaptionPipelineConfig) -> dict:
    """Caption every shard of ``cfg.input`` into ``cfg.output``; returns the summary (also written to disk).

    Raises ``ChatSetupError`` (before any clip is read) when a backend cannot work; ``summary["complete"]`` is
    False when some row failed.
    """
    import ray

    from curate.store import atomic_write_json, atomic_write_table
    from pipelines.ray_session import start_ray

    src, dst = (cfg.input if is_uri(cfg.input) else Path(cfg.input)), Path(cfg.output)  # input: a folder or URI
    if not is_uri(cfg.input) and src.resolve() == dst.resolve():
        raise ChatSetupError("--output must differ from --input (input shards are never modified)")
    shards = open_dataset(src).shards
    if not shards:
        raise ChatSetupError(f"no shards in {src}/clips")
    check_config(cfg.vlm, cfg.expand, probe=cfg.probe)
    cfg = resolve(cfg)
    (dst / "clips").mkdir(parents=True, exist_ok=True)
    (dst / "_manifest.json").unlink(missing_ok=True)  # published again only when this run completes
    atomic_write_json(dst / "caption_config.json", public_dict(cfg))
    start_ray(cfg.ray_address, num_cpus=cfg.num_cpus, object_store_bytes=cfg.object_store_bytes)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    clip_check = ({"checkpoint": cfg.clip_model, "model_name": cfg.clip_arch, "threshold": cfg.clip_threshold,
                   "kind": cfg.vlm.kinds[0]} if cfg.clip_model else None)

    t0, counts, manifest, failures, statuses = time.time(), {}, [], [], []
    progress = ProgressPrinter(Path(cfg.vlm.progress_dir)) if cfg.progress else None
    with progress or _Nothing():
        for start in range(0, len(shards), cfg.shards_per_run):  # one Ray dataset (one set of actors) per group
            group = shards[start:start + cfg.shards_per_run]
            tables = [read_table(shard) for shard in group]
            tagged = [t.append_column("_shard", pa.array(np.full(t.num_rows, k), pa.int32()))
                      .append_column("_row", pa.array(np.arange(t.num_rows), pa.int64()))
                      for k, t in enumerate(tables)]
            rows = sum(t.num_rows for t in tables)
            ds = ray.data.from_arrow(pa.concat_tables(tagged, promote_options="permissive"))
            ds = ds.repartition(max(1, min(256, -(-rows // cfg.batch_size))))
            ds = add_caption_stages(ds, cfg.vlm, cfg.expand, str(src), use_gpu=use_gpu, batch_size=cfg.batch_size,
                                    captioners=cfg.captioner_concurrency, expanders=cfg.expander_concurrency,
                                    clip_check=clip_check)
            parts: list[list] = [[] for _ in group]
            for ref in ds.to_arrow_refs():
                block = ray.get(ref)
                shard_ids = block.column("_shard").to_numpy()
                for k in np.unique(shard_ids):
                    parts[k].append(block.filter(pa.array(shard_ids == k)))
            for k, (source, table) in enumerate(zip(group, tables)):
                shard = Path(Path(source).name)  # the shard's file name (source: a path or a URI)
                blocks = [b for b in parts[k] if b.num_rows]
                if not blocks:
                    raise RuntimeError(f"{shard.name}: no rows came back")
                out = pa.concat_tables(blocks, promote_options="permissive").sort_by("_row")
                if out.num_rows != table.num_rows:  # never drop a row silently
                    raise RuntimeError(f"{shard.name}: {table.num_rows} rows in, {out.num_rows} out")
                _count(counts, "clips", out.num_rows)
                _count(counts, "decoded", int(sum(bool(x) for x in out.column("_decoded").to_pylist())))
                _count(counts, "caption_tokens", int(np.sum(out.column("caption_tokens").fill_null(0).to_numpy())))
                out = out.drop_columns(["_shard", "_row", "_decoded"])
                light = out.select([c for c in out.column_names if c not in ("clip_mp4", "clip_embedding")])
                records = light.to_pylist()
                statuses += records
                failures += failure_rows(records)
                atomic_write_table(dst / "clips" / shard.name, out)
                manifest.append({"path": f"clips/{shard.name}", "rows": out.num_rows,
                                 "sha256": sha256_file(dst / "clips" / shard.name)})
    _write_failures(src, dst, failures)
    selection = read_optional_table(src, "selection.parquet")
    if selection is not None:
        atomic_write_table(dst / "selection.parquet", selection)
    summary = {"counts": counts, "seconds": round(time.time() - t0, 2), "shards": len(shards),
               "vlm_backend": cfg.vlm.backend, "expand_backend": cfg.expand.backend, **status_counts(statuses)}
    for r in statuses:  # flat status counts too: "caption_status:ok", "expand_status:error:url", ...
        for col in ("caption_status", "expand_status"):
            _count(counts, f"{col}:{r.get(col)}", 1)
    summary["failed_rows"] = sum(1 for r in statuses if any(str(r.get(c) or "").startswith("error:")
                                                           for c in ("caption_status", "expand_status")))
    summary["complete"] = summary["failed_rows"] == 0
    atomic_write_json(dst / "caption_summary.json", summary)
    if summary["complete"] or cfg.allow_partial:
        atomic_write_json(dst / "_manifest.json", {"kind": "tessera-captioned", "source": str(src),
                                                   "complete": summary["complete"], "shards": manifest})
    return summary


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _write_failures(src, dst: Path, failures: list[dict]) -> None:
    """``OUTPUT/failures.parquet``: the input's failures, then this run's caption and expand failures."""
    from curate.store import atomic_write_table

    tables = [t for t in [read_optional_table(src, "failures.parquet")] if t is not None]
    if tables:
        tables[0] = tables[0].filter(pc.invert(pc.is_in(tables[0].column("stage"), pa.array(["caption", "expand"]))))
    tables.append(pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA))
    atomic_write_table(dst / "failures.parquet", pa.concat_tables(tables, promote_options="permissive"))


def _count(counts: dict, key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _endpoint_args(ap: argparse.ArgumentParser, prefix: str) -> None:
    ap.add_argument(f"--{prefix}base-url", default=None,
                    help="OpenAI-compatible server (default: $TESSERA_LLM_BASE_URL, $OPENAI_BASE_URL, OpenAI)")
    ap.add_argument(f"--{prefix}api-key-env", default=None, metavar="VAR",
                    help="name of the environment variable holding the key (the key itself is never an argument); "
                         "default: $OPENAI_API_KEY, sent only to OpenAI or to $OPENAI_BASE_URL")
    ap.add_argument(f"--{prefix}concurrency", type=int, default=16)
    ap.add_argument(f"--{prefix}timeout", type=float, default=60.0,
                    help="seconds one attempt may take in all (connect and every read)")


def _shared_chat_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--max-retry-wait", type=float, default=60.0,
                    help="longest wait before a retry, whatever a server's Retry-After asks (seconds)")
    ap.add_argument("--row-deadline", type=float, default=300.0,
                    help="seconds one request may take over all its attempts and waits")


def _endpoint(args, prefix: str) -> OpenAIEndpoint:
    p = prefix.replace("-", "_")
    return OpenAIEndpoint(base_url=getattr(args, f"{p}base_url"), api_key_env=getattr(args, f"{p}api_key_env"),
                          concurrency=getattr(args, f"{p}concurrency"), timeout_s=getattr(args, f"{p}timeout"),
                          max_retry_wait_s=args.max_retry_wait, deadline_s=args.row_deadline)


def _expand_args(ap: argparse.ArgumentParser, default_backend: str = "auto") -> None:
    ap.add_argument("--expand-backend", default=default_backend, choices=["auto", "openai", "transformers", "off"],
                    help="auto: openai when --expand-model, --expand-base-url or $TESSERA_LLM_MODEL is given, "
                         "else off")
    ap.add_argument("--expand-model", default=None, help="server model name or local causal-LM dir")
    ap.add_argument("--template", default="expand@v1")
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    _endpoint_args(ap, "expand-")


def _expand_backend(args) -> str:
    if args.expand_backend != "auto":
        return args.expand_backend
    given = args.expand_model or args.expand_base_url or os.environ.get("TESSERA_LLM_MODEL")
    return "openai" if given else "off"


def _expand_cfg(args, cache_path: str | None) -> ExpandConfig:
    return ExpandConfig(backend=_expand_backend(args), model=args.expand_model, template=args.template,
                        temperature=args.temperature, seed=args.seed, endpoint=_endpoint(args, "expand-"),
                        cache_path=cache_path)


def cli(argv: list[str] | None = None) -> int:
    """``tessera caption --input DATASET --output DATASET2 [options]``.

    Exit codes: 0 every row captioned (and expanded), 2 a configuration that cannot work (one line, nothing
    touched), 3 some rows failed (their previous captions kept, listed in failures.parquet; the same command
    retries exactly those rows; ``--allow-partial`` makes this 0 and publishes the manifest).
    """
    ap = argparse.ArgumentParser(prog="tessera caption", description="Add VLM and expanded captions to clips.")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--backend", default="transformers", choices=["transformers", "openai", "source"])
    ap.add_argument("--model", default=None, help="local VLM dir (transformers) or server model name (openai)")
    ap.add_argument("--kinds", default="short", help="comma list of caption kinds: short,dense")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--max-pixels", type=int, default=448 * 448)
    ap.add_argument("--source", default=None, choices=["off", "caption", "hint"],
                    help="use sidecar/manifest text as the caption or as a hint in the VLM prompt "
                         "(default: caption with --backend source, else off)")
    ap.add_argument("--source-column", default=None)
    ap.add_argument("--source-manifest", default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--captioners", type=int, default=1, help="captioner actors (one GPU each when GPUs exist)")
    ap.add_argument("--expanders", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--ray-address", default=None,
                    help='cluster address or "auto" (default: $RAY_ADDRESS, else "local", a private Ray)')
    ap.add_argument("--cache", default=None, help="cache file (default OUTPUT/_state/caption_cache.sqlite)")
    ap.add_argument("--clip-model", default=None, help="open_clip checkpoint for the caption/clip agreement check")
    ap.add_argument("--clip-arch", default="ViT-B-32")
    ap.add_argument("--clip-threshold", type=float, default=0.2)
    ap.add_argument("--allow-partial", action="store_true",
                    help="exit 0 and publish the manifest even when some rows failed (they keep their old captions)")
    ap.add_argument("--no-probe", action="store_true", help="skip the one probe request per server before work")
    _endpoint_args(ap, "")
    _expand_args(ap)
    _shared_chat_args(ap)
    args = ap.parse_args(argv)
    source = args.source or ("caption" if args.backend == "source" else "off")
    vlm = VLMConfig(backend=args.backend, model=args.model, kinds=tuple(k for k in args.kinds.split(",") if k),
                    frames=FrameConfig(n_frames=args.frames, max_pixels=args.max_pixels),
                    batch_size=args.batch_size, endpoint=_endpoint(args, ""), cache_path=args.cache,
                    source=SourceConfig(use=source, column=args.source_column, manifest=args.source_manifest))
    cfg = CaptionPipelineConfig(input=args.input, output=args.output, vlm=vlm, expand=_expand_cfg(args, args.cache),
                                captioner_concurrency=args.captioners, expander_concurrency=args.expanders,
                                batch_size=args.batch_size, num_cpus=args.num_cpus, ray_address=args.ray_address,
                                clip_model=args.clip_model, clip_arch=args.clip_arch,
                                clip_threshold=args.clip_threshold, allow_partial=args.allow_partial,
                                probe=not args.no_probe)
    if cfg.expand.backend == "off" and args.expand_backend == "auto":
        print("tessera caption: no --expand-model given: expansion is off (caption_expanded = the caption)",
              file=sys.stderr)
    try:
        summary = main(cfg)
    except (ChatSetupError, FileNotFoundError) as exc:
        print(f"tessera caption: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    line = failure_line(summary)
    if line:
        hint = ("published anyway (--allow-partial)" if cfg.allow_partial else
                "no manifest published; re-run the same command to retry exactly these rows, or pass --allow-partial")
        print(f"tessera caption: {line}; see {cfg.output}/failures.parquet; {hint}", file=sys.stderr)
        return 0 if cfg.allow_partial else EXIT_PARTIAL
    return 0


def expand_prompt_cli(argv: list[str] | None = None) -> int:
    """``tessera expand-prompt "a cat on a windowsill"``: prints the expanded prompt (the original on failure).

    Exit code 0 when expanded (or ``--expand-backend off``: the prompt as given), 2 when the original was kept
    (the reason goes to stderr) or the configuration cannot work (one line), so scripts can tell.
    """
    ap = argparse.ArgumentParser(prog="tessera expand-prompt", description="Rewrite a prompt like a training caption.")
    ap.add_argument("prompt")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", action="store_true", help="print status, model and template as JSON")
    _expand_args(ap, default_backend="openai")
    _shared_chat_args(ap)
    args = ap.parse_args(argv)
    cfg = _expand_cfg(args, args.cache)
    if cfg.backend == "openai":
        ep = replace(cfg.endpoint, model=cfg.model).resolved()
        if not ep.model:
            print(f"expand-prompt: no model: pass --expand-model NAME (and --expand-base-url URL; requests would go "
                  f"to {ep.display_url}), or --expand-backend off to print the prompt as given", file=sys.stderr)
            return 2
        if not ep.base_url:
            print(f"expand-prompt: no --expand-base-url or $TESSERA_LLM_BASE_URL: trying {ep.display_url}",
                  file=sys.stderr)
    try:
        check_config(None, cfg, probe=False)
        result = expand_prompt(args.prompt, cfg)
    except ChatSetupError as exc:
        print(f"expand-prompt: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"prompt": args.prompt, "expanded": result.text, "status": result.status,
                          "error": result.error, "model": result.model, "template": result.template}))
    else:
        print(result.text)
    if result.status not in ("ok", "skipped:off"):
        print(f"expand-prompt: kept the original ({result.status}: {result.error})", file=sys.stderr)
        return 2
    return 0
