"""The scheduler core stepped by hand with a deterministic fake backend (no model, no thread,
no clock): queueing, batching, limits, cancellation, KV placement. A few tests at the end run
the threaded engine loop. Real-model behaviour is covered by the API and end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server.engine.jobs import JobState
from server.engine.lookup import LookupSettings
from server.engine.loop import EngineLoop
from server.engine.state_cache import StateCache
from server.engine.types import GenerationRequest, SamplingParams, TokenEvent
from server.errors import EngineError, QueueFullError, ShuttingDownError
from tests.engine.fake_backend import (
    Collector,
    FakeBackend,
    Steps,
    as_backend,
    request,
    sink_of,
)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def steps(backend: FakeBackend) -> Steps:
    return Steps(backend)


def test_generates_up_to_max_tokens(steps: Steps) -> None:
    (job,) = steps.submit(request([10, 11], max_tokens=3))
    sink = sink_of(job)
    steps.run(sink)
    assert sink.text == "<12><13><14>"
    assert sink.final.finish_reason == "length"
    assert sink.final.completion_tokens == 3
    assert sink.final.prompt_tokens == 2
    assert job.state is JobState.FINISHED


def test_a_job_moves_through_its_states(backend: FakeBackend) -> None:
    steps = Steps(backend, prefill_chunk=2)
    (job,) = steps.submit(request([1, 2, 3], max_tokens=2))
    seen = [(job.state, job.slot)]
    steps.step()  # admitted: two of the three prompt tokens
    seen.append((job.state, job.slot))
    steps.step()  # the prompt's last token, and the first sample
    seen.append((job.state, job.slot))
    steps.step()
    seen.append((job.state, job.slot))
    assert seen == [
        (JobState.QUEUED, None),
        (JobState.PREFILLING, 0),
        (JobState.DECODING, 0),
        (JobState.FINISHED, 0),
    ]


def test_end_of_generation_token_stops_with_stop() -> None:
    steps = Steps(FakeBackend(eog_after=2))
    (job,) = steps.submit(request([1], max_tokens=50))
    steps.run(sink_of(job))
    assert sink_of(job).final.finish_reason == "stop"
    assert sink_of(job).text == "<2><3>"


def test_stop_string_ends_the_sequence_and_is_not_emitted(steps: Steps) -> None:
    (job,) = steps.submit(request([1], max_tokens=50, stop=["<4>"]))
    steps.run(sink_of(job))
    assert sink_of(job).final.finish_reason == "stop"
    assert sink_of(job).text == "<2><3>"


def test_prompt_is_prefilled_in_chunks(backend: FakeBackend) -> None:
    steps = Steps(backend, prefill_chunk=4)
    (job,) = steps.submit(request(list(range(10)), max_tokens=1))
    steps.run(sink_of(job))
    assert [len(b) for b in backend.batches] == [4, 4, 2]
    # Only the last prompt token asks for logits.
    assert [e.want_logits for e in backend.batches[-1]] == [False, True]
    assert [e.position for b in backend.batches for e in b] == list(range(10))


def test_sequences_share_decode_steps_when_there_are_several_slots() -> None:
    backend = FakeBackend(n_slots=2)
    steps = Steps(backend)
    a, b = steps.submit(request([100], max_tokens=3), request([200], max_tokens=3))
    steps.step()
    assert {e.slot for e in backend.batches[0]} == {0, 1}  # both prompts in one decode
    steps.run(sink_of(a), sink_of(b))
    assert sink_of(a).text == "<101><102><103>"
    assert sink_of(b).text == "<201><202><203>"


def test_with_one_slot_a_later_request_waits_and_never_interrupts_the_running_one(
    steps: Steps,
) -> None:
    (first,) = steps.submit(request([1], max_tokens=5))
    steps.step()
    steps.now += 2.0
    (second,) = steps.submit(request([50], max_tokens=2))
    steps.step(3)
    assert second.state is JobState.QUEUED
    steps.run(sink_of(first), sink_of(second))
    assert sink_of(first).text == "<2><3><4><5><6>"
    assert sink_of(second).text == "<51><52>"
    assert sink_of(first).final.queue_seconds == 0
    assert sink_of(second).final.queue_seconds == 0  # the clock did not move while it waited


def test_queue_full_raises_with_retry_after(backend: FakeBackend) -> None:
    steps = Steps(backend, max_queue=1)
    steps.submit(request([1], max_tokens=100))
    steps.step()  # the slot is taken, the queue empty again
    steps.submit(request([1]))
    with pytest.raises(QueueFullError) as info:
        steps.submit(request([1]))
    assert info.value.status_code == 429
    assert info.value.retry_after is not None


def test_cancelling_a_queued_request_ends_it_without_decoding(
    steps: Steps, backend: FakeBackend
) -> None:
    running, queued = steps.submit(request([1], max_tokens=3), request([77], max_tokens=3))
    steps.core.cancel(queued)
    steps.run(sink_of(running), sink_of(queued))
    assert sink_of(queued).final.finish_reason == "cancelled"
    assert sink_of(running).final.finish_reason == "length"
    assert all(e.token != 77 for b in backend.batches for e in b)


def test_cancelling_a_running_request_frees_its_slot_at_the_next_step(steps: Steps) -> None:
    (job,) = steps.submit(request([1], max_tokens=1000))
    steps.step(3)
    steps.core.cancel(job)
    generated = len(sink_of(job).events)
    steps.step()
    assert sink_of(job).final.finish_reason == "cancelled"
    assert sink_of(job).final.completion_tokens == generated
    assert steps.stats.running == 0


def test_context_end_finishes_with_length() -> None:
    steps = Steps(FakeBackend(n_ctx=8))
    (job,) = steps.submit(request([1, 2, 3], max_tokens=100))
    steps.run(sink_of(job))
    final = sink_of(job).final
    assert final.finish_reason == "length"
    assert final.prompt_tokens + final.completion_tokens <= 8


def test_decode_failure_ends_the_request_with_an_error(steps: Steps, backend: FakeBackend) -> None:
    backend.fail = True
    (job,) = steps.submit(request([1]))
    steps.step()
    assert sink_of(job).final.finish_reason == "error"
    assert sink_of(job).final.error == "boom"
    assert steps.stats.running == 0
    steps.step()  # the release planned then is carried out with the next step
    assert ("clear", 0, -1) in backend.kv_ops  # nothing of its cells is trusted again


def test_waiting_owners_take_turns_for_a_free_slot(steps: Steps) -> None:
    order: list[str] = []
    steps.submit(request([1], max_tokens=2, owner="flood"), tags=[Collector("running", order)])
    steps.step()
    flood = [Collector(f"flood-{i}", order) for i in range(3)]
    steps.submit(*[request([1], max_tokens=1, owner="flood") for _ in flood], tags=flood)
    polite = Collector("polite", order)
    steps.submit(request([1], max_tokens=1, owner="polite"), tags=[polite])
    steps.run(*flood, polite)
    assert order[:3] == ["running", "flood-0", "polite"]


def test_priority_orders_one_owners_jobs_and_never_jumps_another_owner(steps: Steps) -> None:
    order: list[str] = []
    steps.submit(request([1], max_tokens=2, owner="x"), tags=[Collector("running", order)])
    steps.step()
    sinks = []
    for name, owner, priority in [
        ("a-low", "a", 0),
        ("b-urgent", "b", 1000),
        ("a-high", "a", 9),
        ("b-low", "b", 0),
    ]:
        sinks.append(Collector(name, order))
        job = GenerationRequest(name, [5], 1, SamplingParams(), [], owner, priority=priority)
        steps.submit(job, tags=[sinks[-1]])
    steps.run(*sinks)
    # a and b take turns (a queued first); within each, the higher priority goes first.
    assert order == ["running", "a-high", "b-urgent", "a-low", "b-low"]


def test_the_owner_holding_fewest_slots_goes_next() -> None:
    steps = Steps(FakeBackend(n_slots=4))
    order: list[str] = []
    # One request with n = 6 takes all four slots; two of its choices wait.
    greedy = [Collector(f"greedy-{i}", order) for i in range(6)]
    steps.submit(*[request([1], max_tokens=3, owner="g") for _ in greedy], tags=greedy)
    steps.step()
    assert steps.stats.running == 4
    small = Collector("small", order)
    steps.submit(request([2], max_tokens=1, owner="s"), tags=[small])
    steps.run(*greedy, small)
    # The first free slot goes to the owner with none, ahead of the greedy request's rest.
    assert order.index("small") < order.index("greedy-4")


def test_a_request_is_queued_whole_or_not_at_all(backend: FakeBackend) -> None:
    steps = Steps(backend, max_queue=8)
    steps.submit(request([1], max_tokens=2, owner="x"))
    steps.step()
    # An owner may hold half the queue: five jobs do not fit, and none of them is queued.
    with pytest.raises(QueueFullError):
        steps.submit(*[request([1], owner="a") for _ in range(5)])
    assert steps.stats.queued == 0
    steps.submit(*[request([1], owner="a") for _ in range(4)])
    with pytest.raises(QueueFullError):
        steps.submit(request([1], owner="a"))
    steps.submit(*[request([1], owner="b") for _ in range(4)])
    with pytest.raises(QueueFullError):  # the queue itself is full
        steps.submit(request([1], owner="c"))


def test_a_request_that_waits_too_long_times_out(backend: FakeBackend) -> None:
    steps = Steps(backend, queue_timeout=0.05)
    running, waiting = steps.submit(request([1], max_tokens=1000), request([2]))
    steps.step()
    steps.now += 0.04
    steps.step()
    assert not sink_of(waiting).done.is_set()
    steps.now += 0.02
    steps.step()
    assert sink_of(waiting).final.finish_reason == "queue_timeout"
    assert sink_of(waiting).final.queue_seconds == pytest.approx(0.06)
    assert sink_of(running).events[-1].finish_reason is None  # the running one is untouched


def test_a_passed_deadline_frees_the_slot_at_the_next_step(steps: Steps) -> None:
    req = request([1], max_tokens=1000)
    req.deadline = steps.now + 0.05
    (job,) = steps.submit(req)
    steps.step(3)
    assert not sink_of(job).done.is_set()
    steps.now += 0.06
    steps.step()
    assert sink_of(job).final.finish_reason == "deadline"
    assert sink_of(job).final.completion_tokens == 3
    assert steps.stats.running == 0


def test_a_deadline_passed_in_the_queue_ends_the_request_there(steps: Steps) -> None:
    running = request([1], max_tokens=1000)
    late = request([2])
    late.deadline = steps.now + 1
    _, queued = steps.submit(running, late)
    steps.step()
    steps.now += 2
    steps.step()
    assert sink_of(queued).final.finish_reason == "deadline"
    assert sink_of(queued).final.completion_tokens == 0


def test_drain_cancels_the_queue_and_lets_the_running_finish(steps: Steps) -> None:
    running, queued = steps.submit(request([1], max_tokens=3), request([9], max_tokens=3))
    steps.step()
    steps.core.drain()
    steps.run(sink_of(running), sink_of(queued))
    assert sink_of(running).final.finish_reason == "length"  # what runs is allowed to finish
    assert sink_of(queued).final.finish_reason == "cancelled"


def test_cancel_all_ends_the_running_and_the_queued(steps: Steps) -> None:
    running, queued = steps.submit(request([1], max_tokens=50), request([9], max_tokens=3))
    steps.step()
    steps.core.cancel_all()
    steps.step()
    assert sink_of(running).final.finish_reason == "cancelled"
    assert sink_of(queued).final.finish_reason == "cancelled"
    assert not steps.core.has_work
    assert steps.stats.finished["cancelled"] == 2


def test_batches_list_generating_sequences_in_slot_order_then_prompts() -> None:
    backend = FakeBackend(n_slots=3)
    steps = Steps(backend)
    jobs = steps.submit(*[request([10 * (i + 1)], max_tokens=4) for i in range(3)])
    steps.step()
    steps.core.cancel(jobs[0])  # slot 0 frees; a later request takes it
    (late,) = steps.submit(request([70, 71], max_tokens=4))
    steps.step()  # the cancelled sequence leaves its slot
    steps.step()
    assert late.slot == 0
    # The next tokens of slots 1 and 2, then the new prompt in slot 0.
    assert [(e.slot, e.token) for e in backend.batches[-1]] == [(1, 22), (2, 32), (0, 70), (0, 71)]
    steps.run(*[sink_of(t) for t in [*jobs, late]])
    for batch in backend.batches:
        generating = [e.slot for e in batch if e.token not in (70, 71)]
        assert generating == sorted(generating)


def test_a_shared_prefix_is_reused_and_only_the_rest_is_prefilled() -> None:
    backend = FakeBackend(n_slots=2)
    steps = Steps(backend)
    (first,) = steps.submit(request(list(range(100, 120)), max_tokens=2))
    steps.run(sink_of(first))
    assert sink_of(first).final.cached_tokens == 0
    backend.batches.clear()
    # The same 20 prompt tokens and 2 more: 20 are in the slot already.
    (second,) = steps.submit(request([*range(100, 120), 7, 8], max_tokens=1))
    steps.run(sink_of(second))
    assert sink_of(second).final.cached_tokens == 20
    prompt_positions = sorted(e.position for b in backend.batches for e in b)
    assert prompt_positions == [20, 21]  # only the new tokens were decoded
    assert steps.stats.cache["hits"] == 1
    assert steps.stats.cache["tokens_saved"] == 20


def test_the_last_two_prompt_tokens_are_always_decoded(steps: Steps, backend: FakeBackend) -> None:
    """For the last one's logits, and with a second so that attention takes the same kernel
    as it does for a whole prompt."""
    for _ in range(2):
        (job,) = steps.submit(request([5, 6, 7, 8], max_tokens=1))
        steps.run(sink_of(job))
    assert sink_of(job).final.cached_tokens == 2
    assert [e.position for e in backend.batches[-1]] == [2, 3]


def test_a_longer_prefix_in_a_busy_slot_is_copied_not_recomputed() -> None:
    backend = FakeBackend(n_slots=2, n_batch=512)
    steps = Steps(backend)
    long_prompt = list(range(1000, 1100))
    (busy,) = steps.submit(request(long_prompt, max_tokens=50))
    steps.step(2)  # the prompt, and a token
    (follower,) = steps.submit(request([*long_prompt, 1, 2, 3], max_tokens=1))
    steps.run(sink_of(follower))
    assert sink_of(follower).final.cached_tokens == 100
    assert ("copy", 0, 1) in backend.kv_ops
    assert steps.stats.cache["copies"] == 1
    steps.run(sink_of(busy))
    assert sink_of(busy).final.finish_reason == "length"


def test_when_truncation_is_impossible_the_prompt_is_computed_in_full(
    steps: Steps, backend: FakeBackend
) -> None:
    backend.can_truncate = False  # e.g. a recurrent model, or a pruned sliding window
    for _ in range(2):
        (job,) = steps.submit(request([1, 2, 3, 4], max_tokens=1))
        steps.run(sink_of(job))
    assert sink_of(job).final.cached_tokens == 0
    assert sorted(e.position for e in backend.batches[-1]) == [0, 1, 2, 3]


def test_unrelated_requests_take_the_least_recently_used_slot() -> None:
    backend = FakeBackend(n_slots=2)
    steps = Steps(backend)
    for prompt in ([1, 1, 1], [2, 2, 2]):
        (job,) = steps.submit(request(prompt, max_tokens=1))
        steps.run(sink_of(job))
    slots_used = {e.slot for b in backend.batches for e in b}
    assert slots_used == {0, 1}  # the second did not evict the first conversation's cache
    (job,) = steps.submit(request([1, 1, 1, 9, 9], max_tokens=1))
    steps.run(sink_of(job))
    assert sink_of(job).final.cached_tokens == 3


@pytest.fixture
def state_cache() -> Iterator[StateCache]:
    cache = StateCache(model_key="fake" * 16, ram_bytes=1 << 20, disk_dir=None, disk_bytes=0)
    yield cache
    cache.close()


def test_an_overwritten_slot_is_saved_and_restored_later(state_cache: StateCache) -> None:
    backend = FakeBackend(n_slots=1, n_ctx=1024, n_batch=512)
    steps = Steps(backend, state_cache=state_cache)
    conversation = list(range(1000, 1300))  # long enough to be worth saving
    for prompt in (conversation, list(range(2000, 2300))):
        (job,) = steps.submit(request(prompt, max_tokens=2))
        steps.run(sink_of(job))
    assert ("save", 0, -1) in backend.kv_ops  # the conversation was saved before being overwritten
    backend.batches.clear()
    (job,) = steps.submit(request([*conversation, 1], max_tokens=1))
    steps.run(sink_of(job))
    assert sink_of(job).final.cached_tokens == 299
    assert any(op[0] == "restore" for op in backend.kv_ops)
    assert sorted(e.position for b in backend.batches for e in b) == [299, 300]
    assert steps.stats.cache["restores"] == 1
    assert steps.stats.states is not None and steps.stats.states["stored"] >= 1


def test_a_refused_restore_falls_back_to_copying_a_slot(state_cache: StateCache) -> None:
    backend = FakeBackend(n_slots=2, n_ctx=1024, n_batch=512)
    steps = Steps(backend, state_cache=state_cache)
    conversation = list(range(1000, 1500))
    (first,) = steps.submit(request(conversation, max_tokens=1))
    steps.run(sink_of(first))
    steps.core.idle(steps.now)
    steps.core.idle(steps.now + 1)  # its state is saved while idle
    # A running request in slot 0 now holds the conversation's first 100 tokens.
    (busy,) = steps.submit(request([*conversation[:100], 8], max_tokens=50))
    steps.step(2)
    backend.can_restore = False
    (again,) = steps.submit(request([*conversation, 1], max_tokens=1))
    steps.run(sink_of(again))
    assert ("restore", 1, len(b"state-of-0")) in backend.kv_ops
    # The saved state was refused: slot 0's 100 tokens are copied instead.
    assert ("copy", 0, 1) in backend.kv_ops
    assert steps.stats.cache["copies"] == 1 and steps.stats.cache["restores"] == 0
    assert sink_of(again).final.cached_tokens == 100
    steps.run(sink_of(busy))


def test_an_idle_engine_saves_a_slot_after_a_pause(state_cache: StateCache) -> None:
    backend = FakeBackend(n_slots=2, n_ctx=1024, n_batch=512)
    steps = Steps(backend, state_cache=state_cache)
    (job,) = steps.submit(request(list(range(1000, 1300)), max_tokens=2))
    steps.run(sink_of(job))
    assert steps.core.idle(steps.now) > 0  # not at once: the next turn may follow
    assert ("save", 0, -1) not in backend.kv_ops
    assert steps.core.idle(steps.now + 0.3) == 0
    assert ("save", 0, -1) in backend.kv_ops
    assert steps.core.idle(steps.now + 0.4) == 1.0  # nothing left to save: sleep long


def test_a_short_conversation_is_never_saved(state_cache: StateCache) -> None:
    backend = FakeBackend(n_slots=1, n_ctx=1024, n_batch=512)
    steps = Steps(backend, state_cache=state_cache)
    for prompt in (list(range(1000, 1100)), list(range(2000, 2100))):
        (job,) = steps.submit(request(prompt, max_tokens=2))
        steps.run(sink_of(job))
    steps.core.idle(steps.now)
    steps.core.idle(steps.now + 1)
    assert not [op for op in backend.kv_ops if op[0] == "save"]


def test_a_tiny_state_cache_never_hands_out_an_evicted_state() -> None:
    backend = FakeBackend(n_slots=1, n_ctx=1024, n_batch=512)
    # Room for one saved state only: saving the slot evicts whatever else was kept.
    cache = StateCache(model_key="tiny" * 16, ram_bytes=12, disk_dir=None, disk_bytes=0)
    steps = Steps(backend, state_cache=cache)
    a, b = list(range(1000, 1300)), list(range(2000, 2300))
    for prompt in (a, b, a, b):
        (job,) = steps.submit(request(prompt, max_tokens=1))
        steps.run(sink_of(job))
        assert sink_of(job).final.finish_reason == "length"
    assert cache.ram_bytes <= 12
    assert cache.stats["stored"] >= 2  # states were saved, and evicted to make room


def test_choices_submitted_together_read_their_shared_prompt_once() -> None:
    backend = FakeBackend(n_slots=3, n_batch=512)
    steps = Steps(backend)
    prompt = list(range(2000, 2100))
    jobs = steps.submit(*[request(prompt, max_tokens=2) for _ in range(3)])
    steps.step()
    assert [t.state for t in jobs] == [
        JobState.DECODING,
        JobState.DEFERRED,
        JobState.DEFERRED,
    ]
    steps.run(*[sink_of(t) for t in jobs])
    # The 100 prompt tokens are decoded by one sequence; the others copy its cells and
    # decode only the last two prompt tokens.
    prompt_tokens_decoded = [e for b in backend.batches for e in b if e.token in prompt]
    assert len(prompt_tokens_decoded) == 100 + 2 * 2
    assert sorted(sink_of(t).final.cached_tokens for t in jobs) == [0, 98, 98]
    assert [op for op in backend.kv_ops if op[0] == "copy"] == [("copy", 0, 1), ("copy", 0, 2)]


def test_requests_waiting_on_a_shared_prompt_never_take_more_than_the_free_slots() -> None:
    backend = FakeBackend(n_slots=2, n_batch=64)
    steps = Steps(backend)
    prompt = list(range(3000, 3100))
    jobs = steps.submit(*[request(prompt, max_tokens=2) for _ in range(4)])
    steps.step()  # the first reads part of its prompt; the second waits to copy it
    stats = steps.stats
    assert (stats.running, stats.deferred, stats.queued) == (1, 1, 2)
    steps.run(*[sink_of(t) for t in jobs])
    assert all(sink_of(t).final.finish_reason == "length" for t in jobs)


def test_logprobs_cover_exactly_the_emitted_text(steps: Steps) -> None:
    sampling = SamplingParams(logprobs=2)
    # Tokens read "<11>", "<12>", ...; the stop string cuts inside the third token.
    (job,) = steps.submit(GenerationRequest("r", [10], 5, sampling, ["3>"]))
    sink = sink_of(job)
    steps.run(sink)
    entries = [lp for e in sink.events for lp in e.logprobs]
    assert sink.final.finish_reason == "stop"
    assert sink.text == "<11><12><1"
    assert "".join(lp.text for lp in entries) == sink.text
    assert [lp.token for lp in entries] == [11, 12, 13]
    assert all(lp.logprob <= 0 and len(lp.top) == 2 for lp in entries)


def scoped_request(prompt: list[int], scope: str, max_tokens: int = 1) -> GenerationRequest:
    return GenerationRequest(
        "r", prompt, max_tokens, SamplingParams(), [], scope, cache_scope=scope
    )


def test_cached_prefixes_are_never_shared_across_cache_scopes() -> None:
    backend = FakeBackend(n_slots=2, n_batch=512)
    steps = Steps(backend)
    secret = list(range(3000, 3100))
    (alice,) = steps.submit(scoped_request(secret, "alice", max_tokens=40))
    steps.step(2)
    # bob's same prompt neither waits to copy alice's running prefill nor copies her slot.
    (bob,) = steps.submit(scoped_request([*secret, 1], "bob"))
    steps.run(sink_of(bob))
    assert sink_of(bob).final.cached_tokens == 0
    assert not [op for op in backend.kv_ops if op[0] == "copy"]
    steps.run(sink_of(alice))
    # alice's own next request reuses her prefix.
    (again,) = steps.submit(scoped_request([*secret, 2, 3], "alice"))
    steps.run(sink_of(again))
    assert sink_of(again).final.cached_tokens == 100


# -- the threaded engine loop-----------------------------------------------------------------


@pytest.fixture
def driver(backend: FakeBackend) -> Iterator[EngineLoop]:
    scheduler = EngineLoop(as_backend(backend), name="fake")
    scheduler.start()
    yield scheduler
    assert scheduler.stop(timeout=10)


def finished(sink: Collector) -> TokenEvent:
    assert sink.done.wait(10), "request did not finish"
    return sink.events[-1]


def test_the_engine_loop_runs_requests_to_their_end(driver: EngineLoop) -> None:
    sinks = [Collector() for _ in range(3)]
    for i, sink in enumerate(sinks):
        driver.submit(request([10 * (i + 1)], max_tokens=2), sink)
    assert [finished(s).finish_reason for s in sinks] == ["length"] * 3
    assert sinks[2].text == "<31><32>"
    assert driver.stats().finished["length"] == 3


class CountingLoop:
    """An event loop stand-in: runs what it is handed at once, and counts the hand-overs."""

    def __init__(self) -> None:
        self.handovers = 0

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: object) -> None:
        self.handovers += 1
        callback(*args)


class LoopSink(Collector):
    """A sink on an event loop, as GenerationStream's: called, it hands one event over."""

    def __init__(self, loop: CountingLoop) -> None:
        super().__init__()
        self.loop = loop

    def put(self, event: TokenEvent) -> None:
        super().__call__(event)

    def __call__(self, event: TokenEvent) -> None:
        self.loop.call_soon_threadsafe(self.put, event)


