"""Running a request's choices on the engine: collected whole, or merged into one stream.

Every choice is its own :class:`GenerationRequest`; all are queued at once, so with several
slots they decode side by side. Leaving early (an exception, a client disconnect cancelling
the task) cancels every choice still queued or running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from server.engine.stream import GenerationStream
from server.engine.types import GenerationRequest, SamplingParams, TokenEvent, TokenLogprob
from server.errors import (
    EngineError,
    InvalidRequestError,
    QueueTimeoutError,
    RequestTimeoutError,
    ShuttingDownError,
)
from server.handle import Lease, ModelHandle
from server.metrics import RunRecord
from server.protocol.common import PromptTokensDetails, SamplingFields, Usage
from server.services.tools import ToolPlan

logger = logging.getLogger("hearth.requests")


@dataclass(frozen=True)
class Caller:
    """Who is asking: the owner the queue is fair across (an API key's name, else the
    request's ``user``), and the most tokens that caller may ask for in one completion."""

    owner: str = ""
    max_tokens_cap: int | None = None


@contextlib.contextmanager
def released_on_error(lease: Lease) -> Iterator[ModelHandle]:
    """The leased model, for preparing a run; the lease is given back if preparing fails."""
    try:
        yield lease.handle
    except BaseException:
        lease.release()
        raise


@dataclass
class PreparedRun:
    """A validated request, tokenized and ready to queue: one job per choice. It holds a lease
    on its model until it ends (:meth:`close`), so the model is not unloaded under it."""

    request_id: str
    lease: Lease
    jobs: list[GenerationRequest]
    prompt_token_count: int
    # The tools the model may call (chat only).
    tools: ToolPlan | None = None
    # Each choice's end, filled in as choices finish.
    finals: list[ChoiceResult] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    # The queued choices, once submitted.
    streams: list[GenerationStream] | None = None
    # Called once when the run ends, with what it did (metrics, rate limits).
    on_finish: list[Callable[[RunRecord], None]] = field(default_factory=list)

    @property
    def handle(self) -> ModelHandle:
        return self.lease.handle

    @property
    def model(self) -> str:
        return self.handle.name

    def close(self) -> None:
        self.lease.release()

    @property
    def wants_logprobs(self) -> bool:
        return self.jobs[0].sampling.logprobs is not None


@dataclass
class ChoiceResult:
    index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    cached_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()

    @classmethod
    def of(
        cls, index: int, text: str, final: TokenEvent, logprobs: tuple[TokenLogprob, ...] = ()
    ) -> ChoiceResult:
        assert final.finish_reason is not None
        return cls(
            index,
            text,
            final.finish_reason,
            final.prompt_tokens,
            final.completion_tokens,
            final.queue_seconds,
            final.cached_tokens,
            logprobs,
        )


@dataclass(frozen=True)
class RunLimits:
    """Per-request limits the services apply to every job they build."""

    request_timeout: float | None = None

    def deadline(self) -> float | None:
        return None if self.request_timeout is None else time.monotonic() + self.request_timeout


def choice_jobs(
    request_id: str,
    first_index: int,
    prompt_tokens: list[int],
    max_tokens: int,
    sampling: SamplingParams,
    fields: SamplingFields,
    *,
    owner: str,
    deadline: float | None,
) -> list[GenerationRequest]:
    """The ``fields.n`` jobs for one prompt. Choices sharing a seed must still differ, as
    OpenAI's do: choice *i* samples with ``seed + i``."""
    return [
        GenerationRequest(
            request_id=f"{request_id}-{first_index + i}",
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            sampling=replace(sampling, seed=None if sampling.seed is None else sampling.seed + i),
            stop=fields.stop_list(),
            owner=owner,
            priority=fields.priority,
            deadline=deadline,
        )
        for i in range(fields.n)
    ]


def usage_of(run: PreparedRun) -> Usage:
    """Usage of a finished run: each prompt counted once, every choice's completion, and for
    each prompt what was in the KV cache before the request. That is the least any of its
    choices found: the others may have copied the prompt from the first choice to read it."""
    cached_by_prompt: dict[int, int] = {}
    for result in run.finals:
        key = id(run.jobs[result.index].prompt_tokens)
        cached_by_prompt[key] = min(
            cached_by_prompt.get(key, result.cached_tokens), result.cached_tokens
        )
    completion = sum(r.completion_tokens for r in run.finals)
    return Usage(
        prompt_tokens=run.prompt_token_count,
        completion_tokens=completion,
        total_tokens=run.prompt_token_count + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(cached_by_prompt.values())),
    )


def openai_finish_reason(reason: str) -> Literal["stop", "length"]:
    """OpenAI knows "stop" and "length"; a stop string or end-of-generation token is "stop"."""
    return "length" if reason == "length" else "stop"


