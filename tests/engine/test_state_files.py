"""Several servers sharing one folder of saved KV states (replicas on one volume)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.engine import state_files
from server.engine.state_cache import StateCache
from server.engine.state_files import STALE_PARTIAL

SCAN = 0.02


def put(cache: StateCache, tokens: list[int], data: bytes) -> None:
    buffer = cache.buffer_for(len(data), tokens)
    buffer[:] = data
    cache.put(tokens, buffer)


def replica(
    folder: Path, *, ram: int = 10_000, disk: int = 10_000, scan: float = SCAN
) -> StateCache:
    return StateCache(
        model_key="m" * 64, ram_bytes=ram, disk_dir=folder, disk_bytes=disk, scan_interval=scan
    )


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the servers did not agree in time")
        time.sleep(SCAN)


def refreshed(*servers: StateCache) -> bool:
    for server in servers:
        server.refresh()
    return True


def files(folder: Path) -> list[Path]:
    return list(folder.rglob("*.state"))


def test_a_state_one_server_saved_is_restored_by_another(tmp_path: Path) -> None:
    first, second = replica(tmp_path), replica(tmp_path)
    try:
        assert second.longest_match([1, 2, 3, 4]) == (0, None)
        put(first, [1, 2, 3], b"turn one")
        eventually(lambda: second.longest_match([1, 2, 3, 4])[0] == 3)
        _, entry = second.longest_match([1, 2, 3, 4])
        assert entry is not None and bytes(second.get(entry) or b"") == b"turn one"
        assert second.counters()["found"] == 1
    finally:
        first.close()
        second.close()


def test_a_file_another_server_removed_is_forgotten(tmp_path: Path) -> None:
    first, second = replica(tmp_path), replica(tmp_path)
    try:
        put(first, [1, 2, 3], b"a" * 100)
        eventually(lambda: second.counters()["disk_bytes"] > 0)
        # The next turn of the conversation replaces the first's state, on the first server.
        put(first, [1, 2, 3, 4, 5], b"b" * 100)
        eventually(lambda: second.longest_match([1, 2, 3, 4, 5])[0] == 5)
        eventually(lambda: second.counters()["entries"] == 1)
        assert second.counters()["disk_bytes"] == first.counters()["disk_bytes"]
        assert len(files(tmp_path)) == 1
    finally:
        first.close()
        second.close()


def test_a_file_removed_between_listing_and_reading_is_a_miss_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = replica(tmp_path)
    put(first, [7, 8, 9], b"state")
    first.close()
    second = replica(tmp_path, scan=0)  # finds the file at start, and does not look again
    try:
        (path,) = files(tmp_path)
        path.unlink()  # evicted by a third server, say
        _, entry = second.longest_match([7, 8, 9])
        assert entry is not None
        with caplog.at_level(logging.WARNING):
            assert second.get(entry) is None
        assert caplog.records == []
        assert second.longest_match([7, 8, 9]) == (0, None)
    finally:
        first.close()
        second.close()


def test_the_disk_bound_holds_across_every_server_writing_the_folder(tmp_path: Path) -> None:
    servers = [replica(tmp_path, ram=10_000, disk=700) for _ in range(2)]
    try:
        for i in range(4):
            for n, server in enumerate(servers):
                put(server, [n, i], bytes([i]) * 200)
        # Each server's own writes alone stay within the bound; together they do once each
        # has seen the other's files, and then every server counts the same bytes.
        # (A server enforces the bound when it next looks at its cache, here counters().)
        eventually(
            lambda: (
                all([s.counters()["disk_bytes"] <= 700 for s in servers])
                and sum(p.stat().st_size for p in files(tmp_path)) <= 700
            )
        )
        eventually(lambda: len({s.counters()["disk_bytes"] for s in servers}) == 1)
    finally:
        for server in servers:
            server.close()


def test_a_state_one_server_uses_is_not_the_one_another_evicts(tmp_path: Path) -> None:
    writer = replica(tmp_path, ram=10_000, disk=1300)
    reader = replica(tmp_path, ram=10_000, disk=1300)
    try:
        put(writer, [1], b"a" * 200)
        time.sleep(0.05)
        put(writer, [2], b"b" * 200)
        time.sleep(0.05)
        put(writer, [3], b"c" * 200)
        eventually(lambda: reader.counters()["entries"] == 3)
        _, oldest = reader.longest_match([1])
        assert oldest is not None
        reader.get(oldest)  # [1] is now the most recently used, for both servers
        eventually(lambda: writer.counters().get("used_by_others") == 1)  # it saw the new mtime
        put(writer, [4], b"d" * 200)  # over the bound: [2] is the least recently used now
        # (A server keeps the bound when it looks at its cache: an idle one every second.)
        eventually(lambda: refreshed(writer, reader) and len(files(tmp_path)) == 3)
        eventually(lambda: reader.longest_match([2])[0] == 0)
        assert reader.longest_match([1])[0] == 1
        assert writer.longest_match([1])[0] == 1
    finally:
        writer.close()
        reader.close()


def test_two_servers_saving_one_state_keep_one_file(tmp_path: Path) -> None:
    first, second = replica(tmp_path), replica(tmp_path)
    try:
        put(first, [5, 5, 5], b"same state")
        put(second, [5, 5, 5], b"same state")
        eventually(lambda: len(files(tmp_path)) == 1)
        (path,) = files(tmp_path)
        eventually(
            lambda: (
                first.counters()["disk_bytes"]
                == second.counters()["disk_bytes"]
                == path.stat().st_size
            )
        )
        assert first.counters()["entries"] == second.counters()["entries"] == 1
    finally:
        first.close()
        second.close()


def test_a_reader_never_sees_a_file_half_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes go to a name of their own and are renamed into place, so another server's
    scans, however often, never find a torn file (which they would drop as truncated)."""
    writer = replica(tmp_path, ram=1 << 24, disk=1 << 24)
    with caplog.at_level(logging.WARNING):
        reader = replica(tmp_path, ram=1 << 24, disk=1 << 24)
        try:
            for i in range(12):
                put(writer, [i, i], bytes([i]) * 300_000)
            eventually(lambda: reader.counters()["entries"] == 12)
            for i in range(12):
                _, entry = reader.longest_match([i, i])
                assert entry is not None and bytes(reader.get(entry) or b"") == bytes([i]) * 300_000
        finally:
            writer.close()
            reader.close()
    assert [r.message for r in caplog.records] == []


