"""The filter query: a hand-built score table, rate bookkeeping, no-model exemption, expression parsing."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow as pa
import pytest

from curate.filter import (
    FilterParseError,
    FilterSpec,
    apply_filters,
    keep_rates,
    parse_expression,
)

OFF = FilterSpec(  # every built-in filter off; tests switch on what they need
    min_sharpness=None, min_luma_mean=None, max_luma_mean=None, max_black_share=None, drop_static=False,
    drop_jitter=False, max_text_coverage=None, min_aesthetic=None, drop_duplicates=False, min_duration=None,
)  # fmt: skip


def table() -> pa.Table:
    """Six clips: a good one, and one failing each of several filters; clip f has its OCR score missing."""
    return pa.table({
        "clip_id":       ["a",   "b",   "c",   "d",   "e",   "f"],
        "sharpness":     pa.array([200.0, 5.0, 300.0, 150.0, 90.0, 120.0], pa.float32()),
        "luma_mean":     pa.array([120.0, 110.0, 8.0, 130.0, 100.0, 90.0], pa.float32()),
        "black_share":   pa.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], pa.float32()),
        "motion_mean":   pa.array([1.0, 0.5, 0.0, 2.0, None, 0.8], pa.float32()),
        "motion_static": [False, False, True, False, None, False],
        "motion_jitter": [False, False, False, True, None, False],
        "text_coverage": pa.array([0.0, 0.0, 0.0, 0.3, 0.0, None], pa.float32()),
        "ocr_status":    ["ok", "ok", "ok", "ok", "ok", "error:RuntimeError"],
        "clip_aesthetic": pa.array([6.0, 3.0, 5.0, 5.5, 7.0, 4.0], pa.float32()),
        "clip_status":   ["ok"] * 6,
        "duration_s":    [4.0, 3.0, 5.0, 2.5, 1.0, 6.0],
        "duplicate_of":  [None, None, None, None, None, "a"],
    })  # fmt: skip


def keep_of(sel: pa.Table) -> dict:
    return dict(zip(sel["clip_id"].to_pylist(), sel["keep"].to_pylist()))


def test_defaults_on_a_hand_built_table():
    sel = apply_filters(table(), FilterSpec())
    assert sel.column_names[0] == "clip_id" and sel.column_names[-1] == "keep"
    assert keep_of(sel) == {"a": True, "b": False, "c": False, "d": False, "e": False, "f": False}
    col = dict(zip(sel.column_names, [c.to_pylist() for c in sel.columns]))
    assert col["pass_min_sharpness"] == [True, False, True, True, True, True]
    assert col["pass_min_luma_mean"] == [True, True, False, True, True, True]
    assert col["pass_drop_jitter"] == [True, True, True, False, False, True]  # null motion fails
    assert col["pass_max_text_coverage"] == [True, True, True, False, True, False]  # OCR error: null fails
    assert col["pass_min_aesthetic"] == [True, False, True, True, True, False]
    assert col["pass_min_duration"] == [True, True, True, True, False, True]
    assert col["pass_drop_duplicates"] == [True, True, True, True, True, False]
    assert json.loads(sel.schema.metadata[b"tessera.filter_spec"])["min_sharpness"] == 25.0


def test_rates_add_up():
    rates = keep_rates(apply_filters(table(), FilterSpec()))
    assert rates["clips"] == 6
    assert rates["keep_rate"] == pytest.approx(1 / 6)
    assert rates["keep_rate"] + sum(rates["rejected_first_by"].values()) == pytest.approx(1.0)
    assert rates["pass_rate"]["min_sharpness"] == pytest.approx(5 / 6)
    assert rates["rejected_first_by"]["min_sharpness"] == pytest.approx(1 / 6)  # b
    assert rates["rejected_first_by"]["min_luma_mean"] == pytest.approx(1 / 6)  # c (fails later ones too)
    assert rates["rejected_first_by"]["max_black_share"] == 0.0  # c already charged to min_luma_mean
    assert all(0.0 <= v <= 1.0 for v in rates["pass_rate"].values())


def test_no_model_never_rejects_and_says_so():
    t = table()
    t = t.set_column(t.column_names.index("clip_status"), "clip_status", pa.array(["no-model"] * 6))
    t = t.set_column(t.column_names.index("clip_aesthetic"), "clip_aesthetic", pa.nulls(6, pa.float32()))
    sel = apply_filters(t, FilterSpec(min_aesthetic=9.0))
    assert sel["pass_min_aesthetic"].to_pylist() == [True] * 6
    notes = keep_rates(sel)["notes"]
    assert any("min_aesthetic" in n and "no-model" in n and "6 of 6" in n for n in notes)
    # with the model present the same threshold rejects everything
    assert apply_filters(table(), FilterSpec(min_aesthetic=9.0))["pass_min_aesthetic"].to_pylist() == [False] * 6


def test_missing_aesthetic_head_does_not_reject():
    t = table()
    aes = pa.array([None, 3.0, None, None, None, None], pa.float32())
    t = t.set_column(t.column_names.index("clip_aesthetic"), "clip_aesthetic", aes)
    sel = apply_filters(t, replace(OFF, min_aesthetic=4.5))
    assert sel["pass_min_aesthetic"].to_pylist() == [True, False, True, True, True, True]
    assert "no aesthetic head" in keep_rates(sel)["notes"][0]


def test_ocr_no_model_exempts_text_filter():
    t = table()
    t = t.set_column(t.column_names.index("ocr_status"), "ocr_status", pa.array(["no-model"] * 6))
    sel = apply_filters(t, FilterSpec(max_text_coverage=0.01))
    assert sel["pass_max_text_coverage"].to_pylist() == [True, True, True, True, True, True]


def test_expressions():
    exprs = ("sharpness >= 100", "motion_jitter == false", "luma_mean<1e2", "duration_s != 5")
    spec = replace(OFF, expressions=exprs)
    sel = apply_filters(table(), spec)
    assert sel["pass_sharpness_ge_100"].to_pylist() == [True, False, True, True, False, True]
    assert sel["pass_motion_jitter_eq_false"].to_pylist() == [True, True, True, False, False, True]
    assert sel["pass_luma_mean_lt_1e2"].to_pylist() == [False, False, True, False, False, True]
    assert sel["pass_duration_s_ne_5"].to_pylist() == [True, True, False, True, True, True]
    assert keep_of(sel) == {"a": False, "b": False, "c": False, "d": False, "e": False, "f": True}


def test_all_off_keeps_everything():
    sel = apply_filters(table(), OFF)
    assert sel.column_names == ["clip_id", "keep"]
    assert keep_rates(sel)["keep_rate"] == 1.0


@pytest.mark.parametrize(
    "text, match",
    [
        ("sharpness >> 4", "cannot parse"),
        ("sharpness >= abc", "cannot parse"),
        ("__import__('os') >= 1", "cannot parse"),
        ("sharpness >= 4; drop", "cannot parse"),
        ("motion_static > true", "only compare"),
    ],
)
def test_parse_errors_are_clear(text, match):
    with pytest.raises(FilterParseError, match=match) as e:
        parse_expression(text)
    assert "<column> <op> <constant>" in str(e.value) or "true/false" in str(e.value)


def test_unknown_column_and_type_mismatch():
    with pytest.raises(KeyError, match="sharpnes"):
        apply_filters(table(), replace(OFF, expressions=("sharpnes >= 4",)))
    with pytest.raises(FilterParseError, match="true/false"):
        apply_filters(table(), replace(OFF, expressions=("motion_static >= 1",)))
    with pytest.raises(FilterParseError, match="not a number"):
        apply_filters(table(), replace(OFF, expressions=("clip_status == 1",)))


def test_parse_expression_values():
    c = parse_expression("  text_coverage<=0.05 ")
    assert (c.name, c.column, c.op, c.value) == ("text_coverage_le_0_05", "text_coverage", "<=", 0.05)
    assert parse_expression("motion_mean > -1.5e-1").value == pytest.approx(-0.15)


def test_nan_counts_as_missing():
    """Ray's numpy batches turn null floats into NaN: NaN must fail (even for !=) unless exempt."""
    t = table()
    t = t.set_column(t.column_names.index("sharpness"), "sharpness",
                     pa.array([float("nan"), 50, 50, 50, 50, 50], pa.float32()))
    sel = apply_filters(t, replace(OFF, expressions=("sharpness != 3", "sharpness >= 1")))
    assert sel["pass_sharpness_ne_3"].to_pylist()[0] is False
    assert sel["pass_sharpness_ge_1"].to_pylist() == [False] + [True] * 5
    aes = pa.array([float("nan")] * 6, pa.float32())  # no aesthetic head, NaN instead of null
    t = t.set_column(t.column_names.index("clip_aesthetic"), "clip_aesthetic", aes)
    assert apply_filters(t, replace(OFF, min_aesthetic=4.5))["pass_min_aesthetic"].to_pylist() == [True] * 6


def test_model_stage_that_did_not_run_does_not_reject():
    """schema.validate fills the columns of a stage that never ran with nulls, its status column included."""
    t = table()
    t = t.set_column(t.column_names.index("ocr_status"), "ocr_status", pa.nulls(6, pa.string()))
    t = t.set_column(t.column_names.index("text_coverage"), "text_coverage", pa.nulls(6, pa.float32()))
    sel = apply_filters(t, replace(OFF, max_text_coverage=0.01, min_sharpness=100.0))
    assert sel["pass_max_text_coverage"].to_pylist() == [True] * 6
    assert sel["pass_min_sharpness"].to_pylist() == [True, False, True, True, False, True]  # CPU scores: no pass
    assert "stage not run" in keep_rates(sel)["notes"][0]
