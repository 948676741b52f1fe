"""A grammar is checked here, in Python, before llama.cpp parses it.

llama.cpp's GBNF parser runs on the calling thread, recursing once per nested group (a deep
enough grammar overflows the C stack and kills the process), and when it rejects a grammar it
prints the whole text to stderr. The JSON-schema converter does write grammars it rejects:
a property name with a quote in it, ``anyOf: []``, some pattern escapes. So the grammar is
first read by this small mirror of llama.cpp's parser (``llama_grammar_parser`` in
llama-grammar.cpp, the version vendored by the pinned llama-cpp-python), which refuses
anything llama.cpp would refuse, with one line saying why, and bounds what it accepts:

- its size in bytes, and no NUL (the grammar crosses into C as a NUL-terminated string);
- how deeply groups nest (llama.cpp's recursion);
- how many alternatives it has: the grammar sampler checks every candidate token against
  every open alternative on the engine thread that all requests share (a full pass cost 7 ms
  for a plain object and 139 ms for an enum of 256 strings, SmolLM2, two threads);
- llama.cpp's own limit on repetitions (2,000 rules made by one ``*``/``+``/``?``/``{m,n}``).

The mirror is iterative, so a grammar nested deeper than Python's recursion limit is refused,
not a RecursionError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_GRAMMAR_BYTES = 256 * 1024
MAX_ALTERNATIVES = 512  # `|` in the whole grammar
MAX_NESTING = 1100  # nested groups in one rule (a maxLength of 1,000 nests about 1,000)
# llama.cpp's MAX_REPETITION_THRESHOLD: more rules than this from one repetition is refused.
LLAMA_REPETITION_THRESHOLD = 2000


class GrammarRejected(ValueError):
    """A grammar llama.cpp would refuse, or one beyond the bounds above."""


_ESCAPES = {"x": 2, "u": 4, "U": 8}
_SIMPLE_ESCAPES = frozenset('trn\\"[]-')
_HEX = frozenset("0123456789abcdefABCDEF")


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (UTF-8 as it is; quotes, backslashes and control
    characters escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _is_word(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "-")


@dataclass
class _Sequence:
    """One ``parse_sequence`` in progress (a rule's body, or a group's)."""

    nested: bool
    symbols_before: int = 0  # symbols defined when the group opened
    has_item: bool = False  # is there an item a repetition could apply to?
    previous_rules: int = 1  # llama.cpp's n_prev_rules


@dataclass
class _Parser:
    text: str
    pos: int = 0
    symbols: set[str] = field(default_factory=set)
    generated: int = 0
    defined: set[str] = field(default_factory=set)
    referenced: set[str] = field(default_factory=set)
    alternatives: int = 0

    @property
    def symbol_count(self) -> int:
        return len(self.symbols) + self.generated

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def fail(self, what: str) -> GrammarRejected:
        return GrammarRejected(f"invalid grammar: {what} at byte {self.pos}")

    def space(self, newline_ok: bool) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            char = text[self.pos]
            if char == "#":
                while self.pos < n and text[self.pos] not in "\r\n":
                    self.pos += 1
            elif char in " \t" or (newline_ok and char in "\r\n"):
                self.pos += 1
            else:
                break

    def name(self) -> str:
        start = self.pos
        while _is_word(self.peek()):
            self.pos += 1
        if self.pos == start:
            raise self.fail("expecting a name")
        return self.text[start : self.pos]

    def int(self) -> int:
        start = self.pos
        while self.peek().isascii() and self.peek().isdigit():
            self.pos += 1
        if self.pos == start:
            raise self.fail("expecting an integer")
        return int(self.text[start : self.pos])

    def char(self) -> None:
        """One character of a literal or class, escapes as llama.cpp reads them."""
        char = self.peek()
        if not char:
            raise self.fail("unexpected end of input")
        if char != "\\":
            self.pos += 1
            return
        kind = self.peek(1)
        if kind in _ESCAPES:
            digits = self.text[self.pos + 2 : self.pos + 2 + _ESCAPES[kind]]
            if len(digits) != _ESCAPES[kind] or not set(digits) <= _HEX:
                raise self.fail(f"expecting {_ESCAPES[kind]} hex digits")
            self.pos += 2 + len(digits)
        elif kind in _SIMPLE_ESCAPES and kind:
            self.pos += 2
        else:
            raise self.fail("unknown escape")


def validate_gbnf(text: str, root: str = "root") -> None:
    """Raise :class:`GrammarRejected` unless llama.cpp would parse ``text`` and it is within
    the bounds above. The message is one line and never quotes the grammar."""
    if len(text.encode("utf-8", errors="replace")) > MAX_GRAMMAR_BYTES:
        raise GrammarRejected(f"the grammar is larger than {MAX_GRAMMAR_BYTES} bytes")
    if "\x00" in text:
        raise GrammarRejected("the grammar contains a NUL character")
    parser = _Parser(text)
    parser.space(newline_ok=True)
    if parser.pos == len(text):
        raise GrammarRejected("invalid grammar: it has no rules")
    while parser.pos < len(text):
        _rule(parser)
    undefined = parser.referenced - parser.defined
    if undefined:
        raise GrammarRejected(f"invalid grammar: undefined rule '{sorted(undefined)[0]}'")
    if root not in parser.defined:
        raise GrammarRejected(f"invalid grammar: no '{root}' rule")
    if parser.alternatives > MAX_ALTERNATIVES:
        raise GrammarRejected(
            f"the grammar has {parser.alternatives} alternatives; at most {MAX_ALTERNATIVES} "
            "(use fewer enum values, anyOf branches or tools)"
        )


def _rule(p: _Parser) -> None:
    name = p.name()
    p.symbols.add(name)
    p.defined.add(name)
    p.space(newline_ok=False)
    if p.text[p.pos : p.pos + 3] != "::=":
        raise p.fail("expecting ::=")
    p.pos += 3
    p.space(newline_ok=True)
    _alternates(p)
    if p.peek() == "\r":
        p.pos += 2 if p.peek(1) == "\n" else 1
    elif p.peek() == "\n":
        p.pos += 1
    elif p.peek():
        raise p.fail("expecting a newline or the end")
    p.space(newline_ok=True)


def _alternates(p: _Parser) -> None:
    """A rule's alternatives, groups included, with a stack instead of recursion."""
    stack = [_Sequence(nested=False)]
    while stack:
        sequence = stack[-1]
        opened = _sequence(p, sequence)
        if opened:  # a group: its alternatives first, then this sequence goes on
            if len(stack) > MAX_NESTING:
                raise GrammarRejected(f"the grammar nests groups deeper than {MAX_NESTING}")
            before = p.symbol_count
            p.generated += 1
            p.space(newline_ok=True)
            stack.append(_Sequence(nested=True, symbols_before=before))
            continue
        if p.peek() == "|":
            p.alternatives += 1
            p.pos += 1
            p.space(newline_ok=True)
            sequence.has_item, sequence.previous_rules = False, 1
            continue
        stack.pop()
        if not sequence.nested:
            return
        if p.peek() != ")":
            raise p.fail("expecting ')'")
        p.pos += 1
        outer = stack[-1]
        p.space(newline_ok=outer.nested)
        outer.has_item = True
        outer.previous_rules = max(1, p.symbol_count - sequence.symbols_before)


