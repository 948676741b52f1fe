"""A chat template's own tool-call text, learned by rendering calls through it.

Every model family writes calls its own way (``<tool_call>`` JSON, ``[TOOL_CALLS]``, Kimi's
section tokens, Harmony's ``to=functions.x``...), and its chat template writes the calls of
past turns that same way. So the exact text of a call is in the template: render a
conversation whose assistant turn holds one call (a sentinel name, id and arguments), one
whose turn holds two, and one whose turn is plain text, and the differences are the call
format, down to the last newline. :func:`learn_layout` turns them into a :class:`CallLayout`
of literal text and slots (the name, the id, the call's index, the arguments) and checks it:
the layout must predict, byte for byte, what the template renders for other calls (nested
arguments, unicode, several calls) or it is not used.

A model made to write exactly that text (the grammar in :mod:`server.services.formats.calls`)
writes what the next turn's prompt will hold, so an agent's history is reused from the KV
cache instead of being read again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from server.errors import ChatTemplateError
from server.services.formats import gemma_args, pythonic_args
from server.services.formats.indented_args import Indented
from server.services.formats.params import ParamStyle, learn_params
from server.services.formats.xml_tree_args import XmlTree
from server.services.templates import ChatTemplate, message_to_template_dict

SlotKind = Literal["name", "id", "index", "arguments"]
Dialect = Literal["gemma", "pythonic", "indented", "xmltree"]


@dataclass(frozen=True)
class Slot:
    """Where a call's own value goes in its text."""

    kind: SlotKind


Piece = str | Slot
NAME, ID, INDEX, ARGUMENTS = Slot("name"), Slot("id"), Slot("index"), Slot("arguments")

# The form of the ids a template writes into the call text itself (Mistral's [CALL_ID],
# Solar's): the model writes one, as Mistral's models are trained to.
TEXT_ID_LENGTH = 9


@dataclass(frozen=True)
class CallLayout:
    """The text of an assistant turn's tool calls, after the generation prompt.

    ``first`` runs from the start of the turn through the first call's last slot (its
    arguments, or its id where that follows them); ``following`` from there through the
    next call's last slot, or None when the template writes at most one call per turn;
    ``end`` follows the last call, up to where the model's end-of-turn token goes.
    ``preamble`` is the start of ``first`` that is not the call itself (whitespace, the
    empty thinking block a template writes before calls): a model calling a tool of its
    own accord (``tool_choice`` auto) begins at ``opener``, the literal text after it.
    ``index_base``: what the first call's ``index`` slot reads (0 or 1). ``separators``:
    how the template's ``tojson`` writes the arguments."""

    first: tuple[Piece, ...]
    following: tuple[Piece, ...] | None
    end: str
    preamble: str
    separators: tuple[str, str]
    index_base: int = 0
    # The form of the ids Hearth gives calls whose id is not in their text: "call" (OpenAI's
    # call_ + 24 hex) or "short" (9 letters and digits, which Mistral's templates insist on).
    id_form: Literal["call", "short"] = "call"
    # Arguments written parameter by parameter (XML-like), or None: as a JSON object.
    params: ParamStyle | None = None
    # JSON arguments with every character past ASCII escaped (``tojson(ensure_ascii=True)``).
    ascii: bool = False
    # Arguments in a syntax of their own, not compact JSON: "gemma" (:mod:`.gemma_args`),
    # "pythonic" (LFM2's ``(city='Paris')``: :mod:`.pythonic_args`), "indented" (JSON over
    # several lines, Command R+'s: :mod:`.indented_args`), "xmltree" (MiniMax-M3's XML
    # elements: :mod:`.xml_tree_args`), or None. ``form``: the last two's settings.
    dialect: Dialect | None = None
    form: Indented | XmlTree | None = None

    @property
    def syntax(self) -> Any:
        """The dialect's writer, scanner and reader (None for JSON or parameters)."""
        if self.form is not None:
            return self.form
        return DIALECTS[self.dialect] if self.dialect is not None else None

    def arguments_text(self, arguments: str) -> str:
        """A call's arguments (JSON text) as this layout writes them."""
        if self.params is None and self.dialect is None:
            return arguments
        value = json.loads(arguments)
        value = value if isinstance(value, dict) else {}
        if self.params is None:
            written: str = self.syntax.write(value)
            return written
        return self.params.text(value)

    @property
    def opener(self) -> str:
        """The literal text a call begins with, after the preamble (up to its first slot)."""
        head = self.first[0] if self.first and isinstance(self.first[0], str) else ""
        return head[len(self.preamble) :]

    @property
    def parallel(self) -> bool:
        return self.following is not None

    def text(self, calls: Sequence[tuple[str, str, str]]) -> str:
        """The text of ``calls`` ((name, id, arguments as JSON text)) in this layout."""
        out: list[str] = []
        for i, (name, call_id, arguments) in enumerate(calls):
            pieces = self.first if i == 0 else self.following
            assert pieces is not None
            values = {
                "name": name,
                "id": call_id,
                "index": str(i + self.index_base),
                "arguments": self.arguments_text(arguments),
            }
            out += [p if isinstance(p, str) else values[p.kind] for p in pieces]
        out.append(self.end)
        return "".join(out)


