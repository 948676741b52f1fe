"""The engine loop with a deterministic fake backend (no model): queueing, batching, limits,
cancellation. Real-model behaviour is covered by the API and end-to-end tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from server.engine.llama import BatchEntry
from server.engine.scheduler import Backend, Scheduler
from server.engine.types import GenerationRequest, SamplingParams, TokenEvent, TopLogprob
from server.errors import QueueFullError, ShuttingDownError

EOG = 999


class FakeBackend:
    """Each sequence's next token is its previous token + 1; token t reads as "<t>"."""

    def __init__(
        self, n_slots: int = 1, n_ctx: int = 256, n_batch: int = 64, eog_after: int | None = None
    ) -> None:
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.eog_after = eog_after
        self.batches: list[list[BatchEntry]] = []
        self.last: dict[int, int] = {}
        self.generated: dict[int, int] = {}
        self.gate = threading.Semaphore(1_000_000)
        self.fail = False
        self.kv_ops: list[tuple[str, int, int]] = []
        self.can_truncate = True

    def begin(self, slot: int, sampling: SamplingParams) -> None:
        self.generated[slot] = 0

    def end(self, slot: int) -> None:
        self.last.pop(slot, None)

    def clear(self, slot: int) -> None:
        self.kv_ops.append(("clear", slot, -1))

    def truncate(self, slot: int, keep: int) -> bool:
        self.kv_ops.append(("truncate", slot, keep))
        return self.can_truncate

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
        return True

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        self.gate.acquire()
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(list(entries))
        for entry in entries:
            self.last[entry.slot] = entry.token

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

    def wait(self) -> TokenEvent:
        assert self.done.wait(10), "request did not finish"
        return self.events[-1]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)


def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):
        if condition():
            return
        time.sleep(0.001)
    raise AssertionError("condition never became true")


def request(
    prompt: list[int], max_tokens: int = 3, stop: list[str] | None = None, owner: str = ""
) -> GenerationRequest:
    return GenerationRequest("r", prompt, max_tokens, SamplingParams(), stop or [], owner)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def as_backend(fake: FakeBackend) -> Backend:
    """mypy checks here that the fake has everything the scheduler needs of a backend."""
    return fake


def run(backend: FakeBackend, **kwargs: Any) -> Scheduler:
    scheduler = Scheduler(as_backend(backend), name="fake", **kwargs)
    scheduler.start()
    return scheduler


def test_generates_up_to_max_tokens(backend: FakeBackend) -> None:
    scheduler = run(backend)
    sink = Collector()
    scheduler.submit(request([10, 11], max_tokens=3), sink)
    final = sink.wait()
    assert sink.text == "<12><13><14>"
    assert final.finish_reason == "length"
    assert final.completion_tokens == 3
    assert final.prompt_tokens == 2
    scheduler.stop(timeout=10)


def test_end_of_generation_token_stops_with_stop() -> None:
    backend = FakeBackend(eog_after=2)
    scheduler = run(backend)
    sink = Collector()
    scheduler.submit(request([1], max_tokens=50), sink)
    final = sink.wait()
    assert final.finish_reason == "stop"
    assert sink.text == "<2><3>"
    scheduler.stop(timeout=10)


def test_stop_string_ends_the_sequence_and_is_not_emitted(backend: FakeBackend) -> None:
    scheduler = run(backend)
    sink = Collector()
    scheduler.submit(request([1], max_tokens=50, stop=["<4>"]), sink)
    final = sink.wait()
    assert final.finish_reason == "stop"
    assert sink.text == "<2><3>"
    scheduler.stop(timeout=10)


def test_prompt_is_prefilled_in_chunks() -> None:
    backend = FakeBackend(n_batch=64)
    scheduler = run(backend, prefill_chunk=4)
    sink = Collector()
    scheduler.submit(request(list(range(10)), max_tokens=1), sink)
    sink.wait()
    sizes = [len(b) for b in backend.batches]
    assert sizes == [4, 4, 2]
    # Only the last prompt token asks for logits.
    assert [e.want_logits for e in backend.batches[-1]] == [False, True]
    assert [e.position for b in backend.batches for e in b] == list(range(10))
    scheduler.stop(timeout=10)


