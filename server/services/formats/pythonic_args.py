"""LFM2's Python-style arguments: ``get_weather(city='Paris', days=3, units={"c": true},
hours=[1, 'x', None])`` as its template writes them.

A string is written raw between single quotes (the template escapes nothing, so the grammar
keeps ``'`` out of it); an object as JSON (``tojson``); anything else as Python's ``str``
writes it (``True``, ``None``, a list as its repr, with single-quoted strings). Here: the
writer, where the arguments end as they stream in, their reading back into JSON, and the
grammar of one function's arguments in this form.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from server.engine.gbnf import gbnf_literal
from server.services.formats.gemma_args import read_scalar
from server.services.formats.params import kind_of, value_kinds

# How deep a value may nest before it is not read.
MAX_DEPTH = 64
# A parameter's name: a Python name, or anything up to its "=" (the template writes JSON
# schemas' names as they are: "content-type").
_KEY = re.compile(r"[^\s=(),'\"]+")
_WORDS = {"True": True, "False": False, "None": None}

# What the arguments' text starts with.
opening = "("


def write(arguments: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={_value(v)}" for k, v in arguments.items()) + ")"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


class Scan:
    """Finds where the arguments (``(...)``) end as their text arrives: brackets outside
    strings; a top-level string runs raw to its next ``'``, a nested one (JSON's or Python's)
    to its unescaped quote."""

    def __init__(self) -> None:
        self.stack: list[str] = []  # the open brackets
        self.quote = ""  # the quote of the string being read, if any
        self.escaped = False
        self.done = False

    def feed(self, text: str) -> int:
        for i, ch in enumerate(text):
            if self.quote:
                raw = len(self.stack) == 1  # a top-level string: no escapes
                if self.escaped:
                    self.escaped = False
                elif ch == "\\" and not raw:
                    self.escaped = True
                elif ch == self.quote:
                    self.quote = ""
            elif ch in "'\"" and self.stack:
                self.quote = ch
            elif ch in "([{":
                self.stack.append(ch)
                if len(self.stack) > MAX_DEPTH:
                    self.done = True  # not arguments: let the reader refuse them
                    return i + 1
            elif ch in ")]}" and self.stack:
                self.stack.pop()
                if not self.stack:
                    self.done = True
                    return i + 1
        return -1


def to_json(text: str, schema: Any = None) -> str:
    """Arguments written in this form, as a JSON object's text; ValueError if they are not."""
    if not text.startswith("(") or not text.endswith(")"):
        raise ValueError("arguments are written between parentheses")
    out: dict[str, Any] = {}
    at = 1
    while at < len(text) - 1:
        if out:
            if not text.startswith(", ", at):
                raise ValueError("', ' was expected")
            at += 2
        key = _KEY.match(text, at)
        if key is None or not text.startswith("=", key.end()):
            raise ValueError("a parameter name and '=' were expected")
        out[key.group(0)], at = _read(text, key.end() + 1)
    return json.dumps(out, ensure_ascii=False, allow_nan=False)


def _read(text: str, at: int) -> tuple[Any, int]:
    ch = text[at : at + 1]
    if ch == "'":
        end = text.find("'", at + 1)
        if end < 0:
            raise ValueError("a string without its end")
        return text[at + 1 : end], end + 1
    if ch in ("{", "["):
        closing = _value_end(text, at)
        if closing is None:
            raise ValueError("an object or list without its end")
        piece = text[at:closing]
        try:
            value = json.loads(piece) if ch == "{" else ast.literal_eval(piece)
            json.dumps(value)  # a set or bytes: not arguments
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ValueError(f"not a value: {piece[:40]!r}") from exc
        return value, closing
    return read_scalar(text, at, _WORDS)


