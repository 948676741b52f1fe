"""Arguments written parameter by parameter (Qwen3-Coder's ``<parameter=city>\\nParis\\n
</parameter>``, GLM's ``<arg_key>``/``<arg_value>``, MiniMax's and DeepSeek's ``<parameter
name="city" ...>``): how a template writes them, learned by rendering, the grammar of one
function's parameters in that form, and their reading back into JSON arguments.

Each parameter is ``pre`` + its name + ``mid`` + its value + ``post``, where ``mid`` may depend
on the value's kind (DeepSeek's ``string="true"``, Kimi K3's ``type="number"``). A string is
written raw; numbers as JSON; booleans and null as JSON or as Python writes them (``True``,
``None``: Qwen3-Coder); objects and arrays as JSON.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.engine.gbnf import gbnf_literal

Kind = str  # "string", "integer", "number", "boolean", "null", "object", "array"
KINDS: tuple[Kind, ...] = ("string", "integer", "number", "boolean", "null", "object", "array")

# The sentinel values each kind is learned from, under sentinel names.
_SAMPLES: dict[Kind, Any] = {
    "integer": 73519,
    "number": 2.5,
    "boolean": True,
    "null": None,
    "object": {"hearthkx": 1},
    "array": [1, "hearthvx"],
}


@dataclass(frozen=True)
class ParamStyle:
    pre: str
    post: str
    mids: tuple[tuple[Kind, str], ...]
    python: bool  # booleans and null as Python writes them
    empty: str = ""  # what the template writes for a call without parameters
    # Objects and arrays as Python writes them ({'a': [1, True, None]}: Seed-OSS), not JSON.
    python_objects: bool = False
    # A string holding any of ``wrap[2]`` is written between ``wrap[0]`` and ``wrap[1]``
    # (MiniCPM5's <![CDATA[...]]> for text with <, & or a newline); None: always raw.
    wrap: tuple[str, str, str] | None = None

    def string_text(self, value: str) -> str:
        if self.wrap is not None and any(c in value for c in self.wrap[2]):
            return f"{self.wrap[0]}{value}{self.wrap[1]}"
        return value

    def mid(self, kind: Kind) -> str:
        return dict(self.mids)[kind]

    def value_text(self, value: Any) -> tuple[Kind, str]:
        """A value's kind and how the template writes it."""
        kind = kind_of(value)
        if kind == "string":
            return kind, self.string_text(str(value))
        if self.python and kind in ("boolean", "null"):
            return kind, str(value)
        if self.python_objects and kind in ("object", "array"):
            return kind, repr(value)
        return kind, json.dumps(value, ensure_ascii=False)

    def text(self, arguments: Mapping[str, Any]) -> str:
        """``arguments`` as the template writes them."""
        if not arguments:
            return self.empty
        out = []
        for key, value in arguments.items():
            kind, written = self.value_text(value)
            out.append(f"{self.pre}{key}{self.mid(kind)}{written}{self.post}")
        return "".join(out)

    def to_json(self, kind: Kind, written: str) -> str:
        """A value as JSON text, from how it was written."""
        if kind == "string":
            wrap = self.wrap
            if wrap is not None and written.startswith(wrap[0]) and written.endswith(wrap[1]):
                written = written[len(wrap[0]) : len(written) - len(wrap[1])]
            return json.dumps(written, ensure_ascii=False)
        if self.python_objects and kind in ("object", "array"):
            return _python_to_json(written)
        if self.python:
            written = {"True": "true", "False": "false", "None": "null"}.get(written, written)
        return written


def kind_of(value: Any) -> Kind:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"


