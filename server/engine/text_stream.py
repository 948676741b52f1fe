"""Turning token bytes into safe text: whole UTF-8 characters, stop strings never emitted.

Tokens are byte pieces: one character can span two tokens, and a stop string can span many.
:class:`TextStream` holds back exactly what might still change meaning (an incomplete UTF-8
sequence, or a tail that could be the start of a stop string) and releases the rest.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass, replace

from server.engine.types import TokenLogprob, TopLogprob


class TextStream:
    """Incremental detokenizer for one sequence.

    >>> s = TextStream(stop=["\\n\\n"])
    >>> s.push("Hi\\n".encode())
    'Hi'
    >>> s.push(b"\\nthere")
    ''
    >>> s.stopped
    True
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stop if s]
        self._held = ""
        self.stopped = False
        # The stop string that ended the text (the first in the text; the earliest listed
        # of those found at one place), once stopped.
        self.matched_stop: str | None = None
        # Characters released so far: the length of the text the client has been sent.
        self.emitted = 0

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        text = self._release(self._decoder.decode(piece, final=False))
        self.emitted += len(text)
        return text

    def finish(self) -> str:
        """End of sequence: flush whatever is held (a stop prefix that never completed)."""
        if self.stopped:
            return ""
        text = self._release(self._decoder.decode(b"", final=True))
        text += self._held
        self._held = ""
        self.emitted += len(text)
        return text

    def _release(self, new_text: str) -> str:
        text = self._held + new_text
        if not self._stops:
            self._held = ""
            return text
        found = self._first_stop(text)
        if found is not None:
            cut, self.matched_stop = found
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_stop_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        """Where the first stop string in ``text`` starts, and which it is."""
        found = [(i, stop) for stop in self._stops if (i := text.find(stop)) >= 0]
        return min(found, key=lambda pair: pair[0]) if found else None

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


@dataclass
class _Span:
    start: int
    text: str
    logprob: TokenLogprob


class TokenTexts:
    """Splits a sequence's output text among the tokens that produced it, for logprobs.

    It decodes the same bytes as the sequence's :class:`TextStream`, so character offsets
    agree: a token is released once the text stream has released all of its characters, and
    at the end the token a stop string starts in is cut to the part before it. The released
    tokens' texts therefore join to exactly the text the client receives.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decoded = 0
        self._pending: list[_Span] = []

    def add(self, token: int, piece: bytes, logprob: float, top: tuple[TopLogprob, ...]) -> None:
        text = self._decoder.decode(piece, final=False)
        self._pending.append(
            _Span(self._decoded, text, TokenLogprob(token, "", piece, logprob, top))
        )
        self._decoded += len(text)

    def release(self, emitted: int) -> tuple[TokenLogprob, ...]:
        """The tokens whose characters all lie within the first ``emitted`` characters. A token
        with no characters of its own (the start of a UTF-8 character) waits for the next."""
        done = 0
        for i, span in enumerate(self._pending):
            if span.start + len(span.text) > emitted:
                break
            if span.text:
                done = i + 1
        return self._take(done, emitted)

    def finish(self, emitted: int) -> tuple[TokenLogprob, ...]:
        """End of the sequence, whose text is ``emitted`` characters long: every token that
        contributed to it, the last one cut to its share."""
        tail = self._decoder.decode(b"", final=True)  # an unfinished character, as U+FFFD
        if tail and self._pending:
            self._pending[-1].text += tail
        done = 0
        while done < len(self._pending) and self._pending[done].start < emitted:
            done += 1
        return self._take(done, emitted)

    def _take(self, count: int, emitted: int) -> tuple[TokenLogprob, ...]:
        spans, self._pending = self._pending[:count], self._pending[count:]
        return tuple(replace(s.logprob, text=s.text[: max(0, emitted - s.start)]) for s in spans)
