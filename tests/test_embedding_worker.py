"""A model's embedding line: its own thread, bounded (429 beyond), abandoned work dropped
before it starts or stopped at its next batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from server.embedding_worker import EmbeddingWorker
from server.engine.embedder import EmbeddingCancelled
from server.errors import QueueFullError


class SlowContext:
    """Stands in for the embedding context: one 'batch' per input, each waiting for a go."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.started = threading.Event()
        self.batches = 0
        self.closed = False

    def embed(
        self, inputs: Sequence[Sequence[int]], cancelled: Callable[[], bool]
    ) -> list[list[float]]:
        vectors = []
        for tokens in inputs:
            if cancelled():
                raise EmbeddingCancelled
            self.started.set()
            self.go.wait(10)
            self.batches += 1
            vectors.append([float(len(tokens))])
        return vectors

    def close(self) -> None:
        self.closed = True


def test_the_line_is_bounded_and_abandoned_work_stops() -> None:
    context = SlowContext()

    async def scenario() -> None:
        worker = EmbeddingWorker("m", lambda: context, max_waiting=1)  # type: ignore[arg-type, return-value]
        running = asyncio.create_task(worker.embed([[1]] * 100))
        assert await asyncio.to_thread(context.started.wait, 10)
        waiting = asyncio.create_task(worker.embed([[2]]))
        await asyncio.sleep(0)
        assert worker.pending == 2
        with pytest.raises(QueueFullError):
            await worker.embed([[3]])
        running.cancel()  # its client left mid-way: it stops at its next batch
        waiting.cancel()  # this one never starts
        await asyncio.gather(running, waiting, return_exceptions=True)
        context.go.set()
        assert await worker.embed([[4, 4]]) == [[2.0]]
        # The abandoned request ran one batch; the cancelled one none.
        assert context.batches == 2
        worker.close()

    asyncio.run(scenario())
    assert context.closed


def test_a_context_is_made_once_on_first_use() -> None:
    made: list[Any] = []

    def make() -> SlowContext:
        context = SlowContext()
        context.go.set()
        made.append(context)
        return context

    async def scenario() -> None:
        worker = EmbeddingWorker("m", make, max_waiting=4)  # type: ignore[arg-type]
        assert made == []
        await worker.embed([[1]])
        await worker.embed([[1, 2]])
        worker.close()

    asyncio.run(scenario())
    assert len(made) == 1
