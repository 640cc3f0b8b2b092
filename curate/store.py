"""On-disk state of a build: atomic files, the config fingerprint, staging shards and per-input done markers.

A build is resumable because an input counts as done only when its done-marker exists, and the marker is
written (temp name, then rename) after every staged file it lists is in place. A killed run leaves at most
unreferenced staging files and ``*.tmp`` names behind; :meth:`BuildState.open` clears both for inputs that are
not done, so the re-run rewrites them from scratch. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def _publishable(tmp: str) -> None:
    """mkstemp creates 0600 files; give them the mode a plain open() would (0666 minus the umask)."""
    os.chmod(tmp, 0o666 & ~_UMASK)

import pyarrow as pa
import pyarrow.parquet as pq


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
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


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
    """The ``_state`` folder of one dataset: fingerprint, staging shards, done markers."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.state = self.root / "_state"
        self.staging = self.state / "staging"
        self.done_dir = self.state / "done"

    @classmethod
    def open(cls, root: str | os.PathLike, fp: str, config: dict, *, overwrite: bool = False) -> "BuildState":
        """Open (or start) the state of ``root`` for a build whose config fingerprint is ``fp``.

        A different fingerprint on disk raises :class:`ConfigChanged` unless ``overwrite`` (then the old
        build's state and published files are removed first).
        """
        self = cls(Path(root))
        fp_file = self.state / "fingerprint.json"
        if fp_file.exists():
            old = json.loads(fp_file.read_text())
            if old.get("fingerprint") != fp:
                if not overwrite:
                    changed = config_changes(old.get("config", {}), config)
                    raise ConfigChanged(
                        f"{root} was built with config {old.get('fingerprint')} and this run's config is {fp} "
                        f"(changed: {'; '.join(changed) or 'code version'}). Filter thresholds can change freely "
                        f"(`tessera filter`); for anything else use a new --output or pass --overwrite.")
                self.wipe()
        self.staging.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(fp_file, {"fingerprint": fp, "config": config})
        return self

    def wipe(self) -> None:
        for name in ("_state", "clips", "media", "failures.parquet", "selection.parquet", "summary.json",
                     "_manifest.json", "config.json"):
            p = self.root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    # -- per input ------------------------------------------------------------------------------------------
    def marker_path(self, key: str) -> Path:
        return self.done_dir / f"{key}.json"

    def staging_dir(self, key: str) -> Path:
        return self.staging / key[:2] / key

    def is_done(self, key: str) -> bool:
        return self.marker_path(key).exists()

    def reset_input(self, key: str) -> None:
        """Forget partial work of an input that is not done (called before it is processed again)."""
        d = self.staging_dir(key)
        if d.exists():
            shutil.rmtree(d)

    def clear_temp_files(self) -> int:
        n = 0
        for p in self.root.rglob("*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def mark_done(self, key: str, record: dict) -> None:
        for f in record.get("files", []):
            if not (self.root / f).exists():
                raise FileNotFoundError(f"refusing to mark {key} done: staged file {f} is missing")
        atomic_write_json(self.marker_path(key), record)

    def content_claims(self) -> Path:
        return self.state / "content"

    def done_records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.done_dir.glob("*.json"))]


# ---------------------------------------------------------------------------------------------------------
# the published dataset: one way to open it
# ---------------------------------------------------------------------------------------------------------

MANIFEST = "_manifest.json"


class DatasetError(RuntimeError):
    """A dataset that must not be read as it is: unfinished, or changed since its manifest was written."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """No ``_manifest.json``: not a dataset, or one whose build has not published yet."""


def shard_record(root: str | os.PathLike, rel: str, rows: int) -> dict:
    """The manifest entry of the file ``root/rel``: path, rows, bytes, sha256."""
    path = Path(root) / rel
    return {"path": rel, "rows": rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


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
    """A dataset opened through its manifest: ``shards`` (absolute paths, manifest order), ``manifest``,
    ``read(columns)``, ``table_path(name)`` for the side tables (``failures``) it verifies too."""

    def __init__(self, root: Path, manifest: dict, shards: list[Path]):
        self.root, self.manifest, self.shards = root, manifest, shards

    @property
    def rows(self) -> int:
        return sum(int(s.get("rows") or 0) for s in self.manifest.get("shards", []))

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """Every listed shard as one table (None when the manifest lists none)."""
        tables = [pq.read_table(p, columns=columns) for p in self.shards]
        return pa.concat_tables(tables, promote_options="permissive") if tables else None

    def table_path(self, name: str) -> Path | None:
        """``failures`` / ``selection``: the side table's path, or None when absent. A side table whose size
        and hash the manifest records is checked (a publish cut short between writing it and writing the
        manifest leaves one that belongs to the next manifest, not this one)."""
        entry = self.manifest.get("tables", {}).get(name)
        rel = entry.get("path") if isinstance(entry, dict) else (entry or f"{name}.parquet")
        path = _inside(self.root, rel)
        if not path.is_file():
            return None
        if isinstance(entry, dict) and (path.stat().st_size != entry.get("bytes")
                                        or sha256_file(path) != entry.get("sha256")):
            raise DatasetError(f"{path} does not match {self.root / MANIFEST} (a publish was interrupted after "
                               f"writing it); re-run the build to finish publishing")
        return path


def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing a path that leaves ``root`` (a manifest is data, not trusted)."""
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise DatasetError(f"{root / MANIFEST} lists {rel!r}, which points outside the dataset")
    return p


