"""Prompt-lookup drafts: tokens a sequence is likely to write next, found in what it has read
and written already, for speculative decoding without a second model.

Much local work copies from its input (editing code, quoting a document, rewriting): when the
last few tokens of the output also occur earlier in the prompt or the output, the tokens that
followed them there are a good guess for what follows now. The scheduler decodes the guesses
in the same batch as the sequence's next token, and keeps exactly those the model would have
chosen itself (see ``Scheduler``), so the output is unchanged; a wrong guess costs only
the batch room it took.

:class:`NgramIndex` finds the guesses; :class:`DraftPolicy` decides how many to make, from how
many were kept lately, so that writing that copies nothing stops paying for guesses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LookupSettings:
    """``max_draft``: the most tokens guessed at once; ``ngram``: how many of the last tokens
    must match (a shorter match is tried down to ``min_ngram``)."""

    enabled: bool = True
    max_draft: int = 8
    ngram: int = 3
    min_ngram: int = 2


class NgramIndex:
    """Where each short run of tokens last occurred in a sequence's history (prompt and
    output), with at least one token after it."""

    def __init__(self, history: Sequence[int], sizes: Sequence[int]) -> None:
        self._history: list[int] = list(history)
        self._sizes = tuple(sorted(set(sizes), reverse=True))
        self._last: dict[tuple[int, ...], int] = {}
        for end in range(1, len(self._history)):
            self._index_before(end)

    def __len__(self) -> int:
        return len(self._history)

    def append(self, token: int) -> None:
        self._history.append(token)
        self._index_before(len(self._history) - 1)

    def _index_before(self, end: int) -> None:
        """Record the runs that end just before ``end`` (their next token is known now)."""
        history = self._history
        for n in self._sizes:
            if end >= n:
                self._last[tuple(history[end - n : end])] = end - n

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the history's
        last tokens (the longest run size that occurs); empty when none does."""
        history = self._history
        for n in self._sizes:
            if len(history) < n:
                continue
            start = self._last.get(tuple(history[-n:]))
            if start is not None:
                follow = start + n
                return history[follow : follow + limit]
        return []


class DraftPolicy:
    """How many tokens one sequence guesses, from how its recent guesses went.

    A guessed token costs part of a decode step whether it is kept or not (on two CPU cores,
    about 0.6 of one: bench/RESULTS.md), so guessing pays only while most guesses are kept.
    The policy keeps a moving average of the share kept; while it is under
    ``min_acceptance`` the sequence stops guessing for a while (longer each time, so writing
    that copies nothing costs almost nothing), then tries again. The draft length doubles
    after a guess kept whole, up to ``max_draft``, and halves after one kept less than half.
    """

    FIRST_PAUSE = 8
    LONGEST_PAUSE = 256
    # Weight of the latest guess in the moving average of the share kept.
    SMOOTHING = 0.3

    def __init__(self, max_draft: int, min_acceptance: float = 0.6) -> None:
        self.max_draft = max_draft
        self.min_acceptance = min_acceptance
        self.length = min(4, max_draft)
        self.acceptance = 1.0  # optimistic: the first guesses are made
        self._pause = 0
        self._next_pause = self.FIRST_PAUSE
        self.drafted = 0
        self.accepted = 0

    def allowance(self) -> int:
        """How many tokens to guess this step (0: not now)."""
        if self.max_draft <= 0:
            return 0
        if self._pause > 0:
            self._pause -= 1
            return 0
        return self.length

    def record(self, drafted: int, accepted: int) -> None:
        """A guess of ``drafted`` tokens, of which the first ``accepted`` were kept."""
        if drafted <= 0:
            return
        self.drafted += drafted
        self.accepted += accepted
        share = accepted / drafted
        self.acceptance += self.SMOOTHING * (share - self.acceptance)
        if accepted == drafted:
            self.length = min(self.max_draft, self.length * 2)
        elif accepted * 2 < drafted:
            self.length = max(1, self.length // 2)
        if self.acceptance < self.min_acceptance:
            self._pause = self._next_pause
            self._next_pause = min(self.LONGEST_PAUSE, self._next_pause * 2)
            # After the pause, one guess decides: kept, guessing goes on; not, a longer pause.
            self.acceptance = self.min_acceptance
        elif share >= self.min_acceptance:
            self._next_pause = self.FIRST_PAUSE