def test_a_steps_events_reach_one_loop_in_one_handover() -> None:
    loop = CountingLoop()
    sinks = [LoopSink(loop) for _ in range(4)]
    driver = EngineLoop(as_backend(FakeBackend(n_slots=4)), name="fake")
    driver.submit_all([(request([10 * (i + 1)], max_tokens=5), s) for i, s in enumerate(sinks)])
    driver.start()
    try:
        assert [finished(s).finish_reason for s in sinks] == ["length"] * 4
    finally:
        driver.stop(timeout=10)
    assert sinks[3].text == "<41><42><43><44><45>"
    events = sum(len(s.events) for s in sinks)
    # Four streams, five tokens each, one hand-over per step: far fewer than one per event.
    assert loop.handovers < events / 2


def test_stop_rejects_new_work_and_ends_what_is_queued(backend: FakeBackend) -> None:
    scheduler = EngineLoop(as_backend(backend), name="fake")  # not started: all stays queued
    queued = Collector()
    scheduler.submit(request([9], max_tokens=3), queued)
    scheduler.start()
    scheduler.stop_accepting()
    with pytest.raises(ShuttingDownError) as info:
        scheduler.submit(request([1]), Collector())
    assert info.value.status_code == 503
    assert scheduler.stop(timeout=10)
    assert finished(queued).finish_reason in ("length", "cancelled")


