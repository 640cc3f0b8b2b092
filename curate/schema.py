"""The clip table contract: column names and pyarrow schemas, defined once and validated on every write.

One row per scene clip. Every score column that comes from a model or an algorithm sits beside a ``*_model``
column naming it, and every model-backed score has a ``*_status`` column (``ok``, ``no-model``, ``skipped``,
``error:<Class>``), so a reader can always tell a real number from an absent one.

Bump ``SCHEMA_VERSION`` whenever a column is added, removed or changes meaning; readers check it.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

SCHEMA_VERSION = "1.2"  # 1.1: caption columns joined the clip table; 1.2: dedup_sig

# ---------------------------------------------------------------------------------------------------------
# clip table
# ---------------------------------------------------------------------------------------------------------

_LINEAGE = [
    pa.field("clip_id", pa.string(), nullable=False),  # hash(content_id, start_frame, end_frame)
    pa.field("source_uri", pa.string(), nullable=False),  # as the input listed it
    pa.field("content_id", pa.string(), nullable=False),  # sha256 of the source file bytes
    pa.field("scene_index", pa.int32(), nullable=False),
    pa.field("window_index", pa.int32(), nullable=False),  # >0 when a long scene was split into windows
    pa.field("start_frame", pa.int64(), nullable=False),  # decoded-frame index in the source, inclusive
    pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
    pa.field("start_s", pa.float64(), nullable=False),  # PTS of the first frame, source stream time (t0 = 0)
    pa.field("end_s", pa.float64(), nullable=False),  # PTS just after the last frame
    pa.field("cut_in", pa.string()),  # boundary kind before the clip: start | cut | dissolve | fade | window
    pa.field("cut_out", pa.string()),
]

_GEOMETRY = [
    pa.field("fps", pa.float64(), nullable=False),
    pa.field("num_frames", pa.int32(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),  # of the clip as stored (display orientation)
    pa.field("height", pa.int32(), nullable=False),
    pa.field("aspect", pa.float32(), nullable=False),  # display aspect width / height (sample aspect applied)
    pa.field("source_codec", pa.string()),
    pa.field("source_width", pa.int32()),
    pa.field("source_height", pa.int32()),
    pa.field("source_rotation", pa.int16()),  # degrees; clips are stored with the rotation applied
    pa.field("source_fps", pa.float64()),
    pa.field("source_is_vfr", pa.bool_()),
]

_MEDIA = [
    pa.field("clip_codec", pa.string()),  # h264
    pa.field("cut_method", pa.string()),  # copy | reencode
    pa.field("clip_mp4", pa.binary()),  # the clip itself (null when stored as a path)
    pa.field("clip_path", pa.string()),  # relative to the dataset root (null when stored as bytes)
    pa.field("clip_bytes", pa.int64()),
    pa.field("clip_sha256", pa.string()),
]

_SCORES = [
    pa.field("scores_status", pa.string()),  # the CPU scores (sharpness, exposure, motion, phash)
    pa.field("sharpness", pa.float32()),
    pa.field("sharpness_model", pa.string()),
    pa.field("luma_mean", pa.float32()),
    pa.field("luma_std", pa.float32()),
    pa.field("black_share", pa.float32()),
    pa.field("exposure_model", pa.string()),
    pa.field("motion_mean", pa.float32()),
    pa.field("motion_p90", pa.float32()),
    pa.field("motion_static", pa.bool_()),
    pa.field("motion_jitter", pa.bool_()),
    pa.field("motion_model", pa.string()),
    pa.field("clip_embedding", pa.list_(pa.float32())),
    pa.field("clip_aesthetic", pa.float32()),
    pa.field("clip_model", pa.string()),
    pa.field("clip_status", pa.string()),
    pa.field("text_coverage", pa.float32()),
    pa.field("ocr_model", pa.string()),
    pa.field("ocr_status", pa.string()),
    pa.field("phash", pa.string()),
    pa.field("dedup_sig", pa.binary()),  # curate.dedup.sequence_signature: 8 grey 32x32 thumbnails (8 KiB)
]

_BOOKKEEPING = [
    pa.field("duplicate_of", pa.string()),  # clip_id of the kept near-duplicate, null when this one is kept
    pa.field("dedup_method", pa.string()),  # clip-embedding | sequence | phash
    pa.field("build_fingerprint", pa.string(), nullable=False),
    pa.field("schema_version", pa.string(), nullable=False),
]

# Written by `tessera caption` / `tessera build --caption` (caption/): one column per caption kind, then how it
# was made. Nulls when captioning did not run; `caption_status` says why a caption is missing.
_CAPTIONS = [
    pa.field("caption_short", pa.string()),
    pa.field("caption_dense", pa.string()),
    pa.field("caption_backend", pa.string()),  # transformers | openai | source
    pa.field("caption_model", pa.string()),
    pa.field("caption_prompt_id", pa.string()),  # template id@version
    pa.field("caption_status", pa.string()),
    pa.field("caption_error", pa.string()),
    pa.field("caption_tokens", pa.int64()),
    pa.field("caption_clip_sim", pa.float32()),  # text-image similarity when a CLIP model is configured
    pa.field("caption_mismatch", pa.bool_()),
    pa.field("caption_expanded", pa.string()),
    pa.field("expand_status", pa.string()),
    pa.field("expand_error", pa.string()),
    pa.field("expand_model", pa.string()),
    pa.field("expand_template", pa.string()),
]
CAPTION_COLUMNS = tuple(f.name for f in _CAPTIONS)

CLIP_SCHEMA = pa.schema(
    _LINEAGE + _GEOMETRY + _MEDIA + _SCORES + _BOOKKEEPING + _CAPTIONS,
    metadata={b"tessera.schema_version": SCHEMA_VERSION.encode(), b"tessera.table": b"clips"},
)
CLIP_COLUMNS = tuple(CLIP_SCHEMA.names)


def clip_columns_schema(names: tuple[str, ...] | list[str]) -> pa.Schema:
    """The ``CLIP_SCHEMA`` fields named, in that order: the schema of clip shards written outside a build (test
    fixtures, the GPU loop's shot corpus), so their columns have the build's types. An unknown name is an error."""
    unknown = [n for n in names if n not in CLIP_SCHEMA.names]
    if unknown:
        raise KeyError(f"not clip columns: {unknown}")
    return pa.schema([CLIP_SCHEMA.field(n) for n in names])


# Columns that only travel between stages and never reach a shard.
TRANSIENT_COLUMNS = ("frames", "frames_pts")

# Scores that the dedup/filter stages read without touching the heavy media column.
LIGHT_COLUMNS = tuple(n for n in CLIP_COLUMNS if n not in ("clip_mp4",))

# ---------------------------------------------------------------------------------------------------------
# failures table: one row per input that did not yield clips, and per clip that failed a stage
# ---------------------------------------------------------------------------------------------------------

FAILURE_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("content_id", pa.string()),  # null when the file could not even be read
        pa.field("outcome", pa.string(), nullable=False),  # rejected | failed
        pa.field("stage", pa.string(), nullable=False),  # input | probe | split | score | write
        pa.field("reason", pa.string(), nullable=False),  # short kebab-case code, e.g. codec-not-allowed
        pa.field("error_class", pa.string()),
        pa.field("message", pa.string()),
        pa.field("clip_id", pa.string()),  # set when a single clip failed, null for a whole input
    ],
    metadata={b"tessera.schema_version": SCHEMA_VERSION.encode(), b"tessera.table": b"failures"},
)

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def clip_id(content_id: str, start_frame: int, end_frame: int) -> str:
    """Stable id of a clip: the same source bytes and frame span always give the same id (24 hex digits)."""
    key = f"{content_id}:{int(start_frame)}:{int(end_frame)}".encode()
    return hashlib.sha256(key).hexdigest()[:24]


class SchemaError(ValueError):
    """A table does not match the contract; the message names every offending column."""


def validate(table: pa.Table, schema: pa.Schema = CLIP_SCHEMA) -> pa.Table:
    """Check ``table`` against ``schema`` and return it cast to the schema's exact types and column order.

    Missing nullable columns are added as nulls (a stage that did not run leaves them empty, and its status
    column says why); unknown columns, missing required columns, nulls in required columns and impossible
    casts raise :class:`SchemaError`.
    """
    problems = []
    unknown = [n for n in table.column_names if n not in schema.names]
    if unknown:
        problems.append(f"unknown columns {unknown}")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                problems.append(f"missing required column {field.name!r}")
                continue
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if not field.nullable and col.null_count:
            problems.append(f"{col.null_count} nulls in required column {field.name!r}")
        try:
            columns.append(col.cast(field.type) if col.type != field.type else col)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            problems.append(f"column {field.name!r}: cannot cast {col.type} to {field.type} ({exc})")
    if problems:
        raise SchemaError("; ".join(problems))
    return pa.Table.from_arrays(columns, schema=schema)


def rows_to_table(rows: list[dict], schema: pa.Schema = CLIP_SCHEMA) -> pa.Table:
    """Build a validated table from row dicts (keys outside the schema are an error, as in :func:`validate`)."""
    names = list(dict.fromkeys(k for r in rows for k in r)) if rows else []
    data = {n: [r.get(n) for r in rows] for n in names}
    types = {f.name: f.type for f in schema}
    arrays = {}
    for n, values in data.items():
        arrays[n] = pa.array(values, type=types.get(n))
    return validate(pa.table(arrays) if arrays else schema.empty_table(), schema)
