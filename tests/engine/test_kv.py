"""The KV manager stepped with the fake backend: it decides (slots, copies, restores, saves)
as data, the backend sees nothing until the plan is executed, and what a placement really
achieved is what the sequence continues from."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from server.engine.jobs import JobState
from server.engine.kv import KvManager, Place, Placed, Release, SaveSlot
from server.engine.loop import EngineLoop
from server.engine.state_cache import StateCache
from server.engine.types import SamplingParams
from tests.engine.fake_backend import (
    Collector,
    FakeBackend,
    Steps,
    as_backend,
    request,
    sink_of,
)


def never_busy(slot: int) -> int | None:
    return None


@pytest.fixture
def state_cache() -> Iterator[StateCache]:
    cache = StateCache(model_key="kv" * 32, ram_bytes=1 << 20, disk_dir=None, disk_bytes=0)
    yield cache
    cache.close()


def test_placing_a_prompt_decides_and_leaves_the_backend_alone() -> None:
    backend = FakeBackend(n_slots=2)
    kv = KvManager(as_backend(backend), None)
    place = kv.place([1, 2, 3, 4], "", SamplingParams(), never_busy)
    assert place == Place(0, "none", 0, SamplingParams())
    assert kv.free_slots == 1
    assert backend.kv_ops == [] and backend.generated == {}
    assert kv.apply(kv.take_ops()) == [Placed(0, 0, "none", 0)]
    assert backend.kv_ops == [("truncate", 0, 0)]
    assert backend.generated == {0: 0}  # the sequence has its samplers
    assert kv.take_ops() == []


def test_a_released_slot_is_reused_for_its_prefix_and_released_empty_is_cleared() -> None:
    backend = FakeBackend(n_slots=2)
    kv = KvManager(as_backend(backend), None)
    first = kv.place([5, 6, 7, 8, 9], "", SamplingParams(), never_busy)
    kv.release(first.slot, [5, 6, 7, 8, 9], "")
    empty = kv.place([1, 2, 3], "", SamplingParams(), never_busy)
    kv.release(empty.slot, [], "")
    ops = kv.take_ops()
    assert ops[1] == Release(first.slot, clear=False)
    assert ops[3] == Release(empty.slot, clear=True)
    again = kv.place([5, 6, 7, 8, 9, 10, 11], "", SamplingParams(), never_busy)
    assert (again.slot, again.source, again.keep) == (first.slot, "reuse", 5)


def test_a_slot_is_saved_before_it_is_overwritten(state_cache: StateCache) -> None:
    backend = FakeBackend(n_slots=1, n_ctx=1024)
    kv = KvManager(as_backend(backend), state_cache)
    conversation = list(range(1000, 1300))
    slot = kv.place(conversation, "", SamplingParams(), never_busy).slot
    kv.release(slot, conversation, "")
    kv.apply(kv.take_ops())
    other = kv.place(list(range(2000, 2300)), "", SamplingParams(), never_busy)
    ops = kv.take_ops()
    assert ops == [SaveSlot(slot, tuple(conversation)), other]
    assert not [op for op in backend.kv_ops if op[0] == "save"]  # decided, not done
    kv.apply(ops)
    assert backend.kv_ops[-2:] == [("save", 0, -1), ("truncate", 0, 0)]
    assert state_cache.stats["stored"] == 1
    # The conversation comes back from its saved state.
    kv.release(other.slot, list(range(2000, 2300)), "")
    back = kv.place([*conversation, 1], "", SamplingParams(), never_busy)
    assert (back.source, back.keep) == ("restore", 299)


def test_a_state_gone_before_its_restore_leaves_the_slot_as_it_was(
    state_cache: StateCache,
) -> None:
    backend = FakeBackend(n_slots=1, n_ctx=2048)
    kv = KvManager(as_backend(backend), state_cache)
    conversation = list(range(1000, 1300))
    slot = kv.place(conversation, "", SamplingParams(), never_busy).slot
    kv.release(slot, conversation, "")
    kv.place(list(range(2000, 2300)), "", SamplingParams(), never_busy)
    kv.release(slot, [*range(2000, 2300)], "")
    kv.apply(kv.take_ops())  # the conversation's state is saved
    place = kv.place([*conversation, 7], "", SamplingParams(), never_busy)
    assert place.source == "restore"
    # Before the plan runs, a longer state of the same conversation replaces the saved one.
    state_cache.put([*conversation, 7, 8], state_cache.buffer_for(8, [*conversation, 7, 8]))
    (placed,) = [p for p in kv.apply(kv.take_ops()) if p.slot == slot]
    assert not placed.as_planned
    assert (placed.kept, placed.source) == (0, "none")
    assert not [op for op in backend.kv_ops if op[0] == "restore"]


def test_a_plan_carries_the_kv_operations_the_step_runs_first() -> None:
    backend = FakeBackend(n_slots=2)
    steps = Steps(backend)
    (job,) = steps.submit(request([1, 2, 3], max_tokens=1))
    plan = steps.core.schedule(steps.now)
    assert [type(op) for op in plan.kv_ops] == [Place]
    assert backend.kv_ops == [] and backend.batches == []
    result = steps.core.execute(plan)
    assert backend.kv_ops == [("truncate", 0, 0)]
    assert result.placed == (Placed(0, 0, "none", 0),)
    steps.core.update(plan, result)
    for sink, event in steps.core.take_events():
        sink(event)
    assert sink_of(job).final.finish_reason == "length"
    # Its release is the next plan's first operation.
    assert steps.core.schedule(steps.now).kv_ops == [Release(0, clear=False)]


def test_a_refused_grammar_ends_only_its_own_request() -> None:
    backend = FakeBackend(n_slots=2)
    steps = Steps(backend)
    (running,) = steps.submit(request([1, 2], max_tokens=5))
    steps.step()
    backend.refuse_begin = True
    (refused,) = steps.submit(request([3, 4, 5], max_tokens=5))
    steps.step()
    backend.refuse_begin = False
    final = sink_of(refused).final
    assert (final.finish_reason, final.error) == ("error", "llama.cpp could not parse the grammar")
    # Its prompt never reached a batch; the running request's token did, in that same step.
    assert [e.slot for e in backend.batches[-1]] == [running.slot]
    steps.run(sink_of(running))
    assert sink_of(running).text == "<3><4><5><6><7>"
    assert steps.stats.running == 0 and steps.core.has_work is False


def test_a_short_placement_reads_its_prompt_from_where_its_kv_ends() -> None:
    backend = FakeBackend(n_slots=1)
    steps = Steps(backend)
    (first,) = steps.submit(request([1, 2, 3, 4, 5, 6], max_tokens=1))
    steps.run(sink_of(first))
    backend.can_truncate = False
    (again,) = steps.submit(request([1, 2, 3, 4, 5, 6, 7, 8], max_tokens=1))
    decoded = len(backend.batches)
    steps.step()
    # Planned to keep 6 tokens, it kept none: nothing of it was decoded in that step.
    assert len(backend.batches) == decoded
    assert again.state is JobState.PREFILLING and again.prefilled == 0
    steps.run(sink_of(again))
    positions = sorted(e.position for e in backend.batches[-1])
    assert positions == list(range(8))  # the whole prompt, next step, from position 0
    assert sink_of(again).final.cached_tokens == 0
    assert steps.stats.cache["misses"] == 2


class BlockingRestore(FakeBackend):
    """A restore that waits to be let go: a state read from a slow disk."""

    def __init__(self) -> None:
        super().__init__(n_slots=1, n_ctx=1024, n_batch=512)
        self.restoring = threading.Event()
        self.let_go = threading.Event()

    def restore_state(self, slot: int, state: memoryview) -> bool:
        self.restoring.set()
        assert self.let_go.wait(10)
        return super().restore_state(slot, state)


def test_a_slow_restore_does_not_hold_up_submitting(state_cache: StateCache) -> None:
    backend = BlockingRestore()
    driver = EngineLoop(as_backend(backend), name="fake", state_cache=state_cache)
    driver.start()
    try:
        conversation = list(range(1000, 1300))
        for prompt in (conversation, list(range(2000, 2300))):
            sink = Collector()
            driver.submit(request(prompt, max_tokens=1), sink)
            assert sink.done.wait(10)
        restored = Collector()
        driver.submit(request([*conversation, 1], max_tokens=1), restored)
        assert backend.restoring.wait(10)
        # The engine thread is inside the restore: the asyncio side's calls still go through.
        queued = Collector()
        submitter = threading.Thread(
            target=lambda: driver.submit(request([5, 6], max_tokens=1), queued)
        )
        submitter.start()
        submitter.join(5)
        assert not submitter.is_alive(), "submit waited for the restore"
        assert driver.stats().queued == 1
        backend.let_go.set()
        assert restored.done.wait(10) and queued.done.wait(10)
        assert restored.final.cached_tokens == 299
    finally:
        backend.let_go.set()
        assert driver.stop(timeout=10)
