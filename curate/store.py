"""On-disk state of a build: atomic files, the config fingerprint, staging shards and per-input done markers.

A build is resumable because an input counts as done only when its done-marker exists, and the marker is
written (temp name, then rename) after every staged file it lists is in place. A killed run leaves at most
unreferenced staging files and ``*.tmp`` names behind; :meth:`BuildState.open` clears both for inputs that are
not done, so the re-run rewrites them from scratch.

The dataset may live on any filesystem pyarrow or fsspec knows (:class:`DataRoot`: a local path, ``s3://``,
``gs://``, ...). On a local disk a file appears whole through a temp name and a rename; on object storage a PUT
is atomic per object (an upload cut short leaves no object), so files are written under their final names.
Nothing here imports Ray.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curate.remote import filesystem, is_uri

_UMASK = os.umask(0)
os.umask(_UMASK)


def _publishable(tmp: str) -> None:
    """Ready a finished temp file for its rename: its bytes on disk (fsync, so a manifest renamed into place after
    it never lists a file a power cut could leave empty), and the mode a plain open() would give (mkstemp creates
    0600 files; 0666 minus the umask)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publishable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, _json_bytes(obj))


def atomic_write_table(path: str | os.PathLike, table: pa.Table, *, row_group_size: int | None = None,
                       compression: str = "zstd") -> None:
    """Write a Parquet file under a temp name, then rename: a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".parquet.tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression=compression, row_group_size=row_group_size)
        _publishable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_table(source, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file by local path or URI (``s3://...``; credentials as :mod:`curate.remote` finds them)."""
    if is_uri(str(source)):
        fs, path = filesystem(str(source))
        return pq.read_table(path, columns=columns, filesystem=fs)
    return pq.read_table(source, columns=columns)


def parquet_file(source) -> pq.ParquetFile:
    """A ``ParquetFile`` (schema, row groups) by local path or URI."""
    if is_uri(str(source)):
        fs, path = filesystem(str(source))
        return pq.ParquetFile(fs.open_input_file(path))
    return pq.ParquetFile(source)


def read_optional_table(root, rel: str, columns: list[str] | None = None) -> pa.Table | None:
    """``root/rel`` (a local or URI dataset) as a table, or None when the file is absent."""
    root = DataRoot(root)
    return root.read_table(rel, columns=columns) if root.is_file(rel) else None


