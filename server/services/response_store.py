"""Stored responses (OpenAI's Responses API ``store``), in an embedded SQLite database.

One row per response: who made it (the API key's name, "" without keys), when, the response
as returned, the request's input items, and the whole conversation up to and including its
output (what ``previous_response_id`` replays). Bounded by count, age and bytes, oldest out
first.
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
    history TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""


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
            self._db = sqlite3.connect(path, timeout=5, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            problems = self._db.execute("PRAGMA quick_check").fetchall()
            if problems != [("ok",)]:
                raise StoreError(f"the response store {path} is damaged: {problems[:3]}")
            self._db.executescript(_SCHEMA)
            self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the response store {path}: {exc}") from exc
        path.chmod(0o600)

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
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    stored.owner,
                    now,
                    json.dumps(stored.response),
                    json.dumps(stored.input_items),
                    json.dumps(stored.history),
                ),
            )
            self._db.execute("DELETE FROM responses WHERE created_at < ?", (now - self.max_age,))
            self._db.execute(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses "
                "ORDER BY created_at DESC LIMIT -1 OFFSET ?)",
                (self.max_count,),
            )
            # Within max_bytes of stored text, the newest kept (a conversation's history is
            # stored with each of its responses, so long chains add up).
            self._db.execute(
                "DELETE FROM responses WHERE id IN (SELECT id FROM (SELECT id, SUM("
                "length(response) + length(input_items) + length(history)) OVER ("
                "ORDER BY created_at DESC, rowid DESC) AS kept FROM responses) WHERE kept > ?)",
                (self.max_bytes,),
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
