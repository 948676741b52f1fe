"""Threads of their own for work a client sizes, with a bounded line.

Preparing a request (a template rendered, a prompt tokenized, a grammar built) and embedding
an input both take as long as the client makes them, so neither may run on the event loop
(which would stall every stream) nor in asyncio's default executor (where it would queue
behind, or in front of, everything else, unbounded). A pool runs at most ``threads`` at once
and lets at most ``max_waiting`` more wait; beyond that the answer is 429. A request whose
client leaves while it waits is dropped before it starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from server.errors import QueueFullError

P = ParamSpec("P")
T = TypeVar("T")


class BoundedPool:
    """A bounded pool of ``threads`` threads named ``name``; ``full`` is the 429's message.
    Used from the event loop only."""

    def __init__(self, threads: int, max_waiting: int, *, name: str, full: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._threads = threads
        self._max_waiting = max_waiting
        self._full = full
        self._pending = 0

    @property
    def pending(self) -> int:
        """Work submitted and not yet finished (running or waiting)."""
        return self._pending

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._pending >= self._threads + self._max_waiting:
            raise QueueFullError(self._full, retry_after=1)
        self._pending += 1
        try:
            # Cancelling the await (the client left) cancels the work if it has not started.
            return await asyncio.wrap_future(self._pool.submit(work, *args, **kwargs))
        finally:
            self._pending -= 1

    async def run_unless_small(
        self, small: bool, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``work`` right here on the event loop when the caller knows it is ``small`` (a short
        prompt to tokenize: tens of microseconds, where the hop to a thread and back took half
        a millisecond on two busy cores), else as :meth:`run`."""
        if small:
            return work(*args, **kwargs)
        return await self.run(work, *args, **kwargs)

    def close(self, *, wait: bool = False) -> None:
        """Drop the waiting work; with ``wait``, wait for the running work to end."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
