"""When slots' KV states are saved to the state cache (see :class:`SavePolicy`)."""

from __future__ import annotations

from collections.abc import Sequence

from server.engine.backend import Backend
from server.engine.prefix import scope_length, scoped
from server.engine.slots import MIN_COPY_GAIN, MIN_RECOMPUTED, SlotCache
from server.engine.state_cache import StateCache

# Shorter sequences are cheap to recompute and not worth a saved state. (Saving every short
# chat cost a throughput benchmark of unique prompts 10%: copies and disk writes for nothing.)
MIN_SAVED_TOKENS = 256
# Idle this long before saving slot states in the background.
IDLE_SAVE_DELAY = 0.25
# How long an idle engine sleeps at most, so that queue deadlines are noticed.
IDLE_WAKE = 1.0


class SavePolicy:
    """Which slots' KV states go to the state cache, and when:

    - before a slot is overwritten, when at least :data:`MIN_SAVED_TOKENS` of what it holds
      would be lost;
    - once the engine has been idle :data:`IDLE_SAVE_DELAY`, one slot at a time (not at once:
      the next turn of a conversation often follows immediately and reuses the slot as it is;
      one at a time: a new request waits for one save at most);
    - every idle slot at shutdown, so that a restart finds them.
    """

    def __init__(self, cache: StateCache | None, slots: SlotCache, backend: Backend) -> None:
        self.cache = cache
        self._slots = slots
        self._backend = backend

    def worth_saving(self, slot: int) -> bool:
        held = self._slots.holds(slot)
        return (
            self.cache is not None
            and not self._slots.is_saved(slot)
            and len(held) >= MIN_SAVED_TOKENS
        )

    def save(self, slot: int) -> bool:
        """Put what ``slot`` holds into the state cache, unless it is there or too short."""
        cache = self.cache
        if cache is None or not self.worth_saving(slot):
            return False
        key = scoped(self._slots.scope_of(slot), self._slots.holds(slot))
        state = self._backend.save_state(slot, lambda size: cache.buffer_for(size, key))
        cache.put(key, state)
        self._slots.mark_saved(slot)
        return True

    def before_overwrite(self, slot: int, keep: int) -> None:
        """``slot`` is about to keep only its first ``keep`` tokens."""
        if len(self._slots.holds(slot)) - keep >= MIN_SAVED_TOKENS:
            self.save(slot)

    def saved_state_for(
        self, prompt: Sequence[int], scope: str, *, better_than: int
    ) -> tuple[int, memoryview] | None:
        """A saved state of ``scope`` sharing a clearly longer prefix than the slots do, and
        how many of its tokens the prompt can use."""
        if self.cache is None:
            return None
        depth, entry = self.cache.longest_match(scoped(scope, prompt))
        usable = min(depth - scope_length(scope), len(prompt) - MIN_RECOMPUTED)
        if entry is None or usable < better_than + MIN_COPY_GAIN:
            return None
        # A server sharing the state folder may run a longer context: its longer states
        # would not fit a slot here.
        if len(self.cache.tokens_of(entry)) - scope_length(scope) > self._backend.n_ctx:
            return None
        state = self.cache.get(entry)
        return None if state is None else (usable, state)

    def when_idle(self, free_slots: Sequence[int], idle_for: float) -> float:
        """Save one idle slot if the engine has been idle long enough. Returns how long the
        engine may sleep before the next call: 0 after a save (there may be more).

        Also brings the cache up to date with its folder (states other servers saved or
        removed), which otherwise happens only when a request looks something up."""
        if self.cache is not None:
            self.cache.refresh()
        unsaved = [slot for slot in free_slots if self.worth_saving(slot)]
        if not unsaved:
            return IDLE_WAKE
        if idle_for < IDLE_SAVE_DELAY:
            return IDLE_SAVE_DELAY - idle_for
        self.save(unsaved[0])
        return 0.0

    def close(self, free_slots: Sequence[int]) -> None:
        """Save every idle slot and finish the cache's disk writes."""
        if self.cache is not None:
            for slot in free_slots:
                self.save(slot)
            self.cache.close()
