"""What the scheduler works with and hands out: jobs (one generation each, the engine's unit
of work, with its state), a step's plan and its result, and the scheduler's counters."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from server.engine.backend import BatchEntry
from server.engine.kv import KvOp, Placed
from server.engine.lookup import DraftPolicy, NgramIndex
from server.engine.text_stream import TextStream, TokenTexts
from server.engine.types import GenerationRequest, TokenEvent, TopLogprob

EventSink = Callable[[TokenEvent], None]


class JobState(enum.Enum):
    QUEUED = "queued"  # in the fair queue
    DEFERRED = "deferred"  # out of the queue, waiting for a running prompt it shares
    PREFILLING = "prefilling"  # in a slot, its prompt being read
    DECODING = "decoding"  # in a slot, generating
    FINISHED = "finished"  # its last event is out


@dataclass(eq=False)
class Job:
    """One generation (a choice of a request, for one of its prompts) as the scheduler
    tracks it."""

    request: GenerationRequest
    sink: EventSink
    state: JobState = JobState.QUEUED
    submitted_at: float = 0.0
    cancelled: bool = False
    # Set once admitted into a slot:
    slot: int | None = None
    queue_seconds: float = 0.0
    prefilled: int = 0
    position: int = 0
    last_token: int = -1
    generated: int = 0
    # Generated tokens already fed to decode (their KV is in the slot).
    fed: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    text: TextStream | None = None
    token_texts: TokenTexts | None = None  # only when logprobs are asked for
    # Prompt lookup: the sequence's history indexed for guesses, how many it may guess, and
    # the guess decoded this step (after last_token, at the next positions).
    lookup: NgramIndex | None = None
    drafts: DraftPolicy | None = None
    draft: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0

    @property
    def in_slot(self) -> int:
        assert self.slot is not None, "the job holds no slot"
        return self.slot


@dataclass
class StepPlan:
    """One step as data: the KV operations to carry out first (slots saved, given to new
    sequences, released), then one batch: its entries, and which jobs sample at which
    entry."""

    kv_ops: list[KvOp] = field(default_factory=list)
    entries: list[BatchEntry] = field(default_factory=list)
    sampled: list[tuple[Job, int]] = field(default_factory=list)
    # No sequence was in a slot when the step was planned: the engine may rest (once its
    # KV operations, if any, are done).
    idle: bool = True


@dataclass(frozen=True)
class Sampled:
    """What one sampled job chose: its token, or with a draft every token it chose in turn
    while they matched the draft (the first that differs, or one past the draft, ends it)."""

    tokens: tuple[int, ...] = ()
    # Per token, when the request asked for logprobs: its logprob and the top alternatives.
    logprobs: tuple[tuple[float, tuple[TopLogprob, ...]], ...] = ()
    # Sampling left no token (a grammar with no way on): why.
    dead_end: str | None = None
    # The rejected guesses' KV could not be dropped: the slot's cells are unknown.
    rollback_failed: bool = False


@dataclass(frozen=True)
class StepResult:
    """What the backend did with a plan: what each placement achieved, and per sampled
    job what it chose (None: not decoded this step, its placement fell short); or the
    decode's error."""

    sampled: tuple[Sampled | None, ...] = ()
    placed: tuple[Placed, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class SchedulerStats:
    queued: int  # in the queue
    deferred: int  # out of the queue, waiting for a shared prompt
    running: int  # holding a slot
    finished: Mapping[str, int]  # sequences ended, by finish reason
    # KV reuse at admission (see server.engine.kv.KV_COUNTERS).
    cache: Mapping[str, int]
    # The state cache's counters (bytes, evictions), if the model has one.
    states: Mapping[str, int] | None
    # Prompt lookup: tokens guessed, and those of them the model chose too.
    speculation: Mapping[str, int] = field(default_factory=dict)
    # KV cells (one token's keys and values each) held by running sequences, and all cells.
    kv_cells_used: int = 0
    kv_cells: int = 0
