"""What each slot's KV cells hold, indexed by token prefix: the table the KV manager
(:mod:`server.engine.kv`) chooses slots from.

A slot keeps its KV cells after its sequence ends, so the next turn of a conversation, or
another question about the same document, finds its prefix already computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from server.engine.prefix import PrefixTree, scope_length, scoped

# A copy moves a whole KV stream; below this many extra tokens, recomputing is as cheap.
MIN_COPY_GAIN = 32
# Prompt tokens always computed, even when all are cached: the last one's logits are needed.
# With flash attention off, llama.cpp computes attention for a lone query with another kernel
# than for several, whose rounding differs (0.84 in a logit, measured): with two, a reused
# prompt prefix gave the same logits as reading the whole prompt at once (exactly, on the CPUs
# measured; a reused answer's tokens, decoded one at a time, only close ones). With it on, two
# matched no better than one (AMD EPYC, AVX-512: both exact on short prompts, both ~0.5 off
# past 70 tokens), so there the second token would be a prefill step bought for nothing: a
# quarter of a fully cached 1-token request's time. The backend says which
# (``min_recomputed``).
MIN_RECOMPUTED = 2


@dataclass(frozen=True)
class Assignment:
    slot: int
    reuse: int  # prompt tokens whose KV is kept (after a copy, if any)
    copy_from: int | None = None


class SlotTable:
    """What each slot holds, indexed by token prefix within its cache scope (see
    :func:`server.engine.prefix.scoped`: a slot is only reused or copied for a prompt of the
    same scope). Owned by the KV manager, on the engine thread."""

    def __init__(self, n_slots: int, min_recomputed: int = MIN_RECOMPUTED) -> None:
        self.min_recomputed = min_recomputed
        self._tokens: list[list[int]] = [[] for _ in range(n_slots)]
        self._scopes = [""] * n_slots
        self._saved = [True] * n_slots  # is what the slot holds already in the state cache?
        self._last_used = [0.0] * n_slots
        self._index: PrefixTree[int] = PrefixTree()

    def holds(self, slot: int) -> list[int]:
        return self._tokens[slot]

    def scope_of(self, slot: int) -> str:
        return self._scopes[slot]

    def assign(
        self,
        prompt: Sequence[int],
        free_slots: Sequence[int],
        valid_length: Callable[[int], int],
        *,
        scope: str = "",
    ) -> Assignment:
        """Pick a slot for ``prompt``. ``valid_length(slot)`` is how many of a slot's indexed
        tokens have their KV computed now (a busy slot may still be reading its prompt)."""
        limit = len(prompt) - self.min_recomputed
        key, offset = scoped(scope, prompt), scope_length(scope)
        free = set(free_slots)
        depth, slot = self._index.longest_match(key, accept=lambda s: s in free)
        depth -= offset
        if slot is None or depth <= 0:
            slot = min(free_slots, key=lambda s: (self._last_used[s], s))
            depth = 0
        reuse = max(0, min(depth, limit, valid_length(slot)))
        other_depth, other = self._index.longest_match(key, accept=lambda s: s != slot)
        if other is not None:
            usable = max(0, min(other_depth - offset, limit, valid_length(other)))
            if usable >= reuse + MIN_COPY_GAIN:
                return Assignment(slot, usable, copy_from=other)
        return Assignment(slot, reuse)

    def record(self, slot: int, tokens: Sequence[int], scope: str = "") -> None:
        """``slot`` now holds (or is about to hold) ``tokens``, computed within ``scope``."""
        self._index.remove(scoped(self._scopes[slot], self._tokens[slot]), slot)
        self._tokens[slot] = list(tokens)
        self._scopes[slot] = scope
        self._saved[slot] = False
        if tokens:
            self._index.insert(scoped(scope, tokens), slot)
        self._last_used[slot] = time.monotonic()

    def is_saved(self, slot: int) -> bool:
        return self._saved[slot]

    def mark_saved(self, slot: int) -> None:
        self._saved[slot] = True