def test_another_servers_write_in_progress_is_left_alone(tmp_path: Path) -> None:
    cache = replica(tmp_path)
    folder = cache.folder
    cache.close()
    assert folder is not None
    fresh = folder / ".abc.state.1234.partial"
    fresh.write_bytes(b"half of a state")
    stale = folder / ".def.state.5678.partial"
    stale.write_bytes(b"left by a server that died while writing")
    old = time.time() - STALE_PARTIAL - 60
    os.utime(stale, (old, old))
    replica(tmp_path).close()
    assert fresh.exists()
    assert not stale.exists()


def test_a_known_file_replaced_by_a_broken_one_is_dropped_and_forgotten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = replica(tmp_path), replica(tmp_path)
    try:
        put(first, [4, 4], b"x" * 100)
        eventually(lambda: second.counters()["disk_bytes"] > 0)
        (path,) = files(tmp_path)
        broken = path.with_name(".broken")
        broken.write_bytes(b"not a header\n" + b"x" * 100)
        with caplog.at_level(logging.WARNING):
            os.replace(broken, path)  # a new file under the known name
            eventually(lambda: second.counters()["disk_bytes"] == 0)
        assert "dropping KV state file" in caplog.text
        assert second.longest_match([4, 4]) == (0, None)
        assert not path.exists()
    finally:
        first.close()
        second.close()


def test_a_file_replaced_after_its_header_was_read_cannot_cause_a_huge_allocation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = replica(tmp_path)
    put(first, [3, 1, 4], b"pi" * 50)
    first.close()
    second = replica(tmp_path, scan=0)
    try:
        _, entry = second.longest_match([3, 1, 4])
        assert entry is not None
        (path,) = files(tmp_path)
        header = {
            "format": "hearth-kv-state-1",
            "model": "m" * 64,
            "tokens": [3, 1, 4],
            "size": 1 << 50,  # a petabyte, claimed
            "sha256": "0" * 64,
        }
        path.write_bytes(json.dumps(header).encode() + b"\n" + b"x" * 100)
        with caplog.at_level(logging.WARNING):
            assert second.get(entry) is None
        assert "truncated" in caplog.text
        assert not path.exists()
    finally:
        second.close()


