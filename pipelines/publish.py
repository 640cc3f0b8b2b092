"""The driver-side end of a build: dedup, publish the clip table, filter, summary, manifest.

Publishing rewrites the staged rows of every done input into ``clips/part-NNNNN-<sha12>.parquet`` in a fixed
order (source uri, then start frame), so the same inputs and config always give the same shard names and
contents, whatever order Ray finished them in.

A publish never overwrites a shard the current manifest lists: a shard's name carries its content hash, so a
new publish writes new names (or finds an identical file already there). Order: shards, failures, selection,
config, summary, then ``_manifest.json`` replaced atomically (its ``generation`` one higher), and only then the
shards no manifest lists any more are deleted. A crash at any step leaves the old manifest with all its shards,
or the new one with all of its: readers (``curate.store.open_dataset``) see one dataset or the other.

Everything goes through the dataset's filesystem (``curate.store.DataRoot``): a local folder, or object storage
by URI, where each file is one PUT (atomic per object) and a shard is uploaded under a temp name, then copied.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from collections import Counter
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.dedup import SequenceMemo, dedup_methods, find_duplicates
from curate.filter import apply_filters, keep_rates
from curate.schema import CLIP_SCHEMA, FAILURE_SCHEMA, SCHEMA_VERSION, validate
from curate.store import MANIFEST, BuildState, DataRoot, sha256_file, shard_record

# Test hook: called with the name of each publish step once it is done ("shard", "failures", "selection", "config",
# "summary", "manifest", "collect"); a test makes it raise to stand for a crash at that point.
CRASH_HOOK = None


def _step(name: str) -> None:
    if CRASH_HOOK is not None:
        CRASH_HOOK(name)


_DEDUP_COLUMNS = ["clip_id", "source_uri", "content_id", "start_frame", "clip_embedding", "phash", "dedup_sig",
                  "sharpness"]
# Everything but the media: what filters, reports and dedup read.
LIGHT_COLUMNS = [n for n in CLIP_SCHEMA.names if n not in ("clip_mp4",)]


def _read(root: DataRoot, files: list[str], columns: list[str] | None = None) -> pa.Table:
    tables = [root.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables) if tables else None


def finalize(state: BuildState, cfg, fp: str, *, items, skipped: int, graph_wall_s: float,
             memo: SequenceMemo | None = None) -> dict:
    """Dedup, publish, failures, filters and the summary numbers of a build whose inputs are done. ``memo``:
    dedup's pair decisions made while the inputs streamed in (:class:`curate.dedup.SequenceMemo`)."""
    root = state.root
    wanted = {it.key for it in items}
    records = [r for r in state.done_records() if r["key"] in wanted]
    records.sort(key=lambda r: r["uri"])

    # 1. the same bytes at two paths: the first uri keeps its clips, later ones are rejected with a pointer.
    first_uri: dict[str, str] = {}
    dup_inputs: list[dict] = []
    accepted: list[dict] = []
    for r in records:
        if r["outcome"] != "accepted":
            continue
        if r["content_id"] in first_uri:
            dup_inputs.append({"source_uri": r["uri"], "content_id": r["content_id"], "outcome": "rejected",
                               "stage": "dedup", "reason": "duplicate-content", "error_class": None,
                               "message": f"same bytes as {first_uri[r['content_id']]!r}", "clip_id": None})
            continue
        first_uri[r["content_id"]] = r["uri"]
        accepted.append(r)

    clip_files = {r["key"]: [f for f in r["files"] if Path(f).name.startswith("clips-")] for r in accepted}
    fail_files = [f for r in records for f in r["files"] if Path(f).name.startswith("failures-")]

    # 2. near-duplicate clips, from the light columns only.
    light = _read(root, [f for fs in clip_files.values() for f in fs], _DEDUP_COLUMNS)
    dup_of: dict[str, str | None] = {}
    method: dict[str, str] = {}
    ahead = memo.compared if memo is not None else 0  # sequence pairs compared while the inputs streamed in
    if light is not None and light.num_rows:
        light = light.sort_by([("source_uri", "ascending"), ("start_frame", "ascending")])
        ids = light.column("clip_id").to_pylist()
        embeddings = light.column("clip_embedding").to_pylist()
        # the sharpest copy of a group is kept (ties: the smallest id), so the choice is deterministic
        sigs = light.column("dedup_sig").to_pylist()
        dup_of = find_duplicates(ids, embeddings=embeddings, phashes=light.column("phash").to_pylist(),
                                 threshold=cfg.dedup, quality=light.column("sharpness").to_pylist(), signatures=sigs,
                                 memo=memo)
        method = dict(zip(ids, dedup_methods(embeddings, len(ids), sigs)))

    # 3. publish the clip table in a fixed order, rolling files at rows_per_file.
    shards = _publish(root, accepted, clip_files, dup_of, method, cfg.rows_per_file, cfg.row_group_size)

    # 4. failures: every rejected/failed input and clip, plus same-content inputs.
    fails = _read(root, fail_files)
    fail_tables = [validate(fails, FAILURE_SCHEMA)] if fails is not None else []
    if dup_inputs:
        fail_tables.append(validate(pa.Table.from_pylist(dup_inputs), FAILURE_SCHEMA))
    captions = _caption_rows(root, shards) if getattr(cfg, "caption", None) is not None else None
    if captions:  # failed captions and expansions: the clip is published with its status, and listed here
        from pipelines.caption import failure_rows

        fail_tables.append(pa.Table.from_pylist(failure_rows(captions), schema=FAILURE_SCHEMA))
    failures = pa.concat_tables(fail_tables) if fail_tables else FAILURE_SCHEMA.empty_table()
    failures = failures.sort_by([("source_uri", "ascending"), ("clip_id", "ascending")])
    root.write_table("failures.parquet", failures)
    _step("failures")

    # 5. filter selection over the published light columns (thresholds can be changed later: `tessera filter`).
    table = read_light(root, shards)
    selection = run_filters(root, table, cfg.filters)
    _step("selection")

    # 6. the numbers.
    outcomes = Counter(r["outcome"] for r in records)
    outcomes["accepted"] -= len(dup_inputs)
    outcomes["rejected"] += len(dup_inputs)
    missing = len(wanted) - len(records)
    times = Counter()
    for r in records:
        times.update({k: v for k, v in r.get("times", {}).items()})
    src_s = sum(r.get("source_duration_s") or 0.0 for r in records if r["outcome"] == "accepted")
    n_clips = table.num_rows if table is not None else 0
    # clips that were not published; a failed caption's clip is published and counted under "caption"
    lost = failures.filter(pc.invert(pc.is_in(failures.column("stage"), pa.array(["caption", "expand"]))))
    summary = {
        "dataset": root.uri, "fingerprint": fp, "schema_version": SCHEMA_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"total": len(wanted), "accepted": outcomes["accepted"], "rejected": outcomes["rejected"],
                   "failed": outcomes["failed"], "incomplete": missing, "resumed_skipped": skipped},
        "clips": {"published": n_clips, "failed": int(pc.sum(pc.is_valid(lost.column("clip_id"))).as_py() or 0),
                  "duplicates": sum(1 for v in dup_of.values() if v),
                  "kept_after_filters": selection["kept"] if selection else 0,
                  "dedup_method": dict(Counter(method.values())),
                  "dedup_pairs_compared": {"while_streaming": ahead,
                                           "at_publish": (memo.compared - ahead) if memo is not None else None}},
        "source_seconds_accepted": round(src_s, 3),
        "filters": selection["rates"] if selection else {},
        "failures_by_reason": dict(Counter(failures.column("reason").to_pylist()).most_common()),
        "failures_by_stage": dict(Counter(failures.column("stage").to_pylist()).most_common()),
        "models": _model_status(table, cfg),
        "time_per_stage_s": {k: round(v, 3) for k, v in sorted(times.items())},
        "graph_wall_s": round(graph_wall_s, 3),
        "shards": len(shards),
        "failures_rows": failures.num_rows,
    }
    if captions is not None:
        from pipelines.caption import status_counts

        summary.update(status_counts(captions))  # caption.failed / expand.failed, by reason
    summary["stages"] = _stage_counts(records, lost, table, dup_of, selection)
    summary["inputs"]["adds_up"] = (summary["inputs"]["accepted"] + summary["inputs"]["rejected"]
                                    + summary["inputs"]["failed"] + missing) == len(wanted)
    summary["_shards"] = shards
    return summary


