"""Bridge from the engine thread to asyncio: one request's events as an async iterator."""

from __future__ import annotations

import asyncio
import contextlib

from server.engine.jobs import Job
from server.engine.loop import EngineLoop
from server.engine.types import GenerationRequest, TokenEvent


class _LoopSink:
    """Where the engine thread puts a stream's events. The scheduler delivers a step's events
    for one loop together (``loop`` and :meth:`put`); called directly, it hands over one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[TokenEvent]) -> None:
        self.loop = loop
        self.put = queue.put_nowait

    def __call__(self, event: TokenEvent) -> None:
        # Runs on the engine thread; a closed loop means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.put, event)


class GenerationStream:
    """The events of one submitted request; :meth:`cancel` stops it (its slot frees at the
    next engine step). Made by :func:`open_streams`, which queues a request's jobs together."""

    def __init__(self, scheduler: EngineLoop) -> None:
        loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._scheduler = scheduler
        self._finished = False
        self._job: Job | None = None

        self.sink = _LoopSink(loop, self._events)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._finished:
            raise StopAsyncIteration
        event = await self._events.get()
        if event.finish_reason is not None:
            self._finished = True
        return event

    def cancel(self) -> None:
        if not self._finished and self._job is not None:
            self._scheduler.cancel(self._job)


def open_streams(
    scheduler: EngineLoop, requests: list[GenerationRequest]
) -> list[GenerationStream]:
    """Queue one request's jobs, all or none (raises QueueFullError or ShuttingDownError),
    and return their event streams."""
    streams = [GenerationStream(scheduler) for _ in requests]
    jobs = scheduler.submit_all([(r, s.sink) for r, s in zip(requests, streams, strict=True)])
    for stream, job in zip(streams, jobs, strict=True):
        stream._job = job
    return streams
