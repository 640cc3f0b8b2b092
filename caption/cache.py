"""A result cache keyed by hash(input, template, model), so a re-run pays for nothing twice.

One sqlite file (WAL journal) holds ``key -> JSON value``. It is safe with many writers: several Ray actors,
processes or threads may open the same file; writes are single ``INSERT OR REPLACE`` statements in their own
transaction, sqlite serialises them, and a busy database is waited for (``busy_timeout``) and retried a bounded
number of times. The object holds only the path until first use and reconnects after a fork or unpickling, so
it can be passed to Ray actors. Only successful results are stored: failures are retried by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path


def cache_key(*parts: object) -> str:
    """sha256 hex of the JSON encoding of ``parts`` (input text or content hash, template fingerprint, model...)."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """``get``/``put`` of small JSON-able dicts by key in one sqlite file shared by concurrent writers."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 60.0, max_tries: int = 8):
        self.path = str(path)
        self.busy_timeout_s = busy_timeout_s
        self.max_tries = max_tries
        self._local = threading.local()

    # pickling (Ray) carries only the settings; each process opens its own connection.
    def __getstate__(self) -> dict:
        return {"path": self.path, "busy_timeout_s": self.busy_timeout_s, "max_tries": self.max_tries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["busy_timeout_s"], state["max_tries"])

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        self._retry(lambda: conn.execute(
            "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"))
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _retry(self, op):
        """Run ``op`` again while sqlite says the database is locked; bounded by ``max_tries``."""
        for attempt in range(self.max_tries):
            try:
                return op()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == self.max_tries - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
        return None

    def get(self, key: str) -> dict | None:
        """The stored value for ``key``, or None."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        """The stored values for those of ``keys`` that are present."""
        conn, out = self._conn(), {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._retry(lambda: conn.execute(
                f"SELECT key, value FROM results WHERE key IN ({marks})", chunk).fetchall())
            out.update({k: json.loads(v) for k, v in rows})
        return out

    def put(self, key: str, value: dict) -> None:
        """Store ``value`` under ``key`` (replacing any older value)."""
        self.put_many({key: value})

    def put_many(self, items: dict[str, dict]) -> None:
        """Store several values in one transaction."""
        if not items:
            return
        conn = self._conn()
        rows = [(k, json.dumps(v, ensure_ascii=False), time.time()) for k, v in items.items()]

        def write():
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO results (key, value, created) VALUES (?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._retry(write)

    def __bool__(self) -> bool:  # an empty cache is still a cache (``if cache:`` must not mean "has rows")
        return True

    def __len__(self) -> int:
        return self._retry(lambda: self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection (others close when their thread or process ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
