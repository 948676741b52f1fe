"""The tokens a model wrote for its tool calls, so that the next turn's prompt holds them.

A turn that ends in tool calls comes back in the next request's history, rendered by the
chat template: with a learned call layout (:mod:`server.services.formats`) its text is,
byte for byte, what the model wrote. Its tokens need not be: a tokenizer splits the text its
own way (the canonical split), and a model under a grammar may have chosen another (SmolLM2
writes ``' {'`` then ``'"'`` where its tokenizer makes ``' {"'``); the text where the
generation prompt ends may also merge with what follows (``'\\n\\n'`` before ``'{'`` becomes
``'\\n'``, ``'\\n'``). Either way the prompt's tokens leave the KV cache's at that point, and
the whole call, the tool result and everything after are computed again.

So the tokens of each such answer are kept, by its text, for a while (:class:`CallTokens`);
a prompt is tokenized in pieces: the text before each remembered call as the model's earlier
prompt was (a whole, canonically), the call as the model's own tokens, the rest canonically.
The pieces are what the cache holds, and the model reads the tokens it wrote.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

# Answers remembered per model, and the longest one (in tokens) worth remembering.
CAPACITY = 512
MAX_TOKENS = 8192


class CallTokens:
    """The token ids of recent tool-call answers, by their text (least recently used go)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, text: str, ids: Sequence[int]) -> None:
        if not text or not ids or len(ids) > MAX_TOKENS:
            return
        with self._lock:
            self._entries[text] = tuple(ids)
            self._entries.move_to_end(text)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def recall(self, text: str) -> tuple[int, ...] | None:
        with self._lock:
            ids = self._entries.get(text)
            if ids is not None:
                self._entries.move_to_end(text)
            return ids


def tokenize_with(
    prompt: str,
    calls: Sequence[str],
    memory: CallTokens,
    tokenize: Callable[[str, bool], list[int]],
) -> list[int]:
    """``prompt`` as tokens, each of ``calls`` (texts of past tool-call answers, in the order
    they appear) that is remembered and found in it as the model's own tokens.
    ``tokenize(text, first)`` tokenizes a piece (``first``: the prompt's start)."""
    tokens: list[int] = []
    at = 0
    for text in calls:
        ids = memory.recall(text)
        if ids is None:
            continue
        found = prompt.find(text, at)
        if found < 0:
            continue
        tokens += tokenize(prompt[at:found], at == 0) if found > at else []
        tokens += ids
        at = found + len(text)
    if at == 0:
        return tokenize(prompt, True)
    if at < len(prompt):
        tokens += tokenize(prompt[at:], False)
    return tokens
