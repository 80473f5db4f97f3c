"""The SQLite form of the response store (app/translate/store.py): a file the workers of one host share.

Imported by `SharedFileStore` on its first call only, so a worker loads SQLite when it stores a response.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from .store import ResponseStore, log

SHARED_FILE = "cot_proxy_responses.sqlite"


class FileResponseStore(ResponseStore):
    """SQLite in a directory the workers share. Each call opens its own connection (gevent-safe)."""

    kind = "file"

    def __init__(self, directory: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.path = os.path.join(directory, SHARED_FILE)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, expires REAL, used REAL, "
                "size INTEGER, data BLOB)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5.0, isolation_level=None)

    def _put(self, response_id: str, raw: bytes) -> bool:
        now = self.clock()
        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                    (response_id, now + self.ttl, now, len(raw), raw),
                )
                db.execute("DELETE FROM responses WHERE expires <= ?", (now,))
                # Least recently used first, until within both bounds (one statement: bounded work).
                db.execute(
                    "DELETE FROM responses WHERE id IN (SELECT id FROM (SELECT id, "
                    "ROW_NUMBER() OVER (ORDER BY used DESC) AS n, SUM(size) OVER (ORDER BY used DESC) AS total "
                    "FROM responses) WHERE n > ? OR total > ?)",
                    (self.max_items, self.max_bytes),
                )
                db.execute("COMMIT")
            return True
        except sqlite3.Error as exc:
            log.warning("response %s not stored: %s", response_id, exc)
            return False

    def _get(self, response_id: str) -> bytes | None:
        try:
            with self._connect() as db:
                row = db.execute(
                    "SELECT data FROM responses WHERE id = ? AND expires > ?", (response_id, self.clock())
                ).fetchone()
                if row is not None:
                    db.execute("UPDATE responses SET used = ? WHERE id = ?", (self.clock(), response_id))
        except sqlite3.Error as exc:
            log.warning("reading stored response %s failed: %s", response_id, exc)
            return None
        return None if row is None else bytes(row[0])

    def _delete(self, response_id: str) -> None:
        try:
            with self._connect() as db:
                db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        except sqlite3.Error as exc:
            log.warning("deleting stored response %s failed: %s", response_id, exc)