class DataRoot:
    """A dataset folder on its filesystem: a local path, or a URI (``s3://``, ``gs://``, any fsspec URL).

    Every name is relative to the root (POSIX separators). ``write_*`` make a file appear whole or not at all:
    a temp name and a rename on a local disk, one PUT (atomic per object) on object storage.
    """

    def __init__(self, spec: "str | os.PathLike | DataRoot"):
        if isinstance(spec, DataRoot):  # the same root: share its filesystem object
            self.local, self.uri, self.fs, self.base = spec.local, spec.uri, spec.fs, spec.base
            return
        self.local = not is_uri(str(spec))
        if self.local:
            self.uri = os.path.abspath(spec)
            self.fs, self.base = pafs.LocalFileSystem(), self.uri
        else:
            self.uri = str(spec).rstrip("/")
            self.fs, self.base = filesystem(self.uri)
            self.base = self.base.rstrip("/")

    def __repr__(self) -> str:
        return f"DataRoot({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def path(self, rel: str) -> str:
        """The path of ``rel`` inside the filesystem (what pyarrow calls take with ``filesystem=self.fs``)."""
        return f"{self.base}/{_rel(rel)}"

    def show(self, rel: str) -> str:
        """``rel`` as a user sees it: a local path or a full URI."""
        return f"{self.uri}/{_rel(rel)}"

    def local_path(self, rel: str = "") -> Path:
        if not self.local:
            raise ValueError(f"{self.uri} is not a local folder")
        return Path(self.uri) / _rel(rel) if rel else Path(self.uri)

    # -- reading ---------------------------------------------------------------------------------------------
    def info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(rel))

    def is_file(self, rel: str) -> bool:
        return self.info(rel).type == pafs.FileType.File

    def size(self, rel: str) -> int | None:
        i = self.info(rel)
        return i.size if i.type == pafs.FileType.File else None

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; FileNotFoundError when absent (on every filesystem)."""
        if self.local:
            return (Path(self.uri) / _rel(rel)).read_bytes()
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError:
            if not self.is_file(rel):
                raise FileNotFoundError(errno.ENOENT, "no such object", self.show(rel)) from None
            raise

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(rel), columns=columns, filesystem=self.fs)

    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path(rel)) as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    def list(self, rel: str = "") -> list[str]:
        """Every file below ``rel`` (recursive), relative to the root, sorted; [] when ``rel`` is absent."""
        sel = pafs.FileSelector(self.path(rel) if rel else self.base, recursive=True, allow_not_found=True)
        n = len(self.base) + 1
        return sorted(i.path[n:] for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    def read_many_json(self, rels: list[str]) -> list:
        """Many small JSON files; in parallel on object storage, where each read is a round trip."""
        if self.local or len(rels) < 2:
            return [self.read_json(r) for r in rels]
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(self.read_json, rels))

    # -- writing ---------------------------------------------------------------------------------------------
    def _again(self, fn, attempts: int = 4):
        """``fn()``, tried again after a storage error a retry can fix (a busy server's 5xx, a dropped
        connection): every write here is idempotent, a whole object under one name."""
        for k in range(attempts):
            try:
                return fn()
            except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
                raise
            except OSError:
                if k == attempts - 1:
                    raise
                time.sleep(0.5 * 2 ** k)

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:
            atomic_write_bytes(Path(self.uri) / _rel(rel), data)
            return

        def put():
            with self.fs.open_output_stream(self.path(rel)) as f:  # the object exists once the upload completes
                f.write(data)

        self._again(put)

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, _json_bytes(obj))

    def write_table(self, rel: str, table: pa.Table, *, row_group_size: int | None = None,
                    compression: str = "zstd") -> None:
        if self.local:
            atomic_write_table(Path(self.uri) / _rel(rel), table, row_group_size=row_group_size, compression=compression)
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=compression, row_group_size=row_group_size)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def put_file(self, rel: str, local: str | os.PathLike) -> None:
        """Move the local file ``local`` to ``rel`` whole: a rename on a local disk; on object storage an upload
        under a temp name (an upload cut short leaves only that name) and a server-side copy to ``rel``."""
        if self.local:
            _publishable(str(local))
            os.replace(local, Path(self.uri) / _rel(rel))
            return
        parent, name = PurePosixPath(_rel(rel)).parent, PurePosixPath(rel).name
        tmp = f"{parent}/.{name}.tmp" if str(parent) != "." else f".{name}.tmp"

        def upload():
            with open(local, "rb") as src, self.fs.open_output_stream(self.path(tmp)) as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)

        self._again(upload)
        self._again(lambda: self.fs.copy_file(self.path(tmp), self.path(rel)))
        self.delete(tmp)
        os.unlink(local)

    def create_new(self, rel: str, data: bytes, settle_s: float = 0.2) -> bool:
        """Create ``rel`` only if it does not exist; True when this call created it.

        Local: ``O_EXCL``, exact. Object storage offers no create-if-absent through pyarrow, so: look, PUT, wait
        ``settle_s`` for a racing writer's PUT to land, read back; of two racers that both looked before either
        wrote, the one whose bytes are read back wins (``data`` must differ between racers). A racer whose read
        came before the other's PUT landed can also believe it won: callers keep a second check downstream.
        """
        if self.local:
            path = Path(self.uri) / _rel(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.is_file(rel):
            return False
        self.write_bytes(rel, data)
        time.sleep(settle_s)
        try:
            return self.read_bytes(rel) == data
        except FileNotFoundError:
            return False

    def delete(self, rel: str) -> None:
        """Remove a file; absent is fine."""
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass
        except OSError:
            if self.is_file(rel):
                raise

    def delete_tree(self, rel: str) -> None:
        """Remove a folder (every object under the prefix) and everything in it; absent is fine."""
        if self.local:
            p = Path(self.uri) / _rel(rel)
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            return
        for f in self.list(rel):
            self.delete(f)
        self.delete(rel)


def _rel(rel: str) -> str:
    """``rel`` checked: relative, inside the root (a manifest is data, not trusted)."""
    p = PurePosixPath(str(rel).replace(os.sep, "/"))
    if p.is_absolute() or ".." in p.parts:
        raise DatasetError(f"{rel!r} points outside the dataset")
    return str(p)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def fingerprint(config: dict) -> str:
    """Stable hash of a JSON-able config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