def test_sequences_share_decode_steps_when_there_are_several_slots() -> None:
    backend = FakeBackend(n_slots=2)
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    a, b = Collector(), Collector()
    scheduler.submit(request([100], max_tokens=3), a)
    scheduler.submit(request([200], max_tokens=3), b)
    backend.gate.release(100)
    assert a.wait().finish_reason == "length"
    assert b.wait().finish_reason == "length"
    assert a.text == "<101><102><103>"
    assert b.text == "<201><202><203>"
    assert any({e.slot for e in batch} == {0, 1} for batch in backend.batches)
    scheduler.stop(timeout=10)


def test_with_one_slot_a_later_request_waits_and_never_interrupts_the_running_one(
    backend: FakeBackend,
) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    first, second = Collector(), Collector()
    scheduler.submit(request([1], max_tokens=5), first)
    scheduler.submit(request([50], max_tokens=2), second)
    backend.gate.release(100)
    assert first.wait().finish_reason == "length"
    assert second.wait().finish_reason == "length"
    assert first.text == "<2><3><4><5><6>"
    assert second.text == "<51><52>"
    assert second.events[-1].queue_seconds >= 0
    scheduler.stop(timeout=10)


def test_queue_full_raises_with_retry_after(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend, max_queue=1)
    running, queued = Collector(), Collector()
    scheduler.submit(request([1], max_tokens=100), running)
    wait_until(lambda: scheduler.busy_slots == 1)  # the slot is taken, the queue empty again
    scheduler.submit(request([1]), queued)
    with pytest.raises(QueueFullError) as info:
        scheduler.submit(request([1]), Collector())
    assert info.value.status_code == 429
    assert info.value.retry_after is not None
    backend.gate.release(1000)
    scheduler.stop(timeout=10)


