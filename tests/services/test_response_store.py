"""The stored-response database: kept across a restart, bounded by count and age, private to
its owner, and a file that is not a usable database is a clear error, never silent loss."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import subprocess
import sys
import threading
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


def torn_in_half(path: Path) -> None:
    """A store holding responses, then cut in the middle (a copy stopped half way, a disk
    that filled)."""
    store = ResponseStore(path, max_count=1000, max_age=3600)
    for i in range(100):
        asyncio.run(store.put(StoredResponse(f"resp_{i}", "", {"text": "x" * 2000}, [], [])))
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_database_torn_in_half_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    torn_in_half(path)
    torn = path.read_bytes()
    with pytest.raises(StoreError, match=r"response store .* malformed"):
        ResponseStore(path, max_count=10, max_age=3600)
    assert path.read_bytes() == torn  # nothing overwritten, nothing evicted


@pytest.mark.parametrize("damage", ["not sqlite", "torn in half"])
def test_the_server_refuses_to_start_on_a_broken_store(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "responses.sqlite3"
    if damage == "torn in half":
        torn_in_half(path)
    else:
        path.write_bytes(b"garbage" * 1000)
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--responses-db", str(path), "--port", "9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    (reason,) = result.stderr.splitlines()  # one line, no traceback
    assert "response store" in reason and str(path) in reason


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


def ids_of(store: ResponseStore) -> dict[str, list[str]]:
    """Each owner's stored response ids, oldest first."""
    held: dict[str, list[str]] = {}
    for owner, response_id in store._db.execute(
        "SELECT owner, id FROM responses ORDER BY created_at, rowid"
    ):
        held.setdefault(owner, []).append(response_id)
    return held


def sized(response_id: str, owner: str, size: int) -> StoredResponse:
    """A response taking ``size`` bytes in the store."""
    return StoredResponse(response_id, owner, {"t": "x" * (size - 13)}, [], [])


def test_a_key_within_its_share_never_loses_a_response_to_another_keys_writes(
    tmp_path: Path,
) -> None:
    """A key's share is the bound divided among the keys holding responses. A key over its
    share makes room from its own responses; another key's writes only cut a key down while
    it holds more than its share, and never below it."""
    store = ResponseStore(tmp_path / "r.sqlite3", max_count=9, max_age=3600)
    for owner, count in (("alice", 5), ("carol", 1), ("bob", 3)):
        for i in range(count):
            asyncio.run(store.put(stored(f"{owner}_{i}", owner=owner)))
    # Nine held, three keys: a share is three. bob, at his share, writes a fourth: over it,
    # he makes room from his own, although alice holds the most.
    asyncio.run(store.put(stored("bob_3", owner="bob")))
    assert ids_of(store) == {
        "alice": [f"alice_{i}" for i in range(5)],
        "carol": ["carol_0"],
        "bob": ["bob_1", "bob_2", "bob_3"],
    }
    # carol, within her share, writes: alice, over hers, loses her oldest, down to her share
    # and no further; then carol, at her share, pays for her own writes.
    for i in range(1, 6):
        asyncio.run(store.put(stored(f"carol_{i}", owner="carol")))
    assert ids_of(store) == {
        "alice": ["alice_2", "alice_3", "alice_4"],
        "bob": ["bob_1", "bob_2", "bob_3"],
        "carol": ["carol_3", "carol_4", "carol_5"],
    }
    store.close()


def test_the_shares_hold_for_the_bytes_bound_too(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", max_count=100, max_age=3600, max_bytes=9000)
    for owner, count in (("alice", 5), ("carol", 1), ("bob", 3)):
        for i in range(count):
            asyncio.run(store.put(sized(f"{owner}_{i}", owner, 1000)))
    asyncio.run(store.put(sized("bob_3", "bob", 1000)))  # bob over his 3,000 bytes
    assert ids_of(store)["alice"] == [f"alice_{i}" for i in range(5)]
    assert ids_of(store)["bob"] == ["bob_1", "bob_2", "bob_3"]
    asyncio.run(store.put(sized("carol_1", "carol", 1000)))  # carol within hers
    assert ids_of(store)["alice"] == [f"alice_{i}" for i in range(1, 5)]
    # One response larger than the whole bound: its writer's own older ones go, then itself.
    asyncio.run(store.put(sized("carol_big", "carol", 9500)))
    assert ids_of(store) == {
        "alice": [f"alice_{i}" for i in range(1, 5)],
        "bob": ["bob_1", "bob_2", "bob_3"],
    }
    store.close()


_WRITER = """
import asyncio, sys
from pathlib import Path
from server.services.response_store import ResponseStore, StoredResponse
store = ResponseStore(Path(sys.argv[1]), max_count=100_000, max_age=3600)
for i in range(100_000):
    item = {"type": "message", "role": "user", "content": "hi " * 50}
    asyncio.run(store.put(StoredResponse(f"resp_{i}", "team", {"i": i}, [item], [item])))
    print(f"resp_{i}", flush=True)  # acknowledged
"""


def test_kill_9_while_writing_loses_no_acknowledged_response(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    command = [sys.executable, "-c", _WRITER, str(path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None
        acknowledged = [writer.stdout.readline().strip() for _ in range(200)]
        writer.kill()  # SIGKILL, in the middle of later writes
        acknowledged += [line.strip() for line in writer.stdout]  # said before it died
    assert len(acknowledged) >= 200 and all(acknowledged)
    store = ResponseStore(path, max_count=100_000, max_age=3600)
    try:
        for response_id in acknowledged:
            assert asyncio.run(store.get(response_id, "team")) is not None, response_id
    finally:
        store.close()


def test_replicas_opening_one_new_store_at_once_all_open(tmp_path: Path) -> None:
    """Replicas started together open one file at the same moment: switching it to WAL and
    creating its tables takes locks SQLite may refuse at once ("database is locked", a replica
    of tests/e2e/test_cluster.py exited with it); each open must wait its turn instead."""
    errors: list[str] = []
    for round_ in range(20):
        path = tmp_path / f"r{round_}.sqlite3"
        start = threading.Barrier(6)

        def open_store(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                ResponseStore(path, max_count=10, max_age=60).close()
            except StoreError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
