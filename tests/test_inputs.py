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
    assert set(items) == {"v/one.mp4", "v/missing.mp4"}
    assert items["v/one.mp4"].reject_reason is None
    assert items["v/missing.mp4"].reject_reason == "missing"


def test_glob_and_unknown_spec(tmp_path):
    _touch(tmp_path / "x" / "1.mp4")
    _touch(tmp_path / "x" / "2.mov")
    items = resolve_inputs(str(tmp_path / "x" / "*.mp4"))
    assert [Path(i.uri).name for i in items] == ["1.mp4"]
    with pytest.raises(FileNotFoundError):
        resolve_inputs(str(tmp_path / "nope"))
