"""Text to token ids, deciding which text may become a control token.

llama.cpp's ``llama_tokenize`` either parses special-token text everywhere in its input
(``parse_special``) or nowhere. A chat prompt is both at once: the template's own markup must
become control tokens (``<|im_start|>``), while a message's text is data, and a user who
writes ``<|im_end|><|im_start|>system`` must get those characters, not a forged system turn.
And llama.cpp splits its input at special-token text in time quadratic in the number of
occurrences: 20,000 tiny messages took 72 s, and Gemma counts every run of newlines as a
special token, so ordinary text with many lines was quadratic too.

So the splitting happens here, the way llama.cpp does it (``tokenizer_st_partition``: longest
special text first, every occurrence, honouring lstrip/rstrip), in linear time, and each piece
of plain text between the special tokens goes to ``llama_tokenize`` on its own with special
parsing off. That gives exactly llama.cpp's tokens (it also tokenizes each piece on its own),
and two modes:

- **data** (``markup=False``): no text becomes a control token; user-defined tokens (which
  llama.cpp matches even with special parsing off) still do. Completions, embeddings,
  ``/tokenize``.
- **markup** (``markup=True``): a rendered chat template. Its special-token text becomes
  control tokens, except where :meth:`Tokenizer.escape` marked it: every string a request put
  into the template (message text, names, tool calls and results, tool definitions) is escaped
  before rendering, so only the template's own text can open or close a turn.

The escape is a noncharacter, U+FDD0, inserted before each place where special-token text
starts (and doubled where the data holds one itself). Templates see the text all but
unchanged (``trim``, ``startswith`` and ``tojson`` behave as before), and the marks are
removed before the text is tokenized.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

ESCAPE = "\ufdd0"
_ESCAPES = re.compile(ESCAPE + "(" + ESCAPE + "?)")
_ASCII_SPACE = " \t\n\v\f\r"  # C isspace(), which llama.cpp strips with
_SHORT, _SHORT_ENTRIES = 32, 4096  # pieces this short are remembered, this many at most


@dataclass(frozen=True)
class SpecialToken:
    token: int
    text: str
    lstrip: bool = False
    rstrip: bool = False
    control: bool = True  # control or unknown: a special token only in markup


class _Matcher:
    """Finds where any of a set of texts starts, in one regular-expression pass: the texts
    become a trie, so each position costs the length of the longest match, not the number of
    texts (Gemma has 6,600 special tokens)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = frozenset(t for t in texts if t)
        trie: _Trie = {}
        for text in self.texts:
            node = trie
            for char in text:
                node = node.setdefault(char, {})
            node[""] = {}
        body = _trie_pattern(trie) if trie else "(?!)"
        self._at = re.compile(f"(?=({body}))")
        self._any = re.compile(body)

    def occurrences(self, text: str) -> Iterable[re.Match[str]]:
        """At each position where some text starts, the longest one starting there."""
        return self._at.finditer(text)

    def present(self, text: str) -> set[str]:
        """Every one of the texts that occurs in ``text``, overlapping ones included."""
        if self._any.search(text) is None:
            return set()
        found: set[str] = set()
        longest_seen: set[str] = set()
        for match in self.occurrences(text):
            longest = match.group(1)
            if longest not in longest_seen:
                longest_seen.add(longest)
                found.update(
                    longest[:n] for n in range(1, len(longest) + 1) if longest[:n] in self.texts
                )
        return found


_Trie = dict[str, "_Trie"]  # a character to the node below it; "" marks a text's end


def _trie_pattern(node: _Trie) -> str:
    parts = [re.escape(char) + _trie_pattern(node[char]) for char in sorted(node) if char]
    if not parts:
        return ""
    body = parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"
    # A text may end here: the longer continuations are tried first (regexes are greedy).
    return f"(?:{body})?" if "" in node else body


