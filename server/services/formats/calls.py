"""Tool calls in a learned layout (:mod:`server.services.formats.layout`): the grammar that
makes a model write them exactly as its template does, and the parser that reads them back,
whole or as they stream."""

from __future__ import annotations

import random
import re
import string
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

from server.engine.gbnf import gbnf_literal
from server.engine.grammar import FunctionSpec, call_grammar, python_spelling
from server.engine.types import Grammar
from server.services.formats import gemma_args, pythonic_args
from server.services.formats.indented_args import JsonScan
from server.services.formats.layout import (
    ARGUMENTS,
    ID,
    INDEX,
    NAME,
    TEXT_ID_LENGTH,
    CallLayout,
    Piece,
    Slot,
)
from server.services.formats.params import ParamsScan, params_rules
from server.services.tools import CallDelta, ParsedCall, partial_suffix

# A layout whose calls are numbered in their text is unrolled this many calls deep.
MAX_NUMBERED_CALLS = 8
# How much whitespace may come before a call that must open the answer (Llama's).
LEADING_SPACE = 8

Mode = Literal["auto", "required", "one"]


def layout_grammar(
    layout: CallLayout, functions: Sequence[FunctionSpec], mode: Mode, *, parallel: bool
) -> Grammar:
    """Calls to ``functions`` in ``layout``'s text. ``auto``: free text until the call's
    opener, then calls; ``required``: calls from the first token (the template's preamble
    too); ``one``: a single call to the one function given, from the first token."""
    several = parallel and layout.following is not None and mode != "one"
    lazy = mode == "auto"

    def compose(arguments: list[str]) -> str:
        def call(pieces: Sequence[Piece], index: int | None, skip: str = "") -> str:
            options = []
            for function, rule in zip(functions, arguments, strict=True):
                parts = []
                for i, piece in enumerate(pieces):
                    if isinstance(piece, str):
                        text = piece[len(skip) :] if i == 0 else piece
                        if text:
                            parts.append(gbnf_literal(text))
                    elif piece == NAME:
                        parts.append(gbnf_literal(function.name))
                    elif piece == ID:
                        parts.append(" ".join(["[a-zA-Z0-9]"] * TEXT_ID_LENGTH))
                    elif piece == INDEX:
                        parts.append(gbnf_literal(str(layout.index_base + (index or 0))))
                    else:
                        parts.append(rule)
                options.append(" ".join(parts) or '""')
            return " | ".join(f"( {o} )" for o in options)

        skip = layout.preamble if lazy else ""
        end = gbnf_literal(layout.end) if layout.end else '""'
        numbered = INDEX in layout.first
        lines = [f"call-0 ::= {call(layout.first, 0, skip)}"]
        if not several:
            lines.append(f"root ::= call-0 {end}")
        elif not numbered:
            assert layout.following is not None
            lines.append(f"call-next ::= {call(layout.following, None)}")
            lines.append(f"root ::= call-0 call-next* {end}")
        else:
            assert layout.following is not None
            nested = ""
            for k in range(MAX_NUMBERED_CALLS - 1, 0, -1):
                lines.append(f"call-{k} ::= {call(layout.following, k)}")
                nested = f"( call-{k} {nested} )?"
            lines.append(f"root ::= call-0 {nested} {end}")
        return "\n".join(lines)

    params = layout.params
    if layout.dialect == "gemma":  # its template writes keys sorted (dictsort)
        functions = [FunctionSpec(f.name, _keys_sorted(f.parameters)) for f in functions]
    return call_grammar(
        functions,
        compose,
        separators=layout.separators,
        ascii=layout.ascii,
        spell=_spelling(layout),
        triggers=(trigger_pattern(layout, functions),) if lazy else (),
        arguments=(
            pythonic_args.rules
            if layout.dialect == "pythonic"
            else layout.syntax.rules
            if layout.dialect in ("indented", "xmltree")
            else None
            if params is None
            else lambda index, schema, visit: params_rules(params, index, schema, visit)
        ),
    )