def test_a_crashed_loop_ends_every_request_and_refuses_new_ones(
    backend: FakeBackend,
) -> None:
    backend.crash = True
    scheduler = EngineLoop(as_backend(backend), name="fake")
    sink = Collector()
    scheduler.submit(request([1]), sink)
    scheduler.start()
    final = finished(sink)
    assert final.finish_reason == "error"
    assert final.error == "the engine stopped unexpectedly"
    assert scheduler.stop(timeout=10)
    assert scheduler.failed
    with pytest.raises(EngineError):
        scheduler.submit(request([1]), Collector())


# -- prompt lookup (speculative decoding) ----------------------------------------------------

LOOKUP = LookupSettings(max_draft=4)


def run_alone(prompt: list[int], max_tokens: int, **kwargs: Any) -> tuple[str, Steps]:
    steps = Steps(FakeBackend(n_ctx=512), **kwargs)
    req = request(prompt, max_tokens=max_tokens)
    (job,) = steps.submit(req)
    steps.run(sink_of(job))
    return sink_of(job).text, steps


def test_a_guess_the_model_agrees_with_is_kept_and_saves_steps() -> None:
    prompt = [*range(1, 21), 1, 2]  # the output (3, 4, ...) copies the prompt
    plain, plain_steps = run_alone(prompt, 12)
    guessed, guess_steps = run_alone(prompt, 12, lookup=LOOKUP)
    assert guessed == plain == "".join(f"<{t}>" for t in range(3, 15))
    assert len(guess_steps.backend.batches) < len(plain_steps.backend.batches) - 4
    stats = guess_steps.stats.speculation
    assert stats["accepted"] == stats["drafted"] > 0
    # Positions stay consecutive: each decode continues where the last kept token ended.
    firsts = [b[0].position for b in guess_steps.backend.batches[1:]]
    assert firsts == sorted(firsts)


