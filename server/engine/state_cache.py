"""Saved sequence states: a RAM LRU written through to a disk folder, both bounded in bytes.

When a slot is about to be overwritten, its KV state (``llama_state_seq_get_data``) is kept
here under the tokens it covers. A later prompt sharing a long prefix with such an entry has
the state restored into its slot instead of prefilling those tokens again.

Every entry is also written to disk in the background (:mod:`server.engine.state_files`), so
the cache survives a restart, and, when several servers share the folder, a state one of them
saved is found and restored by the others: the index here also holds the files they wrote,
learned from the folder every few seconds, and forgets files they removed. The disk bound is
then a bound on the folder, kept by every server evicting the least recently used file.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.engine.prefix import PrefixTree
from server.engine.state_files import (
    Event,
    Forgotten,
    Found,
    Gone,
    StateFolder,
    Touched,
    Written,
)

logger = logging.getLogger(__name__)

STAT_KEYS = (
    "stored",
    "superseded",
    "ram_evictions",
    "disk_evictions",
    "found",  # saved by another server sharing the folder, found here
    "removed_by_others",  # files another server removed (evicted or replaced)
    "used_by_others",  # files another server restored
    "writes_skipped",  # not written: too many bytes already waiting for the disk
)


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    blob: memoryview | None  # None: on disk only
    path: Path | None
    used: float  # wall-clock time, comparable with other servers' file mtimes
    disk_size: int = 0
    writing: bool = False  # queued for the disk writer: its blob must not be reused yet


class StateCache:
    """Token-prefix keyed states of one model. Engine thread only (the folder's background
    thread talks to it through events)."""

    def __init__(
        self,
        *,
        model_key: str,
        ram_bytes: int,
        disk_dir: Path | None,
        disk_bytes: int,
        scan_interval: float = 0.0,
    ) -> None:
        self.model_key = model_key
        self.ram_limit = ram_bytes
        self.disk_limit = disk_bytes
        self._entries: dict[int, _Entry] = {}
        self._ram: OrderedDict[int, None] = OrderedDict()  # LRU order of entries with a blob
        self._index: PrefixTree[int] = PrefixTree()
        self._by_tokens: dict[tuple[int, ...], int] = {}
        self._by_path: dict[Path, int] = {}
        # Files this server removed whose removal the folder's thread has not yet taken in:
        # events about them meanwhile are stale.
        self._removed: set[Path] = set()
        # Bytes of states queued for the disk writer. They stay in memory until written, even
        # when evicted from the RAM cache, so they are capped (half the RAM limit).
        self._queued: dict[int, int] = {}  # entry id -> bytes, until its Written event
        self._writing_bytes = 0
        self._next_id = 0
        self._spare: list[bytearray] = []  # buffers of evicted states, for new ones
        self._spare_bytes = 0
        self.ram_bytes = 0
        self.disk_bytes = 0
        # Every key from the start: the metrics thread copies this dict while the engine
        # thread counts, and a key added meanwhile would break the copy.
        self.stats: Counter[str] = Counter(dict.fromkeys(STAT_KEYS, 0))
        self._folder: StateFolder | None = None
        if disk_dir is not None and disk_bytes > 0:
            self._folder = StateFolder(
                disk_dir / model_key[:32], model_key, scan_interval=scan_interval
            )
            found = self._folder.start()
            for event in sorted(found, key=lambda f: f.mtime):
                self._book(event)
            self.stats["found"] = 0  # counts other servers' states found while running
            self._evict_disk()
            if self._entries:
                logger.info(
                    "KV state cache: %d saved states found in %s",
                    len(self._entries),
                    self._folder.folder,
                )

    @property
    def folder(self) -> Path | None:
        """Where this model's state files are (None: RAM only)."""
        return self._folder.folder if self._folder is not None else None

    # -- lookups ------------------------------------------------------------------------------

    def longest_match(self, prompt: Sequence[int]) -> tuple[int, int | None]:
        self._absorb_disk()
        return self._index.longest_match(prompt)

    def tokens_of(self, entry_id: int) -> tuple[int, ...]:
        return self._entries[entry_id].tokens

    def get(self, entry_id: int) -> memoryview | None:
        """The state of ``entry_id`` (from RAM, else disk, verified); None if unusable."""
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        entry.used = time.time()
        if entry.path is not None and self._folder is not None:
            self._folder.touch(entry.path)  # used: last in every sharing server's LRU order
        if entry.blob is not None:
            self._ram.move_to_end(entry_id)
            return entry.blob
        blob = None
        if entry.path is not None and self._folder is not None:
            try:
                blob = self._folder.read(entry.path)
            except OSError as exc:  # perhaps passing: a miss, and the entry stays
                logger.warning("could not read KV state file %s: %s", entry.path.name, exc)
                return None
        if blob is None:
            self._forget(entry_id)
            return None
        entry.blob = blob
        self._ram[entry_id] = None
        self.ram_bytes += _capacity(blob)
        self._evict_ram()
        return blob

    # -- storing ------------------------------------------------------------------------------

    def buffer_for(self, size: int, tokens: Sequence[int] = ()) -> memoryview:
        """A writable buffer of ``size`` bytes for a new state, within the RAM limit: least
        recently used states make room first, and their memory is reused when it fits.

        Fresh memory costs page faults: copying a 30 MB state into new memory took 18 ms
        here, into memory used before 2.5 ms, and a state may be copied on the way to a
        request's first token."""
        self._absorb_disk()
        # A state whose tokens are a prefix of the new one's (the same conversation, a turn
        # ago) can never match a prompt better than the new state: it goes, and its memory
        # is reused.
        for entry_id in self._index.prefixes_of(tokens):
            self._replace(entry_id)
        while self._ram and self.ram_bytes + size + size // 8 > self.ram_limit:
            self._evict_oldest(recycle=True)
        fitting = [b for b in self._spare if size <= len(b) <= size + size // 4]
        buffer = min(fitting, key=len) if fitting else None
        if buffer is not None:
            self._drop_spare(buffer)
        while (
            self._spare and self.ram_bytes + self._spare_bytes + size + size // 8 > self.ram_limit
        ):
            self._drop_spare(max(self._spare, key=len))
        if buffer is None:
            # Room to grow: the next turn of the same conversation is a little longer, and
            # its state should fit the memory this one leaves behind.
            buffer = bytearray(size + size // 8)
        return memoryview(buffer)[:size]

    def put(self, tokens: Sequence[int], blob: memoryview) -> None:
        """Keep ``blob`` (not copied; it must not change afterwards)."""
        self._absorb_disk()
        key = tuple(tokens)
        if key in self._by_tokens:  # the same tokens again: refresh, keep one copy
            self.get(self._by_tokens[key])
            return
        if blob.nbytes > max(self.ram_limit, self.disk_limit):
            return
        entry_id = self._new_entry(key, blob, None, time.time())
        self._ram[entry_id] = None
        self.ram_bytes += _capacity(blob)
        self.stats["stored"] += 1
        if self._folder is not None:
            # At most half the RAM limit waits for the disk (or one state, however large).
            if self._writing_bytes == 0 or self._writing_bytes + blob.nbytes <= self.ram_limit // 2:
                self._entries[entry_id].writing = True
                self._writing_bytes += blob.nbytes
                self._queued[entry_id] = blob.nbytes
                self._folder.write(entry_id, key, blob)
            else:  # the disk is slower than states come: this one stays in RAM only
                self.stats["writes_skipped"] += 1
        self._evict_ram()

    def refresh(self) -> None:
        """Take in what the folder's background thread learned, and keep the disk bound."""
        self._absorb_disk()

    def close(self) -> None:
        """Finish pending disk writes."""
        if self._folder is not None:
            self._folder.close()
        self._absorb_disk()

    def counters(self) -> dict[str, int]:
        self._absorb_disk()
        return {
            **self.stats,
            "ram_bytes": self.ram_bytes,
            "disk_bytes": self.disk_bytes,
            "entries": len(self._entries),
        }

    # -- internals ----------------------------------------------------------------------------

    def _new_entry(
        self, tokens: tuple[int, ...], blob: memoryview | None, path: Path | None, used: float
    ) -> int:
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self._entries[entry_id] = _Entry(tokens, blob, path, used)
        self._by_tokens[tokens] = entry_id
        self._index.insert(tokens, entry_id)
        return entry_id

    def _evict_ram(self) -> None:
        """Keep states and spare buffers together within the RAM limit."""
        while self.ram_bytes + self._spare_bytes > self.ram_limit:
            if self._spare:
                self._drop_spare(max(self._spare, key=len))
            elif self._ram:
                self._evict_oldest(recycle=False)
            else:
                break

    def _evict_oldest(self, *, recycle: bool) -> None:
        entry_id, _ = self._ram.popitem(last=False)
        entry = self._entries[entry_id]
        blob, entry.blob = entry.blob, None
        self.ram_bytes -= _capacity(blob)
        self.stats["ram_evictions"] += 1
        # A buffer still queued for the disk writer must not be overwritten.
        if recycle and blob is not None and not entry.writing:
            buffer = blob.obj
            blob.release()
            if isinstance(buffer, bytearray):
                self._spare.append(buffer)
                self._spare_bytes += len(buffer)
        if entry.path is None and not entry.writing:
            self._forget(entry_id)  # no disk copy exists or will

    def _replace(self, entry_id: int) -> None:
        if entry_id in self._ram:  # move it to the front of the LRU, then evict it
            self._ram.move_to_end(entry_id, last=False)
            self._evict_oldest(recycle=True)
        self._forget(entry_id)
        self.stats["superseded"] += 1

    def _drop_spare(self, buffer: bytearray) -> None:
        self._spare.remove(buffer)
        self._spare_bytes -= len(buffer)

    def _forget(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        self._by_tokens.pop(entry.tokens, None)
        self._index.remove(entry.tokens, entry_id)
        if entry_id in self._ram:
            del self._ram[entry_id]
            self.ram_bytes -= _capacity(entry.blob)
        self._drop_file(entry)

    def _drop_file(self, entry: _Entry) -> None:
        if entry.path is not None:
            assert self._folder is not None
            self._folder.remove(entry.path)
            self._removed.add(entry.path)
            self._by_path.pop(entry.path, None)
            self.disk_bytes -= entry.disk_size
            entry.path, entry.disk_size = None, 0

    def _absorb_disk(self) -> None:
        if self._folder is None:
            return
        for event in self._folder.events():
            self._book(event)
        self._evict_disk()

    def _book(self, event: Event) -> None:
        """Bring the index up to date with what the folder holds."""
        if isinstance(event, Written):
            self._book_write(event)
        elif isinstance(event, Forgotten):
            self._removed.discard(event.path)
        elif event.path in self._removed:
            return  # about a file this server removed, from before the removal
        elif isinstance(event, Found):
            entry_id = self._by_tokens.get(event.tokens)
            if entry_id is None:
                entry_id = self._new_entry(event.tokens, None, None, event.mtime)
                self.stats["found"] += 1
            self._set_file(entry_id, event.path, event.size)
            entry = self._entries[entry_id]
            entry.used = max(entry.used, event.mtime)
        elif isinstance(event, Touched):
            entry_id = self._by_path.get(event.path)
            if entry_id is not None:
                entry = self._entries[entry_id]
                entry.used = max(entry.used, event.mtime)
                self.stats["used_by_others"] += 1
        elif isinstance(event, Gone):
            entry_id = self._by_path.pop(event.path, None)
            if entry_id is None:
                return
            entry = self._entries[entry_id]
            self.disk_bytes -= entry.disk_size
            entry.path, entry.disk_size = None, 0
            self.stats["removed_by_others"] += 1
            if entry.blob is None and not entry.writing:
                self._forget(entry_id)

    def _book_write(self, event: Written) -> None:
        self._writing_bytes -= self._queued.pop(event.entry_id, 0)
        entry = self._entries.get(event.entry_id)
        if entry is None:  # forgotten meanwhile (replaced, say, by a save of the same tokens)
            if event.path is None:
                return
            owner = self._by_tokens.get(event.tokens)
            if owner is None:
                assert self._folder is not None
                self._folder.remove(event.path)  # nobody wants it
                self._removed.add(event.path)
            elif not self._entries[owner].writing:  # its own write, if any, comes later
                self._set_file(owner, event.path, event.size)
            return
        entry.writing = False
        if event.path is not None:
            self._set_file(event.entry_id, event.path, event.size)
        elif entry.blob is None and entry.path is None:
            self._forget(event.entry_id)

    def _set_file(self, entry_id: int, path: Path, size: int) -> None:
        entry = self._entries[entry_id]
        if entry.path is not None and entry.path != path:
            return  # two files for one state (a hash collision): keep the first
        owner = self._by_path.get(path)
        if owner is not None and owner != entry_id:
            return
        self.disk_bytes += size - entry.disk_size
        entry.path, entry.disk_size = path, size
        self._by_path[path] = entry_id

    def _evict_disk(self) -> None:
        """Least recently used files go first (by every server sharing the folder alike);
        an entry left with no copy is forgotten."""
        if self.disk_bytes <= self.disk_limit:
            return
        on_disk = sorted((e.used, i) for i, e in self._entries.items() if e.path is not None)
        for _, entry_id in on_disk:
            if self.disk_bytes <= self.disk_limit:
                break
            entry = self._entries[entry_id]
            self._drop_file(entry)
            self.stats["disk_evictions"] += 1
            if entry.blob is None and not entry.writing:
                self._forget(entry_id)


def _capacity(blob: memoryview | None) -> int:
    """Bytes of memory behind ``blob`` (a recycled buffer may be a little larger)."""
    if blob is None:
        return 0
    return len(blob.obj) if isinstance(blob.obj, bytearray) else blob.nbytes