# The argument syntaxes that are not JSON, by name: each writes, scans and reads its own.
DIALECTS: dict[str, Any] = {"gemma": gemma_args, "pythonic": pythonic_args}

# Sentinels: words no template writes of its own.
_NAMES = ("hearthfnone", "hearthfntwo")
_IDS = ("hearthid1", "hearthid2")  # nine letters and digits: Mistral's templates check
_ARGUMENTS: tuple[dict[str, Any], ...] = (
    {"hearthka": "hearthva", "hearthkb": 7},
    {"hearthkc": "hearthvc"},
)
_CONTENT = "hearthcontent"
# Calls the learned layout must predict: nested values, unicode, quotes, a newline.
_CHECKS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("check_one", {"q": 'Zürich "old town"\n', "n": [1, 2.5, {"a": None}], "b": True}),
    ("check-two", {}),
)
_OPENAI_ID = "call_0123456789abcdef01234567"
# Where the shared start of two renderings may end, when they differ after it: the end of
# a marker or a line, not inside one.
_BOUNDARY = set(">]}\n")
# An empty thinking block (and whitespace) a template writes before a turn's calls.
_PREAMBLE = re.compile(
    r"\s*(?:(?:<think>|<seed:think>|\[THINK\]|<\|START_THINKING\|>)?\s*"
    r"(?:</think>|</seed:think>|\[/THINK\]|</mm:think>|<\|END_THINKING\|>)\s*)?"
)

Render = Callable[[list[dict[str, Any]], bool], str]


def learn_layout(
    template: ChatTemplate, *, end_of_turn: Callable[[str], str] = lambda text: ""
) -> CallLayout | None:
    """The template's call layout, or None where it knows no tools, renders calls in a form
    other than JSON arguments, or renders them in a way the layout cannot predict.

    ``end_of_turn(text)`` is the tail of ``text`` made of the model's end-of-generation
    tokens (``<|call|>`` for gpt-oss, ``<|eom_id|>`` for Llama): the model ends its turn with
    those tokens, so they are not part of the text it is made to write."""
    if not template.knows_calls:
        return None
    tools = [_tool(name) for name in (*_NAMES, *(n for n, _ in _CHECKS))]

    def render(messages: list[dict[str, Any]], generation: bool) -> str:
        return template.render(messages, add_generation_prompt=generation, tools=tools)

    try:
        # A conversation goes on after calls with their results, and some templates write a
        # turn's calls otherwise when results follow (Qwen3 drops the empty thinking block):
        # learn from such conversations, or, where a template refuses a result after a plain
        # answer, from turns that end the conversation.
        # Where results hide how a template writes a second call (Kimi numbers results by
        # the calls before them), the layout from turns that end the conversation is kept.
        learned = []
        for results in (True, False):
            try:
                learned.append(_learn(render, end_of_turn, results))
            except ChatTemplateError:
                learned.append(None)
        followed, alone = learned
        if followed is None or (alone is not None and alone.parallel and not followed.parallel):
            return alone
        return followed
    except ChatTemplateError:
        return None