def _publish(root: DataRoot, accepted: list[dict], clip_files: dict, dup_of: dict, method: dict,
             rows_per_file: int, row_group_size: int) -> list[dict]:
    """Write the clip shards under content-named files; returns their manifest entries. Deletes nothing.

    Each shard is written to a local temp file first (its name needs its hash), then placed whole
    (:meth:`DataRoot.put_file`)."""
    if root.local:
        root.local_path("clips").mkdir(exist_ok=True)
    scratch = root.local_path("clips") if root.local else None  # same disk: the placing is a rename
    shards: list[dict] = []
    writer = None
    tmp_path = None
    rows_in_file = 0

    def close():
        nonlocal writer, tmp_path, rows_in_file
        if writer is None:
            return
        writer.close()
        digest = sha256_file(tmp_path)
        final = f"clips/part-{len(shards):05d}-{digest[:12]}.parquet"
        if root.size(final) == os.path.getsize(tmp_path) and root.sha256(final) == digest:
            os.unlink(tmp_path)  # the same bytes are already published under this name: leave that file alone
        else:
            root.put_file(final, tmp_path)
        shards.append({"path": final, "rows": rows_in_file, "bytes": root.size(final), "sha256": digest})
        writer, tmp_path, rows_in_file = None, None, 0
        _step("shard")

    for rec in accepted:
        t = _read(root, clip_files[rec["key"]])
        if t is None or t.num_rows == 0:
            continue
        t = t.sort_by([("start_frame", "ascending")])
        ids = t.column("clip_id").to_pylist()
        t = t.set_column(t.schema.get_field_index("duplicate_of"), "duplicate_of",
                         pa.array([dup_of.get(i) for i in ids], pa.string()))
        t = t.set_column(t.schema.get_field_index("dedup_method"), "dedup_method",
                         pa.array([method.get(i) for i in ids], pa.string()))
        t = validate(t, CLIP_SCHEMA)
        start = 0
        while start < t.num_rows:
            if writer is None:
                fd, tmp_path = tempfile.mkstemp(prefix=f".part-{len(shards):05d}-", suffix=".parquet.tmp",
                                                dir=scratch)
                os.close(fd)
                writer = pq.ParquetWriter(tmp_path, CLIP_SCHEMA, compression="zstd")
            take = min(rows_per_file - rows_in_file, t.num_rows - start)
            writer.write_table(t.slice(start, take), row_group_size=row_group_size)
            rows_in_file += take
            start += take
            if rows_in_file >= rows_per_file:
                close()
    close()
    return shards