def learn_params(region: Callable[[dict[str, Any]], str | None]) -> ParamStyle | None:
    """The template's parameter style; ``region(arguments)`` is the text of a turn holding one
    call with those arguments (None if the template refuses it)."""
    two = region({"hearthka": "hearthva", "hearthkb": "hearthvb"})
    if two is None:
        return None
    spots = [two.find(s) for s in ("hearthka", "hearthva", "hearthkb", "hearthvb")]
    if min(spots) < 0 or spots != sorted(spots):
        return None
    ka, va, kb, vb = spots
    mid = two[ka + 8 : va]
    if two[kb + 8 : vb] != mid:
        return None
    before, glue, after = two[:ka], two[va + 8 : kb], two[vb + 8 :]
    n = 0
    while n < min(len(before), len(glue)) and before[-1 - n] == glue[-1 - n]:
        n += 1
    pre, post = glue[len(glue) - n :], glue[: len(glue) - n]
    if not pre or not post or not after.startswith(post):
        return None
    tail = after[len(post) :]
    pre, post, tail, empty = _rotated(region({}), two[: ka - len(pre)], pre, post, tail)
    samples = {f"hearthk{kind[:3]}": value for kind, value in _SAMPLES.items()}
    kinds = region(samples)
    if kinds is None or not kinds.endswith(post + tail):
        return None
    mids: dict[Kind, str] = {"string": mid}
    python: bool | None = None
    python_objects: bool | None = None
    keys = list(samples)
    for i, key in enumerate(keys):
        at = kinds.find(pre + key)
        end = (
            kinds.find(pre + keys[i + 1]) - len(post)
            if i + 1 < len(keys)
            else len(kinds) - len(post + tail)
        )
        if at < 0 or end < at or kinds[end : end + len(post)] != post:
            return None
        segment = kinds[at + len(pre) + len(key) : end]
        value = samples[key]
        kind = kind_of(value)
        forms = [json.dumps(value, ensure_ascii=False)]
        if kind in ("boolean", "null", "object", "array"):
            forms.append(repr(value))
        written = next((f for f in forms if segment.endswith(f)), None)
        if written is None:
            return None  # an XML tree for objects: not (yet) supported
        if kind in ("boolean", "null"):
            is_python = written == repr(value)
            if python is not None and python != is_python:
                return None
            python = is_python
        if kind in ("object", "array"):
            is_python = written == repr(value)
            if python_objects is not None and python_objects != is_python:
                return None
            python_objects = is_python
        mids[kind] = segment[: len(segment) - len(written)]
    wrap = _wrapping(region, mid, post)
    if wrap is False:
        return None
    return ParamStyle(
        pre,
        post,
        tuple((k, mids[k]) for k in KINDS),
        bool(python),
        empty,
        bool(python_objects),
        wrap if isinstance(wrap, tuple) else None,
    )


# Characters a template may wrap a string for (CDATA for XML's <, & and line breaks).
_WRAP_PROBES = "<>&\n\"'"


def _wrapping(
    region: Callable[[dict[str, Any]], str | None], mid: str, post: str
) -> tuple[str, str, str] | bool | None:
    """How the template wraps a string holding certain characters: (opening, closing, those
    characters), None when it writes every string raw, False when it does something else
    (or wraps around text that could hold the parameter's end marker)."""
    found: tuple[str, str] | None = None
    triggers = ""
    for ch in _WRAP_PROBES:
        value = f"hearthvq{ch}hearthvz"
        text = region({"hearthka": value})
        if text is None:
            return False
        start = text.find("hearthka" + mid)
        end = text.rfind(post)
        if start < 0 or end < 0:
            return False
        written = text[start + len("hearthka" + mid) : end]
        if written == value:
            continue
        at = written.find(value)
        if at < 0:
            return False
        wrap = (written[:at], written[at + len(value) :])
        if not wrap[0] or not wrap[1] or (found is not None and wrap != found):
            return False
        found, triggers = wrap, triggers + ch
    if found is None:
        return None
    # A raw string may not hold a trigger; it must then be unable to hold the end marker.
    if post.strip()[:1] not in triggers:
        return False
    return found[0], found[1], triggers


def _python_to_json(written: str) -> str:
    """An object or array Python wrote (``{'a': [1, True, None]}``) as JSON text; text that
    is no such value stays a string."""
    try:
        value = ast.literal_eval(written)
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return json.dumps(written, ensure_ascii=False)


