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
                    changed = sorted(k for k in set(old.get("config", {})) | set(config)
                                     if old.get("config", {}).get(k) != config.get(k))
                    raise ConfigChanged(
                        f"{root} was built with config {old.get('fingerprint')} and this run's config is {fp} "
                        f"(changed: {', '.join(changed) or 'code version'}). Filter thresholds can change freely "
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

    def done_records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.done_dir.glob("*.json"))]
