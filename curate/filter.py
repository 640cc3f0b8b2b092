"""Thresholds as a query over score columns: changing a threshold re-runs this, never a scorer.

:func:`apply_filters` turns a clip table (or just its light columns) and a :class:`FilterSpec` into a selection
table: ``clip_id``, one boolean ``pass_<name>`` per active filter and ``keep`` (all of them). Rules:

- A clip whose score is null (or NaN) fails that filter: an unscored clip cannot pass a quality gate.
- Except for model-backed scores whose status column says ``no-model`` or is null (that stage did not run):
  a missing model never rejects a clip. ``clip_aesthetic`` null next to ``clip_status == "ok"`` means the
  embedding model ran without an aesthetic head and is treated the same way. Every such exemption is written
  as a note in the selection's schema metadata (``tessera.filter_notes``) and returned by :func:`keep_rates`.
- ``drop_duplicates`` drops clips whose ``duplicate_of`` is set.
- ``expressions`` add filters like ``"sharpness >= 40"`` or ``"motion_jitter == false"``: ``<column> <op>
  <constant>`` with op in ``>= > <= < == !=`` and a number or ``true``/``false``; parsed by a tiny tokenizer,
  never evaluated as Python. The pass column is named after the expression (``pass_sharpness_ge_40``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc

# Which status column vouches for a score column (absent from the table -> no exemption possible).
STATUS_OF = {
    "clip_aesthetic": "clip_status",
    "clip_embedding": "clip_status",
    "text_coverage": "ocr_status",
}
_OPS = {">=": ("greater_equal", "ge"), ">": ("greater", "gt"), "<=": ("less_equal", "le"),
        "<": ("less", "lt"), "==": ("equal", "eq"), "!=": ("not_equal", "ne")}  # fmt: skip


@dataclass(frozen=True)
class FilterSpec:
    """Every filter and its threshold; ``None`` (or ``False`` for the drop_* switches) turns a filter off.

    Defaults were set against the scores of 31 real test videos (PySceneDetect's test clips, Intel's sample videos,
    analysis size 160 px):
    real footage has sharpness 130-960, flat fades 0; burned-in UI text covers ~2-4 % of a frame.
    """

    min_sharpness: float | None = 25.0  # laplacian variance at 160 px
    min_luma_mean: float | None = 15.0  # 0-255
    max_luma_mean: float | None = 240.0
    max_black_share: float | None = 0.5  # share of sampled frames that are near-black
    min_motion: float | None = None  # motion_mean, px per frame at 160 px
    drop_static: bool = True
    drop_jitter: bool = True
    max_text_coverage: float | None = 0.02  # share of the frame under detected text (max over frames)
    min_aesthetic: float | None = 4.5  # LAION aesthetic scale; exempt when no aesthetic model ran
    drop_duplicates: bool = True
    min_duration: float | None = 2.0  # seconds
    max_duration: float | None = None
    expressions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    """One parsed filter: ``column op value`` named ``name``."""

    name: str
    column: str
    op: str
    value: float | bool


class FilterParseError(ValueError):
    """A filter expression is not ``<column> <op> <constant>``; the message shows the offending text."""


_EXPR = re.compile(
    r"^\s*(?P<col>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<val>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|true|false|True|False)\s*$"
)


def parse_expression(text: str) -> Condition:
    """Parse ``"<column> <op> <constant>"`` into a :class:`Condition` (raises :class:`FilterParseError`)."""
    m = _EXPR.match(text)
    if m is None:
        raise FilterParseError(
            f"cannot parse filter {text!r}: expected '<column> <op> <constant>' with op one of "
            f"{', '.join(_OPS)} and a number or true/false, e.g. 'sharpness >= 40'"
        )
    raw = m.group("val")
    value: float | bool = raw.lower() == "true" if raw.lower() in ("true", "false") else float(raw)
    if isinstance(value, bool) and m.group("op") not in ("==", "!="):
        raise FilterParseError(f"cannot parse filter {text!r}: true/false only compare with == or !=")
    slug = re.sub(r"[^a-z0-9]+", "_", f"{m.group('col')}_{_OPS[m.group('op')][1]}_{raw}".lower()).strip("_")
    return Condition(slug, m.group("col"), m.group("op"), value)


def spec_conditions(spec: FilterSpec) -> list[Condition]:
    """The active filters of ``spec`` in a fixed order (the order of rejection attribution)."""
    c: list[Condition] = []

    def add(name, column, op, value):
        if value is not None:
            c.append(Condition(name, column, op, value))

    add("min_sharpness", "sharpness", ">=", spec.min_sharpness)
    add("min_luma_mean", "luma_mean", ">=", spec.min_luma_mean)
    add("max_luma_mean", "luma_mean", "<=", spec.max_luma_mean)
    add("max_black_share", "black_share", "<=", spec.max_black_share)
    add("min_motion", "motion_mean", ">=", spec.min_motion)
    if spec.drop_static:
        add("drop_static", "motion_static", "==", False)
    if spec.drop_jitter:
        add("drop_jitter", "motion_jitter", "==", False)
    add("max_text_coverage", "text_coverage", "<=", spec.max_text_coverage)
    add("min_aesthetic", "clip_aesthetic", ">=", spec.min_aesthetic)
    add("min_duration", "duration_s", ">=", spec.min_duration)
    add("max_duration", "duration_s", "<=", spec.max_duration)
    c.extend(parse_expression(e) for e in spec.expressions)
    names = [x.name for x in c]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FilterParseError(f"filters named twice: {dupes}")
    return c


def _missing(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a score is absent: null, or NaN (Ray's numpy batches turn null floats into NaN)."""
    miss = pc.is_null(col)
    if pa.types.is_floating(col.type):
        miss = pc.or_(miss, pc.fill_null(pc.is_nan(col), True))
    return miss