def _rotated(
    none: str | None, head: str, pre: str, post: str, tail: str
) -> tuple[str, str, str, str]:
    """Where the parameters begin and end, and what the template writes for none at all.

    Two parameters render as ``head pre k1 mid v1 post pre k2 mid v2 post tail``, and the
    split between ``post`` and ``pre`` is not fixed by them: the start of ``pre`` may as well
    end ``post`` (DeepSeek V4's ``>\n`` closes the name's tag and each parameter's line).
    ``none`` (the rendering without parameters) fixes it: DeepSeek V4 writes an empty line
    where a call has none, ``head + "\n" + tail`` once ``>\n`` ends the head. The split
    chosen is the one that says least for no parameters (the longest ``pre`` on a tie)."""
    best = (pre, post, tail, "")
    if none is None:
        return best
    found: tuple[int, int] | None = None
    for r in range(len(pre)):
        if not tail.startswith(pre[:r]):
            break
        start, end = head + pre[:r], tail[r:]
        if none.startswith(start) and none.endswith(end) and len(none) >= len(start + end):
            written = len(none) - len(start) - len(end)
            if found is None or written < found[0]:
                found = (written, r)
    if found is None:
        return best
    written, r = found
    end = tail[r:]
    return pre[r:], post + pre[:r], end, none[len(head) + r : len(none) - len(end)]


def without_rule(terminator: str, name: str) -> list[str]:
    """GBNF rules (the first named ``name``) for text that does not contain ``terminator``:
    a string parameter's value, which ends where the terminator begins. The rules are the
    states of a matcher of the terminator (how much of it the text ends with)."""
    n = len(terminator)

    def step(k: int, c: str) -> int:
        seen = terminator[:k] + c
        for m in range(min(n, len(seen)), 0, -1):
            if seen.endswith(terminator[:m]):
                return m
        return 0

    chars = sorted(set(terminator))
    rules = []
    for k in range(n):
        options = ['""']
        for c in chars:
            target = step(k, c)
            if target < n and target > 0:
                options.append(f"{gbnf_literal(c)} {name}-{target}")
        # Every other character sends the matcher back to its start.
        others = "".join(_class_char(c) for c in chars if step(k, c) > 0)
        options.append(f"[^{others}] {name}-0")
        rules.append(f"{name}-{k} ::= " + " | ".join(options))
    rules.insert(0, f"{name} ::= {name}-0")
    return rules


def _class_char(c: str) -> str:
    if c in "]\\^-":
        return "\\" + c
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if c == "\r":
        return "\\r"
    return c