def collect_old_shards(root: DataRoot, shards: list[dict]) -> int:
    """After the manifest is replaced: delete clip shards it does not list (earlier publishes, temp files)."""
    keep = {PurePosixPath(s["path"]).name for s in shards}
    n = 0
    for rel in root.list("clips"):
        name = PurePosixPath(rel).name
        if rel.count("/") == 1 and name not in keep and (name.startswith(("part-", ".part-")) or name.endswith(".tmp")):
            root.delete(rel)
            n += 1
            _step("collect")
    return n


def _generation(root: DataRoot) -> int:
    try:
        return int(root.read_json(MANIFEST).get("generation", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _caption_rows(root: DataRoot, shards: list[dict]) -> list[dict]:
    """The caption status columns of the published clips (for the summary and failures.parquet)."""
    cols = ["clip_id", "source_uri", "content_id", "caption_short", "caption_dense", "caption_status",
            "caption_error", "caption_expanded", "expand_status", "expand_error"]
    return [r for s in shards for r in root.read_table(s["path"], columns=cols).to_pylist()]


def read_light(root, shards: list[dict]) -> pa.Table:
    """The light columns of ``shards`` (manifest entries) of the dataset at ``root`` (a path, URI or DataRoot)."""
    root = DataRoot(root)
    if not shards:
        return CLIP_SCHEMA.empty_table().select(LIGHT_COLUMNS)
    return pa.concat_tables([root.read_table(s["path"], columns=LIGHT_COLUMNS) for s in shards])


def run_filters(root, table: pa.Table, spec) -> dict:
    """Compute ``selection.parquet`` (in the dataset at ``root``, any filesystem) from the light clip columns;
    returns keep rates."""
    selection = apply_filters(table, spec)
    DataRoot(root).write_table("selection.parquet", selection)
    kept = int(pc.sum(selection.column("keep")).as_py() or 0) if selection.num_rows else 0
    return {"kept": kept, "rates": keep_rates(selection)}


def _stage_counts(records: list[dict], failures: pa.Table, table: pa.Table, dup_of: dict, selection) -> dict:
    """Rows in and out of every stage, so a reader can see where inputs and clips went."""
    whole = failures.filter(pc.is_null(failures.column("clip_id"))).to_pylist()
    per_clip = failures.filter(pc.is_valid(failures.column("clip_id"))).to_pylist()
    by_stage = Counter((r["stage"], r["outcome"]) for r in whole)
    probed = len(records) - by_stage[("input", "rejected")]
    probe_out = probed - by_stage[("probe", "rejected")] - by_stage[("probe", "failed")]
    produced = sum(r.get("clips", 0) for r in records)
    scores = Counter(table.column("scores_status").to_pylist()) if table is not None and table.num_rows else Counter()
    return {
        "probe": {"in": probed, "ok": probe_out, "rejected": by_stage[("probe", "rejected")],
                  "failed": by_stage[("probe", "failed")]},
        "split": {"in": probe_out, "clips_out": produced + len(per_clip),
                  "inputs_rejected": by_stage[("split", "rejected")], "inputs_failed": by_stage[("split", "failed")],
                  "clips_failed": sum(r["outcome"] != "rejected" for r in per_clip),
                  "clips_rejected": sum(r["outcome"] == "rejected" for r in per_clip)},
        "score": {"in": produced, "status": dict(scores.most_common())},
        "dedup": {"in": len(dup_of), "duplicates": sum(1 for v in dup_of.values() if v),
                  "same_content_inputs": by_stage[("dedup", "rejected")]},
        "publish": {"clips": table.num_rows if table is not None else 0},
        "filter": {"kept": selection["kept"] if selection else 0},
    }


def _model_status(table: pa.Table, cfg) -> dict:
    out = {}
    for name, col, model_col in (("clip", "clip_status", "clip_model"), ("ocr", "ocr_status", "ocr_model")):
        if table is None or table.num_rows == 0:
            out[name] = {"status": {}}
            continue
        counts = dict(Counter(table.column(col).to_pylist()).most_common())
        models = sorted({m for m in table.column(model_col).to_pylist() if m})
        entry = {"status": counts, "models": models}
        if counts.get("no-model"):
            entry["note"] = (f"{counts['no-model']} clips have no {name.upper()} score: no model configured"
                             + (" (pass --clip-checkpoint PATH)" if name == "clip" else ""))
        out[name] = entry
    return out


def write_summary_and_manifest(state: BuildState, summary: dict, cfg, fp: str) -> None:
    """The last steps of a publish: config, summary, the manifest (atomic rename), then old shards go."""
    root = state.root
    shards = summary.pop("_shards")
    root.write_json("config.json", {"fingerprint": fp, "config": cfg.fingerprinted(),
                                    "filters": json.loads(json.dumps(cfg.filters, default=_asdict))})
    _step("config")
    root.write_json("summary.json", summary)
    _step("summary")
    failures = shard_record(root, "failures.parquet", summary["failures_rows"])
    root.write_json(MANIFEST, {
        "format": "tessera-clips", "schema_version": SCHEMA_VERSION, "fingerprint": fp,
        "generation": _generation(root) + 1, "created_at": summary["created_at"], "shards": shards,
        "rows": sum(s["rows"] for s in shards),
        "tables": {"failures": failures, "selection": "selection.parquet", "summary": "summary.json"},
    })
    _step("manifest")
    collect_old_shards(root, shards)


def _asdict(obj):
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else str(obj)


def format_summary(s: dict) -> str:
    i, c = s["inputs"], s["clips"]
    lines = [
        f"[build] inputs {i['total']}: accepted {i['accepted']}, rejected {i['rejected']}, failed {i['failed']}"
        + (f", incomplete {i['incomplete']}" if i["incomplete"] else "") + ("" if i["adds_up"] else "  (DOES NOT ADD UP)"),
        f"[build] clips published {c['published']} in {s['shards']} shards, failed {c['failed']}, "
        f"near-duplicates {c['duplicates']} ({c['dedup_method']}), kept after filters {c['kept_after_filters']}",
    ]
    if s["failures_by_reason"]:
        lines.append("[build] failures by reason: " + ", ".join(f"{k} {v}" for k, v in s["failures_by_reason"].items()))
    for name, m in s["models"].items():
        if m.get("note"):
            lines.append(f"[build] {name}: {m['note']}")
    lines.append(f"[build] {s['source_seconds_accepted']:.1f} s of source video in {s['wall_s']:.1f} s wall; "
                 f"summary: {s['dataset']}/summary.json")
    return "\n".join(lines)
