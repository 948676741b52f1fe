"""The engine thread of one model: it drives the scheduler and delivers its events.

:class:`server.engine.scheduler.Scheduler` decides everything (admission, KV placement,
batches, sequence advance) and its KV manager owns every cell; this module only runs it.
The asyncio side submits and cancels under the condition variable; the engine thread plans
each step under it, carries the plan out without it (KV operations, decode, sampling),
records the results under it again, and hands the events to their requests. The
asyncio side never waits on llama.cpp: events cross to the event loop through the sink each
request registered (``loop.call_soon_threadsafe`` in :mod:`server.engine.stream`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from server.engine.backend import Backend
from server.engine.jobs import EventSink, Job, SchedulerStats, StepPlan
from server.engine.lookup import LookupSettings
from server.engine.scheduler import Scheduler
from server.engine.state_cache import StateCache
from server.engine.types import GenerationRequest, TokenEvent
from server.errors import EngineError, ShuttingDownError

logger = logging.getLogger(__name__)


class EngineLoop:
    """Owns the engine thread of one model and the lock around its scheduler."""

    def __init__(
        self,
        backend: Backend,
        *,
        name: str,
        max_queue: int = 64,
        max_queue_per_owner: int | None = None,
        prefill_chunk: int = 512,
        queue_timeout: float = 60.0,
        state_cache: StateCache | None = None,
        lookup: LookupSettings | None = None,
    ) -> None:
        self._name = name
        self._scheduler = Scheduler(
            backend,
            name=name,
            max_queue=max_queue,
            max_queue_per_owner=max_queue_per_owner,
            prefill_chunk=prefill_chunk,
            queue_timeout=queue_timeout,
            state_cache=state_cache,
            lookup=lookup,
        )
        # Guards the scheduler between the asyncio side (submit, cancel, stats) and the engine
        # thread, which holds it except while the backend decodes and while it delivers.
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._failed = False
        # Events of the last step, delivered right before the next decode (engine thread only).
        self._pending: list[tuple[EventSink, TokenEvent]] = []
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)

    # -- the asyncio side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def max_jobs_per_request(self) -> int:
        return self._scheduler.max_jobs_per_request

    def submit(self, request: GenerationRequest, sink: EventSink) -> Job:
        """Queue ``request``; its events go to ``sink`` from the engine thread."""
        return self.submit_all([(request, sink)])[0]

    def submit_all(self, requests: Sequence[tuple[GenerationRequest, EventSink]]) -> list[Job]:
        """Queue one request's jobs (its choices, its prompts), all or none: a full queue, or
        an owner over its share of it, is a QueueFullError for the whole request."""
        jobs = [Job(request=request, sink=sink) for request, sink in requests]
        with self._cond:
            if self._failed:
                raise EngineError(f"the engine of model '{self._name}' stopped; retry to reload")
            if not self._accepting:
                raise ShuttingDownError("the server is shutting down", retry_after=5)
            self._scheduler.add(jobs, time.monotonic())
            self._cond.notify()
        return jobs

    def cancel(self, job: Job) -> None:
        """Stop ``job``: dropped from the queue now, or its slot freed at the next step."""
        with self._cond:
            self._scheduler.cancel(job)
            self._cond.notify()

    def cancel_all(self) -> None:
        """Stop everything queued or running: each ends with finish reason "cancelled"."""
        with self._cond:
            self._scheduler.cancel_all()
            self._cond.notify()

    def stats(self) -> SchedulerStats:
        """Every counter of this model's engine, read at once, without the lock: the scheduler's
        counts are lengths and dict copies, each read whole under the GIL."""
        return self._scheduler.stats()

    def stop_accepting(self) -> None:
        """New requests get 503 from now on; queued and running ones carry on."""
        with self._cond:
            self._accepting = False

    def stop(self, timeout: float | None = None) -> bool:
        """Stop admitting, cancel what is queued, let the loop finish what runs, and join it.
        Returns False if the loop was still running when ``timeout`` passed."""
        with self._cond:
            self._accepting = False
            self._stop = True
            self._scheduler.drain()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """The engine thread died: nothing will run here again (the registry reloads)."""
        return self._failed

    # -- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step_or_wait():
                pass
        except Exception:  # a bug in the loop: fail every request loudly rather than hang them
            logger.exception("engine loop for %s crashed", self._name)
            with self._cond:
                self._failed = True
                self._accepting = False
                self._scheduler.abort("the engine stopped unexpectedly")
                self._pending += self._scheduler.take_events()
            self._deliver()

    def _step_or_wait(self) -> bool:
        with self._cond:
            plan = self._scheduler.schedule(time.monotonic())
            self._pending += self._scheduler.take_events()
            stopping = self._stop
        if not plan.idle or plan.kv_ops:
            self._step(plan)
            return True
        self._deliver()
        if stopping:
            self._scheduler.close()
            return False
        # Saving a slot's state may take a while: not under the lock, which only guards the
        # queue here (nothing is in a slot, and only this thread fills them).
        wait = self._scheduler.idle(time.monotonic())
        with self._cond:
            if wait > 0 and not self._scheduler.has_work and not self._stop:
                self._cond.wait(timeout=wait)
        return True

    def _step(self, plan: StepPlan) -> None:
        # Delivered right before the decode, which releases the GIL: the event loop then
        # serializes and sends the last step's tokens while llama.cpp computes, instead of
        # holding the GIL while this thread samples and builds the next batch.
        self._deliver()
        result = self._scheduler.execute(plan)
        with self._cond:
            self._scheduler.update(plan, result)
            self._pending += self._scheduler.take_events()

    def _deliver(self) -> None:
        """Hand the last step's events to their sinks. Sinks that live on an event loop
        (``GenerationStream``'s) get all of a step's events in one ``call_soon_threadsafe``
        per loop: each call writes to the loop's wake-up pipe, and with every stream's token
        in one step that was a system call per stream per token."""
        pending, self._pending = self._pending, []
        batches: dict[Any, list[tuple[EventSink, TokenEvent]]] = {}
        for sink, event in pending:
            loop = getattr(sink, "loop", None)
            if loop is None:
                sink(event)
            else:
                batches.setdefault(loop, []).append((sink, event))
        for loop, items in batches.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
                loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list[tuple[EventSink, TokenEvent]]) -> None:
    """On the event loop: each event to its stream, in order."""
    for sink, event in items:
        sink.put(event)  # type: ignore[attr-defined]