def _keys_sorted(schema: Any) -> Any:
    """``schema`` with every object's properties in sorted order (required ones still come
    first where the grammar writes them so)."""
    if isinstance(schema, list):
        return [_keys_sorted(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _keys_sorted(value) for key, value in schema.items()}
    properties = schema.get("properties")
    if isinstance(properties, dict):
        out["properties"] = {k: _keys_sorted(properties[k]) for k in sorted(properties)}
    return out


def _spelling(layout: CallLayout) -> Callable[[str], str] | None:
    """How the layout spells values other than as JSON: as Python writes them (Seed-OSS's
    object parameters), in Gemma's syntax, or None."""
    if layout.dialect == "gemma":
        return gemma_args.spelled
    if layout.params is not None and layout.params.python_objects:
        return python_spelling
    return None


def trigger_pattern(layout: CallLayout, functions: Sequence[FunctionSpec]) -> str:
    """The regular expression whose match starts a call in ``auto``: the opener's first
    marker (``<tool_call>``, ``[TOOL_CALLS]``) anywhere; an opener that looks like JSON
    (Llama's ``{"name": "``), or none at all (functionary's bare name), only at the start.

    llama.cpp matches the pattern against all the output so far, after every token, with
    std::regex, whose matcher recurses once per character a quantifier takes: a pattern
    with an unbounded one (``\\s*``, ``[\\s\\S]*``) over a long output overflows the
    stack and kills the server (a model made to write 40,000 newlines did). So no pattern has
    one: a start-anchored pattern is searched for (``^`` without ``$``), and allows at most
    a few characters of leading whitespace."""
    opener = layout.opener
    lead = rf"^\s{{0,{LEADING_SPACE}}}"
    if not opener.strip():
        names = "|".join(_regex(f.name) for f in functions)
        after = next((p for p in layout.first if isinstance(p, str) and p), "")
        return rf"{lead}({_regex(opener)}(?:{names}){_regex(after[:1])})"
    if re.match(r"\s*(\{|\[\s*[{\"\[])", opener):
        return rf"{lead}({_regex(opener.lstrip())})"
    marker = re.match(r"\s*(<[^>]*>|\[[A-Z_]+\])", opener)
    return _regex(marker.group(1) if marker else opener.strip())


def _regex(text: str) -> str:
    """``text`` as a regular expression (ECMAScript, as llama.cpp reads triggers)."""
    return "".join(
        "\\n" if ch == "\n" else ("\\" + ch if ch in r"\^$.|?*+()[]{}/" else ch) for ch in text
    )


def new_call_id(form: str) -> str:
    if form == "short":
        return "".join(random.choices(string.ascii_letters + string.digits, k=TEXT_ID_LENGTH))
    return f"call_{uuid.uuid4().hex[:24]}"


# A slot's characters, bounded one past the longest value it may hold (function names are at
# most 128 characters), so that text that only looks like a call is given up on, not held.
_NAME_CHARS = re.compile(r"[A-Za-z0-9_-]{0,129}")
_ID_CHARS = re.compile(r"[A-Za-z0-9]{0,65}")
_DIGITS = re.compile(r"[0-9]{0,7}")


class LayoutCallParser:
    """Splits a choice's output into content and the calls written in ``layout``,
    incrementally (the interface of :class:`server.services.tools.ToolCallParser`).

    A call's id and name are released once known (with the id the model wrote where the
    layout has one), then its arguments as they arrive: the arguments are a JSON object,
    scanned as it comes, so its end is known without waiting for the text after it. Text
    that may still become an opener is held back. A call that leaves the layout (an unknown
    function, text other than the layout's) is content, unchanged, as far as it got."""

    def __init__(self, layout: CallLayout, functions: Sequence[FunctionSpec]) -> None:
        self._layout = layout
        self._names = {f.name for f in functions}
        self._schemas = {f.name: f.parameters for f in functions}
        self._buffer = ""
        self._start = True  # nothing released yet: the preamble may come
        self._pieces: Sequence[Piece] | None = None  # the call being read
        self._at = 0  # its next piece
        self._raw = ""  # its text so far
        self._values: dict[str, str] = {}
        self._json: Any = JsonScan()
        self._written = ""  # arguments in a dialect, as written (read once whole)
        self._params: ParamsScan | None = None
        self._released = 0  # how much of its arguments went out
        self._head: CallDelta | None = None
        self._between = False  # after a call: another, or the end
        self.calls: list[ParsedCall] = []

    def feed(self, text: str) -> tuple[str, list[CallDelta]]:
        self._buffer += text
        content: list[str] = []
        deltas: list[CallDelta] = []
        while self._step(content, deltas, finishing=False):
            pass
        visible = "".join(content)
        if visible:
            self._start = False
        return self._visible(visible), deltas

    def finish(self, *, partial_as_content: bool = True) -> str:
        content: list[str] = []
        deltas: list[CallDelta] = []
        if not partial_as_content and (self._pieces is not None or self._opening()):
            # A call cut short (by max_tokens): its markup is no answer, its arguments not whole.
            self._pieces, self._buffer = None, ""
            return self._visible("")
        while self._step(content, deltas, finishing=True):
            pass
        if self._pieces is not None:
            raw, self._pieces = self._raw + self._buffer, None
            self._buffer = ""
            if partial_as_content:
                content.append(raw)
        content.append(self._buffer)
        self._buffer = ""
        return self._visible("".join(content))

    def _opening(self) -> bool:
        """Whether all the output so far may be the start of a call (its preamble, its
        opener, or for a layout without one, a function's name)."""
        if not self._start or not self._buffer:
            return False
        layout = self._layout
        if layout.opener.strip():
            return (layout.preamble + layout.opener).startswith(self._buffer)
        lead = self._buffer.lstrip()
        return any(name.startswith(lead) for name in self._names)

    def _visible(self, content: str) -> str:
        return "" if self.calls and not content.strip() else content

    # The state machine: each step consumes what it can and says whether to go on.
    def _step(self, content: list[str], deltas: list[CallDelta], *, finishing: bool) -> bool:
        if self._between:
            return self._after_call(content, finishing)
        if self._pieces is None:
            return self._find_opener(content, finishing)
        if self._at == len(self._pieces):
            self._close(deltas)
            return True
        piece = self._pieces[self._at]
        if isinstance(piece, str):
            if self._buffer.startswith(piece):
                self._take(len(piece))
                self._at += 1
                return True
            if piece.startswith(self._buffer) and not finishing:
                return False
            return self._abandon(content)
        return self._slot(piece, content, deltas, finishing)

    def _find_opener(self, content: list[str], finishing: bool) -> bool:
        layout = self._layout
        if self._start and layout.preamble:
            lead = layout.preamble + layout.opener
            if self._buffer.startswith(lead) and layout.opener:
                self._buffer = self._buffer[len(layout.preamble) :]
            elif lead.startswith(self._buffer) and not finishing:
                return False
        opener = layout.opener
        if not opener.strip():
            return self._bare_call(content, finishing)
        at = self._buffer.find(opener)
        if at < 0:
            keep = 0 if finishing else partial_suffix(self._buffer, opener)
            content.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            if content and "".join(content):
                self._start = False
            return False
        content.append(self._buffer[:at])
        self._buffer = self._buffer[at:]
        self._begin(layout.first, skip=len(layout.preamble))
        return True

    def _bare_call(self, content: list[str], finishing: bool) -> bool:
        """A layout whose calls open with the name itself: a call only at the start."""
        if self._start and not self.calls:
            lead = self._buffer.lstrip()
            match = _NAME_CHARS.match(lead)
            name = match.group(0) if match else ""
            if name in self._names and len(lead) > len(name):
                self._buffer = lead
                self._begin(self._layout.first, skip=0)
                return True
            if (
                (len(lead) == len(name) or not lead)
                and not finishing
                and any(n.startswith(name) for n in self._names)
            ):
                return False
        self._start = False
        content.append(self._buffer)
        self._buffer = ""
        return False

    def _begin(self, pieces: Sequence[Piece], *, skip: int) -> None:
        first = pieces[0]
        if isinstance(first, str) and skip:
            pieces = (first[skip:], *pieces[1:])
        self._pieces, self._at, self._raw = pieces, 0, ""
        self._values, self._released, self._head = {}, 0, None
        dialect = self._layout.dialect
        self._json = self._layout.syntax.Scan() if dialect is not None else JsonScan()
        self._written = ""
        params = self._layout.params
        self._params = ParamsScan(params, self._schemas) if params is not None else None
        self._start = False

    def _take(self, n: int) -> str:
        taken, self._buffer = self._buffer[:n], self._buffer[n:]
        self._raw += taken
        return taken

    def _slot(
        self, slot: Slot, content: list[str], deltas: list[CallDelta], finishing: bool
    ) -> bool:
        if slot == ARGUMENTS and self._params is not None:
            read = self._params.feed(self._buffer, finishing=finishing)
            if read is None:
                return self._abandon(content)
            self._take(read)
            if not self._params.done:
                return False
            self._values["arguments"] = self._params.arguments()
            self._release(deltas)
            self._at += 1
            return True
        if slot == ARGUMENTS and self._layout.dialect is not None:
            # Arguments in a syntax of their own go out as JSON once whole.
            syntax = self._layout.syntax
            opening = syntax.opening
            if not self._written and not self._buffer.startswith(opening):
                if opening.startswith(self._buffer) and not finishing:
                    return False
                return self._abandon(content) if self._buffer or finishing else False
            done = self._json.feed(self._buffer)
            # (A scanner may hold back the end of the text, which may begin a marker.)
            held = getattr(self._json, "held", 0)
            self._written += self._take(len(self._buffer) - held if done < 0 else done)
            if done < 0:
                return False
            if getattr(self._json, "failed", False):
                return self._abandon(content)
            try:
                schema = self._schemas.get(str(self._values.get("name")))
                self._values["arguments"] = syntax.to_json(self._written, schema)
            except ValueError:
                return self._abandon(content)
            self._release(deltas)
            self._at += 1
            return True
        if slot == ARGUMENTS:
            if not self._values.get("arguments") and not self._buffer.startswith("{"):
                return self._abandon(content) if self._buffer or finishing else False
            done = self._json.feed(self._buffer)
            taken = self._take(len(self._buffer) if done < 0 else done)
            self._values["arguments"] = self._values.get("arguments", "") + taken
            self._release(deltas)
            if done < 0:
                return False
            self._at += 1
            return True
        chars = _NAME_CHARS if slot == NAME else _ID_CHARS if slot == ID else _DIGITS
        match = chars.match(self._buffer)
        value = match.group(0) if match else ""
        if len(value) == len(self._buffer) and not finishing:
            return False  # it may go on
        if not value or (slot == NAME and value not in self._names):
            return self._abandon(content)
        self._values[slot.kind] = self._take(len(value))
        if slot == NAME and self._params is not None:
            self._params.function = value
        self._at += 1
        self._release(deltas)
        return True

    def _release(self, deltas: list[CallDelta]) -> None:
        """Send the call's head once its name (and its id, where its text has one) is
        known, then whatever of its arguments has come."""
        pieces = self._pieces or ()
        needed = [s.kind for s in (NAME, ID) if s in pieces]
        if self._head is None:
            if any(k not in self._values for k in needed):
                return
            call_id = self._values.get("id") or new_call_id(self._layout.id_form)
            self._head = CallDelta(len(self.calls), call_id, self._values["name"])
            deltas.append(self._head)
        arguments = self._values.get("arguments", "")
        if len(arguments) > self._released:
            deltas.append(CallDelta(self._head.index, arguments=arguments[self._released :]))
            self._released = len(arguments)

    def _close(self, deltas: list[CallDelta]) -> None:
        self._release(deltas)
        assert self._head is not None
        self.calls.append(
            ParsedCall(
                self._head.id or "", self._head.name or "", self._values.get("arguments", "")
            )
        )
        self._pieces = None
        self._between = True

    def _after_call(self, content: list[str], finishing: bool) -> bool:
        """After a call: the next one, or the end of the calls."""
        layout = self._layout
        following = layout.following
        nxt = following[0] if following and isinstance(following[0], str) else None
        if nxt and self._buffer.startswith(nxt):
            self._between = False
            self._begin(following, skip=0)  # type: ignore[arg-type]
            return True
        if nxt and nxt.startswith(self._buffer) and not finishing:
            return False
        end = layout.end
        if self._buffer.startswith(end):
            if not end and not self._buffer and not finishing:
                return False
            self._buffer = self._buffer[len(end) :]
        elif end.startswith(self._buffer) or (nxt and nxt.startswith(self._buffer)):
            if not finishing:
                return False
            self._buffer = ""  # the calls' closing markup, cut short: not content
        self._between = False
        self._start = False
        return True

    def _abandon(self, content: list[str]) -> bool:
        """The text is not a call after all: what was read of it is content."""
        whole = self._json.done or (self._params is not None and self._params.done)
        if self._head is not None and "arguments" in self._values and whole:
            self._close([])
            self._between = False
            return True
        content.append(self._raw)
        self._pieces = None
        self._start = False
        return True  # what follows is read again (it may hold an opener)