def test_cancelling_a_queued_request_ends_it_without_decoding(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    running, queued = Collector(), Collector()
    scheduler.submit(request([1], max_tokens=3), running)
    ticket = scheduler.submit(request([77], max_tokens=3), queued)
    scheduler.cancel(ticket)
    backend.gate.release(100)
    assert queued.wait().finish_reason == "cancelled"
    assert running.wait().finish_reason == "length"
    assert all(e.token != 77 for b in backend.batches for e in b)
    scheduler.stop(timeout=10)


def test_cancelling_a_running_request_frees_its_slot_within_one_step(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    sink = Collector()
    ticket = scheduler.submit(request([1], max_tokens=1000), sink)
    backend.gate.release(3)
    wait_until(lambda: len(sink.events) >= 2)
    scheduler.cancel(ticket)
    generated_at_cancel = len(sink.events)
    backend.gate.release(10)
    final = sink.wait()
    assert final.finish_reason == "cancelled"
    assert final.completion_tokens <= generated_at_cancel + 1
    assert scheduler.busy_slots == 0
    scheduler.stop(timeout=10)


def test_context_end_finishes_with_length() -> None:
    backend = FakeBackend(n_ctx=8)
    scheduler = run(backend)
    sink = Collector()
    scheduler.submit(request([1, 2, 3], max_tokens=100), sink)
    final = sink.wait()
    assert final.finish_reason == "length"
    assert final.prompt_tokens + final.completion_tokens <= 8
    scheduler.stop(timeout=10)


def test_decode_failure_ends_the_request_with_an_error(backend: FakeBackend) -> None:
    backend.fail = True
    scheduler = run(backend)
    sink = Collector()
    scheduler.submit(request([1]), sink)
    final = sink.wait()
    assert final.finish_reason == "error"
    assert final.error == "boom"
    assert scheduler.busy_slots == 0
    scheduler.stop(timeout=10)


def test_stop_rejects_new_work_and_cancels_the_queue(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    running, queued = Collector(), Collector()
    scheduler.submit(request([1], max_tokens=3), running)
    wait_until(lambda: scheduler.busy_slots == 1)
    scheduler.submit(request([9], max_tokens=3), queued)
    stopper = threading.Thread(target=scheduler.stop, kwargs={"timeout": 10})
    stopper.start()
    backend.gate.release(100)
    stopper.join(10)
    assert running.wait().finish_reason == "length"  # what runs is allowed to finish
    assert queued.wait().finish_reason == "cancelled"
    with pytest.raises(ShuttingDownError):
        scheduler.submit(request([1]), Collector())


def test_waiting_owners_take_turns_for_a_free_slot(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    order: list[str] = []
    scheduler.submit(request([1], max_tokens=2, owner="flood"), Collector("running", order))
    wait_until(lambda: scheduler.busy_slots == 1)
    sinks = [Collector(f"flood-{i}", order) for i in range(3)]
    for sink in sinks:
        scheduler.submit(request([1], max_tokens=1, owner="flood"), sink)
    polite = Collector("polite", order)
    scheduler.submit(request([1], max_tokens=1, owner="polite"), polite)
    backend.gate.release(1000)
    for sink in [*sinks, polite]:
        sink.wait()
    assert order[:3] == ["running", "flood-0", "polite"]
    scheduler.stop(timeout=10)


def test_priority_orders_one_owners_jobs_and_never_jumps_another_owner(
    backend: FakeBackend,
) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    order: list[str] = []
    running = Collector("running", order)
    scheduler.submit(request([1], max_tokens=2, owner="x"), running)
    wait_until(lambda: scheduler.busy_slots == 1)

    def job(name: str, owner: str, priority: int) -> Collector:
        sink = Collector(name, order)
        scheduler.submit(
            GenerationRequest(name, [5], 1, SamplingParams(), [], owner, priority=priority), sink
        )
        return sink

    sinks = [
        job("a-low", "a", 0),
        job("b-urgent", "b", 1000),
        job("a-high", "a", 9),
        job("b-low", "b", 0),
    ]
    backend.gate.release(1000)
    for sink in sinks:
        sink.wait()
    # a and b take turns (a queued first); within each, the higher priority goes first.
    assert order == ["running", "a-high", "b-urgent", "a-low", "b-low"]
    scheduler.stop(timeout=10)


def test_the_owner_holding_fewest_slots_goes_next() -> None:
    backend = FakeBackend(n_slots=4)
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    order: list[str] = []
    # One request with n = 6 takes all four slots; two of its choices wait.
    greedy = [Collector(f"greedy-{i}", order) for i in range(6)]
    scheduler.submit_all([(request([1], max_tokens=3, owner="g"), sink) for sink in greedy])
    wait_until(lambda: scheduler.busy_slots == 4)
    small = Collector("small", order)
    scheduler.submit(request([2], max_tokens=1, owner="s"), small)
    backend.gate.release(1000)
    for sink in [*greedy, small]:
        sink.wait()
    # The first free slot goes to the owner with none, ahead of the greedy request's rest.
    assert order.index("small") < order.index("greedy-4")
    scheduler.stop(timeout=10)


def test_a_request_is_queued_whole_or_not_at_all(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend, max_queue=8)
    scheduler.submit(request([1], max_tokens=2, owner="x"), Collector())
    wait_until(lambda: scheduler.busy_slots == 1)
    # An owner may hold half the queue: five jobs do not fit, and none of them is queued.
    with pytest.raises(QueueFullError):
        scheduler.submit_all([(request([1], owner="a"), Collector()) for _ in range(5)])
    assert scheduler.queued == 0
    scheduler.submit_all([(request([1], owner="a"), Collector()) for _ in range(4)])
    with pytest.raises(QueueFullError):
        scheduler.submit(request([1], owner="a"), Collector())
    scheduler.submit_all([(request([1], owner="b"), Collector()) for _ in range(4)])
    with pytest.raises(QueueFullError):  # the queue itself is full
        scheduler.submit(request([1], owner="c"), Collector())
    backend.gate.release(1000)
    scheduler.stop(timeout=10)


def test_a_request_that_waits_too_long_times_out(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend, queue_timeout=0.05)
    running, waiting = Collector(), Collector()
    scheduler.submit(request([1], max_tokens=1000), running)
    wait_until(lambda: scheduler.busy_slots == 1)
    scheduler.submit(request([2]), waiting)
    time.sleep(0.1)
    backend.gate.release(5)  # let the loop take a step and look at the queue
    final = waiting.wait()
    assert final.finish_reason == "queue_timeout"
    assert final.queue_seconds >= 0.05
    assert running.events[-1].finish_reason is None  # the running one is untouched
    backend.gate.release(2000)
    scheduler.stop(timeout=10)


def test_a_passed_deadline_frees_the_slot_at_the_next_step(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    sink = Collector()
    req = request([1], max_tokens=1000)
    req.deadline = time.monotonic() + 0.05
    scheduler.submit(req, sink)
    backend.gate.release(2)
    wait_until(lambda: len(sink.events) >= 1)
    time.sleep(0.06)
    backend.gate.release(2)
    final = sink.wait()
    assert final.finish_reason == "deadline"
    assert final.completion_tokens < 10
    wait_until(lambda: scheduler.busy_slots == 0)
    scheduler.stop(timeout=10)


def test_stop_accepting_refuses_new_work_but_keeps_the_queue(backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    running, queued = Collector(), Collector()
    scheduler.submit(request([1], max_tokens=2), running)
    scheduler.submit(request([2], max_tokens=2), queued)
    scheduler.stop_accepting()
    with pytest.raises(ShuttingDownError) as info:
        scheduler.submit(request([3]), Collector())
    assert info.value.status_code == 503
    backend.gate.release(100)
    assert running.wait().finish_reason == "length"
    assert queued.wait().finish_reason == "length"
    scheduler.stop(timeout=10)


def test_batches_list_sequences_in_slot_order() -> None:
    backend = FakeBackend(n_slots=3)
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    sinks = [Collector() for _ in range(3)]
    for i, sink in enumerate(sinks):
        scheduler.submit(request([10 * (i + 1)], max_tokens=4), sink)
    backend.gate.release(100)
    for sink in sinks:
        sink.wait()
    for batch in backend.batches:
        slots = [e.slot for e in batch]
        assert slots == sorted(slots)
    scheduler.stop(timeout=10)


def test_a_shared_prefix_is_reused_and_only_the_rest_is_prefilled() -> None:
    backend = FakeBackend(n_slots=2)
    scheduler = run(backend)
    first = Collector()
    scheduler.submit(request(list(range(100, 120)), max_tokens=2), first)
    assert first.wait().cached_tokens == 0
    backend.batches.clear()
    second = Collector()
    # The same 20 prompt tokens and 2 more: 20 are in the slot already.
    scheduler.submit(request([*range(100, 120), 7, 8], max_tokens=1), second)
    final = second.wait()
    assert final.cached_tokens == 20
    prompt_positions = sorted(e.position for b in backend.batches for e in b)
    assert prompt_positions == [20, 21]  # only the new tokens were decoded
    assert scheduler.slot_cache.stats["hits"] == 1
    assert scheduler.slot_cache.stats["tokens_saved"] == 20
    scheduler.stop(timeout=10)


def test_the_last_two_prompt_tokens_are_always_decoded() -> None:
    """For the last one's logits, and with a second so that attention takes the same kernel
    as it does for a whole prompt."""
    backend = FakeBackend(n_slots=1)
    scheduler = run(backend)
    prompt = [5, 6, 7, 8]
    for _ in range(2):
        sink = Collector()
        scheduler.submit(request(prompt, max_tokens=1), sink)
        sink.wait()
    assert sink.events[-1].cached_tokens == 2
    assert [e.position for e in backend.batches[-1]] == [2, 3]
    scheduler.stop(timeout=10)


def test_a_longer_prefix_in_a_busy_slot_is_copied_not_recomputed() -> None:
    backend = FakeBackend(n_slots=2)
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    long_prompt = list(range(1000, 1100))
    busy = Collector()
    scheduler.submit(request(long_prompt, max_tokens=50), busy)
    backend.gate.release(3)  # prefill (one chunk) and a couple of tokens
    wait_until(lambda: len(busy.events) >= 1)
    follower = Collector()
    scheduler.submit(request([*long_prompt, 1, 2, 3], max_tokens=1), follower)
    backend.gate.release(1000)
    assert follower.wait().cached_tokens == 100
    assert ("copy", 0, 1) in backend.kv_ops
    assert busy.wait().finish_reason == "length"
    scheduler.stop(timeout=10)


def test_when_truncation_is_impossible_the_prompt_is_computed_in_full() -> None:
    backend = FakeBackend(n_slots=1)
    backend.can_truncate = False  # e.g. a recurrent model, or a pruned sliding window
    scheduler = run(backend)
    for _ in range(2):
        sink = Collector()
        scheduler.submit(request([1, 2, 3, 4], max_tokens=1), sink)
        sink.wait()
    assert sink.events[-1].cached_tokens == 0
    assert sorted(e.position for e in backend.batches[-1]) == [0, 1, 2, 3]
    scheduler.stop(timeout=10)


def test_unrelated_requests_take_the_least_recently_used_slot() -> None:
    backend = FakeBackend(n_slots=2)
    scheduler = run(backend)
    for prompt in ([1, 1, 1], [2, 2, 2]):
        sink = Collector()
        scheduler.submit(request(prompt, max_tokens=1), sink)
        sink.wait()
    slots_used = {e.slot for b in backend.batches for e in b}
    assert slots_used == {0, 1}  # the second did not evict the first conversation's cache
    sink = Collector()
    scheduler.submit(request([1, 1, 1, 9, 9], max_tokens=1), sink)
    assert sink.wait().cached_tokens == 3
    scheduler.stop(timeout=10)


def test_an_overwritten_slot_is_saved_and_restored_later() -> None:
    from server.engine.state_cache import StateCache

    backend = FakeBackend(n_slots=1, n_ctx=1024)
    cache = StateCache(model_key="fake" * 16, ram_bytes=1 << 20, disk_dir=None, disk_bytes=0)
    scheduler = Scheduler(backend, name="fake", state_cache=cache)
    scheduler.start()
    conversation = list(range(1000, 1300))  # long enough to be worth saving
    other = list(range(2000, 2300))
    for prompt in (conversation, other):
        sink = Collector()
        scheduler.submit(request(prompt, max_tokens=2), sink)
        sink.wait()
    assert ("save", 0, -1) in backend.kv_ops  # the conversation was saved before being overwritten
    backend.batches.clear()
    sink = Collector()
    scheduler.submit(request([*conversation, 1], max_tokens=1), sink)
    assert sink.wait().cached_tokens == 299
    assert any(op[0] == "restore" for op in backend.kv_ops)
    assert sorted(e.position for b in backend.batches for e in b) == [299, 300]
    assert scheduler.slot_cache.stats["restores"] == 1
    scheduler.stop(timeout=10)


def test_a_tiny_state_cache_never_hands_out_an_evicted_state() -> None:
    from server.engine.state_cache import StateCache

    backend = FakeBackend(n_slots=1, n_ctx=1024)
    # Room for one saved state only: saving the slot evicts whatever else was kept.
    cache = StateCache(model_key="tiny" * 16, ram_bytes=12, disk_dir=None, disk_bytes=0)
    scheduler = Scheduler(backend, name="fake", state_cache=cache)
    scheduler.start()
    a, b = list(range(1000, 1300)), list(range(2000, 2300))
    for prompt in (a, b, a, b):
        sink = Collector()
        scheduler.submit(request(prompt, max_tokens=1), sink)
        assert sink.wait().finish_reason == "length"
    assert cache.ram_bytes <= 12
    assert cache.stats["stored"] >= 2  # states were saved, and evicted to make room
    scheduler.stop(timeout=10)


def test_choices_submitted_together_read_their_shared_prompt_once() -> None:
    backend = FakeBackend(n_slots=3, n_batch=512)
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    prompt = list(range(2000, 2100))
    sinks = [Collector() for _ in range(3)]
    for sink in sinks:
        scheduler.submit(request(prompt, max_tokens=2), sink)
    backend.gate.release(1000)
    finals = [sink.wait() for sink in sinks]
    # The 100 prompt tokens are decoded by one sequence; the others copy its cells and
    # decode only the last two prompt tokens.
    prompt_tokens_decoded = [e for b in backend.batches for e in b if e.token in prompt]
    assert len(prompt_tokens_decoded) == 100 + 2 * 2
    assert sorted(f.cached_tokens for f in finals) == [0, 98, 98]
    assert [op for op in backend.kv_ops if op[0] == "copy"] == [("copy", 0, 1), ("copy", 0, 2)]
    scheduler.stop(timeout=10)


def test_requests_waiting_on_a_shared_prompt_never_take_more_than_the_free_slots() -> None:
    backend = FakeBackend(n_slots=2, n_batch=512)
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    prompt = list(range(3000, 3100))
    sinks = [Collector() for _ in range(4)]
    for sink in sinks:
        scheduler.submit(request(prompt, max_tokens=2), sink)
    wait_until(lambda: scheduler.busy_slots == 1)
    assert scheduler.queued == 2  # one runs, one waits for its prompt, two stay queued
    backend.gate.release(1000)
    assert all(sink.wait().finish_reason == "length" for sink in sinks)
    scheduler.stop(timeout=10)


def test_logprobs_cover_exactly_the_emitted_text() -> None:
    backend = FakeBackend(n_slots=1)
    scheduler = run(backend)
    sampling = SamplingParams(logprobs=2)
    sink = Collector()
    # Tokens read "<11>", "<12>", ...; the stop string cuts inside the third token.
    scheduler.submit(GenerationRequest("r", [10], 5, sampling, ["3>"]), sink)
    final = sink.wait()
    entries = [lp for e in sink.events for lp in e.logprobs]
    assert final.finish_reason == "stop"
    assert sink.text == "<11><12><1"
    assert "".join(lp.text for lp in entries) == sink.text
    assert [lp.token for lp in entries] == [11, 12, 13]
    assert all(lp.logprob <= 0 and len(lp.top) == 2 for lp in entries)
    scheduler.stop(timeout=10)


def scoped_request(prompt: list[int], scope: str, max_tokens: int = 1) -> GenerationRequest:
    return GenerationRequest(
        "r", prompt, max_tokens, SamplingParams(), [], scope, cache_scope=scope
    )


def test_cached_prefixes_are_never_shared_across_cache_scopes() -> None:
    backend = FakeBackend(n_slots=2)
    backend.gate = threading.Semaphore(0)
    scheduler = run(backend)
    secret = list(range(3000, 3100))
    alice = Collector()
    scheduler.submit(scoped_request(secret, "alice", max_tokens=40), alice)
    backend.gate.release(2)
    wait_until(lambda: len(alice.events) >= 1)
    # bob's same prompt neither waits to copy alice's running prefill nor copies her slot.
    bob = Collector()
    scheduler.submit(scoped_request([*secret, 1], "bob"), bob)
    backend.gate.release(1000)
    assert bob.wait().cached_tokens == 0
    assert not [op for op in backend.kv_ops if op[0] == "copy"]
    alice.wait()
    # alice's own next request reuses her prefix.
    again = Collector()
    scheduler.submit(scoped_request([*secret, 2, 3], "alice"), again)
    assert again.wait().cached_tokens == 100
    scheduler.stop(timeout=10)