def _value_end(text: str, at: int) -> int | None:
    """Where the bracketed value starting at ``at`` ends."""
    depth = 0
    quote = ""
    escaped = False
    for i in range(at, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError("the arguments nest too deep")
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def rules(index: int, schema: dict[str, Any], visit: Callable[..., str]) -> tuple[str, str]:
    """The rules of one function's arguments: its required parameters in order, then each
    optional one or not, ``", "`` between them, all between parentheses. A string is raw
    between quotes, without one; an object JSON; a list, a boolean or null as Python writes
    them. A schema that declares no properties takes none."""
    head = f"py-args-{index}"
    out: list[str] = []
    if index == 0:
        out.append(r"""py-raw ::= "'" [^'\x00]* "'" """.strip())
        out.append(r"py-key ::= [A-Za-z_] [A-Za-z0-9_]*")
    declared = schema.get("properties")
    if not isinstance(declared, dict):  # no properties declared: any parameters
        kinds = ("string", "integer", "number", "boolean", "null", "object", "array")
        value = " | ".join(_kind_rule(k, {}, f"{head}-any-{k}", visit) for k in kinds)
        item = f'py-key "=" ( {value} )'
        out.append(f'{head} ::= "(" ( {item} ( ", " {item} )* )? ")"')
        return head, "\n".join(out)
    properties: dict[str, Any] = declared
    # A property's references point into the function's own definitions.
    definitions = {
        k: schema[k] for k in ("$defs", "definitions") if isinstance(schema.get(k), dict)
    }
    listed = schema.get("required")
    required = [
        k
        for k in (listed if isinstance(listed, list) else [])
        if isinstance(k, str) and k in properties
    ]
    parts = []
    for j, (key, sub) in enumerate(properties.items()):
        sub = {**sub, **definitions} if isinstance(sub, dict) else {}
        options = [
            f"{gbnf_literal(key + '=')} {_kind_rule(kind, sub, f'{head}-{j}-{kind}', visit)}"
            for kind in value_kinds(sub)
        ]
        out.append(f"{head}-{j} ::= " + " | ".join(f"( {o} )" for o in options))
        parts.append((key in required, f"{head}-{j}"))
    ordered = [r for req, r in parts if req] + [r for req, r in parts if not req]
    optional_from = sum(1 for req, _ in parts if req)
    # Each parameter after the first present one is preceded by ", ": a chain that says
    # whether one was written yet.
    sep = gbnf_literal(", ")
    body = _sequence(ordered, optional_from, sep, head, out)
    out.append(f'{head} ::= "(" {body} ")"')
    return head, "\n".join(out)


def _sequence(rules_: list[str], optional_from: int, sep: str, head: str, out: list[str]) -> str:
    if not rules_:
        return ""
    required = rules_[:optional_from]
    optional = rules_[optional_from:]
    # rest-k: optional k.. each preceded by the separator, when something came before.
    for k in range(len(optional) - 1, -1, -1):
        nxt = f" {head}-rest-{k + 1}" if k + 1 < len(optional) else ""
        out.append(f"{head}-rest-{k} ::= ( {sep} {optional[k]} )?{nxt}")
    if required:
        joined = f" {sep} ".join(required)
        return f"{joined} {head}-rest-0" if optional else joined
    # None required: the first present optional one comes without the separator.
    for k in range(len(optional) - 1, -1, -1):
        after = f" {head}-rest-{k + 1}" if k + 1 < len(optional) else ""
        later = f" | {head}-from-{k + 1}" if k + 1 < len(optional) else ' | ""'
        out.append(f"{head}-from-{k} ::= {optional[k]}{after}{later}")
    return f"{head}-from-0"


def _kind_rule(kind: str, schema: dict[str, Any], name: str, visit: Callable[..., str]) -> str:
    values = schema.get("enum") if isinstance(schema.get("enum"), list) else None
    if "const" in schema:
        values = [schema["const"]]
    if values is not None:
        # (A string holding a quote cannot be written between quotes: the grammar leaves
        # it out; with no other, any string.)
        written = [
            _value(v) for v in values if kind_of(v) == kind and not (kind == "string" and "'" in v)
        ]
        if written:
            return "( " + " | ".join(gbnf_literal(w) for w in written) + " )"
    if kind == "string":
        return "py-raw"
    if kind == "boolean":
        return '( "True" | "False" )'
    if kind == "null":
        return '"None"'
    sub = {k: v for k, v in schema.items() if k not in ("type", "enum", "const")}
    if kind == "object":
        return visit({**sub, "type": "object"}, name)
    if kind == "array":
        return visit({**sub, "type": "array"}, name, python=True)
    return visit({"type": kind}, f"py-{kind}")
