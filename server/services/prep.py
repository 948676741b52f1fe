"""Where requests are prepared: chat templates rendered, prompts tokenized, grammars built.

That work is the client's to size (a long conversation, a big schema), so it runs on threads
of its own, never on the event loop (which would stall every stream) nor in the default
executor (where it would queue behind, or in front of, everything else). At most
``max_waiting`` requests wait for those threads; beyond that the answer is 429. A request
whose client leaves while it waits is dropped before it starts. What one request may cost
is bounded where it is built (messages, tools, prompt length, schema size), so a running
preparation always ends soon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from server.errors import QueueFullError

P = ParamSpec("P")
T = TypeVar("T")


class PrepExecutor:
    """A bounded pool for preparing requests. Used from the event loop only."""

    def __init__(self, threads: int, max_waiting: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prep")
        self._threads = threads
        self._max_waiting = max_waiting
        self._pending = 0

    @property
    def pending(self) -> int:
        """Preparations submitted and not yet finished (running or waiting)."""
        return self._pending

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._pending >= self._threads + self._max_waiting:
            raise QueueFullError(
                "too many requests are waiting to be prepared; retry shortly", retry_after=1
            )
        self._pending += 1
        try:
            # Cancelling the await (the client left) cancels the work if it has not started.
            return await asyncio.wrap_future(self._pool.submit(work, *args, **kwargs))
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