def test_a_damaged_file_without_a_header_line_is_not_read_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_files, "MAX_HEADER", 1000)
    cache = replica(tmp_path)
    folder = cache.folder
    cache.close()
    assert folder is not None
    damaged = folder / ("0" * 40 + ".state")
    damaged.write_bytes(b"{" * 5000)
    with caplog.at_level(logging.WARNING):
        replica(tmp_path).close()
    assert "no header line" in caplog.text
    assert not damaged.exists()


def test_a_read_that_fails_for_io_is_a_miss_and_the_file_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = replica(tmp_path)
    put(first, [2, 7], b"e" * 100)
    first.close()
    second = replica(tmp_path, scan=0)
    try:
        _, entry = second.longest_match([2, 7])
        assert entry is not None
        real_open = os.open

        def flaky(path: Any, *args: Any, **kwargs: Any) -> int:
            if str(path).endswith(".state"):
                raise OSError(116, "Stale file handle")  # NFS, say: not the file's fault
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", flaky)
        assert second.get(entry) is None
        monkeypatch.undo()
        assert len(files(tmp_path)) == 1  # another server's good file, kept
        assert bytes(second.get(entry) or b"") == b"e" * 100  # and read once the error passed
    finally:
        second.close()


def test_a_bad_file_that_cannot_be_deleted_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = replica(tmp_path)
    put(first, [6, 6], b"f" * 100)
    first.close()
    (path,) = files(tmp_path)
    path.write_bytes(path.read_bytes()[:-1] + b"!")  # a checksum that fails
    second = replica(tmp_path, scan=0)
    try:
        _, entry = second.longest_match([6, 6])
        assert entry is not None

        def refuse(self: Path, missing_ok: bool = False) -> None:
            raise PermissionError(13, "Permission denied")  # a read-only share

        monkeypatch.setattr(Path, "unlink", refuse)
        assert second.get(entry) is None
        assert second.longest_match([6, 6]) == (0, None)
    finally:
        monkeypatch.undo()
        second.close()


def test_a_header_nested_past_the_parsers_depth_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = replica(tmp_path)
    folder = cache.folder
    cache.close()
    assert folder is not None
    deep = folder / ("1" * 40 + ".state")
    deep.write_bytes(b"[" * 200_000 + b"\n")
    with caplog.at_level(logging.WARNING):
        replica(tmp_path).close()
    assert "not JSON" in caplog.text
    assert not deep.exists()


def test_one_file_that_cannot_be_looked_at_does_not_hide_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = replica(tmp_path)
    for i in range(3):
        put(first, [9, i], b"g" * 50)
    first.close()
    real = state_files.StateFolder._look_at
    odd = state_files.state_file_name((9, 1))

    def look_at(self: state_files.StateFolder, item: os.DirEntry[str], *args: Any) -> None:
        if item.name == odd:
            raise RuntimeError("a bug")
        real(self, item, *args)

    monkeypatch.setattr(state_files.StateFolder, "_look_at", look_at)
    second = replica(tmp_path, scan=0)
    try:
        assert second.longest_match([9, 0])[0] == 2
        assert second.longest_match([9, 2])[0] == 2
    finally:
        second.close()


def test_the_same_tokens_saved_twice_in_a_row_keep_their_file(tmp_path: Path) -> None:
    """Two slots holding the same tokens are saved one after the other: the second save
    replaces the first entry before its write is booked, and the first write's arrival must
    not delete the file the second one owns."""
    cache = replica(tmp_path, scan=0)
    try:
        put(cache, [8, 8, 8], b"h" * 100)
        put(cache, [8, 8, 8], b"h" * 100)  # buffer_for() forgets the first entry
        cache.close()
        (path,) = files(tmp_path)
        assert cache.counters()["disk_bytes"] == path.stat().st_size
        assert cache.counters()["entries"] == 1
    finally:
        cache.close()