def params_rules(
    style: ParamStyle,
    index: int,
    schema: dict[str, Any],
    visit: Callable[[dict[str, Any], str], str],
) -> tuple[str, str]:
    """The rules of one function's arguments in ``style``: its required parameters in order,
    then each optional one or not; a schema that declares no properties takes any parameters
    (one that declares none, ``{}``, takes none). Types,
    enums and consts are enforced; a string's length and pattern are not (it is raw text)."""
    head = f"params-{index}"
    # A string value may not hold the marker that ends it, even without the whitespace the
    # template puts before it: a model that writes "Paris</parameter>" has ended the value.
    # (Its rules are written once, with the first function's.)
    rules = _string_rules(style) if index == 0 else []
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else None
    if properties is None:  # no properties declared: any (declared none: none)
        kinds = " | ".join(
            f"( {gbnf_literal(style.mid(k))} "
            f"{_value(style, k, {}, f'{head}-any-{k}', visit, rules)} )"
            for k in KINDS
        )
        item = (
            f"( {gbnf_literal(style.pre)} [A-Za-z0-9_.-]+ ( {kinds} ) {gbnf_literal(style.post)} )"
        )
        if style.empty:
            rules.append(f"{head} ::= {item}+ | {gbnf_literal(style.empty)}")
        else:
            rules.append(f"{head} ::= {item}*")
        return head, "\n".join(rules)
    empty = '""'
    listed = schema.get("required")
    required = [
        k
        for k in (listed if isinstance(listed, list) else [])
        if isinstance(k, str) and k in properties
    ]
    # A property's references point into the function's own definitions.
    definitions = {
        k: schema[k] for k in ("$defs", "definitions") if isinstance(schema.get(k), dict)
    }
    parts = []
    for j, (key, sub) in enumerate(properties.items()):
        sub = {**sub, **definitions} if isinstance(sub, dict) else {}
        options = []
        for kind in value_kinds(sub):
            value = _value(style, kind, sub, f"{head}-{j}-{kind}", visit, rules)
            opening = gbnf_literal(style.pre + key + style.mid(kind))
            options.append(f"{opening} {value} {gbnf_literal(style.post)}")
        rules.append(f"{head}-{j} ::= " + " | ".join(f"( {o} )" for o in options))
        parts.append((key, f"{head}-{j}"))
    if not parts:
        rules.append(f"{head} ::= {gbnf_literal(style.empty) if style.empty else empty}")
        return head, "\n".join(rules)
    if style.empty and not required:
        # A template that writes something else for no parameters (DeepSeek V4's empty
        # line): that, or at least one parameter.
        names = [r for _, r in parts]
        for j, rule in enumerate(names):
            rest = f"{head}-opt-{j + 1}" if j + 1 < len(names) else ""
            later = f" | {head}-from-{j + 1}" if j + 1 < len(names) else ""
            rules.append(f"{head}-from-{j} ::= {rule} {rest}{later}".replace("  ", " "))
            if j + 1 < len(names):
                rules.append(
                    f"{head}-opt-{j + 1} ::= {names[j + 1]}? "
                    + (f"{head}-opt-{j + 2}" if j + 2 < len(names) else '""')
                )
        rules.append(f"{head} ::= {head}-from-0 | {gbnf_literal(style.empty)}")
        return head, "\n".join(rules)
    order = [r for k, r in parts if k in required] + [
        f"{r}?" for k, r in parts if k not in required
    ]
    rules.append(f"{head} ::= {' '.join(order) or empty}")
    return head, "\n".join(rules)


def _string_rules(style: ParamStyle) -> list[str]:
    """The rules of a string value (``param-text``): raw text that cannot hold the marker that
    ends it, or where the template wraps some strings (CDATA), raw text without the
    characters that make it wrap them, or a wrapped text that cannot hold the wrap's end."""
    if style.wrap is None:
        return without_rule(style.post.strip() or style.post, "param-text")
    opening, closing, triggers = style.wrap
    raw = "".join(_class_char(c) for c in triggers)
    return [
        f"param-text ::= [^{raw}]* | {gbnf_literal(opening)} param-wrapped {gbnf_literal(closing)}",
        *without_rule(closing, "param-wrapped"),
    ]


def value_kinds(schema: dict[str, Any]) -> list[Kind]:
    """The kinds of value a property's schema allows."""
    values = schema.get("enum") if isinstance(schema.get("enum"), list) else None
    if "const" in schema:
        values = [schema["const"]]
    if values is not None:
        return sorted({kind_of(v) for v in values}, key=KINDS.index)
    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared] if declared else []
    kinds = [t for t in types if t in KINDS]
    if "number" in kinds and "integer" not in kinds:
        kinds.append("integer")  # 2 is a number, and written as one
    # A value of no declared type is written as text: a grammar that offered every kind for
    # each such parameter would outgrow the bound on alternatives (Claude Code's 22 tools).
    return sorted(set(kinds), key=KINDS.index) or ["string"]


def _value(
    style: ParamStyle,
    kind: Kind,
    schema: dict[str, Any],
    name: str,
    visit: Callable[[dict[str, Any], str], str],
    rules: list[str],
) -> str:
    """The rule (or literal) for a value of ``kind`` under ``schema``."""
    values = schema.get("enum") if isinstance(schema.get("enum"), list) else None
    if "const" in schema:
        values = [schema["const"]]
    if values is not None:
        written = [style.value_text(v)[1] for v in values if kind_of(v) == kind]
        return "( " + " | ".join(gbnf_literal(w) for w in written) + " )"
    if kind == "string":
        return "param-text"
    if kind in ("boolean", "null") and style.python:
        return '( "True" | "False" )' if kind == "boolean" else '"None"'
    if kind in ("object", "array"):
        sub = {k: v for k, v in schema.items() if k not in ("type", "enum", "const")}
        return visit({**sub, "type": kind}, name)
    return visit({"type": kind}, f"param-{kind}")


