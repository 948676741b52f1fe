from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from server.engine.state_cache import StateCache


def put(cache: StateCache, tokens: list[int], data: bytes) -> None:
    buffer = cache.buffer_for(len(data), tokens)
    buffer[:] = data
    cache.put(tokens, buffer)


def ram_only(limit: int) -> StateCache:
    return StateCache(model_key="m" * 64, ram_bytes=limit, disk_dir=None, disk_bytes=0)


def on_disk(
    tmp_path: Path, ram: int = 10_000, disk: int = 10_000, key: str = "m" * 64
) -> StateCache:
    return StateCache(model_key=key, ram_bytes=ram, disk_dir=tmp_path, disk_bytes=disk)


def test_longest_match_and_get() -> None:
    cache = ram_only(1000)
    put(cache, [1, 2, 3, 4], b"abcd")
    depth, entry = cache.longest_match([1, 2, 3, 9])
    assert depth == 3 and entry is not None
    assert bytes(cache.get(entry) or b"") == b"abcd"
    assert cache.tokens_of(entry) == (1, 2, 3, 4)


def test_ram_never_exceeds_its_limit_and_evicts_least_recently_used() -> None:
    cache = ram_only(250)
    put(cache, [1], b"a" * 100)
    put(cache, [2], b"b" * 100)
    _, first = cache.longest_match([1])
    assert first is not None
    cache.get(first)  # [1] is now more recent than [2]
    put(cache, [3], b"c" * 100)
    assert cache.ram_bytes <= 250
    assert cache.longest_match([2])[0] == 0
    assert cache.longest_match([1])[0] == 1
    assert cache.longest_match([3])[0] == 1


def test_an_entry_larger_than_every_limit_is_not_kept() -> None:
    cache = ram_only(10)
    put(cache, [1], b"x" * 11)
    assert cache.longest_match([1]) == (0, None)


def test_entries_survive_a_restart_on_disk(tmp_path: Path) -> None:
    cache = on_disk(tmp_path)
    put(cache, [5, 6, 7], b"state-bytes")
    cache.close()
    again = on_disk(tmp_path)
    depth, entry = again.longest_match([5, 6, 7, 8])
    assert depth == 3 and entry is not None
    assert bytes(again.get(entry) or b"") == b"state-bytes"
    again.close()


def test_ram_evicted_entries_are_read_back_from_disk(tmp_path: Path) -> None:
    cache = on_disk(tmp_path, ram=150, disk=10_000)
    put(cache, [1], b"a" * 100)
    cache.close()  # written
    cache = on_disk(tmp_path, ram=150, disk=10_000)
    put(cache, [2], b"b" * 100)
    _, entry = cache.longest_match([1])
    assert entry is not None and bytes(cache.get(entry) or b"") == b"a" * 100
    assert cache.ram_bytes <= 150
    cache.close()


def test_disk_never_exceeds_its_limit(tmp_path: Path) -> None:
    cache = on_disk(tmp_path, ram=1000, disk=700)
    for i in range(6):
        put(cache, [i], bytes([i]) * 200)
    cache.close()
    counters = cache.counters()
    assert counters["disk_bytes"] <= 700
    assert sum(p.stat().st_size for p in tmp_path.rglob("*.state")) <= 700
    assert counters["disk_evictions"] >= 1


def test_truncated_file_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = on_disk(tmp_path)
    put(cache, [1, 2], b"z" * 500)
    cache.close()
    (path,) = list(tmp_path.rglob("*.state"))
    path.write_bytes(path.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING):
        again = on_disk(tmp_path)
    assert again.longest_match([1, 2]) == (0, None)
    assert "truncated" in caplog.text
    assert not path.exists()
    again.close()


