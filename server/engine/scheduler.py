"""The engine loop: one thread per model that batches every active sequence into one decode.

Each step admits queued requests into free slots, builds one batch holding the next token of
every generating sequence plus a chunk of each newly admitted prompt, calls ``decode`` once,
samples each sequence that produced logits, and hands the resulting text to its request.
The asyncio side never waits on llama.cpp: events cross to the event loop through the sink
each request registered (``loop.call_soon_threadsafe`` in :mod:`server.engine.stream`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from server.engine.llama import BatchEntry
from server.engine.prefix import common_prefix_length, scope_length, scoped
from server.engine.queue import FairQueue
from server.engine.slots import MIN_COPY_GAIN, MIN_RECOMPUTED, SlotCache
from server.engine.state_cache import StateCache
from server.engine.text import TextStream, TokenTexts
from server.engine.types import (
    FinishReason,
    GenerationRequest,
    SamplingDeadEnd,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
)
from server.errors import EngineError, QueueFullError, ShuttingDownError

logger = logging.getLogger(__name__)

# Shorter sequences are cheap to recompute and not worth a saved state. (Saving every short
# chat cost a throughput benchmark of unique prompts 10%: copies and disk writes for nothing.)
MIN_SAVED_TOKENS = 256
# Idle this long before saving slot states in the background.
IDLE_SAVE_DELAY = 0.25

EventSink = Callable[[TokenEvent], None]


class Backend(Protocol):
    """What the loop needs from a model; :class:`server.engine.llama.LlamaBackend` is the real
    one, and the scheduler tests use a deterministic fake."""

    n_ctx: int
    n_slots: int
    n_batch: int

    def begin(self, slot: int, sampling: SamplingParams) -> None: ...
    def end(self, slot: int) -> None: ...
    def clear(self, slot: int) -> None: ...
    def truncate(self, slot: int, keep: int) -> bool: ...
    def copy_sequence(self, source: int, target: int) -> None: ...
    def save_state(self, slot: int, allocate: Callable[[int], memoryview]) -> memoryview: ...
    def restore_state(self, slot: int, state: memoryview) -> bool: ...
    def decode(self, entries: Sequence[BatchEntry]) -> None: ...
    def sample(self, slot: int, batch_index: int) -> int: ...
    def logprobs(
        self, batch_index: int, token: int, top: int
    ) -> tuple[float, tuple[TopLogprob, ...]]: ...
    def token_piece(self, token: int, *, special: bool = False) -> bytes: ...
    def is_end_of_generation(self, token: int) -> bool: ...


@dataclass(eq=False)
class Ticket:
    """A submitted request as the loop tracks it."""

    request: GenerationRequest
    sink: EventSink
    submitted_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # Set once admitted into a slot:
    slot: int = -1
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


class Scheduler:
    """Owns the engine thread and the admission queue of one model."""

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
    ) -> None:
        self._backend = backend
        self._name = name
        self._prefill_chunk = max(1, min(prefill_chunk, backend.n_batch))
        self._queue_timeout = queue_timeout
        self._queue: FairQueue[Ticket] = FairQueue(
            max_queue, max_queue_per_owner or max(1, max_queue // 2)
        )
        self._free_slots = list(range(backend.n_slots))
        self._active: list[Ticket] = []
        # Taken from the queue, waiting for a running prompt they share to be computed.
        self._deferred: list[Ticket] = []
        self.slot_cache = SlotCache(backend.n_slots)
        self._idle_since: float | None = None
        self.state_cache = state_cache
        self._cond = threading.Condition()
        self._accepting = True
        # How sequences ended, by finish reason (written by the engine thread only).
        self.finished: Counter[str] = Counter()
        # Events of the current step, delivered by _flush (engine thread only).
        self._pending: list[tuple[EventSink, TokenEvent]] = []
        self._stop = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)

    # -- the asyncio side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def max_jobs_per_request(self) -> int:
        """The most jobs one request can ever have queued: every slot, plus its owner's
        share of the queue."""
        return self._backend.n_slots + self._queue.max_per_owner

    def submit(self, request: GenerationRequest, sink: EventSink) -> Ticket:
        """Queue ``request``; its events go to ``sink`` from the engine thread."""
        return self.submit_all([(request, sink)])[0]

    def submit_all(self, jobs: Sequence[tuple[GenerationRequest, EventSink]]) -> list[Ticket]:
        """Queue one request's jobs (its choices, its prompts), all or none: a full queue, or
        an owner over its share of it, is a QueueFullError for the whole request."""
        tickets = [Ticket(request=request, sink=sink) for request, sink in jobs]
        owner = tickets[0].request.owner
        with self._cond:
            if self._failed:
                raise EngineError(f"the engine of model '{self._name}' stopped; retry to reload")
            if not self._accepting:
                raise ShuttingDownError("the server is shutting down", retry_after=5)
            idle = len(self._free_slots) - len(self._deferred) - len(self._queue)
            if not self._queue.room_for(owner, len(tickets), max(0, idle)):
                raise QueueFullError(
                    f"the queue for model '{self._name}' is full ({len(self._queue)} of "
                    f"{self._queue.maxsize} waiting, at most {self._queue.max_per_owner} for "
                    "one API key or client)",
                    retry_after=1,
                )
            for ticket in tickets:
                self._queue.put(ticket, owner=owner, priority=ticket.request.priority)
            self._cond.notify()
        return tickets

    def cancel(self, ticket: Ticket) -> None:
        """Stop ``ticket``: dropped from the queue now, or its slot freed at the next step."""
        with self._cond:
            ticket.cancelled = True
            self._cond.notify()

    def cancel_all(self) -> None:
        """Stop everything queued or running: each ends with finish reason "cancelled"."""
        with self._cond:
            for ticket in [*self._active, *self._deferred]:
                ticket.cancelled = True
            for ticket in self._queue.remove_if(lambda _: True):
                ticket.cancelled = True
                self._deferred.append(ticket)  # expired (and answered) at the next step
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy_slots(self) -> int:
        return len(self._active)

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
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the engine thread -----------------------------------------------------------------

    @property
    def failed(self) -> bool:
        """The engine thread died: nothing will run here again (the registry reloads)."""
        return self._failed

    def _run(self) -> None:
        try:
            while self._step_or_wait():
                pass
        except Exception:  # a bug in the loop: fail every request loudly rather than hang them
            logger.exception("engine loop for %s crashed", self._name)
            with self._cond:
                self._failed = True
                self._accepting = False
                stranded = self._active + self._deferred + self._queue.remove_if(lambda _: True)
                self._active, self._deferred = [], []
            for ticket in stranded:
                self._emit_end(ticket, "error", error="the engine stopped unexpectedly")
            self._flush()

    def _step_or_wait(self) -> bool:
        with self._cond:
            self._expire_queued(time.monotonic())
            self._admit_queued()
            active = list(self._active)
            stopping = self._stop
        if active:
            self._idle_since = None
            self._step(active)
            return True
        self._flush()
        if stopping:
            if self.state_cache is not None:
                self.save_idle_slots()
                self.state_cache.close()
            return False
        # Idle for a while: save one slot's state, so that a later request that overwrites
        # the slot does not wait for the copy. Not at once (the next turn of a conversation
        # often follows immediately and reuses the slot as it is), and one at a time (a new
        # request waits for one save at most).
        now = time.monotonic()
        self._idle_since = self._idle_since or now
        unsaved = self.state_cache is not None and any(
            self._worth_saving(slot) for slot in self._free_slots
        )
        if unsaved and now - self._idle_since >= IDLE_SAVE_DELAY:
            for slot in list(self._free_slots):
                if self._save_slot(slot):
                    return True
        with self._cond:
            if not self._active and not len(self._queue) and not self._stop:
                # Wake now and then even when idle, so queue deadlines are noticed.
                wait = IDLE_SAVE_DELAY if unsaved else 1.0
                self._cond.wait(timeout=wait)
        return True

    def _expire_queued(self, now: float) -> None:
        """Drop queued requests that were cancelled, waited too long, or passed their deadline."""

        def reason(ticket: Ticket) -> FinishReason | None:
            if ticket.cancelled or self._stop:
                return "cancelled"
            if now - ticket.submitted_at > self._queue_timeout:
                return "queue_timeout"
            if ticket.request.deadline is not None and now > ticket.request.deadline:
                return "deadline"
            return None

        expired = self._queue.remove_if(lambda t: reason(t) is not None)
        expired += [t for t in self._deferred if reason(t) is not None]
        for ticket in expired:
            if ticket in self._deferred:
                self._deferred.remove(ticket)
            ticket.queue_seconds = now - ticket.submitted_at
            self._emit_end(ticket, reason(ticket) or "cancelled")

    def _admit_queued(self) -> None:
        """Fill free slots from the queue. A request whose prompt shares a prefix with one a
        running sequence is still reading waits for it, then copies its KV instead of
        computing the same tokens side by side: so the ``n`` choices of one request, or many
        requests with one system prompt, read their prompt once. At most as many wait as
        there are free slots, which stay theirs."""
        for ticket in list(self._deferred):
            if self._prefilling_prefix_of(ticket) is None:
                self._deferred.remove(ticket)
                self._admit(ticket)
        capacity = len(self._free_slots) - len(self._deferred)
        running = Counter(t.request.owner for t in self._active + self._deferred)
        while capacity > 0 and (queued := self._queue.pop(running)) is not None:
            running[queued.request.owner] += 1
            capacity -= 1
            if self._prefilling_prefix_of(queued) is not None:
                self._deferred.append(queued)
            else:
                self._admit(queued)

    def _prefilling_prefix_of(self, ticket: Ticket) -> Ticket | None:
        """A running sequence still computing a prompt prefix worth sharing with ``ticket``."""
        prompt = ticket.request.prompt_tokens
        for other in self._active:
            if other.request.cache_scope != ticket.request.cache_scope:
                continue  # a prompt is never shared across cache scopes
            if other.prefilled < len(other.request.prompt_tokens):
                shared = min(
                    common_prefix_length(prompt, other.request.prompt_tokens),
                    len(prompt) - MIN_RECOMPUTED,
                )
                if shared >= MIN_COPY_GAIN and shared > other.prefilled:
                    return other
        return None

    def _flush(self) -> None:
        """Hand the events of the last step to their requests.

        Called right before the next ``llama_decode``, which releases the GIL: the event loop
        then serializes and sends the tokens while llama.cpp computes, instead of holding the
        GIL while this thread needs it to sample and build the next batch."""
        pending, self._pending = self._pending, []
        for sink, event in pending:
            sink(event)

    def _admit(self, ticket: Ticket) -> None:
        prompt = ticket.request.prompt_tokens
        busy = {t.slot: t for t in self._active}

        def valid_length(slot: int) -> int:
            return busy[slot].prefilled if slot in busy else len(self.slot_cache.holds(slot))

        scope = ticket.request.cache_scope
        plan = self.slot_cache.assign(prompt, self._free_slots, valid_length, scope=scope)
        ticket.slot = plan.slot
        self._free_slots.remove(plan.slot)
        if len(self.slot_cache.holds(plan.slot)) - plan.reuse >= MIN_SAVED_TOKENS:
            self._save_slot(plan.slot)  # much of what the slot holds is about to be overwritten
        # Looked up after the save: making room for it may have evicted states.
        saved = self._saved_state_for(prompt, scope, better_than=plan.reuse)
        if saved is not None and self._backend.restore_state(plan.slot, saved[1]):
            self.slot_cache.stats["restores"] += 1
            keep = saved[0]
        elif plan.copy_from is not None:
            self._backend.copy_sequence(plan.copy_from, plan.slot)
            self.slot_cache.stats["copies"] += 1
            keep = plan.reuse
        else:
            keep = plan.reuse if saved is None else 0  # a refused restore left the slot empty
        reuse = keep if self._backend.truncate(plan.slot, keep) else 0
        self.slot_cache.record(plan.slot, prompt, scope)
        self.slot_cache.count(reuse)
        ticket.prefilled = ticket.position = ticket.cached_tokens = reuse
        ticket.queue_seconds = time.monotonic() - ticket.submitted_at
        ticket.text = TextStream(ticket.request.stop)
        if ticket.request.sampling.logprobs is not None:
            ticket.token_texts = TokenTexts()
        self._active.append(ticket)
        try:
            self._backend.begin(ticket.slot, ticket.request.sampling)
        except RuntimeError as exc:  # e.g. a grammar llama.cpp refuses
            self._retire(ticket, "error", error=str(exc))

    def _saved_state_for(
        self, prompt: list[int], scope: str, *, better_than: int
    ) -> tuple[int, memoryview] | None:
        """A saved state of ``scope`` sharing a clearly longer prefix than the slots do, and
        its length."""
        if self.state_cache is None:
            return None
        depth, entry = self.state_cache.longest_match(scoped(scope, prompt))
        usable = min(depth - scope_length(scope), len(prompt) - MIN_RECOMPUTED)
        if entry is None or usable < better_than + MIN_COPY_GAIN:
            return None
        state = self.state_cache.get(entry)
        return None if state is None else (usable, state)

    def _worth_saving(self, slot: int) -> bool:
        held = self.slot_cache.holds(slot)
        return not self.slot_cache.is_saved(slot) and len(held) >= MIN_SAVED_TOKENS

    def _save_slot(self, slot: int) -> bool:
        """Put what ``slot`` holds into the state cache, unless it is there or too short."""
        cache = self.state_cache
        if cache is None or not self._worth_saving(slot):
            return False
        key = scoped(self.slot_cache.scope_of(slot), self.slot_cache.holds(slot))
        state = self._backend.save_state(slot, lambda size: cache.buffer_for(size, key))
        cache.put(key, state)
        self.slot_cache.mark_saved(slot)
        return True

    def save_idle_slots(self) -> None:
        """Keep every idle slot's state (at shutdown, so that a restart finds them)."""
        for slot in list(self._free_slots):
            self._save_slot(slot)

    def _step(self, active: list[Ticket]) -> None:
        """One decode: the next token of every generating sequence first (so running streams
        keep their pace), then as much prompt as ``prefill_chunk`` allows."""
        now = time.monotonic()
        entries: list[BatchEntry] = []
        sampled_at: list[tuple[Ticket, int]] = []
        prefilling: list[Ticket] = []
        # In slot order: llama.cpp splits a batch whose sequences are out of order into
        # several micro-batches, which costs as much as decoding them one by one.
        for ticket in sorted(active, key=lambda t: t.slot):
            if ticket.cancelled:
                self._retire(ticket, "cancelled")
            elif ticket.request.deadline is not None and now > ticket.request.deadline:
                self._retire(ticket, "deadline")
            elif ticket.prefilled < len(ticket.request.prompt_tokens):
                prefilling.append(ticket)
            else:
                entries.append(BatchEntry(ticket.slot, ticket.last_token, ticket.position, True))
                ticket.fed.append(ticket.last_token)
                ticket.position += 1
                sampled_at.append((ticket, len(entries) - 1))
        budget = min(self._prefill_chunk, self._backend.n_batch - len(entries))
        for ticket in prefilling:
            prompt = ticket.request.prompt_tokens
            take = min(len(prompt) - ticket.prefilled, budget)
            if take <= 0:
                break  # the rest of the prompts continue next step
            budget -= take
            end = ticket.prefilled + take
            for i in range(ticket.prefilled, end):
                entries.append(BatchEntry(ticket.slot, prompt[i], i, i == len(prompt) - 1))
            ticket.prefilled = ticket.position = end
            if end == len(prompt):
                sampled_at.append((ticket, len(entries) - 1))
        self._flush()
        if not entries:
            return
        try:
            self._backend.decode(entries)
        except RuntimeError as exc:
            logger.error("decode failed for model %s: %s", self._name, exc)
            in_batch = {entry.slot for entry in entries}
            for ticket in [t for t in self._active if t.slot in in_batch]:
                ticket.prefilled, ticket.fed = 0, []  # its cells are in an unknown state
                self._retire(ticket, "error", error=str(exc))
            return
        for ticket, index in sampled_at:
            try:
                token = self._backend.sample(ticket.slot, index)
            except SamplingDeadEnd as exc:
                self._retire(ticket, "invalid", error=str(exc))
                continue
            self._advance(ticket, token, index)

    def _advance(self, ticket: Ticket, token: int, batch_index: int) -> None:
        assert ticket.text is not None
        if ticket.cancelled:
            self._retire(ticket, "cancelled")
            return
        if self._backend.is_end_of_generation(token):
            self._retire(ticket, "stop")
            return
        ticket.generated += 1
        ticket.last_token = token
        piece = self._backend.token_piece(token)
        if ticket.token_texts is not None:
            top = ticket.request.sampling.logprobs or 0
            logprob, alternatives = self._backend.logprobs(batch_index, token, top)
            ticket.token_texts.add(token, piece, logprob, alternatives)
        text = ticket.text.push(piece)
        if ticket.text.stopped:
            self._retire(ticket, "stop", text=text, token=token)
            return
        if (
            ticket.generated >= ticket.request.max_tokens
            or ticket.position + 1 >= self._backend.n_ctx
        ):
            self._retire(ticket, "length", text=text, token=token)
            return
        logprobs = self._released_logprobs(ticket, final=False)
        event = TokenEvent(
            text=text, token_ids=(token,), completion_tokens=ticket.generated, logprobs=logprobs
        )
        self._pending.append((ticket.sink, event))

    @staticmethod
    def _released_logprobs(ticket: Ticket, *, final: bool) -> tuple[TokenLogprob, ...]:
        if ticket.token_texts is None or ticket.text is None:
            return ()
        if final:
            return ticket.token_texts.finish(ticket.text.emitted)
        return ticket.token_texts.release(ticket.text.emitted)

    def _retire(
        self,
        ticket: Ticket,
        reason: FinishReason,
        *,
        text: str = "",
        token: int | None = None,
        error: str | None = None,
    ) -> None:
        logprobs: tuple[TokenLogprob, ...] = ()
        if ticket.text is not None and reason in ("stop", "length"):
            if not ticket.text.stopped:
                text += ticket.text.finish()
            logprobs = self._released_logprobs(ticket, final=True)
        self._backend.end(ticket.slot)
        # The slot keeps what was computed, for the next request that shares its prefix.
        held = ticket.request.prompt_tokens[: ticket.prefilled] + ticket.fed
        if not held:
            self._backend.clear(ticket.slot)
        self.slot_cache.record(ticket.slot, held, ticket.request.cache_scope)
        with self._cond:
            self._active.remove(ticket)
            self._free_slots.append(ticket.slot)
        self._emit_end(ticket, reason, text=text, token=token, error=error, logprobs=logprobs)

    def _emit_end(
        self,
        ticket: Ticket,
        reason: FinishReason,
        *,
        text: str = "",
        token: int | None = None,
        error: str | None = None,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> None:
        self.finished[reason] += 1
        event = TokenEvent(
            text=text,
            token_ids=(token,) if token is not None else (),
            finish_reason=reason,
            prompt_tokens=len(ticket.request.prompt_tokens),
            completion_tokens=ticket.generated,
            queue_seconds=ticket.queue_seconds,
            cached_tokens=ticket.cached_tokens,
            error=error,
            logprobs=logprobs,
        )
        self._pending.append((ticket.sink, event))