_ABSENT = "(absent)"


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Every leaf that differs between two JSON configs, as ``"clips.min_s: 2.0 -> 3.0"`` (sorted)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            show = [v if v is _ABSENT else json.dumps(v, default=str) for v in (a, b)]
            out.append(f"{prefix}{k}: {show[0]} -> {show[1]}")
    return out


class ConfigChanged(RuntimeError):
    """The output folder holds a build made with a different config; mixing them is refused."""


class BuildState:
    """The ``_state`` folder of one dataset (on its filesystem): fingerprint, staging shards, done markers."""

    def __init__(self, root: "str | os.PathLike | DataRoot"):
        self.root = DataRoot(root)
        self.state = "_state"
        self.staging = "_state/staging"
        self.done_dir = "_state/done"

    @classmethod
    def open(cls, root, fp: str, config: dict, *, overwrite: bool = False) -> "BuildState":
        """Open (or start) the state of ``root`` for a build whose config fingerprint is ``fp``.

        A different fingerprint on disk raises :class:`ConfigChanged` unless ``overwrite`` (then the old
        build's state and published files are removed first).
        """
        self = cls(root)
        fp_file = f"{self.state}/fingerprint.json"
        try:
            old = self.root.read_json(fp_file)
        except FileNotFoundError:
            old = None
        if old is not None and old.get("fingerprint") != fp:
            if not overwrite:
                changed = config_changes(old.get("config", {}), config)
                raise ConfigChanged(
                    f"{self.root} was built with config {old.get('fingerprint')} and this run's config is {fp} "
                    f"(changed: {'; '.join(changed) or 'code version'}). Filter thresholds can change freely "
                    f"(`tessera filter`); for anything else use a new --output or pass --overwrite.")
            self.wipe()
        if self.root.local:
            for d in (self.staging, self.done_dir):
                self.root.local_path(d).mkdir(parents=True, exist_ok=True)
        self.root.write_json(fp_file, {"fingerprint": fp, "config": config})
        return self

    def wipe(self) -> None:
        for name in ("_state", "clips", "media", "failures.parquet", "selection.parquet", "summary.json",
                     "_manifest.json", "config.json"):
            self.root.delete_tree(name)

    # -- per input ------------------------------------------------------------------------------------------
    def marker_path(self, key: str) -> str:
        return f"{self.done_dir}/{key}.json"

    def staging_dir(self, key: str) -> str:
        return f"{self.staging}/{key[:2]}/{key}"

    def is_done(self, key: str) -> bool:
        return self.root.is_file(self.marker_path(key))

    def done_keys(self) -> set[str]:
        """The keys of every done input: one listing, not one look per input."""
        return {PurePosixPath(p).stem for p in self.root.list(self.done_dir) if p.endswith(".json")}

    def reset_inputs(self, keys: set[str]) -> None:
        """Forget the done markers and partial work of ``keys`` (called before they are processed again)."""
        for p in self.root.list(self.done_dir):
            if PurePosixPath(p).stem in keys:
                self.root.delete(p)
        for p in self.root.list(self.staging):  # _state/staging/<k2>/<key>/<file>
            parts = PurePosixPath(p).parts
            if len(parts) > 4 and parts[3] in keys:
                self.root.delete(p)
        if self.root.local:
            for key in keys:
                d = self.root.local_path(self.staging_dir(key))
                if d.exists():
                    shutil.rmtree(d)

    def reset_input(self, key: str) -> None:
        self.reset_inputs({key})

    def clear_temp_files(self) -> int:
        """Temp names a killed run left (local disks only: object storage has no partial objects)."""
        if not self.root.local:
            return 0
        n = 0
        for p in self.root.local_path().rglob("*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def mark_done(self, key: str, record: dict) -> None:
        for f in record.get("files", []):
            if not self.root.is_file(f):
                raise FileNotFoundError(f"refusing to mark {key} done: staged file {f} is missing")
        self.root.write_json(self.marker_path(key), record)

    def content_claims(self) -> str:
        """Where inputs claim their content ids (a path or URI, for the probe actors)."""
        return self.root.show(f"{self.state}/content")

    def done_records(self) -> list[dict]:
        return self.root.read_many_json([p for p in self.root.list(self.done_dir) if p.endswith(".json")])


# ---------------------------------------------------------------------------------------------------------
# the published dataset: one way to open it
# ---------------------------------------------------------------------------------------------------------

MANIFEST = "_manifest.json"


class DatasetError(RuntimeError):
    """A dataset that must not be read as it is: unfinished, or changed since its manifest was written."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """No ``_manifest.json``: not a dataset, or one whose build has not published yet."""


def shard_record(root, rel: str, rows: int) -> dict:
    """The manifest entry of the file ``root/rel``: path, rows, bytes, sha256."""
    root = DataRoot(root)
    return {"path": rel, "rows": rows, "bytes": root.size(rel), "sha256": root.sha256(rel)}


def write_manifest(root: str | os.PathLike, shard_paths: list, **fields) -> dict:
    """Write ``root/_manifest.json`` (atomically) listing ``shard_paths`` (Parquet files under ``root``), for
    writers of clip shards other than a build (synthetic sets, shot corpora); returns the manifest."""
    root = Path(root)
    shards = []
    for p in sorted(Path(p) for p in shard_paths):
        rel = str((p if p.is_absolute() else root / p).relative_to(root))
        shards.append(shard_record(root, rel, pq.ParquetFile(root / rel).metadata.num_rows))
    manifest = {"format": "tessera-clips", **fields, "shards": shards, "rows": sum(s["rows"] for s in shards)}
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


class PublishedDataset:
    """A dataset opened through its manifest: ``shards`` (manifest order; absolute paths for a local dataset,
    full URIs for one on object storage: read them with :func:`read_table` / :func:`parquet_file`),
    ``manifest``, ``read(columns)``, ``table_path(name)`` for the side tables (``failures``) it verifies too."""

    def __init__(self, root, manifest: dict, shards: list):
        self.data = DataRoot(root)
        self.root = self.data.local_path() if self.data.local else self.data.uri
        self.manifest, self.shards = manifest, shards

    @property
    def rows(self) -> int:
        return sum(int(s.get("rows") or 0) for s in self.manifest.get("shards", []))

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """Every listed shard as one table (None when the manifest lists none)."""
        tables = [read_table(p, columns=columns) for p in self.shards]
        return pa.concat_tables(tables, promote_options="permissive") if tables else None

    def table_path(self, name: str):
        """``failures`` / ``selection``: the side table's path (a URI on object storage), or None when absent. A
        side table whose size and hash the manifest records is checked (a publish cut short between writing it
        and writing the manifest leaves one that belongs to the next manifest, not this one)."""
        entry = self.manifest.get("tables", {}).get(name)
        rel = entry.get("path") if isinstance(entry, dict) else (entry or f"{name}.parquet")
        _rel(rel)
        size = self.data.size(rel)
        if size is None:
            return None
        if isinstance(entry, dict) and (size != entry.get("bytes") or self.data.sha256(rel) != entry.get("sha256")):
            raise DatasetError(f"{self.data.show(rel)} does not match {self.data.show(MANIFEST)} (a publish was "
                               f"interrupted after writing it); re-run the build to finish publishing")
        return self._where(rel)

    def read_side_table(self, name: str, columns: list[str] | None = None) -> pa.Table | None:
        """``selection`` / ``failures`` as a table (checked as :meth:`table_path` does), or None when absent."""
        where = self.table_path(name)
        return None if where is None else read_table(where, columns=columns)

    def _where(self, rel: str):
        return _inside(self.data.local_path(), rel) if self.data.local else self.data.show(rel)


def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing a path that leaves ``root`` (a manifest is data, not trusted)."""
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise DatasetError(f"{root / MANIFEST} lists {rel!r}, which points outside the dataset")
    return p


def open_dataset(root, *, verify_sha256: bool = False) -> PublishedDataset:
    """Open the published clip table of ``root`` (a local path or a URI such as ``s3://bucket/dataset``): only
    what ``_manifest.json`` lists, each shard checked against it (size always, sha256 when ``verify_sha256``).
    Raises :class:`DatasetError` with a one-line reason when the manifest is missing or a shard is missing,
    resized or altered."""
    data = DataRoot(root)
    try:
        raw = data.read_bytes(MANIFEST)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DatasetNotFound(f"{data} is not a finished dataset: no {MANIFEST} (a build writes it last; "
                              f"re-run the build that writes it)") from None
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{data.show(MANIFEST)} is not valid JSON ({exc})") from None
    shards = []
    for s in manifest.get("shards", []):
        if data.local:
            _inside(data.local_path(), s["path"])
        try:
            rel = _rel(s["path"])
        except DatasetError:
            raise DatasetError(f"{data.show(MANIFEST)} lists {s['path']!r}, which points outside the dataset") from None
        size = data.size(rel)
        if size is None:
            raise DatasetError(f"{data}: shard {s['path']} listed in {MANIFEST} is missing; the dataset was changed "
                               f"after it was published")
        if s.get("bytes") is not None and size != s["bytes"]:
            raise DatasetError(f"{data}: shard {s['path']} has {size} bytes, {MANIFEST} says {s['bytes']}; the "
                               f"dataset was changed after it was published")
        if verify_sha256 and s.get("sha256") and data.sha256(rel) != s["sha256"]:
            raise DatasetError(f"{data}: shard {s['path']} does not match the sha256 in {MANIFEST}; the dataset "
                               f"was changed after it was published")
        shards.append(_inside(data.local_path(), rel) if data.local else data.show(rel))
    return PublishedDataset(data, manifest, shards)


# ---------------------------------------------------------------------------------------------------------
# one build per output: a lease
# ---------------------------------------------------------------------------------------------------------

LEASE = "_lease.json"
CANDIDATES = "_lease.d"  # object storage: one candidate per build taking the lease (``Lease``)


class OutputLocked(RuntimeError):
    """Another live build holds the output's lease."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Lease:
    """``DATASET/_lease.json``: host, pid and a heartbeat, refreshed by a thread while the build runs.

    A second build into the same output is refused, naming the holder. A lease is stale, and taken over, when
    its pid is dead on this host or its heartbeat is older than ``stale_after_s`` (a holder on another host
    that died). On a local disk, taking over renames the stale file first, so of two builds that both found it
    stale, one wins. Object storage has no create-if-absent, so there builds hold an election that needs only
    read-after-write and list-after-write consistency (S3, GCS and SeaweedFS give both): each writes a candidate
    under its own name (``_lease.d/TOKEN.json``), then lists the candidates, and wins only if its own is the one
    live candidate; of two racers the later lister always sees the earlier one's candidate, so at most one wins
    (both may lose: they withdraw and try again after a random pause). The winner keeps its candidate and mirrors
    it to ``_lease.json`` (what a person and a newcomer read); its heartbeat refreshes both and stops, never
    writing again, once its candidate is gone (taken over as stale).
    """

    def __init__(self, root, stale_after_s: float = 120.0, settle_s: float = 1.0):
        import socket
        import uuid

        self.data = DataRoot(root)
        self.path = self.data.local_path(LEASE) if self.data.local else self.data.show(LEASE)
        self.stale_after_s = stale_after_s
        self.settle_s = settle_s
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = None
        self._thread = None

    def _read(self) -> dict | None:
        try:
            return self.data.read_json(LEASE)
        except FileNotFoundError:
            return None
        except ValueError:  # torn by a crash mid-write: treat as stale
            return {}

    def _stale(self, held: dict) -> bool:
        if not held:
            return True
        if held.get("host") == self.me["host"] and not _pid_alive(int(held.get("pid", -1))):
            return True
        return time.time() - float(held.get("heartbeat", 0)) > self.stale_after_s

    def _refuse(self, held: dict) -> OutputLocked:
        age = time.time() - float(held.get("heartbeat", 0))
        return OutputLocked(
            f"{self.data} is being built by pid {held.get('pid')} on {held.get('host')} "
            f"(heartbeat {age:.0f} s ago); wait for it to finish or stop it (a lease without a "
            f"heartbeat for {self.stale_after_s:.0f} s is taken over)")

    def _candidates(self) -> dict[str, dict]:
        """Object storage: every candidate of the election, ``{token: record}`` (a torn one reads as ``{}``)."""
        rels = self.data.list(CANDIDATES)
        out = {}
        for rel in rels:
            try:
                out[PurePosixPath(rel).stem] = self.data.read_json(rel)
            except FileNotFoundError:
                continue  # withdrawn between the list and the read
            except ValueError:
                out[PurePosixPath(rel).stem] = {}
        return out

    def _acquire_remote(self, attempts: int = 8) -> "Lease":
        import random

        mine = f"{CANDIDATES}/{self.me['token']}.json"
        for _ in range(attempts):
            held = self._read()
            if held and held.get("token") != self.me["token"] and not self._stale(held):
                raise self._refuse(held)
            others = {t: r for t, r in self._candidates().items() if t != self.me["token"]}
            for token, record in others.items():
                if self._stale(record):
                    self.data.delete(f"{CANDIDATES}/{token}.json")  # a dead holder's or racer's: gone for good
            if not any(not self._stale(r) for r in others.values()):
                record = dict(self.me, started=time.time(), heartbeat=time.time())
                self.data.write_json(mine, record)
                rivals = [r for t, r in self._candidates().items() if t != self.me["token"] and not self._stale(r)]
                if not rivals:  # ours was the one live candidate when we looked: we hold the output
                    self.data.write_json(LEASE, record)
                    self._start_heartbeat()
                    return self
                self.data.delete(mine)  # a racer (or a holder we did not see yet): withdraw
            time.sleep(random.uniform(0.2, 1.0) * self.settle_s)
        held = self._read() or next((r for r in self._candidates().values() if r), None)
        if held and not self._stale(held):
            raise self._refuse(held)
        raise OutputLocked(f"{self.data}: could not take the lease ({self.path}) after {attempts} tries")

    def acquire(self) -> "Lease":
        if not self.data.local:
            return self._acquire_remote()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            record = dict(self.me, started=time.time(), heartbeat=time.time())
            if self.data.create_new(LEASE, json.dumps(record).encode()):  # O_EXCL
                self._start_heartbeat()
                return self
            held = self._read()
            if held is None:
                continue  # released between our two looks
            if not self._stale(held):
                raise self._refuse(held)
            aside = self.path.with_name(f"{LEASE}.stale-{self.me['token']}")
            try:  # stale: move it aside, then create ours with O_EXCL
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue  # another taker moved it first
            try:
                moved = json.loads(aside.read_text())
            except ValueError:
                moved = {}
            if moved.get("token") != held.get("token"):  # a taker's fresh lease, not the stale one: put it back
                try:
                    os.link(aside, self.path)  # link, not rename: never over a lease created meanwhile
                except FileExistsError:
                    pass
            aside.unlink(missing_ok=True)
        raise OutputLocked(f"{self.data}: could not take the lease ({self.path}) after three tries")

    def _start_heartbeat(self) -> None:
        import threading

        self._stop = threading.Event()

        mine = f"{CANDIDATES}/{self.me['token']}.json"

        def beat():
            while not self._stop.wait(self.stale_after_s / 4):
                try:
                    held = self._read()
                    if not held or held.get("token") != self.me["token"]:
                        return  # taken over (we looked dead): never write over the new holder
                    if not self.data.local and not self.data.is_file(mine):
                        return  # our candidate was removed as stale: the lease is someone else's now
                    held["heartbeat"] = time.time()
                    if not self.data.local:
                        self.data.write_json(mine, held)
                    self.data.write_json(LEASE, held)
                except OSError:
                    pass  # a full or read-only disk, a storage hiccup: the build itself reports lasting ones

        self._thread = threading.Thread(target=beat, name="tessera-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        held = self._read()
        if held and held.get("token") == self.me["token"]:
            self.data.delete(LEASE)
        if not self.data.local:
            self.data.delete(f"{CANDIDATES}/{self.me['token']}.json")

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_content(claims_dir: str | os.PathLike, key: str, uri: str, content_id: str) -> str | None:
    """Claim ``content_id`` for the input ``key``: None when it is this input's (new, or claimed by this input
    in an earlier, killed run), else the uri of the input that holds it. ``claims_dir`` is a path or a URI;
    the claim is created with :meth:`DataRoot.create_new` (``O_EXCL`` on a disk: of two inputs with the same
    bytes, exactly one wins; on object storage a near-simultaneous pair can both pass, and publish still drops
    the later same-content input)."""
    data = DataRoot(claims_dir)
    rel = f"{content_id[:2]}/{content_id}.json"
    if data.create_new(rel, json.dumps({"key": key, "uri": uri}).encode(), settle_s=0.1):
        return None
    for _ in range(50):  # the winner may be between its create and its write
        try:
            held = data.read_json(rel)
            return None if held["key"] == key else held["uri"]
        except (ValueError, KeyError, FileNotFoundError):
            time.sleep(0.01)
    return None  # a claim torn by a crash: let this input through (publish still drops same-content inputs)
