"""Input resolution: folders, list files, globs, hostile names, symlinks that escape the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curate.inputs import input_key, resolve_inputs


def _touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_folder_is_recursive_sorted_and_filters_suffixes(tmp_path):
    _touch(tmp_path / "b.mp4")
    _touch(tmp_path / "sub" / "a.MKV")
    _touch(tmp_path / "notes.txt")
    items = resolve_inputs(tmp_path)
    assert {Path(i.uri).name for i in items} == {"b.mp4", "a.MKV"}
    assert [i.uri for i in items] == sorted(i.uri for i in items)
    assert all(i.reject_reason is None for i in items)


def test_symlink_out_of_root_is_rejected_not_skipped(tmp_path):
    outside = _touch(tmp_path / "outside" / "secret.mp4")
    root = tmp_path / "root"
    _touch(root / "ok.mp4")
    os.symlink(outside, root / "link.mp4")
    os.symlink(tmp_path / "outside", root / "linkdir")
    os.symlink(root / "ok.mp4", root / "inside_link.mp4")
    items = {Path(i.uri).name: i for i in resolve_inputs(root)}
    assert items["link.mp4"].reject_reason == "outside-input-root"
    assert items["linkdir"].reject_reason == "outside-input-root"
    assert items["inside_link.mp4"].reject_reason is None
    assert items["ok.mp4"].reject_reason is None


def test_hostile_names_get_safe_keys(tmp_path):
    names = ["new\nline.mp4", "quo'te\".mp4", "-rf.mp4", "ünï☃.mp4", "..dots...mp4"]
    for n in names:
        _touch(tmp_path / n)
    items = resolve_inputs(tmp_path)
    assert len(items) == len(names)
    for it in items:
        assert len(it.key) == 32 and all(c in "0123456789abcdef" for c in it.key)
        assert it.key == input_key(it.uri)


def test_list_file_relative_paths_comments_and_missing(tmp_path):
    _touch(tmp_path / "v" / "one.mp4")
    lst = tmp_path / "inputs.txt"
    lst.write_text("# my videos\nv/one.mp4\n\nv/missing.mp4\n")
    items = {i.uri: i for i in resolve_inputs(lst)}
    one, missing = str(tmp_path / "v" / "one.mp4"), str(tmp_path / "v" / "missing.mp4")
    assert set(items) == {one, missing}  # absolute: a worker started elsewhere resolves them the same way
    assert items[one].reject_reason is None
    assert items[missing].reject_reason == "missing"


def test_glob_and_unknown_spec(tmp_path):
    _touch(tmp_path / "x" / "1.mp4")
    _touch(tmp_path / "x" / "2.mov")
    items = resolve_inputs(str(tmp_path / "x" / "*.mp4"))
    assert [Path(i.uri).name for i in items] == ["1.mp4"]
    with pytest.raises(FileNotFoundError):
        resolve_inputs(str(tmp_path / "nope"))


def test_relative_specs_become_absolute(tmp_path, monkeypatch):
    _touch(tmp_path / "v" / "a.mp4")
    monkeypatch.chdir(tmp_path)
    for spec in ("v", "v/*.mp4", "v/a.mp4"):
        items = resolve_inputs(spec)
        assert [i.uri for i in items] == [str(tmp_path / "v" / "a.mp4")], spec
        assert items[0].path == items[0].uri and items[0].reject_reason is None


def test_special_files_and_bad_names_are_reported_not_skipped(tmp_path):
    """Each of these is one input with a reason: never skipped silently, never allowed to break a table."""
    root = tmp_path / "root"
    _touch(root / "ok.mp4")
    (root / "dir.mp4").mkdir()
    _touch(root / "dir.mp4" / "inner.mp4")  # a real video inside a folder named like one: still found
    os.mkfifo(root / "pipe.mp4")
    bad = os.path.join(os.fsencode(root), b"x\xff.mp4")
    with open(bad, "wb") as f:
        f.write(b"x")
    items = {Path(i.uri).name: i for i in resolve_inputs(root)}
    assert set(items) == {"ok.mp4", "dir.mp4", "inner.mp4", "pipe.mp4", "x\\xff.mp4"}
    assert items["ok.mp4"].reject_reason is None and items["inner.mp4"].reject_reason is None
    assert items["dir.mp4"].reject_reason == "not-a-file" and "directory" in items["dir.mp4"].message
    assert items["pipe.mp4"].reject_reason == "not-a-file" and "FIFO" in items["pipe.mp4"].message
    odd = items["x\\xff.mp4"]
    assert odd.reject_reason == "name-not-utf8"
    odd.uri.encode("utf-8")  # printable: Arrow and JSON take it
    assert os.fsencode(odd.path) == bad  # the real name is kept, as bytes, for the OS
    # a device file named in a list (the list names files on purpose, so no root check applies)
    lst = tmp_path / "devices.txt"
    lst.write_text("/dev/null\n")
    (dev,) = resolve_inputs(lst)
    assert dev.reject_reason == "not-a-file" and "device" in dev.message


def test_object_storage_uris_are_listed_and_fetched(tmp_path):
    """Any fsspec filesystem works as an input (fsspec's in-memory one here; S3 in tests/test_build_s3.py)."""
    fsspec = pytest.importorskip("fsspec")
    from curate.remote import is_uri, local_copy

    mem = fsspec.filesystem("memory")
    mem.pipe("/tessera-test/videos/b.mp4", b"bbbb")
    mem.pipe("/tessera-test/videos/sub/a.MOV", b"aa")
    mem.pipe("/tessera-test/videos/notes.txt", b"no")
    items = resolve_inputs("memory://tessera-test/videos")
    assert [i.uri for i in items] == ["memory://tessera-test/videos/b.mp4", "memory://tessera-test/videos/sub/a.MOV"]
    assert all(i.path == i.uri and i.reject_reason is None and i.key == input_key(i.uri) for i in items)
    assert is_uri(items[0].uri) and not is_uri(str(tmp_path)) and not is_uri("file:///x.mp4")
    with local_copy(items[0].uri) as local:
        assert Path(local).read_bytes() == b"bbbb" and local.endswith(".mp4")
    assert not Path(local).exists()
    with local_copy(items[0].uri, max_bytes=2) as local:  # too large: not fetched, only its size is there
        assert os.path.getsize(local) == 4 and Path(local).read_bytes() == b"\0" * 4
    with pytest.raises(FileNotFoundError):
        resolve_inputs("memory://tessera-test/nothing-here")
    mem.rm("/tessera-test", recursive=True)