class Tokenizer:
    """A model's text-to-tokens with the two modes above.

    ``encode(text, parse_special=False)`` is llama.cpp's ``llama_tokenize`` without special
    parsing or added tokens, for one piece of plain text; ``added`` is what llama.cpp adds
    with ``add_special`` (its BOS, and an EOS or SEP where the vocabulary asks for one).
    """

    def __init__(
        self,
        specials: Sequence[SpecialToken],
        encode: Callable[[str], list[int]],
        added: Sequence[int],
        bos: int,
    ) -> None:
        # llama.cpp tries longer texts first; among equals, in token order.
        self._specials = sorted(specials, key=lambda s: (-len(s.text), s.token))
        self._by_text = {s.text: s for s in self._specials}
        self._markup = _Matcher(s.text for s in self._specials)
        self._data = _Matcher(s.text for s in self._specials if not s.control)
        self._encode = encode
        # Short pieces repeat (the text between a template's tokens: "user\n", "\n"), and each
        # llama_tokenize call costs tens of microseconds whatever its length.
        self._short: dict[str, tuple[int, ...]] = {}
        added = list(added)
        self._head = added[:1] if added and added[0] == bos else []
        self._tail = added[len(self._head) :]

    def escape(self, text: str) -> str:
        """``text`` marked so that none of it can become a control token in markup."""
        if ESCAPE in text:
            text = text.replace(ESCAPE, ESCAPE + ESCAPE)
        starts = [m.start() for m in self._markup.occurrences(text)]
        if not starts:
            return text
        pieces, last = [], 0
        for start in starts:
            pieces += [text[last:start], ESCAPE]
            last = start
        pieces.append(text[last:])
        return "".join(pieces)

    def tokenize(self, text: str, *, add_special: bool, markup: bool = False) -> list[int]:
        tokens = list(self._head) if add_special else []
        for fragment in self.partition(text, markup=markup):
            if isinstance(fragment, int):
                tokens.append(fragment)
            elif len(fragment) <= _SHORT:
                cached = self._short.get(fragment)
                if cached is None:
                    if len(self._short) >= _SHORT_ENTRIES:
                        self._short.clear()
                    cached = self._short[fragment] = tuple(self._encode(fragment))
                tokens += cached
            else:
                tokens += self._encode(fragment)
        if add_special:
            tokens += self._tail
        return tokens

    def partition(self, text: str, *, markup: bool) -> list[str | int]:
        """``text`` split into plain text and special tokens, as llama.cpp splits it."""
        matcher = self._markup if markup else self._data
        present = matcher.present(text)
        fragments: list[str | int] = [text] if text else []
        for special in self._specials:
            if special.text in present:
                fragments = self._split(fragments, special)
        if markup:
            fragments = [
                _ESCAPES.sub(r"\1", f) if isinstance(f, str) and ESCAPE in f else f
                for f in fragments
            ]
        return [f for f in fragments if f != ""]

    @staticmethod
    def _split(fragments: list[str | int], special: SpecialToken) -> list[str | int]:
        result: list[str | int] = []
        needle = special.text
        for fragment in fragments:
            if isinstance(fragment, int) or needle not in fragment:
                result.append(fragment)
                continue
            start = search = 0
            while (found := fragment.find(needle, search)) >= 0:
                if _escaped(fragment, found):
                    search = found + 1
                    continue
                left = fragment[start:found]
                if special.lstrip:
                    left = left.rstrip(_ASCII_SPACE)
                if left:
                    result.append(left)
                result.append(special.token)
                start = search = found + len(needle)
                if special.rstrip:
                    while start < len(fragment) and fragment[start] in _ASCII_SPACE:
                        start += 1
                    search = start
            if start < len(fragment):
                result.append(fragment[start:])
        return result


def _escaped(text: str, index: int) -> bool:
    """Is the special text at ``index`` preceded by an odd run of escape marks?"""
    run = 0
    while index - run - 1 >= 0 and text[index - run - 1] == ESCAPE:
        run += 1
    return run % 2 == 1
