"""The scheduler: one model's queue and sequences, as plain synchronous code.

It plans each engine step and records its results. It owns no thread, no lock and no clock:
every call that needs the time is given ``now``. The engine loop
(:class:`server.engine.loop.EngineLoop`) drives it from the engine thread:
:meth:`Scheduler.schedule` plans a step as data, :meth:`Scheduler.execute` carries it out on
the backend (KV operations, decode, sampling), and :meth:`Scheduler.update` records what
came of it, advancing the sequences with their tokens; the events they produce are collected
by :meth:`Scheduler.take_events` for the loop to deliver. The scheduler tests call the same
methods one step at a time, with no thread at all.

A step: drop what waited too long, admit queued requests into free slots (the KV manager,
:class:`server.engine.kv.KvManager`, decides where each slot's KV comes from), retire what
was cancelled or passed its deadline, then plan one batch: the next token of every decoding
sequence first, so running streams keep their pace, then as much prompt as the prefill chunk
allows. The plan carries the step's KV operations as data; :meth:`Scheduler.execute`
carries them out before the decode, and is the only method that calls the backend's KV or
sampling (:meth:`Scheduler.update` reads the vocabulary only: a token's text, whether it
ends generation).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from server.engine.backend import Backend, BatchEntry
from server.engine.jobs import (
    EventSink,
    Job,
    JobState,
    Sampled,
    SchedulerStats,
    StepPlan,
    StepResult,
)
from server.engine.kv import KvManager
from server.engine.lookup import DraftPolicy, LookupSettings, NgramIndex
from server.engine.prefix import common_prefix_length
from server.engine.queue import FairQueue
from server.engine.slots import MIN_COPY_GAIN
from server.engine.state_cache import StateCache
from server.engine.text_stream import TextStream, TokenTexts
from server.engine.types import (
    FinishReason,
    SamplingDeadEnd,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
)
from server.errors import QueueFullError

logger = logging.getLogger(__name__)


class Scheduler:
    """Admission, batching and sequence advance for one model, over its KV manager."""

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
        self._queue: FairQueue[Job] = FairQueue(
            max_queue, max_queue_per_owner or max(1, max_queue // 2)
        )
        self._kv = KvManager(backend, state_cache)
        self._active: list[Job] = []
        self._deferred: list[Job] = []
        self._finished: Counter[str] = Counter()
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

    def add(self, jobs: Sequence[Job], now: float) -> None:
        """Queue one request's jobs, all or none: a full queue, or an owner over its share
        of it, is a QueueFullError for the whole request."""
        owner = jobs[0].request.owner
        idle = self._kv.free_slots - len(self._deferred) - len(self._queue)
        if not self._queue.room_for(owner, len(jobs), max(0, idle)):
            raise QueueFullError(
                f"the queue for model '{self._name}' is full ({len(self._queue)} of "
                f"{self._queue.maxsize} waiting, at most {self._queue.max_per_owner} for "
                "one API key or client)",
                retry_after=1,
            )
        for job in jobs:
            job.submitted_at = now
            self._queue.put(job, owner=owner, priority=job.request.priority)

    def cancel(self, job: Job) -> None:
        """Stop ``job``: dropped from the queue, or its slot freed, at the next step."""
        job.cancelled = True

    def cancel_all(self) -> None:
        """Stop everything queued or running: each ends with finish reason "cancelled"."""
        for job in [*self._active, *self._deferred]:
            job.cancelled = True
        for job in self._queue.remove_if(lambda _: True):
            job.cancelled = True
            job.state = JobState.DEFERRED
            self._deferred.append(job)  # expired (and answered) at the next step

    def drain(self) -> None:
        """Cancel what is queued at the next step and take nothing new from the queue."""
        self._draining = True

    @property
    def has_work(self) -> bool:
        """Anything in a slot or waiting for one."""
        return bool(self._active or self._deferred or len(self._queue))

    # -- one step ----------------------------------------------------------------------------

    def schedule(self, now: float) -> StepPlan:
        """Expire and admit queued jobs, retire the cancelled and late, and plan a batch."""
        self._expire_queued(now)
        self._admit_queued(now)
        if not self._active:
            return StepPlan(kv_ops=self._kv.take_ops())
        self._idle_since = None
        plan = StepPlan(idle=False)
        prefilling: list[Job] = []
        decoding: list[Job] = []
        # In slot order: llama.cpp splits a batch whose sequences are out of order into
        # several micro-batches, which costs as much as decoding them one by one.
        for job in sorted(self._active, key=lambda t: t.in_slot):
            deadline = job.request.deadline
            if job.cancelled:
                self._retire(job, "cancelled")
            elif deadline is not None and now > deadline:
                self._retire(job, "deadline")
            elif job.state is JobState.PREFILLING:
                prefilling.append(job)
            else:
                decoding.append(job)
        # Guesses take batch room the prompts being read can spare: at most max_draft
        # tokens in all per step, so a new request's prefill is never pushed back by much.
        draft_room = min(
            self._lookup.max_draft if self._lookup.enabled else 0,
            self._backend.n_batch - len(decoding) - 1,
        )
        for job in decoding:
            slot = job.in_slot
            plan.entries.append(BatchEntry(slot, job.last_token, job.position, True))
            plan.sampled.append((job, len(plan.entries) - 1))
            job.fed.append(job.last_token)
            job.position += 1
            job.draft = self._draft(job, draft_room)
            draft_room -= len(job.draft)
            for i, token in enumerate(job.draft):
                plan.entries.append(BatchEntry(slot, token, job.position + i, True))
        budget = min(self._prefill_chunk, self._backend.n_batch - len(plan.entries))
        for job in prefilling:
            prompt = job.request.prompt_tokens
            take = min(len(prompt) - job.prefilled, budget)
            if take <= 0:
                break  # the rest of the prompts continue next step
            budget -= take
            end = job.prefilled + take
            for i in range(job.prefilled, end):
                plan.entries.append(BatchEntry(job.in_slot, prompt[i], i, i == len(prompt) - 1))
            job.prefilled = job.position = end
            if end == len(prompt):
                job.state = JobState.DECODING
                plan.sampled.append((job, len(plan.entries) - 1))
        plan.kv_ops = self._kv.take_ops()
        return plan

    def execute(self, plan: StepPlan) -> StepResult:
        """Carry out the plan's KV operations, decode its batch and sample each job that
        asked for logits. The only method that calls the backend's KV and sampling: the
        engine loop runs it without its lock.

        A placement that fell short (a refused restore, a cache that cannot be cut, a grammar
        llama.cpp refuses) keeps its sequence out of this batch: the planned entries would not
        follow its cells. :meth:`update` sets it back to where its KV really ends."""
        placed = tuple(self._kv.apply(plan.kv_ops))
        if not plan.entries:
            return StepResult(placed=placed)
        held_back = {outcome.slot for outcome in placed if not outcome.as_planned}
        entries, moved = plan.entries, None
        if held_back:
            kept = [i for i, entry in enumerate(plan.entries) if entry.slot not in held_back]
            moved = {old: new for new, old in enumerate(kept)}
            entries = [plan.entries[i] for i in kept]
        try:
            if entries:
                self._backend.decode(entries)
        except RuntimeError as exc:
            return StepResult(placed=placed, error=str(exc))
        sampled: list[Sampled | None] = []
        for job, index in plan.sampled:
            if job.in_slot in held_back:
                sampled.append(None)
            else:
                sampled.append(self._sample(job, index if moved is None else moved[index]))
        return StepResult(tuple(sampled), placed=placed)

    def update(self, plan: StepPlan, result: StepResult) -> None:
        """Record what the backend did: placements' outcomes, then every sampled job
        advanced by its tokens (text, stop strings, logprobs, limits)."""
        self._kv.book(result.placed)
        held_back: set[int] = set()
        in_slot = {job.slot: job for job in self._active}
        for outcome in result.placed:
            job = in_slot.get(outcome.slot)
            if outcome.as_planned or job is None:
                continue
            held_back.add(outcome.slot)
            job.prefilled = job.position = job.cached_tokens = outcome.kept
            job.state = JobState.PREFILLING
            if outcome.error is not None:
                self._retire(job, "error", error=outcome.error)
        if result.error is not None:
            logger.error("decode failed for model %s: %s", self._name, result.error)
            in_batch = {entry.slot for entry in plan.entries} - held_back
            for job in [t for t in self._active if t.slot in in_batch]:
                job.prefilled, job.fed = 0, []  # its cells are in an unknown state
                self._retire(job, "error", error=result.error)
            return
        for (job, _), sampled in zip(plan.sampled, result.sampled, strict=True):
            if sampled is None:  # held back: its placement fell short
                continue
            if sampled.dead_end is not None:
                self._retire(job, "invalid", error=sampled.dead_end)
                continue
            draft, job.draft = job.draft, []
            # The draft tokens the model chose too; their KV stays.
            kept = len(sampled.tokens) - 1
            if draft:
                self._speculation["drafted"] += len(draft)
                self._speculation["accepted"] += kept
                job.drafted += len(draft)
                job.accepted += kept
                assert job.drafts is not None
                job.drafts.record(len(draft), kept)
            if sampled.rollback_failed:
                job.prefilled, job.fed = 0, []  # its cells are in an unknown state
                self._retire(job, "error", error="could not drop the guessed tokens")
                continue
            for offset, token in enumerate(sampled.tokens):
                if offset > 0:  # a kept draft token: its KV is in the slot
                    job.fed.append(sampled.tokens[offset - 1])
                    job.position += 1
                logprob = sampled.logprobs[offset] if sampled.logprobs else None
                self._advance(job, token, logprob)
                if job.state is JobState.FINISHED:
                    break

    def step(self, now: float) -> list[tuple[EventSink, TokenEvent]]:
        """One whole step (what the engine loop does in three calls); returns its events."""
        plan = self.schedule(now)
        self.update(plan, self.execute(plan))
        return self.take_events()

    def take_events(self) -> list[tuple[EventSink, TokenEvent]]:
        """The events produced since the last call, in order, for delivery."""
        events, self._events = self._events, []
        return events

    def idle(self, now: float) -> float:
        """Work for an engine with nothing in a slot (saving slot states). Returns how long
        the engine loop may sleep before the next step: 0 to go on at once."""
        self._idle_since = self._idle_since if self._idle_since is not None else now
        return self._kv.when_idle(now - self._idle_since)

    def close(self) -> None:
        """At shutdown, once nothing runs: keep the idle slots' states."""
        self._kv.close()

    def abort(self, error: str) -> None:
        """End every job with ``error`` (the loop crashed; the slots are not reused)."""
        stranded = self._active + self._deferred + self._queue.remove_if(lambda _: True)
        self._active, self._deferred = [], []
        for job in stranded:
            self._emit_end(job, "error", error=error)

    def stats(self) -> SchedulerStats:
        cache = self._kv.cache
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
            cache=dict(self._kv.counters),
            states=states,
            speculation=dict(self._speculation),
            # A copy first: the engine thread may change the list meanwhile.
            kv_cells_used=sum(job.position for job in list(self._active)),
            kv_cells=self._backend.n_ctx * self._backend.n_slots,
        )

    # -- internals ---------------------------------------------------------------------------

    def _sample(self, job: Job, index: int) -> Sampled:
        """Sample ``job`` at batch entry ``index`` (and at its guesses after it)."""
        chosen: list[int] = []
        logprobs: list[tuple[float, tuple[TopLogprob, ...]]] = []
        top = job.request.sampling.logprobs
        try:
            # Sample as plain decoding would, one position after another: each position's
            # logits are right as long as every token before it is the one chosen. So the
            # output is exactly plain decoding's, sampled or greedy, grammar or not; a
            # point-mass guess is kept with the probability the model gives it, which is
            # the speculative-sampling rule.
            for offset in range(len(job.draft) + 1):
                token = self._backend.sample(job.in_slot, index + offset)
                chosen.append(token)
                if top is not None:
                    logprobs.append(self._backend.logprobs(index + offset, token, top))
                if offset == len(job.draft) or token != job.draft[offset]:
                    break
                if self._backend.is_end_of_generation(token):
                    break
        except SamplingDeadEnd as exc:
            if not chosen:
                return Sampled(dead_end=str(exc))
        kept = len(chosen) - 1
        # The guesses after the last kept one hold wrong KV.
        rollback_failed = kept < len(job.draft) and not self._kv.drop_tail(
            job.in_slot, job.position + kept
        )
        return Sampled(tuple(chosen), tuple(logprobs), rollback_failed=rollback_failed)

    def _draft(self, job: Job, room: int) -> list[int]:
        """Tokens ``job`` may guess this step (prompt lookup), within ``room``."""
        settings = self._lookup
        if room <= 0 or not settings.enabled or not job.request.speculative:
            return []
        if job.drafts is None:
            job.drafts = DraftPolicy(settings.max_draft)
        allowance = job.drafts.allowance()
        # Never past max_tokens or the context: the guess must fit what may still be written.
        left = min(
            job.request.max_tokens - job.generated - 1,
            self._backend.n_ctx - job.position - 1,
        )
        limit = min(allowance, room, left)
        if limit <= 0:
            return []
        prompt = job.request.prompt_tokens
        if job.lookup is None:
            sizes = range(settings.min_ngram, settings.ngram + 1)
            job.lookup = NgramIndex([*prompt, *job.fed], sizes)
        else:  # what was written since the last step
            for token in job.fed[len(job.lookup) - len(prompt) :]:
                job.lookup.append(token)
        return job.lookup.draft(limit)

    def _expire_queued(self, now: float) -> None:
        """Drop queued jobs that were cancelled, waited too long, or passed their deadline."""

        def reason(job: Job) -> FinishReason | None:
            if job.cancelled or self._draining:
                return "cancelled"
            if now - job.submitted_at > self._queue_timeout:
                return "queue_timeout"
            if job.request.deadline is not None and now > job.request.deadline:
                return "deadline"
            return None

        expired = self._queue.remove_if(lambda t: reason(t) is not None)
        expired += [t for t in self._deferred if reason(t) is not None]
        for job in expired:
            if job.state is JobState.DEFERRED:
                self._deferred.remove(job)
            job.queue_seconds = now - job.submitted_at
            self._emit_end(job, reason(job) or "cancelled")

    def _admit_queued(self, now: float) -> None:
        """Fill free slots from the queue. A request whose prompt shares a prefix with one a
        running sequence is still reading waits for it, then copies its KV instead of
        computing the same tokens side by side: so the ``n`` choices of one request, or many
        requests with one system prompt, read their prompt once. At most as many wait as
        there are free slots, which stay theirs."""
        for job in list(self._deferred):
            if self._prefilling_prefix_of(job) is None:
                self._deferred.remove(job)
                self._admit(job, now)
        capacity = self._kv.free_slots - len(self._deferred)
        running = Counter(t.request.owner for t in self._active + self._deferred)
        while capacity > 0 and (queued := self._queue.pop(running)) is not None:
            running[queued.request.owner] += 1
            capacity -= 1
            if self._prefilling_prefix_of(queued) is not None:
                queued.state = JobState.DEFERRED
                self._deferred.append(queued)
            else:
                self._admit(queued, now)

    def _prefilling_prefix_of(self, job: Job) -> Job | None:
        """A running sequence still computing a prompt prefix worth sharing with ``job``."""
        prompt = job.request.prompt_tokens
        for other in self._active:
            if other.request.cache_scope != job.request.cache_scope:
                continue  # a prompt is never shared across cache scopes
            if other.state is JobState.PREFILLING:
                shared = min(
                    common_prefix_length(prompt, other.request.prompt_tokens),
                    len(prompt) - self._backend.min_recomputed,
                )
                if shared >= MIN_COPY_GAIN and shared > other.prefilled:
                    return other
        return None

    def _admit(self, job: Job, now: float) -> None:
        busy = {t.slot: t.prefilled for t in self._active}
        prompt = job.request.prompt_tokens
        place = self._kv.place(prompt, job.request.cache_scope, job.request.sampling, busy.get)
        job.slot = place.slot
        job.prefilled = job.position = job.cached_tokens = place.keep
        job.state = JobState.PREFILLING if place.keep < len(prompt) else JobState.DECODING
        job.queue_seconds = now - job.submitted_at
        job.text = TextStream(job.request.stop)
        if job.request.sampling.logprobs is not None:
            job.token_texts = TokenTexts()
        self._active.append(job)

    def _advance(
        self, job: Job, token: int, logprob: tuple[float, tuple[TopLogprob, ...]] | None
    ) -> None:
        assert job.text is not None
        if job.cancelled:
            self._retire(job, "cancelled")
            return
        if self._backend.is_end_of_generation(token):
            self._retire(job, "stop")
            return
        job.generated += 1
        job.last_token = token
        piece = self._backend.token_piece(token)
        if job.token_texts is not None and logprob is not None:
            job.token_texts.add(token, piece, *logprob)
        text = job.text.push(piece)
        if job.text.stopped:
            self._retire(job, "stop", text=text, token=token)
            return
        if job.generated >= job.request.max_tokens or job.position + 1 >= self._backend.n_ctx:
            self._retire(job, "length", text=text, token=token)
            return
        logprobs = _released_logprobs(job, final=False)
        event = TokenEvent(
            text=text, token_ids=(token,), completion_tokens=job.generated, logprobs=logprobs
        )
        self._events.append((job.sink, event))

    def _retire(
        self,
        job: Job,
        reason: FinishReason,
        *,
        text: str = "",
        token: int | None = None,
        error: str | None = None,
    ) -> None:
        slot = job.in_slot
        logprobs: tuple[TokenLogprob, ...] = ()
        if job.text is not None and reason in ("stop", "length"):
            if not job.text.stopped:
                text += job.text.finish()
            logprobs = _released_logprobs(job, final=True)
        # The slot keeps what was computed, for the next request that shares its prefix.
        held = job.request.prompt_tokens[: job.prefilled] + job.fed
        self._kv.release(slot, held, job.request.cache_scope)
        self._active.remove(job)
        self._emit_end(job, reason, text=text, token=token, error=error, logprobs=logprobs)

    def _emit_end(
        self,
        job: Job,
        reason: FinishReason,
        *,
        text: str = "",
        token: int | None = None,
        error: str | None = None,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> None:
        job.state = JobState.FINISHED
        self._finished[reason] += 1
        event = TokenEvent(
            text=text,
            token_ids=(token,) if token is not None else (),
            finish_reason=reason,
            prompt_tokens=len(job.request.prompt_tokens),
            completion_tokens=job.generated,
            queue_seconds=job.queue_seconds,
            cached_tokens=job.cached_tokens,
            error=error,
            logprobs=logprobs,
            stop_sequence=job.text.matched_stop if job.text is not None else None,
            drafted_tokens=job.drafted,
            accepted_tokens=job.accepted,
        )
        self._events.append((job.sink, event))


def _released_logprobs(job: Job, *, final: bool) -> tuple[TokenLogprob, ...]:
    if job.token_texts is None or job.text is None:
        return ()
    if final:
        return job.token_texts.finish(job.text.emitted)
    return job.token_texts.release(job.text.emitted)
