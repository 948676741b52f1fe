"""One model's embedding requests, on a thread of their own and in a bounded line.

Embedding a large input takes a while, and a model's embedding context serves one call at a
time. Requests used to wait for it on a lock inside asyncio's default thread pool, unbounded
and uncancellable: a few abandoned large requests there starved every chat's tokenization
(a one-token chat took 169 s). Here each model has its own single thread, at most
``max_waiting`` requests wait for it (429 beyond), a request whose client has gone is dropped
before it starts, and one already running stops at its next batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from server.engine.embedder import EmbeddingCancelled, LlamaEmbedder
from server.pool import BoundedPool


class EmbeddingWorker:
    """Embeds through a context made on first use by ``make_context``, on one thread of a
    bounded pool (:mod:`server.pool`). The asyncio side (:meth:`embed`) is used from the
    event loop only."""

    def __init__(
        self, name: str, make_context: Callable[[], LlamaEmbedder], max_waiting: int
    ) -> None:
        self._make_context = make_context
        self._context: LlamaEmbedder | None = None
        self._pool = BoundedPool(
            1,
            max_waiting,
            name=f"embed-{name}",
            full=f"the embeddings queue for model '{name}' is full ({max_waiting} waiting)",
        )

    @property
    def pending(self) -> int:
        return self._pool.pending

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        abandoned = threading.Event()
        try:
            return await self._pool.run(self._embed, inputs, abandoned.is_set)
        except asyncio.CancelledError:
            abandoned.set()  # running already: stop at the next batch
            raise

    def _embed(
        self, inputs: Sequence[Sequence[int]], abandoned: Callable[[], bool]
    ) -> list[list[float]]:
        if abandoned():
            raise EmbeddingCancelled
        if self._context is None:
            self._context = self._make_context()
        return self._context.embed(inputs, abandoned)

    def close(self) -> None:
        """Wait for the running call, drop the waiting ones, free the context."""
        self._pool.close(wait=True)
        if self._context is not None:
            self._context.close()
            self._context = None
