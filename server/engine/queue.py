"""The per-model admission queue: bounded, fair across owners, with an optional priority.

Owners (an API key, or the request's ``user``) take turns: one owner with fifty queued
requests gets one admission per round, like everyone else. Within the round, a higher
``priority`` is admitted first. Not thread-safe by itself: the scheduler guards it with its lock.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Round-robin across owners, FIFO within an owner."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._by_owner: OrderedDict[str, deque[tuple[int, T]]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def full(self) -> bool:
        return self._size >= self.maxsize

    def put(self, item: T, *, owner: str, priority: int = 0) -> None:
        """Enqueue; the caller checks :meth:`full` first (and answers 429)."""
        self._by_owner.setdefault(owner, deque()).append((priority, item))
        self._size += 1

    def pop(self) -> T | None:
        """Take the next item: the highest priority at the head of any owner's line, ties going
        to the owner whose turn it is; that owner then moves to the back of the rotation."""
        if not self._size:
            return None
        owner = max(self._by_owner, key=lambda o: self._by_owner[o][0][0])
        line = self._by_owner.pop(owner)
        _, item = line.popleft()
        if line:
            self._by_owner[owner] = line  # back of the rotation
        self._size -= 1
        return item

    def remove_if(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop (and return) every queued item matching ``predicate``."""
        removed: list[T] = []
        for owner in list(self._by_owner):
            line = self._by_owner[owner]
            kept = deque(entry for entry in line if not predicate(entry[1]))
            removed.extend(entry[1] for entry in line if predicate(entry[1]))
            if kept:
                self._by_owner[owner] = kept
            else:
                del self._by_owner[owner]
        self._size -= len(removed)
        return removed