def _learn(render: Render, end_of_turn: Callable[[str], str], results: bool) -> CallLayout | None:
    id_form: Literal["call", "short"] = "call"
    if not _accepts_id(render, _OPENAI_ID):
        if not _accepts_id(render, "a1b2c3d4e"):
            return None
        id_form = "short"
    prompt = render([_user()], True)
    one = _calls_text(render, 1, results)
    start = _shared_start(prompt, one)
    ends: dict[tuple[tuple[str, str], ...], str] = {}
    # How the template ends a plain answer's turn (its end-of-sentence marker): a template
    # that ends a turn of calls the same way and then writes on (R1's distills write a new
    # assistant header) has the model stop at the marker; what follows is the template's.
    turn_end = render(_conversation(False, content=_CONTENT), False).rpartition(_CONTENT)[2]
    marker = turn_end.strip()

    def region_of(text: str, calls: Sequence[tuple[str, str, Any]]) -> str:
        """The turn's own text in ``text`` (a rendering of ``calls``): after the generation
        prompt, before what the template writes after any answer (its end of turn, the
        results), less the model's end-of-generation tokens."""
        answered = tuple((name, call_id) for name, call_id, _ in calls)
        if answered not in ends:
            plain = render(_conversation(results, content=_CONTENT, answered=answered), False)
            ends[answered] = plain[plain.rindex(_CONTENT) + len(_CONTENT) :]
        region = text[start : len(text) - _shared_end(text, ends[answered])]
        if marker and marker in region:
            head, found, after = region.rpartition(marker)
            # (GigaChat ends a turn with the marker and writes its calls in a turn after it.)
            if after.strip() and not any(name in after for name, _, _ in calls):
                region = head + found
        tail = end_of_turn(region)
        return region[: len(region) - len(tail)]

    region = region_of(one, _sentinels(1))
    params: ParamStyle | None = None
    dialect: Dialect | None = None
    form = _indented(region) or _xml_tree(region)
    if region.count(json.dumps(_ARGUMENTS[0])) == 1:
        separators = (", ", ": ")
    elif region.count(json.dumps(_ARGUMENTS[0], separators=(",", ":"))) == 1:
        separators = (",", ":")
    elif region.count(gemma_args.write(_ARGUMENTS[0])) == 1:
        separators, dialect = gemma_args.SEPARATORS, "gemma"
    elif region.count(pythonic_args.write(_ARGUMENTS[0])) == 1:
        separators, dialect = (", ", ": "), "pythonic"
    elif form is not None:
        separators, dialect = (", ", ": "), "indented" if isinstance(form, Indented) else "xmltree"
    else:  # written parameter by parameter, or in a form no layout describes
        separators = (", ", ": ")

        def call_region(arguments: dict[str, Any]) -> str | None:
            calls = [(_NAMES[0], _IDS[0], arguments)]
            try:
                return region_of(render(_conversation(results, calls=calls), False), calls)
            except ChatTemplateError:
                return None

        params = learn_params(call_region)
        if params is None:
            return None
    write = (
        _writer(separators, params)
        if dialect is None
        else form.write
        if form is not None and dialect in ("indented", "xmltree")
        else DIALECTS[dialect].write
    )
    pieces = _pieces(region, 0, write)
    if pieces is None or NAME not in pieces:
        return None
    # The first call runs through its last slot (Mistral Nemo writes the id after the
    # arguments); what follows it is literal text.
    last = max(i for i, p in enumerate(pieces) if isinstance(p, Slot))
    first, end_text = pieces[: last + 1], "".join(str(p) for p in pieces[last + 1 :])
    preamble = ""
    if isinstance(first[0], str):
        preamble = _PREAMBLE.match(first[0]).group(0)  # type: ignore[union-attr]
    candidates = []
    several = _several(render, region_of, first, end_text, write, results)
    if several is not None:
        numbered_first, following, base = several
        candidates.append(
            CallLayout(
                numbered_first, following, end_text, preamble, separators, base, id_form, params
            )
        )
    candidates.append(
        CallLayout(tuple(first), None, end_text, preamble, separators, 0, id_form, params)
    )
    for layout in candidates:
        # The sentinels are ASCII: whether the template escapes the rest shows in the checks.
        for ascii in (False, True) if params is None and dialect is None else (False,):
            layout = replace(layout, ascii=ascii, dialect=dialect)
            if dialect in ("indented", "xmltree"):
                layout = replace(layout, form=form)
            if _predicts(render, layout, region_of, results):
                return layout
    return None


Region = Callable[[str, Sequence[tuple[str, str, Any]]], str]


def _indented(region: str) -> Indented | None:
    """The indented JSON form the sentinel arguments are written in, if any: ``tojson`` with
    an indent of 2 or 4, the lines after the first indented further (``|indent(n)``)."""
    for step in (2, 4):
        for base in range(0, 17):
            form = Indented(step, base)
            if region.count(form.write(_ARGUMENTS[0])) == 1:
                return form
    return None