def check_finish(event: TokenEvent) -> None:
    """Turn an abnormal end into the error the client should see."""
    if event.finish_reason == "invalid":
        raise InvalidRequestError(
            f"generation stopped: {event.error or 'no token could follow'}",
            param="logit_bias",
            code="no_allowed_token",
        )
    if event.finish_reason == "error":
        raise EngineError(f"generation failed: {event.error or 'unknown engine error'}")
    if event.finish_reason == "cancelled":
        raise ShuttingDownError(
            "the request was cancelled because the server is stopping", retry_after=5
        )
    if event.finish_reason == "queue_timeout":
        raise QueueTimeoutError(
            f"the request waited {event.queue_seconds:.0f}s in the queue without a free slot; "
            "the server is overloaded, retry later",
            retry_after=5,
        )
    if event.finish_reason == "deadline":
        raise RequestTimeoutError(
            "the request ran past the server's request_timeout and was stopped"
        )


def submit(run: PreparedRun) -> None:
    """Queue every choice now. A full queue or a stopping server raises here, so that a
    streamed request can still be answered with a plain 429 or 503 before its stream starts.
    Idempotent; :func:`collect` and :func:`merged` call it if the caller has not."""
    if run.streams is not None:
        return
    streams: list[GenerationStream] = []
    try:
        for job in run.jobs:
            streams.append(run.handle.generate(job))
    except BaseException:
        for stream in streams:
            stream.cancel()
        finish_run(run)
        raise
    run.streams = streams
    # A run dropped without being read (its client gone before the stream started) must not
    # keep generating: cancel its choices when it is collected.
    weakref.finalize(run, _cancel_all, list(streams))


def _cancel_all(streams: list[GenerationStream]) -> None:
    for stream in streams:
        stream.cancel()


def _submitted(run: PreparedRun) -> list[GenerationStream]:
    submit(run)
    assert run.streams is not None
    return run.streams


async def collect(run: PreparedRun) -> list[ChoiceResult]:
    """Run every choice to its end and return the texts, in choice order."""
    streams = _submitted(run)

    async def drain(index: int, stream: GenerationStream) -> ChoiceResult:
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        async for event in stream:
            if event.token_ids and run.first_token_at is None:
                run.first_token_at = time.monotonic()
            parts.append(event.text)
            logprobs += event.logprobs
            if event.finish_reason is not None:
                check_finish(event)
                return ChoiceResult.of(index, "".join(parts), event, tuple(logprobs))
        raise EngineError("the engine ended a sequence without a finish event")

    try:
        run.finals = list(await asyncio.gather(*(drain(i, s) for i, s in enumerate(streams))))
    finally:
        for stream in streams:
            stream.cancel()
        finish_run(run)
    return run.finals


async def merged(run: PreparedRun) -> AsyncGenerator[tuple[int, TokenEvent], None]:
    """Events of every choice as they come, tagged with the choice index."""
    streams = _submitted(run)
    try:
        async with contextlib.aclosing(_interleave(streams)) as events:
            async for index, event in events:
                if event.token_ids and run.first_token_at is None:
                    run.first_token_at = time.monotonic()
                if event.finish_reason is not None:
                    run.finals.append(ChoiceResult.of(index, "", event))
                yield index, event
    finally:
        for stream in streams:
            stream.cancel()
        finish_run(run)


async def _interleave(
    streams: list[GenerationStream],
) -> AsyncGenerator[tuple[int, TokenEvent], None]:
    if len(streams) == 1:  # the common case: no pump task, no second queue per token
        async for event in streams[0]:
            yield 0, event
        return
    events: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()

    async def pump(index: int, stream: GenerationStream) -> None:
        async for event in stream:
            events.put_nowait((index, event))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(streams)
    try:
        while remaining:
            index, event = await events.get()
            remaining -= event.finish_reason is not None
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


def finish_run(run: PreparedRun) -> None:
    """The run is over, finished or not: give back its model, report it, log it."""
    run.close()
    record = RunRecord(
        model=run.model,
        prompt_tokens=run.prompt_token_count,
        completion_tokens=sum(r.completion_tokens for r in run.finals),
        cached_tokens=usage_of(run).prompt_tokens_details.cached_tokens,
        queue_seconds=[r.queue_seconds for r in run.finals],
        time_to_first_token=(
            None if run.first_token_at is None else run.first_token_at - run.started
        ),
        completion_id=run.request_id,
        choices=len(run.jobs),
        finish=",".join(sorted({r.finish_reason for r in run.finals})) or "cancelled",
    )
    callbacks, run.on_finish = run.on_finish, []
    for callback in callbacks:
        callback(record)
    # The request's access line (api/gateway.py) carries these fields; this is for debugging.
    logger.debug(
        "run %s model=%s %s time=%.3fs",
        run.request_id,
        run.model,
        " ".join(f"{k}={v}" for k, v in record.log_fields().items()),
        time.monotonic() - run.started,
    )
