"""Turning token bytes into safe text: whole UTF-8 characters, stop strings never emitted.

Tokens are byte pieces: one character can span two tokens, and a stop string can span many.
:class:`TextStream` holds back exactly what might still change meaning (an incomplete UTF-8
sequence, or a tail that could be the start of a stop string) and releases the rest.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


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

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        return self._release(self._decoder.decode(piece, final=False))

    def finish(self) -> str:
        """End of sequence: flush whatever is held (a stop prefix that never completed)."""
        if self.stopped:
            return ""
        text = self._release(self._decoder.decode(b"", final=True))
        text += self._held
        self._held = ""
        return text

    def _release(self, new_text: str) -> str:
        text = self._held + new_text
        if not self._stops:
            self._held = ""
            return text
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_stop_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def _first_stop(self, text: str) -> int | None:
        positions = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(positions) if positions else None

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
