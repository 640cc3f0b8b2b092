"""Build state: atomic files, fingerprint refusal, done markers that cannot lie."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.schema import CLIP_SCHEMA, SchemaError, clip_id, rows_to_table, validate
from curate.store import (BuildState, ConfigChanged, DatasetError, DatasetNotFound, atomic_write_json,
                          atomic_write_table, fingerprint, open_dataset, write_manifest)


def test_fingerprint_is_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_changed_config_refused_then_overwrite_wipes(tmp_path):
    s = BuildState.open(tmp_path, "fp1", {"x": 1, "clips": {"min_s": 2.0, "max_s": 9}})
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "part-00000.parquet").write_bytes(b"old")
    with pytest.raises(ConfigChanged, match=r"changed: x: 1 -> 2\)"):
        BuildState.open(tmp_path, "fp2", {"x": 2, "clips": {"min_s": 2.0, "max_s": 9}})
    with pytest.raises(ConfigChanged, match=r"changed: clips.min_s: 2.0 -> 3.0; x: 1 -> 2\)"):
        BuildState.open(tmp_path, "fp2", {"x": 2, "clips": {"min_s": 3.0, "max_s": 9}})
    BuildState.open(tmp_path, "fp2", {"x": 2}, overwrite=True)
    assert not (tmp_path / "clips").exists()
    assert s.root.local_path() == tmp_path


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


def _tiny_dataset(root):
    for i in range(2):
        atomic_write_table(root / "clips" / f"part-{i:05d}.parquet", pa.table({"clip_id": [f"c{i}a", f"c{i}b"]}))
    return write_manifest(root, sorted((root / "clips").glob("*.parquet")))


def test_open_dataset_reads_only_the_manifest_and_checks_it(tmp_path):
    manifest = _tiny_dataset(tmp_path)
    assert manifest["rows"] == 4 and all(s["bytes"] and len(s["sha256"]) == 64 for s in manifest["shards"])
    atomic_write_table(tmp_path / "clips" / "part-99999.parquet", pa.table({"clip_id": ["stray"]}))  # unlisted
    ds = open_dataset(tmp_path, verify_sha256=True)
    assert ds.read(["clip_id"]).column("clip_id").to_pylist() == ["c0a", "c0b", "c1a", "c1b"]
    assert ds.rows == 4

    shard = tmp_path / manifest["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the hash can tell
    shard.write_bytes(bytes(data))
    open_dataset(tmp_path)  # sizes match
    with pytest.raises(DatasetError, match="sha256"):
        open_dataset(tmp_path, verify_sha256=True)
    shard.write_bytes(bytes(data) + b"x")
    with pytest.raises(DatasetError, match="bytes"):
        open_dataset(tmp_path)
    shard.unlink()
    with pytest.raises(DatasetError, match="missing"):
        open_dataset(tmp_path)


def test_open_dataset_refuses_unfinished_and_escaping_manifests(tmp_path):
    with pytest.raises(DatasetNotFound, match="no _manifest.json"):
        open_dataset(tmp_path)
    atomic_write_json(tmp_path / "_manifest.json", {"shards": [{"path": "../outside.parquet", "rows": 1}]})
    with pytest.raises(DatasetError, match="outside the dataset"):
        open_dataset(tmp_path)


def test_lease_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    import json
    import socket
    import subprocess
    import time

    from curate.store import LEASE, Lease, OutputLocked

    with Lease(tmp_path) as first:
        held = json.loads((tmp_path / LEASE).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            Lease(tmp_path).acquire()
        assert first.path.exists()
    assert not (tmp_path / LEASE).exists()  # released

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that existed on this host and is gone
    atomic_write_json(tmp_path / LEASE, {"host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time(),
                                         "token": "old"})
    with Lease(tmp_path):
        assert json.loads((tmp_path / LEASE).read_text())["pid"] == os.getpid()

    # a holder on another host: alive while it beats, stale once the heartbeat is older than the limit
    other = {"host": "node-17", "pid": 1, "token": "other"}
    atomic_write_json(tmp_path / LEASE, dict(other, heartbeat=time.time()))
    with pytest.raises(OutputLocked, match="node-17"):
        Lease(tmp_path, stale_after_s=60).acquire()
    atomic_write_json(tmp_path / LEASE, dict(other, heartbeat=time.time() - 61))
    with Lease(tmp_path, stale_after_s=60):
        assert json.loads((tmp_path / LEASE).read_text())["host"] == socket.gethostname()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lease_heartbeat_advances(tmp_path):
    import json
    import time

    from curate.store import LEASE, Lease

    with Lease(tmp_path, stale_after_s=0.4):
        t0 = json.loads((tmp_path / LEASE).read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / LEASE).read_text())["heartbeat"] > t0


def test_content_claims_one_winner_per_content(tmp_path):
    from curate.store import claim_content

    assert claim_content(tmp_path, "k1", "/v/a.mp4", "ab" * 32) is None  # first: holds it
    assert claim_content(tmp_path, "k2", "/v/c.mp4", "ab" * 32) == "/v/a.mp4"  # same bytes: told who holds them
    assert claim_content(tmp_path, "k1", "/v/a.mp4", "ab" * 32) is None  # the holder again (a resumed run)
    assert claim_content(tmp_path, "k2", "/v/c.mp4", "cd" * 32) is None  # other bytes


def test_lease_takeover_never_removes_a_fresh_lease(tmp_path, monkeypatch):
    """Two builds find the same stale lease; the first replaces it with its own before the second moves 'the
    stale one' aside. The second must put the first's lease back and refuse, not delete it."""
    import json
    import time

    from curate.store import LEASE, Lease, OutputLocked

    fresh = {"host": "node-a", "pid": 1, "token": "fresh", "heartbeat": time.time()}
    atomic_write_json(tmp_path / LEASE, fresh)
    stale = {"host": "node-b", "pid": 2, "token": "stale", "heartbeat": 0.0}
    real_read = Lease._read
    reads = iter([stale])  # what the second build saw a moment ago
    monkeypatch.setattr(Lease, "_read", lambda self: next(reads, None) or real_read(self))
    with pytest.raises(OutputLocked, match="node-a"):
        Lease(tmp_path, stale_after_s=60).acquire()
    assert json.loads((tmp_path / LEASE).read_text())["token"] == "fresh"
    assert [p.name for p in tmp_path.iterdir()] == [LEASE]


def test_data_root_on_a_local_disk(tmp_path):
    """The filesystem layer every stage writes through: whole files, listing, exclusive create, names kept
    inside the root."""
    from curate.store import DataRoot, read_optional_table

    root = DataRoot(tmp_path / "ds")
    assert root.local and root.uri == str(tmp_path / "ds")
    root.write_json("a/b.json", {"x": 1})
    root.write_table("t/p.parquet", pa.table({"a": [1, 2]}))
    assert root.read_json("a/b.json") == {"x": 1} and root.read_table("t/p.parquet").num_rows == 2
    assert root.list() == ["a/b.json", "t/p.parquet"] and root.list("nope") == []
    assert read_optional_table(root, "t/p.parquet").num_rows == 2 and read_optional_table(root, "x.parquet") is None
    assert root.create_new("lock", b"me") and not root.create_new("lock", b"you")
    assert root.read_bytes("lock") == b"me"
    scratch = tmp_path / "scratch.bin"
    scratch.write_bytes(b"shard")
    root.put_file("t/q.bin", scratch)
    assert root.read_bytes("t/q.bin") == b"shard" and not scratch.exists()
    assert root.sha256("t/q.bin") == __import__("hashlib").sha256(b"shard").hexdigest()
    root.delete_tree("t")
    root.delete("a/missing.json")  # absent: fine
    assert root.list() == ["a/b.json", "lock"]
    with pytest.raises(DatasetError, match="outside"):
        root.path("../escape")
    with pytest.raises(FileNotFoundError):
        root.read_bytes("a/none.json")