def test_a_file_recreated_on_the_inode_of_one_this_server_removed_is_found(
    tmp_path: Path,
) -> None:
    """Filesystems reuse freed inodes: another server's new file under a name this server
    removed may have the very inode the old one had, and must still be found as new."""
    cache = replica(tmp_path, scan=0.5)
    try:
        put(cache, [1, 1], b"i" * 100)
        eventually(lambda: cache.counters()["disk_bytes"] > 0)
        (path,) = files(tmp_path)
        keep = path.with_name(".same-inode")
        os.link(path, keep)  # holds the inode while the file is removed
        put(cache, [1, 1, 2], b"j" * 100)  # supersedes [1, 1]: its file is removed...
        assert not path.exists()
        # ... and, before the next look at the folder, "another server" saves [1, 1] again,
        # on the old inode.
        os.replace(keep, path)
        eventually(lambda: cache.counters()["entries"] == 2)
        assert cache.counters()["found"] == 1
    finally:
        cache.close()


def test_states_waiting_for_a_slow_disk_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = state_files.StateFolder._write

    def slow_write(self: state_files.StateFolder, *args: Any) -> None:
        release.wait(30)
        real(self, *args)

    monkeypatch.setattr(state_files.StateFolder, "_write", slow_write)
    cache = replica(tmp_path, ram=1000, disk=100_000)
    try:
        for i in range(6):
            put(cache, [i], b"k" * 150)
        # At most half the RAM limit waits for the disk; the rest stayed in RAM only.
        assert cache.counters()["writes_skipped"] >= 3
    finally:
        release.set()
        cache.close()
    assert len(files(tmp_path)) <= 3


def test_a_fifo_in_the_folder_is_skipped_and_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a FIFO for reading waits for a writer: a ``*.state`` that is not a regular
    file must not stop the server from starting, nor the rescans from going on."""
    writer = replica(tmp_path, scan=0)  # looks at the folder once, before any FIFO
    put(writer, [5, 5], b"k" * 100)
    eventually(lambda: len(files(tmp_path)) == 1)
    (real,) = files(tmp_path)
    fifos = [real.with_name(state_files.state_file_name((5, 6 + i))) for i in range(2)]
    os.mkfifo(fifos[0])
    opened: list[str] = []
    path_open, os_open = Path.open, os.open

    def spy_path_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name in {f.name for f in fifos}:
            opened.append(self.name)
        return path_open(self, *args, **kwargs)

    def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path).name in {f.name for f in fifos}:
            opened.append(Path(path).name)
        return os_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy_path_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    started: list[StateCache] = []
    starting = threading.Thread(target=lambda: started.append(replica(tmp_path)), daemon=True)
    starting.start()
    starting.join(10)
    try:
        assert not starting.is_alive(), "start-up blocked on the FIFO"
        (reader,) = started
        assert reader.longest_match([5, 5, 1])[0] == 2  # the real file beside it, found
        os.mkfifo(fifos[1])
        put(writer, [5, 8], b"l" * 100)  # found by a rescan that looked past the new FIFO
        eventually(lambda: reader.longest_match([5, 8, 1])[0] == 2)
        assert reader.counters()["entries"] == 2  # the two real files, no FIFO
        assert all(f.exists() for f in fifos)  # ignored, not deleted as a bad file
        assert opened == []
        reader.close()
    finally:
        if starting.is_alive():  # a writer that closes at once lets the blocked open return
            os.close(os_open(fifos[0], os.O_WRONLY | os.O_NONBLOCK))
            starting.join(10)
        writer.close()


def test_a_known_file_replaced_by_a_fifo_is_a_miss_not_a_hang(tmp_path: Path) -> None:
    writer = replica(tmp_path, scan=0)
    put(writer, [7, 7], b"m" * 100)
    writer.close()
    reader = replica(tmp_path, scan=0)
    (path,) = files(tmp_path)
    path.unlink()
    os.mkfifo(path)  # after the scan, before the read
    _, entry = reader.longest_match([7, 7])
    assert entry is not None
    got: list[memoryview | None] = []
    reading = threading.Thread(target=lambda: got.append(reader.get(entry)), daemon=True)
    reading.start()
    reading.join(10)
    try:
        assert not reading.is_alive(), "the read blocked on the FIFO"
        assert got == [None]
        assert path.exists()  # not a bad state file: left alone
    finally:
        if reading.is_alive():
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            reading.join(10)
        reader.close()
