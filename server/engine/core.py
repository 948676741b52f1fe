"""The scheduler core: one model's queue, slots and sequences, as plain synchronous code.

The core plans each engine step and applies its results. It owns no thread, no lock and no
clock: every call that needs the time is given ``now``. :class:`server.engine.scheduler.Scheduler`
drives it from the engine thread: :meth:`SchedulerCore.schedule` plans a batch,
:meth:`SchedulerCore.execute` runs it on the backend (decode, then sample), and
:meth:`SchedulerCore.update` advances the sequences with the sampled tokens; the events they
produce are collected by :meth:`SchedulerCore.take_events` for the driver to deliver. The
scheduler tests call the same methods one step at a time, with no thread at all.

A step: drop what waited too long, admit queued requests into free slots (deciding where each
slot's KV comes from: a :class:`Placement`), retire what was cancelled or passed its deadline,
then plan one batch: the next token of every decoding sequence first, so running streams keep
their pace, then as much prompt as the prefill chunk allows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from server.engine.backend import Backend, BatchEntry
from server.engine.lookup import DraftPolicy, LookupSettings, NgramIndex
from server.engine.prefix import common_prefix_length
from server.engine.queue import FairQueue
from server.engine.saving import SavePolicy
from server.engine.slots import MIN_COPY_GAIN, MIN_RECOMPUTED, SlotCache
from server.engine.state_cache import StateCache
from server.engine.text import TextStream, TokenTexts
from server.engine.tickets import (
    CACHE_COUNTERS,
    EventSink,
    Placement,
    SchedulerStats,
    StepPlan,
    StepResult,
    Ticket,
    TicketState,
)
from server.engine.types import (
    FinishReason,
    SamplingDeadEnd,
    TokenEvent,
    TokenLogprob,
)
from server.errors import QueueFullError

logger = logging.getLogger(__name__)


class SchedulerCore:
    """Admission, KV placement, batching and sequence advance for one model."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_queue: int = 64,
        max_queue_per_owner: int | None = None,
        prefill_chunk: int = 512,
        queue_timeout: float = 60.0,
        state_cache: StateCache | None = None,
        name: str = "model",
        lookup: LookupSettings | None = None,
    ) -> None:
        self._backend = backend
        self._lookup = lookup if lookup is not None else LookupSettings(enabled=False)
        self._name = name
        self._prefill_chunk = max(1, min(prefill_chunk, backend.n_batch))
        self._queue_timeout = queue_timeout
        self._queue: FairQueue[Ticket] = FairQueue(
            max_queue, max_queue_per_owner or max(1, max_queue // 2)
        )
        self._free_slots = list(range(backend.n_slots))
        self._active: list[Ticket] = []
        self._deferred: list[Ticket] = []
        self._slots = SlotCache(backend.n_slots)
        self._saver = SavePolicy(state_cache, self._slots, backend)
        self._finished: Counter[str] = Counter()
        self._cache: Counter[str] = Counter(dict.fromkeys(CACHE_COUNTERS, 0))
        self._events: list[tuple[EventSink, TokenEvent]] = []
        self._speculation: Counter[str] = Counter(drafted=0, accepted=0)
        self._idle_since: float | None = None
        # Set by drain(): everything queued ends "cancelled" at the next step.
        self._draining = False

    # -- admission ---------------------------------------------------------------------------

    @property
    def max_jobs_per_request(self) -> int:
        """The most jobs one request can ever have queued: every slot, plus its owner's
        share of the queue."""
        return self._backend.n_slots + self._queue.max_per_owner

    def add(self, tickets: Sequence[Ticket], now: float) -> None:
        """Queue one request's tickets, all or none: a full queue, or an owner over its share
        of it, is a QueueFullError for the whole request."""
        owner = tickets[0].request.owner
        idle = len(self._free_slots) - len(self._deferred) - len(self._queue)
        if not self._queue.room_for(owner, len(tickets), max(0, idle)):
            raise QueueFullError(
                f"the queue for model '{self._name}' is full ({len(self._queue)} of "
                f"{self._queue.maxsize} waiting, at most {self._queue.max_per_owner} for "
                "one API key or client)",
                retry_after=1,
            )
        for ticket in tickets:
            ticket.submitted_at = now
            self._queue.put(ticket, owner=owner, priority=ticket.request.priority)

    def cancel(self, ticket: Ticket) -> None:
        """Stop ``ticket``: dropped from the queue, or its slot freed, at the next step."""
        ticket.cancelled = True

    def cancel_all(self) -> None:
        """Stop everything queued or running: each ends with finish reason "cancelled"."""
        for ticket in [*self._active, *self._deferred]:
            ticket.cancelled = True
        for ticket in self._queue.remove_if(lambda _: True):
            ticket.cancelled = True
            ticket.state = TicketState.DEFERRED
            self._deferred.append(ticket)  # expired (and answered) at the next step

    def drain(self) -> None:
        """Cancel what is queued at the next step and take nothing new from the queue."""
        self._draining = True

    @property
    def has_work(self) -> bool:
        """Anything in a slot or waiting for one."""
        return bool(self._active or self._deferred or len(self._queue))

    # -- one step ----------------------------------------------------------------------------

    def schedule(self, now: float) -> StepPlan:
        """Expire and admit queued tickets, retire the cancelled and late, and plan a batch."""
        self._expire_queued(now)
        self._admit_queued(now)
        if not self._active:
            return StepPlan()
        self._idle_since = None
        plan = StepPlan(idle=False)
        prefilling: list[Ticket] = []
        decoding: list[Ticket] = []
        # In slot order: llama.cpp splits a batch whose sequences are out of order into
        # several micro-batches, which costs as much as decoding them one by one.
        for ticket in sorted(self._active, key=lambda t: t.in_slot):
            deadline = ticket.request.deadline
            if ticket.cancelled:
                self._retire(ticket, "cancelled")
            elif deadline is not None and now > deadline:
                self._retire(ticket, "deadline")
            elif ticket.state is TicketState.PREFILLING:
                prefilling.append(ticket)
            else:
                decoding.append(ticket)
        # Guesses take batch room the prompts being read can spare: at most max_draft
        # tokens in all per step, so a new request's prefill is never pushed back by much.
        draft_room = min(
            self._lookup.max_draft if self._lookup.enabled else 0,
            self._backend.n_batch - len(decoding) - 1,
        )
        for ticket in decoding:
            slot = ticket.in_slot
            plan.entries.append(BatchEntry(slot, ticket.last_token, ticket.position, True))
            plan.sampled.append((ticket, len(plan.entries) - 1))
            ticket.fed.append(ticket.last_token)
            ticket.position += 1
            ticket.draft = self._draft(ticket, draft_room)
            draft_room -= len(ticket.draft)
            for i, token in enumerate(ticket.draft):
                plan.entries.append(BatchEntry(slot, token, ticket.position + i, True))
        budget = min(self._prefill_chunk, self._backend.n_batch - len(plan.entries))
        for ticket in prefilling:
            prompt = ticket.request.prompt_tokens
            take = min(len(prompt) - ticket.prefilled, budget)
            if take <= 0:
                break  # the rest of the prompts continue next step
            budget -= take
            end = ticket.prefilled + take
            for i in range(ticket.prefilled, end):
                plan.entries.append(BatchEntry(ticket.in_slot, prompt[i], i, i == len(prompt) - 1))
            ticket.prefilled = ticket.position = end
            if end == len(prompt):
                ticket.state = TicketState.DECODING
                plan.sampled.append((ticket, len(plan.entries) - 1))
        return plan

    def execute(self, plan: StepPlan) -> StepResult:
        """Decode the plan's batch and sample each ticket that asked for logits. Touches only
        the backend: the driver runs it without its lock."""
        if not plan.entries:
            return StepResult()
        try:
            self._backend.decode(plan.entries)
        except RuntimeError as exc:
            return StepResult(error=str(exc))
        tokens: list[tuple[int, ...] | SamplingDeadEnd] = []
        for ticket, index in plan.sampled:
            chosen: list[int] = []
            try:
                # Sample as plain decoding would, one position after another: each position's
                # logits are right as long as every token before it is the one chosen. So the
                # output is exactly plain decoding's, sampled or greedy, grammar or not; a
                # point-mass guess is kept with the probability the model gives it, which is
                # the speculative-sampling rule.
                for offset in range(len(ticket.draft) + 1):
                    token = self._backend.sample(ticket.in_slot, index + offset)
                    chosen.append(token)
                    if offset == len(ticket.draft) or token != ticket.draft[offset]:
                        break
                    if self._backend.is_end_of_generation(token):
                        break
                tokens.append(tuple(chosen))
            except SamplingDeadEnd as exc:
                tokens.append(tuple(chosen) if chosen else exc)
        return StepResult(tuple(tokens))

    def update(self, plan: StepPlan, result: StepResult) -> None:
        """Advance every sampled ticket by its token (text, stop strings, logprobs, limits)."""
        if result.error is not None:
            logger.error("decode failed for model %s: %s", self._name, result.error)
            in_batch = {entry.slot for entry in plan.entries}
            for ticket in [t for t in self._active if t.slot in in_batch]:
                ticket.prefilled, ticket.fed = 0, []  # its cells are in an unknown state
                self._retire(ticket, "error", error=result.error)
            return
        for (ticket, index), chosen in zip(plan.sampled, result.tokens, strict=True):
            if isinstance(chosen, SamplingDeadEnd):
                self._retire(ticket, "invalid", error=str(chosen))
                continue
            draft, ticket.draft = ticket.draft, []
            # The draft tokens the model chose too; their KV stays.
            kept = len(chosen) - 1
            if draft:
                self._speculation["drafted"] += len(draft)
                self._speculation["accepted"] += kept
                ticket.drafted += len(draft)
                ticket.accepted += kept
                assert ticket.drafts is not None
                ticket.drafts.record(len(draft), kept)
                # The guesses after the last kept one hold wrong KV.
                if kept < len(draft) and not self._backend.drop_tail(
                    ticket.in_slot, ticket.position + kept
                ):
                    ticket.prefilled, ticket.fed = 0, []  # its cells are in an unknown state
                    self._retire(ticket, "error", error="could not drop the guessed tokens")
                    continue
            for offset, token in enumerate(chosen):
                if offset > 0:  # a kept draft token: its KV is in the slot
                    ticket.fed.append(chosen[offset - 1])
                    ticket.position += 1
                self._advance(ticket, token, index + offset)
                if ticket.state is TicketState.FINISHED:
                    break

    def step(self, now: float) -> list[tuple[EventSink, TokenEvent]]:
        """One whole step (what the driver does in three calls); returns its events."""
        plan = self.schedule(now)
        self.update(plan, self.execute(plan))
        return self.take_events()

    def take_events(self) -> list[tuple[EventSink, TokenEvent]]:
        """The events produced since the last call, in order, for delivery."""
        events, self._events = self._events, []
        return events

    def idle(self, now: float) -> float:
        """Work for an engine with nothing in a slot (saving slot states). Returns how long
        the driver may sleep before the next step: 0 to go on at once."""
        self._idle_since = self._idle_since if self._idle_since is not None else now
        return self._saver.when_idle(self._free_slots, now - self._idle_since)

    def close(self) -> None:
        """At shutdown, once nothing runs: keep the idle slots' states."""
        self._saver.close(self._free_slots)

    def abort(self, error: str) -> None:
        """End every ticket with ``error`` (the loop crashed; the slots are not reused)."""
        stranded = self._active + self._deferred + self._queue.remove_if(lambda _: True)
        self._active, self._deferred = [], []
        for ticket in stranded:
            self._emit_end(ticket, "error", error=error)

    def stats(self) -> SchedulerStats:
        cache = self._saver.cache
        # Not cache.counters(): that books the disk writer's results, which is the engine
        # thread's work; these plain reads are safe from any thread.
        states = (
            None
            if cache is None
            else {**cache.stats, "ram_bytes": cache.ram_bytes, "disk_bytes": cache.disk_bytes}
        )
        return SchedulerStats(
            queued=len(self._queue),
            deferred=len(self._deferred),
            running=len(self._active),
            finished=dict(self._finished),
            cache=dict(self._cache),
            states=states,
            speculation=dict(self._speculation),
            # A copy first: the engine thread may change the list meanwhile.
            kv_cells_used=sum(ticket.position for ticket in list(self._active)),
            kv_cells=self._backend.n_ctx * self._backend.n_slots,
        )

    # -- internals ---------------------------------------------------------------------------

    def _draft(self, ticket: Ticket, room: int) -> list[int]:
        """Tokens ``ticket`` may guess this step (prompt lookup), within ``room``."""
        settings = self._lookup
        if room <= 0 or not settings.enabled or not ticket.request.speculative:
            return []
        if ticket.drafts is None:
            ticket.drafts = DraftPolicy(settings.max_draft)
        allowance = ticket.drafts.allowance()
        # Never past max_tokens or the context: the guess must fit what may still be written.
        left = min(
            ticket.request.max_tokens - ticket.generated - 1,
            self._backend.n_ctx - ticket.position - 1,
        )
        limit = min(allowance, room, left)
        if limit <= 0:
            return []
        prompt = ticket.request.prompt_tokens
        if ticket.lookup is None:
            sizes = range(settings.min_ngram, settings.ngram + 1)
            ticket.lookup = NgramIndex([*prompt, *ticket.fed], sizes)
        else:  # what was written since the last step
            for token in ticket.fed[len(ticket.lookup) - len(prompt) :]:
                ticket.lookup.append(token)
        return ticket.lookup.draft(limit)

    def _expire_queued(self, now: float) -> None:
        """Drop queued tickets that were cancelled, waited too long, or passed their deadline."""

        def reason(ticket: Ticket) -> FinishReason | None:
            if ticket.cancelled or self._draining:
                return "cancelled"
            if now - ticket.submitted_at > self._queue_timeout:
                return "queue_timeout"
            if ticket.request.deadline is not None and now > ticket.request.deadline:
                return "deadline"
            return None

        expired = self._queue.remove_if(lambda t: reason(t) is not None)
        expired += [t for t in self._deferred if reason(t) is not None]
        for ticket in expired:
            if ticket.state is TicketState.DEFERRED:
                self._deferred.remove(ticket)
            ticket.queue_seconds = now - ticket.submitted_at
            self._emit_end(ticket, reason(ticket) or "cancelled")

    def _admit_queued(self, now: float) -> None:
        """Fill free slots from the queue. A request whose prompt shares a prefix with one a
        running sequence is still reading waits for it, then copies its KV instead of
        computing the same tokens side by side: so the ``n`` choices of one request, or many
        requests with one system prompt, read their prompt once. At most as many wait as
        there are free slots, which stay theirs."""
        for ticket in list(self._deferred):
            if self._prefilling_prefix_of(ticket) is None:
                self._deferred.remove(ticket)
                self._admit(ticket, now)
        capacity = len(self._free_slots) - len(self._deferred)
        running = Counter(t.request.owner for t in self._active + self._deferred)
        while capacity > 0 and (queued := self._queue.pop(running)) is not None:
            running[queued.request.owner] += 1
            capacity -= 1
            if self._prefilling_prefix_of(queued) is not None:
                queued.state = TicketState.DEFERRED
                self._deferred.append(queued)
            else:
                self._admit(queued, now)

    def _prefilling_prefix_of(self, ticket: Ticket) -> Ticket | None:
        """A running sequence still computing a prompt prefix worth sharing with ``ticket``."""
        prompt = ticket.request.prompt_tokens
        for other in self._active:
            if other.request.cache_scope != ticket.request.cache_scope:
                continue  # a prompt is never shared across cache scopes
            if other.state is TicketState.PREFILLING:
                shared = min(
                    common_prefix_length(prompt, other.request.prompt_tokens),
                    len(prompt) - MIN_RECOMPUTED,
                )
                if shared >= MIN_COPY_GAIN and shared > other.prefilled:
                    return other
        return None

    def _place(self, ticket: Ticket) -> Placement:
        """Choose the slot for ``ticket`` and where its prompt prefix's KV comes from."""
        prompt, scope = ticket.request.prompt_tokens, ticket.request.cache_scope
        busy = {t.slot: t for t in self._active}

        def valid_length(slot: int) -> int:
            return busy[slot].prefilled if slot in busy else len(self._slots.holds(slot))

        assigned = self._slots.assign(prompt, self._free_slots, valid_length, scope=scope)
        slot, reuse, copy_from = assigned.slot, assigned.reuse, assigned.copy_from
        self._saver.before_overwrite(slot, reuse)
        # Looked up after the save: making room for it may have evicted states.
        saved = self._saver.saved_state_for(prompt, scope, better_than=reuse)
        if saved is not None:
            return Placement(
                slot, "restore", saved[0], copy_from=copy_from, copy_keep=reuse, state=saved[1]
            )
        if copy_from is not None:
            return Placement(slot, "copy", reuse, copy_from=copy_from, copy_keep=reuse)
        return Placement(slot, "reuse" if reuse else "none", reuse)

    def _apply(self, placement: Placement) -> int:
        """Carry out ``placement``; returns how many prompt tokens the slot now holds."""
        slot, keep, source = placement.slot, placement.keep, placement.source
        if source == "restore":
            assert placement.state is not None
            if self._backend.restore_state(slot, placement.state):
                self._cache["restores"] += 1
            else:  # the slot is empty now: copy instead if another slot can give the prefix
                source = "copy" if placement.copy_from is not None else "none"
                keep = 0
        if source == "copy":
            assert placement.copy_from is not None
            self._backend.copy_sequence(placement.copy_from, slot)
            self._cache["copies"] += 1
            keep = placement.copy_keep
        reused = keep if self._backend.truncate(slot, keep) else 0
        self._cache["hits" if reused else "misses"] += 1
        self._cache["tokens_saved"] += reused
        return reused

    def _admit(self, ticket: Ticket, now: float) -> None:
        placement = self._place(ticket)
        self._free_slots.remove(placement.slot)
        reused = self._apply(placement)
        prompt = ticket.request.prompt_tokens
        self._slots.record(placement.slot, prompt, ticket.request.cache_scope)
        ticket.slot = placement.slot
        ticket.prefilled = ticket.position = ticket.cached_tokens = reused
        ticket.state = TicketState.PREFILLING if reused < len(prompt) else TicketState.DECODING
        ticket.queue_seconds = now - ticket.submitted_at
        ticket.text = TextStream(ticket.request.stop)
        if ticket.request.sampling.logprobs is not None:
            ticket.token_texts = TokenTexts()
        self._active.append(ticket)
        try:
            self._backend.begin(placement.slot, ticket.request.sampling)
        except RuntimeError as exc:  # e.g. a grammar llama.cpp refuses
            self._retire(ticket, "error", error=str(exc))

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
        logprobs = _released_logprobs(ticket, final=False)
        event = TokenEvent(
            text=text, token_ids=(token,), completion_tokens=ticket.generated, logprobs=logprobs
        )
        self._events.append((ticket.sink, event))

    def _retire(
        self,
        ticket: Ticket,
        reason: FinishReason,
        *,
        text: str = "",
        token: int | None = None,
        error: str | None = None,
    ) -> None:
        slot = ticket.in_slot
        logprobs: tuple[TokenLogprob, ...] = ()
        if ticket.text is not None and reason in ("stop", "length"):
            if not ticket.text.stopped:
                text += ticket.text.finish()
            logprobs = _released_logprobs(ticket, final=True)
        self._backend.end(slot)
        # The slot keeps what was computed, for the next request that shares its prefix.
        held = ticket.request.prompt_tokens[: ticket.prefilled] + ticket.fed
        if not held:
            self._backend.clear(slot)
        self._slots.record(slot, held, ticket.request.cache_scope)
        self._active.remove(ticket)
        self._free_slots.append(slot)
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
        ticket.state = TicketState.FINISHED
        self._finished[reason] += 1
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
            stop_sequence=ticket.text.matched_stop if ticket.text is not None else None,
            drafted_tokens=ticket.drafted,
            accepted_tokens=ticket.accepted,
        )
        self._events.append((ticket.sink, event))


def _released_logprobs(ticket: Ticket, *, final: bool) -> tuple[TokenLogprob, ...]:
    if ticket.token_texts is None or ticket.text is None:
        return ()
    if final:
        return ticket.token_texts.finish(ticket.text.emitted)
    return ticket.token_texts.release(ticket.text.emitted)
