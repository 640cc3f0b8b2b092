"""Resolve ``--input`` (a folder, a glob, or a list file) into a sorted, deterministic list of inputs.

Every candidate path ends up in the list, even the ones that cannot be used: a symlink that leads out of the
input root, a missing file, a directory named like a video, a FIFO or a device file, and a name that is not
valid UTF-8 become inputs with ``reject_reason`` set, so the build accounts for each in the failures table
instead of silently skipping it (or, for the name, failing the whole build when Arrow refuses the string).

Every uri is absolute: Ray workers on other nodes (or started from another folder) resolve relative paths
against their own working directory, so paths are made absolute here, on the driver, before any task sees them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from curate.remote import is_uri, list_objects

VIDEO_SUFFIXES = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv",
    ".flv", ".3gp", ".ogv", ".mxf", ".y4m",
)
LIST_SUFFIXES = (".txt", ".list", ".lst")


@dataclass(frozen=True)
class InputItem:
    """One input video. ``key`` names it in the build state (hash of the uri, so hostile names never reach a
    file name); ``reject_reason`` is set when the path must not be read."""

    uri: str
    path: str
    key: str
    reject_reason: str | None = None
    message: str | None = None


def input_key(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _within(path: str, root: str) -> bool:
    real, root_real = os.path.realpath(path), os.path.realpath(root)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def printable_uri(path: str) -> str:
    """``path`` as valid UTF-8 text. A name that is not UTF-8 reaches Python as lone surrogates
    (``surrogateescape``), which Arrow and JSON refuse; its bad bytes are written as ``\\xNN`` instead."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _item(uri: str, path: str, root: str | None) -> InputItem:
    """One candidate. ``path`` is what the OS is asked for (it may hold surrogate-escaped bytes); ``uri`` is
    its absolute, printable name, the one stored in every table."""
    path = os.path.abspath(path)
    uri = printable_uri(os.path.abspath(uri))
    key = input_key(path)
    if uri != path:
        return InputItem(uri, path, key, "name-not-utf8",
                         "the file name is not valid UTF-8 (bad bytes shown as \\xNN); rename it to include it")
    if root is not None and not _within(path, root):
        return InputItem(uri, path, key, "outside-input-root",
                         "the path resolves (through a symlink or '..') outside the input root")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return InputItem(uri, path, key, "missing", "no such file (or a dangling symlink)")
    except OSError as exc:
        return InputItem(uri, path, key, "unreadable", f"{type(exc).__name__}: {exc.strerror}")
    if not stat.S_ISREG(mode):
        return InputItem(uri, path, key, "not-a-file", f"the path is {_kind(mode)}, not a regular file")
    return InputItem(uri, path, key)


def resolve_inputs(spec: str | os.PathLike | list[str], *, suffixes=VIDEO_SUFFIXES) -> list[InputItem]:
    """Turn an input spec into inputs, sorted by uri.

    - a folder: every file below it with a video suffix (case-insensitive); the folder is the root that no
      input may escape;
    - a list file (``.txt``): one path per line, relative to the list file's folder unless absolute; blank
      lines and ``#`` comments ignored; no root restriction (the list names its files on purpose);
    - a glob pattern: its matches, rooted at the pattern's fixed leading folder;
    - a URI (``s3://bucket/prefix``, ``gs://...``, any fsspec protocol): every object below it with a video
      suffix, or the one object it names (``curate.remote``);
    - a Python list: each element resolved as above, concatenated.
    """
    if isinstance(spec, (list, tuple)):
        items = {it.uri: it for s in spec for it in resolve_inputs(s, suffixes=suffixes)}
        return sorted(items.values(), key=lambda it: it.uri)
    spec = os.fspath(spec)
    items: list[InputItem] = []
    if is_uri(spec):  # object storage: listed with its filesystem; workers read each object themselves
        for uri in list_objects(spec, suffixes):
            items.append(InputItem(uri, uri, input_key(uri)))
    elif os.path.isdir(spec):
        root = spec = os.path.abspath(spec)
        for dirpath, dirnames, filenames in os.walk(spec, followlinks=False):
            dirnames.sort()
            for name in dirnames:  # not followed; one that leads outside is reported, not silently skipped
                path = os.path.join(dirpath, name)
                if (os.path.islink(path) and not _within(path, root)) or name.lower().endswith(suffixes):
                    items.append(_item(path, path, root))  # ... and so is a directory named like a video
            for name in sorted(filenames):
                if name.lower().endswith(suffixes):
                    path = os.path.join(dirpath, name)
                    items.append(_item(path, path, root))
    elif os.path.isfile(spec) and spec.lower().endswith(LIST_SUFFIXES):
        base = os.path.dirname(os.path.abspath(spec))
        for line in Path(spec).read_text(encoding="utf-8", errors="surrogateescape").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = line if os.path.isabs(line) else os.path.join(base, line)
            items.append(_item(path, path, None))
    elif glob.has_magic(spec):
        fixed = []
        for part in Path(spec).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        root = os.path.abspath(os.path.join(*fixed) if fixed else ".")
        for path in sorted(glob.glob(spec, recursive=True)):
            if not os.path.isdir(path) or path.lower().rstrip(os.sep).endswith(suffixes):
                items.append(_item(path, path, root))
    elif os.path.exists(spec) or os.path.islink(spec):
        items.append(_item(spec, spec, None))
    else:
        raise FileNotFoundError(f"input {spec!r} is not a folder, a list file, a glob or a file")
    return sorted({it.uri: it for it in items}.values(), key=lambda it: it.uri)
