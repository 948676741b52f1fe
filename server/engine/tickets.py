"""What the scheduler core works with and hands out: tickets (one sequence each, with its
state), where a slot's KV comes from (:class:`Placement`), a step's plan and its result, and
the core's counters."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from server.engine.backend import BatchEntry
from server.engine.lookup import DraftPolicy, NgramIndex
from server.engine.text import TextStream, TokenTexts
from server.engine.types import GenerationRequest, SamplingDeadEnd, TokenEvent

EventSink = Callable[[TokenEvent], None]


class TicketState(enum.Enum):
    QUEUED = "queued"  # in the fair queue
    DEFERRED = "deferred"  # out of the queue, waiting for a running prompt it shares
    PREFILLING = "prefilling"  # in a slot, its prompt being read
    DECODING = "decoding"  # in a slot, generating
    FINISHED = "finished"  # its last event is out


@dataclass(eq=False)
class Ticket:
    """A submitted request as the core tracks it."""

    request: GenerationRequest
    sink: EventSink
    state: TicketState = TicketState.QUEUED
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
        assert self.slot is not None, "the ticket holds no slot"
        return self.slot


KvSource = Literal["reuse", "copy", "restore", "none"]


@dataclass(frozen=True)
class Placement:
    """Where a new sequence's slot gets the KV of its prompt's first ``keep`` tokens: what the
    slot holds already (``reuse``), another slot's cells (``copy``), a saved state
    (``restore``), or nowhere (``none``: the whole prompt is computed)."""

    slot: int
    source: KvSource
    keep: int
    # The slot to copy from: for ``copy``, and for a ``restore`` that llama.cpp refuses (a
    # refused restore leaves the slot empty), with ``copy_keep`` tokens of it kept.
    copy_from: int | None = None
    copy_keep: int = 0
    state: memoryview | None = None


@dataclass
class StepPlan:
    """One batch: its entries, and which tickets sample at which entry."""

    entries: list[BatchEntry] = field(default_factory=list)
    sampled: list[tuple[Ticket, int]] = field(default_factory=list)
    # No sequence was in a slot when the step was planned: the engine may rest.
    idle: bool = True


@dataclass(frozen=True)
class StepResult:
    """What the backend gave for a plan: a token (or the dead end that left none) for each
    sampled ticket, or the decode's error."""

    # Per sampled ticket: the token it chose, or with a draft every token it chose in turn
    # while they matched the draft (the first that differs, or one past the draft, ends it).
    tokens: tuple[tuple[int, ...] | SamplingDeadEnd, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class SchedulerStats:
    queued: int  # in the queue
    deferred: int  # out of the queue, waiting for a shared prompt
    running: int  # holding a slot
    finished: Mapping[str, int]  # sequences ended, by finish reason
    # KV reuse at admission: hits, misses, tokens_saved, copies, restores.
    cache: Mapping[str, int]
    # The state cache's counters (bytes, evictions), if the model has one.
    states: Mapping[str, int] | None
    # Prompt lookup: tokens guessed, and those of them the model chose too.
    speculation: Mapping[str, int] = field(default_factory=dict)
    # KV cells (one token's keys and values each) held by running sequences, and all cells.
    kv_cells_used: int = 0
    kv_cells: int = 0


CACHE_COUNTERS = ("hits", "misses", "tokens_saved", "copies", "restores")