def test_a_wrong_guess_is_dropped_with_its_kv_and_the_output_is_unchanged() -> None:
    prompt = [5, 6, 7, 50, 51, 40, 5]  # "5 6 7" was followed by 50, but the model says 8
    plain, _ = run_alone(prompt, 6)
    guessed, steps = run_alone(prompt, 6, lookup=LOOKUP)
    assert guessed == plain
    stats = steps.stats.speculation
    assert stats["drafted"] > 0 and stats["accepted"] < stats["drafted"]
    # The wrong guess's cells were cut right after the last position kept.
    guess = next(b for b in steps.backend.batches[1:] if len(b) > 1)
    assert [e.token for e in guess] == [6, 7, 50, 51, 40]
    kept_through = guess[1].position  # 7 was right, 50 was not
    assert ("drop_tail", 0, kept_through + 1) in steps.backend.kv_ops


def test_guesses_never_run_past_max_tokens_or_the_end_of_generation() -> None:
    prompt = [*range(1, 21), 1, 2]
    text, _ = run_alone(prompt, 3, lookup=LOOKUP)
    assert text == "<3><4><5>"
    steps = Steps(FakeBackend(n_ctx=512, eog_after=2), lookup=LOOKUP)
    (job,) = steps.submit(request(prompt, max_tokens=10))
    steps.run(sink_of(job))
    assert sink_of(job).text == "<3><4>"
    assert sink_of(job).final.finish_reason == "stop"