def open_dataset(root: str | os.PathLike, *, verify_sha256: bool = False) -> PublishedDataset:
    """Open the published clip table of ``root``: only what ``_manifest.json`` lists, each shard checked against
    it (size always, sha256 when ``verify_sha256``). Raises :class:`DatasetError` with a one-line reason when
    the manifest is missing or a shard is missing, resized or altered."""
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise DatasetNotFound(f"{root} is not a finished dataset: no {MANIFEST} (a build writes it last; "
                           f"re-run the build that writes it)")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{mpath} is not valid JSON ({exc})") from None
    shards = []
    for s in manifest.get("shards", []):
        path = _inside(root, s["path"])
        if not path.is_file():
            raise DatasetError(f"{root}: shard {s['path']} listed in {MANIFEST} is missing; the dataset was changed "
                               f"after it was published")
        size = path.stat().st_size
        if s.get("bytes") is not None and size != s["bytes"]:
            raise DatasetError(f"{root}: shard {s['path']} has {size} bytes, {MANIFEST} says {s['bytes']}; the "
                               f"dataset was changed after it was published")
        if verify_sha256 and s.get("sha256") and sha256_file(path) != s["sha256"]:
            raise DatasetError(f"{root}: shard {s['path']} does not match the sha256 in {MANIFEST}; the dataset "
                               f"was changed after it was published")
        shards.append(path)
    return PublishedDataset(root, manifest, shards)


# ---------------------------------------------------------------------------------------------------------
# one build per output: a lease
# ---------------------------------------------------------------------------------------------------------

LEASE = "_lease.json"


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
    that died). Taking over renames the stale file first, so of two builds that both found it stale, one wins.
    """

    def __init__(self, root: str | os.PathLike, stale_after_s: float = 120.0):
        import socket
        import uuid

        self.path = Path(root) / LEASE
        self.stale_after_s = stale_after_s
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = None
        self._thread = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # torn by a crash mid-write: treat as stale
            return {}

    def _stale(self, held: dict) -> bool:
        import time

        if not held:
            return True
        if held.get("host") == self.me["host"] and not _pid_alive(int(held.get("pid", -1))):
            return True
        return time.time() - float(held.get("heartbeat", 0)) > self.stale_after_s

    def acquire(self) -> "Lease":
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            record = dict(self.me, started=time.time(), heartbeat=time.time())
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                held = self._read()
                if held is None:
                    continue  # released between our two looks
                if not self._stale(held):
                    age = time.time() - float(held.get("heartbeat", 0))
                    raise OutputLocked(
                        f"{self.path.parent} is being built by pid {held.get('pid')} on {held.get('host')} "
                        f"(heartbeat {age:.0f} s ago); wait for it to finish or stop it (a lease without a "
                        f"heartbeat for {self.stale_after_s:.0f} s is taken over)")
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
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self._start_heartbeat()
            return self
        raise OutputLocked(f"{self.path.parent}: could not take the lease ({self.path}) after three tries")

    def _start_heartbeat(self) -> None:
        import threading
        import time

        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(self.stale_after_s / 4):
                held = self._read()
                if not held or held.get("token") != self.me["token"]:
                    return  # taken over (we looked dead): never write over the new holder
                held["heartbeat"] = time.time()
                try:
                    atomic_write_json(self.path, held)
                except OSError:
                    pass  # a full or read-only disk: the build itself reports it

        self._thread = threading.Thread(target=beat, name="tessera-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        held = self._read()
        if held and held.get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_content(claims_dir: str | os.PathLike, key: str, uri: str, content_id: str) -> str | None:
    """Claim ``content_id`` for the input ``key``: None when it is this input's (new, or claimed by this input
    in an earlier, killed run), else the uri of the input that holds it. ``O_EXCL`` makes the claim atomic
    across processes and hosts sharing the folder: of two inputs with the same bytes, exactly one wins."""
    path = Path(claims_dir) / content_id[:2] / f"{content_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"key": key, "uri": uri}).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        for _ in range(50):  # the winner may be between its create and its write
            try:
                held = json.loads(path.read_text())
                return None if held["key"] == key else held["uri"]
            except (ValueError, KeyError):
                import time

                time.sleep(0.01)
        return None  # a claim torn by a crash: let this input through (publish still drops same-content inputs)
    with os.fdopen(fd, "wb") as f:
        f.write(record)
    return None