def test_corrupt_state_is_never_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = on_disk(tmp_path)
    put(cache, [1, 2], b"z" * 500)
    cache.close()
    (path,) = list(tmp_path.rglob("*.state"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    again = on_disk(tmp_path)
    _, entry = again.longest_match([1, 2])
    assert entry is not None
    with caplog.at_level(logging.WARNING):
        assert again.get(entry) is None
    assert "checksum" in caplog.text
    assert again.longest_match([1, 2]) == (0, None)
    again.close()


def test_another_models_states_are_not_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = on_disk(tmp_path, key="a" * 64)
    put(cache, [1], b"state")
    cache.close()
    # Same directory name prefix, other identity: simulate a file from another build.
    (path,) = list(tmp_path.rglob("*.state"))
    header, _, blob = path.read_bytes().partition(b"\n")
    path.write_bytes(
        header.replace(b'"' + b"a" * 64 + b'"', b'"' + b"b" * 64 + b'"') + b"\n" + blob
    )
    with caplog.at_level(logging.WARNING):
        again = on_disk(tmp_path, key="a" * 64)
    assert again.longest_match([1]) == (0, None)
    assert "another model" in caplog.text
    again.close()


def test_buffers_of_evicted_states_are_reused_for_new_ones() -> None:
    cache = ram_only(1000)
    put(cache, [1], b"a" * 400)
    put(cache, [2], b"b" * 400)
    put(cache, [3], b"c" * 400)  # evicts [1] and takes over its memory
    _, third = cache.longest_match([3])
    assert third is not None and bytes(cache.get(third) or b"") == b"c" * 400
    buffer = cache.buffer_for(390)  # evicts [2], the least recently used, and reuses its memory
    assert bytes(buffer[:3]) == b"bbb"  # the old memory, not a fresh zeroed block
    assert buffer.nbytes == 390
    assert cache.ram_bytes <= 1000
    assert cache.buffer_for(100).nbytes == 100  # too small a fit: fresh memory


def test_a_longer_state_of_the_same_conversation_supersedes_the_older_one() -> None:
    cache = ram_only(10_000)
    put(cache, [1, 2, 3], b"a" * 300)
    put(cache, [9, 9], b"z" * 300)
    put(cache, [1, 2, 3, 4, 5], b"b" * 300)  # turn 2 of the first conversation
    assert cache.counters()["entries"] == 2
    assert cache.stats["superseded"] == 1
    depth, entry = cache.longest_match([1, 2, 3, 7])
    assert depth == 3 and entry is not None
    assert bytes(cache.get(entry) or b"") == b"b" * 300
    assert cache.ram_bytes <= 700  # the older state's memory was reused, not added


def test_folders_and_files_are_private_to_the_servers_user(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    cache = on_disk(root)
    put(cache, [1, 2, 3], b"a prompt's state")
    cache.close()
    folders = [root, *root.iterdir()]
    assert all(f.stat().st_mode & 0o777 == 0o700 for f in folders)
    files = list(root.glob("*/*.state"))
    assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files)


@pytest.mark.parametrize(
    "header",
    [
        {"tokens": ["a"], "size": 4, "sha256": "x"},
        {"tokens": [], "size": 4, "sha256": "x"},
        {"tokens": [1], "size": "4", "sha256": "x"},
        {"tokens": [1], "size": -4, "sha256": "x"},
        {"tokens": 7, "size": 4, "sha256": "x"},
        {"tokens": [1.5], "size": 4, "sha256": None},
        [],
    ],
)
def test_a_file_with_malformed_header_fields_is_dropped_not_fatal(
    tmp_path: Path, header: object, caplog: pytest.LogCaptureFixture
) -> None:
    cache = on_disk(tmp_path)
    folder = cache.folder
    cache.close()
    assert folder is not None
    if isinstance(header, dict):
        header = {"format": "hearth-kv-state-1", "model": "m" * 64, **header}
    bad = folder / "bad.state"
    bad.write_bytes(json.dumps(header).encode() + b"\nabcd")
    with caplog.at_level(logging.WARNING):
        again = on_disk(tmp_path)  # starts
    assert not bad.exists()
    assert any("dropping KV state file" in r.message for r in caplog.records)
    again.close()


def test_a_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = on_disk(tmp_path)
    folder = cache.folder
    assert folder is not None
    real_fdopen = os.fdopen

    class DiskFull:
        def __init__(self, descriptor: int, mode: str) -> None:
            self.file = real_fdopen(descriptor, mode)

        def __enter__(self) -> DiskFull:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: bytes) -> int:
            self.file.write(bytes(data)[:3])  # part of it made it to disk
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", DiskFull)
    put(cache, [1, 2, 3], b"state")
    cache.close()
    monkeypatch.undo()
    assert list(folder.iterdir()) == []
