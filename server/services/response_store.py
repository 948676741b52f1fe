"""Stored responses (OpenAI's Responses API ``store``), in an embedded SQLite database.

One row per response: who made it (the API key's digest, "" without keys), when, the response
as returned, the request's input items, and the whole conversation up to and including its
output (what ``previous_response_id`` replays). Bounded by age, and by count and bytes, shared
fairly among the owners (see :meth:`ResponseStore._evict`): one API key storing a flood of
responses evicts its own, and never cuts another key below its share.
WAL mode, one connection used under a lock from worker threads, so the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    history TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""
# Covers the per-owner totals and each owner's oldest, so eviction never reads the texts.
_OWNER_INDEX = """
CREATE INDEX IF NOT EXISTS responses_owner ON responses (owner, created_at, size);
"""


# SQLite's "busy" and "locked": another connection holds the lock wanted.
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_OPEN_RETRY_SECONDS = 10.0


class StoreError(RuntimeError):
    """The database cannot be opened or used (corrupt, locked, not a database)."""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    owner: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    # None: the conversation grew past what may be kept, and cannot be continued.
    history: list[dict[str, Any]] | None


class ResponseStore:
    def __init__(
        self, path: Path, *, max_count: int, max_age: float, max_bytes: int = 1 << 30
    ) -> None:
        self.path = path
        self.max_count = max_count
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = self._open(path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the response store {path}: {exc}") from exc
        path.chmod(0o600)

    def _open(self, path: Path) -> sqlite3.Connection:
        """A connection with the schema in place. Replicas started together open one file at
        once, and switching it to WAL or creating its tables takes a lock that SQLite may
        refuse at once (busy) rather than wait for: that is retried for a few seconds."""
        deadline = time.monotonic() + _OPEN_RETRY_SECONDS
        while True:
            db = sqlite3.connect(path, timeout=5, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                problems = db.execute("PRAGMA quick_check").fetchall()
                if problems != [("ok",)]:
                    raise StoreError(f"the response store {path} is damaged: {problems[:3]}")
                db.executescript(_SCHEMA)
                self._add_sizes(db)
                db.executescript(_OWNER_INDEX)
                db.commit()
                return db
            except sqlite3.OperationalError as exc:
                db.close()
                busy = getattr(exc, "sqlite_errorcode", None) in _BUSY
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except BaseException:
                db.close()
                raise

    @staticmethod
    def _add_sizes(db: sqlite3.Connection) -> None:
        """A store from before sizes were kept: add the column and fill it in, once."""
        columns = [row[1] for row in db.execute("PRAGMA table_info(responses)")]
        if "size" not in columns:
            db.execute("ALTER TABLE responses ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
            db.execute(
                "UPDATE responses SET size = "
                "length(response) + length(input_items) + length(history)"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def put(self, stored: StoredResponse) -> None:
        await asyncio.to_thread(self._put, stored)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id, owner)

    async def delete(self, response_id: str, owner: str) -> bool:
        return await asyncio.to_thread(self._delete, response_id, owner)

    def _put(self, stored: StoredResponse) -> None:
        try:
            self._insert(stored)
        except sqlite3.Error as exc:  # a full disk, a file removed under the server, ...
            raise StoreError(f"cannot store response {stored.id} in {self.path}: {exc}") from exc

    def _insert(self, stored: StoredResponse) -> None:
        now = time.time()
        texts = (
            json.dumps(stored.response),
            json.dumps(stored.input_items),
            json.dumps(stored.history),
        )
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stored.id, stored.owner, now, *texts, sum(len(t) for t in texts)),
            )
            self._db.execute("DELETE FROM responses WHERE created_at < ?", (now - self.max_age,))
            self._evict(stored.owner)

    def _evict(self, writer: str) -> None:
        """Back within max_count and max_bytes after ``writer`` stored a response. Each bound
        is shared: an owner's share is the bound divided by the number of owners holding
        responses. While over a bound, the oldest response goes of ``writer``, if it holds
        more than its share of that bound, else of the owner holding the most (who holds
        more than its share, since together they hold more than the bound). So an owner
        within its share never loses a response to another's writes, one over its share
        pays for its own writes, and a newcomer still finds room (a conversation's history
        is stored with each of its responses, so long chains add up)."""
        while True:
            count, size, owners = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(DISTINCT owner) FROM responses"
            ).fetchone()
            if count > self.max_count:
                by, bound = "COUNT(*)", self.max_count
            elif size > self.max_bytes:
                by, bound = "COALESCE(SUM(size), 0)", self.max_bytes
            else:
                return
            (held,) = self._db.execute(
                f"SELECT {by} FROM responses WHERE owner = ?", (writer,)
            ).fetchone()
            owner = writer
            if held * owners <= bound:  # the writer is within its share
                (owner,) = self._db.execute(
                    f"SELECT owner FROM responses GROUP BY owner ORDER BY {by} DESC LIMIT 1"
                ).fetchone()
            self._db.execute(
                "DELETE FROM responses WHERE rowid = (SELECT rowid FROM responses "
                "WHERE owner = ? ORDER BY created_at, rowid LIMIT 1)",
                (owner,),
            )

    def _get(self, response_id: str, owner: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, input_items, history, created_at FROM responses "
                "WHERE id = ? AND owner = ?",
                (response_id, owner),
            ).fetchone()
        if row is None or row[3] < time.time() - self.max_age:
            return None
        return StoredResponse(
            response_id, owner, json.loads(row[0]), json.loads(row[1]), json.loads(row[2])
        )

    def _delete(self, response_id: str, owner: str) -> bool:
        with self._lock, self._db:
            cursor = self._db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
            )
        return cursor.rowcount > 0
