"""The stored-response database: kept across a restart, bounded by count and age, private to
its owner, and a file that is not a usable database is a clear error, never silent loss."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.services.response_store import ResponseStore, StoredResponse, StoreError


def stored(response_id: str, owner: str = "") -> StoredResponse:
    item = {"id": f"msg_{response_id}", "type": "message", "role": "user", "content": "hi"}
    return StoredResponse(response_id, owner, {"id": response_id}, [item], [item])


def test_a_stored_response_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    store = ResponseStore(path, max_count=10, max_age=3600)
    asyncio.run(store.put(stored("resp_1", owner="team")))
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ResponseStore(path, max_count=10, max_age=3600)
    found = asyncio.run(again.get("resp_1", "team"))
    assert found is not None and found.response == {"id": "resp_1"}
    assert found.input_items[0]["content"] == "hi"
    assert asyncio.run(again.get("resp_1", "someone-else")) is None  # another key's
    assert asyncio.run(again.delete("resp_1", "someone-else")) is False
    assert asyncio.run(again.delete("resp_1", "team")) is True
    assert asyncio.run(again.get("resp_1", "team")) is None
    again.close()


def test_the_oldest_go_first_beyond_the_count_and_expired_ones_are_gone(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", max_count=2, max_age=3600)
    for i in range(3):
        asyncio.run(store.put(stored(f"resp_{i}")))
    assert asyncio.run(store.get("resp_0", "")) is None
    assert asyncio.run(store.get("resp_2", "")) is not None
    store.max_age = 0.0  # everything is past its age now
    assert asyncio.run(store.get("resp_2", "")) is None
    store.close()


def test_stored_text_is_bounded_in_bytes_newest_kept(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", max_count=100, max_age=3600, max_bytes=1000)
    big = StoredResponse("resp_big", "", {"text": "x" * 900}, [], [])
    asyncio.run(store.put(big))
    assert asyncio.run(store.get("resp_big", "")) is not None
    asyncio.run(store.put(StoredResponse("resp_new", "", {"text": "y" * 300}, [], [])))
    assert asyncio.run(store.get("resp_big", "")) is None  # out, to keep the newest in bounds
    assert asyncio.run(store.get("resp_new", "")) is not None
    store.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    with pytest.raises(StoreError, match="response store"):
        ResponseStore(path, max_count=10, max_age=3600)
    assert path.read_bytes().startswith(b"this is not a database")  # nothing overwritten


def test_the_server_refuses_to_start_on_a_broken_store(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    path.write_bytes(b"garbage" * 1000)
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--responses-db", str(path), "--port", "9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "response store" in result.stderr and str(path) in result.stderr


def test_a_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    ResponseStore(path, max_count=10, max_age=3600).close()
    holder = sqlite3.connect(path)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError):
            ResponseStore(path, max_count=10, max_age=3600)
    finally:
        holder.close()


def test_a_failed_write_is_a_store_error_not_a_database_error(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", max_count=10, max_age=3600)
    store._db.execute("DROP TABLE responses")  # the file changed under the server
    with pytest.raises(StoreError, match="cannot store response resp_1"):
        asyncio.run(store.put(stored("resp_1")))
    store.close()


def test_a_flooding_owner_evicts_its_own_responses_not_others(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", max_count=4, max_age=3600, max_bytes=10_000)
    asyncio.run(store.put(stored("resp_team", owner="team")))
    for i in range(10):
        asyncio.run(store.put(stored(f"resp_flood_{i}", owner="flood")))
    assert asyncio.run(store.get("resp_team", "team")) is not None
    assert asyncio.run(store.get("resp_flood_9", "flood")) is not None
    assert asyncio.run(store.get("resp_flood_5", "flood")) is None
    big = StoredResponse("resp_big", "flood", {"text": "x" * 9000}, [], [])
    asyncio.run(store.put(big))  # over the bytes: the flood's own oldest go
    assert asyncio.run(store.get("resp_team", "team")) is not None
    assert asyncio.run(store.get("resp_big", "flood")) is not None
    store.close()


def test_a_store_from_before_sizes_were_kept_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at REAL "
        "NOT NULL, response TEXT NOT NULL, input_items TEXT NOT NULL, history TEXT NOT NULL);"
    )
    db.execute(
        "INSERT INTO responses VALUES ('resp_old', '', ?, '{\"a\": 1}', '[]', '[]')",
        (time.time(),),
    )
    db.commit()
    db.close()
    store = ResponseStore(path, max_count=10, max_age=3600, max_bytes=1000)
    assert asyncio.run(store.get("resp_old", "")) is not None
    (size,) = store._db.execute("SELECT size FROM responses").fetchone()
    assert size == len('{"a": 1}') + 4
    asyncio.run(store.put(stored("resp_new")))
    store.close()