class ParamsScan:
    """Reads arguments written in a :class:`ParamStyle` as they arrive, into JSON text."""

    def __init__(self, style: ParamStyle, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self._style = style
        self._schemas = schemas  # each function's parameters, by name
        self.function = ""  # the call's function, once its name is read
        self._items: list[str] = []
        self._key: str | None = None
        self._kind: Kind = "string"
        self._scanned = 0  # how far into the value its end was looked for
        self.done = False

    def feed(self, text: str, *, finishing: bool) -> int | None:
        """How much of ``text`` the parameters take; None when the text leaves the style
        (and the call is not one). ``done`` says whether the parameters have ended (the rest
        of ``text`` belongs to what follows them)."""
        style = self._style
        at = 0
        while True:
            rest = text[at:]
            if self._key is None:
                # What the template writes for no parameters (unless a parameter opens).
                none = style.empty and not self._items and not rest.startswith(style.pre)
                if none and rest.startswith(style.empty):
                    if style.pre.startswith(rest) and not finishing:
                        return at
                    self.done = True
                    return at + len(style.empty)
                if none and style.empty.startswith(rest) and not finishing:
                    return at
                if rest.startswith(style.pre):
                    found = self._read_key(rest[len(style.pre) :])
                    if found is None:
                        if len(rest) > len(style.pre) + 200:
                            return None  # no parameter name is that long
                        return at
                    at += len(style.pre) + found
                    continue
                if style.pre.startswith(rest) and not finishing:
                    return at  # may still be a parameter, or what follows them
                self.done = True
                return at
            terminator = style.post
            if style.wrap is not None:  # a wrapped string may hold the marker: its end first
                if rest.startswith(style.wrap[0]):
                    terminator = style.wrap[1] + style.post
                elif style.wrap[0].startswith(rest) and not finishing:
                    return at
            end = rest.find(terminator, self._scanned)
            if end < 0:
                # The value goes on (arriving from the same place next time): look for its
                # end only in what is new then.
                self._scanned = max(0, len(rest) - len(terminator) + 1)
                return at
            end += len(terminator) - len(style.post)
            value = rest[:end]
            self._items.append(
                f"{json.dumps(self._key, ensure_ascii=False)}: "
                f"{style.to_json(self._value_kind(value), value)}"
            )
            self._key, self._scanned = None, 0
            at += end + len(style.post)

    def _read_key(self, text: str) -> int | None:
        """The parameter's name and the marker after it: how much of ``text`` they take."""
        best: tuple[int, int, Kind] | None = None
        for kind, mid in self._style.mids:
            found = text.find(mid)
            if found >= 0 and (best is None or (found, -len(mid)) < (best[0], -best[1])):
                best = (found, len(mid), kind)
        if best is None:
            return None
        found, length, kind = best
        self._key, self._kind = text[:found], kind
        return found + length

    def _value_kind(self, written: str) -> Kind:
        """The kind of a value: told by the marker before it where kinds have their own
        (DeepSeek's string="true"), else the first kind its parameter's schema allows that
        reads it (a string last)."""
        style = self._style
        mid = style.mid(self._kind)
        if [k for k, m in style.mids if m == mid] == [self._kind]:
            return self._kind
        properties = self._schemas.get(self.function, {}).get("properties")
        schema = properties.get(self._key) if isinstance(properties, dict) else None
        kinds = value_kinds(schema if isinstance(schema, dict) else {})
        for kind in kinds:
            if kind != "string" and _reads_as(style, kind, written):
                return kind
        return "string" if "string" in kinds else self._kind

    def arguments(self) -> str:
        return "{" + ", ".join(self._items) + "}"


def _reads_as(style: ParamStyle, kind: Kind, written: str) -> bool:
    try:
        value = json.loads(style.to_json(kind, written))
    except ValueError:
        return False
    return kind_of(value) == kind or (kind == "number" and kind_of(value) == "integer")