def test_a_request_can_opt_out_of_guessing() -> None:
    steps = Steps(FakeBackend(n_ctx=512), lookup=LOOKUP)
    req = request([*range(1, 21), 1, 2], max_tokens=6)
    req.speculative = False
    (job,) = steps.submit(req)
    steps.run(sink_of(job))
    assert steps.stats.speculation["drafted"] == 0
    assert all(len(b) == 1 for b in steps.backend.batches[1:])


def test_guesses_beside_other_streams_keep_every_output_and_the_slot_order() -> None:
    prompts = [[*range(1, 21), 1, 2], [7, 8, 9], [*range(30, 40), 30, 31]]
    outputs = {}
    for lookup in (None, LOOKUP):
        steps = Steps(FakeBackend(n_slots=3, n_ctx=512), lookup=lookup)
        jobs = steps.submit(*(request(p, max_tokens=8) for p in prompts))
        steps.run(*(sink_of(t) for t in jobs))
        outputs[lookup] = [sink_of(t).text for t in jobs]
        for batch in steps.backend.batches:
            slots = [e.slot for e in batch]
            assert slots == sorted(slots)
    assert outputs[None] == outputs[LOOKUP]


def test_a_rollback_that_fails_ends_the_sequence_rather_than_write_from_wrong_kv() -> None:
    backend = FakeBackend(n_ctx=512)
    backend.can_drop_tail = False
    steps = Steps(backend, lookup=LOOKUP)
    (job,) = steps.submit(request([5, 6, 7, 50, 51, 40, 5], max_tokens=6))
    steps.run(sink_of(job))
    assert sink_of(job).final.finish_reason == "error"
    assert steps.stats.finished["error"] == 1
