"""The contract between the scheduler and a model: the backend protocol and its types."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from server.engine.types import SamplingParams, TopLogprob


@dataclass(frozen=True)
class BatchEntry:
    """One token of one sequence in a decode step."""

    slot: int
    token: int
    position: int
    want_logits: bool


class Backend(Protocol):
    """What the scheduler needs from a model; :class:`server.engine.llama.LlamaBackend` is the real
    one, and the scheduler tests use a deterministic fake."""

    n_ctx: int
    n_slots: int
    n_batch: int
    # Prompt tokens computed even when all are cached (server/engine/slots.py, MIN_RECOMPUTED).
    min_recomputed: int

    def begin(self, slot: int, sampling: SamplingParams) -> None: ...
    def end(self, slot: int) -> None: ...
    def clear(self, slot: int) -> None: ...
    def truncate(self, slot: int, keep: int) -> bool: ...
    def drop_tail(self, slot: int, keep: int) -> bool: ...
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
