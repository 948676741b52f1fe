"""A deterministic fake backend, and a scheduler core stepped by hand over it (no model, no
thread, no clock): for the scheduler's and the KV manager's unit tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from server.engine.backend import Backend, BatchEntry
from server.engine.jobs import Job, SchedulerStats
from server.engine.scheduler import Scheduler
from server.engine.slots import MIN_RECOMPUTED
from server.engine.types import GenerationRequest, SamplingParams, TokenEvent, TopLogprob

EOG = 999


class FakeBackend:
    """Each sequence's next token is its previous token + 1; token t reads as "<t>"."""

    def __init__(
        self, n_slots: int = 1, n_ctx: int = 256, n_batch: int = 64, eog_after: int | None = None
    ) -> None:
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.min_recomputed = MIN_RECOMPUTED
        self.eog_after = eog_after
        self.batches: list[list[BatchEntry]] = []
        self.generated: dict[int, int] = {}
        self.fail = False
        self.crash = False
        self.kv_ops: list[tuple[str, int, int]] = []
        self.can_truncate = True
        self.can_drop_tail = True
        self.can_restore = True
        self.refuse_begin = False  # as llama.cpp refuses a grammar it cannot parse

    def begin(self, slot: int, sampling: SamplingParams) -> None:
        if self.refuse_begin:
            raise RuntimeError("llama.cpp could not parse the grammar")
        self.generated[slot] = 0

    def end(self, slot: int) -> None:
        self.generated.pop(slot, None)

    def clear(self, slot: int) -> None:
        self.kv_ops.append(("clear", slot, -1))

    def truncate(self, slot: int, keep: int) -> bool:
        self.kv_ops.append(("truncate", slot, keep))
        return self.can_truncate

    def drop_tail(self, slot: int, keep: int) -> bool:
        self.kv_ops.append(("drop_tail", slot, keep))
        return self.can_drop_tail

    def copy_sequence(self, source: int, target: int) -> None:
        self.kv_ops.append(("copy", source, target))

    def save_state(self, slot: int, allocate: Callable[[int], memoryview]) -> memoryview:
        self.kv_ops.append(("save", slot, -1))
        data = f"state-of-{slot}".encode()
        buffer = allocate(len(data))
        buffer[:] = data
        return buffer

    def restore_state(self, slot: int, state: memoryview) -> bool:
        self.kv_ops.append(("restore", slot, state.nbytes))
        return self.can_restore

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        if self.crash:
            raise ValueError("a bug")  # not the RuntimeError a failed decode raises
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(list(entries))

    def sample(self, slot: int, batch_index: int) -> int:
        self.generated[slot] += 1
        if self.eog_after is not None and self.generated[slot] > self.eog_after:
            return EOG
        return self.batches[-1][batch_index].token + 1

    def logprobs(
        self, batch_index: int, token: int, top: int
    ) -> tuple[float, tuple[TopLogprob, ...]]:
        alternatives = tuple(
            TopLogprob(token + i, f"<{token + i}>".encode(), -float(i)) for i in range(top)
        )
        return -0.5, alternatives

    def token_piece(self, token: int, *, special: bool = False) -> bytes:
        return f"<{token}>".encode()

    def is_end_of_generation(self, token: int) -> bool:
        return token == EOG


def as_backend(fake: FakeBackend) -> Backend:
    """mypy checks here that the fake has everything the core needs of a backend."""
    return fake


class Collector:
    def __init__(self, tag: str = "", finish_order: list[str] | None = None) -> None:
        self.events: list[TokenEvent] = []
        self.done = threading.Event()
        self.tag = tag
        self.finish_order = finish_order

    def __call__(self, event: TokenEvent) -> None:
        self.events.append(event)
        if event.finish_reason is not None:
            if self.finish_order is not None:
                self.finish_order.append(self.tag)
            self.done.set()

    @property
    def final(self) -> TokenEvent:
        assert self.done.is_set(), "the request has not finished"
        return self.events[-1]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)


class Steps:
    """A core and a hand-moved clock; :meth:`step` runs one engine step and delivers its
    events, as the engine loop would."""

    def __init__(self, backend: FakeBackend, **kwargs: Any) -> None:
        self.backend = backend
        self.core = Scheduler(as_backend(backend), name="fake", **kwargs)
        self.now = 100.0

    def submit(self, *requests: GenerationRequest, tags: Sequence[Collector] = ()) -> list[Job]:
        sinks = list(tags) or [Collector() for _ in requests]
        jobs = [Job(r, s) for r, s in zip(requests, sinks, strict=True)]
        self.core.add(jobs, self.now)
        return jobs

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            for sink, event in self.core.step(self.now):
                sink(event)

    def run(self, *sinks: Collector, limit: int = 1000) -> None:
        """Step until every sink has its last event (or the core is idle)."""
        for _ in range(limit):
            if all(s.done.is_set() for s in sinks) and (sinks or not self.core.has_work):
                return
            self.step()
        raise AssertionError("the requests did not finish")

    @property
    def stats(self) -> SchedulerStats:
        return self.core.stats()


def request(
    prompt: list[int], max_tokens: int = 3, stop: list[str] | None = None, owner: str = ""
) -> GenerationRequest:
    return GenerationRequest("r", prompt, max_tokens, SamplingParams(), stop or [], owner)


def sink_of(job: Job) -> Collector:
    assert isinstance(job.sink, Collector)
    return job.sink