def _sequence(p: _Parser, s: _Sequence) -> bool:
    """Items of one sequence until it ends; True when it stops at an opening group."""
    while p.pos < len(p.text):
        char = p.peek()
        if char == '"':
            p.pos += 1
            while p.peek() != '"':
                p.char()
            p.pos += 1
            _item(p, s)
        elif char == "[":
            p.pos += 1
            if p.peek() == "^":
                p.pos += 1
            while p.peek() != "]":
                p.char()
                if p.peek() == "-" and p.peek(1) != "]":
                    p.pos += 1
                    p.char()
            p.pos += 1
            _item(p, s)
        elif char in "<!":
            raise p.fail("token references are not allowed")
        elif _is_word(char):
            name = p.name()
            p.symbols.add(name)
            p.referenced.add(name)
            _item(p, s)
        elif char == "(":
            p.pos += 1
            return True
        elif char == ".":
            p.pos += 1
            _item(p, s)
        elif char in "*+?":
            p.pos += 1
            p.space(newline_ok=s.nested)
            _repeat(p, s, 0 if char != "+" else 1, 1 if char == "?" else None)
        elif char == "{":
            p.pos += 1
            p.space(newline_ok=s.nested)
            if not (p.peek().isascii() and p.peek().isdigit()):
                raise p.fail("expecting an integer")
            low = p.int()
            p.space(newline_ok=s.nested)
            high: int | None
            if p.peek() == "}":
                high = low
            elif p.peek() == ",":
                p.pos += 1
                p.space(newline_ok=s.nested)
                high = p.int() if p.peek().isascii() and p.peek().isdigit() else None
                p.space(newline_ok=s.nested)
                if p.peek() != "}":
                    raise p.fail("expecting '}'")
            else:
                raise p.fail("expecting ','")
            p.pos += 1
            p.space(newline_ok=s.nested)
            if low > LLAMA_REPETITION_THRESHOLD:
                raise p.fail("too many repetitions")
            if high is not None and high > LLAMA_REPETITION_THRESHOLD:
                high = None
            _repeat(p, s, low, high)
        else:
            break
    return False


def _item(p: _Parser, s: _Sequence) -> None:
    p.space(newline_ok=s.nested)
    s.has_item, s.previous_rules = True, 1


def _repeat(p: _Parser, s: _Sequence, low: int, high: int | None) -> None:
    """llama.cpp's ``handle_repetitions``: the rules it adds, and its limit on them."""
    if not s.has_item:
        raise p.fail("a repetition with nothing before it")
    total = high if high is not None and high > 0 else (low if low > 0 else 1)
    if s.previous_rules * total > LLAMA_REPETITION_THRESHOLD:
        raise p.fail("too many rules from one repetition")
    p.generated += 1 if high is None else high - low
    s.previous_rules *= total
