"""The KV manager: one owner for every KV cell of a model.

It knows what each slot holds (:class:`server.engine.slots.SlotTable`, a prefix tree over
the slots), which slots are free, which states are saved (the :class:`StateCache`), and when
a slot is worth saving. The scheduler asks it for a slot (:meth:`KvManager.place`) and hands
slots back (:meth:`KvManager.release`); both only decide, and queue what the backend must do
as data: :class:`SaveSlot`, :class:`Place` and :class:`Release`, taken into the step's plan
with :meth:`KvManager.take_ops`. :meth:`KvManager.apply` carries them out on the engine
thread, outside the scheduler's lock, and reports what each placement really achieved (a
refused restore, a cache that cannot be cut): the scheduler then reads those prompts from
where their KV really ends.

Which slot a prompt gets:

1. the free slot sharing the longest prefix with the prompt;
2. if another slot, busy or idle, shares a clearly longer prefix, that slot's cells are
   copied into the free one (``llama_memory_seq_cp``) rather than recomputed;
3. if a saved state shares a clearly longer prefix than either, it is restored;
4. with nothing shared, the free slot used least recently, so that warm caches live longest.

When a slot is saved (the save policy):

- before it is overwritten, when at least :data:`MIN_SAVED_TOKENS` of what it holds would be
  lost;
- once the engine has been idle :data:`IDLE_SAVE_DELAY`, one slot at a time (not at once: the
  next turn of a conversation often follows immediately and reuses the slot as it is; one at
  a time: a new request waits for one save at most);
- every idle slot at shutdown, so that a restart finds them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from server.engine.backend import Backend
from server.engine.prefix import scope_length, scoped
from server.engine.slots import MIN_COPY_GAIN, SlotTable
from server.engine.state_cache import StateCache
from server.engine.types import SamplingParams

# Shorter sequences are cheap to recompute and not worth a saved state. (Saving every short
# chat cost a throughput benchmark of unique prompts 10%: copies and disk writes for nothing.)
MIN_SAVED_TOKENS = 256
# Idle this long before saving slot states in the background.
IDLE_SAVE_DELAY = 0.25
# How long an idle engine sleeps at most, so that queue deadlines are noticed.
IDLE_WAKE = 1.0

# The KV reuse counters, booked as placements are carried out.
KV_COUNTERS = ("hits", "misses", "tokens_saved", "copies", "restores")

KvSource = Literal["reuse", "copy", "restore", "none"]


@dataclass(frozen=True)
class SaveSlot:
    """Save what ``slot`` holds (``key``: its tokens, scoped) into the state cache, before
    the slot is given to another prompt."""

    slot: int
    key: tuple[int, ...]


@dataclass(frozen=True)
class Place:
    """Give ``slot`` to a new sequence: its first ``keep`` prompt tokens' KV comes from what
    the slot holds (``reuse``), another slot's cells (``copy``), a saved state (``restore``),
    or nowhere (``none``: the whole prompt is computed); then it gets fresh samplers."""

    slot: int
    source: KvSource
    keep: int
    sampling: SamplingParams
    # The slot to copy from: for ``copy``, and for a ``restore`` that fails, with
    # ``fallback_keep`` tokens kept then (copied, or what the slot held).
    copy_from: int | None = None
    fallback_keep: int = 0
    state_entry: int | None = None  # for ``restore``: the state cache's entry


@dataclass(frozen=True)
class Release:
    """``slot``'s sequence ended: free its samplers; its cells stay for a later prompt to
    reuse, unless it holds nothing worth keeping (``clear``)."""

    slot: int
    clear: bool


KvOp = SaveSlot | Place | Release


@dataclass(frozen=True)
class Placed:
    """What a :class:`Place` achieved: the prompt tokens whose KV ``slot`` now holds, where
    they came from, and the error that kept the sequence from starting (a grammar llama.cpp
    refuses), if any."""

    slot: int
    kept: int
    source: KvSource
    planned: int
    error: str | None = None

    @property
    def as_planned(self) -> bool:
        return self.error is None and self.kept == self.planned


class KvManager:
    """Slots, their prefix index, saved states and the save policy of one model.

    The deciding half (:meth:`place`, :meth:`release`, :meth:`book`) runs under the
    scheduler's lock; the doing half (:meth:`apply`, :meth:`drop_tail`, :meth:`when_idle`,
    :meth:`close`) on the engine thread without it. Only the engine thread calls either."""

    def __init__(self, backend: Backend, cache: StateCache | None) -> None:
        self._backend = backend
        self.cache = cache
        self._table = SlotTable(backend.n_slots, backend.min_recomputed)
        self._free = list(range(backend.n_slots))
        self._ops: list[KvOp] = []
        self.counters: Counter[str] = Counter(dict.fromkeys(KV_COUNTERS, 0))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    # -- deciding (under the scheduler's lock) --------------------------------------------

    def place(
        self,
        prompt: Sequence[int],
        scope: str,
        sampling: SamplingParams,
        computed: Callable[[int], int | None],
    ) -> Place:
        """Take a free slot for ``prompt`` and plan where its prefix's KV comes from.
        ``computed(slot)`` is how many tokens a busy slot has computed so far (None for a
        free slot): a busy slot may still be reading its prompt."""

        def valid_length(slot: int) -> int:
            done = computed(slot)
            return len(self._table.holds(slot)) if done is None else done

        assigned = self._table.assign(prompt, self._free, valid_length, scope=scope)
        slot, reuse = assigned.slot, assigned.reuse
        if self._worth_saving(slot) and len(self._table.holds(slot)) - reuse >= MIN_SAVED_TOKENS:
            self._ops.append(SaveSlot(slot, tuple(self._key(slot))))
        entry = self._saved_state_for(prompt, scope, better_than=reuse)
        if entry is not None:
            keep, entry_id = entry
            place = Place(
                slot,
                "restore",
                keep,
                sampling,
                copy_from=assigned.copy_from,
                fallback_keep=reuse,
                state_entry=entry_id,
            )
        elif assigned.copy_from is not None:
            place = Place(
                slot, "copy", reuse, sampling, copy_from=assigned.copy_from, fallback_keep=reuse
            )
        else:
            place = Place(slot, "reuse" if reuse else "none", reuse, sampling)
        self._free.remove(slot)
        self._table.record(slot, prompt, scope)
        self._ops.append(place)
        return place

    def release(self, slot: int, held: Sequence[int], scope: str) -> None:
        """``slot``'s sequence ended holding ``held`` (its computed tokens)."""
        self._table.record(slot, held, scope)
        self._free.append(slot)
        self._ops.append(Release(slot, clear=not held))

    def take_ops(self) -> list[KvOp]:
        """The operations decided since the last call, in order, for :meth:`apply`."""
        ops, self._ops = self._ops, []
        return ops

    def book(self, placed: Sequence[Placed]) -> None:
        """Count what the placements achieved."""
        for outcome in placed:
            if outcome.source == "restore":
                self.counters["restores"] += 1
            elif outcome.source == "copy":
                self.counters["copies"] += 1
            self.counters["hits" if outcome.kept else "misses"] += 1
            self.counters["tokens_saved"] += outcome.kept

    # -- doing (engine thread, outside the lock) ------------------------------------------

    def apply(self, ops: Sequence[KvOp]) -> list[Placed]:
        """Carry out ``ops`` in order on the backend; what each :class:`Place` achieved."""
        placed: list[Placed] = []
        for op in ops:
            if isinstance(op, SaveSlot):
                self._save(op.slot, op.key)
            elif isinstance(op, Release):
                self._backend.end(op.slot)
                if op.clear:
                    self._backend.clear(op.slot)
            else:
                placed.append(self._carry_out(op))
        return placed

    def drop_tail(self, slot: int, keep: int) -> bool:
        """Drop ``slot``'s positions from ``keep`` on (rejected guesses)."""
        return self._backend.drop_tail(slot, keep)

    def when_idle(self, idle_for: float) -> float:
        """Save one free slot if the engine has been idle long enough. Returns how long the
        engine may sleep before the next call: 0 after a save (there may be more).

        Also brings the cache up to date with its folder (states other servers saved or
        removed), which otherwise happens only when a request looks something up."""
        if self.cache is not None:
            self.cache.refresh()
        unsaved = [slot for slot in self._free if self._worth_saving(slot)]
        if not unsaved:
            return IDLE_WAKE
        if idle_for < IDLE_SAVE_DELAY:
            return IDLE_SAVE_DELAY - idle_for
        self._save_free(unsaved[0])
        return 0.0

    def close(self) -> None:
        """At shutdown, once nothing runs: save every free slot, finish the disk writes."""
        if self.cache is not None:
            for slot in self._free:
                if self._worth_saving(slot):
                    self._save_free(slot)
            self.cache.close()

    # -- internals ----------------------------------------------------------------------------

    def _key(self, slot: int) -> list[int]:
        return scoped(self._table.scope_of(slot), self._table.holds(slot))

    def _worth_saving(self, slot: int) -> bool:
        return (
            self.cache is not None
            and not self._table.is_saved(slot)
            and len(self._table.holds(slot)) >= MIN_SAVED_TOKENS
        )

    def _save_free(self, slot: int) -> None:
        self._save(slot, self._key(slot))
        self._table.mark_saved(slot)

    def _save(self, slot: int, key: Sequence[int]) -> None:
        cache = self.cache
        assert cache is not None, "a save is only planned with a state cache"
        state = self._backend.save_state(slot, lambda size: cache.buffer_for(size, key))
        cache.put(key, state)

    def _saved_state_for(
        self, prompt: Sequence[int], scope: str, *, better_than: int
    ) -> tuple[int, int] | None:
        """A saved state of ``scope`` sharing a clearly longer prefix than the slots do: how
        many of its tokens the prompt can use, and its entry."""
        if self.cache is None:
            return None
        depth, entry = self.cache.longest_match(scoped(scope, prompt))
        usable = min(depth - scope_length(scope), len(prompt) - self._table.min_recomputed)
        if entry is None or usable < better_than + MIN_COPY_GAIN:
            return None
        # A server sharing the state folder may run a longer context: its longer states
        # would not fit a slot here.
        if len(self.cache.tokens_of(entry)) - scope_length(scope) > self._backend.n_ctx:
            return None
        return usable, entry

    def _carry_out(self, op: Place) -> Placed:
        slot, source, keep = op.slot, op.source, op.keep
        if source == "restore":
            assert self.cache is not None and op.state_entry is not None
            # Read now, after this step's saves: making room for them may have evicted it.
            state = self.cache.get(op.state_entry)
            if state is None or not self._backend.restore_state(slot, state):
                # Unread, the slot holds what it did; refused, llama.cpp left it empty.
                source = "copy" if op.copy_from is not None else "reuse"
                keep = op.fallback_keep if state is None or op.copy_from is not None else 0
        if source == "copy":
            assert op.copy_from is not None
            self._backend.copy_sequence(op.copy_from, slot)
            keep = op.fallback_keep
        kept = keep if self._backend.truncate(slot, keep) else 0
        if source == "reuse" and not kept:
            source = "none"
        try:
            self._backend.begin(slot, op.sampling)
        except RuntimeError as exc:  # e.g. a grammar llama.cpp refuses
            return Placed(slot, kept, source, op.keep, error=str(exc))
        return Placed(slot, kept, source, op.keep)
