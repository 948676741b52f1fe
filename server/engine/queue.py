"""The per-model admission queue: bounded, fair across owners, with a priority inside each.

An owner is an API key (or, without keys, the request's ``user``, else the request itself).
A request's jobs (its choices times its prompts) are all its owner's. When a slot frees, the
owner holding the fewest running jobs goes next, ties taken in turn: one owner with fifty
queued jobs, or one request with ``n = 8``, gets one slot at a time once anyone else waits.
``priority`` orders jobs within one owner's line only; it never puts a key ahead of another.

The queue is bounded in jobs, and an owner may hold at most ``max_per_owner`` of them, so one
key (or one request with 64 prompts) cannot fill it for everyone. Not thread-safe by itself:
the scheduler guards it with its lock.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Fewest-running owner first, round-robin among equals, by priority then FIFO within an
    owner."""

    def __init__(self, maxsize: int, max_per_owner: int | None = None) -> None:
        self.maxsize = maxsize
        self.max_per_owner = max_per_owner or maxsize
        # owner -> its line of (-priority, arrival, item), kept sorted; the dict's order is
        # the rotation (an owner served goes to the back).
        self._by_owner: OrderedDict[str, list[tuple[int, int, T]]] = OrderedDict()
        self._arrivals = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def full(self) -> bool:
        return self._size >= self.maxsize

    def room_for(self, owner: str, jobs: int, idle_slots: int = 0) -> bool:
        """Whether ``jobs`` more for ``owner`` fit, in the queue and in the owner's share.
        ``idle_slots`` of them will not wait: free slots that nothing queued will take."""
        waiting = jobs - idle_slots
        queued = len(self._by_owner.get(owner, ()))
        return self._size + waiting <= self.maxsize and queued + waiting <= self.max_per_owner

    def put(self, item: T, *, owner: str, priority: int = 0) -> None:
        """Enqueue; the caller checks :meth:`room_for` first (and answers 429)."""
        line = self._by_owner.setdefault(owner, [])
        entry = (-priority, next(self._arrivals), item)
        line.append(entry)
        if len(line) > 1 and line[-2][:2] > entry[:2]:
            line.sort(key=lambda e: e[:2])
        self._size += 1

    def pop(self, running: Mapping[str, int] | None = None) -> T | None:
        """The next item: from the owner with the fewest jobs in ``running`` (owner -> jobs
        now holding a slot), the first such owner in the rotation on a tie; its highest
        priority, earliest job. That owner then moves to the back of the rotation."""
        if not self._size:
            return None
        counts = running or {}
        owner = min(self._by_owner, key=lambda o: counts.get(o, 0))  # first minimum: rotation
        line = self._by_owner.pop(owner)
        _, _, item = line.pop(0)
        if line:
            self._by_owner[owner] = line  # back of the rotation
        self._size -= 1
        return item

    def remove_if(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop (and return) every queued item matching ``predicate``."""
        removed: list[T] = []
        for owner in list(self._by_owner):
            line = self._by_owner[owner]
            kept = [entry for entry in line if not predicate(entry[2])]
            removed.extend(entry[2] for entry in line if predicate(entry[2]))
            if kept:
                self._by_owner[owner] = kept
            else:
                del self._by_owner[owner]
        self._size -= len(removed)
        return removed
