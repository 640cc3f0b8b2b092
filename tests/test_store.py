"""Build state: atomic files, fingerprint refusal, done markers that cannot lie."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.schema import CLIP_SCHEMA, SchemaError, clip_id, rows_to_table, validate
from curate.store import BuildState, ConfigChanged, atomic_write_table, fingerprint


def test_fingerprint_is_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_changed_config_refused_then_overwrite_wipes(tmp_path):
    s = BuildState.open(tmp_path, "fp1", {"x": 1})
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "part-00000.parquet").write_bytes(b"old")
    with pytest.raises(ConfigChanged, match="changed: x"):
        BuildState.open(tmp_path, "fp2", {"x": 2})
    BuildState.open(tmp_path, "fp2", {"x": 2}, overwrite=True)
    assert not (tmp_path / "clips").exists()
    assert s.root == tmp_path


def test_mark_done_requires_its_files(tmp_path):
    s = BuildState.open(tmp_path, "fp", {})
    with pytest.raises(FileNotFoundError):
        s.mark_done("k" * 32, {"files": ["_state/staging/kk/nope.parquet"]})
    assert not s.is_done("k" * 32)
    atomic_write_table(tmp_path / "_state/staging/kk/yes.parquet", pa.table({"a": [1]}))
    s.mark_done("k" * 32, {"files": ["_state/staging/kk/yes.parquet"]})
    assert s.is_done("k" * 32)
    assert s.done_records()[0]["files"] == ["_state/staging/kk/yes.parquet"]


def test_atomic_table_write_leaves_no_temp(tmp_path):
    atomic_write_table(tmp_path / "t.parquet", pa.table({"a": [1, 2]}))
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 2
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_schema_validation_names_offenders():
    row = {"clip_id": clip_id("c", 0, 10), "source_uri": "u", "content_id": "c", "scene_index": 0,
           "window_index": 0, "start_frame": 0, "end_frame": 10, "start_s": 0.0, "end_s": 0.4, "fps": 25.0,
           "num_frames": 10, "duration_s": 0.4, "width": 64, "height": 48, "aspect": 1.33,
           "build_fingerprint": "fp", "schema_version": "1.0"}
    t = rows_to_table([row])
    assert t.schema.equals(CLIP_SCHEMA, check_metadata=False) and t.column("sharpness").null_count == 1
    with pytest.raises(SchemaError, match="unknown columns"):
        rows_to_table([dict(row, bogus=1)])
    with pytest.raises(SchemaError, match="required column 'clip_id'"):
        validate(t.drop(["clip_id"]))
    assert clip_id("c", 0, 10) != clip_id("c", 0, 11) and len(clip_id("c", 0, 10)) == 24