def _xml_tree(region: str) -> XmlTree | None:
    """The XML tree the sentinel arguments are written as, if any: each element's tags
    preceded by a marker of the template's own (MiniMax-M3's ``]<]minimax[>[``)."""
    value = _ARGUMENTS[0]["hearthka"]
    at = region.find(value)
    end = region.find("</hearthka>", at)
    if at < 0 or end < 0:
        return None
    form = XmlTree(region[at + len(value) : end])
    if not form.marker or "\n" in form.marker or region.count(form.write(_ARGUMENTS[0])) != 1:
        return None
    return form


def _several(
    render: Render,
    region_of: Region,
    first: list[Piece],
    end: str,
    write: Callable[[Any], str],
    results: bool,
) -> tuple[tuple[Piece, ...], tuple[Piece, ...], int] | None:
    """How a turn holds several calls: the first call's pieces (with its index slot, where
    calls are numbered), the pieces from one call through the next, and the first index; None
    where the template refuses a second call (Llama 3.x) or drops it."""
    try:
        two = _calls_text(render, 2, results)
        region = region_of(two, _sentinels(2))
    except ChatTemplateError:
        return None
    one_text = "".join(_fill(first, 0, write))
    if not region.startswith(one_text) or not region.endswith(end):
        return None
    middle = region[len(one_text) : len(region) - len(end)]
    pieces = _pieces(middle, 1, write)
    if pieces is None or not isinstance(pieces[-1], Slot) or NAME not in pieces:
        return None
    # The call's index, where the template writes one: a digit run that reads 0 (or 1) in
    # the first call and one more in the second, next to the call's name.
    for base in (0, 1):
        marked_first = _mark_index(first, base)
        marked_next = _mark_index(pieces, base + 1)
        if INDEX in marked_first and INDEX in marked_next:
            return tuple(marked_first), tuple(marked_next), base
    return tuple(first), tuple(pieces), 0


def _mark_index(pieces: Sequence[Piece], value: int) -> list[Piece]:
    """``pieces`` with the digit run ``value`` in the literal text next to the name (just
    before it, or just after it up to the arguments) made an index slot."""
    out: list[Piece] = list(pieces)
    digits = str(value)
    at = out.index(NAME) if NAME in out else -1
    if at < 0:
        return out
    # After the name: "functions.x:0<|tool_call_argument_begin|>", ' index="1"'.
    if at + 1 < len(out) and isinstance(out[at + 1], str):
        text = out[at + 1]
        assert isinstance(text, str)
        match = re.search(rf"(?<![0-9]){digits}(?![0-9])", text)
        if match:
            out[at + 1 : at + 2] = [text[: match.start()], INDEX, text[match.end() :]]
            return out
    # Before the name: '{"tool_call_id": "0", "tool_name": "'.
    if at >= 1 and isinstance(out[at - 1], str):
        text = out[at - 1]
        assert isinstance(text, str)
        matches = list(re.finditer(rf"(?<![0-9]){digits}(?![0-9])", text))
        if matches:
            match = matches[-1]
            out[at - 1 : at] = [text[: match.start()], INDEX, text[match.end() :]]
    return out


def _writer(separators: tuple[str, str], params: ParamStyle | None) -> Callable[[Any], str]:
    """How the template writes a call's arguments (a dict)."""
    if params is not None:
        return params.text
    return lambda arguments: _dumps(arguments, separators)


def _pieces(text: str, i: int, write: Callable[[Any], str]) -> list[Piece] | None:
    """``text`` (holding sentinel call ``i``) as literal text and slots."""
    marks = {
        _NAMES[i]: NAME,
        _IDS[i]: ID,
        write(_ARGUMENTS[i]): ARGUMENTS,
    }
    pattern = re.compile("|".join(re.escape(m) for m in marks))
    pieces: list[Piece] = []
    at = 0
    for match in pattern.finditer(text):
        if match.start() > at:
            pieces.append(text[at : match.start()])
        pieces.append(marks[match.group(0)])
        at = match.end()
    if at < len(text):
        pieces.append(text[at:])
    if pieces.count(ARGUMENTS) != 1 or any(s in text for s in (*_NAMES, *_IDS) if s not in marks):
        return None
    return pieces