def _exempt(table: pa.Table, column: str) -> tuple[pa.Array | None, str | None]:
    """Rows this column's model never scored (``no-model``, or no aesthetic head), and a note naming them."""
    status_col = STATUS_OF.get(column)
    if status_col is None or status_col not in table.column_names:
        return None, None
    status = table[status_col]
    mask = pc.fill_null(pc.equal(status, "no-model"), True)  # null status: that stage did not run
    why = f"{status_col}=no-model or stage not run"
    if column == "clip_aesthetic":
        mask = pc.or_(mask, pc.and_(pc.fill_null(pc.equal(status, "ok"), False), _missing(table[column])))
        why += " or no aesthetic head"
    return mask, why


def evaluate(table: pa.Table, cond: Condition) -> tuple[pa.ChunkedArray, str | None]:
    """Boolean pass column for one condition (never null) and, when rows were exempt, a note."""
    if cond.column not in table.column_names:
        raise KeyError(f"filter {cond.name!r} needs column {cond.column!r}, which the table does not have")
    col = table[cond.column]
    if isinstance(cond.value, bool) != pa.types.is_boolean(col.type):
        kind = "true/false" if pa.types.is_boolean(col.type) else "a number"
        raise FilterParseError(f"filter {cond.name!r}: column {cond.column!r} is {col.type}, compare it with {kind}")
    if not (pa.types.is_boolean(col.type) or pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise FilterParseError(f"filter {cond.name!r}: column {cond.column!r} is {col.type}, not a number or bool")
    passed = pc.fill_null(getattr(pc, _OPS[cond.op][0])(col, pa.scalar(cond.value)), False)
    passed = pc.and_(passed, pc.invert(_missing(col)))  # a missing score fails (NaN != x would pass)
    exempt, why = _exempt(table, cond.column)
    note = None
    if exempt is not None:
        n = pc.sum(exempt).as_py() or 0
        if n:
            passed = pc.or_(passed, exempt)
            note = f"{cond.name}: {n} of {table.num_rows} clips not judged ({why}); this filter kept them"
    return passed, note


def apply_filters(table: pa.Table, spec: FilterSpec = FilterSpec()) -> pa.Table:
    """Selection table: ``clip_id``, ``pass_<name>`` per active filter, ``keep``; notes in schema metadata."""
    if "clip_id" not in table.column_names:
        raise KeyError("the table has no clip_id column")
    cols = {"clip_id": table["clip_id"]}
    notes = []
    conds = spec_conditions(spec)
    for cond in conds:
        passed, note = evaluate(table, cond)
        cols[f"pass_{cond.name}"] = passed
        if note:
            notes.append(note)
    if spec.drop_duplicates:
        if "duplicate_of" not in table.column_names:
            raise KeyError("filter 'drop_duplicates' needs column 'duplicate_of', which the table does not have")
        cols["pass_drop_duplicates"] = pc.is_null(table["duplicate_of"])
    keep = pa.chunked_array([pa.array([True] * table.num_rows, pa.bool_())])
    for name, c in cols.items():
        if name != "clip_id":
            keep = pc.and_(keep, c)
    cols["keep"] = keep
    meta = {
        b"tessera.table": b"selection",
        b"tessera.filter_spec": json.dumps(asdict(spec), sort_keys=True).encode(),
        b"tessera.filter_notes": json.dumps(notes).encode(),
    }
    out = pa.table(cols)
    return out.replace_schema_metadata(meta)


def keep_rates(selection: pa.Table) -> dict:
    """Summary of a selection: clip count, keep rate, pass rate per filter, rejections and notes.

    ``rejected_first_by`` charges each rejected clip to the first filter (in column order) it fails, so
    ``keep_rate + sum(rejected_first_by.values()) == 1`` (for a non-empty selection).
    """
    n = selection.num_rows
    names = [c for c in selection.column_names if c.startswith("pass_")]
    meta = selection.schema.metadata or {}
    notes = json.loads(meta.get(b"tessera.filter_notes", b"[]"))
    if n == 0:
        return {"clips": 0, "keep_rate": None, "pass_rate": {}, "rejected_first_by": {}, "notes": notes}
    pass_rate, first = {}, {}
    still = pa.chunked_array([pa.array([True] * n, pa.bool_())])  # not yet charged to a filter
    for c in names:
        col = selection[c]
        name = c[len("pass_") :]
        pass_rate[name] = pc.sum(col).as_py() / n
        failed_here = pc.and_(still, pc.invert(col))
        first[name] = (pc.sum(failed_here).as_py() or 0) / n
        still = pc.and_(still, col)
    return {
        "clips": n,
        "keep_rate": pc.sum(selection["keep"]).as_py() / n,
        "pass_rate": pass_rate,
        "rejected_first_by": first,
        "notes": notes,
    }