def _fill(pieces: Sequence[Piece], i: int, write: Callable[[Any], str]) -> list[str]:
    values = {
        "name": _NAMES[i],
        "id": _IDS[i],
        "arguments": write(_ARGUMENTS[i]),
    }
    return [p if isinstance(p, str) else values.get(p.kind, "") for p in pieces]


def _predicts(render: Render, layout: CallLayout, region_of: Region, results: bool) -> bool:
    """Whether ``layout`` writes exactly what the template renders for other calls."""
    # One call of each check alone (the second takes no arguments), then both together.
    batches = [_CHECKS[:1], _CHECKS[1:], *([_CHECKS] if layout.parallel else [])]
    for batch in batches:
        calls = [(name, _IDS[i], arguments) for i, (name, arguments) in enumerate(batch)]
        try:
            region = region_of(render(_conversation(results, calls=calls), False), calls)
        except ChatTemplateError:
            return False
        expected = layout.text(
            [
                (name, call_id, _dumps(arguments, layout.separators, ascii=layout.ascii))
                for name, call_id, arguments in calls
            ]
        )
        if region != expected:
            return False
    return True


def _dumps(value: Any, separators: tuple[str, str], *, ascii: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ascii, separators=separators)


def _sentinels(count: int) -> list[tuple[str, str, Any]]:
    return [(_NAMES[i], _IDS[i], _ARGUMENTS[i]) for i in range(count)]


def _calls_text(render: Render, count: int, results: bool) -> str:
    return render(_conversation(results, calls=_sentinels(count)), False)


def _conversation(
    results: bool,
    *,
    content: str | None = None,
    calls: Sequence[tuple[str, str, Any]] = (),
    answered: Sequence[tuple[str, str]] = (),
) -> list[dict[str, Any]]:
    """A question, an answer (``content`` or ``calls``), and with ``results`` a tool result
    after it for each call (or each of ``answered``, after a plain answer)."""
    messages = [_user(), _assistant(content=content, calls=calls)]
    if results:
        answered = [(name, call_id) for name, call_id, _ in calls] or list(answered)
        messages += [
            message_to_template_dict(
                "tool", "hearthresult", {"tool_call_id": call_id, "name": name}
            )
            for name, call_id in answered
        ]
    return messages


def _accepts_id(render: Render, call_id: str) -> bool:
    """Whether the template takes ids of this form in a call and its result."""
    try:
        render(
            [
                _user(),
                _assistant(calls=[(_NAMES[0], call_id, _ARGUMENTS[0])]),
                message_to_template_dict(
                    "tool", "result", {"tool_call_id": call_id, "name": _NAMES[0]}
                ),
            ],
            True,
        )
    except ChatTemplateError:
        return False
    return True


def _shared_start(prompt: str, turn: str) -> int:
    """Where the assistant turn's own text begins in ``turn``: after the generation prompt,
    or, where the history drops part of the prompt (a thinking block the prompt opened),
    after the last marker or line the two share."""
    n = 0
    limit = min(len(prompt), len(turn))
    while n < limit and prompt[n] == turn[n]:
        n += 1
    if n == len(prompt):
        return n
    while n > 0 and turn[n - 1] not in _BOUNDARY:
        n -= 1
    # Where the history writes the prompt's end later than the prompt did (Command R+ moves
    # its instructions to the end of the conversation, before its assistant header): the
    # turn's text starts after that header.
    for k in range(min(len(turn) - n, 256), 0, -1):
        if turn[n + k - 1] in _BOUNDARY and prompt.endswith(turn[n : n + k]):
            return n + k
    return n


def _shared_end(turn: str, turn_end: str) -> int:
    """How much of ``turn``'s end is the template's end of an assistant turn."""
    n = 0
    limit = min(len(turn), len(turn_end))
    while n < limit and turn[-1 - n] == turn_end[-1 - n]:
        n += 1
    while n > 0 and turn[-1 - n] not in _BOUNDARY:  # not inside a marker
        n -= 1
    return n


def _tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": "A tool.",
            "parameters": {"type": "object", "properties": {}},
        },
    }


def _user() -> dict[str, Any]:
    return message_to_template_dict("user", "question", {})


def _assistant(
    *, content: str | None = None, calls: Sequence[tuple[str, str, Any]] = ()
) -> dict[str, Any]:
    tool_calls = [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for name, call_id, arguments in calls
    ]
    return message_to_template_dict("assistant", content, {"tool_calls": tool_calls or None})
